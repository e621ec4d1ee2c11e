//! `Idempotency-Key`: the same key gives the same answer and does the work once, also
//! when the requests run concurrently; a key reused for another request is refused.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::json;
use steadyflow_store::InstanceFilter;

use crate::support::{App, Reply, USER_TASK_XML};

const START: &str = "/api/v1/process-definitions/key/approval/start";

async fn keyed_post(app: &App, uri: &str, key: &str, body: serde_json::Value) -> Reply {
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header("idempotency-key", key)
        .body(Body::from(body.to_string()))
        .unwrap();
    app.send(req).await
}

async fn instances(app: &App) -> usize {
    app.engine
        .store()
        .list_instances(&InstanceFilter::default())
        .await
        .unwrap()
        .len()
}

#[tokio::test]
async fn the_same_key_answers_the_same_and_starts_once() {
    let app = App::new();
    app.deploy(USER_TASK_XML).await;
    let body = json!({"businessKey": "order-1"});
    let first = keyed_post(&app, START, "order-1-start", body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = keyed_post(&app, START, "order-1-start", body.clone()).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(again.text, first.text, "the stored answer, byte for byte");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(
        again.headers[header::CONTENT_TYPE],
        first.headers[header::CONTENT_TYPE]
    );
    assert_eq!(instances(&app).await, 1, "the work was done once");

    // Another key is another request; no key is no idempotency.
    keyed_post(&app, START, "order-2-start", body.clone()).await;
    app.post(START, body.clone()).await;
    app.post(START, body).await;
    assert_eq!(instances(&app).await, 4);
}

#[tokio::test]
async fn a_key_reused_for_another_request_is_refused() {
    let app = App::new();
    app.deploy(USER_TASK_XML).await;
    keyed_post(&app, START, "k", json!({"businessKey": "a"})).await;
    let r = keyed_post(&app, START, "k", json!({"businessKey": "b"})).await;
    assert_eq!(
        (r.status, r.code()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused".into()
        ),
        "{}",
        r.text
    );
    let r = keyed_post(&app, START, "two words", json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(instances(&app).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_one_key_run_once() {
    let app = std::sync::Arc::new(App::new());
    app.deploy(USER_TASK_XML).await;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            keyed_post(&app, START, "same", json!({"businessKey": "c"})).await
        }));
    }
    let mut bodies = std::collections::BTreeSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        bodies.insert(r.text);
    }
    assert_eq!(bodies.len(), 1, "every caller got the one answer");
    assert_eq!(instances(&app).await, 1, "one instance for 12 requests");
}

#[tokio::test]
async fn a_client_error_is_a_stored_answer_too() {
    let app = App::new();
    // No definition yet: 404, stored (a 4xx is an answer).
    let r = keyed_post(&app, START, "early", json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    app.deploy(USER_TASK_XML).await;
    let r = keyed_post(&app, START, "early", json!({})).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "the stored 404 is the answer"
    );
    assert_eq!(r.headers["idempotent-replayed"], "true");
}
