//! `steadyflow verify-recovery` (issue 17) against a real `steadyflow serve`, on SQLite
//! and PostgreSQL: a healthy node with a verified full backup passes every check (exit
//! 0, human and JSON reports); the same node fails (exit 1, naming the problem) once an
//! instance's runtime names an element its definition lacks, and once its database is
//! gone (PostgreSQL: the database dropped under it) or the node itself is (SQLite: the
//! process killed). A node restored from an older point than the newest backup fails the
//! row check, naming the table and both counts.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use steadyflow_store::{ChangeSet, RawJson, Store};

use crate::e2e::server::{ADMIN_TOKEN, ServerProcess};

const WAIT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" targetNamespace="t">
  <process id="hold" isExecutable="true">
    <startEvent id="s" />
    <sequenceFlow id="f1" sourceRef="s" targetRef="review" />
    <userTask id="review" />
    <sequenceFlow id="f2" sourceRef="review" targetRef="e" />
    <endEvent id="e" />
  </process>
</definitions>"#;

/// Runs `steadyflow verify-recovery --url URL [--json]`: (exit code, stdout).
fn verify(base: &str, json: bool) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_steadyflow"));
    cmd.arg("verify-recovery")
        .arg("--url")
        .arg(base)
        .arg("--timeout")
        .arg("20")
        .env("STEADYFLOW_TOKEN", ADMIN_TOKEN)
        .env("STEADYFLOW_LOG", "warn");
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("run verify-recovery");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The JSON report: (exit code, report, outcome of each check by name).
fn verify_json(base: &str) -> (i32, Value, Vec<(String, String)>) {
    let (code, out) = verify(base, true);
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let outcomes = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (code, report, outcomes)
}

fn detail<'a>(report: &'a Value, name: &str) -> &'a str {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["detail"].as_str())
        .unwrap_or_default()
}

fn config(dir: &Path) {
    std::fs::create_dir_all(dir.join("configs")).unwrap();
    std::fs::write(
        dir.join("configs/config.yaml"),
        "backup:\n  targets: [{type: local, path: ./remote}]\n  continuous: {enabled: false}\n  \
         schedules: {full: null, incremental: null}\n",
    )
    .unwrap();
}

/// A full backup over HTTP, waited for; its id.
fn full_backup(server: &ServerProcess) -> String {
    let (s, started) = server.call("POST", "/api/v1/backups", Some(&json!({"kind": "full"})));
    assert_eq!(s, 202, "{started}");
    let path = format!("/api/v1/backups/{}", started["id"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, b) = server.call("GET", &path, None);
        if b["state"] == "completed" {
            return b["run"]["backupId"].as_str().unwrap().to_string();
        }
        assert_ne!(b["state"], "failed", "{b}");
        assert!(Instant::now() < deadline, "backup did not finish: {b}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two instances waiting at a user task; their ids.
fn waiting(server: &ServerProcess) -> Vec<String> {
    assert!(server.deploy(WAIT).0 < 300);
    (0..2)
        .map(|_| {
            let (s, b) = server.call(
                "POST",
                "/api/v1/process-definitions/key/hold/start",
                Some(&json!({})),
            );
            assert_eq!(s, 201, "{b}");
            b["id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// The healthy node passes: every check, nothing skipped, and the smoke instance ends.
fn passes(server: &ServerProcess) {
    let (code, report, outcomes) = verify_json(&server.base);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["ok"], true);
    for (name, outcome) in &outcomes {
        assert_eq!(outcome, "pass", "{name}: {report:#}");
    }
    let names: Vec<&str> = outcomes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["health", "ready", "journal", "rows", "instances", "smoke"]
    );
    assert!(
        detail(&report, "rows").contains("definitions"),
        "{report:#}"
    );
    // The smoke instances completed; nothing of theirs waits.
    let (_, list) = server.call(
        "GET",
        "/api/v1/process-instances?definitionKey=steadyflow-verify-recovery",
        None,
    );
    let items = list["items"].as_array().unwrap();
    assert!(!items.is_empty());
    assert!(items.iter().all(|i| i["state"] == "completed"), "{list}");

    // The human report says the same.
    let (code, text) = verify(&server.base, false);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("RECOVERY VERIFIED"), "{text}");
    assert!(text.contains("PASS  smoke"), "{text}");
}

/// Instance `id`'s (only) token now stands at `ghost`, which its definition lacks.
async fn poison(store: &dyn Store, id: &str) {
    let inst = store.instance(id).await.unwrap().expect("instance exists");
    let mut rt: Value = serde_json::from_str(inst.runtime.as_str()).unwrap();
    assert_eq!(rt["tokens"][0]["element"], "review", "{rt}");
    rt["tokens"][0]["element"] = json!("ghost");
    let mut next = inst.clone();
    next.runtime = RawJson::from_text(rt.to_string()).unwrap();
    next.version += 1;
    store
        .apply(ChangeSet::new(next, Some(inst.version), inst.started_at))
        .await
        .expect("rewrite the runtime");
}

/// Healthy, then poisoned: returns the restarted server.
fn healthy_then_poisoned(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    database_url: Option<&str>,
    open_store: impl Fn() -> Arc<dyn Store>,
) -> ServerProcess {
    config(dir);
    let mut server = ServerProcess::start(dir, database_url, &[]);
    let ids = waiting(&server);
    full_backup(&server);
    passes(&server);

    server.kill();
    let store = open_store();
    rt.block_on(poison(store.as_ref(), &ids[1]));
    drop(store);
    let server = ServerProcess::start(dir, database_url, &[]);
    let (code, report, outcomes) = verify_json(&server.base);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["ok"], false);
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|(_, o)| o == "fail")
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(failed, ["instances"], "{report:#}");
    let why = detail(&report, "instances");
    assert!(why.contains(&ids[1]) && why.contains("`ghost`"), "{why}");
    assert!(!why.contains(&ids[0]), "{why}");
    let (code, text) = verify(&server.base, false);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("RECOVERY NOT VERIFIED: instances failed"),
        "{text}"
    );
    server
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn sqlite_verify_recovery_passes_then_names_what_is_wrong() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("steadyflow.db");
    let mut server = healthy_then_poisoned(&rt, dir.path(), None, || {
        Arc::new(steadyflow_store_sqlite::SqliteStore::open(&db).unwrap())
    });
    // The node is gone: nothing answers.
    let base = server.base.clone();
    server.kill();
    let (code, report, outcomes) = verify_json(&base);
    assert_eq!(code, 1, "{report:#}");
    assert!(outcomes.iter().all(|(_, o)| o != "pass"), "{report:#}");
    assert!(
        detail(&report, "health").contains("cannot reach"),
        "{report:#}"
    );
}

#[test]
fn postgres_verify_recovery_passes_then_names_what_is_wrong() {
    let rt = runtime();
    let Some(db) = rt.block_on(steadyflow_store_pg::testing::fresh_database()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = db.url().to_string();
    let server = healthy_then_poisoned(&rt, dir.path(), Some(&url), || {
        Arc::new(
            rt.block_on(steadyflow_store_pg::PgStore::connect(&url))
                .unwrap(),
        )
    });
    // The database is gone under the running node.
    rt.block_on(db.cleanup());
    let (code, report, outcomes) = verify_json(&server.base);
    assert_eq!(code, 1, "{report:#}");
    let outcome = |name: &str| {
        outcomes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, o)| o.clone())
            .unwrap()
    };
    assert_eq!(outcome("health"), "fail", "{report:#}");
    assert_eq!(outcome("ready"), "fail", "{report:#}");
    assert_eq!(outcome("smoke"), "fail", "{report:#}");
    assert!(detail(&report, "health").contains("database"), "{report:#}");
}

#[test]
fn sqlite_a_node_restored_from_an_older_point_fails_the_row_check() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    config(d);
    let mut server = ServerProcess::start(d, None, &[]);
    waiting(&server);
    let older = full_backup(&server);
    waiting(&server);
    let newer = full_backup(&server);
    server.kill();
    let out = Command::new(env!("CARGO_BIN_EXE_steadyflow"))
        .args([
            "restore",
            &format!("backups/{older}.tar.zst"),
            "--db-only",
            "--force",
        ])
        .arg("--data-dir")
        .arg(d)
        .current_dir(d)
        .env("STEADYFLOW_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = ServerProcess::start(d, None, &[]);
    let (code, report, outcomes) = verify_json(&server.base);
    assert_eq!(code, 1, "{report:#}");
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|(_, o)| o == "fail")
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(failed, ["rows"], "{report:#}");
    let why = detail(&report, "rows");
    assert!(
        why.contains(&format!("instances: 2 live, 4 in {newer}")),
        "{why}"
    );
}
