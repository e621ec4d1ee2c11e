//! Helpers of the backup tests: a realistic dataset made through the engine, the
//! `steadyflow` binary run as an operator would, and table digests to compare databases.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use steadyflow_engine::{Engine, ManualClock, StartRequest};
use steadyflow_store::recovery::{ContentHasher, ExportBatch, Exporter, TableDigest};
use steadyflow_store::{InstanceFilter, InstanceState, Store, TaskFilter, TopicLock, Vars};

/// Start → parallel fork: a user task, an external task and a one-hour timer → join → end.
pub const ORDER: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn" targetNamespace="t">
  <process id="order" isExecutable="true">
    <startEvent id="s" />
    <sequenceFlow id="f1" sourceRef="s" targetRef="fork" />
    <parallelGateway id="fork" />
    <sequenceFlow id="f2" sourceRef="fork" targetRef="approve" />
    <sequenceFlow id="f3" sourceRef="fork" targetRef="charge" />
    <sequenceFlow id="f4" sourceRef="fork" targetRef="wait" />
    <userTask id="approve" name="Approve" camunda:candidateGroups="accounting" />
    <serviceTask id="charge" camunda:type="external" camunda:topic="charge" />
    <intermediateCatchEvent id="wait">
      <timerEventDefinition><timeDuration>PT1H</timeDuration></timerEventDefinition>
    </intermediateCatchEvent>
    <sequenceFlow id="f5" sourceRef="approve" targetRef="join" />
    <sequenceFlow id="f6" sourceRef="charge" targetRef="join" />
    <sequenceFlow id="f7" sourceRef="wait" targetRef="join" />
    <parallelGateway id="join" />
    <sequenceFlow id="f8" sourceRef="join" targetRef="e" />
    <endEvent id="e" />
  </process>
</definitions>"#;

pub fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-06-01T09:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn vars(v: Value) -> Vars {
    v.as_object().cloned().unwrap_or_default()
}

/// Puts `n` instances at every kind of wait state: user tasks open or done, external tasks
/// open, locked by a worker (10 min) or done, timers pending or fired; every fifth
/// instance completed.
pub async fn populate(store: Arc<dyn Store>, n: usize) {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = Engine::new(store, clock.clone());
    engine.deploy(ORDER).await.expect("deploy");
    let mut ids = vec![String::new(); n];
    // Every fifth instance starts an hour earlier, so only its timer is due below.
    for early in [true, false] {
        for (i, slot) in ids.iter_mut().enumerate() {
            if (i.is_multiple_of(5)) != early {
                continue;
            }
            let inst = engine
                .start(
                    "order",
                    StartRequest {
                        variables: vars(json!({"amount": i * 10, "customer": {"name": format!("c{i}"), "vip": i.is_multiple_of(7)}})),
                        business_key: Some(format!("order-{i}")),
                    },
                )
                .await
                .expect("start");
            *slot = inst.id;
        }
        if early {
            clock.advance(Duration::minutes(61));
        }
    }
    let fired = engine.fire_due_timers(10_000).await.unwrap();
    assert_eq!(fired, n.div_ceil(5));
    for (i, id) in ids.iter().enumerate() {
        if i.is_multiple_of(3) || i.is_multiple_of(5) {
            let tasks = engine
                .tasks(&TaskFilter {
                    instance_id: Some(id.clone()),
                    ..Default::default()
                })
                .await
                .unwrap();
            engine
                .complete_task(&tasks[0].id, vars(json!({"approved": true})))
                .await
                .unwrap();
        }
    }
    // Lock every charge for ten minutes; complete some, leave the others locked.
    let topics = [TopicLock {
        topic: "charge".into(),
        lock_duration_ms: 600_000,
    }];
    let locked = engine.fetch_and_lock("w-old", n, &topics).await.unwrap();
    assert_eq!(locked.len(), n);
    for t in &locked {
        let i = t.variables["amount"].as_u64().unwrap() as usize / 10;
        if i.is_multiple_of(2) || i.is_multiple_of(5) {
            engine
                .complete_external_task(&t.task.id, "w-old", vars(json!({"charged": true})))
                .await
                .unwrap();
        }
    }
}

/// Runs every instance of a restored database to its end: timers fire, expired locks
/// are fetched again by a new worker, user tasks are completed. Returns the completed
/// count.
pub async fn finish_all(store: Arc<dyn Store>) -> usize {
    // Past every timer and lock: those of the populated instances (June 2026) and of any
    // started on the wall clock.
    let later = (t0() + Duration::hours(3)).max(Utc::now() + Duration::hours(2));
    let clock = Arc::new(ManualClock::new(later));
    let engine = Engine::new(store, clock);
    engine.run_due_timers().await.unwrap();
    let topics = [TopicLock {
        topic: "charge".into(),
        lock_duration_ms: 60_000,
    }];
    loop {
        let got = engine.fetch_and_lock("w-new", 500, &topics).await.unwrap();
        if got.is_empty() {
            break;
        }
        for t in got {
            engine
                .complete_external_task(&t.task.id, "w-new", Vars::new())
                .await
                .unwrap();
        }
    }
    loop {
        let tasks = engine
            .tasks(&TaskFilter {
                limit: Some(500),
                ..Default::default()
            })
            .await
            .unwrap();
        if tasks.is_empty() {
            break;
        }
        for t in tasks {
            engine.complete_task(&t.id, Vars::new()).await.unwrap();
        }
    }
    let all = engine
        .instances(&InstanceFilter {
            limit: Some(100_000),
            ..Default::default()
        })
        .await
        .unwrap();
    let open: Vec<_> = all
        .iter()
        .filter(|i| i.state != InstanceState::Completed)
        .map(|i| (i.id.clone(), i.state))
        .collect();
    assert!(open.is_empty(), "instances that did not finish: {open:?}");
    all.len()
}

/// Row count and content checksum of every table of a database, through the backup
/// export (the journal excluded: a restore starts its own).
pub async fn digests(url: &str) -> BTreeMap<String, TableDigest> {
    digests_with(url, false).await
}

/// As [`digests`], with history rows compared without their `seq`: a replayed history
/// row is appended under a new number (PostgreSQL's sequence has gaps where batches
/// rolled back), in the same order.
pub async fn state_digests(url: &str) -> BTreeMap<String, TableDigest> {
    digests_with(url, true).await
}

async fn digests_with(url: &str, strip_history_seq: bool) -> BTreeMap<String, TableDigest> {
    let exporter: Box<dyn Exporter> = match url.strip_prefix("sqlite://") {
        Some(p) => Box::new(steadyflow_store_sqlite::recovery::SqliteExporter::new(p)),
        None => Box::new(steadyflow_store_pg::recovery::PgExporter::new(url).unwrap()),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<ExportBatch>(8);
    let collect = tokio::spawn(async move {
        let mut hashers: BTreeMap<String, ContentHasher> = BTreeMap::new();
        while let Some(b) = rx.recv().await {
            let h = hashers.entry(b.table.name.to_string()).or_default();
            for l in &b.lines {
                if strip_history_seq && b.table.name == "history" {
                    let mut v: Value = serde_json::from_str(l).unwrap();
                    v.as_object_mut().unwrap().remove("seq");
                    h.add(&v.to_string()).unwrap();
                } else {
                    h.add(l).unwrap();
                }
            }
        }
        hashers
    });
    exporter.export(tx).await.expect("export");
    collect
        .await
        .unwrap()
        .into_iter()
        .filter(|(t, _)| t != "journal")
        .map(|(t, h)| (t, h.finish()))
        .collect()
}

/// The `steadyflow` binary, run in `cwd` with quiet logs.
pub fn steadyflow(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_steadyflow"));
    cmd.current_dir(cwd)
        .args(args)
        .env("STEADYFLOW_LOG", "warn")
        .env_remove("ENCRYPT_KEY")
        .env_remove("STEADYFLOW_DATABASE_URL")
        .env_remove("STEADYFLOW_BACKUP_DIR")
        .env_remove("STEADYFLOW_AGE_RECIPIENTS")
        .env_remove("STEADYFLOW_AGE_IDENTITY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run steadyflow")
}

/// Exit code, stdout and stderr of a run, for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// `steadyflow backup --json` into `dir/backups`; returns the sidecar JSON.
pub fn backup(dir: &Path, db_url: &str, extra: &[&str], env: &[(&str, &str)]) -> Value {
    let backups = dir.join("backups");
    let mut args = vec![
        "backup",
        "--json",
        "--database-url",
        db_url,
        "--dir",
        backups.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = steadyflow(dir, &args, env);
    assert_eq!(code(&out), 0, "backup failed: {}", show(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("backup --json output");
    v["backup"].clone()
}

pub fn archive_path(dir: &Path, sidecar: &Value) -> PathBuf {
    dir.join("backups")
        .join(sidecar["archive"].as_str().expect("archive name"))
}

/// `steadyflow restore WHAT --json` into `db_url`.
pub fn restore(
    dir: &Path,
    what: &str,
    db_url: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let backups = dir.join("backups");
    let mut args = vec![
        "restore",
        what,
        "--json",
        "--database-url",
        db_url,
        "--dir",
        backups.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    steadyflow(dir, &args, env)
}

/// Rows in the live journal.
pub async fn journal_rows(url: &str) -> usize {
    let exporter: Box<dyn Exporter> = match url.strip_prefix("sqlite://") {
        Some(p) => Box::new(steadyflow_store_sqlite::recovery::SqliteExporter::new(p)),
        None => Box::new(steadyflow_store_pg::recovery::PgExporter::new(url).unwrap()),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<ExportBatch>(8);
    let count = tokio::spawn(async move {
        let mut n = 0;
        while let Some(b) = rx.recv().await {
            n += b.lines.len();
        }
        n
    });
    exporter
        .export_journal(-1, tx)
        .await
        .expect("journal export");
    count.await.unwrap()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub async fn open(url: &str) -> Arc<dyn Store> {
    match url.strip_prefix("sqlite://") {
        Some(p) => Arc::new(steadyflow_store_sqlite::SqliteStore::open(p).unwrap()),
        None => Arc::new(steadyflow_store_pg::PgStore::connect(url).await.unwrap()),
    }
}

pub fn sqlite_url(dir: &Path, name: &str) -> String {
    format!("sqlite://{}", dir.join(name).display())
}

/// Drops what a PostgreSQL restore may leave besides the test database itself.
pub async fn drop_side_databases(db: &steadyflow_store_pg::testing::TestDatabase) {
    let admin = steadyflow_store_pg::testing::with_dbname(db.url(), "postgres");
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for suffix in ["_restore", "_restore_old"] {
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {}{suffix} WITH (FORCE)",
                db.name()
            ))
            .await
            .unwrap();
    }
}

/// Backs up a database that an engine keeps open, restores it into another, compares
/// every table, and runs every restored instance to its end.
pub fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub async fn more_work(store: Arc<dyn Store>, worker: &str, starts: usize) -> Vec<String> {
    use steadyflow_engine::{Engine, StartRequest, SystemClock};
    use steadyflow_store::{TaskFilter, TopicLock, Vars};
    let engine = Engine::new(store, Arc::new(SystemClock));
    let tasks = engine
        .tasks(&TaskFilter {
            limit: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    for t in tasks {
        engine.complete_task(&t.id, Vars::new()).await.unwrap();
    }
    // Locks taken at populate time (June 2026) have long expired on the wall clock.
    let topics = [TopicLock {
        topic: "charge".into(),
        lock_duration_ms: 600_000,
    }];
    let mut done = Vec::new();
    for t in engine.fetch_and_lock(worker, 3, &topics).await.unwrap() {
        engine
            .complete_external_task(&t.task.id, worker, Vars::new())
            .await
            .unwrap();
        done.push(t.task.id);
    }
    for k in 0..starts {
        engine
            .start(
                "order",
                StartRequest {
                    business_key: Some(format!("{worker}-{k}")),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    done
}
