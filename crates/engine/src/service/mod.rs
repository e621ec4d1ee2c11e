//! The command service: load, transition, commit (retrying a lost optimistic lock).
//!
//! One module per concept: this one holds the [`Engine`], definitions, instances and
//! the command loop; [`corrupt`] stops instances whose stored state is corrupt, and
//! `tasks`, `incidents` and `timers` hold the commands on those.

mod corrupt;
mod incidents;
mod tasks;
mod timers;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use steadyflow_model::{ProcessDefinition, parse_definitions};
use steadyflow_store::Store;
use steadyflow_store::{
    DefinitionFilter, DefinitionRecord, HistoryPosition, HistoryRecord, InstanceFilter,
    InstanceRecord, NewDefinition, StoreError, Timestamp, Vars,
};

use crate::clock::Clock;
use crate::core::{CoreError, Transition};
use crate::error::EngineError;
use crate::health::Components;
use crate::hot::HotInstances;
use crate::options::EngineOptions;
use crate::sync::{read, write};

pub use corrupt::CORRUPT_STATE;

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
    /// This node's background components, for `/health`.
    components: Components,
    /// [`EngineOptions::timer_lock`], capped at [`MAX_DURATION_MS`].
    timer_lock: chrono::Duration,
}

/// What a command acts on, beyond its instance: names the incident when the instance
/// turns out to be corrupt (see [`corrupt`]).
#[derive(Debug, Clone, Copy, Default)]
struct Scope<'a> {
    /// The activity the command concerns (a task's, a timer's, an incident's).
    activity: Option<&'a str>,
    /// The timer being fired: removed with the incident, so it is not fired again.
    timer: Option<&'a str>,
    /// May run on an instance the engine stopped for corrupt state (retrying its
    /// incident, cancelling); every other command is refused there.
    on_stopped: bool,
}

impl<'a> Scope<'a> {
    fn at(activity: &'a str) -> Self {
        Scope {
            activity: Some(activity),
            ..Scope::default()
        }
    }
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

fn too_busy(what: &'static str, id: &str) -> EngineError {
    EngineError::Busy {
        what,
        id: id.to_string(),
        attempts: MAX_ATTEMPTS,
    }
}

impl Engine {
    /// An engine with the default [`EngineOptions`].
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self::with_options(store, clock, EngineOptions::default())
    }

    pub fn with_options(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        options: EngineOptions,
    ) -> Self {
        let max = chrono::Duration::milliseconds(MAX_DURATION_MS);
        let timer_lock = chrono::Duration::from_std(options.timer_lock).map_or(max, |d| d.min(max));
        Engine {
            store,
            clock,
            node_id: format!("node-{}", uuid::Uuid::now_v7()),
            defs: RwLock::new(HashMap::new()),
            latest: RwLock::new(HashMap::new()),
            hot: HotInstances::new(),
            components: Components::new(),
            timer_lock,
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

    /// This node's background components (timer driver, ...): they register here, and
    /// `/health` reports them.
    pub fn components(&self) -> &Components {
        &self.components
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
        let mut latest = write(&self.latest);
        for d in &deployed {
            latest.insert(
                d.definition.key.clone(),
                (d.definition.id.clone(), std::time::Instant::now()),
            );
        }
        drop(latest);
        let mut cache = write(&self.defs);
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

    /// One page of deployed definitions (see [`DefinitionFilter`]).
    pub async fn definitions(&self, filter: &DefinitionFilter) -> Result<Vec<DefinitionRecord>> {
        Ok(self.store.list_definitions(filter).await?)
    }

    /// The definition a stored instance runs on; one that is gone or does not parse is
    /// corrupt state of the instance.
    async fn instance_graph(&self, inst: &InstanceRecord) -> Result<Arc<CachedDef>> {
        match self.graph(&inst.definition_id).await {
            Err(
                e @ (EngineError::NotFound { .. }
                | EngineError::Model(_)
                | EngineError::Store(StoreError::Corrupt(_))),
            ) => Err(EngineError::from(CoreError::corrupt(
                &inst.id,
                format!("its definition cannot be loaded: {e}"),
            ))),
            other => other,
        }
    }

    async fn graph(&self, id: &str) -> Result<Arc<CachedDef>> {
        if let Some(d) = read(&self.defs).get(id) {
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
        write(&self.defs).insert(id.to_string(), cached.clone());
        Ok(cached)
    }

    // ---- instances -------------------------------------------------------------

    /// Starts the latest version of `key` and runs it to its first wait states; the
    /// instance is committed with them in one transaction.
    pub async fn start(&self, key: &str, req: StartRequest) -> Result<InstanceRecord> {
        let cached = read(&self.latest)
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
                write(&self.latest)
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
        let mut cs = tr.finish();
        crate::actor::stamp(&mut cs);
        let out = cs.instance.clone();
        self.commit(cs).await?;
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

    /// One page of an instance's history (see [`Store::history_page`]); `NotFound`
    /// for an unknown instance.
    pub async fn history_page(
        &self,
        id: &str,
        after: Option<HistoryPosition>,
        limit: usize,
    ) -> Result<Vec<(HistoryPosition, HistoryRecord)>> {
        self.instance(id).await?;
        Ok(self.store.history_page(id, after, limit).await?)
    }

    /// Cancels an instance (also one the engine stopped for corrupt state, as long as
    /// its runtime can be read).
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<InstanceRecord> {
        let reason = reason.to_string();
        let scope = Scope {
            on_stopped: true,
            ..Scope::default()
        };
        self.command(id, scope, move |tr| {
            tr.cancel(&reason);
            Ok(())
        })
        .await
    }

    pub async fn set_variables(&self, id: &str, vars: Vars) -> Result<InstanceRecord> {
        self.command(id, Scope::default(), move |tr| {
            tr.set_variables(vars.clone());
            Ok(())
        })
        .await
    }

    /// Commits a change set and, once committed, counts what it did ([`crate::metrics`]).
    async fn commit(&self, cs: steadyflow_store::ChangeSet) -> Result<(), StoreError> {
        let outcome = crate::metrics::Outcome::of(&cs);
        self.store.apply(cs).await?;
        outcome.record();
        Ok(())
    }

    /// Loads the instance, applies `f` in a transition and commits; on a lost optimistic
    /// lock it starts over on fresh state.
    async fn command<F>(&self, instance_id: &str, scope: Scope<'_>, f: F) -> Result<InstanceRecord>
    where
        F: FnMut(&mut Transition<'_>) -> Result<()> + Send,
    {
        self.command_on(instance_id, None, scope, f).await
    }

    /// [`Self::command`], with the instance already loaded for the first attempt.
    async fn command_on<F>(
        &self,
        instance_id: &str,
        mut loaded: Option<InstanceRecord>,
        scope: Scope<'_>,
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
            match self.attempt(inst, cached, scope, &mut f).await? {
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
        Err(too_busy("process instance", instance_id))
    }

    /// Runs `f` on `inst` and commits. `cached`: `inst` came from [`HotInstances`] and may
    /// be stale, so a failure of `f` on it means "read again", not a verdict. Corrupt
    /// state found on a fresh read stops the instance at an incident ([`corrupt`]).
    async fn attempt<F>(
        &self,
        inst: InstanceRecord,
        cached: bool,
        scope: Scope<'_>,
        f: &mut F,
    ) -> Result<Attempt>
    where
        F: FnMut(&mut Transition<'_>) -> Result<()> + Send,
    {
        let id = inst.id.clone();
        let cs = match self.instance_graph(&inst).await {
            Ok(def) => Transition::open(&def.graph, inst, self.now())
                .and_then(|tr| {
                    if tr.is_stopped() && !scope.on_stopped {
                        Err(corrupt::still_stopped(&id))
                    } else {
                        Ok(tr)
                    }
                })
                .map_err(EngineError::from)
                .and_then(|mut tr| f(&mut tr).map(|()| tr.finish())),
            Err(e) => Err(e),
        };
        let mut cs = match cs {
            Ok(cs) => cs,
            Err(_) if cached => {
                self.hot.forget(&id);
                return Ok(Attempt::Lost);
            }
            Err(EngineError::Corrupt { reason, .. }) => {
                return self.stop_corrupt(&id, reason, scope).await;
            }
            Err(e) => return Err(e),
        };
        crate::actor::stamp(&mut cs);
        let out = cs.instance.clone();
        match self.commit(cs).await {
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
}
