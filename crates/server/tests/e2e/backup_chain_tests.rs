//! Incremental chains and point-in-time restores on SQLite and PostgreSQL, with the replay
//! report, journal pruning, and the refusals of a broken chain.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::e2e::backup_support::*;

/// full → work → incremental → work → incremental: `latest` restores the newest state,
/// `--to-time` the state between the two, naming the work done after it; a missing
/// parent and a time outside the chain are refused.
async fn incremental_chain(dir: &Path, src: &str, dst: &str, dst_pit: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let store = open(src).await;
    populate(store.clone(), 20).await;
    assert!(journal_rows(src).await > 100);
    backup(dir, src, &[], &[]);
    // The rows the verified backup holds are pruned from the live journal.
    assert_eq!(journal_rows(src).await, 0);
    more_work(store.clone(), "w-mid", 4).await;
    assert!(journal_rows(src).await > 0);
    let mid = state_digests(src).await;
    let first = backup(dir, src, &["--incremental"], &[]);
    assert_eq!(first["manifest"]["kind"], "incremental");
    assert!(first["manifest"]["parent"].is_string());
    tokio::time::sleep(Duration::from_millis(30)).await;
    let point = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let late = more_work(store.clone(), "w-late", 2).await;
    assert!(!late.is_empty());
    let end = state_digests(src).await;
    let second = backup(dir, src, &["--incremental"], &[]);
    assert_eq!(second["manifest"]["parent"], first["manifest"]["id"]);
    drop(store);

    let out = restore(dir, "latest", dst, &[], &[]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert_eq!(
        state_digests(dst).await,
        end,
        "latest restore differs from the source"
    );
    assert_eq!(finish_all(open(dst).await).await, 26);

    let at = point.to_rfc3339();
    let out = restore(dir, "latest", dst_pit, &["--to-time", &at], &[]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert_eq!(
        state_digests(dst_pit).await,
        mid,
        "point-in-time restore differs"
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let replayed: Vec<&Value> = report["replay"]["replayReport"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    for id in &late {
        let hit = replayed
            .iter()
            .find(|w| w["id"] == id.as_str() && w["kind"] == "externalTask")
            .unwrap_or_else(|| {
                panic!("external task {id} done after the point is not reported: {replayed:?}")
            });
        assert_eq!(hit["topicOrName"], "charge");
        assert!(
            hit["businessKey"].as_str().unwrap().starts_with("order-"),
            "{hit}"
        );
        assert_eq!(hit["existsAfterRestore"], true);
    }
    assert!(report["replayReportFile"].is_string());

    // Before the chain's full backup: refused.
    let out = restore(
        dir,
        "latest",
        &sqlite_url(dir, "never.db"),
        &["--to-time", "2020-01-01T00:00:00Z"],
        &[],
    );
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("outside"),
        "{}",
        show(&out)
    );
    // A missing parent: refused, and verify says so too.
    let middle = archive_path(dir, &first);
    std::fs::rename(&middle, dir.join("moved-away")).unwrap();
    let out = restore(
        dir,
        second["manifest"]["id"].as_str().unwrap(),
        &sqlite_url(dir, "never.db"),
        &[],
        &[],
    );
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("parent"),
        "{}",
        show(&out)
    );
    assert!(!dir.join("never.db").exists());
}

#[test]
fn sqlite_incremental_chain_and_point_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    runtime().block_on(incremental_chain(
        &d.join("w"),
        &sqlite_url(d, "a.db"),
        &sqlite_url(d, "latest.db"),
        &sqlite_url(d, "pit.db"),
    ));
}

#[test]
fn postgres_incremental_chain_and_point_in_time() {
    runtime().block_on(async {
        let Some(a) = steadyflow_store_pg::testing::fresh_database().await else {
            return;
        };
        let b = steadyflow_store_pg::testing::fresh_database()
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Latest into PostgreSQL, the point in time into SQLite.
        incremental_chain(&d.join("w"), a.url(), b.url(), &sqlite_url(d, "pit.db")).await;
        for db in [&a, &b] {
            drop_side_databases(db).await;
        }
        a.cleanup().await;
        b.cleanup().await;
    });
}

#[test]
fn a_gap_in_the_chain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = sqlite_url(d, "a.db");
    let rt = runtime();
    let store = rt.block_on(open(&src));
    rt.block_on(populate(store.clone(), 5));
    let full = backup(d, &src, &[], &[]);
    rt.block_on(more_work(store.clone(), "w1", 1));
    backup(d, &src, &["--incremental"], &[]);
    rt.block_on(more_work(store.clone(), "w2", 1));
    let second = backup(d, &src, &["--incremental"], &[]);
    drop(store);
    // The second incremental's sidecar re-pointed past the first: its journal no longer
    // begins where its parent's ends.
    let id = second["manifest"]["id"].as_str().unwrap();
    let sidecar = d.join("backups").join(format!("{id}.manifest.json"));
    let mut v: Value = serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap();
    v["manifest"]["parent"] = full["manifest"]["id"].clone();
    std::fs::write(&sidecar, serde_json::to_vec(&v).unwrap()).unwrap();
    let out = restore(d, id, &sqlite_url(d, "t.db"), &[], &[]);
    assert_eq!(code(&out), 3, "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("gap"),
        "{}",
        show(&out)
    );
    assert!(!d.join("t.db").exists());
    let verify = steadyflow(
        d,
        &[
            "backup",
            "verify",
            id,
            "--dir",
            d.join("backups").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code(&verify), 3, "{}", show(&verify));
}
