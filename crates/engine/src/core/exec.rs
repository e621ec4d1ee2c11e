//! Transition bookkeeping and commands.

use std::collections::VecDeque;

use serde_json::{Value, json};
use steadyflow_expr::{Context, Layered};
use steadyflow_model::{ElementKind, ProcessDefinition};
use steadyflow_store::{
    ChangeSet, ExternalTaskRecord, HistoryEvent, HistoryRecord, IncidentRecord, IncidentType,
    InstanceRecord, InstanceState, RawJson, TimerRecord, Timestamp, Vars,
};

use super::runtime::{Runtime, Token, Wait};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CoreError {
    #[error("instance {0} has ended")]
    Ended(String),
    #[error("no token of instance {instance} waits for {what} {id}")]
    NotWaiting {
        instance: String,
        what: &'static str,
        id: String,
    },
    /// Stored state contradicts itself or the definition (unparseable runtime JSON, a
    /// token at an element the definition lacks ...): the instance cannot move on until
    /// the data is repaired.
    #[error("corrupt state of instance {instance}: {reason}")]
    Corrupt { instance: String, reason: String },
}

impl CoreError {
    pub fn corrupt(instance: impl Into<String>, reason: impl Into<String>) -> Self {
        CoreError::Corrupt {
            instance: instance.into(),
            reason: reason.into(),
        }
    }
}

/// What a change set holds until [`Transition::finish`] puts the new instance state in:
/// the identity only, so opening a transition copies no variables.
fn placeholder(inst: &InstanceRecord) -> InstanceRecord {
    InstanceRecord {
        id: inst.id.clone(),
        definition_id: String::new(),
        definition_key: String::new(),
        business_key: None,
        state: inst.state,
        variables: Vars::new(),
        runtime: RawJson::null(),
        version: inst.version,
        started_at: inst.started_at,
        ended_at: None,
    }
}

/// Variables seen through several scopes: `layers` innermost first, then `root`.
struct Chain<'a> {
    layers: Vec<&'a Vars>,
    root: &'a Vars,
}

impl Context for Chain<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.layers
            .iter()
            .find_map(|l| l.get(name))
            .or_else(|| self.root.get(name))
    }
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// One command's worth of change to one instance.
pub struct Transition<'d> {
    pub(super) def: &'d ProcessDefinition,
    pub(super) now: Timestamp,
    pub(super) inst: InstanceRecord,
    pub(super) rt: Runtime,
    pub(super) queue: VecDeque<u64>,
    pub(super) cs: ChangeSet,
    /// External tasks this transition created (not yet in the store).
    pub(super) new_externals: Vec<String>,
    /// Elements entered so far: bounds a cycle without a wait state.
    pub(super) steps: usize,
}

impl<'d> Transition<'d> {
    /// A new instance of `def` (stored as `definition_id`), not yet started.
    pub fn create(
        def: &'d ProcessDefinition,
        definition_id: &str,
        variables: Vars,
        business_key: Option<String>,
        now: Timestamp,
    ) -> Self {
        let inst = InstanceRecord {
            id: new_id(),
            definition_id: definition_id.to_string(),
            definition_key: def.key.clone(),
            business_key,
            state: InstanceState::Active,
            variables,
            runtime: RawJson::null(),
            version: 0,
            started_at: now,
            ended_at: None,
        };
        let cs = ChangeSet::new(placeholder(&inst), None, now);
        Transition {
            def,
            now,
            inst,
            rt: Runtime::default(),
            queue: VecDeque::new(),
            cs,
            new_externals: Vec::new(),
            steps: 0,
        }
    }

    /// Opens a transition on a stored, running instance. Its runtime is parsed and
    /// checked against `def` ([`Runtime::check`]): what the transition relies on about
    /// stored data holds from here on, or this is `Err(Corrupt)`.
    pub fn open(
        def: &'d ProcessDefinition,
        inst: InstanceRecord,
        now: Timestamp,
    ) -> Result<Self, CoreError> {
        if inst.state.is_ended() {
            return Err(CoreError::Ended(inst.id));
        }
        let rt = Runtime::from_json(&inst.runtime)
            .map_err(|e| CoreError::corrupt(&inst.id, format!("unreadable runtime: {e}")))?;
        rt.check(def)
            .map_err(|reason| CoreError::corrupt(&inst.id, reason))?;
        let mut cs = ChangeSet::new(placeholder(&inst), Some(inst.version), now);
        cs.prior_state = Some(inst.state);
        Ok(Transition {
            def,
            now,
            inst,
            rt,
            queue: VecDeque::new(),
            cs,
            new_externals: Vec::new(),
            steps: 0,
        })
    }

    pub fn instance_id(&self) -> &str {
        &self.inst.id
    }

    /// The instance stands in state `incident` although no token or task of its runtime
    /// holds one: the engine stopped it from outside the token machine, for corrupt
    /// state (a `corruptState` incident). It stays stopped until that incident is
    /// retried ([`Self::resolve_corrupt_state`]).
    pub fn is_stopped(&self) -> bool {
        self.inst.state == InstanceState::Incident && !self.rt.has_incident()
    }

    /// Resolves the `corruptState` incident `incident_id` after its state was repaired
    /// (this transition opened, so the runtime now reads and checks). Timers the tokens
    /// wait for whose rows are gone (`existing_timers` lacks them: the engine removes a
    /// timer that fires into corrupt state) are armed again, due now: each was due when
    /// it was removed.
    pub fn resolve_corrupt_state(
        &mut self,
        incident_id: &str,
        existing_timers: &std::collections::HashSet<String>,
    ) {
        self.cs.incidents_resolved.push(incident_id.to_string());
        self.hist(
            HistoryEvent::IncidentResolved,
            None,
            json!({ "incidentId": incident_id }),
        );
        let mut lost = Vec::new();
        for b in &self.rt.scope_timers {
            if !existing_timers.contains(&b.timer_id) {
                lost.push((b.timer_id.clone(), b.boundary.clone()));
            }
        }
        for t in &self.rt.tokens {
            if let Wait::Timer { timer_id } = &t.wait
                && !existing_timers.contains(timer_id)
            {
                lost.push((timer_id.clone(), t.element.clone()));
            }
            for b in &t.boundary_timers {
                if !existing_timers.contains(&b.timer_id) {
                    lost.push((b.timer_id.clone(), b.boundary.clone()));
                }
            }
        }
        for (id, activity_id) in lost {
            self.cs.timers_created.push(TimerRecord {
                id,
                instance_id: self.inst.id.clone(),
                activity_id,
                due_at: self.now,
                owner: None,
                lock_until: None,
                created_at: self.now,
            });
        }
    }

    /// Commit only while `worker` still holds its lock on external task `task_id`.
    pub fn guard_lock(&mut self, task_id: &str, worker: &str) {
        self.cs.lock_guard = Some(steadyflow_store::LockGuard {
            task_id: task_id.to_string(),
            worker_id: worker.to_string(),
            now: self.now,
        });
    }

    /// Starts the instance at its none start event and runs it to rest.
    pub fn start(&mut self) {
        self.hist(
            HistoryEvent::InstanceStarted,
            None,
            json!({ "definitionId": self.inst.definition_id }),
        );
        if !self.inst.variables.is_empty() {
            let names: Vec<&String> = self.inst.variables.keys().collect();
            let detail = json!({ "names": names });
            self.hist(HistoryEvent::VariablesChanged, None, detail);
        }
        let start = self.def.start;
        let tid = self.spawn(start, None, None);
        if let Err(message) = self.arm_event_sub_timers(None) {
            let msg = format!("cannot arm the timer of an event sub-process: {message}");
            self.incident(tid, IncidentType::ExpressionFailed, msg, false);
        }
        self.run();
    }

    /// Completes the user task `task_id` with `variables` (set on the instance).
    pub fn complete_user_task(&mut self, task_id: &str, variables: Vars) -> Result<(), CoreError> {
        let tid = self.waiting(
            |w| matches!(w, Wait::UserTask { task_id: t } if t == task_id),
            "user task",
            task_id,
        )?;
        self.cs.tasks_removed.push(task_id.to_string());
        let scope = self.token(tid).scope;
        self.set_vars_in(scope, variables);
        self.complete_activity(tid, None);
        self.run();
        Ok(())
    }

    /// Completes the external task `task_id`; `variables` go through the element's output
    /// mappings when it has some, else straight onto the instance.
    pub fn complete_external_task(
        &mut self,
        task_id: &str,
        variables: Vars,
    ) -> Result<(), CoreError> {
        let tid = self.waiting(
            |w| matches!(w, Wait::ExternalTask { task_id: t } if t == task_id),
            "external task",
            task_id,
        )?;
        self.cs.external_removed.push(task_id.to_string());
        self.resolve_task_incidents(task_id);
        self.complete_activity(tid, Some(variables));
        self.run();
        Ok(())
    }

    /// A worker reports the BPMN error `code` for external task `task_id`: the task is
    /// removed, `variables` are set on the instance, and the error is thrown from the
    /// task's activity (see `throw_error`): caught by an error boundary event or error
    /// event sub-process, or an `unhandledError` incident at the activity.
    pub fn external_task_bpmn_error(
        &mut self,
        task_id: &str,
        code: &str,
        message: Option<&str>,
        variables: Vars,
    ) -> Result<(), CoreError> {
        let tid = self.waiting(
            |w| matches!(w, Wait::ExternalTask { task_id: t } if t == task_id),
            "external task",
            task_id,
        )?;
        self.cs.external_removed.push(task_id.to_string());
        self.resolve_task_incidents(task_id);
        self.token_mut(tid).wait = Wait::Ready;
        let scope = self.token(tid).scope;
        self.set_vars_in(scope, variables);
        self.throw_error(tid, code, message);
        self.run();
        Ok(())
    }

    /// Records a worker's failure report: `task` is the updated external task row. With no
    /// retries left, an incident stops the token until retries are set again.
    pub fn fail_external_task(&mut self, task: ExternalTaskRecord) -> Result<(), CoreError> {
        self.waiting(
            |w| matches!(w, Wait::ExternalTask { task_id: t } if *t == task.id),
            "external task",
            &task.id,
        )?;
        if task.retries == Some(0) {
            self.raise_task_incident(&task);
        }
        self.cs.external_upserted.push(task);
        Ok(())
    }

    /// Replaces the row of an external task a token waits for (new retries, unlock);
    /// retries above zero resolve its incident.
    pub fn update_external_task(&mut self, task: ExternalTaskRecord) -> Result<(), CoreError> {
        self.waiting(
            |w| matches!(w, Wait::ExternalTask { task_id: t } if *t == task.id),
            "external task",
            &task.id,
        )?;
        if task.retries.unwrap_or(1) > 0 {
            self.resolve_task_incidents(&task.id);
        } else {
            self.raise_task_incident(&task);
        }
        self.cs.external_upserted.push(task);
        Ok(())
    }

    /// Fires timer `timer_id`. `Err(NotWaiting)` when no token waits for it any more.
    pub fn fire_timer(&mut self, timer_id: &str) -> Result<(), CoreError> {
        if let Some(p) = self
            .rt
            .scope_timers
            .iter()
            .position(|b| b.timer_id == timer_id)
        {
            let b = self.rt.scope_timers.remove(p);
            self.cs.timers_removed.push(b.timer_id);
            self.start_timer_event_sub(None, &b.boundary)?;
            self.run();
            return Ok(());
        }
        let boundary = self.rt.tokens.iter().find_map(|t| {
            t.boundary_timers
                .iter()
                .find(|b| b.timer_id == timer_id)
                .map(|b| (t.id, b.boundary.clone()))
        });
        if let Some((host_token, boundary)) = boundary {
            self.fire_boundary_timer(host_token, timer_id, &boundary)?;
            self.run();
            return Ok(());
        }
        let tid = self.waiting(
            |w| matches!(w, Wait::Timer { timer_id: t } if t == timer_id),
            "timer",
            timer_id,
        )?;
        self.cs.timers_removed.push(timer_id.to_string());
        self.complete_activity(tid, None);
        self.run();
        Ok(())
    }

    /// A boundary timer fired: an interrupting one cancels the activity (its work item and
    /// its other boundary timers) and the token leaves through the boundary event; a
    /// non-interrupting one sends a new token out of the boundary event.
    fn fire_boundary_timer(
        &mut self,
        host_token: u64,
        timer_id: &str,
        boundary: &str,
    ) -> Result<(), CoreError> {
        // `open` checked that `boundary` is a boundary timer event of the definition;
        // this is Corrupt rather than a panic all the same, as it costs nothing here.
        let found = self
            .def
            .element_index(boundary)
            .map(|el| (el, &self.def.elements[el].kind));
        let (el, interrupting) = match found {
            Some((el, ElementKind::BoundaryTimer { interrupting, .. })) => (el, *interrupting),
            Some((_, ElementKind::TimerStartEvent { .. })) => {
                self.cs.timers_removed.push(timer_id.to_string());
                self.token_mut(host_token)
                    .boundary_timers
                    .retain(|b| b.timer_id != timer_id);
                return self.start_timer_event_sub(Some(host_token), boundary);
            }
            _ => {
                let reason = format!("timer {timer_id} names `{boundary}`, no boundary timer");
                return Err(CoreError::corrupt(&self.inst.id, reason));
            }
        };
        self.cs.timers_removed.push(timer_id.to_string());
        self.token_mut(host_token)
            .boundary_timers
            .retain(|b| b.timer_id != timer_id);
        let scope = self.token(host_token).scope;
        if interrupting {
            let host = self.token(host_token).element.clone();
            self.hist(
                HistoryEvent::ActivityCancelled,
                Some(&host),
                json!({ "by": boundary }),
            );
            self.cancel_token(host_token);
        }
        self.spawn(el, None, scope);
        Ok(())
    }

    /// The timer of the timer start event `start` fired while its scope (`scope`: the
    /// token at the sub-process, `None` for the process) runs: the event sub-process
    /// starts; an interrupting one first cancels everything else in the scope.
    fn start_timer_event_sub(&mut self, scope: Option<u64>, start: &str) -> Result<(), CoreError> {
        let found = self.def.element_index(start).and_then(|el| {
            let interrupting = self.def.elements[el].kind.event_sub_timer()?.1;
            Some((self.def.elements[el].parent?, interrupting))
        });
        let Some((es, interrupting)) = found else {
            let reason =
                format!("a timer names `{start}`, no timer start event of an event sub-process");
            return Err(CoreError::corrupt(&self.inst.id, reason));
        };
        if interrupting {
            let at = scope.map(|s| self.token(s).element.clone());
            let detail = json!({ "by": self.def.elements[es].id });
            self.hist(HistoryEvent::ActivityCancelled, at.as_deref(), detail);
            self.disarm_event_sub_timers(scope);
            self.cancel_scope(scope);
        }
        self.spawn(es, None, scope);
        Ok(())
    }

    /// Sets instance variables (outside any task).
    pub fn set_variables(&mut self, variables: Vars) {
        self.set_vars(variables);
        self.run();
    }

    /// Retries the element an incident stopped at (after its cause was fixed, e.g. by
    /// setting variables).
    pub fn retry_incident(&mut self, incident_id: &str) -> Result<(), CoreError> {
        let (tid, (leaving, completing)) = self.waiting_with(
            |w| match w {
                Wait::Incident {
                    incident_id: i,
                    leaving,
                    completing,
                } if i == incident_id => Some((*leaving, *completing)),
                _ => None,
            },
            "incident",
            incident_id,
        )?;
        self.cs.incidents_resolved.push(incident_id.to_string());
        let el = self.token(tid).element.clone();
        self.hist(
            HistoryEvent::IncidentResolved,
            Some(&el),
            json!({ "incidentId": incident_id }),
        );
        self.token_mut(tid).wait = Wait::Ready;
        if completing {
            self.complete_activity(tid, None);
        } else if leaving {
            self.leave(tid);
        } else {
            self.queue.push_back(tid);
        }
        self.run();
        Ok(())
    }

    /// Cancels the instance: every token and its work item is removed.
    pub fn cancel(&mut self, reason: &str) {
        self.clear_tokens();
        self.inst.state = InstanceState::Cancelled;
        self.inst.ended_at = Some(self.now);
        self.hist(
            HistoryEvent::InstanceCancelled,
            None,
            json!({ "reason": reason }),
        );
    }

    /// Closes the transition into the change set to commit.
    pub fn finish(mut self) -> ChangeSet {
        debug_assert!(self.rt.tokens.iter().all(|t| t.wait != Wait::Ready));
        if self.rt.tokens.is_empty() {
            // Nothing left for a process-level event sub-process to interrupt.
            self.disarm_event_sub_timers(None);
        }
        if self.inst.state != InstanceState::Cancelled {
            if self.rt.tokens.is_empty() {
                if self.inst.state != InstanceState::Completed {
                    self.inst.state = InstanceState::Completed;
                    self.inst.ended_at = Some(self.now);
                    self.hist(HistoryEvent::InstanceCompleted, None, Value::Null);
                }
            } else if self.rt.has_incident() {
                self.inst.state = InstanceState::Incident;
            } else {
                self.inst.state = InstanceState::Active;
            }
        }
        self.inst.version += 1;
        self.inst.runtime = self.rt.to_json();
        self.cs.instance = self.inst;
        self.cs
    }

    // ---- bookkeeping -------------------------------------------------------------

    pub(super) fn hist(&mut self, event: HistoryEvent, activity: Option<&str>, detail: Value) {
        self.cs.history.push(HistoryRecord {
            instance_id: self.inst.id.clone(),
            time: self.now,
            event,
            activity_id: activity.map(str::to_string),
            detail,
        });
    }

    fn set_vars(&mut self, variables: Vars) {
        if variables.is_empty() {
            return;
        }
        let names: Vec<String> = variables.keys().cloned().collect();
        self.inst.variables.extend(variables);
        self.hist(
            HistoryEvent::VariablesChanged,
            None,
            json!({ "names": names }),
        );
    }

    fn waiting(
        &self,
        f: impl Fn(&Wait) -> bool,
        what: &'static str,
        id: &str,
    ) -> Result<u64, CoreError> {
        self.waiting_with(|w| f(w).then_some(()), what, id)
            .map(|(tid, ())| tid)
    }

    /// The first token whose wait `f` picks, with what `f` took from it.
    fn waiting_with<T>(
        &self,
        f: impl Fn(&Wait) -> Option<T>,
        what: &'static str,
        id: &str,
    ) -> Result<(u64, T), CoreError> {
        self.rt
            .tokens
            .iter()
            .find_map(|t| f(&t.wait).map(|v| (t.id, v)))
            .ok_or_else(|| CoreError::NotWaiting {
                instance: self.inst.id.clone(),
                what,
                id: id.to_string(),
            })
    }

    #[allow(
        clippy::expect_used,
        reason = "token ids reach here only from the runtime's own tokens"
    )]
    pub(super) fn pos(&self, tid: u64) -> usize {
        // Local invariant: token ids reach here only from the runtime's own tokens (a
        // `waiting` lookup, `spawn`, or the queue, which `run` filters by existence).
        self.rt
            .tokens
            .iter()
            .position(|t| t.id == tid)
            .expect("token exists")
    }

    pub(super) fn token(&self, tid: u64) -> &Token {
        &self.rt.tokens[self.pos(tid)]
    }

    pub(super) fn token_mut(&mut self, tid: u64) -> &mut Token {
        let p = self.pos(tid);
        &mut self.rt.tokens[p]
    }

    #[allow(
        clippy::expect_used,
        reason = "`open` checked every stored token's element; new ones come from the definition"
    )]
    pub(super) fn element_of(&self, tid: u64) -> usize {
        let t = self.token(tid);
        // Invariant established by this transition: `open` checked that every stored
        // token stands at an element of the definition (`Runtime::check`), and tokens
        // made or moved since take their element from the definition's own indices.
        self.def
            .element_index(&t.element)
            .expect("token stands at an element of its definition")
    }

    /// New token at element `el` inside `scope` (see [`Token::scope`]), queued for
    /// processing.
    pub(super) fn spawn(&mut self, el: usize, via: Option<usize>, scope: Option<u64>) -> u64 {
        let id = self.rt.next_token;
        self.rt.next_token += 1;
        self.rt.tokens.push(Token {
            id,
            element: self.def.elements[el].id.clone(),
            via: via.map(|f| self.def.flows[f].id.clone()),
            wait: Wait::Ready,
            locals: Vars::new(),
            scope,
            boundary_timers: Vec::new(),
        });
        self.queue.push_back(id);
        id
    }

    /// Moves token `tid` along flow `f` and queues it.
    pub(super) fn move_token(&mut self, tid: u64, f: usize) {
        let flow = &self.def.flows[f];
        let (target, fid) = (self.def.elements[flow.target].id.clone(), flow.id.clone());
        let t = self.token_mut(tid);
        t.element = target;
        t.via = Some(fid);
        t.wait = Wait::Ready;
        t.locals.clear();
        self.queue.push_back(tid);
    }

    pub(super) fn remove_token(&mut self, tid: u64) {
        let p = self.pos(tid);
        self.rt.tokens.remove(p);
    }

    /// Evaluates with the token's local variables over those of the sub-processes around
    /// it (innermost first) over the instance's.
    pub(super) fn with_ctx<T>(&self, tid: u64, f: impl FnOnce(&dyn Context) -> T) -> T {
        let t = self.token(tid);
        if t.scope.is_none() {
            return if t.locals.is_empty() {
                f(&self.inst.variables)
            } else {
                f(&Layered {
                    inner: &t.locals,
                    outer: &self.inst.variables,
                })
            };
        }
        self.with_scope_ctx(Some(&t.locals), t.scope, f)
    }

    /// Evaluates with `own` over the local variables of `scope` and the scopes around
    /// it, over the instance's.
    pub(super) fn with_scope_ctx<T>(
        &self,
        own: Option<&Vars>,
        scope: Option<u64>,
        f: impl FnOnce(&dyn Context) -> T,
    ) -> T {
        // At process level (the hot path): no allocation.
        if scope.is_none() {
            return match own.filter(|v| !v.is_empty()) {
                Some(inner) => f(&Layered {
                    inner,
                    outer: &self.inst.variables,
                }),
                None => f(&self.inst.variables),
            };
        }
        let mut layers: Vec<&Vars> = own.into_iter().filter(|v| !v.is_empty()).collect();
        let mut s = scope;
        while let Some(id) = s {
            let st = self.token(id);
            if !st.locals.is_empty() {
                layers.push(&st.locals);
            }
            s = st.scope;
        }
        if layers.is_empty() {
            f(&self.inst.variables)
        } else {
            f(&Chain {
                layers,
                root: &self.inst.variables,
            })
        }
    }

    /// Sets variables as seen from `scope`: a variable that is local to that sub-process
    /// (or one around it, innermost first) is updated there; any other is set on the
    /// instance. So a sub-process's local variables never leak out of it.
    pub(super) fn set_vars_in(&mut self, scope: Option<u64>, vars: Vars) {
        if vars.is_empty() {
            return;
        }
        let names: Vec<String> = vars.keys().cloned().collect();
        for (k, v) in vars {
            let mut s = scope;
            let mut home = None;
            while let Some(id) = s {
                let st = self.token(id);
                if st.locals.contains_key(&k) {
                    home = Some(id);
                    break;
                }
                s = st.scope;
            }
            match home {
                Some(id) => {
                    self.token_mut(id).locals.insert(k, v);
                }
                None => {
                    self.inst.variables.insert(k, v);
                }
            }
        }
        self.hist(
            HistoryEvent::VariablesChanged,
            None,
            json!({ "names": names }),
        );
    }

    pub(super) fn new_incident(
        &mut self,
        el: &str,
        kind: IncidentType,
        message: String,
        task: Option<String>,
    ) -> String {
        let id = new_id();
        self.hist(
            HistoryEvent::IncidentCreated,
            Some(el),
            json!({ "incidentId": id, "type": kind, "message": message }),
        );
        self.cs.incidents_created.push(IncidentRecord {
            id: id.clone(),
            instance_id: self.inst.id.clone(),
            activity_id: el.to_string(),
            incident_type: kind,
            message,
            external_task_id: task,
            created_at: self.now,
            resolved_at: None,
        });
        id
    }

    /// Stops token `tid` at an incident.
    pub(super) fn incident(
        &mut self,
        tid: u64,
        kind: IncidentType,
        message: String,
        leaving: bool,
    ) {
        let el = self.token(tid).element.clone();
        tracing::debug!(instance = %self.inst.id, element = %el, %message, "incident");
        let incident_id = self.new_incident(&el, kind, message, None);
        self.token_mut(tid).wait = Wait::Incident {
            incident_id,
            leaving,
            completing: false,
        };
    }

    fn resolve_task_incidents(&mut self, task_id: &str) {
        let (resolved, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.rt.task_incidents)
            .into_iter()
            .partition(|(_, t)| t == task_id);
        self.rt.task_incidents = kept;
        for (inc, _) in resolved {
            self.cs.incidents_resolved.push(inc);
        }
    }

    /// Removes every token with its work item, and resolves open incidents.
    pub(super) fn clear_tokens(&mut self) {
        // Cancelling a sub-process token takes the tokens inside with it.
        while let Some(tid) = self.rt.tokens.first().map(|t| t.id) {
            self.cancel_token(tid);
        }
        for (inc, _) in std::mem::take(&mut self.rt.task_incidents) {
            self.cs.incidents_resolved.push(inc);
        }
        self.disarm_event_sub_timers(None);
        self.queue.clear();
    }

    /// Removes token `tid` with its work item, its boundary timers and its incidents; a
    /// token at a sub-process takes every token inside it along.
    pub(super) fn cancel_token(&mut self, tid: u64) {
        if self.token(tid).wait == Wait::SubProcess {
            self.cancel_scope(Some(tid));
        }
        let p = self.pos(tid);
        let t = self.rt.tokens.remove(p);
        for b in t.boundary_timers {
            self.remove_timer(b.timer_id);
        }
        match t.wait {
            Wait::UserTask { task_id } => self.remove_task(task_id),
            Wait::ExternalTask { task_id } => {
                self.resolve_task_incidents(&task_id);
                self.remove_external(task_id);
            }
            Wait::Timer { timer_id } => self.remove_timer(timer_id),
            Wait::Incident { incident_id, .. } => self.cs.incidents_resolved.push(incident_id),
            Wait::Ready | Wait::Join | Wait::SubProcess => {}
        }
        self.queue.retain(|q| *q != tid);
    }

    /// Cancels every token directly inside `scope` (with what is inside them).
    pub(super) fn cancel_scope(&mut self, scope: Option<u64>) {
        while let Some(child) = self
            .rt
            .tokens
            .iter()
            .find(|t| t.scope == scope)
            .map(|t| t.id)
        {
            self.cancel_token(child);
        }
    }

    /// Arms the timers of the boundary events of the activity token `tid` just entered.
    pub(super) fn arm_boundaries(&mut self, tid: u64, el: usize) -> Result<(), String> {
        let def = self.def;
        for &b in &def.elements[el].boundaries {
            let ElementKind::BoundaryTimer { timer, .. } = &def.elements[b].kind else {
                continue;
            };
            let due = self.due(tid, timer)?;
            let boundary = def.elements[b].id.clone();
            let timer_id = self.add_timer(&boundary, due);
            self.token_mut(tid)
                .boundary_timers
                .push(super::runtime::BoundaryTimer { timer_id, boundary });
        }
        if def.elements[el].kind.is_scope() {
            self.arm_event_sub_timers(Some(tid))?;
        }
        Ok(())
    }

    /// Arms the timers of the timer start events of the event sub-processes directly in
    /// `scope` (the token at a sub-process just entered, or `None`: the process).
    pub(super) fn arm_event_sub_timers(&mut self, scope: Option<u64>) -> Result<(), String> {
        let def = self.def;
        let container = scope.map(|s| self.element_of(s));
        for es in def.event_subprocesses(container) {
            let ElementKind::EventSubProcess { start } = def.elements[es].kind else {
                continue;
            };
            let Some((timer, _)) = def.elements[start].kind.event_sub_timer() else {
                continue;
            };
            let due = match scope {
                Some(tid) => self.due(tid, timer)?,
                None => self.due_in(&self.inst.variables, timer)?,
            };
            let b = super::runtime::BoundaryTimer {
                timer_id: self.add_timer(&def.elements[start].id, due),
                boundary: def.elements[start].id.clone(),
            };
            match scope {
                Some(tid) => self.token_mut(tid).boundary_timers.push(b),
                None => self.rt.scope_timers.push(b),
            }
        }
        Ok(())
    }

    /// Removes the timers of the event sub-processes of `scope` (it was interrupted or
    /// ended); the boundary timers of its sub-process stay.
    pub(super) fn disarm_event_sub_timers(&mut self, scope: Option<u64>) {
        let def = self.def;
        let is_start = |b: &super::runtime::BoundaryTimer| {
            def.element_index(&b.boundary)
                .is_some_and(|el| def.elements[el].kind.event_sub_timer().is_some())
        };
        let list = match scope {
            Some(tid) => std::mem::take(&mut self.token_mut(tid).boundary_timers),
            None => std::mem::take(&mut self.rt.scope_timers),
        };
        let (gone, kept): (Vec<_>, Vec<_>) = list.into_iter().partition(|b| is_start(b));
        match scope {
            Some(tid) => self.token_mut(tid).boundary_timers = kept,
            None => self.rt.scope_timers = kept,
        }
        for b in gone {
            self.remove_timer(b.timer_id);
        }
    }

    /// Removes the boundary timers of token `tid` (its activity completed).
    pub(super) fn disarm_boundaries(&mut self, tid: u64) {
        let timers = std::mem::take(&mut self.token_mut(tid).boundary_timers);
        for b in timers {
            self.remove_timer(b.timer_id);
        }
    }

    // A work item created and removed by the same command never reaches the store.

    fn remove_task(&mut self, id: String) {
        let before = self.cs.tasks_created.len();
        self.cs.tasks_created.retain(|t| t.id != id);
        if self.cs.tasks_created.len() == before {
            self.cs.tasks_removed.push(id);
        }
    }

    fn remove_external(&mut self, id: String) {
        self.cs.external_upserted.retain(|e| e.id != id);
        match self.new_externals.iter().position(|n| *n == id) {
            Some(p) => {
                self.new_externals.swap_remove(p);
            }
            None => self.cs.external_removed.push(id),
        }
    }

    fn remove_timer(&mut self, id: String) {
        let before = self.cs.timers_created.len();
        self.cs.timers_created.retain(|t| t.id != id);
        if self.cs.timers_created.len() == before {
            self.cs.timers_removed.push(id);
        }
    }

    /// An incident holding a waiting external task that has no retries left (once).
    fn raise_task_incident(&mut self, task: &ExternalTaskRecord) {
        if self.rt.task_incidents.iter().any(|(_, t)| *t == task.id) {
            return;
        }
        let msg = format!(
            "external task at `{}` has no retries left: {}",
            task.activity_id,
            task.error_message
                .clone()
                .unwrap_or_else(|| "retries set to 0".into())
        );
        let inc = self.new_incident(
            &task.activity_id,
            IncidentType::FailedExternalTask,
            msg,
            Some(task.id.clone()),
        );
        self.rt.task_incidents.push((inc, task.id.clone()));
    }
}
