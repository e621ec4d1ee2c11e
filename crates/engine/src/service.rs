//! The command service: load, transition, commit (retrying a lost optimistic lock).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use steadyflow_model::{ProcessDefinition, parse_definitions};
use steadyflow_store::*;

use crate::clock::Clock;
use crate::core::{CoreError, Transition};
use crate::error::EngineError;
use crate::hot::HotInstances;

type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Upper bound of lock durations and retry timeouts (30 days), so no instant overflows.
const MAX_DURATION_MS: i64 = 30 * 24 * 3_600_000;

/// How often a command is retried on fresh state after losing an optimistic lock.
const MAX_ATTEMPTS: usize = 8;

#[derive(Debug, Clone)]
pub struct DeployedDefinition {
    pub record: DefinitionRecord,
    /// False when an identical definition was already deployed (same version returned).
    pub created: bool,
}

#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    pub variables: Vars,
    pub business_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ExternalFailure {
    pub worker_id: String,
    pub error_message: String,
    /// Retries left; 0 raises an incident.
    pub retries: i32,
    pub retry_timeout_ms: i64,
}

struct CachedDef {
    graph: ProcessDefinition,
}

/// The engine's command service. Cheap to share (`Arc<Engine>`); every node of a cluster
/// runs one over the same store.
pub struct Engine {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    node_id: String,
    defs: RwLock<HashMap<String, Arc<CachedDef>>>,
    /// Latest definition id per key, with when it was read.
    latest: RwLock<HashMap<String, (String, std::time::Instant)>>,
    /// Instances this node committed last (see [`HotInstances`]).
    hot: HotInstances,
}

/// How one attempt at a command ended.
enum Attempt {
    Committed(InstanceRecord),
    /// Another change came first (optimistic lock or worker's lock lost), or the cached
    /// state the attempt ran on was stale: run again on a fresh read.
    Lost,
}

/// How long a start may use a cached "latest version of key" (a deploy on this node
/// updates it at once; one on another node is seen within this time).
const LATEST_TTL: std::time::Duration = std::time::Duration::from_secs(1);

fn too_busy(external_task: &str) -> EngineError {
    EngineError::Conflict(format!(
        "external task {external_task} is too busy: gave up after {MAX_ATTEMPTS} attempts"
    ))
}

impl From<CoreError> for EngineError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Ended(id) => {
                EngineError::Conflict(format!("process instance {id} has already ended"))
            }
            CoreError::NotWaiting { what, id, .. } => EngineError::NotFound { what, id },
            CoreError::Corrupt(..) => EngineError::Store(StoreError::Corrupt(e.to_string())),
        }
    }
}

impl Engine {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Engine {
            store,
            clock,
            node_id: format!("node-{}", uuid::Uuid::now_v7()),
            defs: RwLock::new(HashMap::new()),
            latest: RwLock::new(HashMap::new()),
            hot: HotInstances::new(),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The clock's time cut to milliseconds, the precision every store keeps, so what a
    /// command returns equals what a later read returns.
    fn now(&self) -> Timestamp {
        let t = self.clock.now();
        t - chrono::Duration::nanoseconds(i64::from(t.timestamp_subsec_nanos() % 1_000_000))
    }

    // ---- definitions -----------------------------------------------------------

    /// Deploys every executable process of `xml`, all or nothing.
    pub async fn deploy(&self, xml: &str) -> Result<Vec<DeployedDefinition>> {
        let graphs = parse_definitions(xml)?;
        let checksum = format!("{:x}", Sha256::digest(xml.as_bytes()));
        let defs = graphs
            .iter()
            .map(|g| NewDefinition {
                key: g.key.clone(),
                name: g.name.clone(),
                xml: xml.to_string(),
                checksum: checksum.clone(),
            })
            .collect();
        let deployed = self.store.deploy(defs, self.now()).await?;
        let mut latest = self.latest.write().expect("latest cache poisoned");
        for d in &deployed {
            latest.insert(
                d.definition.key.clone(),
                (d.definition.id.clone(), std::time::Instant::now()),
            );
        }
        drop(latest);
        let mut cache = self.defs.write().expect("definition cache poisoned");
        for (d, g) in deployed.iter().zip(graphs) {
            cache
                .entry(d.definition.id.clone())
                .or_insert_with(|| Arc::new(CachedDef { graph: g }));
        }
        Ok(deployed
            .into_iter()
            .map(|d| DeployedDefinition {
                record: DefinitionRecord {
                    xml: None,
                    ..d.definition
                },
                created: d.created,
            })
            .collect())
    }

    /// A definition with its XML.
    pub async fn definition(&self, id: &str) -> Result<DefinitionRecord> {
        self.store
            .definition(id)
            .await?
            .ok_or_else(|| EngineError::not_found("process definition", id))
    }

    pub async fn definitions(&self, key: Option<&str>) -> Result<Vec<DefinitionRecord>> {
        Ok(self.store.list_definitions(key).await?)
    }

    async fn graph(&self, id: &str) -> Result<Arc<CachedDef>> {
        if let Some(d) = self.defs.read().expect("definition cache poisoned").get(id) {
            return Ok(d.clone());
        }
        let rec = self.definition(id).await?;
        let xml = rec.xml.unwrap_or_default();
        let graph = parse_definitions(&xml)?
            .into_iter()
            .find(|g| g.key == rec.key)
            .ok_or_else(|| {
                EngineError::Store(StoreError::Corrupt(format!(
                    "definition {id} lost its process"
                )))
            })?;
        let cached = Arc::new(CachedDef { graph });
        self.defs
            .write()
            .expect("definition cache poisoned")
            .insert(id.to_string(), cached.clone());
        Ok(cached)
    }

    // ---- instances -------------------------------------------------------------

    /// Starts the latest version of `key` and runs it to its first wait states; the
    /// instance is committed with them in one transaction.
    pub async fn start(&self, key: &str, req: StartRequest) -> Result<InstanceRecord> {
        let cached = self
            .latest
            .read()
            .expect("latest cache poisoned")
            .get(key)
            .filter(|(_, at)| at.elapsed() < LATEST_TTL)
            .map(|(id, _)| id.clone());
        let id = match cached {
            Some(id) => id,
            None => {
                let rec = self
                    .store
                    .latest_definition(key)
                    .await?
                    .ok_or_else(|| EngineError::not_found("process definition key", key))?;
                self.latest
                    .write()
                    .expect("latest cache poisoned")
                    .insert(key.to_string(), (rec.id.clone(), std::time::Instant::now()));
                rec.id
            }
        };
        self.start_definition(&id, req).await
    }

    pub async fn start_definition(
        &self,
        definition_id: &str,
        req: StartRequest,
    ) -> Result<InstanceRecord> {
        let def = self.graph(definition_id).await?;
        let mut tr = Transition::create(
            &def.graph,
            definition_id,
            req.variables,
            req.business_key,
            self.now(),
        );
        tr.start();
        let cs = tr.finish();
        let out = cs.instance.clone();
        self.store.apply(cs).await?;
        self.hot.put(&out);
        Ok(out)
    }

    pub async fn instance(&self, id: &str) -> Result<InstanceRecord> {
        self.store
            .instance(id)
            .await?
            .ok_or_else(|| EngineError::not_found("process instance", id))
    }

    pub async fn instances(&self, filter: &InstanceFilter) -> Result<Vec<InstanceRecord>> {
        Ok(self.store.list_instances(filter).await?)
    }

    pub async fn history(&self, id: &str) -> Result<Vec<HistoryRecord>> {
        self.instance(id).await?;
        Ok(self.store.history(id).await?)
    }

    pub async fn cancel(&self, id: &str, reason: &str) -> Result<InstanceRecord> {
        let reason = reason.to_string();
        self.command(id, move |tr| {
            tr.cancel(&reason);
            Ok(())
        })
        .await
    }

    pub async fn set_variables(&self, id: &str, vars: Vars) -> Result<InstanceRecord> {
        self.command(id, move |tr| {
            tr.set_variables(vars.clone());
            Ok(())
        })
        .await
    }

    /// Loads the instance, applies `f` in a transition and commits; on a lost optimistic
    /// lock it starts over on fresh state.
    async fn command<F>(&self, instance_id: &str, f: F) -> Result<InstanceRecord>
    where
        F: FnMut(&mut Transition<'_>) -> Result<()> + Send,
    {
        self.command_on(instance_id, None, f).await
    }

    /// [`Self::command`], with the instance already loaded for the first attempt.
    async fn command_on<F>(
        &self,
        instance_id: &str,
        mut loaded: Option<InstanceRecord>,
        mut f: F,
    ) -> Result<InstanceRecord>
    where
        F: FnMut(&mut Transition<'_>) -> Result<()> + Send,
    {
        for attempt in 0..MAX_ATTEMPTS {
            let (inst, cached) = match loaded.take() {
                Some(i) => (i, false),
                None => match self.hot.get(instance_id) {
                    Some(i) => (i, true),
                    None => (self.instance(instance_id).await?, false),
                },
            };
            match self.attempt(inst, cached, &mut f).await? {
                Attempt::Committed(out) => return Ok(out),
                Attempt::Lost => {
                    tracing::debug!(
                        instance = instance_id,
                        attempt,
                        "optimistic lock lost; retrying"
                    );
                    tokio::task::yield_now().await;
                }
            }
        }
        Err(EngineError::Conflict(format!(
            "process instance {instance_id} is too busy: gave up after {MAX_ATTEMPTS} attempts"
        )))
    }

    /// Runs `f` on `inst` and commits. `cached`: `inst` came from [`HotInstances`] and may
    /// be stale, so a failure of `f` on it means "read again", not a verdict.
    async fn attempt<F>(&self, inst: InstanceRecord, cached: bool, f: &mut F) -> Result<Attempt>
    where
        F: FnMut(&mut Transition<'_>) -> Result<()> + Send,
    {
        let id = inst.id.clone();
        let def = self.graph(&inst.definition_id).await?;
        let cs = Transition::open(&def.graph, inst, self.now())
            .map_err(EngineError::from)
            .and_then(|mut tr| f(&mut tr).map(|()| tr.finish()));
        let cs = match cs {
            Ok(cs) => cs,
            Err(_) if cached => {
                self.hot.forget(&id);
                return Ok(Attempt::Lost);
            }
            Err(e) => return Err(e),
        };
        let out = cs.instance.clone();
        match self.store.apply(cs).await {
            Ok(()) => {
                self.hot.put(&out);
                Ok(Attempt::Committed(out))
            }
            Err(StoreError::Conflict(_)) => {
                self.hot.forget(&id);
                Ok(Attempt::Lost)
            }
            Err(e) => {
                self.hot.forget(&id);
                Err(e.into())
            }
        }
    }

    // ---- user tasks ------------------------------------------------------------

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
        Ok(self.store.claim_task(id, user, self.now()).await?)
    }

    /// Completes a user task; its variables are set on the instance.
    pub async fn complete_task(&self, id: &str, vars: Vars) -> Result<InstanceRecord> {
        let task = self.task(id).await?;
        let task_id = task.id.clone();
        self.command(&task.instance_id, move |tr| {
            Ok(tr.complete_user_task(&task_id, vars.clone())?)
        })
        .await
    }

    // ---- external tasks --------------------------------------------------------

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
        let id = task.id.clone();
        let now = self.now();
        match (&task.worker_id, task.lock_expires_at) {
            (Some(w), Some(until)) if w == worker && until > now => Ok(task),
            (Some(w), Some(_)) if w == worker => Err(EngineError::Conflict(format!(
                "the lock of worker `{worker}` on external task {id} has expired"
            ))),
            (Some(_), _) => Err(EngineError::Conflict(format!(
                "external task {id} is locked by another worker"
            ))),
            _ => Err(EngineError::Conflict(format!(
                "external task {id} is not locked by worker `{worker}`"
            ))),
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
        if let Some(inst) = self.hot.of_task(id)
            && let Attempt::Committed(out) = self.attempt(inst, true, &mut f).await?
        {
            self.hot.forget_task(id);
            return Ok(out);
        }
        for _ in 0..MAX_ATTEMPTS {
            let (_, instance) = self.locked_with_instance(id, worker).await?;
            if let Attempt::Committed(out) = self.attempt(instance, false, &mut f).await? {
                self.hot.forget_task(id);
                return Ok(out);
            }
            tokio::task::yield_now().await;
        }
        Err(too_busy(id))
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
            if let Attempt::Committed(_) = self.attempt(instance, false, &mut f).await? {
                self.hot.forget_task(id);
                return Ok(task);
            }
            tokio::task::yield_now().await;
        }
        Err(too_busy(id))
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
        let row = task.clone();
        self.command(&task.instance_id, move |tr| {
            Ok(tr.update_external_task(row.clone())?)
        })
        .await?;
        Ok(task)
    }

    /// Releases a worker's lock so the task can be fetched again at once.
    pub async fn unlock_external_task(&self, id: &str) -> Result<ExternalTaskRecord> {
        let mut task = self.external_task(id).await?;
        task.worker_id = None;
        task.lock_expires_at = None;
        let row = task.clone();
        self.command(&task.instance_id, move |tr| {
            Ok(tr.update_external_task(row.clone())?)
        })
        .await?;
        Ok(task)
    }

    // ---- incidents -------------------------------------------------------------

    pub async fn incidents(&self, filter: &IncidentFilter) -> Result<Vec<IncidentRecord>> {
        Ok(self.store.list_incidents(filter).await?)
    }

    /// Retries the element an incident stopped at (after fixing its cause).
    pub async fn retry_incident(&self, id: &str) -> Result<InstanceRecord> {
        let filter = IncidentFilter {
            instance_id: None,
            open_only: true,
        };
        let inc = self
            .store
            .list_incidents(&filter)
            .await?
            .into_iter()
            .find(|i| i.id == id)
            .ok_or_else(|| EngineError::not_found("open incident", id))?;
        if inc.external_task_id.is_some() {
            return Err(EngineError::BadRequest(
                "this incident belongs to an external task: set its retries instead".into(),
            ));
        }
        let inc_id = inc.id.clone();
        self.command(&inc.instance_id, move |tr| Ok(tr.retry_incident(&inc_id)?))
            .await
    }

    // ---- timers ----------------------------------------------------------------

    /// Fires up to `limit` due timers, earliest first; returns how many it took on
    /// (fired, or found no longer awaited). A timer that fails is logged and left to its
    /// lock's expiry; the others still fire.
    pub async fn fire_due_timers(&self, limit: usize) -> Result<usize> {
        let now = self.now();
        let lock_until = now + chrono::Duration::minutes(5);
        let due = self
            .store
            .acquire_due_timers(&self.node_id, now, lock_until, limit)
            .await?;
        let taken = due.len();
        for t in due {
            let timer_id = t.id.clone();
            match self
                .command(&t.instance_id, move |tr| Ok(tr.fire_timer(&timer_id)?))
                .await
            {
                Ok(_) => {}
                Err(EngineError::NotFound { .. }) | Err(EngineError::Conflict(_)) => {
                    tracing::debug!(timer = %t.id, "timer no longer awaited");
                }
                Err(e) => tracing::warn!(timer = %t.id, error = %e, "firing a timer failed"),
            }
        }
        Ok(taken)
    }

    /// Fires every due timer one at a time, strictly earliest first, including those that
    /// firing makes due (tests and drills that move the clock).
    pub async fn run_due_timers(&self) -> Result<usize> {
        let mut total = 0;
        while self.fire_due_timers(1).await? > 0 {
            total += 1;
        }
        Ok(total)
    }
}
