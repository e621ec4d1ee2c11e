//! SQLite store for Steadyflow, the embedded default.
//!
//! One writer thread owns the only write connection and commits queued commands in
//! batches (group commit); a syncer thread flushes the WAL (one `fdatasync` serves every
//! batch committed since the last) and only then answers the batches' callers, while the
//! writer runs the next batch (see `writer.rs`: as durable as `synchronous=FULL`).
//! Commands run back to back without savepoints; a command that fails cleanly (lost
//! optimistic lock, not found, rejected) has written nothing, and any other failure rolls
//! the batch back and re-runs its commands one transaction each. Reads go to a few reader
//! threads with read-only connections (WAL lets them run beside the writer). Both queues
//! are bounded ([`SqliteOptions`]): when one is full, callers wait for room.
//!
//! The times written are the engine's: each command's own (history, `resolved_at`) and,
//! for the journal's `tx_time`, the latest command time of the transaction, never less
//! than the previous transaction's (see `writer.rs`).

mod idempotency;
mod migrate;
mod plain;
mod reads;
pub mod recovery;
mod rows;
mod writer;
mod writes;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};
use steadyflow_store::*;

use writer::Writer;

/// Tuning of a [`SqliteStore`]. Deserializable (every field optional, defaults below)
/// so a configuration file can carry it as is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteOptions {
    /// Commands waiting for the writer thread at most; further callers wait for room
    /// (back-pressure instead of an ever-growing queue).
    pub write_queue: usize,
    /// Most commands committed in one transaction.
    pub max_batch: usize,
    /// Queries waiting for a reader thread at most; further callers wait for room.
    pub read_queue: usize,
    /// Reader threads, each with its own read-only connection.
    pub readers: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            write_queue: 4096,
            max_batch: 512,
            read_queue: 1024,
            // Enough to overlap with the writer on a small machine.
            readers: 3,
        }
    }
}

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    path: PathBuf,
    /// Held while the store is open: a restore refuses a database a server uses.
    _serve_lock: recovery::ServeLock,
    writer: Writer,
    readers: Readers,
    /// Plain-row changes. Always live: the serve lock keeps every other process from
    /// opening the file, so every plain write goes through this store.
    watch: Arc<steadyflow_store::users::PlainWatch>,
}

/// A fixed set of reader threads, each owning one read-only connection (warm statement
/// cache), taking queries from one shared, bounded queue.
struct Readers {
    queue: tokio::sync::mpsc::Sender<ReadJob>,
}

type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

impl Readers {
    fn start(path: &Path, options: &SqliteOptions) -> Result<Readers> {
        let (queue, rx) = tokio::sync::mpsc::channel::<ReadJob>(options.read_queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..options.readers.max(1) {
            let conn = open_conn(path, true)?;
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("sqlite-reader-{n}"))
                .spawn(move || {
                    loop {
                        // A reader that panicked while waiting poisons nothing worth
                        // refusing: the receiver is still whole.
                        let next = rx
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .blocking_recv();
                        match next {
                            Some(job) => job(&conn),
                            None => return,
                        }
                    }
                })
                .map_err(|e| StoreError::Backend(format!("cannot start reader thread: {e}")))?;
        }
        Ok(Readers { queue })
    }
}

/// Maps a driver error: a value that does not convert (a bad timestamp, unknown state,
/// broken JSON) is a corrupt row; an unreachable or refusing database is `Unavailable`;
/// anything else is `Backend`.
pub(crate) fn backend_err(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::FromSqlConversionFailure(idx, _, cause) => {
            StoreError::Corrupt(format!("column {idx}: {cause}"))
        }
        rusqlite::Error::InvalidColumnType(_, name, ty) => {
            StoreError::Corrupt(format!("column {name} holds a value of type {ty}"))
        }
        rusqlite::Error::IntegralValueOutOfRange(idx, v) => {
            StoreError::Corrupt(format!("column {idx}: {v} is out of range"))
        }
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::CannotOpen
                    | rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::ReadOnly
                    | rusqlite::ErrorCode::SystemIoFailure
            ) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

fn open_conn(path: &Path, read_only: bool) -> Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot open SQLite database {}: {e}",
            path.display()
        ))
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(backend_err)?;
    conn.set_prepared_statement_cache_capacity(64);
    // A larger page cache (16 MiB): the working set of a busy engine (open instances,
    // their tasks, the index tails) should not be read with syscalls. 64 MiB measured
    // slower: SQLite scans its page hash at every commit.
    conn.execute_batch("PRAGMA cache_size=-16384;")
        .map_err(backend_err)?;
    if !read_only {
        // 8 KiB pages (set before the file is created; measured 6 % faster than 4 KiB in
        // alternating runs: half the WAL frames per batch). `synchronous=NORMAL`: the
        // syncer thread flushes the WAL before any caller hears of a commit (writer.rs).
        conn.execute_batch(
            "PRAGMA page_size=8192; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF; PRAGMA wal_autocheckpoint=8192;",
        )
        .map_err(backend_err)?;
    }
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database file with default [`SqliteOptions`] and
    /// runs migrations.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens (creating if needed) the database file and runs migrations.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let serve_lock = recovery::ServeLock::acquire(&path)?;
        let mut conn = open_conn(&path, false)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(backend_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "SQLite database {} cannot use write-ahead logging (journal mode is {mode}); \
                 put it on a local filesystem",
                path.display()
            )));
        }
        migrate::run(&mut conn)?;
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        Ok(SqliteStore {
            watch: Arc::new(steadyflow_store::users::PlainWatch::live()),
            writer: Writer::start(conn, wal, options.write_queue, options.max_batch)?,
            readers: Readers::start(&path, &options)?,
            path,
            _serve_lock: serve_lock,
        })
    }

    /// Opens from a `sqlite://PATH` (or `sqlite:PATH`) URL with default options.
    pub fn open_url(url: &str) -> Result<Self> {
        Self::open_url_with(url, SqliteOptions::default())
    }

    /// Opens from a `sqlite://PATH` (or `sqlite:PATH`) URL.
    pub fn open_url_with(url: &str, options: SqliteOptions) -> Result<Self> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| StoreError::Unavailable(format!("not a sqlite URL: {url}")))?;
        Self::open_with(path, options)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: ReadJob = Box::new(move |conn| {
            let _ = tx.send(f(conn).map_err(backend_err));
        });
        self.readers
            .queue
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable("SQLite readers have stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("SQLite reader failed".into()))?
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<()> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())))
            .await?;
        // The writer thread must be alive too.
        self.writer.run(None, |_, _| Ok(())).await
    }

    async fn live_counts(&self) -> Result<Option<steadyflow_store::LiveCounts>> {
        let counts = self
            .read(|c| {
                c.query_row(steadyflow_store::gauges::LIVE_COUNTS_SQL, [], |r| {
                    Ok(steadyflow_store::LiveCounts {
                        running_instances: r.get::<_, i64>(0)?.max(0) as u64,
                        open_tasks: r.get::<_, i64>(1)?.max(0) as u64,
                        open_external_tasks: r.get::<_, i64>(2)?.max(0) as u64,
                    })
                })
            })
            .await?;
        Ok(Some(counts))
    }

    async fn deploy(&self, defs: Vec<NewDefinition>, now: Timestamp) -> Result<Vec<Deployed>> {
        self.writer
            .run(Some(now), move |c, tx| writes::deploy(c, tx, &defs, now))
            .await
    }

    async fn definition(&self, id: &str) -> Result<Option<DefinitionRecord>> {
        let id = id.to_string();
        self.read(move |c| reads::definition(c, "id", &id)).await
    }

    async fn latest_definition(&self, key: &str) -> Result<Option<DefinitionRecord>> {
        let key = key.to_string();
        self.read(move |c| reads::definition(c, "key", &key)).await
    }

    async fn list_definitions(&self, filter: &DefinitionFilter) -> Result<Vec<DefinitionRecord>> {
        let filter = filter.clone();
        self.read(move |c| reads::list_definitions(c, &filter))
            .await
    }

    async fn instance(&self, id: &str) -> Result<Option<InstanceRecord>> {
        let id = id.to_string();
        self.read(move |c| reads::instance(c, &id)).await
    }

    async fn list_instances(&self, filter: &InstanceFilter) -> Result<Vec<InstanceRecord>> {
        let filter = filter.clone();
        self.read(move |c| reads::list_instances(c, &filter)).await
    }

    async fn apply(&self, change: ChangeSet) -> Result<()> {
        let encoded = writes::Encoded::of(&change)?;
        self.writer
            .run(Some(change.time), move |c, tx| {
                writes::apply(c, tx, &change, &encoded)
            })
            .await
    }

    async fn task(&self, id: &str) -> Result<Option<TaskRecord>> {
        let id = id.to_string();
        self.read(move |c| reads::task(c, &id)).await
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        let filter = filter.clone();
        self.read(move |c| reads::list_tasks(c, &filter)).await
    }

    async fn claim_task(&self, id: &str, user: &str, now: Timestamp) -> Result<TaskRecord> {
        let (id, user) = (id.to_string(), user.to_string());
        self.writer
            .run(Some(now), move |c, tx| {
                writes::claim_task(c, tx, &id, &user)
            })
            .await
    }

    async fn external_task(&self, id: &str) -> Result<Option<ExternalTaskRecord>> {
        let id = id.to_string();
        self.read(move |c| reads::external_task(c, &id)).await
    }

    async fn external_task_with_instance(
        &self,
        id: &str,
    ) -> Result<Option<(ExternalTaskRecord, InstanceRecord)>> {
        let id = id.to_string();
        self.read(move |c| {
            let Some(task) = reads::external_task(c, &id)? else {
                return Ok(None);
            };
            Ok(reads::instance(c, &task.instance_id)?.map(|i| (task, i)))
        })
        .await
    }

    async fn list_external_tasks(
        &self,
        filter: &ExternalTaskFilter,
    ) -> Result<Vec<ExternalTaskRecord>> {
        let filter = filter.clone();
        self.read(move |c| reads::list_external_tasks(c, &filter))
            .await
    }

    async fn lock_tasks(&self, request: &TaskLocking<'_>) -> Result<Vec<LockedTask>> {
        let (worker, topics) = (request.worker.to_string(), request.topics.to_vec());
        let (max, now) = (request.max, request.now);
        let locked = self
            .writer
            .run(Some(now), move |c, tx| {
                let request = TaskLocking {
                    worker: &worker,
                    max,
                    topics: &topics,
                    now,
                };
                writes::fetch_and_lock(c, tx, &request)
            })
            .await?;
        if locked.is_empty() {
            return Ok(Vec::new());
        }
        // The variables are read after the lock committed, on a reader (instance rows are
        // never deleted, so each locked task's instance is there).
        let ids: Vec<String> = locked.iter().map(|t| t.instance_id.clone()).collect();
        let vars = self.read(move |c| reads::variables_of(c, &ids)).await?;
        locked
            .into_iter()
            .map(|task| {
                let text = vars.get(&task.instance_id).ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "external task {} belongs to a missing instance {}",
                        task.id, task.instance_id
                    ))
                })?;
                let variables = serde_json::from_str(text).map_err(|e| {
                    StoreError::Corrupt(format!("variables of instance {}: {e}", task.instance_id))
                })?;
                Ok(LockedTask { task, variables })
            })
            .collect()
    }

    async fn lock_due_timers(&self, request: &TimerLocking<'_>) -> Result<Vec<TimerRecord>> {
        let owner = request.owner.to_string();
        let TimerLocking {
            now,
            lock_until,
            limit,
            ..
        } = *request;
        self.writer
            .run(Some(now), move |c, tx| {
                writes::acquire_due_timers(c, tx, &owner, now, lock_until, limit)
            })
            .await
    }

    async fn list_timers(&self, instance_id: &str) -> Result<Vec<TimerRecord>> {
        let id = instance_id.to_string();
        self.read(move |c| reads::list_timers(c, &id)).await
    }

    async fn next_timer_due(&self) -> Result<Option<Timestamp>> {
        self.read(reads::next_timer_due).await
    }

    async fn list_incidents(&self, filter: &IncidentFilter) -> Result<Vec<IncidentRecord>> {
        let filter = filter.clone();
        self.read(move |c| reads::list_incidents(c, &filter)).await
    }

    async fn history(&self, instance_id: &str) -> Result<Vec<HistoryRecord>> {
        let id = instance_id.to_string();
        self.read(move |c| reads::history(c, &id)).await
    }

    async fn history_page(
        &self,
        instance_id: &str,
        after: Option<HistoryPosition>,
        limit: usize,
    ) -> Result<Vec<(HistoryPosition, HistoryRecord)>> {
        let id = instance_id.to_string();
        self.read(move |c| reads::history_page(c, &id, after, limit))
            .await
    }

    async fn journal_since(&self, after: i64, limit: usize) -> Result<Vec<JournalRecord>> {
        // One writer: sequence order is commit order, and readers only see committed rows.
        self.read(move |c| reads::journal_since(c, after, limit))
            .await
    }

    async fn plain_write(&self, time: Timestamp, writes: Vec<users::PlainWrite>) -> Result<()> {
        self.writer
            .run(Some(time), move |c, tx| plain::write(c, tx, &writes))
            .await?;
        self.watch.bump();
        Ok(())
    }

    async fn plain_row(
        &self,
        table: &'static steadyflow_store::recovery::TableSpec,
        key: &str,
    ) -> Result<Option<serde_json::Value>> {
        let key = key.to_string();
        // Reads answer rusqlite errors; these carry store errors (corrupt lines) too.
        self.read(move |c| Ok(plain::row(c, table, &key))).await?
    }

    async fn plain_rows(
        &self,
        table: &'static steadyflow_store::recovery::TableSpec,
    ) -> Result<Vec<serde_json::Value>> {
        self.read(move |c| Ok(plain::rows(c, table))).await?
    }

    fn plain_watch(&self) -> Option<Arc<users::PlainWatch>> {
        Some(self.watch.clone())
    }
}
