//! Committing a batch: one transaction, retried with filtering statements when some
//! change set lost its instance, retried as is after a deadlock, and change set by
//! change set when the server rejects the batch.

use std::sync::atomic::Ordering;

use deadpool_postgres::Pool;
use steadyflow_store::{ChangeSet, Result, RowImages, StoreError};

use super::columns::Batch;
use super::statements::Statements;
use super::{Counters, Job};
use crate::error::{db_err, is_retryable, is_unique_violation, pool_err, server_rejected};
use crate::pipeline::{self, TxError};

/// What one transaction of a batch came to.
pub(super) enum Attempt {
    /// Committed, except the change sets at these indices (ascending): their instance's
    /// version had moved or their lock guard failed, and nothing of theirs was written.
    /// When all lost, the transaction was rolled back.
    Done { lost: Vec<usize> },
    /// Some change sets lost, and the statements did not filter out their rows: rolled
    /// back, to be run again with filtering statements.
    Refilter,
    /// Nothing committed.
    Failed {
        error: StoreError,
        /// The server rejected the transaction: it is rolled back for sure.
        rolled_back: bool,
        /// Deadlock or serialization failure: worth retrying as is.
        transient: bool,
    },
}

/// Commits `jobs` and answers their callers. Returns the instance versions committed.
pub(super) async fn commit_batch(
    pool: &Pool,
    mut jobs: Vec<Job>,
    counters: &Counters,
) -> Vec<(String, i64)> {
    let mut committed = Vec::with_capacity(jobs.len());
    // Every batch updates (and row-locks) its instances in id order, so two writers'
    // batches cannot deadlock on them.
    jobs.sort_unstable_by(|a, b| a.change.instance.id.cmp(&b.change.instance.id));
    let (mut tries, mut filtered) = (0, false);
    loop {
        let changes: Vec<(&ChangeSet, &RowImages)> =
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
                        let _ = job.reply.send(Err(error.clone()));
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
/// the stale ones itself (see [`Recent`](super::Recent)).
async fn attempt(pool: &Pool, changes: &[(&ChangeSet, &RowImages)], filtered: bool) -> Attempt {
    let failed = |error| Attempt::Failed {
        error,
        rolled_back: true,
        transient: false,
    };
    let client = match pool.get().await {
        Ok(client) => client,
        Err(e) => return failed(pool_err(e)),
    };
    let stmts = match Statements::prepare(&client, filtered).await {
        Ok(s) => s,
        Err(e) => return failed(db_err(e)),
    };
    let batch = Batch::new(changes);
    let (steps, slots) = batch.steps(&stmts);
    let result = pipeline::transact(
        &client,
        pipeline::BEGIN,
        &stmts.journal,
        batch.tx_time(),
        steps,
        |rows| batch.finish(&slots, rows, filtered),
    )
    .await;
    match result {
        Ok(attempt) => attempt,
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
