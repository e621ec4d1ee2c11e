//! PostgreSQL store for Steadyflow.
//!
//! [`PgStore`] implements [`Store`] on tokio-postgres with a deadpool connection pool.
//! Several engine nodes may share one database:
//!
//! - **Writes of engine commands** (`apply`) are group-committed: each instance belongs
//!   to one of a few writer tasks (by a hash of its id), which commits whatever is queued
//!   as one transaction of multi-row `UNNEST` statements, pipelined into two round trips
//!   (see `apply/`). Instance updates are optimistic (`version` column) and may carry a
//!   worker's lock guard; a change set that loses either is answered
//!   [`StoreError::Conflict`], and the rest of its batch commits. A change set made from
//!   a version its writer has already replaced is answered at once, without a round
//!   trip.
//! - **Lookups** by primary key on the hot path (an external task with its instance, an
//!   instance) are batched too: one `= ANY($1)` query answers all queued lookups, on a
//!   connection shared through tokio-postgres' pipelining (`lookups.rs`, `shared.rs`).
//! - **Acquisition** of external tasks and timers uses `FOR UPDATE SKIP LOCKED`, so two
//!   nodes never hand the same row to two workers. Fetching reads, per topic, two index
//!   range scans that never step over locked tasks (`writes.rs`).
//! - **Journal**: every change appends journal rows in its own transaction. A row's `seq`
//!   starts with its transaction's id, and [`Store::journal_since`] returns only rows of
//!   transactions older than the snapshot's `xmin`: a reader resuming from the last seq
//!   it saw never skips a late commit. (Any transaction with an xid that is still open in
//!   the cluster, in any database, holds the journal back until it ends.) Its `tx_time`
//!   is the engine's: the latest time of the change sets a transaction commits (or the
//!   `now` of the call); rows carry their own change set's time (`resolved_at`, history).
//! - **History**: one row per change set, holding its history records as one compact JSONB
//!   document (`steadyflow_store::encode_history`).
//! - **Migrations** are plain SQL files (`migrations/postgres`) embedded in the binary,
//!   tracked in `schema_version` and applied under an advisory lock; a schema newer than
//!   the binary is refused (`steadyflow_store::migrations`).
//! - Timestamps are BIGINT milliseconds since the epoch; JSON columns are JSONB, except
//!   an instance's runtime (JSON) and the journal's row images (TEXT), which the
//!   database never looks into (see the migration). Tables and columns mirror the SQLite
//!   store's, so archives are portable between backends.
//!
//! Statements are prepared once per connection. The hot path (primary-key lookups, the
//! group commit, fetch-and-lock) runs on generic plans cached per connection, made under
//! planner settings that leave nested loops and index scans as the only choices
//! (`pipeline::SESSION_OPTIONS`); everything else runs in a transaction with custom plans
//! and the usual planner.
//!
//! `testing` (with the cargo feature `testing`) gives tests a throwaway database.

mod apply;
mod error;
mod idempotency;
mod lookups;
mod migrate;
mod pipeline;
mod plain;
mod reads;
pub mod recovery;
mod rows;
mod shared;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
mod watch;
mod writes;

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use steadyflow_store::*;
use tokio::sync::oneshot;

pub use apply::WriterStats;
pub use migrate::latest_version as schema_version;

use crate::error::{db_err, pool_err};

/// Tuning of a [`PgStore`]. Deserializable (every field optional, defaults below) so a
/// configuration file can carry it as is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PgOptions {
    /// Maximum pooled connections (writers, fetches and other queries together).
    pub pool_size: usize,
    /// Writer tasks committing `apply` batches in parallel; each owns a share of the
    /// instances.
    pub writers: usize,
    /// Most change sets committed in one transaction.
    pub max_batch: usize,
    /// How long a caller waits for a free connection before `Unavailable` (written in
    /// milliseconds: `acquire_timeout_ms`).
    #[serde(rename = "acquire_timeout_ms", with = "millis")]
    pub acquire_timeout: Duration,
    /// Connections shared by all primary-key lookups, which tokio-postgres pipelines
    /// (see `shared.rs`); in addition to `pool_size`. 0 runs them on pooled connections.
    pub shared_readers: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: 16,
            writers: 4,
            max_batch: 64,
            acquire_timeout: Duration::from_secs(10),
            shared_readers: 1,
        }
    }
}

/// A [`Duration`] as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// PostgreSQL-backed [`Store`]. Cheap to share behind an `Arc`; its writer and lookup
/// tasks run on the Tokio runtime that called [`PgStore::connect`] and stop when the
/// store (every clone) is dropped.
///
/// Clones share the pool, the writers and the lookup batcher.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    readers: std::sync::Arc<shared::SharedReaders>,
    lookups: lookups::Lookups,
    writer: std::sync::Arc<apply::Writers>,
    counters: std::sync::Arc<apply::Counters>,
    /// Plain-row changes, kept up to date by a listener (see `watch.rs`).
    watch: std::sync::Arc<steadyflow_store::users::PlainWatch>,
    /// Dropped with the last clone: stops the listener.
    _listener: watch::Alive,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl PgStore {
    /// Connects with default [`PgOptions`] and migrates the schema.
    ///
    /// `url` is a libpq-style URL (`postgres://user:pass@host:5432/db`) or key/value
    /// string (`host=… user=… dbname=…`); `sslmode` and `sslrootcert` choose TLS (see
    /// [`tls`]).
    pub async fn connect(url: &str) -> Result<PgStore> {
        Self::connect_with(url, PgOptions::default()).await
    }

    pub async fn connect_with(url: &str, options: PgOptions) -> Result<PgStore> {
        let mut config = tls::PgTarget::parse(url)?;
        let plan = pipeline::SESSION_OPTIONS;
        let opts = match config.get_options() {
            Some(existing) if !existing.is_empty() => format!("{existing} {plan}"),
            _ => plan.to_string(),
        };
        config.options(opts);
        if config.get_application_name().is_none() {
            config.application_name("steadyflow");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let pool_of = |size: usize| {
            let manager = Manager::from_config(
                config.config().clone(),
                config.tls.clone(),
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Pool::builder(manager)
                .max_size(size)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(options.acquire_timeout))
                .create_timeout(Some(options.acquire_timeout))
                .build()
                .map_err(|e| StoreError::Backend(format!("building connection pool: {e}")))
        };
        let pool = pool_of(options.pool_size.max(options.writers + 1))?;
        let reader_pool = pool_of(2 * options.shared_readers.max(1))?;
        {
            let mut client = pool.get().await.map_err(pool_err)?;
            migrate::migrate(&mut client).await?;
        }
        let counters = std::sync::Arc::new(apply::Counters::default());
        let writer = std::sync::Arc::new(apply::Writers::spawn(
            pool.clone(),
            options.writers,
            options.max_batch,
            counters.clone(),
        ));
        let readers = std::sync::Arc::new(shared::SharedReaders::new(
            reader_pool,
            options.shared_readers,
        ));
        let watch = std::sync::Arc::new(steadyflow_store::users::PlainWatch::default());
        let mut listener = config.clone();
        listener.application_name("steadyflow-listener");
        let alive = watch::spawn(listener, watch.clone());
        Ok(PgStore {
            watch,
            _listener: alive,
            lookups: lookups::Lookups::spawn(readers.clone(), pool.clone()),
            pool,
            readers,
            writer,
            counters,
        })
    }

    /// Counters of the group-commit writer (transactions, committed change sets,
    /// conflicts), e.g. for metrics: committed / transactions is the mean batch size.
    pub fn writer_stats(&self) -> WriterStats {
        self.counters.snapshot()
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Client> {
        self.pool.get().await.map_err(pool_err)
    }
}

/// Runs a write transaction in its own task, so a caller that stops waiting (a
/// dropped HTTP request) never interrupts it between `BEGIN` and `COMMIT`: a pipelined
/// transaction cut short would return its connection to the pool still open.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(work)
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<()> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(db_err)?;
        Ok(())
    }

    async fn live_counts(&self) -> Result<Option<steadyflow_store::LiveCounts>> {
        self.read_live_counts().await.map(Some)
    }

    async fn deploy(&self, defs: Vec<NewDefinition>, now: Timestamp) -> Result<Vec<Deployed>> {
        let this = self.clone();
        detached(async move { this.write_deploy(defs, now).await }).await
    }

    async fn definition(&self, id: &str) -> Result<Option<DefinitionRecord>> {
        self.read_definition("id", id).await
    }

    async fn latest_definition(&self, key: &str) -> Result<Option<DefinitionRecord>> {
        self.read_definition("key", key).await
    }

    async fn list_definitions(&self, filter: &DefinitionFilter) -> Result<Vec<DefinitionRecord>> {
        self.read_definitions(filter).await
    }

    async fn instance(&self, id: &str) -> Result<Option<InstanceRecord>> {
        self.lookups.instance(id).await
    }

    async fn list_instances(&self, filter: &InstanceFilter) -> Result<Vec<InstanceRecord>> {
        self.read_instances(filter).await
    }

    async fn apply(&self, change: ChangeSet) -> Result<()> {
        let images = RowImages::of(&change)?;
        let (reply, done) = oneshot::channel();
        self.writer
            .send(apply::Job {
                change,
                images,
                reply,
            })
            .await
            .map_err(|_| StoreError::Unavailable("PostgreSQL writer stopped".into()))?;
        done.await
            .map_err(|_| StoreError::Unavailable("PostgreSQL writer stopped".into()))?
    }

    async fn task(&self, id: &str) -> Result<Option<TaskRecord>> {
        self.read_task(id).await
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        self.read_tasks(filter).await
    }

    async fn claim_task(&self, id: &str, user: &str, now: Timestamp) -> Result<TaskRecord> {
        let (this, id, user) = (self.clone(), id.to_string(), user.to_string());
        detached(async move { this.write_claim(&id, &user, now).await }).await
    }

    async fn external_task(&self, id: &str) -> Result<Option<ExternalTaskRecord>> {
        self.read_external_task(id).await
    }

    async fn external_task_with_instance(
        &self,
        id: &str,
    ) -> Result<Option<(ExternalTaskRecord, InstanceRecord)>> {
        self.lookups.external_with_instance(id).await
    }

    async fn list_external_tasks(
        &self,
        filter: &ExternalTaskFilter,
    ) -> Result<Vec<ExternalTaskRecord>> {
        self.read_external_tasks(filter).await
    }

    async fn lock_tasks(&self, request: &TaskLocking<'_>) -> Result<Vec<LockedTask>> {
        let (this, worker, topics) = (
            self.clone(),
            request.worker.to_string(),
            request.topics.to_vec(),
        );
        let (max, now) = (request.max, request.now);
        detached(async move {
            let request = TaskLocking {
                worker: &worker,
                max,
                topics: &topics,
                now,
            };
            this.write_fetch_and_lock(&request).await
        })
        .await
    }

    async fn lock_due_timers(&self, request: &TimerLocking<'_>) -> Result<Vec<TimerRecord>> {
        let (this, owner) = (self.clone(), request.owner.to_string());
        let (now, lock_until, limit) = (request.now, request.lock_until, request.limit);
        detached(async move {
            let request = TimerLocking {
                owner: &owner,
                now,
                lock_until,
                limit,
            };
            this.write_acquire_timers(&request).await
        })
        .await
    }

    async fn list_timers(&self, instance_id: &str) -> Result<Vec<TimerRecord>> {
        self.read_timers(instance_id).await
    }

    async fn next_timer_due(&self) -> Result<Option<Timestamp>> {
        self.read_next_timer_due().await
    }

    async fn list_incidents(&self, filter: &IncidentFilter) -> Result<Vec<IncidentRecord>> {
        self.read_incidents(filter).await
    }

    async fn history(&self, instance_id: &str) -> Result<Vec<HistoryRecord>> {
        self.read_history(instance_id).await
    }

    async fn history_page(
        &self,
        instance_id: &str,
        after: Option<HistoryPosition>,
        limit: usize,
    ) -> Result<Vec<(HistoryPosition, HistoryRecord)>> {
        self.read_history_page(instance_id, after, limit).await
    }

    async fn journal_since(&self, after: i64, limit: usize) -> Result<Vec<JournalRecord>> {
        self.read_journal(after, limit).await
    }

    async fn plain_write(&self, time: Timestamp, writes: Vec<users::PlainWrite>) -> Result<()> {
        let this = self.clone();
        detached(async move {
            this.write_plain(time, &writes).await?;
            // This node's cache drops what it holds at once; the others when the write's
            // NOTIFY reaches their listeners.
            this.watch.bump();
            Ok(())
        })
        .await
    }

    async fn plain_row(
        &self,
        table: &'static steadyflow_store::recovery::TableSpec,
        key: &str,
    ) -> Result<Option<serde_json::Value>> {
        self.read_plain_row(table, key).await
    }

    async fn plain_rows(
        &self,
        table: &'static steadyflow_store::recovery::TableSpec,
    ) -> Result<Vec<serde_json::Value>> {
        self.read_plain_rows(table).await
    }

    fn plain_watch(&self) -> Option<std::sync::Arc<users::PlainWatch>> {
        Some(self.watch.clone())
    }
}
