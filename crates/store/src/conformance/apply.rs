//! Cases: `apply` inserts, replaces and removes rows atomically; a stale version or a
//! lost worker's lock (the lock guard) changes nothing.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::*;

use super::fixtures::*;
use super::poll::{has, journal_until};

pub async fn apply_insert_reads_back(store: Arc<dyn Store>) {
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
            open: None,
            ..Default::default()
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

pub async fn apply_update_replaces_and_removes(store: Arc<dyn Store>) {
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

pub async fn apply_stale_version_changes_nothing(store: Arc<dyn Store>) {
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
            open: None,
            ..Default::default()
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

pub async fn apply_external_upsert_replaces(store: Arc<dyn Store>) {
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

/// A change set with a lock guard commits only while that worker's lock holds; otherwise
/// it is refused like a lost optimistic lock and changes nothing.
pub async fn apply_lock_guard(store: Arc<dyn Store>) {
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

/// A change set that would give a second row an existing id fails as a whole (and not
/// as `Conflict`: reading again cannot help): nothing of it is written, not even its
/// journal rows.
pub async fn apply_duplicate_id_changes_nothing(store: Arc<dyn Store>) {
    let inst = instance("i-1", "order");
    let mut create = ChangeSet::new(inst.clone(), None, at(0));
    create.tasks_created = vec![task("t-1", "i-1", 1)];
    create.timers_created = vec![timer("tm-1", "i-1", 1_000)];
    create.incidents_created = vec![incident("inc-1", "i-1", 1)];
    insert(store.as_ref(), create).await;
    let before = journal_until(store.as_ref(), 0, "the insert", |rows| {
        has(rows, "instance", "i-1", "insert")
    })
    .await;
    let last = before.last().expect("rows").seq;

    let mut new_instance = ChangeSet::new(instance("i-2", "order"), None, at(0));
    new_instance.tasks_created = vec![task("t-1", "i-2", 2)];
    new_instance.history = vec![hist("i-2", 2, "instanceStarted", 1)];
    let mut timer_twice = update_of(&inst);
    timer_twice.instance.variables = vars(json!({"changed": true}));
    timer_twice.timers_created = vec![timer("tm-1", "i-1", 5_000)];
    timer_twice.history = vec![hist("i-1", 5, "activityStarted", 2)];
    let mut incident_twice = update_of(&inst);
    incident_twice.tasks_removed = vec!["t-1".into()];
    incident_twice.incidents_created = vec![incident("inc-1", "i-1", 6)];
    for (why, change) in [
        ("a new instance reusing a task id", new_instance),
        ("an update reusing a timer id", timer_twice),
        ("an update reusing an incident id", incident_twice),
    ] {
        match store.apply(change).await {
            Err(StoreError::Conflict(_)) | Ok(()) => {
                panic!("{why} must fail, and not as Conflict")
            }
            Err(_) => {}
        }
    }

    assert_eq!(
        store.instance("i-2").await.unwrap(),
        None,
        "no instance i-2"
    );
    assert!(store.history("i-2").await.unwrap().is_empty());
    assert_eq!(
        store.instance("i-1").await.unwrap(),
        Some(inst.clone()),
        "i-1 unchanged"
    );
    assert_eq!(
        store.task("t-1").await.unwrap(),
        Some(task("t-1", "i-1", 1)),
        "the task keeps its instance, and was not removed"
    );
    assert_eq!(
        store.list_timers("i-1").await.unwrap(),
        vec![timer("tm-1", "i-1", 1_000)]
    );
    let incidents = store
        .list_incidents(&IncidentFilter {
            instance_id: Some("i-1".into()),
            open: None,
            ..Default::default()
        })
        .await;
    assert_eq!(incidents.unwrap(), vec![incident("inc-1", "i-1", 1)]);
    assert!(store.history("i-1").await.unwrap().is_empty());

    // Once a later commit is visible, the failed ones would be too.
    store.apply(update_of(&inst)).await.expect("marker update");
    let rows = journal_until(store.as_ref(), last, "the marker update", |rows| {
        has(rows, "instance", "i-1", "update")
    })
    .await;
    assert_eq!(
        rows.len(),
        1,
        "failed change sets add no journal rows; after seq {last} found {rows:#?}"
    );
}
