//! The pure token state machine, without any store: commands in, change sets out.

// A test crate: its helpers outside `#[test]` functions may unwrap too (clippy.toml
// exempts only test functions and `#[cfg(test)]` modules).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed unwrap is a failed test"
)]

use chrono::{Duration, TimeZone, Utc};
use serde_json::{Value, json};
use steadyflow_engine::core::{CoreError, Runtime, Transition, Wait};
use steadyflow_model::{ProcessDefinition, parse_definitions};
use steadyflow_store::{ChangeSet, InstanceRecord, InstanceState, Vars};

const NS: &str = r#"xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn""#;

fn model(body: &str) -> ProcessDefinition {
    let xml = format!(
        r#"<definitions {NS} targetNamespace="t"><process id="p" isExecutable="true">{body}</process></definitions>"#
    );
    parse_definitions(&xml).expect("model parses").remove(0)
}

fn vars(v: Value) -> Vars {
    v.as_object().cloned().unwrap_or_default()
}

/// Applies change sets to an in-memory picture of one instance (what a store would do).
struct Harness {
    def: ProcessDefinition,
    inst: InstanceRecord,
    tasks: Vec<(String, String)>,
    timers: Vec<(String, String, chrono::DateTime<Utc>)>,
    /// External tasks: (id, activity id).
    externals: Vec<(String, String)>,
    incidents: Vec<steadyflow_store::IncidentRecord>,
    now: chrono::DateTime<Utc>,
}

impl Harness {
    fn start(def: ProcessDefinition, v: Value) -> Harness {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut tr = Transition::create(&def, "p:1", vars(v), None, now);
        tr.start();
        let cs = tr.finish();
        let mut h = Harness {
            inst: cs.instance.clone(),
            def,
            tasks: vec![],
            timers: vec![],
            externals: vec![],
            incidents: vec![],
            now,
        };
        h.absorb(cs);
        h
    }

    fn absorb(&mut self, cs: ChangeSet) {
        self.tasks.retain(|(id, _)| !cs.tasks_removed.contains(id));
        self.tasks.extend(
            cs.tasks_created
                .iter()
                .map(|t| (t.id.clone(), t.activity_id.clone())),
        );
        self.timers
            .retain(|(id, _, _)| !cs.timers_removed.contains(id));
        self.timers.extend(
            cs.timers_created
                .iter()
                .map(|t| (t.id.clone(), t.activity_id.clone(), t.due_at)),
        );
        self.externals
            .retain(|(id, _)| !cs.external_removed.contains(id));
        for e in &cs.external_upserted {
            if !self.externals.iter().any(|(id, _)| *id == e.id) {
                self.externals.push((e.id.clone(), e.activity_id.clone()));
            }
        }
        self.incidents
            .retain(|i| !cs.incidents_resolved.contains(&i.id));
        self.incidents.extend(cs.incidents_created.iter().cloned());
        self.inst = cs.instance;
    }

    fn command(&mut self, f: impl FnOnce(&mut Transition<'_>)) {
        let def = self.def.clone();
        let mut tr =
            Transition::open(&def, self.inst.clone(), self.now).expect("instance is running");
        f(&mut tr);
        let cs = tr.finish();
        self.absorb(cs);
    }

    fn complete(&mut self, activity: &str, v: Value) {
        let id = self
            .tasks
            .iter()
            .find(|(_, a)| a == activity)
            .unwrap_or_else(|| panic!("no task {activity}: {:?}", self.tasks))
            .0
            .clone();
        self.command(|tr| tr.complete_user_task(&id, vars(v)).unwrap());
    }

    fn open_tasks(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tasks.iter().map(|(_, a)| a.clone()).collect();
        v.sort();
        v
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        loop {
            let mut due: Vec<_> = self
                .timers
                .iter()
                .filter(|t| t.2 <= self.now)
                .cloned()
                .collect();
            due.sort_by_key(|t| t.2);
            let Some((id, _, _)) = due.first().cloned() else {
                return;
            };
            self.command(|tr| tr.fire_timer(&id).unwrap());
        }
    }

    fn runtime(&self) -> Runtime {
        Runtime::from_json(&self.inst.runtime).unwrap()
    }
}

#[test]
fn inclusive_join_fires_when_the_other_branch_ends_elsewhere() {
    let def = model(
        r#"<startEvent id="s"/><sequenceFlow id="f0" sourceRef="s" targetRef="fork"/>
        <inclusiveGateway id="fork"/>
        <sequenceFlow id="fa" sourceRef="fork" targetRef="a"><conditionExpression>${true}</conditionExpression></sequenceFlow>
        <sequenceFlow id="fb" sourceRef="fork" targetRef="b"><conditionExpression>${true}</conditionExpression></sequenceFlow>
        <userTask id="a"/><userTask id="b"/>
        <sequenceFlow id="fa2" sourceRef="a" targetRef="join"/>
        <sequenceFlow id="fb2" sourceRef="b" targetRef="x"/>
        <exclusiveGateway id="x" default="toEnd"/>
        <sequenceFlow id="toJoin" sourceRef="x" targetRef="join"><conditionExpression>${go}</conditionExpression></sequenceFlow>
        <sequenceFlow id="toEnd" sourceRef="x" targetRef="e2"/><endEvent id="e2"/>
        <inclusiveGateway id="join"/><sequenceFlow id="f9" sourceRef="join" targetRef="c"/>
        <userTask id="c"/><sequenceFlow id="f10" sourceRef="c" targetRef="e"/><endEvent id="e"/>"#,
    );
    let mut h = Harness::start(def, json!({}));
    assert_eq!(h.open_tasks(), ["a", "b"]);
    h.complete("a", json!({}));
    assert_eq!(
        h.open_tasks(),
        ["b"],
        "the join must wait while b can still reach it"
    );
    h.complete("b", json!({ "go": false }));
    assert_eq!(
        h.open_tasks(),
        ["c"],
        "b ended elsewhere, so the join fires with a's token alone"
    );
    h.complete("c", json!({}));
    assert_eq!(h.inst.state, InstanceState::Completed);
}

#[test]
fn parallel_join_waits_for_every_incoming_flow() {
    let def = model(
        r#"<startEvent id="s"/><sequenceFlow id="f0" sourceRef="s" targetRef="fork"/>
        <parallelGateway id="fork"/>
        <sequenceFlow id="f1" sourceRef="fork" targetRef="a"/><sequenceFlow id="f2" sourceRef="fork" targetRef="b"/>
        <sequenceFlow id="f3" sourceRef="fork" targetRef="c"/>
        <userTask id="a"/><userTask id="b"/><userTask id="c"/>
        <sequenceFlow id="j1" sourceRef="a" targetRef="join"/><sequenceFlow id="j2" sourceRef="b" targetRef="join"/>
        <sequenceFlow id="j3" sourceRef="c" targetRef="join"/>
        <parallelGateway id="join"/><sequenceFlow id="f9" sourceRef="join" targetRef="e"/><endEvent id="e"/>"#,
    );
    let mut h = Harness::start(def, json!({}));
    h.complete("a", json!({}));
    h.complete("b", json!({}));
    assert_eq!(h.inst.state, InstanceState::Active);
    assert_eq!(
        h.runtime()
            .tokens
            .iter()
            .filter(|t| t.wait == Wait::Join)
            .count(),
        2
    );
    h.complete("c", json!({}));
    assert_eq!(h.inst.state, InstanceState::Completed);
}

#[test]
fn no_matching_flow_is_an_incident_that_a_retry_resolves() {
    let def = model(
        r#"<startEvent id="s"/><sequenceFlow id="f0" sourceRef="s" targetRef="gw"/>
        <exclusiveGateway id="gw"/>
        <sequenceFlow id="big" sourceRef="gw" targetRef="a"><conditionExpression>${amount &gt; 1000}</conditionExpression></sequenceFlow>
        <userTask id="a"/><sequenceFlow id="f2" sourceRef="a" targetRef="e"/><endEvent id="e"/>"#,
    );
    let mut h = Harness::start(def, json!({ "amount": 5 }));
    assert_eq!(h.inst.state, InstanceState::Incident);
    let Wait::Incident { incident_id, .. } = h.runtime().tokens[0].wait.clone() else {
        panic!("token not in incident")
    };
    h.command(|tr| tr.set_variables(vars(json!({ "amount": 5000 }))));
    assert_eq!(
        h.inst.state,
        InstanceState::Incident,
        "setting variables alone does not move the token"
    );
    h.command(|tr| tr.retry_incident(&incident_id).unwrap());
    assert_eq!(h.inst.state, InstanceState::Active);
    assert_eq!(h.open_tasks(), ["a"]);
}

#[test]
fn terminate_end_event_removes_every_other_work_item() {
    let def = model(
        r#"<startEvent id="s"/><sequenceFlow id="f0" sourceRef="s" targetRef="fork"/>
        <parallelGateway id="fork"/>
        <sequenceFlow id="f1" sourceRef="fork" targetRef="a"/><sequenceFlow id="f2" sourceRef="fork" targetRef="w"/>
        <userTask id="a"/><sequenceFlow id="f3" sourceRef="a" targetRef="t"/>
        <endEvent id="t"><terminateEventDefinition/></endEvent>
        <intermediateCatchEvent id="w"><timerEventDefinition><timeDuration>P1D</timeDuration></timerEventDefinition></intermediateCatchEvent>
        <sequenceFlow id="f4" sourceRef="w" targetRef="e"/><endEvent id="e"/>"#,
    );
    let mut h = Harness::start(def, json!({}));
    assert_eq!(h.timers.len(), 1);
    h.complete("a", json!({}));
    assert_eq!(h.inst.state, InstanceState::Completed);
    assert!(h.timers.is_empty() && h.tasks.is_empty());
}

#[test]
fn interrupting_boundary_timer_cancels_the_task_and_its_sibling_timers() {
    let def = model(
        r#"<startEvent id="s"/><sequenceFlow id="f0" sourceRef="s" targetRef="a"/>
        <userTask id="a"/><sequenceFlow id="f1" sourceRef="a" targetRef="e"/><endEvent id="e"/>
        <boundaryEvent id="late" attachedToRef="a"><timerEventDefinition><timeDuration>PT1H</timeDuration></timerEventDefinition></boundaryEvent>
        <boundaryEvent id="remind" attachedToRef="a" cancelActivity="false"><timerEventDefinition><timeDuration>PT30M</timeDuration></timerEventDefinition></boundaryEvent>
        <sequenceFlow id="f2" sourceRef="late" targetRef="escalate"/><userTask id="escalate"/>
        <sequenceFlow id="f3" sourceRef="escalate" targetRef="e"/>
        <sequenceFlow id="f4" sourceRef="remind" targetRef="reminder"/><userTask id="reminder"/>
        <sequenceFlow id="f5" sourceRef="reminder" targetRef="e"/>"#,
    );
    let mut h = Harness::start(def, json!({}));
    assert_eq!(h.timers.len(), 2);
    h.advance(Duration::minutes(31));
    assert_eq!(
        h.open_tasks(),
        ["a", "reminder"],
        "the non-interrupting timer keeps the task"
    );
    h.advance(Duration::minutes(30));
    assert_eq!(
        h.open_tasks(),
        ["escalate", "reminder"],
        "the interrupting timer cancels the task"
    );
    assert!(h.timers.is_empty());
    h.complete("reminder", json!({}));
    h.complete("escalate", json!({}));
    assert_eq!(h.inst.state, InstanceState::Completed);
}

#[test]
fn completing_a_task_disarms_its_boundary_timers() {
    let def = model(
        r#"<startEvent id="s"/><sequenceFlow id="f0" sourceRef="s" targetRef="a"/>
        <userTask id="a"/><sequenceFlow id="f1" sourceRef="a" targetRef="e"/><endEvent id="e"/>
        <boundaryEvent id="late" attachedToRef="a"><timerEventDefinition><timeDuration>PT1H</timeDuration></timerEventDefinition></boundaryEvent>
        <sequenceFlow id="f2" sourceRef="late" targetRef="e"/>"#,
    );
    let mut h = Harness::start(def, json!({}));
    h.complete("a", json!({}));
    assert!(h.timers.is_empty());
    assert_eq!(h.inst.state, InstanceState::Completed);
}

#[test]
fn a_completed_instance_refuses_further_commands() {
    let def = model(
        r#"<startEvent id="s"/><sequenceFlow id="f0" sourceRef="s" targetRef="e"/><endEvent id="e"/>"#,
    );
    let h = Harness::start(def, json!({}));
    assert_eq!(h.inst.state, InstanceState::Completed);
    assert!(Transition::open(&h.def, h.inst.clone(), h.now).is_err());
}

#[test]
fn work_created_and_cancelled_in_one_command_never_reaches_the_store() {
    let def = model(
        r#"<startEvent id="s"/><sequenceFlow id="f0" sourceRef="s" targetRef="fork"/>
        <parallelGateway id="fork"/>
        <sequenceFlow id="f1" sourceRef="fork" targetRef="a"/><sequenceFlow id="f2" sourceRef="fork" targetRef="t"/>
        <userTask id="a"/><sequenceFlow id="f3" sourceRef="a" targetRef="e"/><endEvent id="e"/>
        <boundaryEvent id="b" attachedToRef="a"><timerEventDefinition><timeDuration>PT1H</timeDuration></timerEventDefinition></boundaryEvent>
        <sequenceFlow id="f4" sourceRef="b" targetRef="e"/>
        <endEvent id="t"><terminateEventDefinition/></endEvent>"#,
    );
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let mut tr = Transition::create(&def, "p:1", Vars::new(), None, now);
    tr.start();
    let cs = tr.finish();
    assert_eq!(cs.instance.state, InstanceState::Completed);
    assert!(
        cs.tasks_created.is_empty() && cs.tasks_removed.is_empty(),
        "{:?}",
        cs.tasks_created
    );
    assert!(cs.timers_created.is_empty() && cs.timers_removed.is_empty());
}

#[test]
fn a_loop_without_wait_state_stops_at_an_incident() {
    let def = model(
        r#"<startEvent id="s"/><sequenceFlow id="f0" sourceRef="s" targetRef="g"/>
        <exclusiveGateway id="g" default="out"/>
        <sequenceFlow id="again" sourceRef="g" targetRef="m"><conditionExpression>${x &lt; 10}</conditionExpression></sequenceFlow>
        <manualTask id="m"/><sequenceFlow id="back" sourceRef="m" targetRef="g"/>
        <sequenceFlow id="out" sourceRef="g" targetRef="e"/><endEvent id="e"/>"#,
    );
    let h = Harness::start(def, json!({ "x": 1 }));
    assert_eq!(h.inst.state, InstanceState::Incident);
}

#[test]
fn setting_retries_to_zero_raises_an_incident_and_more_retries_resolve_it() {
    let def = model(
        r#"<startEvent id="s"/><sequenceFlow id="f0" sourceRef="s" targetRef="w"/>
        <serviceTask id="w" camunda:type="external" camunda:topic="work"/>
        <sequenceFlow id="f1" sourceRef="w" targetRef="e"/><endEvent id="e"/>"#,
    );
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let mut tr = Transition::create(&def, "p:1", Vars::new(), None, now);
    tr.start();
    let cs = tr.finish();
    let mut task = cs.external_upserted[0].clone();
    let inst = cs.instance;
    task.retries = Some(0);
    let mut tr = Transition::open(&def, inst, now).unwrap();
    tr.update_external_task(task.clone()).unwrap();
    let cs = tr.finish();
    assert_eq!(cs.instance.state, InstanceState::Incident);
    assert_eq!(cs.incidents_created.len(), 1);
    task.retries = Some(2);
    let mut tr = Transition::open(&def, cs.instance, now).unwrap();
    tr.update_external_task(task).unwrap();
    let cs = tr.finish();
    assert_eq!(cs.instance.state, InstanceState::Active);
    assert_eq!(cs.incidents_resolved.len(), 1);
}

/// A user task with a boundary timer, waiting: the runtime the corrupt-state tests edit.
fn waiting_with_boundary_timer() -> Harness {
    let def = model(
        r#"<startEvent id="s"/><sequenceFlow id="f0" sourceRef="s" targetRef="a"/>
        <userTask id="a"/><sequenceFlow id="f1" sourceRef="a" targetRef="e"/><endEvent id="e"/>
        <boundaryEvent id="late" attachedToRef="a"><timerEventDefinition><timeDuration>PT1H</timeDuration></timerEventDefinition></boundaryEvent>
        <sequenceFlow id="f2" sourceRef="late" targetRef="e"/>"#,
    );
    Harness::start(def, json!({}))
}

/// `h`'s instance with its runtime JSON passed through `edit`.
fn edited(h: &Harness, edit: impl FnOnce(&mut Value)) -> InstanceRecord {
    let mut rt: Value = serde_json::from_str(h.inst.runtime.as_str()).unwrap();
    edit(&mut rt);
    let mut inst = h.inst.clone();
    inst.runtime = steadyflow_store::RawJson::from_text(rt.to_string()).unwrap();
    inst
}

fn corrupt_reason(h: &Harness, inst: InstanceRecord) -> String {
    match Transition::open(&h.def, inst, h.now) {
        Err(CoreError::Corrupt { instance, reason }) => {
            assert_eq!(instance, h.inst.id);
            reason
        }
        Err(e) => panic!("expected Corrupt, got {e:?}"),
        Ok(_) => panic!("expected Corrupt, the transition opened"),
    }
}

#[test]
fn stored_state_that_contradicts_the_definition_is_corrupt_not_a_panic() {
    let h = waiting_with_boundary_timer();

    let ghost = edited(&h, |rt| rt["tokens"][0]["element"] = json!("ghost"));
    let reason = corrupt_reason(&h, ghost);
    assert!(reason.contains("`ghost`"), "{reason}");

    let not_a_boundary = edited(&h, |rt| {
        rt["tokens"][0]["boundaryTimers"][0]["boundary"] = json!("e");
    });
    let reason = corrupt_reason(&h, not_a_boundary);
    assert!(
        reason.contains("`e`") && reason.contains("boundary"),
        "{reason}"
    );

    let twice = edited(&h, |rt| {
        let t = rt["tokens"][0].clone();
        rt["tokens"].as_array_mut().unwrap().push(t);
    });
    assert!(corrupt_reason(&h, twice).contains("used twice"));

    let behind = edited(&h, |rt| rt["nextToken"] = json!(0));
    assert!(corrupt_reason(&h, behind).contains("nextToken"));

    let mid_step = edited(&h, |rt| rt["tokens"][0]["wait"] = json!({"kind": "ready"}));
    assert!(corrupt_reason(&h, mid_step).contains("mid-step"));

    let mut unreadable = h.inst.clone();
    unreadable.runtime = steadyflow_store::RawJson::from_text(r#"{"tokens": 7}"#.into()).unwrap();
    assert!(corrupt_reason(&h, unreadable).contains("unreadable runtime"));

    // The untouched runtime still opens, and its timer fires.
    let mut h = h;
    h.advance(Duration::hours(2));
    assert_eq!(h.inst.state, InstanceState::Completed);
}

#[test]
fn a_repaired_stopped_instance_gets_its_removed_timers_back_due_now() {
    let mut h = waiting_with_boundary_timer();
    let timer_id = h.timers[0].0.clone();
    // What the engine leaves after stopping it: state incident, the fired timer's row gone.
    h.inst.state = InstanceState::Incident;
    h.timers.clear();
    let tr = Transition::open(&h.def, h.inst.clone(), h.now).unwrap();
    assert!(tr.is_stopped(), "incident state without a token incident");

    h.command(|tr| tr.resolve_corrupt_state("inc-1", &Default::default()));
    assert_eq!(h.inst.state, InstanceState::Active);
    assert_eq!(h.timers.len(), 1);
    let (id, activity, due) = &h.timers[0];
    assert_eq!((id, activity.as_str(), *due), (&timer_id, "late", h.now));
    h.advance(Duration::zero());
    assert_eq!(
        h.inst.state,
        InstanceState::Completed,
        "the boundary timer fired"
    );

    // A timer whose row still exists is left alone.
    let mut h = waiting_with_boundary_timer();
    let existing = h.timers.iter().map(|t| t.0.clone()).collect();
    h.inst.state = InstanceState::Incident;
    let def = h.def.clone();
    let mut tr = Transition::open(&def, h.inst.clone(), h.now).unwrap();
    tr.resolve_corrupt_state("inc-1", &existing);
    let cs = tr.finish();
    assert!(cs.timers_created.is_empty());
    assert_eq!(cs.incidents_resolved, ["inc-1"]);
}

// ---- embedded sub-processes and BPMN errors ------------------------------------------

fn model_with_errors(errors: &str, body: &str) -> ProcessDefinition {
    let xml = format!(
        r#"<definitions {NS} targetNamespace="t">{errors}<process id="p" isExecutable="true">{body}</process></definitions>"#
    );
    parse_definitions(&xml).expect("model parses").remove(0)
}

/// start -> sub(start -> fork -> a, b -> join -> end) -> after -> end
const FORK_IN_SUB: &str = r#"
    <startEvent id="s"/><sequenceFlow id="f1" sourceRef="s" targetRef="sub"/>
    <subProcess id="sub">
      <startEvent id="ss"/><sequenceFlow id="g1" sourceRef="ss" targetRef="fork"/>
      <parallelGateway id="fork"/>
      <sequenceFlow id="g2" sourceRef="fork" targetRef="a"/><sequenceFlow id="g3" sourceRef="fork" targetRef="b"/>
      <userTask id="a"/><userTask id="b"/>
      <sequenceFlow id="g4" sourceRef="a" targetRef="join"/><sequenceFlow id="g5" sourceRef="b" targetRef="join"/>
      <parallelGateway id="join"/><sequenceFlow id="g6" sourceRef="join" targetRef="se"/><endEvent id="se"/>
    </subProcess>
    <sequenceFlow id="f2" sourceRef="sub" targetRef="after"/>
    <userTask id="after"/><sequenceFlow id="f3" sourceRef="after" targetRef="e"/><endEvent id="e"/>"#;

#[test]
fn a_sub_process_runs_its_body_in_a_scope_and_completes_when_the_body_ends() {
    let mut h = Harness::start(model(FORK_IN_SUB), json!({}));
    assert_eq!(h.open_tasks(), ["a", "b"]);
    let rt = h.runtime();
    let sub = rt.tokens.iter().find(|t| t.element == "sub").unwrap();
    assert_eq!(sub.wait, Wait::SubProcess);
    assert!(
        rt.tokens
            .iter()
            .filter(|t| t.element != "sub")
            .all(|t| t.scope == Some(sub.id))
    );
    h.complete("a", json!({"x": 1}));
    assert_eq!(h.open_tasks(), ["b"], "the join inside waits");
    h.complete("b", json!({}));
    assert_eq!(h.open_tasks(), ["after"]);
    assert!(h.runtime().tokens.iter().all(|t| t.scope.is_none()));
    assert_eq!(
        h.inst.variables["x"], 1,
        "task variables reach the instance"
    );
    h.complete("after", json!({}));
    assert_eq!(h.inst.state, InstanceState::Completed);
}

#[test]
fn an_interrupting_boundary_timer_on_a_sub_process_cancels_everything_inside() {
    let body = FORK_IN_SUB.replace(
        r#"<sequenceFlow id="f2""#,
        r#"<boundaryEvent id="late" attachedToRef="sub"><timerEventDefinition><timeDuration>PT1H</timeDuration></timerEventDefinition></boundaryEvent>
           <sequenceFlow id="f4" sourceRef="late" targetRef="esc"/><userTask id="esc"/><sequenceFlow id="f5" sourceRef="esc" targetRef="e"/>
           <sequenceFlow id="f2""#,
    );
    let mut h = Harness::start(model(&body), json!({}));
    h.complete("a", json!({}));
    assert_eq!(h.open_tasks(), ["b"]);
    h.advance(Duration::hours(1));
    assert_eq!(h.open_tasks(), ["esc"]);
    let rt = h.runtime();
    assert_eq!(rt.tokens.len(), 1, "{rt:?}");
    assert!(h.timers.is_empty());
}

#[test]
fn a_non_interrupting_boundary_timer_fires_while_a_join_inside_the_sub_process_waits() {
    let body = FORK_IN_SUB.replace(
        r#"<sequenceFlow id="f2""#,
        r#"<boundaryEvent id="remind" attachedToRef="sub" cancelActivity="false"><timerEventDefinition><timeDuration>PT1H</timeDuration></timerEventDefinition></boundaryEvent>
           <sequenceFlow id="f4" sourceRef="remind" targetRef="note"/><userTask id="note"/><sequenceFlow id="f5" sourceRef="note" targetRef="e"/>
           <sequenceFlow id="f2""#,
    );
    let mut h = Harness::start(model(&body), json!({}));
    h.complete("a", json!({}));
    h.advance(Duration::hours(1));
    assert_eq!(h.open_tasks(), ["b", "note"]);
    let rt = h.runtime();
    assert!(rt.tokens.iter().any(|t| t.wait == Wait::Join));
    h.complete("b", json!({}));
    assert_eq!(h.open_tasks(), ["after", "note"]);
    h.complete("note", json!({}));
    h.complete("after", json!({}));
    assert_eq!(h.inst.state, InstanceState::Completed);
}

#[test]
fn an_inclusive_join_waits_for_a_branch_that_is_inside_a_sub_process() {
    let body = r#"
    <startEvent id="s"/><sequenceFlow id="f1" sourceRef="s" targetRef="fork"/>
    <inclusiveGateway id="fork"/>
    <sequenceFlow id="f2" sourceRef="fork" targetRef="sub"/>
    <sequenceFlow id="f3" sourceRef="fork" targetRef="pass"/>
    <subProcess id="sub">
      <startEvent id="ss"/><sequenceFlow id="g1" sourceRef="ss" targetRef="a"/>
      <userTask id="a"/><sequenceFlow id="g2" sourceRef="a" targetRef="se"/><endEvent id="se"/>
    </subProcess>
    <manualTask id="pass"/>
    <sequenceFlow id="f4" sourceRef="sub" targetRef="join"/><sequenceFlow id="f5" sourceRef="pass" targetRef="join"/>
    <inclusiveGateway id="join"/><sequenceFlow id="f6" sourceRef="join" targetRef="after"/>
    <userTask id="after"/><sequenceFlow id="f7" sourceRef="after" targetRef="e"/><endEvent id="e"/>"#;
    let mut h = Harness::start(model(body), json!({}));
    assert_eq!(h.open_tasks(), ["a"], "the join waits for the sub-process");
    h.complete("a", json!({}));
    assert_eq!(h.open_tasks(), ["after"]);
    assert_eq!(h.runtime().tokens.len(), 1);
}

#[test]
fn a_terminate_end_event_inside_a_sub_process_ends_that_sub_process_only() {
    let body = r#"
    <startEvent id="s"/><sequenceFlow id="f1" sourceRef="s" targetRef="fork"/>
    <parallelGateway id="fork"/>
    <sequenceFlow id="f2" sourceRef="fork" targetRef="sub"/><sequenceFlow id="f3" sourceRef="fork" targetRef="outside"/>
    <subProcess id="sub">
      <startEvent id="ss"/><sequenceFlow id="g1" sourceRef="ss" targetRef="sfork"/>
      <parallelGateway id="sfork"/>
      <sequenceFlow id="g2" sourceRef="sfork" targetRef="a"/><sequenceFlow id="g3" sourceRef="sfork" targetRef="b"/>
      <userTask id="a"/><userTask id="b"/>
      <sequenceFlow id="g4" sourceRef="a" targetRef="kill"/><endEvent id="kill"><terminateEventDefinition/></endEvent>
      <sequenceFlow id="g5" sourceRef="b" targetRef="se"/><endEvent id="se"/>
    </subProcess>
    <sequenceFlow id="f4" sourceRef="sub" targetRef="after"/><userTask id="after"/>
    <sequenceFlow id="f5" sourceRef="after" targetRef="e"/><endEvent id="e"/>
    <userTask id="outside"/><sequenceFlow id="f6" sourceRef="outside" targetRef="e2"/><endEvent id="e2"/>"#;
    let mut h = Harness::start(model(body), json!({}));
    assert_eq!(h.open_tasks(), ["a", "b", "outside"]);
    h.complete("a", json!({}));
    assert_eq!(h.open_tasks(), ["after", "outside"]);
}

const ERRORS: &str = r#"<error id="e1" errorCode="one"/><error id="e2" errorCode="two"/>"#;

#[test]
fn an_error_end_event_is_caught_by_the_boundary_of_the_matching_code_before_a_catch_all() {
    let body = |code: &str| {
        format!(
            r#"
    <startEvent id="s"/><sequenceFlow id="f1" sourceRef="s" targetRef="sub"/>
    <subProcess id="sub">
      <startEvent id="ss"/><sequenceFlow id="g1" sourceRef="ss" targetRef="fork"/>
      <parallelGateway id="fork"/>
      <sequenceFlow id="g2" sourceRef="fork" targetRef="a"/><sequenceFlow id="g3" sourceRef="fork" targetRef="b"/>
      <userTask id="a"/><userTask id="b"/>
      <sequenceFlow id="g4" sourceRef="a" targetRef="boom"/><endEvent id="boom"><errorEventDefinition errorRef="{code}"/></endEvent>
      <sequenceFlow id="g5" sourceRef="b" targetRef="se"/><endEvent id="se"/>
    </subProcess>
    <sequenceFlow id="f2" sourceRef="sub" targetRef="e"/><endEvent id="e"/>
    <boundaryEvent id="any" attachedToRef="sub"><errorEventDefinition/></boundaryEvent>
    <sequenceFlow id="f3" sourceRef="any" targetRef="caughtAny"/><userTask id="caughtAny"/>
    <boundaryEvent id="two" attachedToRef="sub"><errorEventDefinition errorRef="e2"/></boundaryEvent>
    <sequenceFlow id="f4" sourceRef="two" targetRef="caughtTwo"/><userTask id="caughtTwo"/>"#
        )
    };
    let mut h = Harness::start(model_with_errors(ERRORS, &body("e2")), json!({}));
    h.complete("a", json!({}));
    assert_eq!(
        h.open_tasks(),
        ["caughtTwo"],
        "b was cancelled with the sub-process"
    );
    assert_eq!(h.runtime().tokens.len(), 1);

    let mut h = Harness::start(model_with_errors(ERRORS, &body("e1")), json!({}));
    h.complete("a", json!({}));
    assert_eq!(h.open_tasks(), ["caughtAny"]);
}

#[test]
fn an_error_event_sub_process_interrupts_its_scope_and_the_scope_completes_after_it() {
    let body = r#"
    <startEvent id="s"/><sequenceFlow id="f1" sourceRef="s" targetRef="sub"/>
    <subProcess id="sub">
      <startEvent id="ss"/><sequenceFlow id="g1" sourceRef="ss" targetRef="fork"/>
      <parallelGateway id="fork"/>
      <sequenceFlow id="g2" sourceRef="fork" targetRef="a"/><sequenceFlow id="g3" sourceRef="fork" targetRef="b"/>
      <userTask id="a"/><userTask id="b"/>
      <sequenceFlow id="g4" sourceRef="a" targetRef="boom"/><endEvent id="boom"><errorEventDefinition errorRef="e1"/></endEvent>
      <sequenceFlow id="g5" sourceRef="b" targetRef="se"/><endEvent id="se"/>
      <subProcess id="handler" triggeredByEvent="true">
        <startEvent id="hs"><errorEventDefinition errorRef="e1"/></startEvent>
        <sequenceFlow id="h1" sourceRef="hs" targetRef="fix"/><userTask id="fix"/>
        <sequenceFlow id="h2" sourceRef="fix" targetRef="he"/><endEvent id="he"/>
      </subProcess>
    </subProcess>
    <sequenceFlow id="f2" sourceRef="sub" targetRef="after"/><userTask id="after"/>
    <sequenceFlow id="f3" sourceRef="after" targetRef="e"/><endEvent id="e"/>
    <boundaryEvent id="outer" attachedToRef="sub"><errorEventDefinition/></boundaryEvent>
    <sequenceFlow id="f4" sourceRef="outer" targetRef="wrong"/><userTask id="wrong"/>"#;
    let mut h = Harness::start(model_with_errors(ERRORS, body), json!({}));
    h.complete("a", json!({}));
    assert_eq!(
        h.open_tasks(),
        ["fix"],
        "the event sub-process inside catches before the boundary outside"
    );
    h.complete("fix", json!({}));
    assert_eq!(h.open_tasks(), ["after"]);
}

#[test]
fn an_uncaught_error_stops_at_an_incident_naming_the_element() {
    let body = r#"
    <startEvent id="s"/><sequenceFlow id="f1" sourceRef="s" targetRef="sub"/>
    <subProcess id="sub">
      <startEvent id="ss"/><sequenceFlow id="g1" sourceRef="ss" targetRef="boom"/>
      <endEvent id="boom"><errorEventDefinition errorRef="e1"/></endEvent>
    </subProcess>
    <sequenceFlow id="f2" sourceRef="sub" targetRef="e"/><endEvent id="e"/>
    <boundaryEvent id="two" attachedToRef="sub"><errorEventDefinition errorRef="e2"/></boundaryEvent>
    <sequenceFlow id="f3" sourceRef="two" targetRef="e"/>"#;
    let h = Harness::start(model_with_errors(ERRORS, body), json!({}));
    assert_eq!(h.inst.state, InstanceState::Incident);
    assert_eq!(h.incidents.len(), 1);
    let inc = &h.incidents[0];
    assert_eq!(inc.activity_id, "boom");
    assert_eq!(
        inc.incident_type,
        steadyflow_store::IncidentType::UnhandledError
    );
    assert!(
        inc.message.contains("`boom`") && inc.message.contains("`one`"),
        "{}",
        inc.message
    );
}

const SERVICE_WITH_ERROR_BOUNDARY: &str = r#"
    <startEvent id="s"/><sequenceFlow id="f1" sourceRef="s" targetRef="job"/>
    <serviceTask id="job" camunda:type="external" camunda:topic="t"/>
    <sequenceFlow id="f2" sourceRef="job" targetRef="e"/><endEvent id="e"/>
    <boundaryEvent id="late" attachedToRef="job"><timerEventDefinition><timeDuration>PT1H</timeDuration></timerEventDefinition></boundaryEvent>
    <sequenceFlow id="f5" sourceRef="late" targetRef="e"/>
    <boundaryEvent id="caught" attachedToRef="job"><errorEventDefinition errorRef="e1"/></boundaryEvent>
    <sequenceFlow id="f3" sourceRef="caught" targetRef="handle"/><userTask id="handle"/>
    <sequenceFlow id="f4" sourceRef="handle" targetRef="e"/>"#;

#[test]
fn a_worker_bpmn_error_is_caught_by_the_boundary_on_its_task() {
    let mut h = Harness::start(
        model_with_errors(ERRORS, SERVICE_WITH_ERROR_BOUNDARY),
        json!({}),
    );
    let (task, _) = h.externals[0].clone();
    h.command(|tr| {
        tr.external_task_bpmn_error(
            &task,
            "one",
            Some("card declined"),
            vars(json!({"why": "card"})),
        )
        .unwrap()
    });
    assert_eq!(h.open_tasks(), ["handle"]);
    assert!(h.externals.is_empty());
    assert!(h.timers.is_empty(), "the boundary timer went with the task");
    assert_eq!(h.inst.variables["why"], "card");
}

#[test]
fn an_uncaught_worker_bpmn_error_is_an_incident_and_a_retry_creates_the_task_again() {
    let mut h = Harness::start(
        model_with_errors(ERRORS, SERVICE_WITH_ERROR_BOUNDARY),
        json!({}),
    );
    let (task, _) = h.externals[0].clone();
    h.command(|tr| {
        tr.external_task_bpmn_error(&task, "two", None, Vars::new())
            .unwrap()
    });
    assert_eq!(h.inst.state, InstanceState::Incident);
    assert!(h.externals.is_empty() && h.timers.is_empty());
    assert_eq!(h.incidents[0].activity_id, "job");
    let inc = h.incidents[0].id.clone();
    h.command(|tr| tr.retry_incident(&inc).unwrap());
    assert_eq!(h.inst.state, InstanceState::Active);
    assert_eq!(h.externals.len(), 1);
    assert_ne!(h.externals[0].0, task);
    assert_eq!(h.timers.len(), 1, "the boundary timer is armed again");

    // A task id no token waits for is refused, nothing changed.
    let def = h.def.clone();
    let mut tr = Transition::open(&def, h.inst.clone(), h.now).unwrap();
    assert!(matches!(
        tr.external_task_bpmn_error(&task, "one", None, Vars::new()),
        Err(CoreError::NotWaiting { .. })
    ));
}

#[test]
fn a_process_level_error_event_sub_process_cancels_every_token() {
    let body = r#"
    <startEvent id="s"/><sequenceFlow id="f1" sourceRef="s" targetRef="fork"/>
    <parallelGateway id="fork"/>
    <sequenceFlow id="f2" sourceRef="fork" targetRef="a"/><sequenceFlow id="f3" sourceRef="fork" targetRef="b"/>
    <userTask id="a"/><userTask id="b"/>
    <sequenceFlow id="f4" sourceRef="a" targetRef="boom"/><endEvent id="boom"><errorEventDefinition errorRef="e2"/></endEvent>
    <sequenceFlow id="f5" sourceRef="b" targetRef="e"/><endEvent id="e"/>
    <subProcess id="handler" triggeredByEvent="true">
      <startEvent id="hs"><errorEventDefinition/></startEvent>
      <sequenceFlow id="h1" sourceRef="hs" targetRef="fix"/><userTask id="fix"/>
      <sequenceFlow id="h2" sourceRef="fix" targetRef="he"/><endEvent id="he"/>
    </subProcess>"#;
    let mut h = Harness::start(model_with_errors(ERRORS, body), json!({}));
    h.complete("a", json!({}));
    assert_eq!(h.open_tasks(), ["fix"]);
    h.complete("fix", json!({}));
    assert_eq!(h.inst.state, InstanceState::Completed);
}

#[test]
fn stored_scopes_that_contradict_the_model_are_corrupt() {
    let h = Harness::start(model(FORK_IN_SUB), json!({}));
    let def = h.def.clone();
    let open = |rt: Value| {
        let mut inst = h.inst.clone();
        inst.runtime = steadyflow_store::RawJson::from_text(rt.to_string()).unwrap();
        match Transition::open(&def, inst, h.now) {
            Err(CoreError::Corrupt { reason, .. }) => reason,
            Ok(_) => panic!("opened"),
            Err(e) => panic!("{e}"),
        }
    };
    let rt: Value = serde_json::from_str(h.inst.runtime.as_str()).unwrap();
    let mut no_scope = rt.clone();
    for t in no_scope["tokens"].as_array_mut().unwrap() {
        t.as_object_mut().unwrap().remove("scope");
    }
    assert!(open(no_scope).contains("no scope"));
    let mut dangling = rt.clone();
    for t in dangling["tokens"].as_array_mut().unwrap() {
        if t.get("scope").is_some() {
            t["scope"] = json!(999);
        }
    }
    assert!(open(dangling).contains("scope 999"));
}

#[test]
fn timer_event_sub_processes_interrupt_or_not_and_their_timers_go_with_the_scope() {
    let body = |interrupting: bool| {
        format!(
            r#"
    <startEvent id="s"/><sequenceFlow id="f1" sourceRef="s" targetRef="sub"/>
    <subProcess id="sub">
      <startEvent id="ss"/><sequenceFlow id="g1" sourceRef="ss" targetRef="work"/>
      <userTask id="work"/><sequenceFlow id="g2" sourceRef="work" targetRef="se"/><endEvent id="se"/>
      <subProcess id="remind" triggeredByEvent="true">
        <startEvent id="rs" isInterrupting="{interrupting}"><timerEventDefinition><timeDuration>PT1H</timeDuration></timerEventDefinition></startEvent>
        <sequenceFlow id="r1" sourceRef="rs" targetRef="nudge"/><userTask id="nudge"/>
        <sequenceFlow id="r2" sourceRef="nudge" targetRef="re"/><endEvent id="re"/>
      </subProcess>
    </subProcess>
    <sequenceFlow id="f2" sourceRef="sub" targetRef="after"/><userTask id="after"/>
    <sequenceFlow id="f3" sourceRef="after" targetRef="e"/><endEvent id="e"/>
    <subProcess id="deadline" triggeredByEvent="true">
      <startEvent id="ds"><timerEventDefinition><timeDuration>P1D</timeDuration></timerEventDefinition></startEvent>
      <sequenceFlow id="d1" sourceRef="ds" targetRef="late"/><userTask id="late"/>
      <sequenceFlow id="d2" sourceRef="late" targetRef="de"/><endEvent id="de"/>
    </subProcess>"#
        )
    };
    // Non-interrupting inside the sub-process: both run; the sub-process waits for both.
    let mut h = Harness::start(model(&body(false)), json!({}));
    assert_eq!(
        h.timers.len(),
        2,
        "the process-level and the sub-process timer"
    );
    h.advance(Duration::hours(1));
    assert_eq!(h.open_tasks(), ["nudge", "work"]);
    h.complete("work", json!({}));
    assert_eq!(h.open_tasks(), ["nudge"], "the sub-process still runs");
    h.complete("nudge", json!({}));
    assert_eq!(h.open_tasks(), ["after"]);
    assert_eq!(h.timers.len(), 1, "only the process-level timer is left");
    h.complete("after", json!({}));
    assert_eq!(h.inst.state, InstanceState::Completed);
    assert!(
        h.timers.is_empty(),
        "the process ended: its event timer goes"
    );

    // Interrupting inside: work is cancelled; then the process-level one interrupts all.
    let mut h = Harness::start(model(&body(true)), json!({}));
    h.advance(Duration::hours(1));
    assert_eq!(h.open_tasks(), ["nudge"]);
    h.advance(Duration::days(1));
    assert_eq!(h.open_tasks(), ["late"]);
    assert!(h.timers.is_empty());
    assert_eq!(
        h.runtime().tokens.len(),
        2,
        "the event sub-process and its task"
    );
    h.complete("late", json!({}));
    assert_eq!(h.inst.state, InstanceState::Completed);
}

#[test]
fn sub_process_local_variables_are_seen_inside_updated_in_place_and_never_leak_out() {
    let xml = r#"<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:zeebe="http://camunda.org/schema/zeebe/1.0" targetNamespace="t">
    <process id="p" isExecutable="true">
    <startEvent id="s"/><sequenceFlow id="f1" sourceRef="s" targetRef="sub"/>
    <subProcess id="sub">
      <extensionElements><zeebe:ioMapping>
        <zeebe:input source="= base + 1" target="count"/>
        <zeebe:output source="= count * 10" target="total"/>
      </zeebe:ioMapping></extensionElements>
      <startEvent id="ss"/><sequenceFlow id="g1" sourceRef="ss" targetRef="gw"/>
      <exclusiveGateway id="gw" default="g3"/>
      <sequenceFlow id="g2" sourceRef="gw" targetRef="seen"><conditionExpression>= count = 2</conditionExpression></sequenceFlow>
      <sequenceFlow id="g3" sourceRef="gw" targetRef="unseen"/>
      <userTask id="seen"/><userTask id="unseen"/>
      <sequenceFlow id="g4" sourceRef="seen" targetRef="se"/><sequenceFlow id="g5" sourceRef="unseen" targetRef="se"/>
      <endEvent id="se"/>
    </subProcess>
    <sequenceFlow id="f2" sourceRef="sub" targetRef="after"/><userTask id="after"/>
    <sequenceFlow id="f3" sourceRef="after" targetRef="e"/><endEvent id="e"/>
    </process></definitions>"#;
    let def = parse_definitions(xml).expect("model parses").remove(0);
    let mut h = Harness::start(def, json!({"base": 1}));
    assert_eq!(h.open_tasks(), ["seen"], "the input mapping is seen inside");
    assert!(h.inst.variables.get("count").is_none(), "it is local");
    h.complete("seen", json!({"count": 7, "note": "x"}));
    assert_eq!(h.open_tasks(), ["after"]);
    let v = &h.inst.variables;
    assert!(v.get("count").is_none(), "the local did not leak: {v:?}");
    assert_eq!(
        v["total"], 70,
        "the task updated the local, the output read it"
    );
    assert_eq!(
        v["note"], "x",
        "a variable no scope declares goes to the instance"
    );
    assert!(h.runtime().tokens.iter().all(|t| t.locals.is_empty()));
}

#[test]
fn escalations_reach_the_nearest_catcher_and_go_on_unless_it_interrupts() {
    let escalations = r#"<escalation id="late" escalationCode="LATE"/><escalation id="odd" escalationCode="ODD"/>"#;
    let body = |boundary_cancels: bool, code: &str| {
        format!(
            r#"
    <startEvent id="s"/><sequenceFlow id="f1" sourceRef="s" targetRef="sub"/>
    <subProcess id="sub">
      <startEvent id="ss"/><sequenceFlow id="g1" sourceRef="ss" targetRef="shout"/>
      <intermediateThrowEvent id="shout"><escalationEventDefinition escalationRef="{code}"/></intermediateThrowEvent>
      <sequenceFlow id="g2" sourceRef="shout" targetRef="work"/><userTask id="work"/>
      <sequenceFlow id="g3" sourceRef="work" targetRef="se"/><endEvent id="se"/>
    </subProcess>
    <sequenceFlow id="f2" sourceRef="sub" targetRef="after"/><userTask id="after"/>
    <sequenceFlow id="f3" sourceRef="after" targetRef="e"/><endEvent id="e"/>
    <boundaryEvent id="heard" attachedToRef="sub" cancelActivity="{boundary_cancels}"><escalationEventDefinition escalationRef="late"/></boundaryEvent>
    <sequenceFlow id="f4" sourceRef="heard" targetRef="manager"/><userTask id="manager"/>
    <sequenceFlow id="f5" sourceRef="manager" targetRef="e"/>"#
        )
    };
    let m = |cancels: bool, code: &str| model_with_errors(escalations, &body(cancels, code));
    let h = Harness::start(m(false, "late"), json!({}));
    assert_eq!(
        h.open_tasks(),
        ["manager", "work"],
        "non-interrupting: both go on"
    );
    let h = Harness::start(m(true, "late"), json!({}));
    assert_eq!(
        h.open_tasks(),
        ["manager"],
        "interrupting: the sub-process ends"
    );
    let h = Harness::start(m(true, "odd"), json!({}));
    assert_eq!(
        h.open_tasks(),
        ["work"],
        "uncaught: the throw event goes on"
    );
    assert_eq!(h.inst.state, InstanceState::Active);
}

#[test]
fn a_failed_output_mapping_is_retried_with_the_mapping_applied_to_the_same_completion() {
    let xml = r#"<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:zeebe="http://camunda.org/schema/zeebe/1.0" targetNamespace="t">
    <process id="p" isExecutable="true">
    <startEvent id="s"/><sequenceFlow id="f1" sourceRef="s" targetRef="job"/>
    <serviceTask id="job"><extensionElements><zeebe:taskDefinition type="charge" retries="5"/>
      <zeebe:ioMapping><zeebe:output source="${amount * rate}" target="charged"/></zeebe:ioMapping>
    </extensionElements></serviceTask>
    <sequenceFlow id="f2" sourceRef="job" targetRef="after"/><userTask id="after"/>
    <sequenceFlow id="f3" sourceRef="after" targetRef="e"/><endEvent id="e"/>
    </process></definitions>"#;
    let def = parse_definitions(xml).expect("model parses").remove(0);
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let mut tr = Transition::create(&def, "p:1", Vars::new(), None, now);
    tr.start();
    let cs = tr.finish();
    assert_eq!(
        cs.external_upserted[0].retries,
        Some(5),
        "zeebe:taskDefinition retries is the initial count"
    );
    let mut h = Harness::start(def, json!({}));
    let task = h.externals[0].0.clone();
    h.command(|tr| {
        tr.complete_external_task(&task, vars(json!({"amount": 4})))
            .unwrap()
    });
    assert_eq!(h.inst.state, InstanceState::Incident);
    assert!(
        h.inst.variables.get("amount").is_none(),
        "nothing mapped yet"
    );
    let inc = h.incidents[0].id.clone();
    h.command(|tr| tr.set_variables(vars(json!({"rate": 3}))));
    h.command(|tr| tr.retry_incident(&inc).unwrap());
    assert_eq!(h.inst.state, InstanceState::Active);
    assert_eq!(h.inst.variables["charged"], 12, "{:?}", h.inst.variables);
    assert!(
        h.inst.variables.get("amount").is_none(),
        "only the mapping's target"
    );
    assert_eq!(h.open_tasks(), ["after"]);
    assert!(h.runtime().tokens.iter().all(|t| t.locals.is_empty()));
}

#[test]
fn an_error_thrown_inside_an_error_event_sub_process_goes_to_the_scope_around_it() {
    let body = r#"
    <startEvent id="s"/><sequenceFlow id="f1" sourceRef="s" targetRef="sub"/>
    <subProcess id="sub">
      <startEvent id="ss"/><sequenceFlow id="g1" sourceRef="ss" targetRef="a"/>
      <userTask id="a"/><sequenceFlow id="g2" sourceRef="a" targetRef="boom"/>
      <endEvent id="boom"><errorEventDefinition errorRef="e1"/></endEvent>
      <subProcess id="handler" triggeredByEvent="true">
        <startEvent id="hs"><errorEventDefinition/></startEvent>
        <sequenceFlow id="h1" sourceRef="hs" targetRef="fix"/><userTask id="fix"/>
        <sequenceFlow id="h2" sourceRef="fix" targetRef="again"/>
        <endEvent id="again"><errorEventDefinition errorRef="e2"/></endEvent>
      </subProcess>
    </subProcess>
    <sequenceFlow id="f2" sourceRef="sub" targetRef="e"/><endEvent id="e"/>
    <boundaryEvent id="outer" attachedToRef="sub"><errorEventDefinition errorRef="e2"/></boundaryEvent>
    <sequenceFlow id="f3" sourceRef="outer" targetRef="escalated"/><userTask id="escalated"/>"#;
    let mut h = Harness::start(model_with_errors(ERRORS, body), json!({}));
    h.complete("a", json!({}));
    assert_eq!(h.open_tasks(), ["fix"]);
    h.complete("fix", json!({}));
    assert_eq!(
        h.open_tasks(),
        ["escalated"],
        "the handler does not catch its own error again"
    );
    assert_eq!(h.runtime().tokens.len(), 1);
}
