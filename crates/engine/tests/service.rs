//! The command service on the in-memory store: a lost optimistic lock is retried on
//! fresh state, and a stale hot-cache entry costs a retry, never a wrong answer. Each
//! engine sees the store through a [`Probe`] that counts its commits (and can refuse
//! some), so the tests tell how many attempts a command took.

// A test crate: its helpers outside `#[test]` functions may unwrap too (clippy.toml
// exempts only test functions and `#[cfg(test)]` modules).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed unwrap is a failed test"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use chrono::{Duration, TimeZone, Utc};
use serde_json::json;
use steadyflow_engine::{Clock, Engine, EngineOptions, ManualClock, StartRequest};
use steadyflow_store::conformance::fixtures::vars;
use steadyflow_store::memory::MemoryStore;
use steadyflow_store::*;

const PROCESSES: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn" targetNamespace="t">
  <process id="steps" isExecutable="true">
    <startEvent id="s" />
    <sequenceFlow id="f1" sourceRef="s" targetRef="first" />
    <userTask id="first" />
    <sequenceFlow id="f2" sourceRef="first" targetRef="second" />
    <userTask id="second" />
    <sequenceFlow id="f3" sourceRef="second" targetRef="e" />
    <endEvent id="e" />
  </process>
  <process id="work" isExecutable="true">
    <startEvent id="ws" />
    <sequenceFlow id="w1" sourceRef="ws" targetRef="job" />
    <serviceTask id="job" camunda:type="external" camunda:topic="job" />
    <sequenceFlow id="w2" sourceRef="job" targetRef="we" />
    <endEvent id="we" />
  </process>
</definitions>"#;

const TIMER: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" targetNamespace="t">
  <process id="wait" isExecutable="true">
    <startEvent id="s" />
    <sequenceFlow id="f1" sourceRef="s" targetRef="w" />
    <intermediateCatchEvent id="w"><timerEventDefinition><timeDuration>PT10S</timeDuration></timerEventDefinition></intermediateCatchEvent>
    <sequenceFlow id="f2" sourceRef="w" targetRef="e" />
    <endEvent id="e" />
  </process>
</definitions>"#;

/// One engine's view of the shared store: counts the commits it tries and the
/// conflicts it gets, and refuses the next `inject` commits with `Conflict` (writing
/// nothing), as if another node had committed first.
struct Probe {
    inner: Arc<dyn Store>,
    applies: AtomicUsize,
    conflicts: AtomicUsize,
    inject: AtomicUsize,
}

impl Probe {
    fn over(inner: Arc<dyn Store>) -> Arc<Probe> {
        Arc::new(Probe {
            inner,
            applies: AtomicUsize::new(0),
            conflicts: AtomicUsize::new(0),
            inject: AtomicUsize::new(0),
        })
    }

    /// `(applies, conflicts)` since the last call.
    fn take(&self) -> (usize, usize) {
        (
            self.applies.swap(0, Ordering::SeqCst),
            self.conflicts.swap(0, Ordering::SeqCst),
        )
    }
}

#[async_trait]
impl Store for Probe {
    async fn plain_write(
        &self,
        time: Timestamp,
        writes: Vec<steadyflow_store::users::PlainWrite>,
    ) -> Result<()> {
        self.inner.plain_write(time, writes).await
    }
    async fn plain_row(
        &self,
        table: &'static steadyflow_store::recovery::TableSpec,
        key: &str,
    ) -> Result<Option<serde_json::Value>> {
        self.inner.plain_row(table, key).await
    }
    async fn plain_rows(
        &self,
        table: &'static steadyflow_store::recovery::TableSpec,
    ) -> Result<Vec<serde_json::Value>> {
        self.inner.plain_rows(table).await
    }
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
        self.inner.definition(id).await
    }
    async fn latest_definition(&self, key: &str) -> Result<Option<DefinitionRecord>> {
        self.inner.latest_definition(key).await
    }
    async fn list_definitions(
        &self,
        filter: &steadyflow_store::DefinitionFilter,
    ) -> Result<Vec<DefinitionRecord>> {
        self.inner.list_definitions(filter).await
    }
    async fn instance(&self, id: &str) -> Result<Option<InstanceRecord>> {
        self.inner.instance(id).await
    }
    async fn list_instances(&self, filter: &InstanceFilter) -> Result<Vec<InstanceRecord>> {
        self.inner.list_instances(filter).await
    }
    async fn apply(&self, change: ChangeSet) -> Result<()> {
        self.applies.fetch_add(1, Ordering::SeqCst);
        let injected = self
            .inject
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let result = if injected {
            Err(StoreError::Conflict(change.instance.id.clone()))
        } else {
            self.inner.apply(change).await
        };
        if matches!(result, Err(StoreError::Conflict(_))) {
            self.conflicts.fetch_add(1, Ordering::SeqCst);
        }
        result
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
    async fn lock_tasks(&self, r: &steadyflow_store::TaskLocking<'_>) -> Result<Vec<LockedTask>> {
        self.inner.lock_tasks(r).await
    }
    async fn lock_due_timers(
        &self,
        r: &steadyflow_store::TimerLocking<'_>,
    ) -> Result<Vec<TimerRecord>> {
        self.inner.lock_due_timers(r).await
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
        after: Option<steadyflow_store::HistoryPosition>,
        limit: usize,
    ) -> Result<Vec<(steadyflow_store::HistoryPosition, HistoryRecord)>> {
        self.inner.history_page(instance_id, after, limit).await
    }
    async fn journal_since(&self, after: i64, limit: usize) -> Result<Vec<JournalRecord>> {
        self.inner.journal_since(after, limit).await
    }
}

/// Two nodes (engines with their own hot caches) over one in-memory store, on one
/// manual clock, with the processes deployed.
struct Cluster {
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
    a: Engine,
    pa: Arc<Probe>,
    b: Engine,
    pb: Arc<Probe>,
}

async fn cluster() -> Cluster {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    ));
    let (pa, pb) = (Probe::over(store.clone()), Probe::over(store.clone()));
    let a = Engine::new(pa.clone(), clock.clone());
    let b = Engine::new(pb.clone(), clock.clone());
    a.deploy(PROCESSES).await.expect("deploy");
    Cluster {
        store,
        clock,
        a,
        pa,
        b,
        pb,
    }
}

impl Cluster {
    async fn stored(&self, id: &str) -> InstanceRecord {
        self.store.instance(id).await.unwrap().expect("instance")
    }

    async fn tasks_of(&self, id: &str) -> Vec<TaskRecord> {
        let filter = TaskFilter {
            instance_id: Some(id.to_string()),
            ..Default::default()
        };
        self.store.list_tasks(&filter).await.unwrap()
    }

    /// The instance updates the journal holds for `id`.
    async fn updates_of(&self, id: &str) -> usize {
        let rows = self.store.journal_since(0, 10_000).await.unwrap();
        rows.iter()
            .filter(|r| {
                r.entity.as_str() == "instance" && r.entity_id == id && r.op.as_str() == "update"
            })
            .count()
    }
}

#[tokio::test]
async fn a_lost_optimistic_lock_is_retried_on_fresh_state() {
    let c = cluster().await;
    let inst = c.a.start("steps", StartRequest::default()).await.unwrap();
    c.pa.take();

    c.pa.inject.store(1, Ordering::SeqCst);
    let out =
        c.a.set_variables(&inst.id, vars(json!({"k": 1})))
            .await
            .expect("the command succeeds on its second attempt");
    assert_eq!(c.pa.take(), (2, 1), "one refused commit, one retry");
    assert_eq!(out.version, inst.version + 1, "committed once");
    assert_eq!(out.variables.get("k"), Some(&json!(1)));
    assert_eq!(
        c.stored(&inst.id).await,
        out,
        "the answer is what is stored"
    );
    assert_eq!(
        c.updates_of(&inst.id).await,
        1,
        "the refused commit wrote nothing"
    );
}

#[tokio::test]
async fn a_command_that_keeps_losing_gives_up_after_bounded_attempts() {
    let c = cluster().await;
    let inst = c.a.start("steps", StartRequest::default()).await.unwrap();
    c.pa.take();

    c.pa.inject.store(usize::MAX, Ordering::SeqCst);
    let err =
        c.a.set_variables(&inst.id, vars(json!({"k": 1})))
            .await
            .expect_err("a command that never commits must fail");
    let (applies, conflicts) = c.pa.take();
    assert!(
        applies > 1 && applies <= 8 && conflicts == applies,
        "retried a bounded number of times: {applies} commits tried, {conflicts} conflicts"
    );
    assert!(err.to_string().contains("busy"), "{err}");
    assert_eq!(c.stored(&inst.id).await, inst, "nothing written");
}

#[tokio::test]
async fn a_stale_hot_copy_costs_one_retry_not_a_lost_update() {
    let c = cluster().await;
    // `a` starts the instance and keeps it hot at version 1; `b` moves it to version 2.
    let inst = c.a.start("steps", StartRequest::default()).await.unwrap();
    c.b.set_variables(&inst.id, vars(json!({"by_b": true})))
        .await
        .unwrap();
    assert_eq!(
        c.pb.take(),
        (1, 0),
        "b read the instance and committed at once"
    );
    c.pa.take();

    let out =
        c.a.set_variables(&inst.id, vars(json!({"by_a": true})))
            .await
            .expect("the stale copy is refused by the store, then read again");
    assert_eq!(
        c.pa.take(),
        (2, 1),
        "the stale copy's commit lost, the fresh one won"
    );
    assert_eq!(out.version, inst.version + 2, "on top of b's change");
    assert_eq!(
        out.variables.get("by_b"),
        Some(&json!(true)),
        "b's change kept"
    );
    assert_eq!(out.variables.get("by_a"), Some(&json!(true)));
    assert_eq!(c.stored(&inst.id).await, out);

    // Now `a`'s copy is current again: the next command needs no retry.
    c.a.set_variables(&inst.id, vars(json!({"again": 1})))
        .await
        .unwrap();
    assert_eq!(c.pa.take(), (1, 0), "a current hot copy commits at once");
}

#[tokio::test]
async fn a_stale_hot_copy_is_read_again_not_a_wrong_not_found() {
    let c = cluster().await;
    // `a` caches the instance waiting at `first`; `b` completes `first`.
    let inst = c.a.start("steps", StartRequest::default()).await.unwrap();
    let first = c.tasks_of(&inst.id).await;
    assert_eq!(first.len(), 1);
    c.b.complete_task(&first[0].id, vars(json!({"by": "b"})))
        .await
        .unwrap();
    let second = c.tasks_of(&inst.id).await;
    assert_eq!(second[0].activity_id, "second");
    c.pa.take();

    // `a`'s copy has never heard of `second`: completing it there fails, which on a
    // cached copy means "read again", not "no such task".
    let done =
        c.a.complete_task(&second[0].id, Vars::new())
            .await
            .expect("a reads the instance again instead of trusting its stale copy");
    assert_eq!(done.state, InstanceState::Completed);
    assert_eq!(
        done.variables.get("by"),
        Some(&json!("b")),
        "b's variables kept"
    );
    assert_eq!(
        c.pa.take(),
        (1, 0),
        "the stale copy was dropped before committing anything"
    );
    assert_eq!(c.stored(&inst.id).await, done);
    assert!(c.tasks_of(&inst.id).await.is_empty());
}

#[tokio::test]
async fn a_stale_hot_copy_does_not_revive_an_ended_instance() {
    let c = cluster().await;
    let inst = c.a.start("steps", StartRequest::default()).await.unwrap();
    let cancelled = c.b.cancel(&inst.id, "by b").await.unwrap();
    assert_eq!(cancelled.state, InstanceState::Cancelled);
    c.pa.take();

    let err =
        c.a.set_variables(&inst.id, vars(json!({"late": true})))
            .await
            .expect_err("an ended instance takes no command");
    assert!(err.to_string().contains("ended"), "{err}");
    assert_eq!(
        c.pa.take(),
        (1, 1),
        "the stale copy's commit was refused; the fresh read ended the command"
    );
    assert_eq!(
        c.stored(&inst.id).await,
        cancelled,
        "the cancelled instance is unchanged"
    );
}

#[tokio::test]
async fn completing_an_external_task_from_a_stale_hot_copy() {
    let c = cluster().await;
    let job = [TopicLock {
        topic: "job".into(),
        lock_duration_ms: 1_000,
    }];

    // The instance changed behind `a`'s back after `a` handed out the task: the hot
    // path's commit loses, the checked path commits on fresh state.
    let inst = c.a.start("work", StartRequest::default()).await.unwrap();
    let locked = c.a.fetch_and_lock("w1", 1, &job).await.unwrap();
    assert_eq!(locked.len(), 1);
    c.b.set_variables(&inst.id, vars(json!({"by_b": 1})))
        .await
        .unwrap();
    c.pa.take();
    let done =
        c.a.complete_external_task(&locked[0].task.id, "w1", vars(json!({"by_w1": 2})))
            .await
            .expect("completed on fresh state");
    assert_eq!(c.pa.take(), (2, 1), "one lost commit, one retry");
    assert_eq!(done.state, InstanceState::Completed);
    assert_eq!(
        done.variables.get("by_b"),
        Some(&json!(1)),
        "b's change kept"
    );
    assert_eq!(done.variables.get("by_w1"), Some(&json!(2)));
    assert_eq!(c.stored(&inst.id).await, done);

    // A lock that expired is refused on the hot path too (by the store's lock guard),
    // and the checked path says why; nothing changes.
    let inst = c.a.start("work", StartRequest::default()).await.unwrap();
    let locked = c.a.fetch_and_lock("w1", 1, &job).await.unwrap();
    assert_eq!(locked.len(), 1);
    c.clock.advance(Duration::milliseconds(2_000));
    c.pa.take();
    let err =
        c.a.complete_external_task(&locked[0].task.id, "w1", Vars::new())
            .await
            .expect_err("an expired lock completes nothing");
    assert!(err.to_string().contains("expired"), "{err}");
    assert_eq!(
        c.pa.take(),
        (1, 1),
        "the hot path's commit was refused by the lock guard"
    );
    assert_eq!(c.stored(&inst.id).await, inst, "the instance is unchanged");
    assert!(
        c.store
            .external_task(&locked[0].task.id)
            .await
            .unwrap()
            .is_some(),
        "the task is still there"
    );
}

/// A node that took a due timer and died before firing it holds the timer for the
/// configured lock, not the default five minutes; then another node fires it.
#[tokio::test]
async fn a_dead_nodes_timer_is_taken_over_after_the_configured_lock() {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    ));
    let options = EngineOptions {
        timer_lock: std::time::Duration::from_secs(30),
    };
    let dying = Probe::over(store.clone());
    let a = Engine::with_options(dying.clone(), clock.clone(), options.clone());
    let b = Engine::with_options(store.clone(), clock.clone(), options);
    a.deploy(TIMER).await.unwrap();
    let inst = a.start("wait", StartRequest::default()).await.unwrap();
    clock.advance(Duration::seconds(10));

    // Node a takes the due timer, but none of its commits lands: it dies while firing.
    dying.inject.store(usize::MAX, Ordering::SeqCst);
    assert_eq!(
        a.fire_due_timers(10).await.unwrap(),
        1,
        "node a took the timer"
    );
    drop(a);
    let timers = store.list_timers(&inst.id).await.unwrap();
    assert_eq!(timers.len(), 1, "the timer is still pending: {timers:?}");
    assert_eq!(
        timers[0].lock_until,
        Some(clock.now() + Duration::seconds(30)),
        "locked for the configured 30 s"
    );

    clock.advance(Duration::seconds(29));
    assert_eq!(
        b.fire_due_timers(10).await.unwrap(),
        0,
        "still locked to the dead node"
    );
    clock.advance(Duration::seconds(1));
    assert_eq!(
        b.fire_due_timers(10).await.unwrap(),
        1,
        "taken over as the configured lock runs out, long before five minutes"
    );
    let done = store.instance(&inst.id).await.unwrap().expect("instance");
    assert_eq!(done.state, InstanceState::Completed, "the timer fired once");
    assert!(store.list_timers(&inst.id).await.unwrap().is_empty());
}

/// `Engine::new` keeps the default lock of five minutes.
#[tokio::test]
async fn timers_are_locked_for_five_minutes_by_default() {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    ));
    let probe = Probe::over(store.clone());
    let engine = Engine::new(probe.clone(), clock.clone());
    engine.deploy(TIMER).await.unwrap();
    let inst = engine.start("wait", StartRequest::default()).await.unwrap();
    clock.advance(Duration::seconds(10));
    probe.inject.store(usize::MAX, Ordering::SeqCst);
    assert_eq!(engine.fire_due_timers(10).await.unwrap(), 1);
    let timers = store.list_timers(&inst.id).await.unwrap();
    assert_eq!(
        timers[0].lock_until,
        Some(clock.now() + Duration::minutes(5))
    );
}
