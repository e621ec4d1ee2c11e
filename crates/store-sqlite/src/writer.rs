//! The single writer thread, its group commit, and the syncer thread that makes each
//! batch durable before anyone hears of it.
//!
//! The write connection runs with `synchronous=NORMAL`: SQLite's COMMIT then writes the
//! batch's WAL frames without waiting for the disk. The syncer thread flushes the WAL
//! file (`fdatasync`) and only then answers the batch's callers, while the writer already
//! runs the next batch. Nothing is acknowledged before it is on disk, and because the WAL
//! is one file written in order, a flush covers every batch committed before it: a crash
//! or power loss can only drop batches nobody was told about (SQLite's WAL checksums
//! discard a torn tail). Readers may see a batch a few milliseconds before it is
//! durable, as they would see it before a caller got the answer anyway.

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Answers that wait for the WAL flush.
type Pending = Vec<(Job, Result<AnyBox>)>;

/// Most commands one transaction takes; more wait for the next batch.
const MAX_BATCH: usize = 512;

pub(crate) struct Writer {
    queue: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread on `conn` (SQLite's automatic WAL checkpoints run there;
    /// a separate checkpointing thread measured no faster on this machine) and the
    /// syncer thread flushing `wal` (the database's `-wal` file).
    pub(crate) fn start(conn: Connection, wal: PathBuf) -> Result<Writer> {
        // The WAL exists once the connection is in WAL mode and has written (migrations).
        let wal_file = std::fs::File::open(&wal).map_err(|e| {
            StoreError::Unavailable(format!(
                "SQLite write-ahead log {} is missing ({e}): is the database in WAL mode?",
                wal.display()
            ))
        })?;
        let (queue, rx) = mpsc::channel::<Job>();
        let (to_sync, synced) = mpsc::channel::<Pending>();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        std::thread::Builder::new()
            .name("sqlite-syncer".into())
            .spawn(move || sync_loop(wal, wal_file, synced, flag))
            .map_err(|e| StoreError::Backend(format!("cannot start syncer thread: {e}")))?;
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, rx, to_sync, failed))
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

fn run(
    conn: Connection,
    rx: mpsc::Receiver<Job>,
    to_sync: mpsc::Sender<Pending>,
    failed: Arc<AtomicBool>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if failed.load(Ordering::Acquire) {
            for job in batch {
                job.answer(Err(wal_failed()));
            }
            continue;
        }
        let (n, began) = (batch.len(), std::time::Instant::now());
        let pending = commit_batch(&conn, batch);
        tracing::trace!(
            commands = n,
            elapsed_us = began.elapsed().as_micros() as u64,
            "batch committed"
        );
        if let Err(mpsc::SendError(pending)) = to_sync.send(pending) {
            for (job, _) in pending {
                job.answer(Err(StoreError::Unavailable(
                    "SQLite syncer has stopped".into(),
                )));
            }
        }
    }
    tracing::debug!("SQLite writer stopped");
}

fn wal_failed() -> StoreError {
    StoreError::Unavailable(
        "the SQLite write-ahead log could not be flushed to disk; restart the engine".into(),
    )
}

/// Flushes the WAL for every batch committed so far, then answers their callers. A
/// failed flush leaves the durability of those batches unknown: their callers get an
/// error and the store takes no more writes (fail-stop, as PostgreSQL does).
fn sync_loop(
    wal: PathBuf,
    file: std::fs::File,
    rx: mpsc::Receiver<Pending>,
    failed: Arc<AtomicBool>,
) {
    while let Ok(first) = rx.recv() {
        let mut answers = first;
        while let Ok(more) = rx.try_recv() {
            answers.extend(more);
        }
        if let Err(e) = file.sync_data() {
            tracing::error!(wal = %wal.display(), error = %e, "cannot flush the SQLite WAL; refusing further writes");
            failed.store(true, Ordering::Release);
        }
        let ok = !failed.load(Ordering::Acquire);
        for (job, result) in answers {
            job.answer(if ok { result } else { Err(wal_failed()) });
        }
    }
    tracing::debug!("SQLite syncer stopped");
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
/// Returns the answers, to be given once the WAL is flushed.
fn commit_batch(conn: &Connection, mut batch: Vec<Job>) -> Pending {
    let now = chrono::Utc::now().timestamp_millis();
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        let err = backend_err(e);
        return batch
            .into_iter()
            .map(|job| (job, Err(clone_err(&err))))
            .collect();
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
        Ok(()) => batch.into_iter().zip(results).collect(),
        Err(e) => {
            let err = backend_err(e);
            tracing::error!(error = %err, "SQLite batch commit failed; rolled back");
            let _ = exec(conn, "ROLLBACK");
            batch
                .into_iter()
                .map(|job| (job, Err(clone_err(&err))))
                .collect()
        }
    }
}

fn one_by_one(conn: &Connection, batch: Vec<Job>, now: i64) -> Pending {
    let mut out = Vec::with_capacity(batch.len());
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
        out.push((job, result));
    }
    out
}

fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        other => StoreError::Backend(other.to_string()),
    }
}
