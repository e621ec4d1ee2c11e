//! Cross-cutting behaviour: error shapes, routing, health, OpenAPI, the auth seam.

use std::sync::Arc;

use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use serde_json::{Value, json};
use steadyflow_api::{ApiError, AppContext, Authenticator, Principal};
use steadyflow_engine::{Engine, SystemClock};
use steadyflow_store::*;

use crate::support::{App, USER_TASK_XML, id};

#[tokio::test]
async fn bad_json_bodies_are_invalid_json() {
    let app = App::new();
    app.deploy(USER_TASK_XML).await;
    let uri = "/api/v1/process-definitions/key/approval/start";
    let cases: [(Option<&str>, &str); 4] = [
        (Some("application/json"), "{\"variables\": "),
        (Some("application/json"), "{\"variables\": [1, 2]}"),
        (Some("application/json"), "{\"businessKey\": 7}"),
        (Some("text/plain"), "{\"variables\": {}}"),
    ];
    for (ct, body) in cases {
        let r = app.call(Method::POST, uri, ct, body).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "invalid_json".into()),
            "{body}: {}",
            r.text
        );
        assert!(!r.json()["error"]["message"].as_str().unwrap().is_empty());
    }
    // Required bodies may not be left out.
    let r = app
        .call(
            Method::POST,
            "/api/v1/tasks/x/claim",
            Some("application/json"),
            "",
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_json".into())
    );
}

#[tokio::test]
async fn unknown_things_are_json_404s() {
    let app = App::new();
    let r = app.get("/api/v1/tasks/does-not-exist").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"]["code"], "not_found");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does-not-exist")
    );

    let r = app.get("/api/v1/nothing-here").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
    let r = app.get("/elsewhere").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "not_found".into())
    );

    let r = app.call(Method::PATCH, "/api/v1/tasks", None, "").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed".into())
    );

    let r = app.get("/api/v1/process-instances?state=sleeping").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "bad_request".into())
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sleeping")
    );
    let r = app.get("/api/v1/process-instances?limit=lots").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "bad_request".into())
    );
    let r = app.get("/api/v1/incidents?open=maybe").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn health_is_up_with_a_live_database() {
    let app = App::new();
    let r = app.get("/health").await;
    assert_eq!(r.status, StatusCode::OK);
    let mut body = r.json();
    let latency = body["components"]["database"]
        .as_object_mut()
        .unwrap()
        .remove("latencyMs");
    assert!(latency.unwrap().as_f64().unwrap() >= 0.0, "a timed ping");
    assert_eq!(
        body,
        json!({"status": "up", "components": {"database": {"status": "up"}}, "mode": {"mode": "normal"}})
    );
    let r = app.get("/ready").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "up");
    assert!(r.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn the_served_document_describes_every_route() {
    let app = App::new();
    let r = app.get("/api/v1/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = r.json();
    assert_eq!(
        doc,
        serde_json::to_value(steadyflow_api::openapi()).unwrap()
    );
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/v1/tasks/{id}/complete", "post"),
        ("/api/v1/process-definitions", "post"),
        ("/api/v1/process-definitions", "get"),
        ("/api/v1/process-definitions/key/{key}/start", "post"),
        ("/api/v1/process-instances/{id}", "delete"),
        ("/api/v1/external-tasks/fetch-and-lock", "post"),
        ("/api/v1/external-tasks/{id}/retries", "put"),
        ("/api/v1/incidents/{id}/retry", "post"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
        ("/api/v1/openapi.json", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    // Every documented operation is routed (none answers with the 404 fallback).
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let uri = path.replace("{id}", "x").replace("{key}", "x");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = app.call(m, &uri, Some("application/json"), "{}").await;
            let unrouted = r.status == StatusCode::NOT_FOUND && r.text.contains("no route");
            assert!(
                !unrouted && r.status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}: {}",
                r.text
            );
        }
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "ProcessInstance",
        "Task",
        "ExternalTask",
        "Incident",
        "ErrorResponse",
        "Deployment",
    ] {
        assert!(schemas.contains_key(name), "schema {name} missing");
    }
}

/// Lets in requests carrying `x-user`, as that user.
struct HeaderAuth;

#[async_trait::async_trait]
impl Authenticator for HeaderAuth {
    async fn authenticate(&self, parts: &Parts) -> Result<Principal, ApiError> {
        let user = parts
            .headers
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::unauthorized("who are you?"))?;
        Ok(Principal {
            name: user.to_string(),
            role: steadyflow_store::users::Role::Operator,
            groups: vec![],
            token_id: None,
        })
    }
}

#[tokio::test]
async fn the_authenticator_guards_the_api_but_not_health() {
    let app = App::build(Arc::new(SystemClock), Arc::new(HeaderAuth));
    let r = app.get("/api/v1/tasks").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );
    assert_eq!(app.get("/health").await.status, StatusCode::OK);

    let as_alice = |method: Method, uri: &str, body: &str| {
        axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("x-user", "alice")
            .header(header::CONTENT_TYPE, "application/xml")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap()
    };
    let r = app
        .send(as_alice(
            Method::POST,
            "/api/v1/process-definitions",
            USER_TASK_XML,
        ))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = app
        .send(as_alice(
            Method::POST,
            "/api/v1/process-definitions/key/approval/start",
            "",
        ))
        .await;
    let iid = id(&r.json());
    let uri = format!("/api/v1/process-instances/{iid}");
    let r = app.send(as_alice(Method::DELETE, &uri, "")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let history = app
        .send(as_alice(Method::GET, &format!("{uri}/history"), ""))
        .await
        .items();
    let cancelled = history
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["event"] == "instanceCancelled")
        .unwrap();
    assert!(
        cancelled["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("alice"),
        "{cancelled}"
    );
}

/// A store whose every call fails the same way.
struct FailingStore(fn() -> StoreError);

#[async_trait::async_trait]
impl Store for FailingStore {
    async fn plain_write(
        &self,
        _: Timestamp,
        _: Vec<steadyflow_store::users::PlainWrite>,
    ) -> Result<()> {
        Err((self.0)())
    }
    async fn plain_row(
        &self,
        _: &'static steadyflow_store::recovery::TableSpec,
        _: &str,
    ) -> Result<Option<serde_json::Value>> {
        Err((self.0)())
    }
    async fn plain_rows(
        &self,
        _: &'static steadyflow_store::recovery::TableSpec,
    ) -> Result<Vec<serde_json::Value>> {
        Err((self.0)())
    }
    fn backend(&self) -> &'static str {
        "failing"
    }
    async fn ping(&self) -> Result<()> {
        Err((self.0)())
    }
    async fn deploy(&self, _: Vec<NewDefinition>, _: Timestamp) -> Result<Vec<Deployed>> {
        Err((self.0)())
    }
    async fn definition(&self, _: &str) -> Result<Option<DefinitionRecord>> {
        Err((self.0)())
    }
    async fn latest_definition(&self, _: &str) -> Result<Option<DefinitionRecord>> {
        Err((self.0)())
    }
    async fn list_definitions(&self, _: &DefinitionFilter) -> Result<Vec<DefinitionRecord>> {
        Err((self.0)())
    }
    async fn instance(&self, _: &str) -> Result<Option<InstanceRecord>> {
        Err((self.0)())
    }
    async fn list_instances(&self, _: &InstanceFilter) -> Result<Vec<InstanceRecord>> {
        Err((self.0)())
    }
    async fn apply(&self, _: ChangeSet) -> Result<()> {
        Err((self.0)())
    }
    async fn task(&self, _: &str) -> Result<Option<TaskRecord>> {
        Err((self.0)())
    }
    async fn list_tasks(&self, _: &TaskFilter) -> Result<Vec<TaskRecord>> {
        Err((self.0)())
    }
    async fn claim_task(&self, _: &str, _: &str, _: Timestamp) -> Result<TaskRecord> {
        Err((self.0)())
    }
    async fn external_task(&self, _: &str) -> Result<Option<ExternalTaskRecord>> {
        Err((self.0)())
    }
    async fn list_external_tasks(&self, _: &ExternalTaskFilter) -> Result<Vec<ExternalTaskRecord>> {
        Err((self.0)())
    }
    async fn lock_tasks(&self, _: &TaskLocking<'_>) -> Result<Vec<LockedTask>> {
        Err((self.0)())
    }
    async fn lock_due_timers(&self, _: &TimerLocking<'_>) -> Result<Vec<TimerRecord>> {
        Err((self.0)())
    }
    async fn list_timers(&self, _: &str) -> Result<Vec<TimerRecord>> {
        Err((self.0)())
    }
    async fn next_timer_due(&self) -> Result<Option<Timestamp>> {
        Err((self.0)())
    }
    async fn list_incidents(&self, _: &IncidentFilter) -> Result<Vec<IncidentRecord>> {
        Err((self.0)())
    }
    async fn history(&self, _: &str) -> Result<Vec<HistoryRecord>> {
        Err((self.0)())
    }
    async fn history_page(
        &self,
        _: &str,
        _: Option<HistoryPosition>,
        _: usize,
    ) -> Result<Vec<(HistoryPosition, HistoryRecord)>> {
        Err((self.0)())
    }
    async fn journal_since(&self, _: i64, _: usize) -> Result<Vec<JournalRecord>> {
        Err((self.0)())
    }
}

async fn get_with(store: FailingStore, uri: &str) -> (StatusCode, Value) {
    use tower::ServiceExt;
    let engine = Arc::new(Engine::new(Arc::new(store), Arc::new(SystemClock)));
    let router = steadyflow_api::router(AppContext {
        engine,
        auth: Arc::new(steadyflow_api::AllowAll),
        // No outage grace: a dead database answers at once (the grace has its own tests).
        degraded: steadyflow_api::Degraded {
            grace: std::time::Duration::ZERO,
            ..Default::default()
        },
        backups: None,
    });
    let req = axum::http::Request::get(uri)
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = router.oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn a_dead_database_is_503_and_its_cause_stays_in_the_log() {
    let down =
        || FailingStore(|| StoreError::Unavailable("connect to 10.1.2.3:5432 refused".into()));
    let (status, body) = get_with(down(), "/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        json!({"status": "down", "components": {"database": {
            "status": "down", "reason": "the database does not answer"
        }}, "mode": {"mode": "normal"}})
    );
    let (status, body) = get_with(down(), "/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        json!({"status": "down", "components": {"database": {
            "status": "down", "reason": "the database does not answer"
        }}, "mode": {"mode": "normal"}})
    );

    let (status, body) = get_with(down(), "/api/v1/process-instances").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(!body.to_string().contains("10.1.2.3"), "{body}");

    let broken = FailingStore(|| StoreError::Backend("no such column: secret_col".into()));
    let (status, body) = get_with(broken, "/api/v1/tasks/t1").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["error"]["code"], "internal");
    assert_eq!(
        body["error"]["message"],
        "internal error; see the server log"
    );
    assert!(!body.to_string().contains("secret_col"), "{body}");
}
