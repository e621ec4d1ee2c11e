//! Moving tokens: entering elements, choosing outgoing flows, forks and joins.

use serde_json::{Value, json};
use steadyflow_model::{ElementKind, Thrown};
use steadyflow_store::{HistoryEvent, IncidentType, Vars};

use super::exec::Transition;
use super::runtime::Wait;

/// Most elements one command may pass through before its tokens are stopped at an
/// incident: a cycle without a wait state would otherwise never end.
const MAX_STEPS: usize = 10_000;

/// Why no outgoing flow could be chosen.
enum NoFlow {
    NoneMatched,
    Eval(String),
}

impl Transition<'_> {
    /// Processes queued tokens until every token rests; then fires inclusive joins whose
    /// last possible arrival is gone, and goes on until nothing moves.
    pub(super) fn run(&mut self) {
        loop {
            while let Some(tid) = self.queue.pop_front() {
                if !self
                    .rt
                    .tokens
                    .iter()
                    .any(|t| t.id == tid && t.wait == Wait::Ready)
                {
                    continue;
                }
                self.steps += 1;
                if self.steps > MAX_STEPS {
                    let el = self.token(tid).element.clone();
                    let msg = format!(
                        "more than {MAX_STEPS} elements passed in one step at `{el}`: a loop without a wait state?"
                    );
                    self.incident(tid, IncidentType::LoopWithoutWaitState, msg, false);
                    continue;
                }
                self.enter(tid);
            }
            if !self.fire_ready_inclusive_join() && !self.complete_finished_scopes() {
                break;
            }
        }
    }

    fn enter(&mut self, tid: u64) {
        let el = self.element_of(tid);
        let e = &self.def.elements[el];
        let id = e.id.clone();
        self.hist(
            HistoryEvent::ActivityStarted,
            Some(&id),
            json!({ "type": e.tag }),
        );
        let created = match &e.kind {
            ElementKind::StartEvent | ElementKind::PassThrough => {
                self.complete_activity(tid, None);
                Ok(())
            }
            ElementKind::EndEvent => {
                self.hist(HistoryEvent::ActivityCompleted, Some(&id), Value::Null);
                self.remove_token(tid);
                Ok(())
            }
            ElementKind::TerminateEndEvent => {
                self.hist(HistoryEvent::ActivityCompleted, Some(&id), Value::Null);
                // Inside a sub-process it ends that sub-process only, which then
                // completes as usual (see `complete_finished_scopes`).
                match self.token(tid).scope {
                    Some(scope) => self.cancel_scope(Some(scope)),
                    None => self.clear_tokens(),
                }
                Ok(())
            }
            ElementKind::ErrorEndEvent { code } => {
                self.hist(HistoryEvent::ActivityCompleted, Some(&id), Value::Null);
                self.throw_error(tid, code, None);
                Ok(())
            }
            ElementKind::SubProcess { start } | ElementKind::EventSubProcess { start } => {
                let start = *start;
                self.arm_boundaries(tid, el)
                    .and_then(|()| self.enter_scope_inputs(tid, el))
                    .map(|()| {
                        self.token_mut(tid).wait = Wait::SubProcess;
                        self.spawn(start, None, Some(tid));
                    })
            }
            ElementKind::EscalationThrow { code } => {
                self.throw_to_catcher(tid, Thrown::Escalation, code, None);
                // Uncaught or caught without interrupting it, the throw event goes on.
                if self.rt.tokens.iter().any(|t| t.id == tid) {
                    self.complete_activity(tid, None);
                }
                Ok(())
            }
            ElementKind::EscalationEndEvent { code } => {
                self.hist(HistoryEvent::ActivityCompleted, Some(&id), Value::Null);
                self.throw_to_catcher(tid, Thrown::Escalation, code, None);
                if self.rt.tokens.iter().any(|t| t.id == tid) {
                    self.remove_token(tid);
                }
                Ok(())
            }
            ElementKind::BoundaryEscalation { .. } => {
                self.complete_activity(tid, None);
                Ok(())
            }
            ElementKind::ErrorStartEvent { .. }
            | ElementKind::EscalationStartEvent { .. }
            | ElementKind::TimerStartEvent { .. } => {
                self.complete_activity(tid, None);
                Ok(())
            }
            // Boundary timers first: when either step fails, nothing is left behind.
            ElementKind::UserTask(ut) => self
                .arm_boundaries(tid, el)
                .and_then(|()| self.create_user_task(tid, el, ut)),
            ElementKind::ExternalTask { topic, .. } => self
                .arm_boundaries(tid, el)
                .and_then(|()| self.create_external_task(tid, el, topic)),
            ElementKind::BoundaryTimer { .. } | ElementKind::BoundaryError { .. } => {
                self.complete_activity(tid, None);
                Ok(())
            }
            ElementKind::TimerCatch(td) => self.create_timer(tid, el, td),
            ElementKind::ExclusiveGateway => {
                self.hist(HistoryEvent::ActivityCompleted, Some(&id), Value::Null);
                self.leave(tid);
                Ok(())
            }
            ElementKind::ParallelGateway | ElementKind::InclusiveGateway
                if e.incoming.len() > 1 =>
            {
                self.token_mut(tid).wait = Wait::Join;
                let scope = self.token(tid).scope;
                self.try_join(el, scope);
                Ok(())
            }
            ElementKind::ParallelGateway | ElementKind::InclusiveGateway => {
                self.hist(HistoryEvent::ActivityCompleted, Some(&id), Value::Null);
                self.leave(tid);
                Ok(())
            }
        };
        if let Err(message) = created {
            self.disarm_boundaries(tid);
            self.incident(
                tid,
                IncidentType::ExpressionFailed,
                format!("cannot enter `{id}`: {message}"),
                false,
            );
        }
    }

    /// The input mappings of the sub-process `el` token `tid` enters: its local variables.
    fn enter_scope_inputs(&mut self, tid: u64, el: usize) -> Result<(), String> {
        let def = self.def;
        let mut locals = Vars::new();
        for m in &def.elements[el].inputs {
            let v = self
                .with_ctx(tid, |ctx| m.source.eval(ctx))
                .map_err(|err| format!("input mapping `{}`: {err}", m.target))?;
            locals.insert(m.target.clone(), v);
        }
        self.token_mut(tid).locals = locals;
        Ok(())
    }

    /// Completes the activity token `tid` stands at: output mappings (or plain
    /// variables), history, then leaves along its outgoing flows.
    pub(super) fn complete_activity(&mut self, tid: u64, completion: Option<Vars>) {
        self.disarm_boundaries(tid);
        let el = self.element_of(tid);
        let e = &self.def.elements[el];
        let id = e.id.clone();
        if !e.outputs.is_empty() {
            let mut scope = self.token(tid).locals.clone();
            scope.extend(completion.unwrap_or_default());
            let mut out = Vars::new();
            let around = self.token(tid).scope;
            for m in &e.outputs {
                match self.with_scope_ctx(Some(&scope), around, |ctx| m.source.eval(ctx)) {
                    Ok(v) => {
                        out.insert(m.target.clone(), v);
                    }
                    Err(err) => {
                        self.incident(
                            tid,
                            IncidentType::ExpressionFailed,
                            format!("output mapping of `{id}` failed: {err}"),
                            true,
                        );
                        // A retry maps the same completion again.
                        let t = self.token_mut(tid);
                        t.locals = scope;
                        if let Wait::Incident { completing, .. } = &mut t.wait {
                            *completing = true;
                        }
                        return;
                    }
                }
            }
            let around = self.token(tid).scope;
            self.set_vars_in(around, out);
        } else if let Some(vars) = completion {
            let around = self.token(tid).scope;
            self.set_vars_in(around, vars);
        }
        self.hist(HistoryEvent::ActivityCompleted, Some(&id), Value::Null);
        self.leave(tid);
    }

    /// Chooses the outgoing flows of the element token `tid` stands at and follows them.
    /// No outgoing flow at all ends the token; flows that exist but none can be taken
    /// stop it at an incident.
    pub(super) fn leave(&mut self, tid: u64) {
        let el = self.element_of(tid);
        let e = &self.def.elements[el];
        if e.outgoing.is_empty() {
            self.remove_token(tid);
            return;
        }
        let chosen = match &e.kind {
            ElementKind::ParallelGateway => Ok(e.outgoing.clone()),
            ElementKind::ExclusiveGateway => self.select(tid, el, true),
            _ => self.select(tid, el, false),
        };
        match chosen {
            Ok(flows) => {
                let mut first = true;
                for f in flows {
                    if first {
                        self.move_token(tid, f);
                        first = false;
                    } else {
                        let target = self.def.flows[f].target;
                        let scope = self.token(tid).scope;
                        self.spawn(target, Some(f), scope);
                    }
                }
            }
            Err(NoFlow::NoneMatched) => {
                let what = if e.kind.is_gateway() {
                    "gateway"
                } else {
                    "element"
                };
                let msg = format!(
                    "no outgoing sequence flow of {what} `{}` can be taken: no condition holds and there is no default flow",
                    e.id
                );
                self.incident(tid, IncidentType::NoMatchingFlow, msg, true);
            }
            Err(NoFlow::Eval(err)) => {
                let msg = format!("condition on a flow out of `{}` failed: {err}", e.id);
                self.incident(tid, IncidentType::ExpressionFailed, msg, true);
            }
        }
    }

    /// Flows whose condition holds (no condition counts as true), excluding the default;
    /// `first_only` for exclusive gateways (document order). Falls back to the default.
    fn select(&self, tid: u64, el: usize, first_only: bool) -> Result<Vec<usize>, NoFlow> {
        let e = &self.def.elements[el];
        let mut out = Vec::new();
        for &f in e.outgoing.iter().filter(|f| Some(**f) != e.default_flow) {
            let take = match &self.def.flows[f].condition {
                None => true,
                Some(c) => self
                    .with_ctx(tid, |ctx| c.eval_bool(ctx))
                    .map_err(|e| NoFlow::Eval(e.to_string()))?,
            };
            if take {
                out.push(f);
                if first_only {
                    break;
                }
            }
        }
        if out.is_empty() {
            out.extend(e.default_flow);
        }
        if out.is_empty() {
            Err(NoFlow::NoneMatched)
        } else {
            Ok(out)
        }
    }

    /// Checks the joining gateway `el` after a token of `scope` arrived there.
    fn try_join(&mut self, el: usize, scope: Option<u64>) {
        match self.def.elements[el].kind {
            ElementKind::ParallelGateway => self.try_parallel_join(el, scope),
            _ => {
                self.try_inclusive_join(el, scope);
            }
        }
    }

    /// A parallel join fires once a token of the same scope waits on every incoming
    /// flow; it consumes one token per flow.
    fn try_parallel_join(&mut self, el: usize, scope: Option<u64>) {
        let e = &self.def.elements[el];
        let mut picked: Vec<u64> = Vec::with_capacity(e.incoming.len());
        for &f in &e.incoming {
            let fid = &self.def.flows[f].id;
            let found = self.rt.tokens.iter().find(|t| {
                t.wait == Wait::Join
                    && t.scope == scope
                    && t.element == e.id
                    && t.via.as_deref() == Some(fid.as_str())
                    && !picked.contains(&t.id)
            });
            match found {
                Some(t) => picked.push(t.id),
                None => return,
            }
        }
        self.fire_join(el, &picked, scope);
    }

    /// An inclusive join fires when tokens of `scope` wait at it and no other token of
    /// that scope can still reach it (a token at a sub-process stands for the tokens
    /// inside it); it consumes every waiting token.
    fn try_inclusive_join(&mut self, el: usize, scope: Option<u64>) -> bool {
        let id = &self.def.elements[el].id;
        let mut waiting = Vec::new();
        for t in self.rt.tokens.iter().filter(|t| t.scope == scope) {
            if t.wait == Wait::Join && t.element == *id {
                waiting.push(t.id);
            } else {
                // Invariant: `Transition::open` checked every token's element (see
                // `element_of`).
                #[allow(
                    clippy::expect_used,
                    reason = "`Transition::open` checked every token's element"
                )]
                let at = self
                    .def
                    .element_index(&t.element)
                    .expect("token element exists");
                if self.def.can_reach(at, el) {
                    return false;
                }
            }
        }
        if waiting.is_empty() {
            return false;
        }
        self.fire_join(el, &waiting, scope);
        true
    }

    fn fire_join(&mut self, el: usize, consumed: &[u64], scope: Option<u64>) {
        for &t in consumed {
            self.remove_token(t);
        }
        let tid = self.spawn(el, None, scope);
        // The merged token continues at once: it does not enter the gateway again.
        self.queue.retain(|q| *q != tid);
        let id = self.def.elements[el].id.clone();
        self.hist(
            HistoryEvent::ActivityCompleted,
            Some(&id),
            json!({ "joined": consumed.len() }),
        );
        self.leave(tid);
    }

    /// After the instance came to rest: an inclusive join may have become ready because
    /// a token that could have reached it went elsewhere.
    fn fire_ready_inclusive_join(&mut self) -> bool {
        let mut joins: Vec<(usize, Option<u64>)> = self
            .rt
            .tokens
            .iter()
            .filter(|t| t.wait == Wait::Join)
            .filter_map(|t| self.def.element_index(&t.element).map(|el| (el, t.scope)))
            .filter(|(el, _)| matches!(self.def.elements[*el].kind, ElementKind::InclusiveGateway))
            .collect();
        joins.sort_unstable();
        joins.dedup();
        joins
            .into_iter()
            .any(|(el, scope)| self.try_inclusive_join(el, scope))
    }

    /// Sends `what` with `code` from token `tid` to the nearest catcher, searched
    /// outwards: a catch boundary event on the activity, then an event sub-process of
    /// the enclosing scope, then the boundary events of that scope's sub-process, and so
    /// on; a catcher for exactly `code` before a catch-all one on the same activity or
    /// scope. An interrupting catcher cancels what it interrupts (which may include
    /// `tid`); a non-interrupting one starts beside it. `false` when nothing caught it.
    pub(super) fn throw_to_catcher(
        &mut self,
        tid: u64,
        what: Thrown,
        code: &str,
        message: Option<&str>,
    ) -> bool {
        let def = self.def;
        let pick = |candidates: &mut dyn Iterator<Item = usize>| -> Option<(usize, bool)> {
            let mut any = None;
            for c in candidates {
                let own = def.elements[c].kind.catches(what);
                let start = match def.elements[c].kind {
                    ElementKind::EventSubProcess { start } => {
                        def.elements[start].kind.catches(what)
                    }
                    _ => None,
                };
                match own.or(start) {
                    Some((Some(k), interrupting)) if k == code => return Some((c, interrupting)),
                    Some((None, interrupting)) if any.is_none() => any = Some((c, interrupting)),
                    _ => {}
                }
            }
            any
        };
        let key = match what {
            Thrown::Error => "errorCode",
            Thrown::Escalation => "escalationCode",
        };
        let thrower = self.token(tid).element.clone();
        let mut holder = tid;
        loop {
            let el = self.element_of(holder);
            let scope = self.token(holder).scope;
            let detail = json!({ key: code, "errorMessage": message, "thrownAt": thrower });
            if let Some((b, interrupting)) = pick(&mut def.elements[el].boundaries.iter().copied())
            {
                if interrupting {
                    let host = def.elements[el].id.clone();
                    let mut detail = detail;
                    detail["by"] = json!(def.elements[b].id);
                    self.hist(HistoryEvent::ActivityCancelled, Some(&host), detail);
                    self.cancel_token(holder);
                }
                self.spawn(b, None, scope);
                return true;
            }
            let container = scope.map(|s| self.element_of(s));
            // Thrown inside an event sub-process: neither it nor its siblings catch it; it
            // goes on to the boundary events of the scope around them.
            let from_event_sub =
                matches!(def.elements[el].kind, ElementKind::EventSubProcess { .. });
            let event_sub = if from_event_sub {
                None
            } else {
                pick(&mut def.event_subprocesses(container))
            };
            if let Some((es, interrupting)) = event_sub {
                if interrupting {
                    let mut detail = detail;
                    detail["by"] = json!(def.elements[es].id);
                    let at = container.map(|c| def.elements[c].id.clone());
                    self.hist(HistoryEvent::ActivityCancelled, at.as_deref(), detail);
                    self.disarm_event_sub_timers(scope);
                    self.cancel_scope(scope);
                }
                self.spawn(es, None, scope);
                return true;
            }
            match scope {
                Some(s) => holder = s,
                None => return false,
            }
        }
    }

    /// After the instance came to rest: a sub-process with no token left inside has
    /// completed, and its token leaves it (output mappings, outgoing flows).
    fn complete_finished_scopes(&mut self) -> bool {
        let done = self
            .rt
            .tokens
            .iter()
            .filter(|t| t.wait == Wait::SubProcess)
            .map(|t| t.id)
            .find(|id| !self.rt.tokens.iter().any(|t| t.scope == Some(*id)));
        match done {
            Some(tid) => {
                self.token_mut(tid).wait = Wait::Ready;
                self.complete_activity(tid, None);
                true
            }
            None => false,
        }
    }

    /// Throws the BPMN error `code` from token `tid` (at an error end event, or at the
    /// external task whose worker reported it) to the nearest catcher (see
    /// [`Self::throw_to_catcher`]). With no catcher, `tid` stops at an `unhandledError`
    /// incident naming its element.
    pub(super) fn throw_error(&mut self, tid: u64, code: &str, message: Option<&str>) {
        if self.throw_to_catcher(tid, Thrown::Error, code, message) {
            return;
        }
        let el = self.token(tid).element.clone();
        let msg = match message {
            Some(m) => format!(
                "BPMN error `{code}` ({m}) thrown at `{el}` is caught by no error boundary event or error event sub-process"
            ),
            None => format!(
                "BPMN error `{code}` thrown at `{el}` is caught by no error boundary event or error event sub-process"
            ),
        };
        self.disarm_boundaries(tid);
        self.incident(tid, IncidentType::UnhandledError, msg, false);
    }
}
