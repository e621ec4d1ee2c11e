//! Cursor paging of the list endpoints: `limit`, `after` → `nextCursor`.

use std::collections::BTreeSet;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::support::{App, EXTERNAL_XML, USER_TASK_XML, id};

/// The ids of every page of `path` (which ends in `?` or a query) with `limit`, checking
/// that only full pages have a `nextCursor`; `between(n)` runs after page `n`.
async fn walk(
    app: &App,
    path: &str,
    limit: usize,
    mut between: impl AsyncFnMut(usize),
) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let url = match &after {
            Some(c) => format!("{path}&limit={limit}&after={c}"),
            None => format!("{path}&limit={limit}"),
        };
        let r = app.get(&url).await;
        assert_eq!(r.status, StatusCode::OK, "{url}: {}", r.text);
        let page = r.json();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= limit, "{url}: {} items", items.len());
        pages.push(items.iter().map(id).collect::<Vec<_>>());
        match &page["nextCursor"] {
            Value::String(c) => {
                assert_eq!(items.len(), limit, "only a full page has a next one");
                after = Some(c.clone());
            }
            Value::Null => return pages,
            other => panic!("nextCursor must be a string or null, got {other}"),
        }
        between(pages.len()).await;
        assert!(pages.len() < 1000, "paging does not end");
    }
}

#[tokio::test]
async fn walking_pages_sees_every_instance_once_while_more_are_started() {
    let app = App::new();
    app.deploy(USER_TASK_XML).await;
    let mut before = BTreeSet::new();
    for _ in 0..23 {
        before.insert(id(&app.start("approval", json!({})).await));
    }
    let mut started_meanwhile = BTreeSet::new();
    let pages = walk(
        &app,
        "/api/v1/process-instances?definitionKey=approval",
        5,
        async |_| {
            started_meanwhile.insert(id(&app.start("approval", json!({})).await));
        },
    )
    .await;
    let seen: Vec<String> = pages.concat();
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "no instance is listed twice: {pages:?}"
    );
    assert!(
        before.is_subset(&unique),
        "every instance that existed throughout is listed: missing {:?}",
        before.difference(&unique).collect::<Vec<_>>()
    );
    assert!(
        unique.is_subset(&before.union(&started_meanwhile).cloned().collect()),
        "nothing else is listed"
    );
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "pages follow id order");
}

#[tokio::test]
async fn every_list_endpoint_pages_and_the_last_page_has_no_cursor() {
    let app = App::new();
    app.deploy(USER_TASK_XML).await;
    app.deploy(EXTERNAL_XML).await;
    for _ in 0..3 {
        app.start("approval", json!({})).await;
        app.start("work", json!({})).await;
    }
    for (path, total) in [
        ("/api/v1/process-definitions?", 2),
        ("/api/v1/process-instances?", 6),
        ("/api/v1/tasks?", 3),
        ("/api/v1/external-tasks?", 3),
    ] {
        let pages = walk(&app, path, 2, async |_| {}).await;
        let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
        let expected: Vec<usize> = (0..total).step_by(2).map(|i| (total - i).min(2)).collect();
        assert_eq!(sizes, expected, "{path}: page sizes");
        let all: BTreeSet<String> = pages.concat().into_iter().collect();
        assert_eq!(all.len(), total, "{path}: distinct items");
        let whole = app.get(path).await.json();
        assert_eq!(whole["items"].as_array().unwrap().len(), total, "{path}");
        assert!(whole["nextCursor"].is_null(), "{path}: one page holds all");
    }
}

#[tokio::test]
async fn definitions_page_by_key_then_newest_version() {
    let app = App::new();
    for n in 0..3 {
        // Three versions of `approval` (each deployment differs), one of `work`.
        app.deploy(&USER_TASK_XML.replace("Review", &format!("Review {n}")))
            .await;
    }
    app.deploy(EXTERNAL_XML).await;
    let mut order = Vec::new();
    let pages = walk(&app, "/api/v1/process-definitions?", 1, async |_| {}).await;
    for page in &pages {
        order.extend(page.iter().cloned());
    }
    assert_eq!(order, ["approval:3", "approval:2", "approval:1", "work:1"]);
}

#[tokio::test]
async fn limits_and_cursors_are_checked() {
    let app = App::new();
    app.deploy(USER_TASK_XML).await;
    app.start("approval", json!({})).await;
    app.start("approval", json!({})).await;
    for list in [
        "process-definitions",
        "process-instances",
        "tasks",
        "external-tasks",
        "incidents",
    ] {
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=14848686810693431296",
            "limit=-1",
            "after=",
            "after=bm90IGEgY3Vyc29y",
            "after=%%%",
        ] {
            let r = app.get(&format!("/api/v1/{list}?{bad}")).await;
            assert_eq!(
                (r.status, r.code()),
                (StatusCode::BAD_REQUEST, "bad_request".into()),
                "{list}?{bad}: {}",
                r.text
            );
        }
        let r = app.get(&format!("/api/v1/{list}?limit=1000")).await;
        assert_eq!(r.status, StatusCode::OK, "{list}: the maximum is allowed");
    }
    // A cursor of one list is refused by another.
    let page = app.get("/api/v1/process-instances?limit=1").await.json();
    let cursor = page["nextCursor"]
        .as_str()
        .expect("two instances: a next page");
    let r = app.get(&format!("/api/v1/tasks?after={cursor}")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.text.contains("cursor"), "{}", r.text);
}

#[tokio::test]
async fn the_default_page_holds_100() {
    let app = App::new();
    app.deploy(USER_TASK_XML).await;
    for _ in 0..101 {
        app.start("approval", json!({})).await;
    }
    let first = app.get("/api/v1/tasks").await.json();
    assert_eq!(first["items"].as_array().unwrap().len(), 100);
    let cursor = first["nextCursor"].as_str().expect("a second page");
    let rest = app
        .get(&format!("/api/v1/tasks?after={cursor}"))
        .await
        .items();
    assert_eq!(rest.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn history_pages_follow_the_instance_as_it_moves_on() {
    let app = App::new();
    app.deploy(USER_TASK_XML).await;
    let inst = id(&app.start("approval", json!({})).await);
    let uri = format!("/api/v1/process-instances/{inst}/history");
    let whole = app.get(&uri).await.items();
    let first_events = whole.as_array().unwrap().len();
    assert!(first_events >= 3, "started and waiting: {whole}");

    // One event per page; the instance completes while the reader is on page 2.
    let mut seen: Vec<Value> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let url = match &after {
            Some(c) => format!("{uri}?limit=1&after={c}"),
            None => format!("{uri}?limit=1"),
        };
        let page = app.get(&url).await.json();
        seen.extend(page["items"].as_array().unwrap().iter().cloned());
        if seen.len() == 2 {
            let task = app
                .get(&format!("/api/v1/tasks?processInstanceId={inst}"))
                .await
                .items();
            let r = app
                .post(
                    &format!("/api/v1/tasks/{}/complete", id(&task[0])),
                    json!({}),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        }
        match page["nextCursor"].as_str() {
            Some(c) => after = Some(c.to_string()),
            None => break,
        }
        assert!(seen.len() < 100);
    }
    let all = app.get(&uri).await.items();
    assert_eq!(
        Value::Array(seen.clone()),
        all,
        "every event once, in order"
    );
    assert!(all.as_array().unwrap().len() > first_events);
    assert_eq!(seen.last().unwrap()["event"], "instanceCompleted");

    let r = app.get(&format!("{uri}?limit=0")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = app.get("/api/v1/process-instances/nope/history").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
