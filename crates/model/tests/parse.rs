// A test crate: its helpers outside `#[test]` functions may unwrap too (clippy.toml
// exempts only test functions and `#[cfg(test)]` modules).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed unwrap is a failed test"
)]

use steadyflow_model::{ElementKind, ModelError, parse_definitions};

const NS: &str = r#"xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn" xmlns:zeebe="http://camunda.org/schema/zeebe/1.0""#;

fn doc(body: &str) -> String {
    format!(
        r#"<definitions {NS} targetNamespace="t"><process id="p" isExecutable="true">{body}</process></definitions>"#
    )
}

const START_END: &str =
    r#"<startEvent id="s"/><sequenceFlow id="f0" sourceRef="s" targetRef="e"/><endEvent id="e"/>"#;

#[test]
fn malformed_xml_reports_line_and_column() {
    let err = parse_definitions("<definitions>\n  <process id=\"p\">\n</definitions>").unwrap_err();
    match err {
        ModelError::Xml { line, column, .. } => assert_eq!((line, column), (3, 1)),
        other => panic!("expected an XML error, got {other:?}"),
    }
}

#[test]
fn unsupported_elements_are_refused_naming_element_and_id() {
    let cases = [
        (
            r#"<scriptTask id="sc" scriptFormat="groovy"><script>1</script></scriptTask>"#,
            "scriptTask",
            "sc",
        ),
        (
            r#"<serviceTask id="java" camunda:class="org.X"/>"#,
            "serviceTask",
            "java",
        ),
        (r#"<serviceTask id="bare"/>"#, "serviceTask", "bare"),
        (r#"<transaction id="tx"/>"#, "transaction", "tx"),
        (
            r#"<subProcess id="sub"><startEvent id="ss"/><startEvent id="ss2"/></subProcess>"#,
            "subProcess",
            "sub",
        ),
        (
            r#"<userTask id="mi"><multiInstanceLoopCharacteristics/></userTask>"#,
            "userTask",
            "mi",
        ),
        (
            r#"<userTask id="l"><extensionElements><camunda:taskListener class="X"/></extensionElements></userTask>"#,
            "userTask",
            "l",
        ),
        (
            r#"<intermediateCatchEvent id="m"><messageEventDefinition/></intermediateCatchEvent>"#,
            "intermediateCatchEvent",
            "m",
        ),
        (
            r#"<intermediateCatchEvent id="c"><timerEventDefinition><timeCycle>R3/PT1H</timeCycle></timerEventDefinition></intermediateCatchEvent>"#,
            "intermediateCatchEvent",
            "c",
        ),
        (
            r#"<userTask id="t"/><boundaryEvent id="b" attachedToRef="t"><messageEventDefinition/></boundaryEvent>"#,
            "boundaryEvent",
            "b",
        ),
    ];
    for (xml, element, id) in cases {
        let err = parse_definitions(&doc(&format!("{START_END}{xml}"))).unwrap_err();
        match &err {
            ModelError::Unsupported {
                element: e, id: i, ..
            } => {
                assert_eq!((e.as_str(), i.as_str()), (element, id), "{xml}");
                let msg = err.to_string();
                assert!(
                    msg.contains(&format!("`{id}`")) && msg.contains("not supported"),
                    "{msg}"
                );
            }
            other => panic!("{xml}: expected a refusal, got {other:?}"),
        }
    }
}

#[test]
fn structural_errors_are_invalid() {
    for (xml, id) in [
        (
            r#"<startEvent id="s"/><sequenceFlow id="f" sourceRef="s" targetRef="nowhere"/>"#,
            "f",
        ),
        (r#"<endEvent id="e"/>"#, "p"),
        (r#"<startEvent id="s"/><startEvent id="s"/>"#, "s"),
        (
            r#"<startEvent id="s"/><exclusiveGateway id="g" default="missing"/>"#,
            "g",
        ),
        (
            r#"<startEvent id="s"/><sequenceFlow id="f" sourceRef="s" targetRef="s2"><conditionExpression>${a ==}</conditionExpression></sequenceFlow><endEvent id="s2"/>"#,
            "f",
        ),
        (
            r#"<startEvent id="s"/><sequenceFlow id="in" sourceRef="s" targetRef="t"/><subProcess id="sub"><startEvent id="ss"/><userTask id="t"/></subProcess>"#,
            "in",
        ),
        (
            r#"<startEvent id="s"/><sequenceFlow id="f" sourceRef="s" targetRef="x"/><endEvent id="x"><errorEventDefinition/></endEvent>"#,
            "x",
        ),
        (
            r#"<startEvent id="s"/><subProcess id="sub"><userTask id="t"/></subProcess>"#,
            "sub",
        ),
        (
            r#"<startEvent id="s"/><subProcess id="h" triggeredByEvent="true"><startEvent id="hs"/></subProcess>"#,
            "hs",
        ),
    ] {
        match parse_definitions(&doc(xml)) {
            Err(ModelError::Invalid { id: got, .. }) => assert_eq!(got, id, "{xml}"),
            other => panic!("{xml}: expected invalid, got {other:?}"),
        }
    }
}

#[test]
fn camunda_and_zeebe_extensions_are_read() {
    let xml = doc(
        r#"<startEvent id="s"/><sequenceFlow id="f0" sourceRef="s" targetRef="u"/>
        <userTask id="u" camunda:assignee="${who}" camunda:candidateGroups="a, b">
          <potentialOwner><resourceAssignmentExpression><formalExpression>user(x), group(g), plain</formalExpression></resourceAssignmentExpression></potentialOwner>
        </userTask>
        <sequenceFlow id="f1" sourceRef="u" targetRef="job"/>
        <serviceTask id="job"><extensionElements><zeebe:taskDefinition type="charge" retries="3"/>
          <zeebe:ioMapping><zeebe:output source="= total + 1" target="total"/></zeebe:ioMapping></extensionElements></serviceTask>
        <sequenceFlow id="f2" sourceRef="job" targetRef="e"/><endEvent id="e"/>"#,
    );
    let def = parse_definitions(&xml).unwrap().remove(0);
    let u = def.element(def.element_index("u").unwrap());
    let ElementKind::UserTask(ut) = &u.kind else {
        panic!("user task expected")
    };
    assert!(ut.assignee.is_some());
    assert_eq!(ut.candidate_users.len(), 1);
    assert_eq!(
        ut.candidate_groups.len(),
        4,
        "a, b, group(g) and the bare name"
    );
    let job = def.element(def.element_index("job").unwrap());
    assert!(matches!(
        job.kind,
        ElementKind::ExternalTask {
            retries: Some(3),
            ..
        }
    ));
    assert_eq!(job.outputs.len(), 1);
}

#[test]
fn non_executable_processes_are_skipped_and_none_executable_is_refused() {
    let two = format!(
        r#"<definitions {NS} targetNamespace="t"><process id="a" isExecutable="true">{START_END}</process><process id="b" isExecutable="false"/></definitions>"#
    );
    let defs = parse_definitions(&two).unwrap();
    assert_eq!(
        defs.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(),
        ["a"]
    );
    let none = format!(
        r#"<definitions {NS} targetNamespace="t"><process id="b" isExecutable="false"/></definitions>"#
    );
    assert!(matches!(
        parse_definitions(&none),
        Err(ModelError::Invalid { .. })
    ));
}

#[test]
fn reachability_follows_flows_and_boundary_events() {
    let xml = doc(
        r#"<startEvent id="s"/><sequenceFlow id="f0" sourceRef="s" targetRef="u"/>
        <userTask id="u"/><sequenceFlow id="f1" sourceRef="u" targetRef="e"/><endEvent id="e"/>
        <boundaryEvent id="b" attachedToRef="u"><timerEventDefinition><timeDuration>PT1M</timeDuration></timerEventDefinition></boundaryEvent>
        <sequenceFlow id="f2" sourceRef="b" targetRef="x"/><endEvent id="x"/>"#,
    );
    let def = parse_definitions(&xml).unwrap().remove(0);
    let at = |id: &str| def.element_index(id).unwrap();
    assert!(
        def.can_reach(at("s"), at("x")),
        "through the boundary event"
    );
    assert!(!def.can_reach(at("e"), at("u")));
}

#[test]
fn listeners_on_the_process_or_a_flow_are_refused() {
    let on_process = format!(
        r#"<definitions {NS} targetNamespace="t"><process id="p" isExecutable="true"><extensionElements><camunda:executionListener class="X" event="start"/></extensionElements>{START_END}</process></definitions>"#
    );
    assert!(
        matches!(parse_definitions(&on_process), Err(ModelError::Unsupported { id, .. }) if id == "p")
    );
    let on_flow = doc(
        r#"<startEvent id="s"/><sequenceFlow id="f0" sourceRef="s" targetRef="e"><extensionElements><camunda:executionListener class="X"/></extensionElements></sequenceFlow><endEvent id="e"/>"#,
    );
    assert!(
        matches!(parse_definitions(&on_flow), Err(ModelError::Unsupported { id, .. }) if id == "f0")
    );
}

#[test]
fn sub_processes_event_sub_processes_errors_and_escalations_are_read_with_their_scopes() {
    let xml = format!(
        r#"<definitions {NS} targetNamespace="t">
        <error id="err" errorCode="E1"/><escalation id="esc" escalationCode="X1"/>
        <process id="p" isExecutable="true">
        <startEvent id="s"/><sequenceFlow id="f1" sourceRef="s" targetRef="sub"/>
        <subProcess id="sub">
          <startEvent id="ss"/><sequenceFlow id="g1" sourceRef="ss" targetRef="shout"/>
          <intermediateThrowEvent id="shout"><escalationEventDefinition escalationRef="esc"/></intermediateThrowEvent>
          <sequenceFlow id="g2" sourceRef="shout" targetRef="boom"/>
          <endEvent id="boom"><errorEventDefinition errorRef="err"/></endEvent>
          <subProcess id="later" triggeredByEvent="true">
            <startEvent id="ls" isInterrupting="false"><timerEventDefinition><timeDuration>PT1H</timeDuration></timerEventDefinition></startEvent>
            <sequenceFlow id="l1" sourceRef="ls" targetRef="le"/><endEvent id="le"/>
          </subProcess>
        </subProcess>
        <sequenceFlow id="f2" sourceRef="sub" targetRef="e"/><endEvent id="e"/>
        <boundaryEvent id="caught" attachedToRef="sub"><errorEventDefinition/></boundaryEvent>
        <sequenceFlow id="f3" sourceRef="caught" targetRef="e"/>
        <boundaryEvent id="heard" attachedToRef="sub" cancelActivity="false"><escalationEventDefinition escalationRef="esc"/></boundaryEvent>
        <sequenceFlow id="f4" sourceRef="heard" targetRef="e"/>
        </process></definitions>"#
    );
    let def = parse_definitions(&xml).unwrap().remove(0);
    let at = |id: &str| def.element(def.element_index(id).unwrap());
    let sub = def.element_index("sub").unwrap();
    assert!(
        matches!(at("sub").kind, ElementKind::SubProcess { start } if def.element(start).id == "ss")
    );
    assert_eq!(
        def.element(def.start).id,
        "s",
        "the process start, not the sub-process's"
    );
    assert_eq!(at("boom").parent, Some(sub));
    assert_eq!(at("sub").parent, None);
    assert!(matches!(&at("boom").kind, ElementKind::ErrorEndEvent { code } if code == "E1"));
    assert!(matches!(&at("shout").kind, ElementKind::EscalationThrow { code } if code == "X1"));
    assert!(matches!(
        &at("caught").kind,
        ElementKind::BoundaryError { host, code: None } if *host == sub
    ));
    assert!(matches!(
        &at("heard").kind,
        ElementKind::BoundaryEscalation { code: Some(c), interrupting: false, .. } if c == "X1"
    ));
    assert_eq!(at("sub").boundaries.len(), 2);
    let later: Vec<usize> = def.event_subprocesses(Some(sub)).collect();
    assert_eq!(later, [def.element_index("later").unwrap()]);
    assert!(matches!(
        at("ls").kind,
        ElementKind::TimerStartEvent {
            interrupting: false,
            ..
        }
    ));
    assert_eq!(def.event_subprocesses(None).count(), 0);

    // A reference to an error or escalation the document lacks is invalid, naming the event.
    let bad = xml.replace(r#"errorRef="err""#, r#"errorRef="nope""#);
    match parse_definitions(&bad) {
        Err(ModelError::Invalid { id, .. }) => assert_eq!(id, "boom"),
        other => panic!("{other:?}"),
    }
}
