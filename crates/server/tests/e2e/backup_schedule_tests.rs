//! Scheduled backups in `serve` (issue 14): a slot missed while no node ran is taken once
//! at start-up (not once per missed slot, and not again by a node started later), slots
//! are kept while serving, and with two nodes on one PostgreSQL each slot is taken once.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::e2e::moto::Moto;
use crate::e2e::server::ServerProcess;

fn write_config(data: &Path, moto: &Moto, bucket: &str, full: &str) {
    std::fs::create_dir_all(data.join("configs")).unwrap();
    std::fs::write(
        data.join("configs/config.yaml"),
        format!(
            "backup:\n  dir: ./backups\n  continuous: {{enabled: false}}\n  \
             schedules: {{full: \"{full}\", incremental: null}}\n  targets:\n    \
             - {{type: s3, endpoint: \"{}\", bucket: {bucket}, prefix: sched/, path_style: true, \
             access_key_id: test, secret_access_key: test}}\n",
            moto.endpoint()
        ),
    )
    .unwrap();
}

/// The full backups' sidecars on the bucket.
fn fulls(moto: &Moto, bucket: &str) -> Vec<String> {
    let mut v: Vec<String> = moto
        .keys(bucket)
        .into_iter()
        .filter(|k| k.ends_with("-full.manifest.json") || k.contains("-full-"))
        .filter(|k| k.ends_with(".manifest.json"))
        .collect();
    v.sort();
    v
}

/// `steadyflow_backups_taken_total{kind="full"}` of a node.
fn taken_fulls(base: &str) -> u64 {
    let text = crate::e2e::server::agent()
        .get(&format!("{base}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("steadyflow_backups_taken_total{kind=\"full\"} "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_missed_slot_runs_once_at_start_up_and_not_again() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("yearly", false);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a");
    std::fs::create_dir_all(&data).unwrap();
    // Once a year: the last slot (1 January) passed with no backup anywhere.
    write_config(&data, &moto, "yearly", "0 0 1 1 *");
    let mut a = ServerProcess::start(&data, None, &[]);
    wait_for("the missed backup", || fulls(&moto, "yearly").len() == 1);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        fulls(&moto, "yearly").len(),
        1,
        "one run for the missed slots"
    );
    a.kill();
    // Another machine, an empty backup directory: the bucket says the slot is taken.
    let other = dir.path().join("b");
    std::fs::create_dir_all(&other).unwrap();
    write_config(&other, &moto, "yearly", "0 0 1 1 *");
    let b = ServerProcess::start(&other, None, &[]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        fulls(&moto, "yearly").len(),
        1,
        "the slot was taken already"
    );
    drop(b);
}

/// Two nodes, one PostgreSQL database, a slot every 3 seconds: each slot's backup is
/// taken once (backups are named by their time: two in one slot's window would be a
/// double run).
#[test]
fn two_nodes_take_each_slot_once() {
    let Some(moto) = Moto::start() else { return };
    let rt = crate::e2e::backup_support::runtime();
    let Some(pg) = rt.block_on(steadyflow_store_pg::testing::fresh_database()) else {
        return;
    };
    moto.create_bucket("every3s", false);
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<ServerProcess> = ["a", "b"]
        .iter()
        .map(|n| {
            let d = dir.path().join(n);
            std::fs::create_dir_all(&d).unwrap();
            write_config(&d, &moto, "every3s", "*/3 * * * * *");
            ServerProcess::start(&d, Some(pg.url()), &[])
        })
        .collect();
    wait_for("four scheduled backups", || {
        fulls(&moto, "every3s").len() >= 4
    });
    // What the nodes say they took, then what the bucket holds: a slot taken by both
    // (same second, same id, one upload over the other) would count twice here.
    let taken: u64 = nodes.iter().map(|n| taken_fulls(&n.base)).sum();
    let held = fulls(&moto, "every3s").len() as u64;
    assert!(
        taken >= 4 && taken <= held,
        "the nodes took {taken}, the bucket holds {held}"
    );
    drop(nodes);
    // Ids are the backups' times (YYYYMMDD_HHMMSS): one per 3-second slot.
    let secs: Vec<i64> = fulls(&moto, "every3s")
        .iter()
        .map(|k| {
            let id = k.trim_start_matches("sched/");
            let t = chrono::NaiveDateTime::parse_from_str(&id[..15], "%Y%m%d_%H%M%S").unwrap();
            t.and_utc().timestamp()
        })
        .collect();
    // Slots are the Unix seconds divisible by 3 (`*/3` within each minute, and a minute
    // is 20 slots): each backup serves the latest slot at or before its time. Two in one
    // slot's window are a double run. A start-up run for the slot the node missed while
    // starting may come just before the next slot (270 for slot 268, then 271): one each.
    let slots: Vec<i64> = secs.iter().map(|t| t.div_euclid(3)).collect();
    let unique: std::collections::BTreeSet<&i64> = slots.iter().collect();
    assert_eq!(
        unique.len(),
        slots.len(),
        "two backups for one slot: {secs:?}"
    );
    rt.block_on(pg.cleanup());
}
