//! User tasks and external tasks (the worker protocol).

use steadyflow_store::{
    ExternalTaskFilter, ExternalTaskRecord, InstanceRecord, LockedTask, StoreError, TaskFilter,
    TaskRecord, TopicLock, Vars,
};

use super::{
    Attempt, Engine, ExternalFailure, MAX_ATTEMPTS, MAX_DURATION_MS, Result, Scope, too_busy,
};
use crate::core::Transition;
use crate::error::EngineError;

impl Engine {
    pub async fn tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        Ok(self.store.list_tasks(filter).await?)
    }

    pub async fn task(&self, id: &str) -> Result<TaskRecord> {
        self.store
            .task(id)
            .await?
            .ok_or_else(|| EngineError::not_found("task", id))
    }

    pub async fn claim_task(&self, id: &str, user: &str) -> Result<TaskRecord> {
        if user.trim().is_empty() {
            return Err(EngineError::BadRequest("userId must not be empty".into()));
        }
        match self.store.claim_task(id, user, self.now()).await {
            Ok(task) => Ok(task),
            // The store's only precondition here: nobody else holds the task.
            Err(StoreError::Rejected(message)) => Err(EngineError::TaskAlreadyClaimed {
                task: id.to_string(),
                message,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Completes a user task; its variables are set on the instance.
    pub async fn complete_task(&self, id: &str, vars: Vars) -> Result<InstanceRecord> {
        let task = self.task(id).await?;
        self.command(&task.instance_id, Scope::at(&task.activity_id), |tr| {
            Ok(tr.complete_user_task(&task.id, vars.clone())?)
        })
        .await
    }

    pub async fn external_tasks(
        &self,
        filter: &ExternalTaskFilter,
    ) -> Result<Vec<ExternalTaskRecord>> {
        Ok(self.store.list_external_tasks(filter).await?)
    }

    pub async fn external_task(&self, id: &str) -> Result<ExternalTaskRecord> {
        self.store
            .external_task(id)
            .await?
            .ok_or_else(|| EngineError::not_found("external task", id))
    }

    pub async fn fetch_and_lock(
        &self,
        worker: &str,
        max: usize,
        topics: &[TopicLock],
    ) -> Result<Vec<LockedTask>> {
        if worker.trim().is_empty() {
            return Err(EngineError::BadRequest("workerId must not be empty".into()));
        }
        if let Some(t) = topics
            .iter()
            .find(|t| t.lock_duration_ms <= 0 || t.lock_duration_ms > MAX_DURATION_MS)
        {
            return Err(EngineError::BadRequest(format!(
                "lockDuration of topic `{}` must be between 1 and {MAX_DURATION_MS} ms",
                t.topic
            )));
        }
        let mut seen = std::collections::HashSet::new();
        let topics: Vec<TopicLock> = topics
            .iter()
            .filter(|t| seen.insert(t.topic.clone()))
            .cloned()
            .collect();
        let topics = topics.as_slice();
        let locked = self
            .store
            .fetch_and_lock(worker, max, topics, self.now())
            .await?;
        for l in &locked {
            self.hot.task_owned_by(&l.task.id, &l.task.instance_id);
        }
        Ok(locked)
    }

    fn check_lock(&self, task: ExternalTaskRecord, worker: &str) -> Result<ExternalTaskRecord> {
        let now = self.now();
        match (&task.worker_id, task.lock_expires_at) {
            (Some(w), Some(until)) if w == worker && until > now => Ok(task),
            // Held by someone else, expired or not: until fetched again it is theirs.
            (Some(w), _) if w != worker => Err(EngineError::LockedByOtherWorker { task: task.id }),
            // This worker's lock ran out, or it was released (failure, unlock, retries).
            _ => Err(EngineError::LockExpired {
                task: task.id,
                worker: worker.to_string(),
            }),
        }
    }

    pub async fn complete_external_task(
        &self,
        id: &str,
        worker: &str,
        vars: Vars,
    ) -> Result<InstanceRecord> {
        let mut f = |tr: &mut Transition<'_>| {
            tr.guard_lock(id, worker);
            Ok(tr.complete_external_task(id, vars.clone())?)
        };
        // This node handed the task out and committed its instance last: no reads. The
        // store still checks the worker's lock and the instance's version; if either
        // fails, the checked path below tells why.
        let scope = Scope::default();
        if let Some(inst) = self.hot.of_task(id)
            && let Attempt::Committed(out) = self.attempt(inst, true, scope, &mut f).await?
        {
            self.hot.forget_task(id);
            return Ok(out);
        }
        for _ in 0..MAX_ATTEMPTS {
            let (task, instance) = self.locked_with_instance(id, worker).await?;
            let scope = Scope::at(&task.activity_id);
            if let Attempt::Committed(out) = self.attempt(instance, false, scope, &mut f).await? {
                self.hot.forget_task(id);
                return Ok(out);
            }
            tokio::task::yield_now().await;
        }
        Err(too_busy("external task", id))
    }

    /// The external task and its instance, read fresh, if `worker` holds an unexpired
    /// lock on the task.
    async fn locked_with_instance(
        &self,
        id: &str,
        worker: &str,
    ) -> Result<(ExternalTaskRecord, InstanceRecord)> {
        let (task, instance) = self
            .store
            .external_task_with_instance(id)
            .await?
            .ok_or_else(|| EngineError::not_found("external task", id))?;
        Ok((self.check_lock(task, worker)?, instance))
    }

    pub async fn fail_external_task(
        &self,
        id: &str,
        failure: ExternalFailure,
    ) -> Result<ExternalTaskRecord> {
        if failure.retries < 0 || !(0..=MAX_DURATION_MS).contains(&failure.retry_timeout_ms) {
            return Err(EngineError::BadRequest(format!(
                "retries must not be negative and retryTimeout must be between 0 and {MAX_DURATION_MS} ms"
            )));
        }
        for _ in 0..MAX_ATTEMPTS {
            let (mut task, instance) = self.locked_with_instance(id, &failure.worker_id).await?;
            let now = self.now();
            task.retries = Some(failure.retries);
            task.error_message = Some(failure.error_message.clone());
            task.worker_id = None;
            task.lock_expires_at = None;
            task.retry_at = (failure.retries > 0 && failure.retry_timeout_ms > 0)
                .then(|| now + chrono::Duration::milliseconds(failure.retry_timeout_ms));
            let mut f = |tr: &mut Transition<'_>| {
                tr.guard_lock(&task.id, &failure.worker_id);
                Ok(tr.fail_external_task(task.clone())?)
            };
            let scope = Scope::at(&task.activity_id);
            if let Attempt::Committed(_) = self.attempt(instance, false, scope, &mut f).await? {
                self.hot.forget_task(id);
                return Ok(task);
            }
            tokio::task::yield_now().await;
        }
        Err(too_busy("external task", id))
    }

    /// A worker reports a BPMN error for the external task it holds locked (Camunda 7's
    /// `handleBpmnError`): the task ends, `vars` are set on the instance, and the error
    /// `code` is thrown from the task's activity, to be caught by an error boundary event
    /// or error event sub-process; uncaught, it is an `unhandledError` incident there.
    pub async fn external_task_bpmn_error(
        &self,
        id: &str,
        worker: &str,
        code: &str,
        message: Option<&str>,
        vars: Vars,
    ) -> Result<InstanceRecord> {
        if code.trim().is_empty() {
            return Err(EngineError::BadRequest(
                "errorCode must not be empty".into(),
            ));
        }
        let mut f = |tr: &mut Transition<'_>| {
            tr.guard_lock(id, worker);
            Ok(tr.external_task_bpmn_error(id, code, message, vars.clone())?)
        };
        for _ in 0..MAX_ATTEMPTS {
            let (task, instance) = self.locked_with_instance(id, worker).await?;
            let scope = Scope::at(&task.activity_id);
            if let Attempt::Committed(out) = self.attempt(instance, false, scope, &mut f).await? {
                self.hot.forget_task(id);
                return Ok(out);
            }
            tokio::task::yield_now().await;
        }
        Err(too_busy("external task", id))
    }

    /// Gives a failed external task new retries (resolving its incident when above 0).
    pub async fn set_external_retries(&self, id: &str, retries: i32) -> Result<ExternalTaskRecord> {
        if retries < 0 {
            return Err(EngineError::BadRequest(
                "retries must not be negative".into(),
            ));
        }
        let mut task = self.external_task(id).await?;
        task.retries = Some(retries);
        task.retry_at = None;
        self.command(&task.instance_id, Scope::at(&task.activity_id), |tr| {
            Ok(tr.update_external_task(task.clone())?)
        })
        .await?;
        Ok(task)
    }

    /// Releases a worker's lock so the task can be fetched again at once.
    pub async fn unlock_external_task(&self, id: &str) -> Result<ExternalTaskRecord> {
        let mut task = self.external_task(id).await?;
        task.worker_id = None;
        task.lock_expires_at = None;
        self.command(&task.instance_id, Scope::at(&task.activity_id), |tr| {
            Ok(tr.update_external_task(task.clone())?)
        })
        .await?;
        Ok(task)
    }
}
