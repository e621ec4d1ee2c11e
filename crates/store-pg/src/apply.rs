//! `apply`: group commit of change sets.
//!
//! Callers queue their change set and wait; a few writer tasks each take whatever is
//! queued (up to `max_batch`, one change set per instance) and commit it as ONE
//! transaction of multi-row statements (`UNNEST` arrays), pipelined into two round trips.
//! The instance updates are optimistic: `UPDATE … WHERE version = expected RETURNING id`.
//! When some instance lost its lock, the whole transaction is rolled back, those callers
//! get `Conflict`, and the rest is retried without them. When the server rejects a batch
//! for any other reason, each change set is retried alone so only the faulty one fails.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use deadpool_postgres::Pool;
use serde_json::Value;
use steadyflow_store::*;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::types::Json;
use tokio_postgres::{Row, Statement};

use crate::error::{
    db_err, duplicate, is_retryable, is_unique_violation, pool_err, server_rejected,
};
use crate::pipeline::{self, Finish, JOURNAL_INSERT, JournalEntry, Param, Step, TxError};
use crate::rows::{self, INCIDENT_COLS, ms};

pub(crate) struct Job {
    pub change: ChangeSet,
    pub reply: oneshot::Sender<Result<()>>,
}

/// Counters of the writer tasks, for metrics and benchmarks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub transactions: AtomicU64,
    pub committed: AtomicU64,
    pub conflicts: AtomicU64,
    pub retried_alone: AtomicU64,
}

/// Snapshot of the `apply` writer's counters since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions attempted (committed or not).
    pub transactions: u64,
    /// Change sets committed.
    pub committed: u64,
    /// Change sets answered with `Conflict`.
    pub conflicts: u64,
    /// Change sets retried alone after their batch was rejected.
    pub retried_alone: u64,
}

impl Counters {
    pub fn snapshot(&self) -> WriterStats {
        WriterStats {
            transactions: self.transactions.load(Ordering::Relaxed),
            committed: self.committed.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
            retried_alone: self.retried_alone.load(Ordering::Relaxed),
        }
    }
}

/// Starts `writers` writer tasks on the current Tokio runtime; they stop when the
/// returned sender (and every clone) is dropped.
pub(crate) fn spawn_writers(
    pool: Pool,
    writers: usize,
    max_batch: usize,
    counters: Arc<Counters>,
) -> mpsc::Sender<Job> {
    let max_batch = max_batch.max(1);
    let (tx, rx) = mpsc::channel(max_batch * writers.max(1) * 4);
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..writers.max(1) {
        tokio::spawn(writer_loop(
            pool.clone(),
            rx.clone(),
            max_batch,
            counters.clone(),
        ));
    }
    tx
}

async fn writer_loop(
    pool: Pool,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    max_batch: usize,
    counters: Arc<Counters>,
) {
    // Change sets held back because their instance was already in the batch; they go
    // first into the next one, so one instance's commands keep their order.
    let mut carry: VecDeque<Job> = VecDeque::new();
    loop {
        let mut batch = Vec::new();
        let mut ids = HashSet::new();
        let mut deferred = VecDeque::new();
        for job in carry.drain(..) {
            if batch.len() < max_batch && ids.insert(job.change.instance.id.clone()) {
                batch.push(job);
            } else {
                deferred.push_back(job);
            }
        }
        carry = deferred;
        {
            let mut rx = rx.lock().await;
            if batch.is_empty() {
                match rx.recv().await {
                    Some(job) => {
                        ids.insert(job.change.instance.id.clone());
                        batch.push(job);
                    }
                    None => return,
                }
            }
            while batch.len() < max_batch && carry.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) if ids.insert(job.change.instance.id.clone()) => batch.push(job),
                    Ok(job) => carry.push_back(job),
                    Err(_) => break,
                }
            }
        }
        commit_batch(&pool, batch, &counters).await;
    }
}

enum Attempt {
    Committed,
    /// Indices of change sets whose instance version moved; nothing was committed.
    Conflicts(Vec<usize>),
    Failed {
        error: StoreError,
        /// The server rejected the transaction: it is rolled back for sure.
        rolled_back: bool,
        /// Deadlock or serialization failure: worth retrying as is.
        transient: bool,
    },
}

async fn commit_batch(pool: &Pool, mut jobs: Vec<Job>, counters: &Counters) {
    loop {
        let changes: Vec<&ChangeSet> = jobs.iter().map(|j| &j.change).collect();
        counters.transactions.fetch_add(1, Ordering::Relaxed);
        match attempt(pool, &changes).await {
            Attempt::Committed => {
                counters
                    .committed
                    .fetch_add(jobs.len() as u64, Ordering::Relaxed);
                for job in jobs {
                    let _ = job.reply.send(Ok(()));
                }
                return;
            }
            Attempt::Conflicts(lost) => {
                let mut rest = Vec::with_capacity(jobs.len());
                for (i, job) in jobs.into_iter().enumerate() {
                    if lost.contains(&i) {
                        counters.conflicts.fetch_add(1, Ordering::Relaxed);
                        let _ = job
                            .reply
                            .send(Err(StoreError::Conflict(job.change.instance.id.clone())));
                    } else {
                        rest.push(job);
                    }
                }
                if rest.is_empty() {
                    return;
                }
                jobs = rest;
            }
            Attempt::Failed {
                error, rolled_back, ..
            } => {
                if rolled_back && jobs.len() > 1 {
                    tracing::debug!(%error, size = jobs.len(), "batch rejected; retrying its change sets one by one");
                    counters
                        .retried_alone
                        .fetch_add(jobs.len() as u64, Ordering::Relaxed);
                    for job in jobs {
                        let result = apply_alone(pool, &job.change, counters).await;
                        match &result {
                            Ok(()) => counters.committed.fetch_add(1, Ordering::Relaxed),
                            Err(StoreError::Conflict(_)) => {
                                counters.conflicts.fetch_add(1, Ordering::Relaxed)
                            }
                            Err(_) => 0,
                        };
                        let _ = job.reply.send(result);
                    }
                } else {
                    for job in jobs {
                        let _ = job.reply.send(Err(duplicate(&error)));
                    }
                }
                return;
            }
        }
    }
}

async fn apply_alone(pool: &Pool, change: &ChangeSet, counters: &Counters) -> Result<()> {
    let mut tries = 0;
    loop {
        counters.transactions.fetch_add(1, Ordering::Relaxed);
        match attempt(pool, &[change]).await {
            Attempt::Committed => return Ok(()),
            Attempt::Conflicts(_) => return Err(StoreError::Conflict(change.instance.id.clone())),
            Attempt::Failed {
                transient: true, ..
            } if tries < 3 => tries += 1,
            Attempt::Failed { error, .. } => return Err(error),
        }
    }
}

async fn attempt(pool: &Pool, changes: &[&ChangeSet]) -> Attempt {
    let failed = |error| Attempt::Failed {
        error,
        rolled_back: true,
        transient: false,
    };
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => return failed(pool_err(e)),
    };
    let stmts = match Statements::prepare(&client).await {
        Ok(s) => s,
        Err(e) => return failed(db_err(e)),
    };
    let batch = Batch::new(changes);
    let tx_time = chrono::Utc::now().timestamp_millis();
    let (steps, slots) = batch.steps(&stmts, &tx_time);
    let result = pipeline::transact(&client, &stmts.journal, tx_time, steps, |rows| {
        batch.finish(&slots, rows)
    })
    .await;
    match result {
        Ok(Ok(())) => Attempt::Committed,
        Ok(Err(lost)) => Attempt::Conflicts(lost),
        Err(TxError::Db(e)) if changes.len() == 1 && is_unique_violation(&e, "instances_pkey") => {
            // Inserting an instance that exists: the expected "no version yet" is stale.
            Attempt::Conflicts(vec![0])
        }
        Err(TxError::Db(e)) => Attempt::Failed {
            rolled_back: server_rejected(&e),
            transient: is_retryable(&e),
            error: db_err(e),
        },
        Err(TxError::Store(e)) => failed(e),
    }
}

struct Statements {
    journal: Statement,
    insert_instances: Statement,
    update_instances: Statement,
    delete_tasks: Statement,
    insert_tasks: Statement,
    delete_external: Statement,
    upsert_external: Statement,
    delete_timers: Statement,
    insert_timers: Statement,
    insert_incidents: Statement,
    resolve_incidents: Statement,
    insert_history: Statement,
}

impl Statements {
    /// Prepared once per connection; later calls are cache hits without a round trip.
    async fn prepare(c: &deadpool_postgres::Client) -> Result<Self, tokio_postgres::Error> {
        Ok(Statements {
            journal: c.prepare_cached(JOURNAL_INSERT).await?,
            insert_instances: c
                .prepare_cached(
                    "INSERT INTO instances (id, definition_id, definition_key, business_key, state, variables, \
                     runtime, version, started_at, ended_at) \
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                     $6::jsonb[], $7::jsonb[], $8::int8[], $9::int8[], $10::int8[])",
                )
                .await?,
            update_instances: c
                .prepare_cached(
                    "UPDATE instances AS i SET business_key = u.business_key, state = u.state, \
                     variables = u.variables, runtime = u.runtime, version = u.version, ended_at = u.ended_at \
                     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[], $6::int8[], \
                     $7::int8[], $8::int8[]) AS u(id, business_key, state, variables, runtime, version, ended_at, expected) \
                     WHERE i.id = u.id AND i.version = u.expected \
                     RETURNING i.id",
                )
                .await?,
            delete_tasks: c.prepare_cached("DELETE FROM tasks WHERE id = ANY($1::text[]) RETURNING id").await?,
            insert_tasks: c
                .prepare_cached(
                    "INSERT INTO tasks (id, instance_id, definition_id, activity_id, name, assignee, \
                     candidate_users, candidate_groups, created_at) \
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::jsonb[], $8::jsonb[], $9::int8[])",
                )
                .await?,
            delete_external: c
                .prepare_cached("DELETE FROM external_tasks WHERE id = ANY($1::text[]) RETURNING id")
                .await?,
            upsert_external: c
                .prepare_cached(
                    "INSERT INTO external_tasks (id, instance_id, definition_id, activity_id, topic, worker_id, \
                     lock_expires_at, retries, error_message, retry_at, created_at) \
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::int8[], $8::int4[], $9::text[], $10::int8[], $11::int8[]) \
                     ON CONFLICT (id) DO UPDATE SET instance_id = EXCLUDED.instance_id, \
                     definition_id = EXCLUDED.definition_id, activity_id = EXCLUDED.activity_id, \
                     topic = EXCLUDED.topic, worker_id = EXCLUDED.worker_id, \
                     lock_expires_at = EXCLUDED.lock_expires_at, retries = EXCLUDED.retries, \
                     error_message = EXCLUDED.error_message, retry_at = EXCLUDED.retry_at, \
                     created_at = EXCLUDED.created_at \
                     RETURNING id, (xmax = 0) AS inserted",
                )
                .await?,
            delete_timers: c.prepare_cached("DELETE FROM timers WHERE id = ANY($1::text[]) RETURNING id").await?,
            insert_timers: c
                .prepare_cached(
                    "INSERT INTO timers (id, instance_id, activity_id, due_at, owner, lock_until, created_at) \
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], \
                     $6::int8[], $7::int8[])",
                )
                .await?,
            insert_incidents: c
                .prepare_cached(
                    "INSERT INTO incidents (id, instance_id, activity_id, incident_type, message, \
                     external_task_id, created_at, resolved_at) \
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                     $6::text[], $7::int8[], $8::int8[])",
                )
                .await?,
            resolve_incidents: c
                .prepare_cached(&format!(
                    "UPDATE incidents SET resolved_at = $1 WHERE id = ANY($2::text[]) RETURNING {INCIDENT_COLS}"
                ))
                .await?,
            insert_history: c
                .prepare_cached(
                    "INSERT INTO history (instance_id, time, event, activity_id, detail) \
                     SELECT u.instance_id, u.time, u.event, u.activity_id, u.detail \
                     FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::jsonb[]) \
                     WITH ORDINALITY AS u(instance_id, time, event, activity_id, detail, n) \
                     ORDER BY u.n",
                )
                .await?,
        })
    }
}

/// Column arrays of one batch; statement parameters borrow from here.
#[derive(Default)]
struct Batch<'c> {
    changes: Vec<&'c ChangeSet>,
    new_instances: InstanceCols<'c>,
    updated_instances: InstanceCols<'c>,
    expected: Vec<i64>,
    removed_tasks: Vec<&'c str>,
    tasks: TaskCols<'c>,
    removed_external: Vec<&'c str>,
    external: ExternalCols<'c>,
    removed_timers: Vec<&'c str>,
    timers: TimerCols<'c>,
    incidents: IncidentCols<'c>,
    resolved_incidents: Vec<&'c str>,
    history: HistoryCols<'c>,
}

#[derive(Default)]
struct InstanceCols<'c> {
    id: Vec<&'c str>,
    definition_id: Vec<&'c str>,
    definition_key: Vec<&'c str>,
    business_key: Vec<Option<&'c str>>,
    state: Vec<&'static str>,
    variables: Vec<Json<&'c Vars>>,
    runtime: Vec<&'c Value>,
    version: Vec<i64>,
    started_at: Vec<i64>,
    ended_at: Vec<Option<i64>>,
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
}

#[derive(Default)]
struct TimerCols<'c> {
    id: Vec<&'c str>,
    instance_id: Vec<&'c str>,
    activity_id: Vec<&'c str>,
    due_at: Vec<i64>,
    owner: Vec<Option<&'c str>>,
    lock_until: Vec<Option<i64>>,
    created_at: Vec<i64>,
}

#[derive(Default)]
struct IncidentCols<'c> {
    id: Vec<&'c str>,
    instance_id: Vec<&'c str>,
    activity_id: Vec<&'c str>,
    incident_type: Vec<&'c str>,
    message: Vec<&'c str>,
    external_task_id: Vec<Option<&'c str>>,
    created_at: Vec<i64>,
    resolved_at: Vec<Option<i64>>,
}

#[derive(Default)]
struct HistoryCols<'c> {
    instance_id: Vec<&'c str>,
    time: Vec<i64>,
    event: Vec<&'c str>,
    activity_id: Vec<Option<&'c str>>,
    detail: Vec<&'c Value>,
}

impl<'c> InstanceCols<'c> {
    fn push(&mut self, i: &'c InstanceRecord) {
        self.id.push(&i.id);
        self.definition_id.push(&i.definition_id);
        self.definition_key.push(&i.definition_key);
        self.business_key.push(i.business_key.as_deref());
        self.state.push(i.state.as_str());
        self.variables.push(Json(&i.variables));
        self.runtime.push(&i.runtime);
        self.version.push(i.version);
        self.started_at.push(ms(i.started_at));
        self.ended_at.push(i.ended_at.map(ms));
    }
}

/// Which step's rows hold which results.
#[derive(Default)]
struct Slots {
    updated: Option<usize>,
    removed_tasks: Option<usize>,
    removed_external: Option<usize>,
    upserted_external: Option<usize>,
    removed_timers: Option<usize>,
    resolved: Option<usize>,
}

impl<'c> Batch<'c> {
    fn new(changes: &[&'c ChangeSet]) -> Self {
        let mut b = Batch {
            changes: changes.to_vec(),
            ..Batch::default()
        };
        // One upsert per external task id (the last wins): ON CONFLICT may not touch a
        // row twice in one statement.
        let mut external: Vec<&'c ExternalTaskRecord> = Vec::new();
        let mut external_pos: HashMap<&'c str, usize> = HashMap::new();
        for c in changes {
            match c.expected_version {
                None => b.new_instances.push(&c.instance),
                Some(v) => {
                    b.updated_instances.push(&c.instance);
                    b.expected.push(v);
                }
            }
            b.removed_tasks
                .extend(c.tasks_removed.iter().map(String::as_str));
            for t in &c.tasks_created {
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
            }
            b.removed_external
                .extend(c.external_removed.iter().map(String::as_str));
            for e in &c.external_upserted {
                match external_pos.get(e.id.as_str()) {
                    Some(&pos) => external[pos] = e,
                    None => {
                        external_pos.insert(&e.id, external.len());
                        external.push(e);
                    }
                }
            }
            b.removed_timers
                .extend(c.timers_removed.iter().map(String::as_str));
            for t in &c.timers_created {
                let cols = &mut b.timers;
                cols.id.push(&t.id);
                cols.instance_id.push(&t.instance_id);
                cols.activity_id.push(&t.activity_id);
                cols.due_at.push(ms(t.due_at));
                cols.owner.push(t.owner.as_deref());
                cols.lock_until.push(t.lock_until.map(ms));
                cols.created_at.push(ms(t.created_at));
            }
            for i in &c.incidents_created {
                let cols = &mut b.incidents;
                cols.id.push(&i.id);
                cols.instance_id.push(&i.instance_id);
                cols.activity_id.push(&i.activity_id);
                cols.incident_type.push(&i.incident_type);
                cols.message.push(&i.message);
                cols.external_task_id.push(i.external_task_id.as_deref());
                cols.created_at.push(ms(i.created_at));
                cols.resolved_at.push(i.resolved_at.map(ms));
            }
            b.resolved_incidents
                .extend(c.incidents_resolved.iter().map(String::as_str));
            for h in &c.history {
                let cols = &mut b.history;
                cols.instance_id.push(&h.instance_id);
                cols.time.push(ms(h.time));
                cols.event.push(&h.event);
                cols.activity_id.push(h.activity_id.as_deref());
                cols.detail.push(&h.detail);
            }
        }
        for e in external {
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
        }
        b
    }

    /// The batch's statements in journal order, skipping those with nothing to do.
    fn steps<'a>(&'a self, s: &Statements, tx_time: &'a i64) -> (Vec<Step<'a>>, Slots) {
        let mut steps: Vec<Step<'a>> = Vec::new();
        let mut slots = Slots::default();
        let mut push = |stmt: &Statement, params: Vec<Param<'a>>| -> usize {
            steps.push(Step::Query(stmt.clone(), params));
            steps.len() - 1
        };
        let n = &self.new_instances;
        if !n.id.is_empty() {
            push(
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
                ],
            );
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
                ],
            ));
        }
        if !self.removed_tasks.is_empty() {
            slots.removed_tasks = Some(push(&s.delete_tasks, vec![&self.removed_tasks]));
        }
        let t = &self.tasks;
        if !t.id.is_empty() {
            push(
                &s.insert_tasks,
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
                ],
            );
        }
        if !self.removed_external.is_empty() {
            slots.removed_external = Some(push(&s.delete_external, vec![&self.removed_external]));
        }
        let e = &self.external;
        if !e.id.is_empty() {
            slots.upserted_external = Some(push(
                &s.upsert_external,
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
                ],
            ));
        }
        if !self.removed_timers.is_empty() {
            slots.removed_timers = Some(push(&s.delete_timers, vec![&self.removed_timers]));
        }
        let t = &self.timers;
        if !t.id.is_empty() {
            push(
                &s.insert_timers,
                vec![
                    &t.id,
                    &t.instance_id,
                    &t.activity_id,
                    &t.due_at,
                    &t.owner,
                    &t.lock_until,
                    &t.created_at,
                ],
            );
        }
        let i = &self.incidents;
        if !i.id.is_empty() {
            push(
                &s.insert_incidents,
                vec![
                    &i.id,
                    &i.instance_id,
                    &i.activity_id,
                    &i.incident_type,
                    &i.message,
                    &i.external_task_id,
                    &i.created_at,
                    &i.resolved_at,
                ],
            );
        }
        if !self.resolved_incidents.is_empty() {
            slots.resolved = Some(push(
                &s.resolve_incidents,
                vec![tx_time, &self.resolved_incidents],
            ));
        }
        let h = &self.history;
        if !h.instance_id.is_empty() {
            push(
                &s.insert_history,
                vec![&h.instance_id, &h.time, &h.event, &h.activity_id, &h.detail],
            );
        }
        (steps, slots)
    }

    /// Checks the optimistic locks and derives the journal, change set by change set.
    /// `Err(indices)` inside: instances whose version moved (roll back).
    fn finish(&self, slots: &Slots, rows: Vec<Vec<Row>>) -> Result<Finish<Result<(), Vec<usize>>>> {
        let ids = |slot: Option<usize>| -> Result<HashSet<String>> {
            slot.map(|i| rows[i].iter().map(|r| rows::get::<String>(r, 0)).collect())
                .unwrap_or_else(|| Ok(HashSet::new()))
        };
        let updated = ids(slots.updated)?;
        let lost: Vec<usize> = self
            .changes
            .iter()
            .enumerate()
            .filter(|(_, c)| c.expected_version.is_some() && !updated.contains(&c.instance.id))
            .map(|(i, _)| i)
            .collect();
        if !lost.is_empty() {
            return Ok(Finish::Rollback(Err(lost)));
        }
        let removed_tasks = ids(slots.removed_tasks)?;
        let removed_external = ids(slots.removed_external)?;
        let removed_timers = ids(slots.removed_timers)?;
        let mut inserted_external = HashMap::new();
        if let Some(i) = slots.upserted_external {
            for r in &rows[i] {
                inserted_external.insert(rows::get::<String>(r, 0)?, rows::get::<bool>(r, 1)?);
            }
        }
        let mut resolved = HashMap::new();
        if let Some(i) = slots.resolved {
            for r in &rows[i] {
                let incident = rows::incident(r)?;
                resolved.insert(incident.id.clone(), incident);
            }
        }

        let mut journal = Vec::new();
        for c in &self.changes {
            let i = &c.instance;
            let op = if c.expected_version.is_some() {
                "update"
            } else {
                "insert"
            };
            journal.push(JournalEntry::new("instance", &i.id, op, i)?);
            for id in c
                .tasks_removed
                .iter()
                .filter(|id| removed_tasks.contains(*id))
            {
                journal.push(JournalEntry::delete("task", id));
            }
            for t in &c.tasks_created {
                journal.push(JournalEntry::new("task", &t.id, "insert", t)?);
            }
            for id in c
                .external_removed
                .iter()
                .filter(|id| removed_external.contains(*id))
            {
                journal.push(JournalEntry::delete("externalTask", id));
            }
            for e in &c.external_upserted {
                let op = if inserted_external.get(&e.id).copied().unwrap_or(true) {
                    "insert"
                } else {
                    "update"
                };
                journal.push(JournalEntry::new("externalTask", &e.id, op, e)?);
            }
            for id in c
                .timers_removed
                .iter()
                .filter(|id| removed_timers.contains(*id))
            {
                journal.push(JournalEntry::delete("timer", id));
            }
            for t in &c.timers_created {
                journal.push(JournalEntry::new("timer", &t.id, "insert", t)?);
            }
            for inc in &c.incidents_created {
                journal.push(JournalEntry::new("incident", &inc.id, "insert", inc)?);
            }
            for id in &c.incidents_resolved {
                if let Some(inc) = resolved.get(id) {
                    journal.push(JournalEntry::new("incident", id, "update", inc)?);
                }
            }
            if !c.history.is_empty() {
                journal.push(JournalEntry::new("history", &i.id, "append", &c.history)?);
            }
        }
        Ok(Finish::Commit(Ok(()), journal))
    }
}
