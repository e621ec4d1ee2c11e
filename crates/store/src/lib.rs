//! Storage for Steadyflow: the records the engine persists, the [`Store`] trait every
//! backend implements, and one [`conformance`] suite that every backend must pass.
//!
//! A store only persists; it never decides. The engine hands it a [`ChangeSet`] per
//! command, which the store commits atomically together with its journal rows.
//!
//! What does not depend on the database is here too, so that each backend keeps only
//! its SQL and its binding: [`deploy`] versioning, a change set's [`RowImages`], the
//! [`journal`] entries of a write, the [`migrations`] runner's rules, the [`listing`]
//! queries, and the [`schema`] (column lists, times).

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod deploy;
pub mod gauges;
mod history;
pub mod idempotency;
mod images;
pub mod journal;
pub mod listing;
mod locking;
pub mod memory;
pub mod migrations;
pub mod mode;
mod records;
pub mod recovery;
pub mod schema;
pub mod users;

pub use gauges::LiveCounts;
pub use history::{decode_history, encode_history};
pub use images::RowImages;
use locking::distinct_topics;
pub use locking::{TaskLocking, TimerLocking};
pub use records::*;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub type Timestamp = DateTime<Utc>;
pub type Vars = serde_json::Map<String, serde_json::Value>;

/// Every field is plain data, so one failure can be handed to every caller of a batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Optimistic lock lost: the instance changed since it was read.
    #[error("instance {0} was changed concurrently")]
    Conflict(String),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// A precondition held by the store failed (lock held by another worker, ...).
    #[error("{0}")]
    Rejected(String),
    /// The database cannot be reached or refused the operation.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Backend(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Why claiming task `id` for someone changed nothing, given the task as stored now
    /// (`None`: there is no such task).
    pub fn claim_refused(id: &str, stored: Option<TaskRecord>) -> StoreError {
        match stored {
            Some(t) => StoreError::Rejected(format!(
                "task {id} is already claimed by {}",
                t.assignee.unwrap_or_default()
            )),
            None => StoreError::NotFound {
                what: "task",
                id: id.to_string(),
            },
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Durable state of the engine. Implementations: SQLite (`steadyflow-store-sqlite`) and
/// PostgreSQL (`steadyflow-store-pg`); both run [`conformance`].
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Cheap round trip proving the database answers.
    async fn ping(&self) -> Result<()>;

    /// Deploys process definitions atomically: per key, an unchanged checksum returns the
    /// latest existing version, a changed one is stored as version + 1.
    async fn deploy(&self, defs: Vec<NewDefinition>, now: Timestamp) -> Result<Vec<Deployed>>;
    async fn definition(&self, id: &str) -> Result<Option<DefinitionRecord>>;
    async fn latest_definition(&self, key: &str) -> Result<Option<DefinitionRecord>>;
    /// Without XML bodies; by key, newest version first per key (one keyset page, see
    /// [`DefinitionFilter`]).
    async fn list_definitions(&self, filter: &DefinitionFilter) -> Result<Vec<DefinitionRecord>>;

    async fn instance(&self, id: &str) -> Result<Option<InstanceRecord>>;
    /// One keyset page in id order (see [`InstanceFilter`]); the same for every listing.
    async fn list_instances(&self, filter: &InstanceFilter) -> Result<Vec<InstanceRecord>>;
    /// Commits one engine command. `Err(Conflict)` when the instance version moved, or
    /// when the change set's lock guard no longer holds; then nothing is written.
    async fn apply(&self, change: ChangeSet) -> Result<()>;

    async fn task(&self, id: &str) -> Result<Option<TaskRecord>>;
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>>;
    /// Sets the assignee of an open task. `Rejected` when another user holds it.
    async fn claim_task(&self, id: &str, user: &str, now: Timestamp) -> Result<TaskRecord>;

    async fn external_task(&self, id: &str) -> Result<Option<ExternalTaskRecord>>;
    /// An external task together with its instance (one round trip where the backend can).
    async fn external_task_with_instance(
        &self,
        id: &str,
    ) -> Result<Option<(ExternalTaskRecord, InstanceRecord)>> {
        let Some(task) = self.external_task(id).await? else {
            return Ok(None);
        };
        Ok(self.instance(&task.instance_id).await?.map(|i| (task, i)))
    }
    async fn list_external_tasks(
        &self,
        filter: &ExternalTaskFilter,
    ) -> Result<Vec<ExternalTaskRecord>>;
    /// Locks up to `max` fetchable tasks of the given topics for `worker` (skipping rows
    /// another node is locking right now), oldest first. A topic listed twice counts
    /// once, with its first lock duration. Backends implement [`lock_tasks`](Self::lock_tasks).
    async fn fetch_and_lock(
        &self,
        worker: &str,
        max: usize,
        topics: &[TopicLock],
        now: Timestamp,
    ) -> Result<Vec<LockedTask>> {
        if topics.is_empty() || max == 0 {
            return Ok(Vec::new());
        }
        let topics = distinct_topics(topics);
        let request = TaskLocking {
            worker,
            max,
            topics: &topics,
            now,
        };
        self.lock_tasks(&request).await
    }
    /// [`fetch_and_lock`](Self::fetch_and_lock) of a request with at least one topic,
    /// each once, and `max > 0`.
    async fn lock_tasks(&self, request: &TaskLocking<'_>) -> Result<Vec<LockedTask>>;

    /// Locks up to `limit` timers due at `now` for `owner` until `lock_until`, earliest
    /// first. Backends implement [`lock_due_timers`](Self::lock_due_timers).
    async fn acquire_due_timers(
        &self,
        owner: &str,
        now: Timestamp,
        lock_until: Timestamp,
        limit: usize,
    ) -> Result<Vec<TimerRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let request = TimerLocking {
            owner,
            now,
            lock_until,
            limit,
        };
        self.lock_due_timers(&request).await
    }
    /// [`acquire_due_timers`](Self::acquire_due_timers) with `limit > 0`.
    async fn lock_due_timers(&self, request: &TimerLocking<'_>) -> Result<Vec<TimerRecord>>;
    async fn list_timers(&self, instance_id: &str) -> Result<Vec<TimerRecord>>;
    /// Earliest due time of any timer, for the scheduler's sleep.
    async fn next_timer_due(&self) -> Result<Option<Timestamp>>;

    async fn list_incidents(&self, filter: &IncidentFilter) -> Result<Vec<IncidentRecord>>;
    async fn history(&self, instance_id: &str) -> Result<Vec<HistoryRecord>>;
    /// One keyset page of an instance's history, oldest first: at most `limit` events
    /// behind `after`, each with its position.
    async fn history_page(
        &self,
        instance_id: &str,
        after: Option<HistoryPosition>,
        limit: usize,
    ) -> Result<Vec<(HistoryPosition, HistoryRecord)>>;

    /// Journal rows with `seq > after`, in sequence order, at most `limit`. Only rows
    /// whose transaction is visible and can no longer be overtaken are returned, so a
    /// reader that resumes from the last seq it saw never skips one.
    async fn journal_since(&self, after: i64, limit: usize) -> Result<Vec<JournalRecord>>;

    /// Writes plain rows ([`users`]: users, API tokens) in one transaction together with
    /// their journal rows, at `time` (the engine's clock). A row written whole is
    /// journaled as `insert` or `update` (whichever it was); removing a row that is not
    /// there writes nothing.
    async fn plain_write(&self, time: Timestamp, writes: Vec<users::PlainWrite>) -> Result<()>;
    /// The row of a plain table with this key, as a table line: an object keyed by column
    /// name, times in milliseconds, JSON columns embedded.
    async fn plain_row(
        &self,
        table: &'static recovery::TableSpec,
        key: &str,
    ) -> Result<Option<serde_json::Value>>;
    /// Every row of a plain table, in key order (small tables only).
    async fn plain_rows(
        &self,
        table: &'static recovery::TableSpec,
    ) -> Result<Vec<serde_json::Value>>;
    /// The watch that tells when plain rows may have changed (see [`users::PlainWatch`]).
    /// `None`: the store cannot tell, and plain rows must not be cached.
    fn plain_watch(&self) -> Option<std::sync::Arc<users::PlainWatch>> {
        None
    }
    /// How much work is in progress in the whole database (gauges for `/metrics`). Not
    /// free: callers cache it. `None` when the store does not count (test doubles).
    async fn live_counts(&self) -> Result<Option<LiveCounts>> {
        Ok(None)
    }
}
