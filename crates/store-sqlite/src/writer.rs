//! The single writer thread and its group commit.

use std::any::Any;
use std::sync::mpsc;

use rusqlite::Connection;
use steadyflow_store::{Result, StoreError};
use tokio::sync::oneshot;

use crate::backend_err;

type AnyBox = Box<dyn Any + Send>;
type Work = Box<dyn FnOnce(&Connection, i64) -> Result<AnyBox> + Send>;

struct Job {
    work: Work,
    reply: oneshot::Sender<Result<AnyBox>>,
}

/// Most commands one transaction takes; more wait for the next batch.
const MAX_BATCH: usize = 512;

pub(crate) struct Writer {
    queue: mpsc::Sender<Job>,
}

impl Writer {
    pub(crate) fn start(conn: Connection) -> Result<Writer> {
        let (queue, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, rx))
            .map_err(|e| StoreError::Backend(format!("cannot start writer thread: {e}")))?;
        Ok(Writer { queue })
    }

    /// Runs `f` inside the next batch transaction (in its own savepoint) and resolves
    /// once that batch is durably committed. `f` gets the connection and the batch's
    /// commit time in milliseconds.
    pub(crate) async fn run<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection, i64) -> Result<R> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let work: Work = Box::new(move |c, t| f(c, t).map(|r| Box::new(r) as AnyBox));
        self.queue
            .send(Job { work, reply })
            .map_err(|_| StoreError::Unavailable("SQLite writer has stopped".into()))?;
        let out = rx
            .await
            .map_err(|_| StoreError::Unavailable("SQLite writer has stopped".into()))??;
        Ok(*out.downcast::<R>().expect("writer returns the type it was given"))
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
        commit_batch(&conn, batch);
    }
    tracing::debug!("SQLite writer stopped");
}

fn commit_batch(conn: &Connection, batch: Vec<Job>) {
    let now = chrono::Utc::now().timestamp_millis();
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        let err = backend_err(e);
        for job in batch {
            let _ = job.reply.send(Err(clone_err(&err)));
        }
        return;
    }
    let mut done: Vec<(oneshot::Sender<Result<AnyBox>>, Result<AnyBox>)> = Vec::with_capacity(batch.len());
    for job in batch {
        let result = match exec(conn, "SAVEPOINT cmd") {
            Ok(()) => {
                let r = (job.work)(conn, now);
                let end = if r.is_ok() {
                    exec(conn, "RELEASE cmd")
                } else {
                    exec(conn, "ROLLBACK TO cmd").and_then(|_| exec(conn, "RELEASE cmd"))
                };
                match end {
                    Ok(()) => r,
                    Err(e) => Err(backend_err(e)),
                }
            }
            Err(e) => Err(backend_err(e)),
        };
        done.push((job.reply, result));
    }
    match exec(conn, "COMMIT") {
        Ok(()) => {
            for (reply, result) in done {
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            let err = backend_err(e);
            tracing::error!(error = %err, "SQLite batch commit failed; rolling back");
            let _ = exec(conn, "ROLLBACK");
            for (reply, result) in done {
                let _ = reply.send(result.and(Err(clone_err(&err))));
            }
        }
    }
}

fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        other => StoreError::Backend(other.to_string()),
    }
}
