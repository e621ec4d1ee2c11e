//! Cases: `fetch_and_lock` picks, locks and hands out each external task once.

use std::sync::Arc;

use serde_json::json;

use crate::*;

use super::fixtures::*;

pub async fn fetch_and_lock_selection(store: Arc<dyn Store>) {
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

pub async fn fetch_and_lock_lock_expiry(store: Arc<dyn Store>) {
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

pub async fn fetch_and_lock_retries_and_backoff(store: Arc<dyn Store>) {
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

pub async fn fetch_and_lock_concurrent_workers(store: Arc<dyn Store>) {
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
