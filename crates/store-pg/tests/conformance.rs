//! PostgreSQL store tests: the shared conformance suite, journal visibility under
//! concurrent transactions, and migrations. Each test gets its own database; without a
//! reachable server they are skipped with a notice (or fail with
//! `STEADYFLOW_REQUIRE_SERVICES=1`).

// A test crate: its helpers outside `#[test]` functions may unwrap too (clippy.toml
// exempts only test functions and `#[cfg(test)]` modules).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed unwrap is a failed test"
)]

use std::sync::Arc;

use steadyflow_store::conformance::poll::{journal_until, until};
use steadyflow_store::conformance::{Fresh, RecoveryBackend};
use steadyflow_store::recovery::{Exporter, Staging};
use steadyflow_store::*;
use steadyflow_store_pg::PgStore;
use steadyflow_store_pg::recovery::PgExporter;
use steadyflow_store_pg::testing::{DEFAULT_URL, TestDatabase, URL_ENV, fresh_database};
use tokio_postgres::NoTls;

/// A store with one writer, so every change set of a test lands in one batch.
async fn one_writer_store(db: &TestDatabase) -> Arc<PgStore> {
    let options = steadyflow_store_pg::PgOptions {
        writers: 1,
        ..Default::default()
    };
    Arc::new(
        PgStore::connect_with(db.url(), options)
            .await
            .expect("connect"),
    )
}

fn active_instance(id: &str, version: i64, started_at: Timestamp) -> InstanceRecord {
    InstanceRecord {
        id: id.into(),
        definition_id: "order:1".into(),
        definition_key: "order".into(),
        business_key: None,
        state: InstanceState::Active,
        variables: Vars::new(),
        runtime: serde_json::json!({}).into(),
        version,
        started_at,
        ended_at: None,
    }
}

async fn raw_client(db: &TestDatabase) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(db.url(), NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A store on a database of its own, so the cases run in parallel; dropped once the
/// case passed. If it failed, `db`'s drop (it is owned by the cleanup, which is then
/// dropped unpolled) removes the database while unwinding.
async fn fresh() -> Option<Fresh> {
    let db = fresh_database().await?;
    let store = PgStore::connect(db.url()).await.expect("connect");
    Some(Fresh::new(store).cleanup(db.cleanup()))
}

steadyflow_store::conformance_tests!(fresh);

/// A source and a target database of their own for a recovery case; the target exists
/// without tables until a case opens a store on it or promotes a restore into it.
struct PgRecovery {
    source: Arc<dyn Store>,
    source_url: String,
    target_url: String,
    target: String,
    admin_url: String,
}

async fn admin_client(admin_url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(admin_url, NoTls)
        .await
        .expect("maintenance connection");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

#[async_trait::async_trait]
impl RecoveryBackend for PgRecovery {
    fn source(&self) -> Arc<dyn Store> {
        self.source.clone()
    }

    fn exporter(&self) -> Box<dyn Exporter> {
        Box::new(PgExporter::new(&self.source_url).expect("exporter"))
    }

    async fn stage(&self) -> Result<Box<dyn Staging>> {
        Ok(Box::new(
            steadyflow_store_pg::recovery::stage(&self.target_url).await?,
        ))
    }

    async fn staging_exists(&self) -> bool {
        admin_client(&self.admin_url)
            .await
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
                &[&format!("{}_restore", self.target)],
            )
            .await
            .expect("pg_database")
            .get(0)
    }

    fn target_exporter(&self) -> Box<dyn Exporter> {
        Box::new(PgExporter::new(&self.target_url).expect("exporter"))
    }

    async fn open_target(&self) -> Arc<dyn Store> {
        Arc::new(
            PgStore::connect(&self.target_url)
                .await
                .expect("connect to the target"),
        )
    }

    async fn close_target(&self, store: Arc<dyn Store>) {
        assert_eq!(
            Arc::strong_count(&store),
            1,
            "close_target gets the last handle"
        );
        drop(store);
        // The pool's connections end on the server a moment later.
        let admin = admin_client(&self.admin_url).await;
        until("the target's sessions to end", || async {
            let n: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                    &[&self.target],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            if n == 0 { Ok(()) } else { Err(n) }
        })
        .await;
    }
}

/// Drops what restores into `target` leave beside it (`<db>_restore`,
/// `<db>_restore_old`): after the case passed, or in `Drop` when it failed.
struct RestoreLeftovers {
    admin_url: String,
    target: String,
    done: bool,
}

impl RestoreLeftovers {
    async fn cleanup(mut self) {
        drop_restore_databases(&self.admin_url, &self.target).await;
        self.done = true;
    }
}

impl Drop for RestoreLeftovers {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Possibly inside a runtime, or unwinding: a private runtime on its own thread.
        let (admin, target) = (self.admin_url.clone(), self.target.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(drop_restore_databases(&admin, &target));
            }
        })
        .join();
    }
}

async fn drop_restore_databases(admin_url: &str, target: &str) {
    let Ok((client, conn)) = tokio_postgres::connect(admin_url, NoTls).await else {
        return;
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    for suffix in ["_restore", "_restore_old"] {
        let _ = client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{target}{suffix}\" WITH (FORCE)"
            ))
            .await;
    }
}

async fn fresh_recovery() -> Option<Fresh<Arc<dyn RecoveryBackend>>> {
    let source = fresh_database().await?;
    let target = fresh_database().await?;
    let admin_url = std::env::var(URL_ENV).unwrap_or_else(|_| DEFAULT_URL.to_string());
    let leftovers = RestoreLeftovers {
        admin_url: admin_url.clone(),
        target: target.name().to_string(),
        done: false,
    };
    let backend = PgRecovery {
        source: Arc::new(PgStore::connect(source.url()).await.expect("connect")),
        source_url: source.url().to_string(),
        target_url: target.url().to_string(),
        target: target.name().to_string(),
        admin_url,
    };
    Some(Fresh::recovery(backend).cleanup(async move {
        leftovers.cleanup().await;
        target.cleanup().await;
        source.cleanup().await;
    }))
}

steadyflow_store::recovery_conformance_tests!(fresh_recovery);

/// A journal row of a transaction still in flight holds back every row after it, even
/// rows committed earlier: a reader resuming from the last seq it saw must not skip it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_holds_back_rows_behind_an_open_transaction() {
    let Some(db) = fresh_database().await else {
        return;
    };
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
    let inst = active_instance("fast", 1, now);
    store
        .apply(ChangeSet::new(inst, None, now))
        .await
        .expect("apply");
    let other = raw_client(&db).await;
    let committed: Vec<i64> = other
        .query("SELECT seq FROM journal ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !committed.is_empty() && committed.iter().all(|s| *s > held),
        "B's rows have higher seqs: {committed:?}"
    );

    let visible = store.journal_since(0, 100).await.unwrap();
    assert!(
        visible.is_empty(),
        "rows committed behind an open transaction with a lower seq must be held back: {visible:#?}"
    );

    tx.commit().await.unwrap();
    let rows = journal_until(&store, 0, "A's row once A committed", |rows| {
        rows.len() > committed.len()
    })
    .await;
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    let mut expected = vec![held];
    expected.extend(&committed);
    assert_eq!(
        seqs, expected,
        "once A commits, its row and B's rows appear, in seq order"
    );
    assert_eq!(rows[0].entity_id, "slow");
    drop(store);
    db.cleanup().await;
}

/// Two transactions whose journal rows are written in the opposite order of their ids:
/// the younger one writes first and commits last. A reader that saw the older one's row
/// must still find the younger one's after it commits (with a sequence for seqs, the
/// younger row would get the lower seq and be skipped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_reader_never_skips_a_late_commit() {
    let Some(db) = fresh_database().await else {
        return;
    };
    let store = PgStore::connect(db.url()).await.expect("connect");
    let insert = |id: &'static str| {
        format!(
            "INSERT INTO journal (tx_time, entity, entity_id, op, row) \
             VALUES (0, 'instance', '{id}', 'insert', '{{}}') RETURNING seq"
        )
    };
    let (mut c1, mut c2) = (raw_client(&db).await, raw_client(&db).await);
    let older = c1.transaction().await.unwrap();
    older
        .execute("SELECT pg_current_xact_id()", &[])
        .await
        .unwrap();
    let younger = c2.transaction().await.unwrap();
    younger
        .execute("SELECT pg_current_xact_id()", &[])
        .await
        .unwrap();
    younger.query_one(&insert("younger"), &[]).await.unwrap();
    older.query_one(&insert("older"), &[]).await.unwrap();
    older.commit().await.unwrap();

    // (Polls: an open transaction elsewhere in the cluster may hold the journal back.)
    let seen = journal_until(&store, 0, "the older row", |rows| !rows.is_empty()).await;
    let ids: Vec<&str> = seen.iter().map(|r| r.entity_id.as_str()).collect();
    assert_eq!(ids, ["older"], "the committed row, not the one in flight");
    younger.commit().await.unwrap();
    let rest = journal_until(&store, seen[0].seq, "the younger row", |rows| {
        !rows.is_empty()
    })
    .await;
    let ids: Vec<&str> = rest.iter().map(|r| r.entity_id.as_str()).collect();
    assert_eq!(
        ids,
        ["younger"],
        "the late commit comes after the seq already read"
    );
    drop(store);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_safe_to_race() {
    let Some(db) = fresh_database().await else {
        return;
    };
    // Two nodes starting together on an empty database.
    let (a, b) = tokio::join!(PgStore::connect(db.url()), PgStore::connect(db.url()));
    let (a, b) = (a.expect("first node"), b.expect("second node"));
    let def = NewDefinition {
        key: "order".into(),
        name: None,
        xml: "<x/>".into(),
        checksum: "c".into(),
    };
    a.deploy(
        vec![def],
        chrono::DateTime::from_timestamp_millis(0).unwrap(),
    )
    .await
    .unwrap();
    drop((a, b));

    // And again on the migrated database: nothing re-applied, data kept.
    let c = PgStore::connect(db.url()).await.expect("reconnect");
    assert!(
        c.latest_definition("order").await.unwrap().is_some(),
        "data survives a reconnect"
    );
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

/// Two nodes on one database: a plain write through one moves the other's watch (its
/// listener hears the write's NOTIFY); when the listener's connection is killed the
/// watch stops vouching (not live) until it has reconnected, and then follows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_watch_follows_other_nodes_and_listener_loss() {
    let Some(db) = fresh_database().await else {
        return;
    };
    let a = PgStore::connect(db.url()).await.expect("node a");
    let b = PgStore::connect(db.url()).await.expect("node b");
    let watch = b.plain_watch().expect("a watch");
    let live = || async { watch.epoch().ok_or("not live") };
    let e0 = until("node b's watch to be live", live).await;
    let write = |id: &'static str| {
        let user = steadyflow_store::users::UserRecord {
            id: id.into(),
            role: steadyflow_store::users::Role::Viewer,
            groups: Vec::new(),
            password_hash: None,
            created_at: chrono::DateTime::from_timestamp_millis(1).unwrap(),
            updated_at: chrono::DateTime::from_timestamp_millis(1).unwrap(),
            disabled_at: None,
        };
        let a = &a;
        async move {
            a.plain_write(
                chrono::DateTime::from_timestamp_millis(2).unwrap(),
                vec![steadyflow_store::users::PlainWrite::put(&user).unwrap()],
            )
            .await
            .expect("plain write on node a")
        }
    };
    write("una").await;
    until("node b to hear node a's write", || async {
        match watch.epoch() {
            Some(e) if e != e0 => Ok(()),
            other => Err(other),
        }
    })
    .await;

    let admin = raw_client(&db).await;
    let killed: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = 'steadyflow-listener'",
            &[&db.name()],
        )
        .await
        .expect("terminate the listeners")
        .get(0);
    assert_eq!(killed, 2, "one listener per node");
    until("node b's watch to stop vouching", || async {
        match watch.epoch() {
            None => Ok(()),
            some => Err(some),
        }
    })
    .await;
    let e1 = until("node b's listener to be back", live).await;
    write("uno").await;
    until("node b to hear a write after the reconnect", || async {
        match watch.epoch() {
            Some(e) if e != e1 => Ok(()),
            other => Err(other),
        }
    })
    .await;
    drop((a, b, admin));
    db.cleanup().await;
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    // Port 1 on loopback: nothing listens there.
    match PgStore::connect("postgres://postgres@127.0.0.1:1/postgres?connect_timeout=2").await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!(
            "an unreachable server must be Unavailable, got {:?}",
            other.map(|_| ())
        ),
    }
}

#[path = "conformance/tls.rs"]
mod tls;

#[path = "conformance/writer.rs"]
mod writer;

mod idempotency {
    use std::sync::Arc;

    use steadyflow_store::conformance::idempotency as case;
    use steadyflow_store_pg::PgStore;
    use steadyflow_store_pg::testing::fresh_database;

    #[tokio::test(flavor = "multi_thread")]
    async fn keys_claim_answer_and_takeover() {
        let Some(db) = fresh_database().await else {
            return;
        };
        let store = Arc::new(PgStore::connect(db.url()).await.expect("connect"));
        case::keys_claim_answer_and_takeover(store).await;
        db.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_claims_have_one_winner() {
        let Some(db) = fresh_database().await else {
            return;
        };
        let store = Arc::new(PgStore::connect(db.url()).await.expect("connect"));
        case::concurrent_claims_have_one_winner(store).await;
        db.cleanup().await;
    }
}

/// The runbook's check of a restored database,
/// `psql ... -c "SELECT COUNT(*) FROM process_definitions;"`, counts every deployed
/// version (a view over `definitions`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_definitions_view_counts_every_version() {
    let Some(db) = fresh_database().await else {
        return;
    };
    let store = PgStore::connect(db.url()).await.unwrap();
    let def = |key: &str, checksum: &str| NewDefinition {
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
    let client = raw_client(&db).await;
    let row = client
        .query_one("SELECT COUNT(*) FROM process_definitions;", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 3);
    let row = client
        .query_one(
            "SELECT MAX(version), MAX(deployed_at) = to_timestamp(1700000000.123) \
             FROM process_definitions WHERE key = 'k'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    assert!(row.get::<_, bool>(1));
    drop((store, client));
    db.cleanup().await;
}
