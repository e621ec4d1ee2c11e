//! Cases: incidents are resolved (not deleted); history comes back in insertion order.

use std::sync::Arc;

use crate::*;

use super::fixtures::*;

pub async fn incidents_created_and_resolved(store: Arc<dyn Store>) {
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
            open: Some(true),
            ..Default::default()
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
            open: Some(true),
            ..Default::default()
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
            open: None,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all_a.len(),
        2,
        "resolved incidents are still listed without an `open` filter"
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
            open: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        ids(open.iter().map(|i| i.id.as_str())),
        ids(["inc-2", "inc-3"]),
        "open across instances"
    );
}

pub async fn history_insertion_order(store: Arc<dyn Store>) {
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
