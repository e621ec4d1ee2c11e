//! The PostgreSQL writer under stress: batches that isolate a failing change set, losers of
//! an optimistic race dropping out of their batch, connections killed under load, cancelled
//! callers, and the `apply` throughput benchmark.

use std::sync::Arc;
use std::time::{Duration, Instant};
use steadyflow_store::conformance::poll::{count, journal_until, until};
use steadyflow_store::*;
use steadyflow_store_pg::PgStore;
use steadyflow_store_pg::testing::fresh_database;

use super::{active_instance, one_writer_store, raw_client};

/// Throughput of `apply` as the engine drives it: per instance one insert (external
/// task, timer, history) and three updates (task churn, history). Run with
/// `cargo test -p steadyflow-store-pg --release --test conformance apply_throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn apply_throughput() {
    let Some(db) = fresh_database().await else {
        return;
    };
    let env = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let defaults = steadyflow_store_pg::PgOptions::default();
    let options = steadyflow_store_pg::PgOptions {
        writers: env("SF_BENCH_WRITERS", defaults.writers),
        max_batch: env("SF_BENCH_BATCH", defaults.max_batch),
        pool_size: env("SF_BENCH_POOL", defaults.pool_size),
        ..defaults
    };
    let url = match std::env::var("SF_BENCH_URL_SUFFIX") {
        Ok(suffix) => format!("{}{suffix}", db.url()),
        Err(_) => db.url().to_string(),
    };
    eprintln!("apply_throughput: {options:?}");
    let store = Arc::new(PgStore::connect_with(&url, options).await.expect("connect"));
    let instances: usize = std::env::var("SF_BENCH_INSTANCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000);
    let callers: usize = std::env::var("SF_BENCH_CALLERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let t0 = chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
    let hist = move |id: &str, event: &str| HistoryRecord {
        instance_id: id.into(),
        time: t0,
        event: HistoryEvent::parse(event).expect("a history event"),
        activity_id: Some("a".into()),
        detail: serde_json::json!({"k": 1}),
    };
    let started = Instant::now();
    let mut handles = Vec::new();
    for c in 0..callers {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for n in (c..instances).step_by(callers) {
                let id = format!("bench-{n}");
                let mut inst = InstanceRecord {
                    id: id.clone(),
                    definition_id: "order:1".into(),
                    definition_key: "order".into(),
                    business_key: Some(format!("bk-{n}")),
                    state: InstanceState::Active,
                    variables: serde_json::from_value(
                        serde_json::json!({"amount": n, "customer": "Ada"}),
                    )
                    .unwrap(),
                    runtime: serde_json::json!({"tokens": [{"id": 1, "at": "task"}]}).into(),
                    version: 1,
                    started_at: t0,
                    ended_at: None,
                };
                let mut c = ChangeSet::new(inst.clone(), None, t0);
                c.tasks_created = vec![TaskRecord {
                    id: format!("{id}-t0"),
                    instance_id: id.clone(),
                    definition_id: "order:1".into(),
                    activity_id: "approve".into(),
                    name: None,
                    assignee: None,
                    candidate_users: vec![],
                    candidate_groups: vec!["sales".into()],
                    created_at: t0,
                }];
                c.history = vec![hist(&id, "instanceStarted"), hist(&id, "activityStarted")];
                store.apply(c).await.expect("insert");
                for step in 1..=3 {
                    let expected = inst.version;
                    inst.version += 1;
                    if step == 3 {
                        inst.state = InstanceState::Completed;
                        inst.ended_at = Some(t0);
                    }
                    let mut c = ChangeSet::new(inst.clone(), Some(expected), t0);
                    c.tasks_removed = vec![format!("{id}-t{}", step - 1)];
                    if step < 3 {
                        c.tasks_created = vec![TaskRecord {
                            id: format!("{id}-t{step}"),
                            instance_id: id.clone(),
                            definition_id: "order:1".into(),
                            activity_id: "approve".into(),
                            name: None,
                            assignee: None,
                            candidate_users: vec![],
                            candidate_groups: vec![],
                            created_at: t0,
                        }];
                    }
                    c.history = vec![hist(&id, "activityCompleted"), hist(&id, "activityStarted")];
                    store.apply(c).await.expect("update");
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "apply_throughput: {instances} instances ({} applies) with {callers} callers in {secs:.2}s: \
         {:.0} instances/s, {:.0} applies/s",
        instances * 4,
        instances as f64 / secs,
        (instances * 4) as f64 / secs
    );
    let stats = store.writer_stats();
    eprintln!(
        "apply_throughput: {stats:?}, mean batch {:.1}",
        stats.committed as f64 / stats.transactions.max(1) as f64
    );
    assert_eq!(
        stats.committed,
        (instances * 4) as u64,
        "every change set committed once"
    );
    drop(store);
    db.cleanup().await;
}

/// Group commit must not let one bad change set fail the others of its batch: stale
/// versions get `Conflict`, a server-rejected change set gets its own error, everyone
/// else commits exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_isolates_failures() {
    let Some(db) = fresh_database().await else {
        return;
    };
    let store = one_writer_store(&db).await;
    let t0 = chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
    let inst = |id: &str, version: i64| active_instance(id, version, t0);
    let task = |id: &str, instance: &str| TaskRecord {
        id: id.into(),
        instance_id: instance.into(),
        definition_id: "order:1".into(),
        activity_id: "a".into(),
        name: None,
        assignee: None,
        candidate_users: vec![],
        candidate_groups: vec![],
        created_at: t0,
    };
    // Existing state: instances x0..x9 at version 1, and a task "taken".
    for n in 0..10 {
        let mut c = ChangeSet::new(inst(&format!("x{n}"), 1), None, t0);
        if n == 0 {
            c.tasks_created = vec![task("taken", "x0")];
        }
        store.apply(c).await.unwrap();
    }

    // 40 concurrent change sets: 30 new instances (3 of them reusing the task id
    // "taken": rejected by the server), 7 good updates, 3 stale updates.
    let mut expected = Vec::new();
    let mut handles = Vec::new();
    for n in 0..40 {
        let (change, outcome) = if n < 30 {
            let id = format!("new{n}");
            let mut c = ChangeSet::new(inst(&id, 1), None, t0);
            let bad = n % 10 == 5;
            c.tasks_created = vec![task(if bad { "taken" } else { &id }, &id)];
            (c, if bad { "error" } else { "ok" })
        } else {
            let k = n - 30;
            let stale = k >= 7;
            let c = ChangeSet::new(
                inst(&format!("x{k}"), 2),
                Some(if stale { 5 } else { 1 }),
                t0,
            );
            (c, if stale { "conflict" } else { "ok" })
        };
        expected.push((change.instance.id.clone(), outcome));
        let store = store.clone();
        handles.push(tokio::spawn(async move { store.apply(change).await }));
    }
    for ((id, outcome), h) in expected.iter().zip(handles) {
        let result = h.await.unwrap();
        match (*outcome, &result) {
            ("ok", Ok(()))
            | ("conflict", Err(StoreError::Conflict(_)))
            | ("error", Err(StoreError::Backend(_))) => {}
            _ => panic!("{id}: expected {outcome}, got {result:?}"),
        }
        let stored = store.instance(id).await.unwrap();
        match *outcome {
            "ok" if id.starts_with('x') => {
                assert_eq!(stored.map(|i| i.version), Some(2), "{id} updated")
            }
            "ok" => assert!(stored.is_some(), "{id} inserted"),
            "conflict" => assert_eq!(stored.map(|i| i.version), Some(1), "{id} untouched"),
            _ => assert!(stored.is_none(), "{id} rolled back"),
        }
    }
    let stats = store.writer_stats();
    eprintln!("batch_isolates_failures: {stats:?}");
    assert_eq!(
        stats.committed,
        10 + 27 + 7,
        "each good change set committed once: {stats:?}"
    );
    assert_eq!(stats.conflicts, 3, "{stats:?}");

    // The journal holds the good ones only, each once.
    // (Polls: an open transaction elsewhere in the cluster may hold the journal back.)
    let rows = journal_until(store.as_ref(), 0, "the good change sets' rows", |rows| {
        count(rows, "instance", "insert") >= 37 && count(rows, "instance", "update") >= 7
    })
    .await;
    assert_eq!(
        (
            count(&rows, "instance", "insert"),
            count(&rows, "instance", "update")
        ),
        (10 + 27, 7),
        "journal rows of committed change sets only"
    );
    drop(store);
    db.cleanup().await;
}

/// A batch in which some change sets lose their optimistic lock in the database (made
/// elsewhere, so the writer cannot tell them stale beforehand): they get `Conflict` and
/// none of their rows is written, the others commit once, with their journal rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losers_in_the_database_drop_out_of_their_batch() {
    let Some(db) = fresh_database().await else {
        return;
    };
    let store = one_writer_store(&db).await;
    let t0 = chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
    let inst = |id: &str, version: i64| active_instance(id, version, t0);
    // Instances y0..y9 at version 3, written behind the store's back.
    let admin = raw_client(&db).await;
    admin
        .batch_execute(
            "INSERT INTO instances (id, definition_id, definition_key, state, variables, runtime, \
             version, started_at) SELECT 'y' || g, 'order:1', 'order', 'active', '{}', '{}', 3, 0 \
             FROM generate_series(0, 9) AS g",
        )
        .await
        .unwrap();
    let handles: Vec<_> = (0..10)
        .map(|n| {
            let stale = n % 3 == 0;
            let mut c = ChangeSet::new(
                inst(&format!("y{n}"), 4),
                Some(if stale { 2 } else { 3 }),
                t0,
            );
            c.tasks_created = vec![TaskRecord {
                id: format!("t{n}"),
                instance_id: format!("y{n}"),
                definition_id: "order:1".into(),
                activity_id: "a".into(),
                name: None,
                assignee: None,
                candidate_users: vec![],
                candidate_groups: vec![],
                created_at: t0,
            }];
            c.history = vec![HistoryRecord {
                instance_id: format!("y{n}"),
                time: t0,
                event: HistoryEvent::ActivityCompleted,
                activity_id: None,
                detail: serde_json::json!({}),
            }];
            let store = store.clone();
            (stale, tokio::spawn(async move { store.apply(c).await }))
        })
        .collect();
    for (n, (stale, h)) in handles.into_iter().enumerate() {
        let result = h.await.unwrap();
        let task = store.task(&format!("t{n}")).await.unwrap();
        let history = store.history(&format!("y{n}")).await.unwrap();
        if stale {
            assert!(
                matches!(result, Err(StoreError::Conflict(_))),
                "y{n}: {result:?}"
            );
            assert!(
                task.is_none() && history.is_empty(),
                "y{n}: nothing written"
            );
        } else {
            result.unwrap_or_else(|e| panic!("y{n}: {e}"));
            assert!(task.is_some() && history.len() == 1, "y{n}: written");
        }
    }
    let rows = journal_until(store.as_ref(), 0, "the winners' rows", |rows| {
        rows.len() >= 6 * 3
    })
    .await;
    let mut journaled: Vec<&str> = rows
        .iter()
        .filter(|r| r.entity.as_str() == "instance")
        .map(|r| r.entity_id.as_str())
        .collect();
    journaled.sort_unstable();
    assert_eq!(
        journaled,
        ["y1", "y2", "y4", "y5", "y7", "y8"],
        "journal rows of the winners only, once each"
    );
    eprintln!("losers_in_the_database: {:?}", store.writer_stats());
    drop(store);
    db.cleanup().await;
}

/// Connections killed under the store (failover, admin restart) surface as
/// `Unavailable` at worst, never as a panic, and the pool recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_after_connections_are_killed() {
    let Some(db) = fresh_database().await else {
        return;
    };
    let store = PgStore::connect(db.url()).await.expect("connect");
    store.ping().await.unwrap();
    let def = |c: &str| NewDefinition {
        key: "order".into(),
        name: None,
        xml: "<x/>".into(),
        checksum: c.into(),
    };
    let t = chrono::DateTime::from_timestamp_millis(0).unwrap();
    store.deploy(vec![def("a")], t).await.unwrap();
    // Opens the shared connection of primary-key lookups too.
    assert!(store.instance("after").await.unwrap().is_none());

    let admin = raw_client(&db).await;
    let killed: Vec<i32> = admin
        .query(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!killed.is_empty(), "the store had connections to kill");
    // Terminating only signals the backends: wait until every one of them has gone.
    until("the killed backends gone", || async {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&killed],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 { Ok(()) } else { Err(left) }
    })
    .await;

    // Calls on dead connections may fail, but only as Unavailable.
    for _ in 0..20 {
        match store.latest_definition("order").await {
            Ok(found) => assert!(found.is_some()),
            Err(StoreError::Unavailable(_)) => {}
            Err(e) => panic!("a killed connection must read as Unavailable, got {e:?}"),
        }
        match store.external_task_with_instance("none").await {
            Ok(found) => assert!(found.is_none()),
            Err(StoreError::Unavailable(_)) => {}
            Err(e) => panic!("a killed connection must read as Unavailable, got {e:?}"),
        }
    }
    // And the pool heals: fresh connections serve every kind of call.
    store.ping().await.expect("ping after recovery");
    let deployed = store
        .deploy(vec![def("b")], t)
        .await
        .expect("deploy after recovery");
    assert_eq!(deployed[0].definition.version, 2);
    let inst = InstanceRecord {
        definition_id: "order:2".into(),
        ..active_instance("after", 1, t)
    };
    let mut applied = store.apply(ChangeSet::new(inst.clone(), None, t)).await;
    for _ in 0..5 {
        match applied {
            Err(StoreError::Unavailable(_)) => {
                applied = store.apply(ChangeSet::new(inst.clone(), None, t)).await
            }
            _ => break,
        }
    }
    applied.expect("apply after recovery");
    assert_eq!(
        store
            .instance("after")
            .await
            .expect("lookup after recovery"),
        Some(inst),
        "primary-key lookups recover too"
    );
    drop(store);
    db.cleanup().await;
}

/// Dropping a caller's future mid-transaction (an HTTP client that went away) must not
/// leave a connection inside a transaction, nor a lock without its journal row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_calls_leave_no_open_transaction() {
    let Some(db) = fresh_database().await else {
        return;
    };
    let store = Arc::new(PgStore::connect(db.url()).await.expect("connect"));
    let t0 = chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
    let mut c = ChangeSet::new(active_instance("i", 1, t0), None, t0);
    c.external_upserted = (0..200)
        .map(|n| ExternalTaskRecord {
            id: format!("e{n:03}"),
            instance_id: "i".into(),
            definition_id: "order:1".into(),
            activity_id: "a".into(),
            topic: "pay".into(),
            worker_id: None,
            lock_expires_at: None,
            retries: None,
            error_message: None,
            retry_at: None,
            created_at: t0,
        })
        .collect();
    store.apply(c).await.unwrap();
    let pay = [TopicLock {
        topic: "pay".into(),
        lock_duration_ms: 600_000,
    }];
    for n in 0..100u64 {
        let _ = tokio::time::timeout(
            Duration::from_micros(n * 37 % 1500),
            store.fetch_and_lock("w", 2, &pay, t0),
        )
        .await;
    }
    // Whatever was cut short either finished or rolled back by now. (The calls' work
    // goes on in the background: wait until the database has been quiet for a while.)
    let admin = raw_client(&db).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut quiet = 0;
    while quiet < 3 {
        let open: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid() \
                 AND (state = 'active' OR state LIKE 'idle in transaction%')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        quiet = if open == 0 { quiet + 1 } else { 0 };
        assert!(
            Instant::now() < deadline,
            "{open} connections left inside a transaction"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every lock that was taken has its journal row; nothing is half-done.
    let missing: i64 = admin
        .query_one(
            "SELECT count(*) FROM external_tasks e WHERE worker_id IS NOT NULL AND NOT EXISTS \
             (SELECT 1 FROM journal j WHERE j.entity = 'externalTask' AND j.entity_id = e.id)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(missing, 0, "locks without journal rows");
    // And the store still hands out every remaining task exactly once.
    let before: i64 = admin
        .query_one(
            "SELECT count(*) FROM external_tasks WHERE worker_id IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let rest = store.fetch_and_lock("w2", 1000, &pay, t0).await.unwrap();
    assert_eq!(rest.len() as i64, before, "remaining tasks fetchable");
    drop(store);
    db.cleanup().await;
}
