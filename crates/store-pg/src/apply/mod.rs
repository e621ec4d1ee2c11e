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

mod columns;
mod commit;
mod journal;
mod statements;
mod stats;

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use deadpool_postgres::Pool;
use steadyflow_store::{ChangeSet, Result, RowImages, StoreError};
use tokio::sync::{mpsc, oneshot};

pub(crate) use stats::Counters;
pub use stats::WriterStats;

use commit::commit_batch;

/// A change set queued for its writer, with its row images (serialized by the caller:
/// the writers only write, and nothing is serialized inside a transaction).
pub(crate) struct Job {
    pub change: ChangeSet,
    pub images: RowImages,
    pub reply: oneshot::Sender<Result<()>>,
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

    fn is_stale(&self, change: &ChangeSet) -> bool {
        let id = &change.instance.id;
        match self.current.get(id).or_else(|| self.previous.get(id)) {
            // Inserting an instance that exists, or updating an older version.
            Some(&committed) => change.expected_version.is_none_or(|v| v < committed),
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
        let mut next = Assembly::new(max_batch, &recent, &counters);
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
            let (size, began) = (batch.len(), std::time::Instant::now());
            recent.record(commit_batch(&pool, batch, &counters).await);
            steadyflow_store::gauges::record_batch("postgres", size, began.elapsed());
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

impl<'w> Assembly<'w> {
    fn new(max_batch: usize, recent: &'w Recent, counters: &'w Counters) -> Self {
        Assembly {
            max_batch,
            recent,
            counters,
            batch: Vec::new(),
            ids: HashSet::new(),
            held: VecDeque::new(),
        }
    }

    /// Answers a stale change set `Conflict` at once, puts the others in the batch
    /// while it has room and no change set of their instance, else holds them.
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

#[cfg(test)]
mod tests {
    use steadyflow_store::{InstanceRecord, InstanceState, Timestamp};

    use super::*;

    fn change(id: &str, expected: Option<i64>) -> ChangeSet {
        let time = Timestamp::from_timestamp_millis(0).unwrap();
        let instance = InstanceRecord {
            id: id.into(),
            definition_id: "p:1".into(),
            definition_key: "p".into(),
            business_key: None,
            state: InstanceState::Active,
            variables: Default::default(),
            runtime: serde_json::json!({}).into(),
            version: expected.map_or(1, |v| v + 1),
            started_at: time,
            ended_at: None,
        };
        ChangeSet::new(instance, expected, time)
    }

    fn job(id: &str, expected: Option<i64>) -> (Job, oneshot::Receiver<Result<()>>) {
        let change = change(id, expected);
        let images = RowImages::of(&change).unwrap();
        let (reply, answer) = oneshot::channel();
        let job = Job {
            change,
            images,
            reply,
        };
        (job, answer)
    }

    #[test]
    fn stale_means_older_than_a_version_this_writer_committed() {
        let mut recent = Recent::default();
        recent.record(vec![("a".into(), 3)]);
        assert!(
            recent.is_stale(&change("a", Some(2))),
            "made from an older version"
        );
        assert!(
            !recent.is_stale(&change("a", Some(3))),
            "made from the latest"
        );
        assert!(
            recent.is_stale(&change("a", None)),
            "inserting one that exists"
        );
        assert!(
            !recent.is_stale(&change("b", Some(1))),
            "unknown: the database decides"
        );
    }

    #[test]
    fn recent_versions_are_kept_for_two_generations() {
        let mut recent = Recent::default();
        recent.record(vec![("old".into(), 5)]);
        recent.record((0..RECENT).map(|n| (format!("i{n}"), 1)).collect());
        assert!(recent.current.is_empty(), "a full generation moves on");
        assert!(
            recent.is_stale(&change("old", Some(4))),
            "still known one generation on"
        );
        recent.record((0..=RECENT).map(|n| (format!("j{n}"), 1)).collect());
        assert!(
            !recent.is_stale(&change("old", Some(4))),
            "forgotten two generations on"
        );
    }

    #[test]
    fn admit_answers_stale_at_once_and_holds_what_does_not_fit() {
        let mut recent = Recent::default();
        recent.record(vec![("a".into(), 3)]);
        let counters = Counters::default();
        let mut next = Assembly::new(2, &recent, &counters);
        let (stale, mut stale_answer) = job("a", Some(2));
        next.admit(stale);
        assert!(
            matches!(stale_answer.try_recv(), Ok(Err(StoreError::Conflict(id))) if id == "a"),
            "a stale change set is answered Conflict without a round trip"
        );
        assert_eq!(counters.snapshot().conflicts, 1);
        let mut answers = Vec::new();
        for (id, expected) in [("a", Some(3)), ("a", Some(4)), ("b", None), ("c", None)] {
            let (job, answer) = job(id, expected);
            next.admit(job);
            answers.push(answer);
        }
        let ids = |jobs: &mut dyn Iterator<Item = &Job>| -> Vec<(String, Option<i64>)> {
            jobs.map(|j| (j.change.instance.id.clone(), j.change.expected_version))
                .collect()
        };
        assert_eq!(
            ids(&mut next.batch.iter()),
            [("a".into(), Some(3)), ("b".into(), None)],
            "one change set per instance, at most max_batch"
        );
        assert_eq!(
            ids(&mut next.held.iter()),
            [("a".into(), Some(4)), ("c".into(), None)],
            "held in arrival order for the next batch"
        );
        assert!(
            answers.iter_mut().all(|a| a.try_recv().is_err()),
            "nobody admitted is answered yet"
        );
    }
}
