//! Checks that a store's rows agree with every instance's tokens: what a crash must never break.

use std::collections::HashSet;

use steadyflow_engine::core::{Runtime, Wait};
use steadyflow_store::{ExternalTaskFilter, InstanceFilter, Store, TaskFilter};

/// Returns the ids of all instances; panics on the first inconsistency found.
pub async fn check(store: &dyn Store) -> Vec<String> {
    let instances = store
        .list_instances(&InstanceFilter::default())
        .await
        .unwrap();
    let tasks: HashSet<String> = store
        .list_tasks(&TaskFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    let externals: HashSet<String> = store
        .list_external_tasks(&ExternalTaskFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    let mut referenced_tasks = HashSet::new();
    let mut referenced_ext = HashSet::new();
    for i in &instances {
        let rt = Runtime::from_json(&i.runtime)
            .unwrap_or_else(|e| panic!("instance {}: unreadable runtime: {e}", i.id));
        assert_eq!(
            i.state.is_ended(),
            rt.tokens.is_empty(),
            "instance {} is {:?} with {} tokens",
            i.id,
            i.state,
            rt.tokens.len()
        );
        let timers: HashSet<String> = store
            .list_timers(&i.id)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        let mut my_timers = HashSet::new();
        for b in &rt.scope_timers {
            assert!(
                timers.contains(&b.timer_id),
                "instance {} misses event sub-process timer {}",
                i.id,
                b.timer_id
            );
            my_timers.insert(b.timer_id.clone());
        }
        for t in &rt.tokens {
            for b in &t.boundary_timers {
                assert!(
                    timers.contains(&b.timer_id),
                    "instance {} misses boundary timer {}",
                    i.id,
                    b.timer_id
                );
                my_timers.insert(b.timer_id.clone());
            }
            match &t.wait {
                Wait::UserTask { task_id } => {
                    assert!(
                        tasks.contains(task_id),
                        "instance {} waits for missing task {task_id}",
                        i.id
                    );
                    referenced_tasks.insert(task_id.clone());
                }
                Wait::ExternalTask { task_id } => {
                    assert!(
                        externals.contains(task_id),
                        "instance {} waits for missing external task {task_id}",
                        i.id
                    );
                    referenced_ext.insert(task_id.clone());
                }
                Wait::Timer { timer_id } => {
                    assert!(
                        timers.contains(timer_id),
                        "instance {} waits for missing timer {timer_id}",
                        i.id
                    );
                    my_timers.insert(timer_id.clone());
                }
                Wait::Ready => panic!("instance {} has a token that never came to rest", i.id),
                Wait::Join | Wait::SubProcess | Wait::Incident { .. } => {}
            }
        }
        assert_eq!(
            timers, my_timers,
            "instance {}: timer rows without a waiting token",
            i.id
        );
    }
    assert_eq!(tasks, referenced_tasks, "task rows without a waiting token");
    assert_eq!(
        externals, referenced_ext,
        "external task rows without a waiting token"
    );
    instances.into_iter().map(|i| i.id).collect()
}
