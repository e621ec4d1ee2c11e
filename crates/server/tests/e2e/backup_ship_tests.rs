//! Continuous journal shipping (issue 14): `serve` ships the journal to an S3 bucket every
//! interval; after `kill -9` and the loss of the database and of the local backups, a
//! restore from the bucket alone holds every acknowledged instance but those of the last
//! moments, and what is lost is a suffix of the acknowledgements (no gap).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::e2e::backup_support::*;
use crate::e2e::moto::Moto;
use crate::e2e::server::ServerProcess;

const INTERVAL_MS: u64 = 1000;

fn write_config(data: &Path, moto: &Moto, bucket: &str) {
    std::fs::create_dir_all(data.join("configs")).unwrap();
    std::fs::write(
        data.join("configs/config.yaml"),
        format!(
            "backup:\n  dir: ./backups\n  continuous: {{interval: {INTERVAL_MS}ms}}\n  \
             schedules: {{full: null, incremental: null}}\n  targets:\n    \
             - {{type: s3, endpoint: \"{}\", bucket: {bucket}, prefix: ship/, path_style: true, \
             access_key_id: test, secret_access_key: test}}\n",
            moto.endpoint()
        ),
    )
    .unwrap();
}

/// Ids in the restored SQLite database's instances table.
fn restored_ids(db: &Path) -> std::collections::HashSet<String> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c.prepare("SELECT id FROM instances").unwrap();
    st.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// One run: write, kill -9, lose everything local, restore from the bucket. Returns the
/// lost window: from the first acknowledged-but-lost start to the kill (zero when
/// nothing acknowledged was lost).
fn one_run(
    moto: &Moto,
    bucket: &str,
    pg: Option<steadyflow_store_pg::testing::TestDatabase>,
) -> Duration {
    moto.create_bucket(bucket, false);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_config(&data, moto, bucket);
    let mut server = ServerProcess::start(&data, pg.as_ref().map(|d| d.url()), &[]);
    let (status, _) = server.deploy(ORDER);
    assert!(status == 201 || status == 200, "deploy: {status}");
    let acked: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        let url = format!("{}/api/v1/process-definitions/key/order/start", server.base);
        std::thread::spawn(move || {
            let agent = crate::e2e::server::agent();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let r = agent.post(&url).send_json(
                    json!({"businessKey": format!("o-{i}"), "variables": {"amount": i}}),
                );
                let Ok(mut r) = r else { break };
                if r.status() != 201 {
                    break;
                }
                let v: serde_json::Value = r.body_mut().read_json().unwrap();
                acked
                    .lock()
                    .unwrap()
                    .push((v["id"].as_str().unwrap().to_string(), Instant::now()));
            }
        })
    };
    // Several shipping rounds while writing, then a crash in the middle of writing.
    std::thread::sleep(Duration::from_millis(4 * INTERVAL_MS + 300));
    let killed = Instant::now();
    server.kill();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    // The machine is lost: database and local backups.
    std::fs::remove_dir_all(&data).unwrap();
    if let Some(pg) = pg {
        runtime().block_on(pg.cleanup());
    }
    let restore_dir = dir.path().join("elsewhere");
    std::fs::create_dir_all(&restore_dir).unwrap();
    let cfg = restore_dir.join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "backup:\n  targets:\n    - {{type: s3, endpoint: \"{}\", bucket: {bucket}, prefix: ship/, \
             path_style: true, access_key_id: test, secret_access_key: test}}\n",
            moto.endpoint()
        ),
    )
    .unwrap();
    let db = restore_dir.join("restored.db");
    let out = restore(
        &restore_dir,
        "latest",
        &format!("sqlite://{}", db.display()),
        &["--config", cfg.to_str().unwrap(), "--db-only"],
        &[],
    );
    assert_eq!(code(&out), 0, "restore failed: {}", show(&out));
    let present = restored_ids(&db);
    let acked = acked.lock().unwrap();
    assert!(acked.len() > 20, "the writer got only {} acks", acked.len());
    // What is lost is a suffix of the acknowledgements: no gap before it.
    let first_lost = acked.iter().position(|(id, _)| !present.contains(id));
    if let Some(p) = first_lost {
        let gaps: Vec<&String> = acked[p..]
            .iter()
            .filter(|(id, _)| present.contains(id))
            .map(|(id, _)| id)
            .collect();
        assert!(gaps.is_empty(), "restored after a lost one: {gaps:?}");
    }
    let lost = first_lost.map_or(Duration::ZERO, |p| killed.duration_since(acked[p].1));
    eprintln!(
        "RPO run: {} acknowledged, {} lost, window {:?}",
        acked.len(),
        first_lost.map_or(0, |p| acked.len() - p),
        lost
    );
    lost
}

/// Sorted windows → (p50, p99, max).
fn summary(mut windows: Vec<Duration>) -> (Duration, Duration, Duration) {
    windows.sort();
    let pick = |q: f64| windows[((windows.len() as f64 - 1.0) * q).round() as usize];
    (pick(0.5), pick(0.99), windows[windows.len() - 1])
}

/// One interval, plus one round's own time (export, archive, upload) on a busy 2-core
/// machine.
fn bound() -> Duration {
    Duration::from_millis(2 * INTERVAL_MS + 1000)
}

fn runs() -> usize {
    std::env::var("STEADYFLOW_RPO_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
}

/// `STEADYFLOW_RPO_RUNS=20` measures p50/p99 (the report's figures); one run by default.
#[test]
fn a_lost_machine_costs_at_most_about_one_shipping_interval() {
    let Some(moto) = Moto::start() else { return };
    let windows: Vec<Duration> = (0..runs())
        .map(|i| one_run(&moto, &format!("rpo-{i}"), None))
        .collect();
    let (p50, p99, max) = summary(windows);
    eprintln!(
        "RPO on SQLite over {} run(s): p50 {p50:?}, p99 {p99:?}, max {max:?}",
        runs()
    );
    assert!(
        max <= bound(),
        "lost {max:?} of acknowledged work (bound {:?})",
        bound()
    );
}

#[test]
fn a_lost_postgres_costs_at_most_about_one_shipping_interval() {
    let Some(moto) = Moto::start() else { return };
    let rt = runtime();
    let mut windows = Vec::new();
    for i in 0..runs() {
        let Some(pg) = rt.block_on(steadyflow_store_pg::testing::fresh_database()) else {
            return;
        };
        windows.push(one_run(&moto, &format!("rpo-pg-{i}"), Some(pg)));
    }
    let (p50, p99, max) = summary(windows);
    eprintln!(
        "RPO on PostgreSQL over {} run(s): p50 {p50:?}, p99 {p99:?}, max {max:?}",
        runs()
    );
    assert!(
        max <= bound(),
        "lost {max:?} of acknowledged work (bound {:?})",
        bound()
    );
}

/// `/metrics` of a node, or "" when it does not answer.
fn metrics_text(base: &str) -> String {
    crate::e2e::server::agent()
        .get(&format!("{base}/metrics"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default()
}

fn is_leader(base: &str) -> bool {
    metrics_text(base)
        .lines()
        .any(|l| l.trim() == "steadyflow_journal_shipper_leader 1")
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two nodes on one PostgreSQL database ship to one bucket: one at a time (the lease), and
/// when the shipping node is killed the other continues the chain without a gap (the
/// restore's chain check refuses one) or an overlap, so every acknowledged start is back.
#[test]
fn a_second_node_takes_over_shipping_without_a_gap() {
    let Some(moto) = Moto::start() else { return };
    let rt = runtime();
    let Some(pg) = rt.block_on(steadyflow_store_pg::testing::fresh_database()) else {
        return;
    };
    moto.create_bucket("takeover", false);
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    for d in [&a_dir, &b_dir] {
        std::fs::create_dir_all(d).unwrap();
        write_config(d, &moto, "takeover");
    }
    let mut a = ServerProcess::start(&a_dir, Some(pg.url()), &[]);
    wait_for("node a to lead", || is_leader(&a.base));
    let mut b = ServerProcess::start(&b_dir, Some(pg.url()), &[]);
    let (status, _) = b.deploy(ORDER);
    assert!(status == 201 || status == 200, "deploy: {status}");
    // The lease is one node's: b waits while a holds it.
    std::thread::sleep(Duration::from_millis(3 * INTERVAL_MS));
    assert!(!is_leader(&b.base), "two nodes ship at once");
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        let url = format!("{}/api/v1/process-definitions/key/order/start", b.base);
        std::thread::spawn(move || {
            let agent = crate::e2e::server::agent();
            while !stop.load(Ordering::Relaxed) {
                let mut r = agent.post(&url).send_json(json!({})).unwrap();
                assert_eq!(r.status(), 201);
                let v: serde_json::Value = r.body_mut().read_json().unwrap();
                acked
                    .lock()
                    .unwrap()
                    .push(v["id"].as_str().unwrap().to_string());
            }
        })
    };
    std::thread::sleep(Duration::from_millis(3 * INTERVAL_MS));
    a.kill();
    wait_for("node b to take over", || is_leader(&b.base));
    std::thread::sleep(Duration::from_millis(2 * INTERVAL_MS));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    // Everything acknowledged is durable before the next rounds end.
    std::thread::sleep(Duration::from_millis(4 * INTERVAL_MS));
    b.kill();
    let restore_dir = dir.path().join("elsewhere");
    std::fs::create_dir_all(&restore_dir).unwrap();
    let cfg = restore_dir.join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "backup:\n  targets:\n    - {{type: s3, endpoint: \"{}\", bucket: takeover, prefix: ship/, \
             path_style: true, access_key_id: test, secret_access_key: test}}\n",
            moto.endpoint()
        ),
    )
    .unwrap();
    let db = restore_dir.join("restored.db");
    let out = restore(
        &restore_dir,
        "latest",
        &format!("sqlite://{}", db.display()),
        &["--config", cfg.to_str().unwrap(), "--db-only"],
        &[],
    );
    assert_eq!(code(&out), 0, "restore failed: {}", show(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let present = restored_ids(&db);
    let acked = acked.lock().unwrap();
    assert!(acked.len() > 20, "only {} acks", acked.len());
    let missing: Vec<&String> = acked.iter().filter(|id| !present.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "lost {} acknowledged starts",
        missing.len()
    );
    eprintln!(
        "takeover: {} acknowledged starts restored through {} archives",
        acked.len(),
        report["fetched"].as_array().map_or(0, Vec::len)
    );
    rt.block_on(pg.cleanup());
}
