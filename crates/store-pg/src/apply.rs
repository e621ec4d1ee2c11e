//! `apply`: group commit of change sets.
//!
//! Callers serialize their change set's row images, queue it with the writer task that
//! owns its instance, and wait. A writer takes whatever is queued (up to `max_batch`, one
//! change set per instance) and commits it as ONE transaction of multi-row statements
//! (`UNNEST` arrays), pipelined into two round trips: `BEGIN` and the statements, then
//! the journal and `COMMIT`.
//!
//! - Instances are written first, in id order (so concurrent batches cannot deadlock):
//!   inserts, and optimistic updates `… WHERE version = expected`, both only where the
//!   change set's lock guard holds (the worker still has an unexpired lock on the task;
//!   its row stays locked until commit), `RETURNING id`.
//! - A writer remembers the versions it committed lately. A change set made from an
//!   older version (typically a command that ran concurrently with the one just
//!   committed on the same instance) is answered `Conflict` before it reaches the
//!   database. So the other rows of the batch are written unconditionally: every change
//!   set normally wins its instance.
//! - When one lost after all (another node changed the instance, or the lock guard
//!   failed), that transaction is rolled back and run again with every other row written
//!   only where its change set won its instance: the instance row was written by this
//!   transaction (`xmin`). The losers drop out inside the transaction, their callers get
//!   `Conflict`, and the others commit, with no further retry.
//! - A deadlock or serialization failure retries the batch; when the server rejects it
//!   for any other reason, each change set is retried alone so only the faulty one fails.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use deadpool_postgres::Pool;
use serde_json::value::RawValue;
use steadyflow_store::*;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::Json;
use tokio_postgres::{Row, Statement};

use crate::error::{
    db_err, duplicate, is_retryable, is_unique_violation, pool_err, server_rejected,
};
use crate::pipeline::{self, Finish, JOURNAL_INSERT, JournalEntry, Param, Step, TxError, to_json};
use crate::rows::{self, INCIDENT_COLS, ms, prefixed};

pub(crate) struct Job {
    pub change: ChangeSet,
    pub images: Images,
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

/// The writer tasks' queues. Each instance has its writer (by a hash of its id), so two
/// commands on one instance never race each other in two concurrent transactions: the
/// later one waits for the earlier one's batch and, made from the same instance version,
/// is answered `Conflict` at once, without a round trip or a row lock wait.
pub(crate) struct Writers {
    queues: Vec<mpsc::Sender<Job>>,
}

impl Writers {
    /// Starts `writers` writer tasks on the current Tokio runtime; they stop when the
    /// returned handle is dropped.
    pub fn spawn(pool: Pool, writers: usize, max_batch: usize, counters: Arc<Counters>) -> Self {
        let max_batch = max_batch.max(1);
        let queues = (0..writers.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(max_batch * 4);
                tokio::spawn(writer_loop(pool.clone(), rx, max_batch, counters.clone()));
                tx
            })
            .collect();
        Writers { queues }
    }

    pub async fn send(&self, job: Job) -> Result<(), mpsc::error::SendError<Job>> {
        let mut h = std::hash::DefaultHasher::new();
        job.change.instance.id.hash(&mut h);
        let queue = &self.queues[(h.finish() % self.queues.len() as u64) as usize];
        queue.send(job).await
    }
}

/// Versions this writer committed lately, per instance: a change set made from an older
/// version is stale for sure (versions only grow), so it is answered `Conflict` without
/// going to the database. Two generations of at most `RECENT` entries each.
#[derive(Default)]
struct Recent {
    current: HashMap<String, i64>,
    previous: HashMap<String, i64>,
}

const RECENT: usize = 16_384;

impl Recent {
    fn record(&mut self, committed: Vec<(String, i64)>) {
        for (id, version) in committed {
            self.current.insert(id, version);
        }
        if self.current.len() > RECENT {
            self.previous = std::mem::take(&mut self.current);
        }
    }

    fn is_stale(&self, c: &ChangeSet) -> bool {
        let id = &c.instance.id;
        match self.current.get(id).or_else(|| self.previous.get(id)) {
            // Inserting an instance that exists, or updating an older version.
            Some(&committed) => c.expected_version.is_none_or(|v| v < committed),
            None => false,
        }
    }
}

async fn writer_loop(
    pool: Pool,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    counters: Arc<Counters>,
) {
    // Change sets held back because their instance was already in the batch; they go
    // first into the next one, so one instance's commands keep their order.
    let mut carry: VecDeque<Job> = VecDeque::new();
    let mut recent = Recent::default();
    loop {
        let mut next = Assembly {
            max_batch,
            recent: &recent,
            counters: &counters,
            batch: Vec::new(),
            ids: HashSet::new(),
            held: VecDeque::new(),
        };
        for job in carry.drain(..) {
            next.admit(job);
        }
        next.drain(&mut rx);
        if next.batch.is_empty() && next.held.is_empty() {
            match rx.recv().await {
                Some(job) => next.admit(job),
                None => return,
            }
            next.drain(&mut rx);
        }
        let (batch, held) = (next.batch, next.held);
        carry = held;
        if !batch.is_empty() {
            recent.record(commit_batch(&pool, batch, &counters).await);
        }
    }
}

/// The next batch being put together.
struct Assembly<'w> {
    max_batch: usize,
    recent: &'w Recent,
    counters: &'w Counters,
    batch: Vec<Job>,
    /// Instances in `batch`.
    ids: HashSet<String>,
    /// For a later batch: the batch is full, or has a change set of the same instance.
    held: VecDeque<Job>,
}

impl Assembly<'_> {
    fn admit(&mut self, job: Job) {
        if self.recent.is_stale(&job.change) {
            self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
            let id = job.change.instance.id.clone();
            let _ = job.reply.send(Err(StoreError::Conflict(id)));
        } else if self.batch.len() < self.max_batch
            && self.ids.insert(job.change.instance.id.clone())
        {
            self.batch.push(job);
        } else {
            self.held.push_back(job);
        }
    }

    /// Takes what is queued, while there is room.
    fn drain(&mut self, rx: &mut mpsc::Receiver<Job>) {
        while self.held.len() < self.max_batch {
            match rx.try_recv() {
                Ok(job) => self.admit(job),
                Err(_) => break,
            }
        }
    }
}

/// What a batch's transaction came to.
enum Outcome {
    /// Committed (or rolled back, when all lost), except the change sets at these
    /// indices: their instance's version had moved or their lock guard failed, and
    /// nothing of theirs was written.
    Done(Vec<usize>),
    /// Some change sets lost, and the statements did not filter out their rows: rolled
    /// back, to be run again with filtering statements.
    Refilter,
}

enum Attempt {
    /// Committed, except the change sets at these indices: their instance's version had
    /// moved or their lock guard failed, and nothing of theirs was written.
    Done { lost: Vec<usize> },
    /// Rolled back; run again with filtering statements (see [`Outcome::Refilter`]).
    Refilter,
    Failed {
        error: StoreError,
        /// The server rejected the transaction: it is rolled back for sure.
        rolled_back: bool,
        /// Deadlock or serialization failure: worth retrying as is.
        transient: bool,
    },
}

/// Commits `jobs` and answers their callers. Returns the instance versions committed.
async fn commit_batch(pool: &Pool, mut jobs: Vec<Job>, counters: &Counters) -> Vec<(String, i64)> {
    let mut committed = Vec::with_capacity(jobs.len());
    // Every batch updates (and row-locks) its instances in id order, so two writers'
    // batches cannot deadlock on them.
    jobs.sort_unstable_by(|a, b| a.change.instance.id.cmp(&b.change.instance.id));
    let (mut tries, mut filtered) = (0, false);
    loop {
        let changes: Vec<(&ChangeSet, &Images)> =
            jobs.iter().map(|j| (&j.change, &j.images)).collect();
        counters.transactions.fetch_add(1, Ordering::Relaxed);
        match attempt(pool, &changes, filtered).await {
            Attempt::Refilter => filtered = true,
            Attempt::Done { lost } => {
                let mut lost = lost.into_iter().peekable();
                for (i, job) in jobs.into_iter().enumerate() {
                    let result = if lost.next_if_eq(&i).is_some() {
                        counters.conflicts.fetch_add(1, Ordering::Relaxed);
                        Err(StoreError::Conflict(job.change.instance.id.clone()))
                    } else {
                        counters.committed.fetch_add(1, Ordering::Relaxed);
                        let i = &job.change.instance;
                        committed.push((i.id.clone(), i.version));
                        Ok(())
                    };
                    let _ = job.reply.send(result);
                }
                return committed;
            }
            Attempt::Failed {
                transient: true, ..
            } if tries < 2 => tries += 1,
            Attempt::Failed {
                error, rolled_back, ..
            } => {
                if rolled_back && jobs.len() > 1 {
                    tracing::debug!(%error, size = jobs.len(), "batch rejected; retrying its change sets one by one");
                    counters
                        .retried_alone
                        .fetch_add(jobs.len() as u64, Ordering::Relaxed);
                    for job in jobs {
                        let result = apply_alone(pool, &job, counters).await;
                        let i = &job.change.instance;
                        if result.is_ok() {
                            committed.push((i.id.clone(), i.version));
                        }
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
                return committed;
            }
        }
    }
}

async fn apply_alone(pool: &Pool, job: &Job, counters: &Counters) -> Result<()> {
    let mut tries = 0;
    loop {
        counters.transactions.fetch_add(1, Ordering::Relaxed);
        // Alone, a change set that lost leaves nothing to commit: no filtering needed.
        match attempt(pool, &[(&job.change, &job.images)], false).await {
            Attempt::Done { lost } if lost.is_empty() => return Ok(()),
            Attempt::Done { .. } | Attempt::Refilter => {
                return Err(StoreError::Conflict(job.change.instance.id.clone()));
            }
            Attempt::Failed {
                transient: true, ..
            } if tries < 3 => tries += 1,
            Attempt::Failed { error, .. } => return Err(error),
        }
    }
}

/// One transaction for `changes`. Unless `filtered`, the statements writing rows other
/// than instances do not check whether their change set won its instance: cheaper, and
/// right as long as every change set wins, which a writer makes the rule by answering
/// the stale ones itself (see [`Recent`]).
async fn attempt(pool: &Pool, changes: &[(&ChangeSet, &Images)], filtered: bool) -> Attempt {
    let failed = |error| Attempt::Failed {
        error,
        rolled_back: true,
        transient: false,
    };
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => return failed(pool_err(e)),
    };
    let stmts = match Statements::prepare(&client, filtered).await {
        Ok(s) => s,
        Err(e) => return failed(db_err(e)),
    };
    let batch = Batch::new(changes);
    let tx_time = chrono::Utc::now().timestamp_millis();
    let (steps, slots) = batch.steps(&stmts, &tx_time);
    let result = pipeline::transact(
        &client,
        pipeline::BEGIN,
        &stmts.journal,
        tx_time,
        steps,
        |rows| batch.finish(&slots, rows, filtered),
    )
    .await;
    match result {
        Ok(Outcome::Done(lost)) => Attempt::Done { lost },
        Ok(Outcome::Refilter) => Attempt::Refilter,
        Err(TxError::Db(e)) if changes.len() == 1 && is_unique_violation(&e, "instances_pkey") => {
            // Inserting an instance that exists: the expected "no version yet" is stale.
            Attempt::Done { lost: vec![0] }
        }
        Err(TxError::Db(e)) => Attempt::Failed {
            rolled_back: server_rejected(&e),
            transient: is_retryable(&e),
            error: db_err(e),
        },
        Err(TxError::Store(e)) => failed(e),
    }
}

/// JSON text of a change set's row images, made by the caller before it queues the
/// change set: the writers only write, and nothing is serialized inside a transaction.
pub(crate) struct Images {
    instance: Box<RawValue>,
    tasks: Vec<Box<RawValue>>,
    external: Vec<Box<RawValue>>,
    timers: Vec<Box<RawValue>>,
    incidents: Vec<Box<RawValue>>,
    /// The change set's history records: the `events` of its history row, and the
    /// image of its journal `append` row.
    history: Option<Box<RawValue>>,
}

impl Images {
    pub(crate) fn of(c: &ChangeSet) -> Result<Images> {
        fn all<T: serde::Serialize>(what: &str, rows: &[T]) -> Result<Vec<Box<RawValue>>> {
            rows.iter().map(|r| to_json(what, r)).collect()
        }
        Ok(Images {
            instance: to_json("instance", &c.instance)?,
            tasks: all("task", &c.tasks_created)?,
            external: all("externalTask", &c.external_upserted)?,
            timers: all("timer", &c.timers_created)?,
            incidents: all("incident", &c.incidents_created)?,
            history: encode_history(&c.instance.id, &c.history)
                .map(|text| RawValue::from_string(text).expect("encoded history is JSON")),
        })
    }
}

/// Whether the change set owning a row won its instance in this transaction: the
/// instance row was inserted or updated by it (so its `xmin` is this transaction's id).
/// Rows of change sets whose optimistic lock or lock guard failed are filtered out with
/// this, so that the rest of the batch commits.
const WON: &str = "EXISTS (SELECT 1 FROM instances AS w \
                   WHERE w.id = u.owner AND w.xmin = (SELECT pg_current_xact_id()::xid))";

/// The change set's lock guard, if any, holds: its worker still has an unexpired lock
/// on the task. The task row stays locked until commit, so a fetch cannot hand it to
/// another worker meanwhile (and a fetch in flight is waited for, then rechecked).
const GUARD: &str = "(u.guard_task IS NULL OR EXISTS (SELECT 1 FROM external_tasks AS g \
                     WHERE g.id = u.guard_task AND g.worker_id = u.guard_worker \
                     AND g.lock_expires_at > u.guard_now FOR UPDATE))";

struct Statements {
    journal: Statement,
    insert_instances: Statement,
    update_instances: Statement,
    children: Children,
}

/// The statements writing a batch's rows other than instances: unfiltered, or keeping
/// only the rows of change sets that won their instance ([`WON`]).
struct Children {
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

/// `DELETE` by id (`$1` ids, `$2` their owners) of the rows passing `filter`.
fn delete_sql(table: &str, filter: &str) -> String {
    format!(
        "DELETE FROM {table} AS t USING UNNEST($1::text[], $2::text[]) AS u(id, owner) \
         WHERE t.id = u.id AND {filter} RETURNING t.id"
    )
}

impl Statements {
    /// Prepared once per connection; later calls are cache hits without a round trip.
    async fn prepare(
        c: &deadpool_postgres::Client,
        filtered: bool,
    ) -> Result<Self, tokio_postgres::Error> {
        Ok(Statements {
            journal: c.prepare_cached(JOURNAL_INSERT).await?,
            insert_instances: c
                .prepare_cached(&format!(
                    "INSERT INTO instances (id, definition_id, definition_key, business_key, state, variables, \
                     runtime, version, started_at, ended_at) \
                     SELECT u.id, u.definition_id, u.definition_key, u.business_key, u.state, u.variables, \
                     u.runtime, u.version, u.started_at, u.ended_at \
                     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                     $6::jsonb[], $7::json[], $8::int8[], $9::int8[], $10::int8[], \
                     $11::text[], $12::text[], $13::int8[]) AS u(id, definition_id, definition_key, business_key, \
                     state, variables, runtime, version, started_at, ended_at, guard_task, guard_worker, guard_now) \
                     WHERE {GUARD} RETURNING id"
                ))
                .await?,
            // Always writes `state`, changed or not (`ChangeSet::prior_state` is not
            // used): PostgreSQL decides whether an update can be HOT by comparing the
            // indexed columns' old and new values, not by the SET list, so leaving an
            // unchanged state out (as SQLite does) would gain nothing. The table's
            // fillfactor leaves the room on the page that HOT needs.
            update_instances: c
                .prepare_cached(&format!(
                    "UPDATE instances AS i SET business_key = u.business_key, state = u.state, \
                     variables = u.variables, runtime = u.runtime, version = u.version, ended_at = u.ended_at \
                     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::json[], $6::int8[], \
                     $7::int8[], $8::int8[], $9::text[], $10::text[], $11::int8[]) AS u(id, business_key, state, \
                     variables, runtime, version, ended_at, expected, guard_task, guard_worker, guard_now) \
                     WHERE i.id = u.id AND i.version = u.expected AND {GUARD} \
                     RETURNING i.id"
                ))
                .await?,
            children: Children::prepare(c, filtered).await?,
        })
    }
}

impl Children {
    /// `filtered`: keep only the rows of change sets that won their instance ([`WON`]).
    async fn prepare(
        c: &deadpool_postgres::Client,
        filtered: bool,
    ) -> Result<Self, tokio_postgres::Error> {
        let filter = if filtered { WON } else { "TRUE" };
        Ok(Children {
            delete_tasks: c.prepare_cached(&delete_sql("tasks", filter)).await?,
            insert_tasks: c
                .prepare_cached(&format!(
                    "INSERT INTO tasks (id, instance_id, definition_id, activity_id, name, assignee, \
                     candidate_users, candidate_groups, created_at) \
                     SELECT u.id, u.instance_id, u.definition_id, u.activity_id, u.name, u.assignee, \
                     u.candidate_users, u.candidate_groups, u.created_at \
                     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::jsonb[], $8::jsonb[], $9::int8[], $10::text[]) AS u(id, instance_id, definition_id, \
                     activity_id, name, assignee, candidate_users, candidate_groups, created_at, owner) \
                     WHERE {filter}"
                ))
                .await?,
            delete_external: c.prepare_cached(&delete_sql("external_tasks", filter)).await?,
            upsert_external: c
                .prepare_cached(&format!(
                    "INSERT INTO external_tasks (id, instance_id, definition_id, activity_id, topic, worker_id, \
                     lock_expires_at, retries, error_message, retry_at, created_at) \
                     SELECT u.id, u.instance_id, u.definition_id, u.activity_id, u.topic, u.worker_id, \
                     u.lock_expires_at, u.retries, u.error_message, u.retry_at, u.created_at \
                     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::int8[], $8::int4[], $9::text[], $10::int8[], $11::int8[], $12::text[]) \
                     AS u(id, instance_id, definition_id, activity_id, topic, worker_id, lock_expires_at, \
                     retries, error_message, retry_at, created_at, owner) \
                     WHERE {filter} \
                     ON CONFLICT (id) DO UPDATE SET instance_id = EXCLUDED.instance_id, \
                     definition_id = EXCLUDED.definition_id, activity_id = EXCLUDED.activity_id, \
                     topic = EXCLUDED.topic, worker_id = EXCLUDED.worker_id, \
                     lock_expires_at = EXCLUDED.lock_expires_at, retries = EXCLUDED.retries, \
                     error_message = EXCLUDED.error_message, retry_at = EXCLUDED.retry_at, \
                     created_at = EXCLUDED.created_at \
                     RETURNING id, (xmax = 0) AS inserted"
                ))
                .await?,
            delete_timers: c.prepare_cached(&delete_sql("timers", filter)).await?,
            insert_timers: c
                .prepare_cached(&format!(
                    "INSERT INTO timers (id, instance_id, activity_id, due_at, owner, lock_until, created_at) \
                     SELECT u.id, u.instance_id, u.activity_id, u.due_at, u.lock_owner, u.lock_until, u.created_at \
                     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], \
                     $6::int8[], $7::int8[], $8::text[]) AS u(id, instance_id, activity_id, due_at, lock_owner, \
                     lock_until, created_at, owner) \
                     WHERE {filter}"
                ))
                .await?,
            insert_incidents: c
                .prepare_cached(&format!(
                    "INSERT INTO incidents (id, instance_id, activity_id, incident_type, message, \
                     external_task_id, created_at, resolved_at) \
                     SELECT u.id, u.instance_id, u.activity_id, u.incident_type, u.message, \
                     u.external_task_id, u.created_at, u.resolved_at \
                     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                     $6::text[], $7::int8[], $8::int8[], $9::text[]) AS u(id, instance_id, activity_id, \
                     incident_type, message, external_task_id, created_at, resolved_at, owner) \
                     WHERE {filter}"
                ))
                .await?,
            resolve_incidents: c
                .prepare_cached(&format!(
                    "UPDATE incidents AS t SET resolved_at = $1 \
                     FROM UNNEST($2::text[], $3::text[]) AS u(id, owner) \
                     WHERE t.id = u.id AND {filter} RETURNING {}",
                    prefixed("t", INCIDENT_COLS)
                ))
                .await?,
            // One row per change set; the events are the journal's `append` image too.
            insert_history: c
                .prepare_cached(&format!(
                    "INSERT INTO history (instance_id, time, events) \
                     SELECT u.owner, $1, u.events FROM UNNEST($2::text[], $3::jsonb[]) AS u(owner, events) \
                     WHERE {filter}"
                ))
                .await?,
        })
    }
}

/// Column arrays of one batch; statement parameters borrow from here. Every row of a
/// child table carries its `owner`, the id of the instance of its change set.
#[derive(Default)]
struct Batch<'c> {
    changes: Vec<(&'c ChangeSet, &'c Images)>,
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
    resolved_incidents: Owned<'c>,
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
    incident_type: Vec<&'c str>,
    message: Vec<&'c str>,
    external_task_id: Vec<Option<&'c str>>,
    created_at: Vec<i64>,
    resolved_at: Vec<Option<i64>>,
    owner: Vec<&'c str>,
}

#[derive(Default)]
struct HistoryCols<'c> {
    owner: Vec<&'c str>,
    events: Vec<Json<&'c RawValue>>,
}

impl<'c> InstanceCols<'c> {
    fn push(&mut self, c: &'c ChangeSet) {
        let i = &c.instance;
        let g = c.lock_guard.as_ref();
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
struct Slots {
    inserted: Option<usize>,
    updated: Option<usize>,
    removed_tasks: Option<usize>,
    removed_external: Option<usize>,
    upserted_external: Option<usize>,
    removed_timers: Option<usize>,
    resolved: Option<usize>,
}

impl<'c> Batch<'c> {
    fn new(changes: &[(&'c ChangeSet, &'c Images)]) -> Self {
        let mut b = Batch {
            changes: changes.to_vec(),
            ..Batch::default()
        };
        // One upsert per external task id (the last wins): ON CONFLICT may not touch a
        // row twice in one statement.
        let mut external: Vec<(&'c str, &'c ExternalTaskRecord)> = Vec::new();
        let mut external_pos: HashMap<&'c str, usize> = HashMap::new();
        for (c, images) in changes {
            let owner = c.instance.id.as_str();
            match c.expected_version {
                None => b.new_instances.push(c),
                Some(v) => {
                    b.updated_instances.push(c);
                    b.expected.push(v);
                }
            }
            b.removed_tasks.extend(owner, &c.tasks_removed);
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
                cols.owner.push(owner);
            }
            b.removed_external.extend(owner, &c.external_removed);
            for e in &c.external_upserted {
                match external_pos.get(e.id.as_str()) {
                    Some(&pos) => external[pos] = (owner, e),
                    None => {
                        external_pos.insert(&e.id, external.len());
                        external.push((owner, e));
                    }
                }
            }
            b.removed_timers.extend(owner, &c.timers_removed);
            for t in &c.timers_created {
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
                cols.owner.push(owner);
            }
            b.resolved_incidents.extend(owner, &c.incidents_resolved);
            if let Some(events) = &images.history {
                b.history.owner.push(owner);
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
    fn steps<'a>(&'a self, s: &Statements, tx_time: &'a i64) -> (Vec<Step<'a>>, Slots) {
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
                vec![tx_time, &r.id, &r.owner],
            ));
        }
        let h = &self.history;
        if !h.owner.is_empty() {
            push(
                &s.children.insert_history,
                vec![tx_time, &h.owner, &h.events],
            );
        }
        (steps, slots)
    }

    /// Finds the change sets whose optimistic lock or lock guard failed and derives the
    /// journal of the others, change set by change set. Commits the winners, or rolls
    /// back when there are none; yields the losers' indices. When some lost but the
    /// statements were not `filtered`, the losers' rows were written too: rolls back
    /// and asks for [`Outcome::Refilter`].
    fn finish(
        &self,
        slots: &Slots,
        rows: Vec<Vec<Row>>,
        filtered: bool,
    ) -> Result<Finish<'c, Outcome>> {
        let ids = |slot: Option<usize>| -> Result<HashSet<String>> {
            slot.map(|i| rows[i].iter().map(|r| rows::get::<String>(r, 0)).collect())
                .unwrap_or_else(|| Ok(HashSet::new()))
        };
        let mut written = ids(slots.updated)?;
        written.extend(ids(slots.inserted)?);
        let won = |c: &ChangeSet| written.contains(&c.instance.id);
        let lost: Vec<usize> = self
            .changes
            .iter()
            .enumerate()
            .filter(|(_, (c, _))| !won(c))
            .map(|(i, _)| i)
            .collect();
        if lost.len() == self.changes.len() {
            return Ok(Finish::Rollback(Outcome::Done(lost)));
        }
        if !lost.is_empty() && !filtered {
            return Ok(Finish::Rollback(Outcome::Refilter));
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
        for (c, images) in self.changes.iter().filter(|(c, _)| won(c)) {
            let i = &c.instance;
            let op = if c.expected_version.is_some() {
                "update"
            } else {
                "insert"
            };
            journal.push(JournalEntry::image("instance", &i.id, op, &images.instance));
            for id in c
                .tasks_removed
                .iter()
                .filter(|id| removed_tasks.contains(*id))
            {
                journal.push(JournalEntry::delete("task", id));
            }
            for (t, image) in c.tasks_created.iter().zip(&images.tasks) {
                journal.push(JournalEntry::image("task", &t.id, "insert", image));
            }
            for id in c
                .external_removed
                .iter()
                .filter(|id| removed_external.contains(*id))
            {
                journal.push(JournalEntry::delete("externalTask", id));
            }
            for (e, image) in c.external_upserted.iter().zip(&images.external) {
                let op = if inserted_external.get(&e.id).copied().unwrap_or(true) {
                    "insert"
                } else {
                    "update"
                };
                journal.push(JournalEntry::image("externalTask", &e.id, op, image));
            }
            for id in c
                .timers_removed
                .iter()
                .filter(|id| removed_timers.contains(*id))
            {
                journal.push(JournalEntry::delete("timer", id));
            }
            for (t, image) in c.timers_created.iter().zip(&images.timers) {
                journal.push(JournalEntry::image("timer", &t.id, "insert", image));
            }
            for (inc, image) in c.incidents_created.iter().zip(&images.incidents) {
                journal.push(JournalEntry::image("incident", &inc.id, "insert", image));
            }
            for id in &c.incidents_resolved {
                if let Some(inc) = resolved.get(id) {
                    journal.push(JournalEntry::new("incident", id, "update", inc)?);
                }
            }
            if let Some(events) = &images.history {
                journal.push(JournalEntry::image("history", &i.id, "append", events));
            }
        }
        Ok(Finish::Commit(Outcome::Done(lost), journal))
    }
}
