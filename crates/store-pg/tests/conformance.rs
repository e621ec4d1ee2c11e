//! PostgreSQL store tests: the shared conformance suite, journal visibility under
//! concurrent transactions, and migrations. Each test gets its own database; without a
//! reachable server they are skipped with a notice (or fail with
//! `STEADYFLOW_REQUIRE_SERVICES=1`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use steadyflow_store::conformance::CASES;
use steadyflow_store::*;
use steadyflow_store_pg::PgStore;
use steadyflow_store_pg::testing::{TestDatabase, fresh_database};
use tokio_postgres::NoTls;

async fn raw_client(db: &TestDatabase) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(db.url(), NoTls).await.expect("raw connection");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    for (name, case) in CASES {
        let Some(db) = fresh_database().await else { return };
        eprintln!("conformance (postgres): {name}");
        let store = PgStore::connect(db.url()).await.expect("connect");
        let started = Instant::now();
        // A panic inside the case still drops `db` (and the database) while unwinding.
        case(Arc::new(store)).await;
        eprintln!("conformance (postgres): {name} ok in {:?}", started.elapsed());
        db.cleanup().await;
    }
}

/// A journal row of a transaction still in flight holds back every row after it, even
/// rows committed earlier: a reader resuming from the last seq it saw must not skip it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_holds_back_rows_behind_an_open_transaction() {
    let Some(db) = fresh_database().await else { return };
    let store = PgStore::connect(db.url()).await.expect("connect");

    // Transaction A takes a journal seq first and stays open.
    let mut slow = raw_client(&db).await;
    let tx = slow.transaction().await.unwrap();
    let held: i64 = tx
        .query_one(
            "INSERT INTO journal (tx_time, entity, entity_id, op, row) \
             VALUES (0, 'instance', 'slow', 'insert', '{}'::jsonb) RETURNING seq",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    // Transaction B commits after it, with higher seqs.
    let now = chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
    let inst = InstanceRecord {
        id: "fast".into(),
        definition_id: "order:1".into(),
        definition_key: "order".into(),
        business_key: None,
        state: InstanceState::Active,
        variables: Vars::new(),
        runtime: serde_json::json!({}),
        version: 1,
        started_at: now,
        ended_at: None,
    };
    store.apply(ChangeSet::new(inst, None)).await.expect("apply");
    let other = raw_client(&db).await;
    let committed: Vec<i64> =
        other.query("SELECT seq FROM journal ORDER BY seq", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert!(!committed.is_empty() && committed.iter().all(|s| *s > held), "B's rows have higher seqs: {committed:?}");

    let visible = store.journal_since(0, 100).await.unwrap();
    assert!(
        visible.is_empty(),
        "rows committed behind an open transaction with a lower seq must be held back: {visible:#?}"
    );

    tx.commit().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let rows = store.journal_since(0, 100).await.unwrap();
        if rows.len() > committed.len() || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    let mut expected = vec![held];
    expected.extend(&committed);
    assert_eq!(seqs, expected, "once A commits, its row and B's rows appear, in seq order");
    assert_eq!(rows[0].entity_id, "slow");
    drop(store);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_safe_to_race() {
    let Some(db) = fresh_database().await else { return };
    // Two nodes starting together on an empty database.
    let (a, b) = tokio::join!(PgStore::connect(db.url()), PgStore::connect(db.url()));
    let (a, b) = (a.expect("first node"), b.expect("second node"));
    let def = NewDefinition { key: "order".into(), name: None, xml: "<x/>".into(), checksum: "c".into() };
    a.deploy(vec![def], chrono::DateTime::from_timestamp_millis(0).unwrap()).await.unwrap();
    drop((a, b));

    // And again on the migrated database: nothing re-applied, data kept.
    let c = PgStore::connect(db.url()).await.expect("reconnect");
    assert!(c.latest_definition("order").await.unwrap().is_some(), "data survives a reconnect");
    let client = raw_client(&db).await;
    let versions: Vec<i32> = client
        .query("SELECT version FROM schema_version ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<i32> = (1..=steadyflow_store_pg::schema_version()).collect();
    assert_eq!(versions, expected, "each migration recorded exactly once");
    drop(c);
    db.cleanup().await;
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    // Port 1 on loopback: nothing listens there.
    match PgStore::connect("postgres://postgres@127.0.0.1:1/postgres?connect_timeout=2").await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("an unreachable server must be Unavailable, got {:?}", other.map(|_| ())),
    }
}
