//! An in-memory [`Store`]: the executable reference of the trait's rules, and a store
//! for fast tests of the code above it (the engine's retry and hot-cache paths run in
//! microseconds on it).
//!
//! Everything lives in one [`Mutex`]-guarded state, so every call is one atomic,
//! serializable step: `apply` checks everything that can refuse it (lock guard,
//! optimistic lock, duplicate ids) and prepares every row image before it changes
//! anything, so a refused or failed change set leaves no trace, as a rolled-back
//! transaction would. It passes the same [`conformance`](crate::conformance) suite as
//! the SQL stores.
//!
//! Nothing is persisted, and the journal grows without bound: for tests and demos.
//!
//! Always compiled (no feature): it is small, needs no dependency the crate does not
//! have already, and code that no binary calls is left out when linking.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::DateTime;
use serde::Serialize;
use serde_json::Value;

use crate::*;

/// See the [module documentation](self).
pub struct MemoryStore {
    state: Mutex<State>,
    /// Every writer lives in this process: always live.
    watch: std::sync::Arc<users::PlainWatch>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            state: Mutex::default(),
            watch: std::sync::Arc::new(users::PlainWatch::live()),
        }
    }
}

/// Rows by id. Ordered maps: listings sort explicitly anyway, but iteration (and with
/// it anything a test prints) is deterministic.
#[derive(Default)]
struct State {
    /// By id, with their XML.
    definitions: BTreeMap<String, DefinitionRecord>,
    instances: BTreeMap<String, InstanceRecord>,
    tasks: BTreeMap<String, TaskRecord>,
    externals: BTreeMap<String, ExternalTaskRecord>,
    timers: BTreeMap<String, TimerRecord>,
    incidents: BTreeMap<String, IncidentRecord>,
    /// Per instance, in insertion order.
    history: BTreeMap<String, Vec<HistoryRecord>>,
    /// `seq` is the position + 1.
    journal: Vec<JournalRecord>,
    /// Plain rows (users, tokens) by table and key, as table lines.
    plain: BTreeMap<(&'static str, String), Value>,
}

/// A journal row waiting for its `seq`: entity, entity id, op, image.
type Pending = (&'static str, String, &'static str, Value);

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn state(&self) -> Result<MutexGuard<'_, State>> {
        // Nothing panics while holding the lock (every fallible step comes before the
        // first change), so a poisoned lock means a bug: refuse rather than guess.
        self.state
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store poisoned by a panic".into()))
    }
}

fn image<T: Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| StoreError::Backend(format!("row image: {e}")))
}

/// The commit time of a change set: milliseconds, like every store keeps.
// The lead's merge replaces this by the change set's own time (the engine's clock).
/// The engine's time of the command, at the millisecond precision stores keep.
fn commit_time(change: &ChangeSet) -> Timestamp {
    let t = change.time;
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

fn duplicate(what: &str, id: &str) -> StoreError {
    // What a SQL store reports for a unique-key violation: the whole command is refused.
    StoreError::Backend(format!("duplicate key: {what} {id} exists already"))
}

impl State {
    fn log(&mut self, tx_time: Timestamp, rows: Vec<Pending>) {
        for (entity, entity_id, op, row) in rows {
            let seq = self.journal.len() as i64 + 1;
            self.journal.push(JournalRecord {
                seq,
                tx_time,
                entity: JournalEntity::parse(entity).unwrap_or(JournalEntity::Instance),
                entity_id,
                op: JournalOp::parse(op).unwrap_or(JournalOp::Update),
                row,
            });
        }
    }

    fn latest(&self, key: &str) -> Option<&DefinitionRecord> {
        self.definitions
            .values()
            .filter(|d| d.key == key)
            .max_by_key(|d| d.version)
    }

    /// Refuses `ch` as the SQL stores do, before anything is written: a lock guard that
    /// no longer holds or a moved version is `Conflict`; an id that exists already
    /// (after this change set's own removals) is a `Backend` error.
    fn check(&self, ch: &ChangeSet) -> Result<()> {
        let id = &ch.instance.id;
        if let Some(g) = &ch.lock_guard {
            let held = self.externals.get(&g.task_id).is_some_and(|t| {
                t.worker_id.as_deref() == Some(g.worker_id.as_str())
                    && t.lock_expires_at.is_some_and(|until| until > g.now)
            });
            if !held {
                return Err(StoreError::Conflict(id.clone()));
            }
        }
        let stored = self.instances.get(id).map(|i| i.version);
        match ch.expected_version {
            None if stored.is_some() => return Err(duplicate("instance", id)),
            Some(v) if stored != Some(v) => return Err(StoreError::Conflict(id.clone())),
            _ => {}
        }
        fn unique<'a, T>(
            what: &str,
            created: impl Iterator<Item = &'a String>,
            stored: &BTreeMap<String, T>,
            removed: &[String],
        ) -> Result<()> {
            let mut seen = std::collections::HashSet::new();
            for id in created {
                if !seen.insert(id) || (stored.contains_key(id) && !removed.contains(id)) {
                    return Err(duplicate(what, id));
                }
            }
            Ok(())
        }
        unique(
            "task",
            ch.tasks_created.iter().map(|t| &t.id),
            &self.tasks,
            &ch.tasks_removed,
        )?;
        unique(
            "timer",
            ch.timers_created.iter().map(|t| &t.id),
            &self.timers,
            &ch.timers_removed,
        )?;
        unique(
            "incident",
            ch.incidents_created.iter().map(|i| &i.id),
            &self.incidents,
            &[],
        )
    }

    fn apply(&mut self, ch: ChangeSet) -> Result<()> {
        self.check(&ch)?;
        let tx = commit_time(&ch);
        let id = ch.instance.id.clone();

        // Every image first (the only fallible part), so what follows cannot fail half-way.
        let instance_image = image(&ch.instance)?;
        let task_images = ch
            .tasks_created
            .iter()
            .map(image)
            .collect::<Result<Vec<_>>>()?;
        let external_images = ch
            .external_upserted
            .iter()
            .map(image)
            .collect::<Result<Vec<_>>>()?;
        let timer_images = ch
            .timers_created
            .iter()
            .map(image)
            .collect::<Result<Vec<_>>>()?;
        let incident_images = ch
            .incidents_created
            .iter()
            .map(image)
            .collect::<Result<Vec<_>>>()?;
        let mut resolved = Vec::new();
        for rid in &ch.incidents_resolved {
            let found = ch
                .incidents_created
                .iter()
                .rev()
                .find(|i| &i.id == rid)
                .or_else(|| self.incidents.get(rid));
            if let Some(inc) = found {
                let row = IncidentRecord {
                    resolved_at: Some(tx),
                    ..inc.clone()
                };
                let img = image(&row)?;
                resolved.push((row, img));
            }
        }
        let history_image = match crate::encode_history(&id, &ch.history)
            .map_err(|e| StoreError::Backend(format!("history image: {e}")))?
        {
            Some(raw) => Some(
                serde_json::from_str::<Value>(raw.get())
                    .map_err(|e| StoreError::Backend(format!("history image: {e}")))?,
            ),
            None => None,
        };

        // Written in the SQL stores' order, so the journal reads the same.
        let mut rows: Vec<Pending> = Vec::new();
        let op = if ch.expected_version.is_none() {
            "insert"
        } else {
            "update"
        };
        rows.push(("instance", id.clone(), op, instance_image));
        self.instances.insert(id.clone(), ch.instance);
        for tid in ch.tasks_removed {
            if self.tasks.remove(&tid).is_some() {
                rows.push(("task", tid, "delete", Value::Null));
            }
        }
        for (t, img) in ch.tasks_created.into_iter().zip(task_images) {
            rows.push(("task", t.id.clone(), "insert", img));
            self.tasks.insert(t.id.clone(), t);
        }
        for eid in ch.external_removed {
            if self.externals.remove(&eid).is_some() {
                rows.push(("externalTask", eid, "delete", Value::Null));
            }
        }
        for (e, img) in ch.external_upserted.into_iter().zip(external_images) {
            let eid = e.id.clone();
            let op = match self.externals.insert(eid.clone(), e) {
                Some(_) => "update",
                None => "insert",
            };
            rows.push(("externalTask", eid, op, img));
        }
        for tid in ch.timers_removed {
            if self.timers.remove(&tid).is_some() {
                rows.push(("timer", tid, "delete", Value::Null));
            }
        }
        for (t, img) in ch.timers_created.into_iter().zip(timer_images) {
            rows.push(("timer", t.id.clone(), "insert", img));
            self.timers.insert(t.id.clone(), t);
        }
        for (inc, img) in ch.incidents_created.into_iter().zip(incident_images) {
            rows.push(("incident", inc.id.clone(), "insert", img));
            self.incidents.insert(inc.id.clone(), inc);
        }
        for (inc, img) in resolved {
            rows.push(("incident", inc.id.clone(), "update", img));
            self.incidents.insert(inc.id.clone(), inc);
        }
        if let Some(img) = history_image {
            rows.push(("history", id.clone(), "append", img));
            self.history.entry(id).or_default().extend(ch.history);
        }
        self.log(tx, rows);
        Ok(())
    }

    fn deploy(&mut self, defs: Vec<NewDefinition>, now: Timestamp) -> Result<Vec<Deployed>> {
        // Staged first: a later definition of the same key in this call sees the earlier.
        let mut staged: Vec<DefinitionRecord> = Vec::new();
        let mut out = Vec::with_capacity(defs.len());
        for d in defs {
            let latest = staged
                .iter()
                .rev()
                .find(|s| s.key == d.key)
                .or_else(|| self.latest(&d.key));
            if let Some(l) = latest.filter(|l| l.checksum == d.checksum) {
                out.push(Deployed {
                    definition: l.clone(),
                    created: false,
                });
                continue;
            }
            let version = latest.map_or(1, |l| l.version + 1);
            let record = DefinitionRecord {
                id: format!("{}:{version}", d.key),
                key: d.key,
                version,
                name: d.name,
                checksum: d.checksum,
                xml: Some(d.xml),
                deployed_at: now,
            };
            staged.push(record.clone());
            out.push(Deployed {
                definition: record,
                created: true,
            });
        }
        let rows = staged
            .iter()
            .map(|r| Ok(("definition", r.id.clone(), "insert", image(r)?)))
            .collect::<Result<Vec<Pending>>>()?;
        for r in staged {
            self.definitions.insert(r.id.clone(), r);
        }
        self.log(now, rows);
        Ok(out)
    }

    fn claim_task(&mut self, id: &str, user: &str, now: Timestamp) -> Result<TaskRecord> {
        let Some(task) = self.tasks.get(id) else {
            return Err(StoreError::NotFound {
                what: "task",
                id: id.to_string(),
            });
        };
        if let Some(holder) = task.assignee.as_deref().filter(|h| *h != user) {
            return Err(StoreError::Rejected(format!(
                "task {id} is already claimed by {holder}"
            )));
        }
        let claimed = TaskRecord {
            assignee: Some(user.to_string()),
            ..task.clone()
        };
        let img = image(&claimed)?;
        self.tasks.insert(id.to_string(), claimed.clone());
        self.log(now, vec![("task", id.to_string(), "update", img)]);
        Ok(claimed)
    }

    fn fetch_and_lock(
        &mut self,
        worker: &str,
        max: usize,
        topics: &[TopicLock],
        now: Timestamp,
    ) -> Result<Vec<LockedTask>> {
        let duration = |topic: &str| {
            topics
                .iter()
                .find(|t| t.topic == topic)
                .map(|t| t.lock_duration_ms)
        };
        let mut candidates: Vec<&ExternalTaskRecord> = self
            .externals
            .values()
            .filter(|t| duration(&t.topic).is_some())
            .filter(|t| t.retries.is_none_or(|r| r > 0) && t.retry_at.is_none_or(|at| at <= now))
            .filter(|t| t.lock_expires_at.is_none_or(|until| until <= now))
            .collect();
        // Expired locks first (a crashed worker's tasks are the oldest) by expiry, then
        // never-locked tasks, each oldest first.
        candidates.sort_by(|a, b| {
            let key = |t: &ExternalTaskRecord| {
                (t.lock_expires_at.is_none(), t.lock_expires_at, t.created_at)
            };
            (key(a), &a.id).cmp(&(key(b), &b.id))
        });
        let mut locked = Vec::with_capacity(max.min(candidates.len()));
        let mut rows = Vec::new();
        for t in candidates.into_iter().take(max) {
            let lock_ms = duration(&t.topic).unwrap_or(0);
            let task = ExternalTaskRecord {
                worker_id: Some(worker.to_string()),
                lock_expires_at: Some(now + chrono::Duration::milliseconds(lock_ms)),
                ..t.clone()
            };
            let variables = match self.instances.get(&task.instance_id) {
                Some(i) => i.variables.clone(),
                None => {
                    return Err(StoreError::Corrupt(format!(
                        "external task {} belongs to a missing instance {}",
                        task.id, task.instance_id
                    )));
                }
            };
            rows.push(("externalTask", task.id.clone(), "update", image(&task)?));
            locked.push(LockedTask { task, variables });
        }
        for l in &locked {
            self.externals.insert(l.task.id.clone(), l.task.clone());
        }
        self.log(now, rows);
        Ok(locked)
    }

    fn acquire_due_timers(
        &mut self,
        owner: &str,
        now: Timestamp,
        lock_until: Timestamp,
        limit: usize,
    ) -> Result<Vec<TimerRecord>> {
        let mut due: Vec<&TimerRecord> = self
            .timers
            .values()
            .filter(|t| t.due_at <= now && t.lock_until.is_none_or(|until| until <= now))
            .collect();
        due.sort_by(|a, b| (a.due_at, &a.id).cmp(&(b.due_at, &b.id)));
        let acquired: Vec<TimerRecord> = due
            .into_iter()
            .take(limit)
            .map(|t| TimerRecord {
                owner: Some(owner.to_string()),
                lock_until: Some(lock_until),
                ..t.clone()
            })
            .collect();
        let rows = acquired
            .iter()
            .map(|t| Ok(("timer", t.id.clone(), "update", image(t)?)))
            .collect::<Result<Vec<Pending>>>()?;
        for t in &acquired {
            self.timers.insert(t.id.clone(), t.clone());
        }
        self.log(now, rows);
        Ok(acquired)
    }
}

/// `rows` in `key` order, then id, at most `limit`.
fn listed<T: Clone, K: Ord>(
    rows: impl Iterator<Item = T>,
    key: impl Fn(&T) -> K,
    limit: Option<usize>,
) -> Vec<T> {
    let mut out: Vec<T> = rows.collect();
    out.sort_by_key(|r| key(r));
    out.truncate(limit.unwrap_or(usize::MAX));
    out
}

/// Keyset paging on ids: `id` comes after `after` (bytewise, as the databases compare).
fn behind(after: &Option<String>, id: &str) -> bool {
    after.as_deref().is_none_or(|a| id > a)
}

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<()> {
        self.state().map(drop)
    }

    async fn live_counts(&self) -> Result<Option<crate::LiveCounts>> {
        let state = self.state()?;
        let running = state.instances.values().filter(|i| !i.state.is_ended());
        Ok(Some(crate::LiveCounts {
            running_instances: running.count() as u64,
            open_tasks: state.tasks.len() as u64,
            open_external_tasks: state.externals.len() as u64,
        }))
    }

    async fn deploy(&self, defs: Vec<NewDefinition>, now: Timestamp) -> Result<Vec<Deployed>> {
        self.state()?.deploy(defs, now)
    }

    async fn definition(&self, id: &str) -> Result<Option<DefinitionRecord>> {
        Ok(self.state()?.definitions.get(id).cloned())
    }

    async fn latest_definition(&self, key: &str) -> Result<Option<DefinitionRecord>> {
        Ok(self.state()?.latest(key).cloned())
    }

    async fn list_definitions(&self, f: &DefinitionFilter) -> Result<Vec<DefinitionRecord>> {
        let state = self.state()?;
        let position = |d: &DefinitionRecord| (d.key.clone(), std::cmp::Reverse(d.version));
        let after = f
            .after
            .as_ref()
            .map(|a| (a.key.clone(), std::cmp::Reverse(a.version)));
        let rows = state
            .definitions
            .values()
            .filter(|d| f.key.as_ref().is_none_or(|k| &d.key == k))
            .filter(|d| after.as_ref().is_none_or(|a| &position(d) > a))
            .map(|d| DefinitionRecord {
                xml: None,
                ..d.clone()
            });
        Ok(listed(rows, position, f.limit))
    }

    async fn instance(&self, id: &str) -> Result<Option<InstanceRecord>> {
        Ok(self.state()?.instances.get(id).cloned())
    }

    async fn list_instances(&self, f: &InstanceFilter) -> Result<Vec<InstanceRecord>> {
        let state = self.state()?;
        let rows = state
            .instances
            .values()
            .filter(|i| f.state.is_none_or(|s| i.state == s))
            .filter(|i| {
                f.definition_key
                    .as_ref()
                    .is_none_or(|k| &i.definition_key == k)
            })
            .filter(|i| {
                f.business_key
                    .as_ref()
                    .is_none_or(|k| i.business_key.as_ref() == Some(k))
            })
            .filter(|i| behind(&f.after, &i.id))
            .cloned();
        Ok(listed(rows, |i| i.id.clone(), f.limit))
    }

    async fn apply(&self, change: ChangeSet) -> Result<()> {
        self.state()?.apply(change)
    }

    async fn task(&self, id: &str) -> Result<Option<TaskRecord>> {
        Ok(self.state()?.tasks.get(id).cloned())
    }

    async fn list_tasks(&self, f: &TaskFilter) -> Result<Vec<TaskRecord>> {
        let state = self.state()?;
        let rows = state
            .tasks
            .values()
            .filter(|t| {
                f.assignee
                    .as_ref()
                    .is_none_or(|a| t.assignee.as_ref() == Some(a))
            })
            .filter(|t| f.instance_id.as_ref().is_none_or(|i| &t.instance_id == i))
            .filter(|t| {
                f.candidate_group
                    .as_ref()
                    .is_none_or(|g| t.candidate_groups.contains(g))
            })
            .filter(|t| f.visible_to.as_ref().is_none_or(|v| v.sees(t)))
            .filter(|t| behind(&f.after, &t.id))
            .cloned();
        Ok(listed(rows, |t| t.id.clone(), f.limit))
    }

    async fn claim_task(&self, id: &str, user: &str, now: Timestamp) -> Result<TaskRecord> {
        self.state()?.claim_task(id, user, now)
    }

    async fn external_task(&self, id: &str) -> Result<Option<ExternalTaskRecord>> {
        Ok(self.state()?.externals.get(id).cloned())
    }

    async fn external_task_with_instance(
        &self,
        id: &str,
    ) -> Result<Option<(ExternalTaskRecord, InstanceRecord)>> {
        // One lock: the pair is one consistent snapshot.
        let state = self.state()?;
        Ok(state.externals.get(id).and_then(|t| {
            state
                .instances
                .get(&t.instance_id)
                .map(|i| (t.clone(), i.clone()))
        }))
    }

    async fn list_external_tasks(&self, f: &ExternalTaskFilter) -> Result<Vec<ExternalTaskRecord>> {
        let state = self.state()?;
        let rows = state
            .externals
            .values()
            .filter(|t| f.instance_id.as_ref().is_none_or(|i| &t.instance_id == i))
            .filter(|t| f.topic.as_ref().is_none_or(|topic| &t.topic == topic))
            .filter(|t| behind(&f.after, &t.id))
            .cloned();
        Ok(listed(rows, |t| t.id.clone(), f.limit))
    }

    async fn lock_tasks(&self, r: &TaskLocking<'_>) -> Result<Vec<LockedTask>> {
        self.state()?
            .fetch_and_lock(r.worker, r.max, r.topics, r.now)
    }

    async fn lock_due_timers(&self, r: &TimerLocking<'_>) -> Result<Vec<TimerRecord>> {
        self.state()?
            .acquire_due_timers(r.owner, r.now, r.lock_until, r.limit)
    }

    async fn list_timers(&self, instance_id: &str) -> Result<Vec<TimerRecord>> {
        let state = self.state()?;
        let rows = state
            .timers
            .values()
            .filter(|t| t.instance_id == instance_id)
            .cloned();
        Ok(listed(rows, |t| (t.due_at, t.id.clone()), None))
    }

    async fn next_timer_due(&self) -> Result<Option<Timestamp>> {
        Ok(self.state()?.timers.values().map(|t| t.due_at).min())
    }

    async fn list_incidents(&self, f: &IncidentFilter) -> Result<Vec<IncidentRecord>> {
        let state = self.state()?;
        let rows = state
            .incidents
            .values()
            .filter(|i| f.instance_id.as_ref().is_none_or(|id| &i.instance_id == id))
            .filter(|i| f.open.is_none_or(|open| open == i.resolved_at.is_none()))
            .filter(|i| behind(&f.after, &i.id))
            .cloned();
        Ok(listed(rows, |i| i.id.clone(), f.limit))
    }

    async fn history(&self, instance_id: &str) -> Result<Vec<HistoryRecord>> {
        Ok(self
            .state()?
            .history
            .get(instance_id)
            .cloned()
            .unwrap_or_default())
    }

    /// Positions here are `(event number, 0)`: the reference store keeps no rows.
    async fn history_page(
        &self,
        instance_id: &str,
        after: Option<HistoryPosition>,
        limit: usize,
    ) -> Result<Vec<(HistoryPosition, HistoryRecord)>> {
        let state = self.state()?;
        let Some(events) = state.history.get(instance_id) else {
            return Ok(Vec::new());
        };
        let positions = (0_i64..).map(|seq| HistoryPosition { seq, index: 0 });
        Ok(positions
            .zip(events.iter().cloned())
            .filter(|(p, _)| after.is_none_or(|a| *p > a))
            .take(limit)
            .collect())
    }

    async fn journal_since(&self, after: i64, limit: usize) -> Result<Vec<JournalRecord>> {
        let state = self.state()?;
        let start = state.journal.partition_point(|r| r.seq <= after);
        Ok(state.journal[start..].iter().take(limit).cloned().collect())
    }

    async fn plain_write(&self, time: Timestamp, writes: Vec<users::PlainWrite>) -> Result<()> {
        // Every line is made before anything changes: a bad write changes nothing.
        let mut lines = Vec::with_capacity(writes.len());
        for w in &writes {
            lines.push(users::plain_line(w)?);
        }
        let mut state = self.state()?;
        let mut pending: Vec<Pending> = Vec::new();
        for (w, (table, line)) in writes.into_iter().zip(lines) {
            let key = (table.name, w.id.clone());
            match line {
                Some(line) => {
                    let line: serde_json::Map<String, Value> =
                        line.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                    let op = if state.plain.insert(key, Value::Object(line)).is_some() {
                        "update"
                    } else {
                        "insert"
                    };
                    pending.push((w.entity.as_str(), w.id, op, w.image.unwrap_or_default()));
                }
                None => {
                    if state.plain.remove(&key).is_some() {
                        pending.push((w.entity.as_str(), w.id, "delete", Value::Null));
                    }
                }
            }
        }
        let time = DateTime::from_timestamp_millis(time.timestamp_millis()).unwrap_or(time);
        state.log(time, pending);
        drop(state);
        self.watch.bump();
        Ok(())
    }

    fn plain_watch(&self) -> Option<std::sync::Arc<users::PlainWatch>> {
        Some(self.watch.clone())
    }

    async fn plain_row(
        &self,
        table: &'static recovery::TableSpec,
        key: &str,
    ) -> Result<Option<Value>> {
        let state = self.state()?;
        Ok(state.plain.get(&(table.name, key.to_string())).cloned())
    }

    async fn plain_rows(&self, table: &'static recovery::TableSpec) -> Result<Vec<Value>> {
        let state = self.state()?;
        Ok(state
            .plain
            .iter()
            .filter(|((t, _), _)| *t == table.name)
            .map(|(_, v)| v.clone())
            .collect())
    }
}
