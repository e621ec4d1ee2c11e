use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::e2e::consistency;
use crate::e2e::server::ServerProcess;

const ONE_TASK: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn" targetNamespace="t">
  <process id="crash" isExecutable="true">
    <startEvent id="s" />
    <sequenceFlow id="f1" sourceRef="s" targetRef="fork" />
    <parallelGateway id="fork" />
    <sequenceFlow id="f2" sourceRef="fork" targetRef="approve" />
    <sequenceFlow id="f3" sourceRef="fork" targetRef="charge" />
    <userTask id="approve" name="Approve" />
    <serviceTask id="charge" camunda:type="external" camunda:topic="charge" />
    <sequenceFlow id="f4" sourceRef="approve" targetRef="join" />
    <sequenceFlow id="f5" sourceRef="charge" targetRef="join" />
    <parallelGateway id="join" />
    <sequenceFlow id="f6" sourceRef="join" targetRef="e" />
    <endEvent id="e" />
  </process>
</definitions>"#;

/// `kill -9` of a serving process in the middle of a load of starts and completions leaves
/// a consistent SQLite database in which every acknowledged start is present.
#[test]
fn killed_server_leaves_consistent_sqlite_database() {
    let dir = tempfile::tempdir().unwrap();
    let acked = load_then_kill(dir.path(), None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store =
        steadyflow_store_sqlite::SqliteStore::open(dir.path().join("steadyflow.db")).unwrap();
    let present: HashSet<String> = rt
        .block_on(consistency::check(&store))
        .into_iter()
        .collect();
    assert_all_present(&acked, &present);
}

/// The same on PostgreSQL.
#[test]
fn killed_server_leaves_consistent_postgres_database() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(db) = rt.block_on(steadyflow_store_pg::testing::fresh_database()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let acked = load_then_kill(dir.path(), Some(db.url()));
    rt.block_on(wait_for_sessions_to_end(db.url()));
    let store = rt
        .block_on(steadyflow_store_pg::PgStore::connect(db.url()))
        .unwrap();
    let present: HashSet<String> = rt
        .block_on(consistency::check(&store))
        .into_iter()
        .collect();
    assert_all_present(&acked, &present);
    drop(store);
    rt.block_on(db.cleanup());
}

/// Waits until the killed server's PostgreSQL sessions are gone. A pipelined `COMMIT`
/// the client sent just before it died is still carried out by its backend; read
/// before that, the check could see a start's task row without its instance row
/// (two reads, two moments). Nothing changes the database once no session is left.
async fn wait_for_sessions_to_end(url: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let others: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if others == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{others} sessions of the killed server stay open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn assert_all_present(acked: &[String], present: &HashSet<String>) {
    let lost: Vec<&String> = acked.iter().filter(|id| !present.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged instances were lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

/// Starts a server, loads it with starts and task completions from four threads, kills it
/// with SIGKILL once 200 starts were acknowledged; returns the acknowledged instance ids.
fn load_then_kill(dir: &std::path::Path, database_url: Option<&str>) -> Vec<String> {
    let mut server = ServerProcess::start(dir, database_url, &[]);
    assert!(server.deploy(ONE_TASK).0 < 300);
    let base = server.base.clone();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..4 {
        let (base, acked, stop) = (base.clone(), acked.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let agent = crate::e2e::server::agent();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = agent
                    .post(format!("{base}/api/v1/process-definitions/key/crash/start"))
                    .send_json(json!({ "variables": { "thread": t } }));
                let Ok(mut r) = r else { break };
                if r.status() == 201 {
                    let v: serde_json::Value = r.body_mut().read_json().unwrap();
                    acked
                        .lock()
                        .unwrap()
                        .push(v["id"].as_str().unwrap().to_string());
                }
                // Complete a user task now and then, so updates are in flight too.
                if let Ok(mut tasks) = agent.get(format!("{base}/api/v1/tasks?assignee=")).call() {
                    let list: serde_json::Value = tasks.body_mut().read_json().unwrap_or_default();
                    if let Some(id) = list
                        .as_array()
                        .and_then(|a| a.first())
                        .and_then(|t| t["id"].as_str())
                    {
                        let _ = agent
                            .post(format!("{base}/api/v1/tasks/{id}/complete"))
                            .send_json(json!({}));
                    }
                }
            }
        }));
    }
    let begin = Instant::now();
    while acked.lock().unwrap().len() < 200 && begin.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 200,
        "the load never got going: {} starts acknowledged",
        acked.len()
    );
    acked
}
