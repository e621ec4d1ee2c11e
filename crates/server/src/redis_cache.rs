//! The optional Redis cache (`STEADYFLOW_REDIS_URL`): a [`Store`] in front of the
//! database that answers the reads worth caching from Redis and everything else from the
//! database. Redis is never needed: while it is down, slow, flushed or restarting, every
//! call goes to the database, `/health` shows the component `redis` down, and the cache
//! comes back by itself.
//!
//! What is cached, under one key prefix (default `steadyflow:`):
//! * `def:<id>`: a deployed definition (immutable once deployed; kept a day).
//! * `row:<table>:<key>`: a user or API token row, or its absence — the two reads behind
//!   every authenticated request. Each entry carries the *auth epoch* it was read at;
//!   every write of users or tokens bumps `auth:epoch` (`INCR`) after the database
//!   committed, so an entry read before a change is never used after it, on any node
//!   sharing the Redis (a reader fetches the epoch and the entry in one `MGET`). When
//!   the bump fails (Redis away), this node bypasses the cached rows until it has bumped
//!   the epoch; entries expire after [`ROW_TTL`] anyway.
//!
//! Every Redis call has a deadline ([`OP_TIMEOUT`]); one that fails or times out marks
//! Redis down, and from then on calls skip Redis at once until the monitor (a ping
//! every second) sees it answer again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::{Value, json};
use steadyflow_store::recovery::TableSpec;
use steadyflow_store::users::PlainWrite;
use steadyflow_store::*;
use tokio::sync::RwLock;

/// Deadline of one Redis call; past it the call counts as failed.
pub const OP_TIMEOUT: Duration = Duration::from_millis(250);
/// How long a cached user or token row lives at most.
pub const ROW_TTL: u64 = 300;
/// How long a cached definition lives.
const DEF_TTL: u64 = 86_400;
/// The monitor's period.
const PROBE_EVERY: Duration = Duration::from_secs(1);

pub struct RedisCache {
    client: redis::Client,
    conn: RwLock<Option<ConnectionManager>>,
    prefix: String,
    up: AtomicBool,
    /// A user/token write whose epoch bump has not reached Redis yet.
    epoch_pending: AtomicBool,
    /// Why Redis counts as down (for `/health`).
    reason: std::sync::Mutex<String>,
}

impl RedisCache {
    /// A cache on `url`, not connected yet: [`probe`](Self::probe) connects (the
    /// [`monitor`](Self::monitor) probes every second).
    pub fn new(url: &str, prefix: &str) -> anyhow::Result<Arc<Self>> {
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("invalid STEADYFLOW_REDIS_URL: {e}"))?;
        Ok(Arc::new(RedisCache {
            client,
            conn: RwLock::new(None),
            prefix: prefix.to_string(),
            up: AtomicBool::new(false),
            epoch_pending: AtomicBool::new(false),
            reason: std::sync::Mutex::new("not connected yet".into()),
        }))
    }

    fn set_health(&self, up: Result<(), String>) {
        steadyflow_api::metrics::set_redis_up(up.is_ok());
        if let Err(why) = up {
            *self
                .reason
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = why;
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn mark_down(&self, why: &str) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                reason = why,
                "Redis cache unavailable: serving from the database"
            );
        }
        self.set_health(Err(why.to_string()));
    }

    /// Connects, pings every second, reconnects; returns when `stop` turns true.
    pub async fn monitor(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            self.probe().await;
            tokio::select! {
                _ = tokio::time::sleep(PROBE_EVERY) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Connects if not connected, then pings; sets the state.
    pub async fn probe(&self) {
        if self.conn.read().await.is_none() {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_millis(500)))
                .set_response_timeout(Some(OP_TIMEOUT))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            let made = tokio::time::timeout(
                Duration::from_secs(2),
                ConnectionManager::new_with_config(self.client.clone(), config),
            )
            .await;
            match made {
                Ok(Ok(c)) => *self.conn.write().await = Some(c),
                Ok(Err(e)) => return self.mark_down(&format!("cannot connect: {e}")),
                Err(_) => return self.mark_down("connecting timed out"),
            }
        }
        let Some(mut conn) = self.conn.read().await.clone() else {
            return;
        };
        let started = Instant::now();
        match ping_once(&mut conn).await {
            Ok(()) => {
                if self.epoch_pending.load(Ordering::Relaxed) && self.bump_epoch(&mut conn).await {
                    self.epoch_pending.store(false, Ordering::Relaxed);
                }
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                        "Redis cache available"
                    );
                }
                self.set_health(Ok(()));
            }
            Err(why) => self.mark_down(&why),
        }
    }

    /// The connection, when Redis counts as up.
    async fn conn(&self) -> Option<ConnectionManager> {
        if !self.is_up() {
            return None;
        }
        self.conn.read().await.clone()
    }

    /// Runs one Redis call with the deadline; a failure marks Redis down.
    async fn run<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(OP_TIMEOUT, f).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.mark_down(&format!("{what}: {e}"));
                None
            }
            Err(_) => {
                self.mark_down(&format!("{what}: timed out"));
                None
            }
        }
    }

    async fn bump_epoch(&self, conn: &mut ConnectionManager) -> bool {
        let key = self.key("auth:epoch");
        self.run("INCR", conn.incr::<_, _, i64>(key, 1))
            .await
            .is_some()
    }

    async fn get_definition(&self, id: &str) -> Option<DefinitionRecord> {
        let mut conn = self.conn().await?;
        let text: Option<String> = self
            .run("GET", conn.get(self.key(&format!("def:{id}"))))
            .await?;
        serde_json::from_str(&text?).ok()
    }

    async fn put_definition(&self, def: &DefinitionRecord) {
        let Some(mut conn) = self.conn().await else {
            return;
        };
        let Ok(text) = serde_json::to_string(def) else {
            return;
        };
        let key = self.key(&format!("def:{}", def.id));
        let _ = self
            .run("SET", conn.set_ex::<_, _, ()>(key, text, DEF_TTL))
            .await;
    }

    /// `(epoch, cached row)`: `row` is `Some(line or null)` on a hit at the current epoch.
    async fn get_row(&self, table: &TableSpec, key: &str) -> Option<(i64, Option<Value>)> {
        if self.epoch_pending.load(Ordering::Relaxed) {
            return None;
        }
        let mut conn = self.conn().await?;
        let keys = [
            self.key("auth:epoch"),
            self.key(&format!("row:{}:{key}", table.name)),
        ];
        let (epoch, entry): (Option<i64>, Option<String>) =
            self.run("MGET", conn.mget(&keys)).await?;
        let epoch = epoch.unwrap_or(0);
        let hit = entry
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .filter(|v| v["e"].as_i64() == Some(epoch))
            .map(|mut v| v["row"].take());
        Some((epoch, hit))
    }

    async fn put_row(&self, table: &TableSpec, key: &str, epoch: i64, row: &Option<Value>) {
        let Some(mut conn) = self.conn().await else {
            return;
        };
        let entry = json!({"e": epoch, "row": row}).to_string();
        let key = self.key(&format!("row:{}:{key}", table.name));
        let _ = self
            .run("SET", conn.set_ex::<_, _, ()>(key, entry, ROW_TTL))
            .await;
    }

    /// After a user or token write committed: invalidate every cached row (everywhere).
    async fn rows_changed(&self) {
        let bumped = match self.conn().await {
            Some(mut conn) => self.bump_epoch(&mut conn).await,
            None => false,
        };
        if !bumped {
            // Until the bump reaches Redis, this node reads those rows from the database.
            self.epoch_pending.store(true, Ordering::Relaxed);
            tracing::warn!(
                "Redis cache: user/token change not yet announced; bypassing cached rows until Redis answers"
            );
        }
    }
}

/// `/health`'s view of the cache: down (with the reason) while calls skip Redis, else
/// one `PING` within the deadline.
#[async_trait]
impl steadyflow_api::Probe for RedisCache {
    async fn ping(&self) -> std::result::Result<(), String> {
        let Some(mut conn) = self.conn().await else {
            return Err(self
                .reason
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone());
        };
        ping_once(&mut conn).await
    }
}

/// One `PING` within [`OP_TIMEOUT`]; `Err` with a short reason.
async fn ping_once(conn: &mut ConnectionManager) -> std::result::Result<(), String> {
    match tokio::time::timeout(OP_TIMEOUT, redis::cmd("PING").query_async::<String>(conn)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("ping failed: {e}")),
        Err(_) => Err("ping timed out".into()),
    }
}

/// A [`Store`] whose cacheable reads go through a [`RedisCache`] first.
pub struct CachedStore {
    inner: Arc<dyn Store>,
    cache: Arc<RedisCache>,
}

impl CachedStore {
    pub fn new(inner: Arc<dyn Store>, cache: Arc<RedisCache>) -> Self {
        CachedStore { inner, cache }
    }
}

fn cached_table(table: &TableSpec) -> bool {
    matches!(table.name, "users" | "api_tokens")
}

#[async_trait]
impl Store for CachedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    async fn deploy(&self, defs: Vec<NewDefinition>, now: Timestamp) -> Result<Vec<Deployed>> {
        self.inner.deploy(defs, now).await
    }
    async fn definition(&self, id: &str) -> Result<Option<DefinitionRecord>> {
        if let Some(d) = self.cache.get_definition(id).await {
            return Ok(Some(d));
        }
        let d = self.inner.definition(id).await?;
        if let Some(d) = &d {
            self.cache.put_definition(d).await;
        }
        Ok(d)
    }
    async fn latest_definition(&self, key: &str) -> Result<Option<DefinitionRecord>> {
        self.inner.latest_definition(key).await
    }
    async fn list_definitions(&self, filter: &DefinitionFilter) -> Result<Vec<DefinitionRecord>> {
        self.inner.list_definitions(filter).await
    }
    async fn instance(&self, id: &str) -> Result<Option<InstanceRecord>> {
        self.inner.instance(id).await
    }
    async fn list_instances(&self, filter: &InstanceFilter) -> Result<Vec<InstanceRecord>> {
        self.inner.list_instances(filter).await
    }
    async fn apply(&self, change: ChangeSet) -> Result<()> {
        self.inner.apply(change).await
    }
    async fn task(&self, id: &str) -> Result<Option<TaskRecord>> {
        self.inner.task(id).await
    }
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        self.inner.list_tasks(filter).await
    }
    async fn claim_task(&self, id: &str, user: &str, now: Timestamp) -> Result<TaskRecord> {
        self.inner.claim_task(id, user, now).await
    }
    async fn external_task(&self, id: &str) -> Result<Option<ExternalTaskRecord>> {
        self.inner.external_task(id).await
    }
    async fn external_task_with_instance(
        &self,
        id: &str,
    ) -> Result<Option<(ExternalTaskRecord, InstanceRecord)>> {
        self.inner.external_task_with_instance(id).await
    }
    async fn list_external_tasks(
        &self,
        filter: &ExternalTaskFilter,
    ) -> Result<Vec<ExternalTaskRecord>> {
        self.inner.list_external_tasks(filter).await
    }
    async fn fetch_and_lock(
        &self,
        worker: &str,
        max: usize,
        topics: &[TopicLock],
        now: Timestamp,
    ) -> Result<Vec<LockedTask>> {
        self.inner.fetch_and_lock(worker, max, topics, now).await
    }
    async fn lock_tasks(&self, request: &TaskLocking<'_>) -> Result<Vec<LockedTask>> {
        self.inner.lock_tasks(request).await
    }
    async fn acquire_due_timers(
        &self,
        owner: &str,
        now: Timestamp,
        lock_until: Timestamp,
        limit: usize,
    ) -> Result<Vec<TimerRecord>> {
        self.inner
            .acquire_due_timers(owner, now, lock_until, limit)
            .await
    }
    async fn lock_due_timers(&self, request: &TimerLocking<'_>) -> Result<Vec<TimerRecord>> {
        self.inner.lock_due_timers(request).await
    }
    async fn list_timers(&self, instance_id: &str) -> Result<Vec<TimerRecord>> {
        self.inner.list_timers(instance_id).await
    }
    async fn next_timer_due(&self) -> Result<Option<Timestamp>> {
        self.inner.next_timer_due().await
    }
    async fn list_incidents(&self, filter: &IncidentFilter) -> Result<Vec<IncidentRecord>> {
        self.inner.list_incidents(filter).await
    }
    async fn history(&self, instance_id: &str) -> Result<Vec<HistoryRecord>> {
        self.inner.history(instance_id).await
    }
    async fn history_page(
        &self,
        instance_id: &str,
        after: Option<HistoryPosition>,
        limit: usize,
    ) -> Result<Vec<(HistoryPosition, HistoryRecord)>> {
        self.inner.history_page(instance_id, after, limit).await
    }
    async fn journal_since(&self, after: i64, limit: usize) -> Result<Vec<JournalRecord>> {
        self.inner.journal_since(after, limit).await
    }
    async fn plain_write(&self, time: Timestamp, writes: Vec<PlainWrite>) -> Result<()> {
        let touches_cache = writes
            .iter()
            .any(|w| w.entity.plain_table().is_ok_and(cached_table));
        self.inner.plain_write(time, writes).await?;
        if touches_cache {
            self.cache.rows_changed().await;
        }
        Ok(())
    }
    async fn plain_row(&self, table: &'static TableSpec, key: &str) -> Result<Option<Value>> {
        if !cached_table(table) {
            return self.inner.plain_row(table, key).await;
        }
        let epoch = match self.cache.get_row(table, key).await {
            Some((_, Some(row))) => return Ok((!row.is_null()).then_some(row)),
            Some((epoch, None)) => Some(epoch),
            None => None,
        };
        let row = self.inner.plain_row(table, key).await?;
        if let Some(epoch) = epoch {
            self.cache.put_row(table, key, epoch, &row).await;
        }
        Ok(row)
    }
    async fn plain_rows(&self, table: &'static TableSpec) -> Result<Vec<Value>> {
        self.inner.plain_rows(table).await
    }
    fn plain_watch(&self) -> Option<Arc<steadyflow_store::users::PlainWatch>> {
        self.inner.plain_watch()
    }
    async fn live_counts(&self) -> Result<Option<LiveCounts>> {
        self.inner.live_counts().await
    }
}

/// A store, and the Redis cache in front of it if there is one.
pub type Wrapped = (Arc<dyn Store>, Option<Arc<RedisCache>>);

/// The store with the cache in front when `args` names a Redis, and the cache.
pub fn wrap(store: Arc<dyn Store>, args: &crate::config::RedisArgs) -> anyhow::Result<Wrapped> {
    match args.redis_url.as_deref().filter(|u| !u.is_empty()) {
        None => Ok((store, None)),
        Some(url) => {
            let cache = RedisCache::new(url, &args.redis_prefix)?;
            tracing::info!(prefix = %args.redis_prefix, "Redis cache configured");
            Ok((
                Arc::new(CachedStore::new(store, cache.clone())),
                Some(cache),
            ))
        }
    }
}
