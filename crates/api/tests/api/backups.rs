//! `/api/v1/backups` over the [`Backups`] seam: paging, the answers of starting one
//! (202 with `Location`, 400, 409), a node without backups (503), and the `backup`
//! component of `/health`. The seam is implemented here by a small in-memory double of
//! the trait (the real one, over `steadyflow-backup`, is tested end to end in
//! `crates/server/tests/e2e/backup_api_tests.rs`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode, header};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};
use steadyflow_api::backups::{
    Backup, BackupHealth, BackupRun, BackupState, Backups, RecoveryPoint, StartBackup,
    Verification, VerificationState,
};
use steadyflow_api::{ApiError, AppContext, Code};
use steadyflow_engine::{Engine, SystemClock};
use steadyflow_store_sqlite::SqliteStore;
use tower::ServiceExt;

#[derive(Default)]
struct Shelf {
    points: Vec<RecoveryPoint>,
    running: Mutex<Option<String>>,
    health: BackupHealth,
}

fn point(n: u32, at: DateTime<Utc>) -> RecoveryPoint {
    RecoveryPoint {
        id: format!("p{n:02}"),
        kind: steadyflow_api::backups::BackupKind::Full,
        parent: None,
        created_at: at,
        source_backend: Some("sqlite".into()),
        data_classes: vec!["critical".into()],
        archive: format!("p{n:02}.tar.zst"),
        archive_size: 100,
        encrypted: false,
        table_rows: 1,
        tables: [("definitions".to_string(), 1)].into(),
        journal: None,
        verification: Verification {
            state: VerificationState::Verified,
            verified_at: Some(at),
            reason: None,
        },
        locations: vec!["local".into()],
    }
}

#[async_trait]
impl Backups for Shelf {
    async fn start(&self, request: StartBackup, by: &str) -> Result<BackupRun, ApiError> {
        let mut running = self.running.lock().unwrap();
        if let Some(id) = running.as_ref() {
            return Err(ApiError::new(Code::BackupRunning, format!("{id} runs"))
                .with_details(json!({"id": id})));
        }
        *running = Some("run-1".into());
        Ok(BackupRun {
            id: "run-1".into(),
            kind: request.kind,
            parts: request.parts,
            started_at: Utc::now(),
            started_by: by.into(),
            finished_at: None,
            error: None,
            backup_id: None,
        })
    }

    async fn points(&self) -> Result<Vec<RecoveryPoint>, ApiError> {
        Ok(self.points.clone())
    }

    async fn get(&self, id: &str) -> Result<Option<Backup>, ApiError> {
        Ok(self.points.iter().find(|p| p.id == id).map(|p| Backup {
            id: id.into(),
            state: BackupState::Completed,
            run: None,
            point: Some(p.clone()),
        }))
    }

    fn health(&self) -> BackupHealth {
        self.health.clone()
    }
}

fn app(backups: Option<Arc<dyn Backups>>) -> (axum::Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("t.db")).unwrap());
    let engine = Arc::new(Engine::new(store, Arc::new(SystemClock)));
    let router = steadyflow_api::router(AppContext {
        engine,
        auth: Arc::new(steadyflow_api::AllowAll),
        degraded: Default::default(),
        backups,
    });
    (router, dir)
}

async fn call(
    router: &axum::Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
    let mut b = Request::builder().method(method).uri(uri);
    let body = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let resp = router.clone().oneshot(b.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let location = resp
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (
        status,
        location,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn recovery_points_page_newest_first_and_every_one_is_seen_once() {
    let t0 = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
    // Seven points, two of them in the same second (the id orders them).
    let mut points: Vec<RecoveryPoint> = (0..6)
        .map(|n| point(n, t0 + chrono::Duration::hours(i64::from(n))))
        .collect();
    points.push(point(6, t0 + chrono::Duration::hours(5)));
    let shelf = Shelf {
        points,
        ..Shelf::default()
    };
    let (router, _dir) = app(Some(Arc::new(shelf)));
    let mut seen = Vec::new();
    let mut uri = "/api/v1/backups?limit=3".to_string();
    loop {
        let (s, _, page) = call(&router, Method::GET, &uri, None).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_string());
        }
        match page["nextCursor"].as_str() {
            Some(c) => uri = format!("/api/v1/backups?limit=3&after={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ["p06", "p05", "p04", "p03", "p02", "p01", "p00"]);
    let (s, _, e) = call(&router, Method::GET, "/api/v1/backups?after=nonsense", None).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    let (s, _, one) = call(&router, Method::GET, "/api/v1/backups/p03", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(one["point"]["verification"]["state"], "verified");
    let (s, _, e) = call(&router, Method::GET, "/api/v1/backups/p99", None).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

#[tokio::test]
async fn starting_answers_202_with_a_location_then_409_while_it_runs() {
    let (router, _dir) = app(Some(Arc::new(Shelf::default())));
    let (s, _, e) = call(
        &router,
        Method::POST,
        "/api/v1/backups",
        Some(json!({"kind": "incremental", "parts": "config"})),
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    let (s, _, e) = call(
        &router,
        Method::POST,
        "/api/v1/backups",
        Some(json!({"kind": "weekly"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    let (s, location, b) = call(&router, Method::POST, "/api/v1/backups", Some(json!({}))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    assert_eq!(location.as_deref(), Some("/api/v1/backups/run-1"));
    assert_eq!(b["state"], "running");
    assert_eq!(b["run"]["kind"], "full");
    assert_eq!(b["run"]["parts"], "all");
    assert_eq!(b["run"]["startedBy"], "anonymous");
    let (s, _, e) = call(
        &router,
        Method::POST,
        "/api/v1/backups",
        Some(json!({"kind": "full"})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["error"]["code"], "backup_running");
    assert_eq!(e["error"]["details"]["id"], "run-1");
}

#[tokio::test]
async fn without_backups_the_routes_answer_503_and_health_lists_no_backup() {
    let (router, _dir) = app(None);
    for (method, uri, body) in [
        (Method::GET, "/api/v1/backups", None),
        (Method::GET, "/api/v1/backups/x", None),
        (Method::POST, "/api/v1/backups", Some(json!({}))),
    ] {
        let (s, _, e) = call(&router, method, uri, body).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{uri}: {e}");
        assert_eq!(e["error"]["code"], "backups_not_configured");
    }
    let (_, _, h) = call(&router, Method::GET, "/health", None).await;
    assert!(h["components"].get("backup").is_none(), "{h}");
}

#[tokio::test]
async fn health_shows_the_backup_ages_and_degrades_with_a_warning() {
    let fine = Shelf {
        health: BackupHealth {
            last_success_age: Some(Duration::from_secs(600)),
            shipping_lag: Some(Duration::from_millis(1500)),
            warnings: Vec::new(),
        },
        ..Shelf::default()
    };
    let (router, _dir) = app(Some(Arc::new(fine)));
    let (s, _, h) = call(&router, Method::GET, "/health", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["status"], "up", "{h}");
    let b = &h["components"]["backup"];
    assert_eq!(b["status"], "up");
    assert_eq!(b["lastBackupAgeSeconds"], 600.0);
    assert_eq!(b["shippingLagSeconds"], 1.5);
    assert!(b.get("reason").is_none());

    let late = Shelf {
        health: BackupHealth {
            last_success_age: Some(Duration::from_secs(6 * 3600)),
            shipping_lag: None,
            warnings: vec!["the newest backup of the database is 6h 0m old (limit 5h 0m)".into()],
        },
        ..Shelf::default()
    };
    let (router, _dir) = app(Some(Arc::new(late)));
    let (s, _, h) = call(&router, Method::GET, "/health", None).await;
    assert_eq!(s, StatusCode::OK, "degraded still serves");
    assert_eq!(h["status"], "degraded", "{h}");
    let b = &h["components"]["backup"];
    assert_eq!(b["status"], "degraded");
    assert!(b["reason"].as_str().unwrap().contains("6h 0m old"), "{b}");
    assert!(b.get("shippingLagSeconds").is_none());
}
