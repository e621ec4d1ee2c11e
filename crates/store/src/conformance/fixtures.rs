//! Builders of the records the cases write. Every instant is `T0 + ms` in whole
//! milliseconds (stores keep millisecond precision), so a record reads back equal.

use std::collections::BTreeSet;

use chrono::DateTime;
use serde_json::{Value, json};

use crate::*;

/// Base instant of the suite: 2023-11-14T22:13:20Z.
pub const T0: i64 = 1_700_000_000_000;

/// `T0 + ms`, whole milliseconds.
pub fn at(ms: i64) -> Timestamp {
    DateTime::from_timestamp_millis(T0 + ms).expect("valid test timestamp")
}

/// The JSON object `v` as instance variables (for tests anywhere: `vars(json!({..}))`);
/// anything but an object is a mistake in the test and panics.
pub fn vars(v: Value) -> Vars {
    match v {
        Value::Object(m) => m,
        other => panic!("test variables must be an object, got {other}"),
    }
}

/// An active instance of definition `<key>:1` at version 1, started at `T0`.
pub fn instance(id: &str, key: &str) -> InstanceRecord {
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

/// A user task of activity `approve`, created at `T0 + created`.
pub fn task(id: &str, inst: &str, created: i64) -> TaskRecord {
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

/// A fetchable external task of `topic` (activity `do-<topic>`), created at `T0 + created`.
pub fn external(id: &str, inst: &str, topic: &str, created: i64) -> ExternalTaskRecord {
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

/// An unlocked timer (activity `wait-<id>`) due at `T0 + due`.
pub fn timer(id: &str, inst: &str, due: i64) -> TimerRecord {
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

/// An open `noMatchingFlow` incident at activity `gateway`.
pub fn incident(id: &str, inst: &str, created: i64) -> IncidentRecord {
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

/// A history record whose `detail.n` is `n`, to check order.
pub fn hist(inst: &str, time: i64, event: &str, n: i64) -> HistoryRecord {
    HistoryRecord {
        instance_id: inst.into(),
        time: at(time),
        event: HistoryEvent::parse(event).unwrap_or_else(|| panic!("unknown test event {event}")),
        activity_id: Some(format!("act-{n}")),
        detail: json!({"n": n, "note": format!("{event} #{n}")}),
    }
}

/// A definition whose XML depends on key and checksum only.
pub fn new_def(key: &str, checksum: &str) -> NewDefinition {
    NewDefinition {
        key: key.into(),
        name: Some(format!("{key} process")),
        xml: format!("<definitions id=\"{key}\" checksum=\"{checksum}\"/>"),
        checksum: checksum.into(),
    }
}

/// A successor of `prev` expecting its version.
pub fn update_of(prev: &InstanceRecord) -> ChangeSet {
    let mut next = prev.clone();
    next.version = prev.version + 1;
    ChangeSet::new(next, Some(prev.version), at(0))
}

/// Applies a change set that must succeed.
pub async fn insert(store: &dyn Store, change: ChangeSet) {
    let id = change.instance.id.clone();
    store
        .apply(change)
        .await
        .unwrap_or_else(|e| panic!("inserting instance {id} failed: {e}"));
}

/// A set of ids, for order-independent comparison.
pub fn ids<'a>(it: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    it.into_iter().map(str::to_string).collect()
}

/// `(topic, lock duration ms)` pairs as fetch-and-lock topics.
pub fn topics(list: &[(&str, i64)]) -> Vec<TopicLock> {
    list.iter()
        .map(|(t, d)| TopicLock {
            topic: t.to_string(),
            lock_duration_ms: *d,
        })
        .collect()
}

/// The ids of fetched tasks, in the order handed out.
pub fn locked_ids(locked: &[LockedTask]) -> Vec<String> {
    locked.iter().map(|l| l.task.id.clone()).collect()
}
