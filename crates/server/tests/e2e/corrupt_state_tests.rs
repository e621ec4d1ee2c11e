//! One poisoned row must never stop a node (issue 16). Three instances wait at a timer;
//! the engine stops; one instance's runtime JSON is changed so that its token names an
//! element its definition does not have (what a bad manual edit or a restore gone wrong
//! leaves); the engine starts again and time passes. The other two instances' timers
//! fire and they complete, the poisoned one stands in a `corruptState` incident naming
//! the reason, its timer is not fired again, and `/health` tells the truth.
//!
//! Once in process with a moved clock (precise: batch, re-fire, repair and retry), and
//! once against the real `steadyflow serve` binary, each on SQLite and PostgreSQL. The
//! row is changed through the store's own `apply` (the same bytes an operator's
//! `UPDATE … SET runtime = …` leaves, on either backend, without a SQL client here).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use steadyflow_engine::{CORRUPT_STATE, Engine, EngineError, ManualClock};
use steadyflow_store::{
    ChangeSet, IncidentFilter, InstanceRecord, InstanceState, RawJson, Store, Vars,
};

use crate::e2e::server::ServerProcess;

const WAIT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" targetNamespace="t">
  <process id="wait" isExecutable="true">
    <startEvent id="s" />
    <sequenceFlow id="f1" sourceRef="s" targetRef="pause" />
    <intermediateCatchEvent id="pause"><timerEventDefinition><timeDuration>PT4S</timeDuration></timerEventDefinition></intermediateCatchEvent>
    <sequenceFlow id="f2" sourceRef="pause" targetRef="e" />
    <endEvent id="e" />
  </process>
</definitions>"#;

/// Replaces instance `id`'s runtime JSON by `edit`'s result (a new version of the row);
/// returns the runtime it had.
async fn rewrite_runtime(store: &dyn Store, id: &str, edit: impl FnOnce(&mut Value)) -> RawJson {
    let inst = store.instance(id).await.unwrap().expect("instance exists");
    let mut rt: Value = serde_json::from_str(inst.runtime.as_str()).unwrap();
    edit(&mut rt);
    let mut next = inst.clone();
    next.runtime = RawJson::from_text(rt.to_string()).unwrap();
    next.version += 1;
    store
        .apply(ChangeSet::new(next, Some(inst.version), inst.started_at))
        .await
        .expect("rewrite the runtime");
    inst.runtime
}

/// The poison: the instance's (only) token now stands at `ghost`.
async fn poison(store: &dyn Store, id: &str) -> RawJson {
    rewrite_runtime(store, id, |rt| {
        assert_eq!(
            rt["tokens"][0]["element"], "pause",
            "waits at the timer: {rt}"
        );
        rt["tokens"][0]["element"] = json!("ghost");
    })
    .await
}

async fn open_incidents(store: &dyn Store, id: &str) -> Vec<steadyflow_store::IncidentRecord> {
    let filter = IncidentFilter {
        instance_id: Some(id.to_string()),
        open: Some(true),
        ..Default::default()
    };
    store.list_incidents(&filter).await.unwrap()
}

async fn state(store: &dyn Store, id: &str) -> InstanceRecord {
    store.instance(id).await.unwrap().unwrap()
}

async fn in_process(store: Arc<dyn Store>) {
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let first = Engine::new(store.clone(), clock.clone());
    first.deploy(WAIT).await.unwrap();
    let mut ids = Vec::new();
    for n in 0..3 {
        let req = steadyflow_engine::StartRequest {
            variables: json!({ "n": n }).as_object().cloned().unwrap(),
            business_key: None,
        };
        ids.push(first.start("wait", req).await.unwrap().id);
    }
    drop(first);
    let bad = ids[1].clone();
    let good_runtime = poison(store.as_ref(), &bad).await;

    // Started again: a new engine (nothing cached), time moves past the timers.
    let engine = Engine::new(store.clone(), clock.clone());
    clock.advance(chrono::Duration::seconds(5));
    let taken = engine
        .fire_due_timers(100)
        .await
        .expect("the batch goes on");
    assert_eq!(taken, 3);
    for id in [&ids[0], &ids[2]] {
        assert_eq!(
            state(store.as_ref(), id).await.state,
            InstanceState::Completed
        );
    }
    let stopped = state(store.as_ref(), &bad).await;
    assert_eq!(stopped.state, InstanceState::Incident);
    assert!(
        stopped.runtime.as_str().contains("ghost"),
        "the stored runtime is kept as found, for repair"
    );
    let incidents = open_incidents(store.as_ref(), &bad).await;
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0].incident_type, CORRUPT_STATE);
    assert_eq!(incidents[0].activity_id, "pause");
    assert!(
        incidents[0].message.contains("`ghost`"),
        "{}",
        incidents[0].message
    );
    assert!(
        store.list_timers(&bad).await.unwrap().is_empty(),
        "the poisoned timer is removed with the incident"
    );

    // Not fired again, not even once its lock would have run out.
    clock.advance(chrono::Duration::minutes(10));
    assert_eq!(engine.fire_due_timers(100).await.unwrap(), 0);
    // Other commands are refused without a second incident.
    let err = engine
        .set_variables(&bad, Vars::new())
        .await
        .expect_err("a stopped instance refuses commands");
    assert!(matches!(err, EngineError::Corrupt { .. }), "{err:?}");
    assert_eq!(open_incidents(store.as_ref(), &bad).await.len(), 1);

    // Repaired, and still refused until the incident is retried.
    rewrite_runtime(store.as_ref(), &bad, |rt| {
        *rt = serde_json::from_str(good_runtime.as_str()).unwrap();
    })
    .await;
    let err = engine.set_variables(&bad, Vars::new()).await.unwrap_err();
    assert!(matches!(err, EngineError::Corrupt { .. }), "{err:?}");
    let retried = engine.retry_incident(&incidents[0].id).await.unwrap();
    assert_eq!(retried.state, InstanceState::Active);
    assert!(open_incidents(store.as_ref(), &bad).await.is_empty());
    let timers = store.list_timers(&bad).await.unwrap();
    assert_eq!(timers.len(), 1, "the removed timer is armed again");
    assert_eq!(engine.fire_due_timers(100).await.unwrap(), 1, "due at once");
    assert_eq!(
        state(store.as_ref(), &bad).await.state,
        InstanceState::Completed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_engine_stops_only_the_poisoned_instance() {
    let dir = tempfile::tempdir().unwrap();
    let store = steadyflow_store_sqlite::SqliteStore::open(dir.path().join("db.sqlite")).unwrap();
    in_process(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_engine_stops_only_the_poisoned_instance() {
    let Some(db) = steadyflow_store_pg::testing::fresh_database().await else {
        return;
    };
    let store = steadyflow_store_pg::PgStore::connect(db.url())
        .await
        .unwrap();
    in_process(Arc::new(store)).await;
    db.cleanup().await;
}

/// Polls `f` until it holds (30 s at most).
fn until(what: &str, mut f: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let Some(last) = f() else { return };
        assert!(Instant::now() < deadline, "{what}; last seen: {last}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The operator's account of issue 16 against the real binary: start three instances,
/// stop the server, poison one row with `open_store`'s store, start again, wait.
fn served(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    database_url: Option<&str>,
    open_store: impl Fn() -> Arc<dyn Store>,
) {
    let env = [("STEADYFLOW_ENGINE__TIMERS__IDLE_POLL_MS", "50")];
    let mut server = ServerProcess::start(dir, database_url, &env);
    assert!(server.deploy(WAIT).0 < 300);
    let ids: Vec<String> = (0..3)
        .map(|n| {
            let (status, body) = server.call(
                "POST",
                "/api/v1/process-definitions/key/wait/start",
                Some(&json!({ "variables": { "n": n } })),
            );
            assert_eq!(status, 201, "{body}");
            body["id"].as_str().unwrap().to_string()
        })
        .collect();
    server.kill();

    let store = open_store();
    rt.block_on(poison(store.as_ref(), &ids[1]));
    drop(store);

    let server = ServerProcess::start(dir, database_url, &env);
    let get = |path: String| server.call("GET", &path, None);
    until("the other two instances complete", || {
        let states: Vec<Value> = [&ids[0], &ids[2]]
            .iter()
            .map(|id| get(format!("/api/v1/process-instances/{id}")).1["state"].clone())
            .collect();
        (states != [json!("completed"), json!("completed")]).then(|| format!("{states:?}"))
    });
    until("the poisoned instance stands in an incident", || {
        let (_, inst) = get(format!("/api/v1/process-instances/{}", ids[1]));
        (inst["state"] != "incident").then(|| inst.to_string())
    });
    let (status, incidents) = get(format!("/api/v1/incidents?processInstanceId={}", ids[1]));
    assert_eq!(status, 200);
    let incidents = incidents["items"].as_array().unwrap().clone();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0]["incidentType"], "corruptState");
    assert_eq!(incidents[0]["activityId"], "pause");
    let message = incidents[0]["message"].as_str().unwrap();
    assert!(message.contains("`ghost`"), "names the reason: {message}");

    // The node is healthy and says so: its timer driver runs (it never failed).
    let (status, mut health) = get("/health".into());
    assert_eq!(status, 200, "{health}");
    // Latencies vary; each component has one (a ping, or the last iteration).
    for c in health["components"].as_object_mut().unwrap().values_mut() {
        let latency = c.as_object_mut().unwrap().remove("latencyMs");
        assert!(latency.is_some_and(|l| l.is_number()), "{c}");
    }
    assert_eq!(
        health,
        json!({"status": "up", "components": {
            "database": {"status": "up"},
            "timerDriver": {"status": "up", "restarts": 0},
        }, "mode": {"mode": "normal"}})
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn sqlite_server_survives_a_poisoned_row() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("steadyflow.db");
    served(&rt, dir.path(), None, || {
        Arc::new(steadyflow_store_sqlite::SqliteStore::open(&db).unwrap())
    });
}

#[test]
fn postgres_server_survives_a_poisoned_row() {
    let rt = runtime();
    let Some(db) = rt.block_on(steadyflow_store_pg::testing::fresh_database()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    served(&rt, dir.path(), Some(db.url()), || {
        Arc::new(
            rt.block_on(steadyflow_store_pg::PgStore::connect(db.url()))
                .unwrap(),
        )
    });
    rt.block_on(db.cleanup());
}
