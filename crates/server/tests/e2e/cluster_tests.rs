use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use steadyflow_store::Store;

use crate::e2e::server::ServerProcess;

const TIMER_THEN_WORK: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn" targetNamespace="t">
  <process id="cluster" isExecutable="true">
    <startEvent id="s" />
    <sequenceFlow id="f1" sourceRef="s" targetRef="wait" />
    <intermediateCatchEvent id="wait"><timerEventDefinition><timeDuration>PT1S</timeDuration></timerEventDefinition></intermediateCatchEvent>
    <sequenceFlow id="f2" sourceRef="wait" targetRef="work" />
    <serviceTask id="work" camunda:type="external" camunda:topic="work" />
    <sequenceFlow id="f3" sourceRef="work" targetRef="e" />
    <endEvent id="e" />
  </process>
</definitions>"#;

const INSTANCES: usize = 500;

/// Two `serve` processes on one PostgreSQL database run 500 instances' timers and external
/// tasks concurrently; every timer fires once and every task completes exactly once.
#[test]
fn two_nodes_share_one_postgres_without_double_execution() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(db) = rt.block_on(steadyflow_store_pg::testing::fresh_database()) else {
        return;
    };
    let url = db.url();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let env = [("STEADYFLOW_ENGINE__TIMERS__IDLE_POLL_MS", "20")];
    let a = ServerProcess::start(dir_a.path(), Some(db.url()), &env);
    let b = ServerProcess::start(dir_b.path(), Some(db.url()), &env);
    assert!(a.deploy(TIMER_THEN_WORK).0 < 300);

    let nodes = Arc::new([a, b]);
    std::thread::scope(|s| {
        for t in 0..4 {
            let nodes = nodes.clone();
            s.spawn(move || {
                for i in (t..INSTANCES).step_by(4) {
                    let (status, body) = nodes[i % 2].call(
                        "POST",
                        "/api/v1/process-definitions/key/cluster/start",
                        Some(&json!({ "variables": { "n": i } })),
                    );
                    assert_eq!(status, 201, "{body}");
                }
            });
        }
    });

    let completions: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    std::thread::scope(|s| {
        for w in 0..4 {
            let (nodes, completions) = (nodes.clone(), completions.clone());
            s.spawn(move || {
                let worker = format!("worker-{w}");
                let mut round = w;
                while completions.lock().unwrap().values().sum::<usize>() < INSTANCES && Instant::now() < deadline {
                    round += 1;
                    let node = &nodes[round % 2];
                    let body = json!({ "workerId": worker, "maxTasks": 10, "topics": [{ "topicName": "work", "lockDuration": 60000 }] });
                    let (status, locked) = node.call("POST", "/api/v1/external-tasks/fetch-and-lock", Some(&body));
                    assert_eq!(status, 200, "{locked}");
                    let locked = locked.as_array().cloned().unwrap_or_default();
                    if locked.is_empty() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    for task in locked {
                        let id = task["id"].as_str().unwrap().to_string();
                        // Complete through the other node half of the time.
                        let via = &nodes[(round + 1) % 2];
                        let (status, body) = via.call("POST", &format!("/api/v1/external-tasks/{id}/complete"), Some(&json!({ "workerId": worker })));
                        if status != 200 {
                            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                            let store = rt.block_on(steadyflow_store_pg::PgStore::connect(url)).unwrap();
                            for j in rt.block_on(store.journal_since(0, 1_000_000)).unwrap() {
                                if j.entity_id == id { eprintln!("DBG {} {} {} {}", j.seq, j.tx_time, j.op, j.row); }
                            }
                        }
                        assert_eq!(status, 200, "completing {id}: {body}");
                        *completions.lock().unwrap().entry(id).or_default() += 1;
                    }
                }
            });
        }
    });
    let completions = completions.lock().unwrap().clone();
    assert_eq!(
        completions.len(),
        INSTANCES,
        "distinct external tasks completed"
    );
    assert!(
        completions.values().all(|n| *n == 1),
        "a task was completed twice"
    );

    let store = rt
        .block_on(steadyflow_store_pg::PgStore::connect(db.url()))
        .unwrap();
    let instances = rt
        .block_on(store.list_instances(&Default::default()))
        .unwrap();
    assert_eq!(instances.len(), INSTANCES);
    for i in &instances {
        assert_eq!(i.state.as_str(), "completed", "instance {}", i.id);
        let history = rt.block_on(store.history(&i.id)).unwrap();
        for activity in ["wait", "work"] {
            let n = history
                .iter()
                .filter(|h| {
                    h.event == steadyflow_store::HistoryEvent::ActivityCompleted
                        && h.activity_id.as_deref() == Some(activity)
                })
                .count();
            assert_eq!(n, 1, "instance {}: `{activity}` completed {n} times", i.id);
        }
    }
    drop(nodes);
    rt.block_on(db.cleanup());
}
