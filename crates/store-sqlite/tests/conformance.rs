//! The shared store conformance suite (and its recovery part) on SQLite, plus
//! SQLite-specific checks.

// A test crate: its helpers outside `#[test]` functions may unwrap too (clippy.toml
// exempts only test functions and `#[cfg(test)]` modules).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed unwrap is a failed test"
)]

use std::path::PathBuf;
use std::sync::Arc;

use steadyflow_store::Store;
use steadyflow_store::conformance::{Fresh, RecoveryBackend};
use steadyflow_store::recovery::{Exporter, Staging};
use steadyflow_store_sqlite::SqliteStore;
use steadyflow_store_sqlite::recovery::SqliteExporter;

/// A store on a new file in a temporary directory, removed once the case passed (and
/// by the directory's own drop when it failed).
async fn fresh() -> Option<Fresh> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(dir.path().join("conformance.db")).expect("open");
    Some(Fresh::new(store).cleanup(async move { drop(dir) }))
}

steadyflow_store::conformance_tests!(fresh);

/// A source database file and a restore target beside it (not there until a case
/// opens or promotes it), in one temporary directory.
struct SqliteRecovery {
    source: Arc<dyn Store>,
    source_path: PathBuf,
    target: PathBuf,
}

#[async_trait::async_trait]
impl RecoveryBackend for SqliteRecovery {
    fn source(&self) -> Arc<dyn Store> {
        self.source.clone()
    }

    fn exporter(&self) -> Box<dyn Exporter> {
        Box::new(SqliteExporter::new(&self.source_path))
    }

    async fn stage(&self) -> steadyflow_store::Result<Box<dyn Staging>> {
        let staging =
            tokio::task::block_in_place(|| steadyflow_store_sqlite::recovery::stage(&self.target))?;
        Ok(Box::new(staging))
    }

    async fn staging_exists(&self) -> bool {
        PathBuf::from(format!("{}.restore", self.target.display())).exists()
    }

    fn target_exporter(&self) -> Box<dyn Exporter> {
        Box::new(SqliteExporter::new(&self.target))
    }

    async fn open_target(&self) -> Arc<dyn Store> {
        Arc::new(
            tokio::task::block_in_place(|| SqliteStore::open(&self.target))
                .expect("open the target"),
        )
    }

    async fn close_target(&self, store: Arc<dyn Store>) {
        assert_eq!(
            Arc::strong_count(&store),
            1,
            "close_target gets the last handle"
        );
        // Dropping the store releases its serve lock at once.
        drop(store);
    }
}

async fn fresh_recovery() -> Option<Fresh<Arc<dyn RecoveryBackend>>> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let source_path = dir.path().join("source.db");
    let source = Arc::new(SqliteStore::open(&source_path).expect("open"));
    let backend = SqliteRecovery {
        source,
        source_path,
        target: dir.path().join("target.db"),
    };
    Some(Fresh::recovery(backend).cleanup(async move { drop(dir) }))
}

steadyflow_store::recovery_conformance_tests!(fresh_recovery);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_data_and_does_not_migrate_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reopen.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        let defs = vec![steadyflow_store::NewDefinition {
            key: "k".into(),
            name: None,
            xml: "<x/>".into(),
            checksum: "c".into(),
        }];
        store.deploy(defs, chrono::Utc::now()).await.unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let latest = store
        .latest_definition("k")
        .await
        .unwrap()
        .expect("definition survives a reopen");
    assert_eq!(latest.version, 1);
}

#[test]
fn an_unwritable_location_is_a_clear_error() {
    let err = SqliteStore::open("/proc/steadyflow/cannot/exist.db")
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("cannot"), "{err}");
}

fn at(ms: i64) -> steadyflow_store::Timestamp {
    chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + ms).unwrap()
}

fn instance(id: &str, version: i64) -> steadyflow_store::InstanceRecord {
    steadyflow_store::InstanceRecord {
        id: id.into(),
        definition_id: "order:1".into(),
        definition_key: "order".into(),
        business_key: None,
        state: steadyflow_store::InstanceState::Active,
        variables: Default::default(),
        runtime: serde_json::json!({}).into(),
        version,
        started_at: at(0),
        ended_at: None,
    }
}

/// A value no record can hold (edited by hand, or restored wrongly) is reported as a
/// corrupt row, never read as something else (a stand-in date).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_stored_value_is_corrupt() {
    use steadyflow_store::{ChangeSet, StoreError};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.db");
    let store = SqliteStore::open(&path).unwrap();
    for id in ["bad-time", "bad-state"] {
        store
            .apply(ChangeSet::new(instance(id, 1), None, at(0)))
            .await
            .unwrap();
    }
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch(
        "UPDATE instances SET started_at = 9223372036854775807 WHERE id = 'bad-time'; \
         UPDATE instances SET state = 'sleeping' WHERE id = 'bad-state';",
    )
    .unwrap();
    for (id, says) in [("bad-time", "out of range"), ("bad-state", "sleeping")] {
        match store.instance(id).await {
            Err(StoreError::Corrupt(m)) => assert!(m.contains(says), "{id}: {m}"),
            other => panic!("{id}: expected Corrupt, got {other:?}"),
        }
    }
}

/// The times the store writes are the engine's (the change set's, the call's `now`),
/// and the journal's `tx_time` never decreases along `seq`, even when the engine's
/// clock steps back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn written_times_come_from_the_engine_clock() {
    use steadyflow_store::{
        ChangeSet, IncidentFilter, IncidentRecord, IncidentType, JournalEntity,
    };
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("clock.db")).unwrap();
    let mut create = ChangeSet::new(instance("i", 1), None, at(5_000));
    create.incidents_created = vec![IncidentRecord {
        id: "inc".into(),
        instance_id: "i".into(),
        activity_id: "g".into(),
        incident_type: IncidentType::NoMatchingFlow,
        message: "m".into(),
        external_task_id: None,
        created_at: at(5_000),
        resolved_at: None,
    }];
    store.apply(create).await.unwrap();
    // The clock stepped back: the incident is resolved at the engine's time, the
    // journal keeps going forward.
    let mut resolve = ChangeSet::new(instance("i", 2), Some(1), at(3_000));
    resolve.incidents_resolved = vec!["inc".into()];
    store.apply(resolve).await.unwrap();
    let incidents = store
        .list_incidents(&IncidentFilter::default())
        .await
        .unwrap();
    assert_eq!(incidents[0].resolved_at, Some(at(3_000)));
    store
        .deploy(
            vec![steadyflow_store::NewDefinition {
                key: "k".into(),
                name: None,
                xml: "<x/>".into(),
                checksum: "c".into(),
            }],
            at(9_000),
        )
        .await
        .unwrap();
    let journal = store.journal_since(0, 100).await.unwrap();
    let times: Vec<(JournalEntity, i64)> = journal
        .iter()
        .map(|r| {
            (
                r.entity,
                r.tx_time.timestamp_millis() - at(0).timestamp_millis(),
            )
        })
        .collect();
    assert_eq!(
        times,
        [
            (JournalEntity::Instance, 5_000),
            (JournalEntity::Incident, 5_000),
            (JournalEntity::Instance, 5_000),
            (JournalEntity::Incident, 5_000),
            (JournalEntity::Definition, 9_000),
        ]
    );
    // And across a restart.
    drop(store);
    let store = SqliteStore::open(dir.path().join("clock.db")).unwrap();
    store
        .apply(ChangeSet::new(instance("j", 1), None, at(1_000)))
        .await
        .unwrap();
    let last = store.journal_since(0, 100).await.unwrap().pop().unwrap();
    assert_eq!(last.tx_time, at(9_000));
}

mod idempotency {
    use std::sync::Arc;

    use steadyflow_store::conformance::idempotency as case;
    use steadyflow_store_sqlite::SqliteStore;

    fn store(dir: &tempfile::TempDir) -> Arc<SqliteStore> {
        Arc::new(SqliteStore::open(dir.path().join("keys.db")).expect("open"))
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn keys_claim_answer_and_takeover() {
        let dir = tempfile::tempdir().unwrap();
        case::keys_claim_answer_and_takeover(store(&dir)).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_claims_have_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        case::concurrent_claims_have_one_winner(store(&dir)).await;
    }
}

/// The runbook's check of a restored database, `SELECT COUNT(*) FROM process_definitions`,
/// counts every deployed version (a view over `definitions`, as on PostgreSQL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_definitions_view_counts_every_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("view.db");
    let store = SqliteStore::open(&path).unwrap();
    let def = |key: &str, checksum: &str| steadyflow_store::NewDefinition {
        key: key.into(),
        name: Some("N".into()),
        xml: "<x/>".into(),
        checksum: checksum.into(),
    };
    let at = chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
    store
        .deploy(vec![def("k", "c1"), def("j", "c1")], at)
        .await
        .unwrap();
    store.deploy(vec![def("k", "c2")], at).await.unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM process_definitions;", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n, 3);
    let (version, deployed): (i64, String) = conn
        .query_row(
            "SELECT MAX(version), MAX(deployed_at) FROM process_definitions WHERE key = 'k'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(version, 2);
    assert_eq!(deployed, "2023-11-14T22:13:20.123Z");
}
