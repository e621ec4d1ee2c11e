//! What the conformance runner needs from an engine, and the in-process implementation
//! that drives `Engine` (the same service layer the REST handlers call).

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use steadyflow_engine::{Engine, ManualClock, StartRequest};
use steadyflow_store::{ExternalTaskFilter, IncidentFilter, TaskFilter, TopicLock, Vars};

#[derive(Debug, Clone)]
pub struct TaskView {
    pub id: String,
    pub name: Option<String>,
    pub key: String,
    pub assignee: Option<String>,
    pub users: Vec<String>,
    pub groups: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ExtView {
    pub id: String,
    pub topic: String,
    pub activity_id: String,
}

pub type R<T> = Result<T, String>;

pub const NOT_SUPPORTED: &str = "not supported by Steadyflow yet";

/// One engine under test, with a clock only the runner moves.
pub trait Driver {
    fn deploy(&mut self, xml: &str) -> R<()>;
    fn definition_count(&mut self) -> R<usize>;
    fn start(&mut self, key: &str, vars: Vars) -> R<String>;
    fn state(&mut self, instance: &str) -> R<String>;
    fn incident_messages(&mut self, instance: &str) -> R<Vec<String>>;
    fn tasks(&mut self, instance: &str) -> R<Vec<TaskView>>;
    fn complete_task(&mut self, task_id: &str, vars: Vars) -> R<()>;
    fn external_tasks(&mut self, instance: &str) -> R<Vec<ExtView>>;
    /// Locks every fetchable task of `topic` for the runner's worker.
    fn fetch_and_lock(&mut self, topic: &str, max: usize) -> R<Vec<ExtView>>;
    fn complete_external(&mut self, id: &str, vars: Vars) -> R<()>;
    fn unlock_external(&mut self, id: &str) -> R<()>;
    fn pending_timers(&mut self, instance: &str) -> R<usize>;
    fn advance_clock(&mut self, by: chrono::Duration) -> R<()>;
    fn now(&mut self) -> chrono::DateTime<Utc>;
    fn start_by_message(&mut self, _message: &str, _vars: Vars) -> R<String> {
        Err(NOT_SUPPORTED.into())
    }
    fn correlate_message(&mut self, _message: &str, _key: Option<&str>, _vars: Vars) -> R<bool> {
        Err(NOT_SUPPORTED.into())
    }
    fn send_signal(&mut self, _signal: &str) -> R<()> {
        Err(NOT_SUPPORTED.into())
    }
    fn subscriptions(&mut self, _instance: &str) -> R<(Vec<String>, Vec<String>)> {
        Ok((Vec::new(), Vec::new()))
    }
}

pub const WORKER: &str = "conformance-runner";

pub fn clock_start() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 10, 0, 0).unwrap()
}

/// Drives an [`Engine`] in process, on any store.
pub struct EngineDriver {
    pub rt: Arc<tokio::runtime::Runtime>,
    pub engine: Engine,
    pub clock: Arc<ManualClock>,
}

impl EngineDriver {
    pub fn new(rt: Arc<tokio::runtime::Runtime>, store: Arc<dyn steadyflow_store::Store>) -> Self {
        let clock = Arc::new(ManualClock::new(clock_start()));
        let engine = Engine::new(store, clock.clone());
        EngineDriver { rt, engine, clock }
    }

    fn block<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, steadyflow_engine::EngineError>>,
    ) -> R<T> {
        self.rt.block_on(f).map_err(|e| e.to_string())
    }
}

impl Driver for EngineDriver {
    fn deploy(&mut self, xml: &str) -> R<()> {
        self.block(self.engine.deploy(xml)).map(|_| ())
    }

    fn definition_count(&mut self) -> R<usize> {
        self.block(self.engine.definitions(&Default::default()))
            .map(|d| d.len())
    }

    fn start(&mut self, key: &str, variables: Vars) -> R<String> {
        let req = StartRequest {
            variables,
            business_key: None,
        };
        self.block(self.engine.start(key, req)).map(|i| i.id)
    }

    fn state(&mut self, instance: &str) -> R<String> {
        self.block(self.engine.instance(instance))
            .map(|i| i.state.as_str().to_string())
    }

    fn incident_messages(&mut self, instance: &str) -> R<Vec<String>> {
        let f = IncidentFilter {
            instance_id: Some(instance.into()),
            open: Some(true),
            ..Default::default()
        };
        self.block(self.engine.incidents(&f))
            .map(|v| v.into_iter().map(|i| i.message).collect())
    }

    fn tasks(&mut self, instance: &str) -> R<Vec<TaskView>> {
        let f = TaskFilter {
            instance_id: Some(instance.into()),
            ..Default::default()
        };
        self.block(self.engine.tasks(&f)).map(|v| {
            v.into_iter()
                .map(|t| TaskView {
                    id: t.id,
                    name: t.name,
                    key: t.activity_id,
                    assignee: t.assignee,
                    users: t.candidate_users,
                    groups: t.candidate_groups,
                })
                .collect()
        })
    }

    fn complete_task(&mut self, task_id: &str, vars: Vars) -> R<()> {
        self.block(self.engine.complete_task(task_id, vars))
            .map(|_| ())
    }

    fn external_tasks(&mut self, instance: &str) -> R<Vec<ExtView>> {
        let f = ExternalTaskFilter {
            instance_id: Some(instance.into()),
            ..Default::default()
        };
        self.block(self.engine.external_tasks(&f)).map(|v| {
            v.into_iter()
                .map(|t| ExtView {
                    id: t.id,
                    topic: t.topic,
                    activity_id: t.activity_id,
                })
                .collect()
        })
    }

    fn fetch_and_lock(&mut self, topic: &str, max: usize) -> R<Vec<ExtView>> {
        let topics = [TopicLock {
            topic: topic.into(),
            lock_duration_ms: 600_000,
        }];
        self.block(self.engine.fetch_and_lock(WORKER, max, &topics))
            .map(|v| {
                v.into_iter()
                    .map(|l| ExtView {
                        id: l.task.id,
                        topic: l.task.topic,
                        activity_id: l.task.activity_id,
                    })
                    .collect()
            })
    }

    fn complete_external(&mut self, id: &str, vars: Vars) -> R<()> {
        self.block(self.engine.complete_external_task(id, WORKER, vars))
            .map(|_| ())
    }

    fn unlock_external(&mut self, id: &str) -> R<()> {
        self.block(self.engine.unlock_external_task(id)).map(|_| ())
    }

    fn pending_timers(&mut self, instance: &str) -> R<usize> {
        self.rt
            .block_on(self.engine.store().list_timers(instance))
            .map(|t| t.len())
            .map_err(|e| e.to_string())
    }

    fn advance_clock(&mut self, by: chrono::Duration) -> R<()> {
        self.clock.advance(by);
        self.block(self.engine.run_due_timers()).map(|_| ())
    }

    fn now(&mut self) -> chrono::DateTime<Utc> {
        steadyflow_engine::Clock::now(self.clock.as_ref())
    }
}
