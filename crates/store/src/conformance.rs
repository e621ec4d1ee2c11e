//! The one conformance suite every [`Store`] must pass.
//!
//! Each entry of [`CASES`] takes a fresh, empty, migrated store and panics with a
//! message naming the broken rule. A backend's test loops over them, giving each case
//! its own store:
//!
//! ```ignore
//! for (name, case) in steadyflow_store::conformance::CASES {
//!     eprintln!("conformance: {name}");
//!     case(fresh_store().await).await;
//! }
//! ```
//!
//! Cases spawn Tokio tasks (concurrent workers), so run them inside a multi-threaded
//! Tokio runtime. Timestamps are whole milliseconds (stores keep millisecond precision). Journal reads
//! poll for a few seconds: a store may hold rows back while some older transaction is
//! still in flight (PostgreSQL), but must show them once nothing older is pending.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;
use serde_json::{Value, json};

use crate::*;

pub type CaseFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
pub type Case = fn(Arc<dyn Store>) -> CaseFuture;

/// `(name, case)`; run each case on its own fresh store.
pub const CASES: &[(&str, Case)] = &[
    ("ping", |s| Box::pin(ping(s))),
    ("deploy_versions", |s| Box::pin(deploy_versions(s))),
    ("apply_insert_reads_back", |s| {
        Box::pin(apply_insert_reads_back(s))
    }),
    ("apply_update_replaces_and_removes", |s| {
        Box::pin(apply_update_replaces_and_removes(s))
    }),
    ("apply_stale_version_changes_nothing", |s| {
        Box::pin(apply_stale_version_changes_nothing(s))
    }),
    ("apply_external_upsert_replaces", |s| {
        Box::pin(apply_external_upsert_replaces(s))
    }),
    ("incidents_created_and_resolved", |s| {
        Box::pin(incidents_created_and_resolved(s))
    }),
    ("list_instances_filters", |s| {
        Box::pin(list_instances_filters(s))
    }),
    ("list_tasks_filters", |s| Box::pin(list_tasks_filters(s))),
    ("claim_task_rules", |s| Box::pin(claim_task_rules(s))),
    ("fetch_and_lock_selection", |s| {
        Box::pin(fetch_and_lock_selection(s))
    }),
    ("fetch_and_lock_lock_expiry", |s| {
        Box::pin(fetch_and_lock_lock_expiry(s))
    }),
    ("apply_lock_guard", |s| Box::pin(apply_lock_guard(s))),
    ("fetch_and_lock_retries_and_backoff", |s| {
        Box::pin(fetch_and_lock_retries_and_backoff(s))
    }),
    ("fetch_and_lock_concurrent_workers", |s| {
        Box::pin(fetch_and_lock_concurrent_workers(s))
    }),
    ("timers_acquire_and_next_due", |s| {
        Box::pin(timers_acquire_and_next_due(s))
    }),
    ("history_insertion_order", |s| {
        Box::pin(history_insertion_order(s))
    }),
    ("journal_rows", |s| Box::pin(journal_rows(s))),
    ("journal_limit_and_failed_apply", |s| {
        Box::pin(journal_limit_and_failed_apply(s))
    }),
];

// ---------------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------------

/// Base instant of the suite: 2023-11-14T22:13:20Z.
const T0: i64 = 1_700_000_000_000;

/// `T0 + ms`, whole milliseconds.
fn at(ms: i64) -> Timestamp {
    DateTime::from_timestamp_millis(T0 + ms).expect("valid test timestamp")
}

fn vars(v: Value) -> Vars {
    match v {
        Value::Object(m) => m,
        other => panic!("test variables must be an object, got {other}"),
    }
}

fn instance(id: &str, key: &str) -> InstanceRecord {
    InstanceRecord {
        id: id.into(),
        definition_id: format!("{key}:1"),
        definition_key: key.into(),
        business_key: None,
        state: InstanceState::Active,
        variables: vars(json!({"amount": 42, "customer": {"name": "Ada"}})),
        runtime: json!({"tokens": [{"id": "t1", "at": "start"}]}).into(),
        version: 1,
        started_at: at(0),
        ended_at: None,
    }
}

fn task(id: &str, inst: &str, created: i64) -> TaskRecord {
    TaskRecord {
        id: id.into(),
        instance_id: inst.into(),
        definition_id: "order:1".into(),
        activity_id: "approve".into(),
        name: Some(format!("Approve {id}")),
        assignee: None,
        candidate_users: vec![],
        candidate_groups: vec![],
        created_at: at(created),
    }
}

fn external(id: &str, inst: &str, topic: &str, created: i64) -> ExternalTaskRecord {
    ExternalTaskRecord {
        id: id.into(),
        instance_id: inst.into(),
        definition_id: "order:1".into(),
        activity_id: format!("do-{topic}"),
        topic: topic.into(),
        worker_id: None,
        lock_expires_at: None,
        retries: None,
        error_message: None,
        retry_at: None,
        created_at: at(created),
    }
}

fn timer(id: &str, inst: &str, due: i64) -> TimerRecord {
    TimerRecord {
        id: id.into(),
        instance_id: inst.into(),
        activity_id: format!("wait-{id}"),
        due_at: at(due),
        owner: None,
        lock_until: None,
        created_at: at(0),
    }
}

fn incident(id: &str, inst: &str, created: i64) -> IncidentRecord {
    IncidentRecord {
        id: id.into(),
        instance_id: inst.into(),
        activity_id: "gateway".into(),
        incident_type: IncidentType::NoMatchingFlow,
        message: format!("incident {id}"),
        external_task_id: None,
        created_at: at(created),
        resolved_at: None,
    }
}

fn hist(inst: &str, time: i64, event: &str, n: i64) -> HistoryRecord {
    HistoryRecord {
        instance_id: inst.into(),
        time: at(time),
        event: HistoryEvent::parse(event).unwrap_or_else(|| panic!("unknown test event {event}")),
        activity_id: Some(format!("act-{n}")),
        detail: json!({"n": n, "note": format!("{event} #{n}")}),
    }
}

fn new_def(key: &str, checksum: &str) -> NewDefinition {
    NewDefinition {
        key: key.into(),
        name: Some(format!("{key} process")),
        xml: format!("<definitions id=\"{key}\" checksum=\"{checksum}\"/>"),
        checksum: checksum.into(),
    }
}

/// A successor of `prev` expecting its version.
fn update_of(prev: &InstanceRecord) -> ChangeSet {
    let mut next = prev.clone();
    next.version = prev.version + 1;
    ChangeSet::new(next, Some(prev.version), at(0))
}

async fn insert(store: &dyn Store, change: ChangeSet) {
    let id = change.instance.id.clone();
    store
        .apply(change)
        .await
        .unwrap_or_else(|e| panic!("inserting instance {id} failed: {e}"));
}

fn ids<'a>(it: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    it.into_iter().map(str::to_string).collect()
}

fn topics(list: &[(&str, i64)]) -> Vec<TopicLock> {
    list.iter()
        .map(|(t, d)| TopicLock {
            topic: t.to_string(),
            lock_duration_ms: *d,
        })
        .collect()
}

fn locked_ids(locked: &[LockedTask]) -> Vec<String> {
    locked.iter().map(|l| l.task.id.clone()).collect()
}

/// Polls `journal_since(after, 10_000)` until `done` holds (10 s at most).
async fn journal_until(
    store: &dyn Store,
    after: i64,
    what: &str,
    done: impl Fn(&[JournalRecord]) -> bool,
) -> Vec<JournalRecord> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rows = store
            .journal_since(after, 10_000)
            .await
            .expect("journal_since failed");
        if done(&rows) {
            return rows;
        }
        if std::time::Instant::now() > deadline {
            panic!("journal_since({after}) never showed {what}; last read: {rows:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn has(rows: &[JournalRecord], entity: &str, id: &str, op: &str) -> bool {
    rows.iter()
        .any(|r| r.entity.as_str() == entity && r.entity_id == id && r.op.as_str() == op)
}

fn one<'a>(rows: &'a [JournalRecord], entity: &str, id: &str, op: &str) -> &'a JournalRecord {
    let found: Vec<_> = rows
        .iter()
        .filter(|r| r.entity.as_str() == entity && r.entity_id == id && r.op.as_str() == op)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one journal row {entity}/{id}/{op}, got {found:#?}"
    );
    found[0]
}

// ---------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------

async fn ping(store: Arc<dyn Store>) {
    store.ping().await.expect("ping failed");
    assert!(
        matches!(store.backend(), "sqlite" | "postgres"),
        "backend() must name the backend, got {:?}",
        store.backend()
    );
}

async fn deploy_versions(store: Arc<dyn Store>) {
    let first = store
        .deploy(vec![new_def("order", "c1")], at(0))
        .await
        .expect("first deploy");
    assert_eq!(first.len(), 1, "one definition deployed, one result");
    let v1 = &first[0];
    assert!(v1.created, "first deploy of a key must create it");
    assert_eq!(
        v1.definition.id, "order:1",
        "definition id is <key>:<version>"
    );
    assert_eq!(v1.definition.key, "order");
    assert_eq!(v1.definition.version, 1);
    assert_eq!(v1.definition.checksum, "c1");
    assert_eq!(v1.definition.name.as_deref(), Some("order process"));
    assert_eq!(v1.definition.deployed_at, at(0));

    let again = store
        .deploy(vec![new_def("order", "c1")], at(1_000))
        .await
        .expect("redeploy");
    assert_eq!(again.len(), 1);
    assert!(
        !again[0].created,
        "an unchanged checksum must not create a version"
    );
    assert_eq!(
        again[0].definition.id, "order:1",
        "unchanged checksum returns the existing version"
    );
    assert_eq!(again[0].definition.version, 1);
    assert_eq!(
        again[0].definition.deployed_at,
        at(0),
        "the existing record is returned, not a new one"
    );

    let changed = store
        .deploy(vec![new_def("order", "c2")], at(2_000))
        .await
        .expect("changed deploy");
    assert!(changed[0].created, "a changed checksum creates a version");
    assert_eq!(changed[0].definition.id, "order:2");
    assert_eq!(changed[0].definition.version, 2);
    assert_eq!(changed[0].definition.deployed_at, at(2_000));

    let two = store
        .deploy(
            vec![new_def("invoice", "i1"), new_def("shipping", "s1")],
            at(3_000),
        )
        .await
        .expect("two-key deploy");
    assert_eq!(two.len(), 2, "two keys in one call, two results");
    assert_eq!(
        two[0].definition.id, "invoice:1",
        "results follow the input order"
    );
    assert_eq!(
        two[1].definition.id, "shipping:1",
        "results follow the input order"
    );
    assert!(two.iter().all(|d| d.created));

    let latest = store
        .latest_definition("order")
        .await
        .unwrap()
        .expect("latest of order");
    assert_eq!(
        latest.version, 2,
        "latest_definition returns the highest version"
    );
    assert_eq!(latest.checksum, "c2");
    assert_eq!(
        latest.xml.as_deref(),
        Some(new_def("order", "c2").xml.as_str()),
        "latest carries its XML"
    );
    assert!(
        store.latest_definition("nope").await.unwrap().is_none(),
        "unknown key has no latest"
    );

    let listed = store.list_definitions(Some("order")).await.unwrap();
    let versions: Vec<i32> = listed.iter().map(|d| d.version).collect();
    assert_eq!(versions, vec![2, 1], "list_definitions(key): newest first");
    assert!(
        listed.iter().all(|d| d.xml.is_none()),
        "listings carry no XML"
    );
    assert!(
        listed.iter().all(|d| d.key == "order"),
        "key filter respected"
    );

    let all = store.list_definitions(None).await.unwrap();
    assert_eq!(all.len(), 4, "all definitions listed: {all:#?}");
    assert!(all.iter().all(|d| d.xml.is_none()), "listings carry no XML");
    let order_versions: Vec<i32> = all
        .iter()
        .filter(|d| d.key == "order")
        .map(|d| d.version)
        .collect();
    assert_eq!(order_versions, vec![2, 1], "newest first per key");

    let one = store
        .definition("order:1")
        .await
        .unwrap()
        .expect("definition order:1");
    assert_eq!(one.version, 1);
    assert_eq!(one.checksum, "c1");
    assert_eq!(
        one.xml.as_deref(),
        Some(new_def("order", "c1").xml.as_str()),
        "definition(id) carries XML"
    );
    assert!(
        store.definition("order:9").await.unwrap().is_none(),
        "unknown id is None"
    );
}

async fn apply_insert_reads_back(store: Arc<dyn Store>) {
    let mut inst = instance("i-1", "order");
    inst.business_key = Some("bk-1".into());
    inst.started_at = at(5);
    let mut t1 = task("t-1", "i-1", 10);
    t1.candidate_users = vec!["ann".into()];
    t1.candidate_groups = vec!["sales".into(), "ops".into()];
    let mut t2 = task("t-2", "i-1", 20);
    t2.assignee = Some("bob".into());
    t2.name = None;
    let e1 = external("e-1", "i-1", "pay", 10);
    let mut e2 = external("e-2", "i-1", "ship", 20);
    e2.worker_id = Some("w".into());
    e2.lock_expires_at = Some(at(60_000));
    e2.retries = Some(3);
    e2.error_message = Some("timeout".into());
    e2.retry_at = Some(at(30_000));
    let mut tm = timer("tm-1", "i-1", 90_000);
    tm.created_at = at(7);
    let mut inc = incident("inc-1", "i-1", 15);
    inc.external_task_id = Some("e-2".into());
    let history = vec![
        hist("i-1", 5, "instanceStarted", 1),
        hist("i-1", 6, "activityStarted", 2),
        HistoryRecord {
            activity_id: None,
            detail: Value::Null,
            ..hist("i-1", 7, "variablesChanged", 3)
        },
    ];

    let mut change = ChangeSet::new(inst.clone(), None, at(0));
    change.tasks_created = vec![t1.clone(), t2.clone()];
    change.external_upserted = vec![e1.clone(), e2.clone()];
    change.timers_created = vec![tm.clone()];
    change.incidents_created = vec![inc.clone()];
    change.history = history.clone();
    store.apply(change).await.expect("inserting a new instance");

    assert_eq!(
        store.instance("i-1").await.unwrap(),
        Some(inst),
        "instance reads back equal"
    );
    assert_eq!(
        store.instance("nope").await.unwrap(),
        None,
        "unknown instance is None"
    );
    assert_eq!(
        store.task("t-1").await.unwrap(),
        Some(t1.clone()),
        "task reads back equal"
    );
    assert_eq!(store.task("nope").await.unwrap(), None);
    let tasks = store
        .list_tasks(&TaskFilter {
            instance_id: Some("i-1".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(tasks, vec![t1, t2], "tasks of the instance, oldest first");
    assert_eq!(
        store.external_task("e-2").await.unwrap(),
        Some(e2.clone()),
        "external task reads back equal"
    );
    assert_eq!(store.external_task("nope").await.unwrap(), None);
    let externals = store
        .list_external_tasks(&ExternalTaskFilter {
            instance_id: Some("i-1".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        externals,
        vec![e1.clone(), e2.clone()],
        "external tasks of the instance, oldest first"
    );
    let by_topic = store
        .list_external_tasks(&ExternalTaskFilter {
            topic: Some("ship".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_topic, vec![e2], "external task topic filter");
    let limited = store
        .list_external_tasks(&ExternalTaskFilter {
            limit: Some(1),
            ..Default::default()
        })
        .await;
    assert_eq!(limited.unwrap().len(), 1, "external task limit");
    assert_eq!(
        store.list_timers("i-1").await.unwrap(),
        vec![tm],
        "timers read back equal"
    );
    let incidents = store
        .list_incidents(&IncidentFilter {
            instance_id: Some("i-1".into()),
            open_only: false,
        })
        .await
        .unwrap();
    assert_eq!(incidents, vec![inc], "incidents read back equal");
    assert_eq!(
        store.history("i-1").await.unwrap(),
        history,
        "history reads back equal, in order"
    );
    assert!(store.history("nope").await.unwrap().is_empty());
}

async fn apply_update_replaces_and_removes(store: Arc<dyn Store>) {
    let inst = instance("i-1", "order");
    let mut create = ChangeSet::new(inst.clone(), None, at(0));
    create.tasks_created = vec![task("t-1", "i-1", 1), task("t-2", "i-1", 2)];
    create.external_upserted = vec![
        external("e-1", "i-1", "pay", 1),
        external("e-2", "i-1", "pay", 2),
    ];
    create.timers_created = vec![timer("tm-1", "i-1", 1_000), timer("tm-2", "i-1", 2_000)];
    insert(store.as_ref(), create).await;

    let mut change = update_of(&inst);
    change.instance.variables = vars(json!({"amount": 43, "approved": true}));
    change.instance.runtime = json!({"tokens": []}).into();
    change.instance.business_key = Some("bk-late".into());
    change.instance.state = InstanceState::Incident;
    change.tasks_removed = vec!["t-1".into()];
    change.tasks_created = vec![task("t-3", "i-1", 3)];
    change.external_removed = vec!["e-1".into()];
    change.timers_removed = vec!["tm-1".into()];
    change.history = vec![hist("i-1", 10, "activityCompleted", 1)];
    let v2 = change.instance.clone();
    store
        .apply(change)
        .await
        .expect("update with the current version must succeed");

    assert_eq!(
        store.instance("i-1").await.unwrap(),
        Some(v2.clone()),
        "update replaces the instance"
    );
    let tasks = store
        .list_tasks(&TaskFilter {
            instance_id: Some("i-1".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        tasks,
        vec![task("t-2", "i-1", 2), task("t-3", "i-1", 3)],
        "t-1 removed, t-3 added"
    );
    assert_eq!(
        store.task("t-1").await.unwrap(),
        None,
        "removed task is gone"
    );
    let externals = store
        .list_external_tasks(&ExternalTaskFilter {
            instance_id: Some("i-1".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        externals,
        vec![external("e-2", "i-1", "pay", 2)],
        "e-1 removed"
    );
    assert_eq!(
        store.external_task("e-1").await.unwrap(),
        None,
        "removed external task is gone"
    );
    assert_eq!(
        store.list_timers("i-1").await.unwrap(),
        vec![timer("tm-2", "i-1", 2_000)],
        "tm-1 removed"
    );

    let mut done = update_of(&v2);
    done.instance.state = InstanceState::Completed;
    done.instance.ended_at = Some(at(20));
    done.tasks_removed = vec!["t-2".into(), "t-3".into(), "never-existed".into()];
    done.external_removed = vec!["e-2".into()];
    done.timers_removed = vec!["tm-2".into()];
    let v3 = done.instance.clone();
    store
        .apply(done)
        .await
        .expect("second update (removing unknown ids too) must succeed");
    assert_eq!(
        store.instance("i-1").await.unwrap(),
        Some(v3),
        "completed instance with ended_at"
    );
    let tasks = store
        .list_tasks(&TaskFilter {
            instance_id: Some("i-1".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(tasks.is_empty(), "all tasks removed: {tasks:?}");
    assert!(
        store.list_timers("i-1").await.unwrap().is_empty(),
        "all timers removed"
    );

    let ghost = update_of(&instance("ghost", "order"));
    match store.apply(ghost).await {
        Err(StoreError::Conflict(id)) => assert_eq!(id, "ghost"),
        other => panic!("updating a missing instance must be Conflict, got {other:?}"),
    }
}

async fn apply_stale_version_changes_nothing(store: Arc<dyn Store>) {
    let inst = instance("i-1", "order");
    let mut create = ChangeSet::new(inst.clone(), None, at(0));
    create.tasks_created = vec![task("t-1", "i-1", 1)];
    create.external_upserted = vec![external("e-1", "i-1", "pay", 1)];
    create.timers_created = vec![timer("tm-1", "i-1", 1_000)];
    create.incidents_created = vec![incident("inc-1", "i-1", 1)];
    create.history = vec![hist("i-1", 1, "instanceStarted", 1)];
    insert(store.as_ref(), create).await;
    let v2 = update_of(&inst);
    let current = v2.instance.clone();
    store.apply(v2).await.expect("first update");

    // A second writer read version 1 too, and now tries to commit on top of it.
    let mut stale = update_of(&inst);
    stale.instance.variables = vars(json!({"stale": true}));
    stale.tasks_created = vec![task("t-stale", "i-1", 5)];
    stale.tasks_removed = vec!["t-1".into()];
    stale.external_upserted = vec![
        ExternalTaskRecord {
            retries: Some(0),
            ..external("e-1", "i-1", "pay", 1)
        },
        external("e-stale", "i-1", "pay", 5),
    ];
    stale.external_removed = vec![];
    stale.timers_created = vec![timer("tm-stale", "i-1", 5)];
    stale.timers_removed = vec!["tm-1".into()];
    stale.incidents_created = vec![incident("inc-stale", "i-1", 5)];
    stale.incidents_resolved = vec!["inc-1".into()];
    stale.history = vec![hist("i-1", 5, "activityCancelled", 9)];
    match store.apply(stale).await {
        Err(StoreError::Conflict(id)) => assert_eq!(id, "i-1", "Conflict names the instance"),
        other => panic!("a stale expected_version must be Conflict, got {other:?}"),
    }

    assert_eq!(
        store.instance("i-1").await.unwrap(),
        Some(current),
        "instance unchanged by a failed apply"
    );
    assert_eq!(
        store.task("t-stale").await.unwrap(),
        None,
        "no task of the failed apply"
    );
    assert!(
        store.task("t-1").await.unwrap().is_some(),
        "task removal of the failed apply not applied"
    );
    assert_eq!(
        store.external_task("e-1").await.unwrap(),
        Some(external("e-1", "i-1", "pay", 1)),
        "external upsert of the failed apply not applied"
    );
    assert_eq!(
        store.external_task("e-stale").await.unwrap(),
        None,
        "no external task of the failed apply"
    );
    assert_eq!(
        store.list_timers("i-1").await.unwrap(),
        vec![timer("tm-1", "i-1", 1_000)],
        "timers unchanged by the failed apply"
    );
    let incidents = store
        .list_incidents(&IncidentFilter {
            instance_id: Some("i-1".into()),
            open_only: false,
        })
        .await;
    assert_eq!(
        incidents.unwrap(),
        vec![incident("inc-1", "i-1", 1)],
        "incidents unchanged (still open)"
    );
    assert_eq!(
        store.history("i-1").await.unwrap(),
        vec![hist("i-1", 1, "instanceStarted", 1)],
        "no history of the failed apply"
    );

    // Inserting an instance that already exists is not allowed either.
    assert!(
        store
            .apply(ChangeSet::new(inst, None, at(0)))
            .await
            .is_err(),
        "inserting an existing instance must fail"
    );
}

async fn apply_external_upsert_replaces(store: Arc<dyn Store>) {
    let inst = instance("i-1", "order");
    let mut create = ChangeSet::new(inst.clone(), None, at(0));
    create.external_upserted = vec![external("e-1", "i-1", "pay", 1)];
    insert(store.as_ref(), create).await;

    let failed = ExternalTaskRecord {
        retries: Some(2),
        error_message: Some("boom".into()),
        retry_at: Some(at(10_000)),
        ..external("e-1", "i-1", "pay", 1)
    };
    let mut change = update_of(&inst);
    change.external_upserted = vec![failed.clone(), external("e-2", "i-1", "ship", 2)];
    store.apply(change).await.expect("upserting external tasks");
    assert_eq!(
        store.external_task("e-1").await.unwrap(),
        Some(failed),
        "upsert replaces the existing row"
    );
    assert_eq!(
        store.external_task("e-2").await.unwrap(),
        Some(external("e-2", "i-1", "ship", 2)),
        "upsert inserts"
    );
}

async fn incidents_created_and_resolved(store: Arc<dyn Store>) {
    let a = instance("i-a", "order");
    let mut create = ChangeSet::new(a.clone(), None, at(0));
    create.incidents_created = vec![incident("inc-1", "i-a", 1), incident("inc-2", "i-a", 2)];
    insert(store.as_ref(), create).await;
    let mut create_b = ChangeSet::new(instance("i-b", "order"), None, at(0));
    create_b.incidents_created = vec![incident("inc-3", "i-b", 3)];
    insert(store.as_ref(), create_b).await;

    let open = store
        .list_incidents(&IncidentFilter {
            instance_id: None,
            open_only: true,
        })
        .await
        .unwrap();
    assert_eq!(
        ids(open.iter().map(|i| i.id.as_str())),
        ids(["inc-1", "inc-2", "inc-3"]),
        "all open"
    );

    let mut resolve = update_of(&a);
    resolve.incidents_resolved = vec!["inc-1".into()];
    store.apply(resolve).await.expect("resolving an incident");

    let open_a = store
        .list_incidents(&IncidentFilter {
            instance_id: Some("i-a".into()),
            open_only: true,
        })
        .await
        .unwrap();
    assert_eq!(
        open_a,
        vec![incident("inc-2", "i-a", 2)],
        "resolved incident no longer open"
    );
    let all_a = store
        .list_incidents(&IncidentFilter {
            instance_id: Some("i-a".into()),
            open_only: false,
        })
        .await
        .unwrap();
    assert_eq!(
        all_a.len(),
        2,
        "resolved incidents are still listed without open_only"
    );
    let resolved = all_a
        .iter()
        .find(|i| i.id == "inc-1")
        .expect("inc-1 listed");
    assert!(
        resolved.resolved_at.is_some(),
        "a resolved incident has resolved_at"
    );
    assert_eq!(
        IncidentRecord {
            resolved_at: None,
            ..resolved.clone()
        },
        incident("inc-1", "i-a", 1),
        "resolving changes nothing but resolved_at"
    );
    let open = store
        .list_incidents(&IncidentFilter {
            instance_id: None,
            open_only: true,
        })
        .await
        .unwrap();
    assert_eq!(
        ids(open.iter().map(|i| i.id.as_str())),
        ids(["inc-2", "inc-3"]),
        "open across instances"
    );
}

async fn list_instances_filters(store: Arc<dyn Store>) {
    let mk = |id: &str, key: &str, bk: Option<&str>, state: InstanceState, started: i64| {
        InstanceRecord {
            business_key: bk.map(str::to_string),
            state,
            started_at: at(started),
            ended_at: state.is_ended().then(|| at(started + 1)),
            ..instance(id, key)
        }
    };
    for inst in [
        mk("a", "order", Some("b1"), InstanceState::Active, 1),
        mk("b", "order", Some("b2"), InstanceState::Completed, 2),
        mk("c", "invoice", Some("b1"), InstanceState::Active, 3),
        mk("d", "invoice", None, InstanceState::Incident, 4),
    ] {
        insert(store.as_ref(), ChangeSet::new(inst, None, at(0))).await;
    }
    let list = |f: InstanceFilter| {
        let store = store.clone();
        async move {
            let found = store.list_instances(&f).await.expect("list_instances");
            ids(found.iter().map(|i| i.id.as_str()))
        }
    };
    assert_eq!(
        list(InstanceFilter::default()).await,
        ids(["a", "b", "c", "d"]),
        "no filter lists all"
    );
    assert_eq!(
        list(InstanceFilter {
            state: Some(InstanceState::Active),
            ..Default::default()
        })
        .await,
        ids(["a", "c"]),
        "state filter"
    );
    assert_eq!(
        list(InstanceFilter {
            state: Some(InstanceState::Incident),
            ..Default::default()
        })
        .await,
        ids(["d"]),
        "state filter (incident)"
    );
    assert_eq!(
        list(InstanceFilter {
            definition_key: Some("order".into()),
            ..Default::default()
        })
        .await,
        ids(["a", "b"]),
        "definition_key filter"
    );
    assert_eq!(
        list(InstanceFilter {
            business_key: Some("b1".into()),
            ..Default::default()
        })
        .await,
        ids(["a", "c"]),
        "business_key filter"
    );
    assert_eq!(
        list(InstanceFilter {
            state: Some(InstanceState::Active),
            definition_key: Some("invoice".into()),
            ..Default::default()
        })
        .await,
        ids(["c"]),
        "filters combine with AND"
    );
    assert_eq!(
        list(InstanceFilter {
            business_key: Some("zzz".into()),
            ..Default::default()
        })
        .await,
        ids([]),
        "no match is empty"
    );
    let limited = store
        .list_instances(&InstanceFilter {
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(limited.len(), 2, "limit respected");
    let full = store
        .list_instances(&InstanceFilter::default())
        .await
        .unwrap();
    let d = full.iter().find(|i| i.id == "d").expect("d listed");
    assert_eq!(
        d,
        &mk("d", "invoice", None, InstanceState::Incident, 4),
        "listed records are complete"
    );
}

async fn list_tasks_filters(store: Arc<dyn Store>) {
    let t1 = TaskRecord {
        assignee: Some("ann".into()),
        candidate_groups: vec!["sales".into()],
        ..task("t1", "A", 1)
    };
    let t2 = TaskRecord {
        candidate_groups: vec!["sales".into(), "ops".into()],
        ..task("t2", "A", 2)
    };
    let t3 = TaskRecord {
        candidate_groups: vec!["ops".into()],
        ..task("t3", "B", 3)
    };
    let t4 = TaskRecord {
        candidate_groups: vec!["salesforce".into()],
        candidate_users: vec!["sales".into()],
        ..task("t4", "B", 4)
    };
    let mut a = ChangeSet::new(instance("A", "order"), None, at(0));
    a.tasks_created = vec![t1.clone(), t2.clone()];
    insert(store.as_ref(), a).await;
    let mut b = ChangeSet::new(instance("B", "order"), None, at(0));
    b.tasks_created = vec![t3.clone(), t4.clone()];
    insert(store.as_ref(), b).await;

    let list = |f: TaskFilter| {
        let store = store.clone();
        async move {
            let found = store.list_tasks(&f).await.expect("list_tasks");
            ids(found.iter().map(|t| t.id.as_str()))
        }
    };
    assert_eq!(
        list(TaskFilter::default()).await,
        ids(["t1", "t2", "t3", "t4"]),
        "no filter lists all"
    );
    assert_eq!(
        list(TaskFilter {
            candidate_group: Some("sales".into()),
            ..Default::default()
        })
        .await,
        ids(["t1", "t2"]),
        "candidate_group matches list members exactly (not 'salesforce', not candidate users)"
    );
    assert_eq!(
        list(TaskFilter {
            candidate_group: Some("ops".into()),
            ..Default::default()
        })
        .await,
        ids(["t2", "t3"]),
        "candidate_group membership"
    );
    assert_eq!(
        list(TaskFilter {
            candidate_group: Some("sale".into()),
            ..Default::default()
        })
        .await,
        ids([]),
        "no substring match on candidate groups"
    );
    assert_eq!(
        list(TaskFilter {
            assignee: Some("ann".into()),
            ..Default::default()
        })
        .await,
        ids(["t1"]),
        "assignee"
    );
    assert_eq!(
        list(TaskFilter {
            instance_id: Some("B".into()),
            ..Default::default()
        })
        .await,
        ids(["t3", "t4"]),
        "instance_id"
    );
    assert_eq!(
        list(TaskFilter {
            candidate_group: Some("ops".into()),
            instance_id: Some("A".into()),
            ..Default::default()
        })
        .await,
        ids(["t2"]),
        "filters combine with AND"
    );
    let limited = store
        .list_tasks(&TaskFilter {
            limit: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(limited.len(), 3, "limit respected");
    let by_ann = store
        .list_tasks(&TaskFilter {
            assignee: Some("ann".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(
        by_ann.unwrap(),
        vec![t1],
        "listed task records are complete"
    );
}

async fn claim_task_rules(store: Arc<dyn Store>) {
    let t1 = TaskRecord {
        candidate_groups: vec!["sales".into()],
        ..task("t1", "A", 1)
    };
    let mut a = ChangeSet::new(instance("A", "order"), None, at(0));
    a.tasks_created = vec![t1.clone()];
    insert(store.as_ref(), a).await;

    let claimed = store
        .claim_task("t1", "ann", at(10))
        .await
        .expect("claiming an open task");
    assert_eq!(
        claimed,
        TaskRecord {
            assignee: Some("ann".into()),
            ..t1.clone()
        },
        "claim sets only the assignee"
    );
    assert_eq!(
        store
            .task("t1")
            .await
            .unwrap()
            .and_then(|t| t.assignee)
            .as_deref(),
        Some("ann"),
        "claim persisted"
    );
    let again = store
        .claim_task("t1", "ann", at(11))
        .await
        .expect("the holder may claim again");
    assert_eq!(again.assignee.as_deref(), Some("ann"));
    match store.claim_task("t1", "bob", at(12)).await {
        Err(StoreError::Rejected(_)) => {}
        other => panic!("claiming a task held by another user must be Rejected, got {other:?}"),
    }
    assert_eq!(
        store
            .task("t1")
            .await
            .unwrap()
            .and_then(|t| t.assignee)
            .as_deref(),
        Some("ann"),
        "a rejected claim changes nothing"
    );
    match store.claim_task("nope", "ann", at(13)).await {
        Err(StoreError::NotFound { id, .. }) => assert_eq!(id, "nope"),
        other => panic!("claiming an unknown task must be NotFound, got {other:?}"),
    }
}

async fn fetch_and_lock_selection(store: Arc<dyn Store>) {
    let inst = instance("i-1", "order");
    let mut other_inst = instance("i-2", "order");
    other_inst.variables = vars(json!({"other": "yes"}));
    let mut a = ChangeSet::new(inst.clone(), None, at(0));
    a.external_upserted = vec![
        external("e1", "i-1", "pay", 1),
        external("e3", "i-1", "pay", 3),
        external("e4", "i-1", "pay", 4),
        external("e5", "i-1", "other", 0),
    ];
    insert(store.as_ref(), a).await;
    let mut b = ChangeSet::new(other_inst.clone(), None, at(0));
    b.external_upserted = vec![external("e2", "i-2", "ship", 2)];
    insert(store.as_ref(), b).await;

    let wanted = topics(&[("pay", 30_000), ("ship", 10_000)]);
    let first = store
        .fetch_and_lock("w1", 2, &wanted, at(100))
        .await
        .expect("fetch_and_lock");
    assert_eq!(
        locked_ids(&first),
        vec!["e1", "e2"],
        "max respected, oldest first across topics"
    );
    let e1 = &first[0];
    assert_eq!(
        e1.task.worker_id.as_deref(),
        Some("w1"),
        "locked for the worker"
    );
    assert_eq!(
        e1.task.lock_expires_at,
        Some(at(100 + 30_000)),
        "lock = now + the topic's duration"
    );
    assert_eq!(
        e1.variables, inst.variables,
        "the instance's variables come along"
    );
    assert_eq!(
        ExternalTaskRecord {
            worker_id: None,
            lock_expires_at: None,
            ..e1.task.clone()
        },
        external("e1", "i-1", "pay", 1),
        "fetching changes only worker_id and lock_expires_at"
    );
    let e2 = &first[1];
    assert_eq!(
        e2.task.lock_expires_at,
        Some(at(100 + 10_000)),
        "per-topic lock duration"
    );
    assert_eq!(
        e2.variables, other_inst.variables,
        "variables of the task's own instance"
    );
    let stored = store.external_task("e1").await.unwrap().expect("e1 stored");
    assert_eq!(stored.worker_id.as_deref(), Some("w1"), "lock persisted");
    assert_eq!(
        stored.lock_expires_at,
        Some(at(30_100)),
        "lock expiry persisted"
    );

    let rest = store
        .fetch_and_lock("w1", 10, &wanted, at(200))
        .await
        .unwrap();
    assert_eq!(
        locked_ids(&rest),
        vec!["e3", "e4"],
        "locked tasks and other topics are not fetched"
    );
    let other = store
        .fetch_and_lock("w2", 10, &topics(&[("other", 1_000)]), at(200))
        .await
        .unwrap();
    assert_eq!(locked_ids(&other), vec!["e5"], "only the given topics");
    assert!(
        store
            .fetch_and_lock("w2", 10, &[], at(200))
            .await
            .unwrap()
            .is_empty(),
        "no topics, no tasks"
    );
    let none = store
        .fetch_and_lock("w2", 10, &topics(&[("nothing", 1_000)]), at(200))
        .await
        .unwrap();
    assert!(none.is_empty(), "unknown topic, no tasks");
}

async fn fetch_and_lock_lock_expiry(store: Arc<dyn Store>) {
    let mut a = ChangeSet::new(instance("i-1", "order"), None, at(0));
    a.external_upserted = vec![external("e1", "i-1", "pay", 1)];
    insert(store.as_ref(), a).await;
    let pay = topics(&[("pay", 1_000)]);

    let got = store.fetch_and_lock("w1", 5, &pay, at(0)).await.unwrap();
    assert_eq!(locked_ids(&got), vec!["e1"]);
    let during = store.fetch_and_lock("w2", 5, &pay, at(500)).await.unwrap();
    assert!(
        during.is_empty(),
        "a locked task is not fetched before its lock expires: {during:?}"
    );
    let after = store
        .fetch_and_lock("w2", 5, &pay, at(1_500))
        .await
        .unwrap();
    assert_eq!(
        locked_ids(&after),
        vec!["e1"],
        "an expired lock makes the task fetchable again"
    );
    assert_eq!(
        after[0].task.worker_id.as_deref(),
        Some("w2"),
        "relocked for the new worker"
    );
    assert_eq!(after[0].task.lock_expires_at, Some(at(2_500)));
}

/// A change set with a lock guard commits only while that worker's lock holds; otherwise
/// it is refused like a lost optimistic lock and changes nothing.
async fn apply_lock_guard(store: Arc<dyn Store>) {
    let mut a = ChangeSet::new(instance("i-1", "order"), None, at(0));
    a.external_upserted = vec![external("e1", "i-1", "pay", 1)];
    insert(store.as_ref(), a).await;
    let got = store
        .fetch_and_lock("w1", 5, &topics(&[("pay", 1_000)]), at(0))
        .await
        .unwrap();
    assert_eq!(locked_ids(&got), vec!["e1"]);
    let inst = store.instance("i-1").await.unwrap().unwrap();
    let complete = |worker: &str, now: i64| {
        let mut c = update_of(&inst);
        c.external_removed = vec!["e1".into()];
        c.lock_guard = Some(LockGuard {
            task_id: "e1".into(),
            worker_id: worker.into(),
            now: at(now),
        });
        c
    };
    for (worker, now, why) in [
        ("w2", 10, "another worker's lock"),
        ("w1", 2_000, "an expired lock"),
    ] {
        let r = store.apply(complete(worker, now)).await;
        assert!(
            matches!(r, Err(StoreError::Conflict(_))),
            "{why} must be refused, got {r:?}"
        );
        assert!(
            store.external_task("e1").await.unwrap().is_some(),
            "{why}: nothing may change"
        );
        assert_eq!(
            store.instance("i-1").await.unwrap().unwrap().version,
            inst.version
        );
    }
    store
        .apply(complete("w1", 10))
        .await
        .expect("the holder of the lock commits");
    assert!(store.external_task("e1").await.unwrap().is_none());
}

async fn fetch_and_lock_retries_and_backoff(store: Arc<dyn Store>) {
    let mut a = ChangeSet::new(instance("i-1", "order"), None, at(0));
    a.external_upserted = vec![
        ExternalTaskRecord {
            retries: Some(0),
            error_message: Some("gave up".into()),
            ..external("e-dead", "i-1", "pay", 1)
        },
        ExternalTaskRecord {
            retries: Some(2),
            retry_at: Some(at(5_000)),
            ..external("e-later", "i-1", "pay", 2)
        },
        ExternalTaskRecord {
            retries: Some(1),
            ..external("e-now", "i-1", "pay", 3)
        },
    ];
    insert(store.as_ref(), a).await;
    let pay = topics(&[("pay", 60_000)]);

    let early = store
        .fetch_and_lock("w1", 10, &pay, at(1_000))
        .await
        .unwrap();
    assert_eq!(
        locked_ids(&early),
        vec!["e-now"],
        "retries == 0 and a future retry_at are not fetched"
    );
    let later = store
        .fetch_and_lock("w1", 10, &pay, at(6_000))
        .await
        .unwrap();
    assert_eq!(
        locked_ids(&later),
        vec!["e-later"],
        "fetchable once retry_at has passed"
    );
    let much_later = store
        .fetch_and_lock("w1", 10, &pay, at(10_000_000))
        .await
        .unwrap();
    assert!(
        !locked_ids(&much_later).contains(&"e-dead".to_string()),
        "a task without retries left is never fetched"
    );
}

async fn fetch_and_lock_concurrent_workers(store: Arc<dyn Store>) {
    let mut a = ChangeSet::new(instance("i-1", "order"), None, at(0));
    a.external_upserted = (0..10)
        .map(|n| external(&format!("e{n:02}"), "i-1", "pay", n))
        .collect();
    insert(store.as_ref(), a).await;
    let pay = topics(&[("pay", 60_000)]);

    let (one, two) = tokio::join!(
        store.fetch_and_lock("w1", 5, &pay, at(100)),
        store.fetch_and_lock("w2", 5, &pay, at(100)),
    );
    let (one, two) = (one.expect("worker 1"), two.expect("worker 2"));
    assert!(
        one.len() <= 5 && two.len() <= 5,
        "max respected under concurrency"
    );
    assert!(
        one.iter()
            .all(|l| l.task.worker_id.as_deref() == Some("w1"))
    );
    assert!(
        two.iter()
            .all(|l| l.task.worker_id.as_deref() == Some("w2"))
    );
    let set_one = ids(one.iter().map(|l| l.task.id.as_str()));
    let set_two = ids(two.iter().map(|l| l.task.id.as_str()));
    assert!(
        set_one.is_disjoint(&set_two),
        "two concurrent fetches handed out the same task: {set_one:?} / {set_two:?}"
    );
    assert!(
        !set_one.is_empty() || !set_two.is_empty(),
        "concurrent fetches got nothing at all"
    );
    for l in one.iter().chain(two.iter()) {
        let stored = store
            .external_task(&l.task.id)
            .await
            .unwrap()
            .expect("stored");
        assert_eq!(
            stored.worker_id, l.task.worker_id,
            "stored lock belongs to the worker that got the task"
        );
    }
    let rest = store.fetch_and_lock("w3", 10, &pay, at(200)).await.unwrap();
    let set_rest = ids(rest.iter().map(|l| l.task.id.as_str()));
    assert!(
        set_rest.is_disjoint(&set_one) && set_rest.is_disjoint(&set_two),
        "locked tasks were fetched again"
    );
    assert_eq!(
        set_one.len() + set_two.len() + set_rest.len(),
        10,
        "every task handed out exactly once"
    );

    // Four workers draining 60 tasks in small bites, in parallel tasks.
    let mut b = ChangeSet::new(instance("i-2", "order"), None, at(0));
    b.external_upserted = (0..60)
        .map(|n| external(&format!("b{n:02}"), "i-2", "bulk", 1_000 + n))
        .collect();
    insert(store.as_ref(), b).await;
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let bulk = topics(&[("bulk", 60_000)]);
                let mut got = Vec::new();
                loop {
                    let batch = store
                        .fetch_and_lock(&format!("bw{w}"), 3, &bulk, at(2_000))
                        .await
                        .expect("fetch");
                    if batch.is_empty() {
                        return got;
                    }
                    got.extend(locked_ids(&batch));
                }
            })
        })
        .collect();
    let mut handed = Vec::new();
    for w in workers {
        handed.extend(w.await.expect("worker task"));
    }
    let distinct = ids(handed.iter().map(String::as_str));
    assert_eq!(
        distinct.len(),
        handed.len(),
        "a task was handed to two workers: {handed:?}"
    );
    assert_eq!(distinct.len(), 60, "every bulk task handed out");
}

async fn timers_acquire_and_next_due(store: Arc<dyn Store>) {
    assert_eq!(
        store.next_timer_due().await.unwrap(),
        None,
        "no timers, no next due time"
    );
    let held = TimerRecord {
        owner: Some("other".into()),
        lock_until: Some(at(3_000)),
        ..timer("tm4", "A", 500)
    };
    let mut a = ChangeSet::new(instance("A", "order"), None, at(0));
    a.timers_created = vec![
        timer("tm1", "A", 1_000),
        timer("tm2", "A", 2_000),
        timer("tm3", "A", 5_000),
        held.clone(),
    ];
    insert(store.as_ref(), a).await;
    let mut b = ChangeSet::new(instance("B", "order"), None, at(0));
    b.timers_created = vec![timer("tm5", "B", 1_500)];
    insert(store.as_ref(), b).await;

    assert_eq!(
        store.next_timer_due().await.unwrap(),
        Some(at(500)),
        "earliest due time of any timer"
    );
    assert_eq!(
        store.list_timers("B").await.unwrap(),
        vec![timer("tm5", "B", 1_500)],
        "timers by instance"
    );
    assert_eq!(store.list_timers("A").await.unwrap().len(), 4);

    let got = store
        .acquire_due_timers("n1", at(2_000), at(62_000), 10)
        .await
        .unwrap();
    assert_eq!(
        ids(got.iter().map(|t| t.id.as_str())),
        ids(["tm1", "tm2", "tm5"]),
        "only due timers (due_at <= now) that are unlocked"
    );
    for t in &got {
        assert_eq!(t.owner.as_deref(), Some("n1"), "owner set");
        assert_eq!(t.lock_until, Some(at(62_000)), "lock_until set");
    }
    let tm1 = store
        .list_timers("A")
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.id == "tm1")
        .unwrap();
    assert_eq!(tm1.owner.as_deref(), Some("n1"), "owner persisted");
    assert_eq!(tm1.lock_until, Some(at(62_000)), "lock persisted");
    assert_eq!(
        TimerRecord {
            owner: None,
            lock_until: None,
            ..tm1
        },
        timer("tm1", "A", 1_000),
        "acquiring changes only owner and lock_until"
    );

    let second = store
        .acquire_due_timers("n2", at(2_500), at(62_500), 10)
        .await
        .unwrap();
    assert!(
        second.is_empty(),
        "timers locked by another node are not acquired: {second:?}"
    );
    let expired = store
        .acquire_due_timers("n2", at(4_000), at(9_000), 10)
        .await
        .unwrap();
    assert_eq!(
        ids(expired.iter().map(|t| t.id.as_str())),
        ids(["tm4"]),
        "an expired lock can be taken over"
    );
    assert_eq!(expired[0].owner.as_deref(), Some("n2"));

    let limited = store
        .acquire_due_timers("n3", at(100_000), at(200_000), 2)
        .await
        .unwrap();
    assert_eq!(limited.len(), 2, "limit respected");
    let rest = store
        .acquire_due_timers("n4", at(100_000), at(200_000), 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 3, "the remaining timers: {rest:?}");
    let all = ids(limited.iter().chain(rest.iter()).map(|t| t.id.as_str()));
    assert_eq!(
        all,
        ids(["tm1", "tm2", "tm3", "tm4", "tm5"]),
        "each timer acquired once"
    );

    // Three nodes draining 30 due timers in parallel: each timer goes to one node.
    let mut c = ChangeSet::new(instance("C", "order"), None, at(0));
    c.timers_created = (0..30)
        .map(|n| timer(&format!("bulk{n:02}"), "C", 300_000 + n))
        .collect();
    insert(store.as_ref(), c).await;
    let nodes: Vec<_> = (0..3)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = store
                        .acquire_due_timers(&format!("node{n}"), at(400_000), at(900_000), 2)
                        .await
                        .expect("acquire");
                    if batch.is_empty() {
                        return got;
                    }
                    got.extend(batch.into_iter().map(|t| t.id));
                }
            })
        })
        .collect();
    let mut acquired = Vec::new();
    for n in nodes {
        acquired.extend(n.await.expect("node task"));
    }
    let distinct = ids(acquired.iter().map(String::as_str));
    assert_eq!(
        distinct.len(),
        acquired.len(),
        "a timer was acquired by two nodes: {acquired:?}"
    );
    // The five earlier timers' locks (until 200_000) have expired by now too.
    assert_eq!(distinct.len(), 35, "every due timer acquired: {acquired:?}");
    assert_eq!(
        distinct.iter().filter(|id| id.starts_with("bulk")).count(),
        30,
        "all bulk timers acquired"
    );
}

async fn history_insertion_order(store: Arc<dyn Store>) {
    // Times deliberately out of order: history is returned in insertion order.
    let a = instance("A", "order");
    let mut first = ChangeSet::new(a.clone(), None, at(0));
    first.history = vec![
        hist("A", 50, "instanceStarted", 1),
        hist("A", 10, "activityStarted", 2),
    ];
    insert(store.as_ref(), first).await;
    let mut b = ChangeSet::new(instance("B", "order"), None, at(0));
    b.history = vec![hist("B", 0, "instanceStarted", 1)];
    insert(store.as_ref(), b).await;
    let mut second = update_of(&a);
    second.history = vec![hist("A", 5, "activityCompleted", 3)];
    let a2 = second.instance.clone();
    store.apply(second).await.unwrap();
    let mut third = update_of(&a2);
    third.history = vec![
        hist("A", 70, "variablesChanged", 4),
        hist("A", 1, "instanceCompleted", 5),
    ];
    store.apply(third).await.unwrap();

    let expected: Vec<i64> = vec![1, 2, 3, 4, 5];
    let got = store.history("A").await.unwrap();
    let order: Vec<i64> = got
        .iter()
        .map(|h| h.detail["n"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(order, expected, "history in insertion order per instance");
    assert_eq!(
        got[4],
        hist("A", 1, "instanceCompleted", 5),
        "history records complete"
    );
    assert_eq!(
        store.history("B").await.unwrap(),
        vec![hist("B", 0, "instanceStarted", 1)],
        "per instance"
    );
}

async fn journal_rows(store: Arc<dyn Store>) {
    let inst = InstanceRecord {
        business_key: Some("bk".into()),
        ..instance("i-1", "order")
    };
    let t1 = task("t-1", "i-1", 1);
    let e1 = external("e-1", "i-1", "pay", 1);
    let tm1 = timer("tm-1", "i-1", 1_000);
    let inc1 = incident("inc-1", "i-1", 1);
    let history = vec![
        hist("i-1", 1, "instanceStarted", 1),
        hist("i-1", 2, "activityStarted", 2),
    ];
    let mut create = ChangeSet::new(inst.clone(), None, at(0));
    create.tasks_created = vec![t1.clone()];
    create.external_upserted = vec![e1.clone()];
    create.timers_created = vec![tm1.clone()];
    create.incidents_created = vec![inc1.clone()];
    create.history = history.clone();
    insert(store.as_ref(), create).await;

    let mut change = update_of(&inst);
    change.tasks_removed = vec!["t-1".into()];
    change.tasks_created = vec![task("t-2", "i-1", 2)];
    let e1_failed = ExternalTaskRecord {
        retries: Some(1),
        error_message: Some("boom".into()),
        ..e1.clone()
    };
    change.external_upserted = vec![e1_failed.clone()];
    change.timers_removed = vec!["tm-1".into()];
    change.incidents_resolved = vec!["inc-1".into()];
    change.history = vec![hist("i-1", 3, "activityCompleted", 3)];
    let v2 = change.instance.clone();
    store.apply(change).await.expect("update");
    store.claim_task("t-2", "ann", at(5)).await.expect("claim");

    let rows = journal_until(store.as_ref(), 0, "the claim's task update", |rows| {
        has(rows, "task", "t-2", "update")
    })
    .await;
    for pair in rows.windows(2) {
        assert!(
            pair[0].seq < pair[1].seq,
            "journal seq must strictly increase: {} then {}",
            pair[0].seq,
            pair[1].seq
        );
    }

    let ins = one(&rows, "instance", "i-1", "insert");
    let image: InstanceRecord =
        serde_json::from_value(ins.row.clone()).expect("instance row image deserializes");
    assert_eq!(image, inst, "instance insert row image is the record");
    let upd = one(&rows, "instance", "i-1", "update");
    let image: InstanceRecord =
        serde_json::from_value(upd.row.clone()).expect("instance row image deserializes");
    assert_eq!(image, v2, "instance update row image is the new record");
    assert!(ins.seq < upd.seq, "a later commit has a later seq");

    let t_ins = one(&rows, "task", "t-1", "insert");
    assert_eq!(
        serde_json::from_value::<TaskRecord>(t_ins.row.clone()).expect("task image"),
        t1
    );
    let t_del = one(&rows, "task", "t-1", "delete");
    assert_eq!(t_del.row, Value::Null, "a delete row's image is null");
    assert!(t_ins.seq < t_del.seq);
    one(&rows, "task", "t-2", "insert");
    let claim = one(&rows, "task", "t-2", "update");
    let claimed: TaskRecord = serde_json::from_value(claim.row.clone()).expect("task image");
    assert_eq!(
        claimed.assignee.as_deref(),
        Some("ann"),
        "claim journals the claimed row"
    );

    let e_ins = one(&rows, "externalTask", "e-1", "insert");
    assert_eq!(
        serde_json::from_value::<ExternalTaskRecord>(e_ins.row.clone()).expect("image"),
        e1
    );
    let e_upd = one(&rows, "externalTask", "e-1", "update");
    assert_eq!(
        serde_json::from_value::<ExternalTaskRecord>(e_upd.row.clone()).expect("image"),
        e1_failed,
        "an upsert of an existing external task is an update"
    );
    let tm_ins = one(&rows, "timer", "tm-1", "insert");
    assert_eq!(
        serde_json::from_value::<TimerRecord>(tm_ins.row.clone()).expect("image"),
        tm1
    );
    assert_eq!(one(&rows, "timer", "tm-1", "delete").row, Value::Null);
    let inc_ins = one(&rows, "incident", "inc-1", "insert");
    assert_eq!(
        serde_json::from_value::<IncidentRecord>(inc_ins.row.clone()).expect("image"),
        inc1
    );
    let inc_upd = one(&rows, "incident", "inc-1", "update");
    let resolved: IncidentRecord = serde_json::from_value(inc_upd.row.clone()).expect("image");
    assert!(
        resolved.resolved_at.is_some(),
        "the resolve row image carries resolved_at"
    );

    let appends: Vec<_> = rows
        .iter()
        .filter(|r| r.entity == JournalEntity::History)
        .collect();
    assert_eq!(
        appends.len(),
        2,
        "one history append row per change set with history: {appends:#?}"
    );
    assert!(
        appends
            .iter()
            .all(|r| r.op == JournalOp::Append && r.entity_id == "i-1"),
        "history rows: append per instance"
    );
    let first: Vec<HistoryRecord> =
        crate::decode_history("i-1", &appends[0].row.to_string()).expect("history image");
    assert_eq!(
        first, history,
        "history append row holds the change set's history records"
    );

    let last = rows.last().expect("rows").seq;
    let after = store.journal_since(last, 100).await.unwrap();
    assert!(after.is_empty(), "nothing after the last seq: {after:#?}");
}

async fn journal_limit_and_failed_apply(store: Arc<dyn Store>) {
    let mut insts = Vec::new();
    for n in 0..3 {
        let id = format!("i-{n}");
        let mut c = ChangeSet::new(instance(&id, "order"), None, at(0));
        c.history = vec![hist(&id, n, "instanceStarted", n)];
        insts.push(c.instance.clone());
        insert(store.as_ref(), c).await;
    }
    let all = journal_until(store.as_ref(), 0, "three instance inserts", |rows| {
        (0..3).all(|n| has(rows, "instance", &format!("i-{n}"), "insert"))
    })
    .await;
    assert!(
        all.len() >= 6,
        "an instance row and a history row per apply: {all:#?}"
    );

    let page = store.journal_since(0, 2).await.unwrap();
    assert_eq!(page.len(), 2, "limit respected");
    assert_eq!(
        page[..],
        all[..2],
        "the first page is the start of the journal"
    );
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = store.journal_since(after, 2).await.unwrap();
        assert!(page.len() <= 2, "limit respected while paging");
        let Some(last) = page.last() else { break };
        after = last.seq;
        paged.extend(page);
    }
    assert_eq!(
        paged, all,
        "paging by the last seq seen reads the whole journal once"
    );

    let last = all.last().expect("rows").seq;
    let mut stale = ChangeSet::new(
        InstanceRecord {
            version: 7,
            ..insts[0].clone()
        },
        Some(5),
        at(0),
    );
    stale.tasks_created = vec![task("t-failed", "i-0", 1)];
    stale.history = vec![hist("i-0", 9, "activityCancelled", 9)];
    assert!(
        matches!(store.apply(stale).await, Err(StoreError::Conflict(_))),
        "stale expected_version must be Conflict"
    );
    // A successful apply after the failed one: once it is visible, the failed one would be.
    let marker = update_of(&insts[1]);
    store.apply(marker).await.expect("marker update");
    let rows = journal_until(store.as_ref(), last, "the marker update", |rows| {
        has(rows, "instance", "i-1", "update")
    })
    .await;
    assert!(
        rows.iter().all(|r| r.entity_id == "i-1"),
        "a failed apply must add no journal rows; after seq {last} found {rows:#?}"
    );
}
