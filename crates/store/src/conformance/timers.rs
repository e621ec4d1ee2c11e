//! Cases: due timers are acquired by one node at a time; the next due time.

use std::sync::Arc;

use crate::*;

use super::fixtures::*;

pub async fn timers_acquire_and_next_due(store: Arc<dyn Store>) {
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
