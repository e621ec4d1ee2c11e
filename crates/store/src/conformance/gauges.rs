//! Case: `live_counts`, the database-wide gauges of `/metrics`.

use std::sync::Arc;

use crate::*;

use super::fixtures::*;

pub async fn live_counts_count_work_in_progress(store: Arc<dyn Store>) {
    let counts = || {
        let store = store.clone();
        async move {
            store
                .live_counts()
                .await
                .expect("live_counts")
                .expect("every real store counts")
        }
    };
    assert_eq!(counts().await, LiveCounts::default(), "an empty database");

    let mut a = ChangeSet::new(instance("a", "order"), None, at(0));
    a.tasks_created = vec![task("ta1", "a", 1), task("ta2", "a", 2)];
    a.external_upserted = vec![external("xa", "a", "charge", 1)];
    insert(store.as_ref(), a).await;
    let mut b = ChangeSet::new(
        InstanceRecord {
            state: InstanceState::Incident,
            ..instance("b", "order")
        },
        None,
        at(0),
    );
    b.external_upserted = vec![external("xb", "b", "charge", 1)];
    insert(store.as_ref(), b).await;
    let c = InstanceRecord {
        state: InstanceState::Completed,
        ended_at: Some(at(5)),
        ..instance("c", "order")
    };
    insert(store.as_ref(), ChangeSet::new(c, None, at(0))).await;
    assert_eq!(
        counts().await,
        LiveCounts {
            running_instances: 2,
            open_tasks: 2,
            open_external_tasks: 2,
        },
        "active and incident instances run; a completed one does not"
    );

    // Instance a ends: its task and external task go, and it no longer counts.
    let prev = store.instance("a").await.unwrap().unwrap();
    let mut end = update_of(&prev);
    end.instance.state = InstanceState::Cancelled;
    end.instance.ended_at = Some(at(9));
    end.prior_state = Some(prev.state);
    end.tasks_removed = vec!["ta1".into(), "ta2".into()];
    end.external_removed = vec!["xa".into()];
    insert(store.as_ref(), end).await;
    assert_eq!(
        counts().await,
        LiveCounts {
            running_instances: 1,
            open_tasks: 0,
            open_external_tasks: 1,
        }
    );
}
