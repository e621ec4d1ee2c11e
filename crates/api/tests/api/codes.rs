//! One error code per condition (`lock_expired`, `locked_by_other_worker`,
//! `instance_ended`, `task_already_claimed`, `busy`, `corrupt_state`), and what `/health`
//! says about background components.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{StatusCode, header};
use serde_json::{Value, json};
use steadyflow_api::AllowAll;
use steadyflow_engine::{Backoff, SystemClock, supervise};
use steadyflow_store::*;
use tokio::sync::watch;

use crate::support::{App, EXTERNAL_XML, USER_TASK_XML, id};

fn fetch(worker: &str) -> Value {
    json!({"workerId": worker, "maxTasks": 10, "topics": [{"topicName": "work", "lockDuration": 60_000}]})
}

/// Starts a `work` instance and locks its external task for `w1`; returns the task id.
async fn locked_task(app: &App) -> String {
    app.deploy(EXTERNAL_XML).await;
    app.start("work", json!({})).await;
    let locked = app
        .post("/api/v1/external-tasks/fetch-and-lock", fetch("w1"))
        .await
        .json();
    id(&locked[0])
}

#[tokio::test]
async fn a_released_lock_is_lock_expired_and_a_foreign_one_locked_by_other_worker() {
    let app = App::new();
    let tid = locked_task(&app).await;
    let failure = |worker: &str| json!({"workerId": worker, "errorMessage": "x", "retries": 1, "retryTimeout": 0});
    let r = app
        .post(
            &format!("/api/v1/external-tasks/{tid}/failure"),
            failure("w2"),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "locked_by_other_worker".into()),
        "{}",
        r.text
    );

    let r = app
        .post(&format!("/api/v1/external-tasks/{tid}/unlock"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    for uri in ["complete", "failure"] {
        let r = app
            .post(
                &format!("/api/v1/external-tasks/{tid}/{uri}"),
                failure("w1"),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::CONFLICT, "lock_expired".into()),
            "{uri}: {}",
            r.text
        );
    }
}

#[tokio::test]
async fn commands_on_an_ended_instance_are_instance_ended() {
    let app = App::new();
    app.deploy(USER_TASK_XML).await;
    let iid = id(&app.start("approval", json!({})).await);
    let uri = format!("/api/v1/process-instances/{iid}");
    assert_eq!(app.delete(&uri).await.status, StatusCode::OK);
    let r = app
        .post(&format!("{uri}/variables"), json!({"variables": {"a": 1}}))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "instance_ended".into()),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn a_task_held_by_someone_else_is_task_already_claimed() {
    let app = App::new();
    app.deploy(USER_TASK_XML).await;
    let iid = id(&app.start("approval", json!({})).await);
    let tasks = app
        .get(&format!("/api/v1/tasks?processInstanceId={iid}"))
        .await
        .items();
    let claim = format!("/api/v1/tasks/{}/claim", id(&tasks[0]));
    assert_eq!(
        app.post(&claim, json!({"userId": "alice"})).await.status,
        StatusCode::OK
    );
    let r = app.post(&claim, json!({"userId": "bob"})).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "task_already_claimed".into()),
        "{}",
        r.text
    );
    assert!(r.text.contains("alice"), "names the holder: {}", r.text);
}

/// A store on which every update of an instance loses its optimistic lock, as when
/// other nodes keep changing the same instance.
struct Contended(Arc<dyn Store>);

#[async_trait::async_trait]
impl Store for Contended {
    async fn plain_write(
        &self,
        time: Timestamp,
        writes: Vec<steadyflow_store::users::PlainWrite>,
    ) -> Result<()> {
        self.0.plain_write(time, writes).await
    }
    async fn plain_row(
        &self,
        table: &'static steadyflow_store::recovery::TableSpec,
        key: &str,
    ) -> Result<Option<serde_json::Value>> {
        self.0.plain_row(table, key).await
    }
    async fn plain_rows(
        &self,
        table: &'static steadyflow_store::recovery::TableSpec,
    ) -> Result<Vec<serde_json::Value>> {
        self.0.plain_rows(table).await
    }
    fn backend(&self) -> &'static str {
        self.0.backend()
    }
    async fn ping(&self) -> Result<()> {
        self.0.ping().await
    }
    async fn deploy(&self, d: Vec<NewDefinition>, now: Timestamp) -> Result<Vec<Deployed>> {
        self.0.deploy(d, now).await
    }
    async fn definition(&self, id: &str) -> Result<Option<DefinitionRecord>> {
        self.0.definition(id).await
    }
    async fn latest_definition(&self, key: &str) -> Result<Option<DefinitionRecord>> {
        self.0.latest_definition(key).await
    }
    async fn list_definitions(&self, f: &DefinitionFilter) -> Result<Vec<DefinitionRecord>> {
        self.0.list_definitions(f).await
    }
    async fn instance(&self, id: &str) -> Result<Option<InstanceRecord>> {
        self.0.instance(id).await
    }
    async fn list_instances(&self, f: &InstanceFilter) -> Result<Vec<InstanceRecord>> {
        self.0.list_instances(f).await
    }
    async fn apply(&self, change: ChangeSet) -> Result<()> {
        match change.expected_version {
            Some(_) => Err(StoreError::Conflict(change.instance.id)),
            None => self.0.apply(change).await,
        }
    }
    async fn task(&self, id: &str) -> Result<Option<TaskRecord>> {
        self.0.task(id).await
    }
    async fn list_tasks(&self, f: &TaskFilter) -> Result<Vec<TaskRecord>> {
        self.0.list_tasks(f).await
    }
    async fn claim_task(&self, id: &str, user: &str, now: Timestamp) -> Result<TaskRecord> {
        self.0.claim_task(id, user, now).await
    }
    async fn external_task(&self, id: &str) -> Result<Option<ExternalTaskRecord>> {
        self.0.external_task(id).await
    }
    async fn external_task_with_instance(
        &self,
        id: &str,
    ) -> Result<Option<(ExternalTaskRecord, InstanceRecord)>> {
        self.0.external_task_with_instance(id).await
    }
    async fn list_external_tasks(&self, f: &ExternalTaskFilter) -> Result<Vec<ExternalTaskRecord>> {
        self.0.list_external_tasks(f).await
    }
    async fn lock_tasks(&self, r: &steadyflow_store::TaskLocking<'_>) -> Result<Vec<LockedTask>> {
        self.0.lock_tasks(r).await
    }
    async fn lock_due_timers(
        &self,
        r: &steadyflow_store::TimerLocking<'_>,
    ) -> Result<Vec<TimerRecord>> {
        self.0.lock_due_timers(r).await
    }
    async fn list_timers(&self, instance_id: &str) -> Result<Vec<TimerRecord>> {
        self.0.list_timers(instance_id).await
    }
    async fn next_timer_due(&self) -> Result<Option<Timestamp>> {
        self.0.next_timer_due().await
    }
    async fn list_incidents(&self, f: &IncidentFilter) -> Result<Vec<IncidentRecord>> {
        self.0.list_incidents(f).await
    }
    async fn history(&self, instance_id: &str) -> Result<Vec<HistoryRecord>> {
        self.0.history(instance_id).await
    }
    async fn history_page(
        &self,
        instance_id: &str,
        after: Option<HistoryPosition>,
        limit: usize,
    ) -> Result<Vec<(HistoryPosition, HistoryRecord)>> {
        self.0.history_page(instance_id, after, limit).await
    }
    async fn journal_since(&self, after: i64, limit: usize) -> Result<Vec<JournalRecord>> {
        self.0.journal_since(after, limit).await
    }
}

#[tokio::test]
async fn a_command_that_keeps_losing_is_busy_with_retry_after() {
    let app = App::build_over(Arc::new(SystemClock), Arc::new(AllowAll), |s| {
        Arc::new(Contended(s))
    });
    let tid = locked_task(&app).await;
    let r = app
        .post(
            &format!("/api/v1/external-tasks/{tid}/complete"),
            json!({"workerId": "w1"}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "busy".into()),
        "{}",
        r.text
    );
    assert_eq!(r.headers[header::RETRY_AFTER], "1");

    let iid = app.get("/api/v1/process-instances").await.items()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .post(
            &format!("/api/v1/process-instances/{iid}/variables"),
            json!({"variables": {"a": 1}}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "busy".into()),
        "{}",
        r.text
    );
    assert_eq!(r.headers[header::RETRY_AFTER], "1");
}

/// Rewrites an instance's runtime in the store so that its first token stands at an
/// element its definition does not have (what a bad manual edit or restore leaves).
async fn poison(store: &dyn Store, instance_id: &str) {
    let inst = store.instance(instance_id).await.unwrap().unwrap();
    let mut rt: Value = serde_json::from_str(inst.runtime.as_str()).unwrap();
    rt["tokens"][0]["element"] = json!("ghost");
    let mut bad = inst.clone();
    bad.runtime = RawJson::from_text(rt.to_string()).unwrap();
    bad.version += 1;
    store
        .apply(ChangeSet::new(bad, Some(inst.version), inst.started_at))
        .await
        .unwrap();
}

async fn task_of(app: &App, instance: &str) -> String {
    let tasks = app
        .get(&format!("/api/v1/tasks?processInstanceId={instance}"))
        .await
        .items();
    id(&tasks[0])
}

#[tokio::test]
async fn a_command_on_corrupt_state_is_corrupt_state_and_stops_the_instance() {
    let app = App::new();
    app.deploy(USER_TASK_XML).await;
    let bad = id(&app.start("approval", json!({})).await);
    let good = id(&app.start("approval", json!({})).await);
    poison(app.engine.store().as_ref(), &bad).await;

    let bad_task = task_of(&app, &bad).await;
    let r = app
        .post(&format!("/api/v1/tasks/{bad_task}/complete"), json!({}))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::INTERNAL_SERVER_ERROR, "corrupt_state".into()),
        "{}",
        r.text
    );
    assert!(r.text.contains("`ghost`"), "names the reason: {}", r.text);

    let inst = app
        .get(&format!("/api/v1/process-instances/{bad}"))
        .await
        .json();
    assert_eq!(inst["state"], "incident");
    let incidents = app
        .get(&format!("/api/v1/incidents?processInstanceId={bad}"))
        .await
        .items();
    let incidents = incidents.as_array().unwrap();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0]["incidentType"], "corruptState");
    assert_eq!(incidents[0]["activityId"], "review");
    assert!(
        incidents[0]["message"]
            .as_str()
            .unwrap()
            .contains("`ghost`")
    );

    // Asked again, it stays one incident, and the other instance goes on.
    let r = app
        .post(&format!("/api/v1/tasks/{bad_task}/complete"), json!({}))
        .await;
    assert_eq!(r.code(), "corrupt_state");
    let all = app
        .get(&format!("/api/v1/incidents?processInstanceId={bad}"))
        .await
        .items();
    assert_eq!(all.as_array().unwrap().len(), 1);
    let good_task = task_of(&app, &good).await;
    let r = app
        .post(&format!("/api/v1/tasks/{good_task}/complete"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["state"], "completed");
    assert_eq!(
        app.get("/api/v1/process-instances")
            .await
            .items()
            .as_array()
            .unwrap()
            .len(),
        2,
        "listing still works"
    );
}

async fn health_until(app: &App, what: &str, f: impl Fn(StatusCode, &Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = app.get("/health").await;
        let body = r.json();
        if f(r.status, &body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: {} {body}", r.status);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The timer driver's seam: its supervisor runs whatever iteration it is given. The
/// first iteration panics, the next ones block until released; `/health` shows the
/// component down (with the reason) while it backs off, then up again.
#[tokio::test]
async fn health_reports_a_panicked_component_down_until_it_runs_again() {
    let app = App::new();
    let health = app.engine.components().register("timerDriver");
    let (stop_tx, stop) = watch::channel(false);
    let (go_tx, go) = watch::channel(false);
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = calls.clone();
    // Long enough that a slow first probe still sees the component down.
    let backoff = Backoff {
        initial: Duration::from_millis(1500),
        max: Duration::from_millis(1500),
    };
    let driver = tokio::spawn(supervise(health, backoff, stop, move || {
        let first = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        let mut go = go.clone();
        async move {
            if first {
                panic!("poisoned timer");
            }
            let _ = go.wait_for(|g| *g).await;
            Ok(Duration::from_millis(1))
        }
    }));

    let body = health_until(&app, "down after the panic", |status, b| {
        status == StatusCode::OK && b["components"]["timerDriver"]["status"] == "down"
    })
    .await;
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["components"]["database"]["status"], "up");
    let timers = &body["components"]["timerDriver"];
    assert_eq!(timers["restarts"], 1, "{body}");
    assert!(
        timers["reason"].as_str().unwrap().starts_with("panicked"),
        "{body}"
    );
    assert!(
        !body.to_string().contains("poisoned timer"),
        "panic text stays in the log"
    );

    let body = health_until(&app, "up once restarted", |_, b| {
        b["components"]["timerDriver"]["status"] == "up"
    })
    .await;
    assert_eq!(body["status"], "up");
    assert!(body["components"]["timerDriver"]["reason"].is_null());
    assert_eq!(body["components"]["timerDriver"]["restarts"], 1);
    go_tx.send(true).unwrap();
    stop_tx.send(true).unwrap();
    driver.await.unwrap();
}
