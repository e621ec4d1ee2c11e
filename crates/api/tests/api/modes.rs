//! Service modes: set through the API (stored, journaled), enforced on every `/api/v1`
//! route, shown in `/health` and `/metrics`, and ended by `until`.

use std::sync::Arc;

use axum::http::{StatusCode, header};
use serde_json::{Value, json};
use steadyflow_api::AllowAll;
use steadyflow_engine::{Clock, ManualClock};
use steadyflow_store::mode::{Mode, SYSTEM_MODE_KEY, SystemModeRecord};
use steadyflow_store::users;

use crate::support::{App, Reply, USER_TASK_XML};

async fn set(app: &App, body: Value) -> Reply {
    let r = app.put("/api/v1/system/mode", body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r
}

fn start_uri() -> &'static str {
    "/api/v1/process-definitions/key/approval/start"
}

/// A refusal: the status, the mode's code, the reason as message, a `Retry-After`.
fn assert_refused(r: &Reply, code: &str, reason: &str) {
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, code.to_string()),
        "{}",
        r.text
    );
    assert_eq!(r.json()["error"]["message"], reason, "{}", r.text);
    let retry: u32 = r.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
}

#[tokio::test]
async fn read_only_refuses_every_write_and_serves_reads() {
    let app = App::new();
    app.deploy(USER_TASK_XML).await;
    let started = app.start("approval", json!({})).await;
    let view = set(
        &app,
        json!({"mode": "read-only", "reason": "storage migration until 18:00"}),
    )
    .await
    .json();
    assert_eq!(view["mode"], "read-only");
    assert_eq!(view["setBy"], "anonymous", "who set it: the caller");

    let reason = "storage migration until 18:00";
    let r = app.post(start_uri(), json!({})).await;
    assert_refused(&r, "read_only", reason);
    assert_eq!(r.json()["error"]["details"]["mode"], "read-only");
    assert_eq!(
        r.headers[header::RETRY_AFTER],
        "30",
        "no until: the default"
    );
    let r = app
        .post_xml("/api/v1/process-definitions", USER_TASK_XML)
        .await;
    assert_refused(&r, "read_only", reason);
    let iid = started["id"].as_str().unwrap();
    let r = app
        .delete(&format!("/api/v1/process-instances/{iid}"))
        .await;
    assert_refused(&r, "read_only", reason);

    // Reads go on, listings past a page too.
    let r = app.get(&format!("/api/v1/process-instances/{iid}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        app.get("/api/v1/tasks?limit=500")
            .await
            .items()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let health = app.get("/health").await.json();
    assert_eq!(health["mode"]["mode"], "read-only");
    assert_eq!(health["mode"]["reason"], reason);
    assert_eq!(health["mode"]["setBy"], "anonymous");

    // Nothing was written: the instance is still active, and back in normal mode the
    // same requests work.
    set(&app, json!({"mode": "normal"})).await;
    app.start("approval", json!({})).await;
    let r = app
        .delete(&format!("/api/v1/process-instances/{iid}"))
        .await;
    assert!(r.status.is_success(), "{}", r.text);
}

#[tokio::test]
async fn core_only_refuses_deployments_and_pages_past_the_first() {
    let app = App::new();
    app.deploy(USER_TASK_XML).await;
    set(
        &app,
        json!({"mode": "core-only", "reason": "incident 4711"}),
    )
    .await;
    let r = app
        .post_xml("/api/v1/process-definitions", USER_TASK_XML)
        .await;
    assert_refused(&r, "core_only", "incident 4711");
    for uri in [
        "/api/v1/process-instances?limit=1000",
        "/api/v1/tasks?after=abc",
    ] {
        assert_refused(&app.get(uri).await, "core_only", "incident 4711");
    }
    // Core work goes on: starting, working on tasks, a first page.
    app.start("approval", json!({})).await;
    let tasks = app.get("/api/v1/tasks").await.items();
    let tid = tasks[0]["id"].as_str().unwrap().to_string();
    let r = app
        .post(&format!("/api/v1/tasks/{tid}/complete"), json!({}))
        .await;
    assert!(r.status.is_success(), "{}", r.text);
}

#[tokio::test]
async fn offline_refuses_reads_but_not_the_mode_or_the_probes() {
    let app = App::new();
    set(
        &app,
        json!({"mode": "offline", "reason": "datacenter move"}),
    )
    .await;
    assert_refused(
        &app.get("/api/v1/process-instances").await,
        "offline",
        "datacenter move",
    );
    assert_eq!(
        app.get("/api/v1/system/mode").await.json()["mode"],
        "offline"
    );
    assert_eq!(app.get("/health").await.status, StatusCode::OK);
    set(&app, json!({"mode": "normal"})).await;
    assert_eq!(
        app.get("/api/v1/process-instances").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_mode_is_stored_journaled_and_counted() {
    let app = App::new();
    set(&app, json!({"mode": "read-only", "reason": "r1"})).await;
    let store = app.engine.store();
    let row: SystemModeRecord = users::one(store.as_ref(), SYSTEM_MODE_KEY)
        .await
        .unwrap()
        .expect("the mode row");
    assert_eq!(
        (row.mode, row.reason.as_deref()),
        (Mode::ReadOnly, Some("r1"))
    );
    let journal = store.journal_since(0, 100).await.unwrap();
    assert!(
        journal
            .iter()
            .any(|j| j.entity.as_str() == "systemMode" && j.row["mode"] == "read-only"),
        "the change is journaled"
    );
    steadyflow_api::metrics::install();
    app.modes.observe(app.modes.current()); // the gauge is set on change; install first
    set(&app, json!({"mode": "core-only"})).await;
    let text = app.get("/metrics").await.text;
    assert!(
        text.contains(r#"steadyflow_mode{mode="core-only"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"steadyflow_mode{mode="normal"} 0"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_bad_mode_change_is_refused() {
    let app = App::new();
    for body in [
        json!({"mode": "readonly"}),
        json!({"mode": "offline", "reason": "x".repeat(501)}),
    ] {
        let r = app.put("/api/v1/system/mode", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
    }
    assert_eq!(
        app.get("/api/v1/system/mode").await.json()["mode"],
        "normal"
    );
}

#[tokio::test]
async fn until_returns_to_normal_by_itself_and_journals_it() {
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let app = App::build(clock.clone(), Arc::new(AllowAll));
    let until = clock.now() + chrono::Duration::seconds(90);
    set(
        &app,
        json!({"mode": "read-only", "reason": "short", "until": until.to_rfc3339()}),
    )
    .await;
    let r = app.post(start_uri(), json!({})).await;
    assert_refused(&r, "read_only", "short");
    let retry: i64 = r.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((89..=90).contains(&retry), "until is 90 s away: {retry}");

    clock.advance(chrono::Duration::seconds(91));
    // What every node's poll does.
    let store = app.engine.store().clone();
    let view = app
        .modes
        .refresh(store.as_ref(), clock.now())
        .await
        .unwrap();
    assert_eq!(view.mode, Mode::Normal);
    assert_eq!(view.set_by.as_deref(), Some("expiry"));
    let row: SystemModeRecord = users::one(store.as_ref(), SYSTEM_MODE_KEY)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((row.mode, row.set_by.as_str()), (Mode::Normal, "expiry"));
    let r = app
        .post_xml("/api/v1/process-definitions", USER_TASK_XML)
        .await;
    assert!(r.status.is_success(), "{}", r.text);
}
