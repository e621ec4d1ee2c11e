//! A real engine over a real SQLite store in a tempdir, driven through the router with
//! `oneshot` (no socket).

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use serde_json::Value;
use steadyflow_api::{AllowAll, AppContext, Authenticator};
use steadyflow_engine::{Clock, Engine, SystemClock};
use steadyflow_store::Store;
use steadyflow_store_sqlite::SqliteStore;
use tempfile::TempDir;
use tower::ServiceExt;

pub const USER_TASK_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL"
             xmlns:camunda="http://camunda.org/schema/1.0/bpmn"
             id="defs" targetNamespace="http://example.com/approval">
  <process id="approval" name="Approval" isExecutable="true">
    <startEvent id="start"/>
    <sequenceFlow id="f1" sourceRef="start" targetRef="review"/>
    <userTask id="review" name="Review" camunda:candidateGroups="managers"/>
    <sequenceFlow id="f2" sourceRef="review" targetRef="end"/>
    <endEvent id="end"/>
  </process>
</definitions>
"#;

pub const EXTERNAL_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL"
             xmlns:camunda="http://camunda.org/schema/1.0/bpmn"
             id="defs" targetNamespace="http://example.com/work">
  <process id="work" name="Work" isExecutable="true">
    <startEvent id="start"/>
    <sequenceFlow id="f1" sourceRef="start" targetRef="doWork"/>
    <serviceTask id="doWork" name="Do work" camunda:type="external" camunda:topic="work"/>
    <sequenceFlow id="f2" sourceRef="doWork" targetRef="end"/>
    <endEvent id="end"/>
  </process>
</definitions>
"#;

pub struct App {
    pub router: Router,
    pub engine: Arc<Engine>,
    /// The node's service mode (what a poll of the database would refresh).
    pub modes: steadyflow_api::modes::Modes,
    _dir: TempDir,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {}", self.status, self.text))
    }

    /// The `items` of a list endpoint's page (a 200 `{items, nextCursor}`), as an array.
    pub fn items(&self) -> Value {
        assert_eq!(self.status, StatusCode::OK, "{}", self.text);
        let page = self.json();
        assert!(
            page.get("nextCursor")
                .is_some_and(|c| c.is_null() || c.is_string()),
            "a page carries nextCursor: {page}"
        );
        assert!(page["items"].is_array(), "a page carries items: {page}");
        page["items"].clone()
    }

    /// The `error.code` of an error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl App {
    pub fn new() -> App {
        Self::build(Arc::new(SystemClock), Arc::new(AllowAll))
    }

    pub fn build(clock: Arc<dyn Clock>, auth: Arc<dyn Authenticator>) -> App {
        Self::build_over(clock, auth, |s| s)
    }

    /// An app whose engine sees the SQLite store through `wrap` (to inject faults).
    pub fn build_over(
        clock: Arc<dyn Clock>,
        auth: Arc<dyn Authenticator>,
        wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
    ) -> App {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SqliteStore::open(dir.path().join("t.db")).expect("open sqlite"));
        let keys = store.clone();
        let engine = Arc::new(Engine::new(wrap(store), clock));
        let modes = steadyflow_api::modes::Modes::default();
        let router = steadyflow_api::router(AppContext {
            engine: engine.clone(),
            auth,
            degraded: steadyflow_api::Degraded {
                modes: modes.clone(),
                keys,
                ..Default::default()
            },
            backups: None,
        });
        App {
            router,
            engine,
            modes,
            _dir: dir,
        }
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = to_bytes(resp.into_body(), usize::MAX).await.expect("body");
        Reply {
            status,
            headers,
            text: String::from_utf8(bytes.to_vec()).expect("utf-8 body"),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> Reply {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        self.send(b.body(body.into()).expect("request")).await
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, None, Body::empty()).await
    }

    pub async fn delete(&self, uri: &str) -> Reply {
        self.call(Method::DELETE, uri, None, Body::empty()).await
    }

    pub async fn post(&self, uri: &str, json: Value) -> Reply {
        self.call(
            Method::POST,
            uri,
            Some("application/json"),
            json.to_string(),
        )
        .await
    }

    pub async fn put(&self, uri: &str, json: Value) -> Reply {
        self.call(Method::PUT, uri, Some("application/json"), json.to_string())
            .await
    }

    pub async fn post_xml(&self, uri: &str, xml: &str) -> Reply {
        self.call(Method::POST, uri, Some("application/xml"), xml.to_string())
            .await
    }

    /// Deploys and returns the deployment body (201 or 200).
    pub async fn deploy(&self, xml: &str) -> Value {
        let r = self.post_xml("/api/v1/process-definitions", xml).await;
        assert!(
            r.status.is_success(),
            "deploy failed: {} {}",
            r.status,
            r.text
        );
        r.json()
    }

    /// Starts the latest version of `key`; returns the instance body.
    pub async fn start(&self, key: &str, body: Value) -> Value {
        let r = self
            .post(
                &format!("/api/v1/process-definitions/key/{key}/start"),
                body,
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.json()
    }
}

pub fn id(v: &Value) -> String {
    v["id"].as_str().expect("an id string").to_string()
}
