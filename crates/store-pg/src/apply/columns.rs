//! Column arrays of a batch: every change set's rows, one array per column, which the
//! statements take as `UNNEST` parameters (one statement per table for the batch).

use std::collections::HashMap;

use serde_json::value::RawValue;
use steadyflow_store::schema::to_ms as ms;
use steadyflow_store::{ChangeSet, ExternalTaskRecord, RowImages, Vars};
use tokio_postgres::Statement;
use tokio_postgres::types::Json;

use super::statements::Statements;
use crate::pipeline::{Param, Step};

/// Column arrays of one batch; statement parameters borrow from here. Every row of a
/// child table carries its `owner`, the id of the instance of its change set.
#[derive(Default)]
pub(super) struct Batch<'c> {
    pub changes: Vec<(&'c ChangeSet, &'c RowImages)>,
    /// The journal's `tx_time`: the latest time of the change sets (the transaction
    /// commits after each of them was made).
    tx_time: i64,
    new_instances: InstanceCols<'c>,
    updated_instances: InstanceCols<'c>,
    expected: Vec<i64>,
    removed_tasks: Owned<'c>,
    tasks: TaskCols<'c>,
    removed_external: Owned<'c>,
    external: ExternalCols<'c>,
    removed_timers: Owned<'c>,
    timers: TimerCols<'c>,
    incidents: IncidentCols<'c>,
    resolved_incidents: ResolvedCols<'c>,
    history: HistoryCols<'c>,
}

/// Ids with the instance owning each.
#[derive(Default)]
struct Owned<'c> {
    id: Vec<&'c str>,
    owner: Vec<&'c str>,
}

impl<'c> Owned<'c> {
    fn extend(&mut self, owner: &'c str, ids: &'c [String]) {
        for id in ids {
            self.id.push(id);
            self.owner.push(owner);
        }
    }
}

#[derive(Default)]
struct InstanceCols<'c> {
    id: Vec<&'c str>,
    definition_id: Vec<&'c str>,
    definition_key: Vec<&'c str>,
    business_key: Vec<Option<&'c str>>,
    state: Vec<&'static str>,
    variables: Vec<Json<&'c Vars>>,
    runtime: Vec<Json<&'c RawValue>>,
    version: Vec<i64>,
    started_at: Vec<i64>,
    ended_at: Vec<Option<i64>>,
    guard_task: Vec<Option<&'c str>>,
    guard_worker: Vec<Option<&'c str>>,
    guard_now: Vec<Option<i64>>,
}

#[derive(Default)]
struct TaskCols<'c> {
    id: Vec<&'c str>,
    instance_id: Vec<&'c str>,
    definition_id: Vec<&'c str>,
    activity_id: Vec<&'c str>,
    name: Vec<Option<&'c str>>,
    assignee: Vec<Option<&'c str>>,
    candidate_users: Vec<Json<&'c Vec<String>>>,
    candidate_groups: Vec<Json<&'c Vec<String>>>,
    created_at: Vec<i64>,
    owner: Vec<&'c str>,
}

#[derive(Default)]
struct ExternalCols<'c> {
    id: Vec<&'c str>,
    instance_id: Vec<&'c str>,
    definition_id: Vec<&'c str>,
    activity_id: Vec<&'c str>,
    topic: Vec<&'c str>,
    worker_id: Vec<Option<&'c str>>,
    lock_expires_at: Vec<Option<i64>>,
    retries: Vec<Option<i32>>,
    error_message: Vec<Option<&'c str>>,
    retry_at: Vec<Option<i64>>,
    created_at: Vec<i64>,
    owner: Vec<&'c str>,
}

#[derive(Default)]
struct TimerCols<'c> {
    id: Vec<&'c str>,
    instance_id: Vec<&'c str>,
    activity_id: Vec<&'c str>,
    due_at: Vec<i64>,
    lock_owner: Vec<Option<&'c str>>,
    lock_until: Vec<Option<i64>>,
    created_at: Vec<i64>,
    owner: Vec<&'c str>,
}

#[derive(Default)]
struct IncidentCols<'c> {
    id: Vec<&'c str>,
    instance_id: Vec<&'c str>,
    activity_id: Vec<&'c str>,
    incident_type: Vec<&'static str>,
    message: Vec<&'c str>,
    external_task_id: Vec<Option<&'c str>>,
    created_at: Vec<i64>,
    resolved_at: Vec<Option<i64>>,
    owner: Vec<&'c str>,
}

/// Incidents to resolve, at their change set's time.
#[derive(Default)]
struct ResolvedCols<'c> {
    id: Vec<&'c str>,
    owner: Vec<&'c str>,
    at: Vec<i64>,
}

#[derive(Default)]
struct HistoryCols<'c> {
    owner: Vec<&'c str>,
    time: Vec<i64>,
    events: Vec<Json<&'c RawValue>>,
}

impl<'c> InstanceCols<'c> {
    fn push(&mut self, change: &'c ChangeSet) {
        let i = &change.instance;
        let g = change.lock_guard.as_ref();
        self.guard_task.push(g.map(|g| g.task_id.as_str()));
        self.guard_worker.push(g.map(|g| g.worker_id.as_str()));
        self.guard_now.push(g.map(|g| ms(g.now)));
        self.id.push(&i.id);
        self.definition_id.push(&i.definition_id);
        self.definition_key.push(&i.definition_key);
        self.business_key.push(i.business_key.as_deref());
        self.state.push(i.state.as_str());
        self.variables.push(Json(&i.variables));
        self.runtime.push(Json(i.runtime.as_raw()));
        self.version.push(i.version);
        self.started_at.push(ms(i.started_at));
        self.ended_at.push(i.ended_at.map(ms));
    }
}

/// Which step's rows hold which results.
#[derive(Default)]
pub(super) struct Slots {
    pub inserted: Option<usize>,
    pub updated: Option<usize>,
    pub removed_tasks: Option<usize>,
    pub removed_external: Option<usize>,
    pub upserted_external: Option<usize>,
    pub removed_timers: Option<usize>,
    pub resolved: Option<usize>,
}

impl<'c> Batch<'c> {
    pub(super) fn new(changes: &[(&'c ChangeSet, &'c RowImages)]) -> Self {
        let mut b = Batch {
            changes: changes.to_vec(),
            tx_time: changes
                .iter()
                .map(|(change, _)| ms(change.time))
                .max()
                .unwrap_or_default(),
            ..Batch::default()
        };
        // One upsert per external task id (the last wins): ON CONFLICT may not touch a
        // row twice in one statement.
        let mut external: Vec<(&'c str, &'c ExternalTaskRecord)> = Vec::new();
        let mut external_pos: HashMap<&'c str, usize> = HashMap::new();
        for (change, images) in changes {
            let owner = change.instance.id.as_str();
            match change.expected_version {
                None => b.new_instances.push(change),
                Some(v) => {
                    b.updated_instances.push(change);
                    b.expected.push(v);
                }
            }
            b.removed_tasks.extend(owner, &change.tasks_removed);
            for t in &change.tasks_created {
                let cols = &mut b.tasks;
                cols.id.push(&t.id);
                cols.instance_id.push(&t.instance_id);
                cols.definition_id.push(&t.definition_id);
                cols.activity_id.push(&t.activity_id);
                cols.name.push(t.name.as_deref());
                cols.assignee.push(t.assignee.as_deref());
                cols.candidate_users.push(Json(&t.candidate_users));
                cols.candidate_groups.push(Json(&t.candidate_groups));
                cols.created_at.push(ms(t.created_at));
                cols.owner.push(owner);
            }
            b.removed_external.extend(owner, &change.external_removed);
            for e in &change.external_upserted {
                match external_pos.get(e.id.as_str()) {
                    Some(&pos) => external[pos] = (owner, e),
                    None => {
                        external_pos.insert(&e.id, external.len());
                        external.push((owner, e));
                    }
                }
            }
            b.removed_timers.extend(owner, &change.timers_removed);
            for t in &change.timers_created {
                let cols = &mut b.timers;
                cols.id.push(&t.id);
                cols.instance_id.push(&t.instance_id);
                cols.activity_id.push(&t.activity_id);
                cols.due_at.push(ms(t.due_at));
                cols.lock_owner.push(t.owner.as_deref());
                cols.lock_until.push(t.lock_until.map(ms));
                cols.created_at.push(ms(t.created_at));
                cols.owner.push(owner);
            }
            for i in &change.incidents_created {
                let cols = &mut b.incidents;
                cols.id.push(&i.id);
                cols.instance_id.push(&i.instance_id);
                cols.activity_id.push(&i.activity_id);
                cols.incident_type.push(i.incident_type.as_str());
                cols.message.push(&i.message);
                cols.external_task_id.push(i.external_task_id.as_deref());
                cols.created_at.push(ms(i.created_at));
                cols.resolved_at.push(i.resolved_at.map(ms));
                cols.owner.push(owner);
            }
            let at = ms(change.time);
            for id in &change.incidents_resolved {
                let cols = &mut b.resolved_incidents;
                cols.id.push(id);
                cols.owner.push(owner);
                cols.at.push(at);
            }
            if let Some(events) = &images.history {
                b.history.owner.push(owner);
                b.history.time.push(at);
                b.history.events.push(Json(&**events));
            }
        }
        for (owner, e) in external {
            let cols = &mut b.external;
            cols.id.push(&e.id);
            cols.instance_id.push(&e.instance_id);
            cols.definition_id.push(&e.definition_id);
            cols.activity_id.push(&e.activity_id);
            cols.topic.push(&e.topic);
            cols.worker_id.push(e.worker_id.as_deref());
            cols.lock_expires_at.push(e.lock_expires_at.map(ms));
            cols.retries.push(e.retries);
            cols.error_message.push(e.error_message.as_deref());
            cols.retry_at.push(e.retry_at.map(ms));
            cols.created_at.push(ms(e.created_at));
            cols.owner.push(owner);
        }
        b
    }

    /// The batch's statements in journal order, skipping those with nothing to do.
    pub(super) fn steps<'a>(&'a self, s: &Statements) -> (Vec<Step<'a>>, Slots) {
        let mut steps: Vec<Step<'a>> = Vec::new();
        let mut slots = Slots::default();
        let mut push = |stmt: &Statement, params: Vec<Param<'a>>| -> usize {
            steps.push(Step::Query(stmt.clone(), params));
            steps.len() - 1
        };
        let n = &self.new_instances;
        if !n.id.is_empty() {
            slots.inserted = Some(push(
                &s.insert_instances,
                vec![
                    &n.id,
                    &n.definition_id,
                    &n.definition_key,
                    &n.business_key,
                    &n.state,
                    &n.variables,
                    &n.runtime,
                    &n.version,
                    &n.started_at,
                    &n.ended_at,
                    &n.guard_task,
                    &n.guard_worker,
                    &n.guard_now,
                ],
            ));
        }
        let u = &self.updated_instances;
        if !u.id.is_empty() {
            slots.updated = Some(push(
                &s.update_instances,
                vec![
                    &u.id,
                    &u.business_key,
                    &u.state,
                    &u.variables,
                    &u.runtime,
                    &u.version,
                    &u.ended_at,
                    &self.expected,
                    &u.guard_task,
                    &u.guard_worker,
                    &u.guard_now,
                ],
            ));
        }
        let r = &self.removed_tasks;
        if !r.id.is_empty() {
            slots.removed_tasks = Some(push(&s.children.delete_tasks, vec![&r.id, &r.owner]));
        }
        let t = &self.tasks;
        if !t.id.is_empty() {
            push(
                &s.children.insert_tasks,
                vec![
                    &t.id,
                    &t.instance_id,
                    &t.definition_id,
                    &t.activity_id,
                    &t.name,
                    &t.assignee,
                    &t.candidate_users,
                    &t.candidate_groups,
                    &t.created_at,
                    &t.owner,
                ],
            );
        }
        let r = &self.removed_external;
        if !r.id.is_empty() {
            slots.removed_external = Some(push(&s.children.delete_external, vec![&r.id, &r.owner]));
        }
        let e = &self.external;
        if !e.id.is_empty() {
            slots.upserted_external = Some(push(
                &s.children.upsert_external,
                vec![
                    &e.id,
                    &e.instance_id,
                    &e.definition_id,
                    &e.activity_id,
                    &e.topic,
                    &e.worker_id,
                    &e.lock_expires_at,
                    &e.retries,
                    &e.error_message,
                    &e.retry_at,
                    &e.created_at,
                    &e.owner,
                ],
            ));
        }
        let r = &self.removed_timers;
        if !r.id.is_empty() {
            slots.removed_timers = Some(push(&s.children.delete_timers, vec![&r.id, &r.owner]));
        }
        let t = &self.timers;
        if !t.id.is_empty() {
            push(
                &s.children.insert_timers,
                vec![
                    &t.id,
                    &t.instance_id,
                    &t.activity_id,
                    &t.due_at,
                    &t.lock_owner,
                    &t.lock_until,
                    &t.created_at,
                    &t.owner,
                ],
            );
        }
        let i = &self.incidents;
        if !i.id.is_empty() {
            push(
                &s.children.insert_incidents,
                vec![
                    &i.id,
                    &i.instance_id,
                    &i.activity_id,
                    &i.incident_type,
                    &i.message,
                    &i.external_task_id,
                    &i.created_at,
                    &i.resolved_at,
                    &i.owner,
                ],
            );
        }
        let r = &self.resolved_incidents;
        if !r.id.is_empty() {
            slots.resolved = Some(push(
                &s.children.resolve_incidents,
                vec![&r.id, &r.owner, &r.at],
            ));
        }
        let h = &self.history;
        if !h.owner.is_empty() {
            push(
                &s.children.insert_history,
                vec![&h.owner, &h.time, &h.events],
            );
        }
        (steps, slots)
    }
    /// The journal's `tx_time` of this batch, in milliseconds.
    pub(super) fn tx_time(&self) -> i64 {
        self.tx_time
    }

    /// The ids the batch's `DELETE` from `table` was asked to remove.
    pub(super) fn removal_ids(&self, table: Removal) -> &[&'c str] {
        match table {
            Removal::Tasks => &self.removed_tasks.id,
            Removal::External => &self.removed_external.id,
            Removal::Timers => &self.removed_timers.id,
        }
    }
}

/// The tables a batch deletes rows from by id.
#[derive(Debug, Clone, Copy)]
pub(super) enum Removal {
    Tasks,
    External,
    Timers,
}
