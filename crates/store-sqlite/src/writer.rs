//! The single writer thread and its group commit.

use std::any::Any;
use std::sync::mpsc;

use rusqlite::Connection;
use steadyflow_store::{Result, StoreError};
use tokio::sync::oneshot;

use crate::backend_err;

type AnyBox = Box<dyn Any + Send>;
type Work = Box<dyn FnMut(&Connection, i64) -> Result<AnyBox> + Send>;

struct Job {
    work: Work,
    /// The result, and the work itself: what it captured (a whole change set) is freed
    /// on the caller's thread, not on the writer's (that cost the writer a tenth of its
    /// time).
    reply: oneshot::Sender<(Result<AnyBox>, Work)>,
}

impl Job {
    fn answer(self, result: Result<AnyBox>) {
        let _ = self.reply.send((result, self.work));
    }
}

/// Most commands one transaction takes; more wait for the next batch.
const MAX_BATCH: usize = 512;

pub(crate) struct Writer {
    queue: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread on `conn` (SQLite's automatic WAL checkpoints run there;
    /// a separate checkpointing thread measured no faster on this machine).
    pub(crate) fn start(conn: Connection) -> Result<Writer> {
        let (queue, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, rx))
            .map_err(|e| StoreError::Backend(format!("cannot start writer thread: {e}")))?;
        Ok(Writer { queue })
    }

    /// Runs `f` inside the next batch transaction and resolves once that batch is
    /// durably committed. `f` gets the connection and the batch's commit time in
    /// milliseconds. It may run twice (see [`commit_batch`]), so it must only read what
    /// it captured. It must fail with `Conflict`, `NotFound` or `Rejected` only before
    /// it wrote anything.
    pub(crate) async fn run<R, F>(&self, mut f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnMut(&Connection, i64) -> Result<R> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let work: Work = Box::new(move |c, t| f(c, t).map(|r| Box::new(r) as AnyBox));
        self.queue
            .send(Job { work, reply })
            .map_err(|_| StoreError::Unavailable("SQLite writer has stopped".into()))?;
        let (out, work) = rx
            .await
            .map_err(|_| StoreError::Unavailable("SQLite writer has stopped".into()))?;
        drop(work);
        Ok(*out?
            .downcast::<R>()
            .expect("writer returns the type it was given"))
    }
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn run(conn: Connection, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (n, began) = (batch.len(), std::time::Instant::now());
        commit_batch(&conn, batch);
        tracing::trace!(
            commands = n,
            elapsed_us = began.elapsed().as_micros() as u64,
            "batch committed"
        );
    }
    tracing::debug!("SQLite writer stopped");
}

/// An error after which the command has written nothing (it checks before it writes).
fn is_clean(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Conflict(_) | StoreError::NotFound { .. } | StoreError::Rejected(_)
    )
}

/// Commits a batch in one transaction. Commands run back to back without savepoints
/// (SQLite's statement sub-journals cost more than the commands); a command that fails
/// cleanly has written nothing. Any other failure rolls the batch back and re-runs each
/// command in a transaction of its own, so one bad command never fails the others.
fn commit_batch(conn: &Connection, mut batch: Vec<Job>) {
    let now = chrono::Utc::now().timestamp_millis();
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        let err = backend_err(e);
        for job in batch {
            job.answer(Err(clone_err(&err)));
        }
        return;
    }
    let mut results: Vec<Result<AnyBox>> = Vec::with_capacity(batch.len());
    for job in batch.iter_mut() {
        let r = (job.work)(conn, now);
        if let Err(e) = &r
            && !is_clean(e)
        {
            tracing::warn!(error = %e, "a command failed inside a batch; committing one by one");
            let _ = exec(conn, "ROLLBACK");
            return one_by_one(conn, batch, now);
        }
        results.push(r);
    }
    match exec(conn, "COMMIT") {
        Ok(()) => {
            for (job, result) in batch.into_iter().zip(results) {
                job.answer(result);
            }
        }
        Err(e) => {
            let err = backend_err(e);
            tracing::error!(error = %err, "SQLite batch commit failed; rolled back");
            let _ = exec(conn, "ROLLBACK");
            for job in batch {
                job.answer(Err(clone_err(&err)));
            }
        }
    }
}

fn one_by_one(conn: &Connection, batch: Vec<Job>, now: i64) {
    for mut job in batch {
        let result = exec(conn, "BEGIN IMMEDIATE")
            .map_err(backend_err)
            .and_then(|()| match (job.work)(conn, now) {
                Ok(v) => exec(conn, "COMMIT").map(|()| v).map_err(backend_err),
                Err(e) => Err(e),
            });
        if result.is_err() {
            let _ = exec(conn, "ROLLBACK");
        }
        job.answer(result);
    }
}

fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        other => StoreError::Backend(other.to_string()),
    }
}
