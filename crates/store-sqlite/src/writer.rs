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
use steadyflow_store::schema::to_ms;
use steadyflow_store::{Result, StoreError, Timestamp};
use tokio::sync::{mpsc as queue, oneshot};

use crate::backend_err;

type AnyBox = Box<dyn Any + Send>;
type Work = Box<dyn FnMut(&Connection, i64) -> Result<AnyBox> + Send>;

struct Job {
    /// The command's time on the engine's clock (`None`: it writes nothing).
    time: Option<i64>,
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

pub(crate) struct Writer {
    queue: queue::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread on `conn` (SQLite's automatic WAL checkpoints run there;
    /// a separate checkpointing thread measured no faster on this machine) and the
    /// syncer thread flushing `wal` (the database's `-wal` file).
    /// At most `queue_bound` commands wait for the writer (callers beyond that wait for
    /// room); one transaction takes at most `max_batch` of them.
    pub(crate) fn start(
        conn: Connection,
        wal: PathBuf,
        queue_bound: usize,
        max_batch: usize,
    ) -> Result<Writer> {
        // The WAL exists once the connection is in WAL mode and has written (migrations).
        let wal_file = std::fs::File::open(&wal).map_err(|e| {
            StoreError::Unavailable(format!(
                "SQLite write-ahead log {} is missing ({e}): is the database in WAL mode?",
                wal.display()
            ))
        })?;
        // Journal times go on from the last one written, across restarts too.
        let last: i64 = conn
            .query_row(
                "SELECT COALESCE((SELECT tx_time FROM journal ORDER BY seq DESC LIMIT 1), 0)",
                [],
                |r| r.get(0),
            )
            .map_err(backend_err)?;
        let clock = TxClock { last };
        let (queue, rx) = queue::channel::<Job>(queue_bound.max(1));
        let max_batch = max_batch.max(1);
        let (to_sync, synced) = mpsc::channel::<Pending>();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        std::thread::Builder::new()
            .name("sqlite-syncer".into())
            .spawn(move || sync_loop(wal, wal_file, synced, flag))
            .map_err(|e| StoreError::Backend(format!("cannot start syncer thread: {e}")))?;
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, rx, max_batch, clock, to_sync, failed))
            .map_err(|e| StoreError::Backend(format!("cannot start writer thread: {e}")))?;
        Ok(Writer { queue })
    }

    /// Runs `f` inside the next batch transaction and resolves once that batch is
    /// durably committed. `time` is the command's time on the engine's clock (`None`
    /// for work that writes nothing); `f` gets the connection and the transaction's
    /// journal time in milliseconds (see [`TxClock`]). It may run twice (see
    /// [`commit_batch`]), so it must only read what it captured. It must fail with
    /// `Conflict`, `NotFound` or `Rejected` only before it wrote anything.
    pub(crate) async fn run<R, F>(&self, time: Option<Timestamp>, mut f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnMut(&Connection, i64) -> Result<R> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let work: Work = Box::new(move |c, t| f(c, t).map(|r| Box::new(r) as AnyBox));
        let time = time.map(to_ms);
        self.queue
            .send(Job { time, work, reply })
            .await
            .map_err(|_| StoreError::Unavailable("SQLite writer has stopped".into()))?;
        let (out, work) = rx
            .await
            .map_err(|_| StoreError::Unavailable("SQLite writer has stopped".into()))?;
        drop(work);
        #[allow(
            clippy::expect_used,
            reason = "the box was made from an `R` by `work` above, and only this call receives it"
        )]
        let out = out?
            .downcast::<R>()
            .expect("writer returns the type it was given");
        Ok(*out)
    }
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// The journal's `tx_time` of each transaction: the latest time of the commands it
/// commits (it commits after each of them was made), but never earlier than the
/// previous transaction's, so that `tx_time` never decreases along `seq` even when the
/// engine's clock steps back or two nodes' clocks differ (a point-in-time restore cuts
/// the journal by `tx_time`). Commands without a time take the previous one.
#[derive(Debug, Default)]
struct TxClock {
    last: i64,
}

impl TxClock {
    fn next(&mut self, times: impl IntoIterator<Item = Option<i64>>) -> i64 {
        let latest = times.into_iter().flatten().max().unwrap_or(self.last);
        self.last = self.last.max(latest);
        self.last
    }
}

fn run(
    conn: Connection,
    mut rx: queue::Receiver<Job>,
    max_batch: usize,
    mut clock: TxClock,
    to_sync: mpsc::Sender<Pending>,
    failed: Arc<AtomicBool>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
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
        let pending = commit_batch(&conn, batch, &mut clock);
        steadyflow_store::gauges::record_batch("sqlite", n, began.elapsed());
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
        let began = std::time::Instant::now();
        let synced = file.sync_data();
        metrics::histogram!(steadyflow_store::gauges::WAL_SYNC_SECONDS)
            .record(began.elapsed().as_secs_f64());
        if let Err(e) = synced {
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
fn commit_batch(conn: &Connection, mut batch: Vec<Job>, clock: &mut TxClock) -> Pending {
    let now = clock.next(batch.iter().map(|job| job.time));
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        let err = backend_err(e);
        return batch
            .into_iter()
            .map(|job| (job, Err(err.clone())))
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
            return one_by_one(conn, batch, clock);
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
                .map(|job| (job, Err(err.clone())))
                .collect()
        }
    }
}

fn one_by_one(conn: &Connection, batch: Vec<Job>, clock: &mut TxClock) -> Pending {
    let mut out = Vec::with_capacity(batch.len());
    for mut job in batch {
        let now = clock.next([job.time]);
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

#[cfg(test)]
mod tests {
    use super::TxClock;

    #[test]
    fn tx_time_is_the_latest_command_time_and_never_decreases() {
        let mut clock = TxClock::default();
        assert_eq!(clock.next([Some(100), Some(300), None]), 300);
        // The engine's clock stepped back (or another node's runs behind): clamped.
        assert_eq!(clock.next([Some(200)]), 300);
        assert_eq!(clock.next([None]), 300);
        assert_eq!(clock.next([Some(400), Some(350)]), 400);
    }
}
