//! The shared store conformance suite on SQLite, plus SQLite-specific checks.

use steadyflow_store::Store;
use steadyflow_store::conformance::Fresh;
use steadyflow_store_sqlite::SqliteStore;

/// A store on a new file in a temporary directory, removed once the case passed (and
/// by the directory's own drop when it failed).
async fn fresh() -> Option<Fresh> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(dir.path().join("conformance.db")).expect("open");
    Some(Fresh::new(store).cleanup(async move { drop(dir) }))
}

steadyflow_store::conformance_tests!(fresh);

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
