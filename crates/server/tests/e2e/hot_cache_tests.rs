//! Two engines (two nodes) over one store: each keeps the instances it committed last
//! (its hot cache). When the other node moved an instance on, the cached copy is stale;
//! a command run on it must neither fail wrongly nor overwrite the other node's change.

use std::sync::Arc;

use serde_json::json;
use steadyflow_engine::{Engine, StartRequest, SystemClock};
use steadyflow_store::{InstanceState, Store, TaskFilter, TopicLock, Vars};

const STEPS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn" targetNamespace="t">
  <process id="steps" isExecutable="true">
    <startEvent id="s" />
    <sequenceFlow id="f1" sourceRef="s" targetRef="first" />
    <userTask id="first" />
    <sequenceFlow id="f2" sourceRef="first" targetRef="second" />
    <userTask id="second" />
    <sequenceFlow id="f3" sourceRef="second" targetRef="e" />
    <endEvent id="e" />
  </process>
  <process id="work" isExecutable="true">
    <startEvent id="ws" />
    <sequenceFlow id="w1" sourceRef="ws" targetRef="job" />
    <serviceTask id="job" camunda:type="external" camunda:topic="job" />
    <sequenceFlow id="w2" sourceRef="job" targetRef="we" />
    <endEvent id="we" />
  </process>
</definitions>"#;

fn vars(v: serde_json::Value) -> Vars {
    v.as_object().cloned().unwrap_or_default()
}

async fn stale_copies_are_read_again(store: Arc<dyn Store>) {
    let a = Engine::new(store.clone(), Arc::new(SystemClock));
    let b = Engine::new(store.clone(), Arc::new(SystemClock));
    a.deploy(STEPS).await.expect("deploy");

    // User tasks: `a` starts (and caches the instance at `first`), `b` completes `first`;
    // `a` then completes `second`, a task its cached copy has never heard of.
    let inst = a.start("steps", StartRequest::default()).await.unwrap();
    let tasks = |id: String| TaskFilter {
        instance_id: Some(id),
        ..Default::default()
    };
    let first = b.tasks(&tasks(inst.id.clone())).await.unwrap();
    assert_eq!(first.len(), 1);
    b.complete_task(&first[0].id, vars(json!({"by": "b"})))
        .await
        .unwrap();
    let second = a.tasks(&tasks(inst.id.clone())).await.unwrap();
    assert_eq!(second[0].activity_id, "second");
    let done = a
        .complete_task(&second[0].id, Vars::new())
        .await
        .expect("a reads the instance again instead of trusting its stale copy");
    assert_eq!(done.state, InstanceState::Completed);
    assert_eq!(done.variables.get("by"), Some(&json!("b")));

    // External task, no-read path: `a` starts and fetches (it knows the task's instance),
    // `b` sets a variable meanwhile; `a`'s completion must keep `b`'s variable.
    let inst = a.start("work", StartRequest::default()).await.unwrap();
    b.set_variables(&inst.id, vars(json!({"note": "from b"})))
        .await
        .unwrap();
    let topics = [TopicLock {
        topic: "job".into(),
        lock_duration_ms: 60_000,
    }];
    let locked = a.fetch_and_lock("worker", 10, &topics).await.unwrap();
    let task = locked
        .iter()
        .find(|l| l.task.instance_id == inst.id)
        .expect("the task is fetched");
    let done = a
        .complete_external_task(&task.task.id, "worker", vars(json!({"result": 1})))
        .await
        .expect("completion on a stale copy retries on fresh state");
    assert_eq!(done.state, InstanceState::Completed);
    assert_eq!(
        done.variables.get("note"),
        Some(&json!("from b")),
        "b's change kept"
    );
    assert_eq!(done.variables.get("result"), Some(&json!(1)));
    let stored = store.instance(&inst.id).await.unwrap().unwrap();
    assert_eq!(stored, done, "what a answered is what is stored");

    // A worker whose lock is gone still gets a clear refusal on the no-read path.
    let inst = a.start("work", StartRequest::default()).await.unwrap();
    let locked = a.fetch_and_lock("w1", 10, &topics).await.unwrap();
    let task = &locked
        .iter()
        .find(|l| l.task.instance_id == inst.id)
        .unwrap()
        .task;
    b.unlock_external_task(&task.id).await.unwrap();
    let err = a
        .complete_external_task(&task.id, "w1", Vars::new())
        .await
        .expect_err("the lock was released");
    assert!(
        err.to_string().contains("not locked by worker `w1`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_nodes_never_trust_a_stale_hot_instance() {
    let dir = tempfile::tempdir().unwrap();
    let store = steadyflow_store_sqlite::SqliteStore::open(dir.path().join("db.sqlite")).unwrap();
    stale_copies_are_read_again(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_nodes_never_trust_a_stale_hot_instance() {
    let Some(db) = steadyflow_store_pg::testing::fresh_database().await else {
        return;
    };
    let store = steadyflow_store_pg::PgStore::connect(db.url())
        .await
        .unwrap();
    stale_copies_are_read_again(Arc::new(store)).await;
    db.cleanup().await;
}
