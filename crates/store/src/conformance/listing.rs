//! Cases: the filters of `list_instances` and `list_tasks`, and the rules of `claim_task`.

use std::sync::Arc;

use crate::*;

use super::fixtures::*;

pub async fn list_instances_filters(store: Arc<dyn Store>) {
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

pub async fn list_tasks_filters(store: Arc<dyn Store>) {
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
    let viewer = |user: &str, groups: &[&str]| TaskFilter {
        visible_to: Some(TaskViewer {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }),
        ..Default::default()
    };
    assert_eq!(
        list(viewer("ann", &[])).await,
        ids(["t1"]),
        "a viewer sees what is assigned to them"
    );
    assert_eq!(
        list(viewer("sales", &[])).await,
        ids(["t4"]),
        "... what names them as a candidate user (not a group of the same name)"
    );
    assert_eq!(
        list(viewer("bob", &["ops", "sale"])).await,
        ids(["t2", "t3"]),
        "... and what names one of their groups (exact members only)"
    );
    assert_eq!(
        list(TaskFilter {
            instance_id: Some("A".into()),
            ..viewer("bob", &["ops"])
        })
        .await,
        ids(["t2"]),
        "visibility combines with the other filters"
    );
    assert_eq!(
        list(viewer("nobody", &["none"])).await,
        ids([]),
        "nothing else"
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

pub async fn claim_task_rules(store: Arc<dyn Store>) {
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
