//! XML -> [`ProcessDefinition`].

use std::collections::HashMap;

use roxmltree::{Document, Node};
use steadyflow_expr::Expression;

use crate::ModelError;
use crate::graph::{
    Element, ElementKind, Flow, IoMapping, ProcessDefinition, TimerDef, UserTaskDef,
};
use crate::timer::{parse_date_time, parse_duration};

const BPMN: &str = "http://www.omg.org/spec/BPMN/20100524/MODEL";
const CAMUNDA: &str = "http://camunda.org/schema/1.0/bpmn";
const ZEEBE: &str = "http://camunda.org/schema/zeebe/1.0";

/// Children of a process that carry no execution semantics.
const IGNORED: &[&str] = &[
    "documentation",
    "extensionElements",
    "laneSet",
    "textAnnotation",
    "association",
    "group",
    "dataObject",
    "dataObjectReference",
    "dataStoreReference",
    "ioSpecification",
    "property",
];

/// Extension elements that would change behaviour and that Steadyflow cannot honour yet.
const REFUSED_EXTENSIONS: &[&str] = &[
    "executionListener",
    "taskListener",
    "inputOutput",
    "field",
    "connector",
    "executionListeners",
    "taskListeners",
    "in",
    "out",
];

/// Parses a BPMN document into one definition per executable process. All or nothing:
/// the first problem found is returned and nothing else.
pub fn parse_definitions(xml: &str) -> Result<Vec<ProcessDefinition>, ModelError> {
    let doc = Document::parse(xml).map_err(|e| {
        let pos = e.pos();
        ModelError::Xml {
            line: pos.row,
            column: pos.col,
            message: e.to_string(),
        }
    })?;
    let root = doc.root_element();
    if !is_bpmn(root, "definitions") {
        return Err(ModelError::invalid(
            root.tag_name().name(),
            "the root element must be a BPMN 2.0 <definitions> element",
        ));
    }
    let codes = |tag: &str, attr: &str| -> HashMap<String, Option<String>> {
        root.children()
            .filter(|n| is_bpmn(*n, tag))
            .filter_map(|n| {
                let id = n.attribute("id")?;
                Some((id.to_string(), n.attribute(attr).map(str::to_string)))
            })
            .collect()
    };
    let errors = Errors {
        errors: codes("error", "errorCode"),
        escalations: codes("escalation", "escalationCode"),
    };
    let mut out: Vec<ProcessDefinition> = Vec::new();
    for process in root.children().filter(|n| is_bpmn(*n, "process")) {
        if process.attribute("isExecutable") == Some("false") {
            continue;
        }
        let def = parse_process(process, &errors)?;
        if out.iter().any(|d| d.key == def.key) {
            return Err(ModelError::invalid(&def.key, "two processes share this id"));
        }
        out.push(def);
    }
    if out.is_empty() {
        return Err(ModelError::invalid(
            "definitions",
            "the document holds no executable <process>",
        ));
    }
    Ok(out)
}

fn is_bpmn(n: Node, local: &str) -> bool {
    n.is_element() && n.tag_name().namespace() == Some(BPMN) && n.tag_name().name() == local
}

fn bpmn_children<'a, 'i>(n: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children()
        .filter(|c| c.is_element() && c.tag_name().namespace() == Some(BPMN))
}

fn child<'a, 'i>(n: Node<'a, 'i>, local: &str) -> Option<Node<'a, 'i>> {
    n.children().find(|c| is_bpmn(*c, local))
}

/// All text below a node (CDATA included), trimmed.
fn text_of(n: Node) -> String {
    n.descendants()
        .filter(|d| d.is_text())
        .filter_map(|d| d.text())
        .collect::<String>()
        .trim()
        .to_string()
}

fn required_id(n: Node) -> Result<String, ModelError> {
    n.attribute("id").map(str::to_string).ok_or_else(|| {
        ModelError::invalid(
            n.tag_name().name(),
            format!("<{}> has no id attribute", n.tag_name().name()),
        )
    })
}

fn expr(text: &str, at: &str) -> Result<Expression, ModelError> {
    Expression::parse(text).map_err(|e| ModelError::invalid(at, e.to_string()))
}

/// `<error id errorCode>` and `<escalation id escalationCode>` of the document: id ->
/// code (`None` when it has none).
#[derive(Default)]
struct Errors {
    errors: HashMap<String, Option<String>>,
    escalations: HashMap<String, Option<String>>,
}

/// Elements of a process and its sub-processes, flattened, as they are read.
struct Collected<'a, 'i> {
    elements: Vec<Element>,
    index: HashMap<String, usize>,
    /// Sequence flows with the container they sit in.
    flow_nodes: Vec<(Node<'a, 'i>, Option<usize>)>,
    defaults: Vec<(usize, String)>,
    attachments: Vec<(usize, String)>,
}

impl<'a, 'i> Collected<'a, 'i> {
    /// Reads the flow elements of `container` (the process or a sub-process element
    /// `parent`); `event_sub` when the container is an event sub-process.
    fn collect(
        &mut self,
        container: Node<'a, 'i>,
        parent: Option<usize>,
        event_sub: bool,
        errors: &Errors,
    ) -> Result<(), ModelError> {
        for n in bpmn_children(container) {
            let tag = n.tag_name().name();
            if tag == "sequenceFlow" {
                self.flow_nodes.push((n, parent));
                continue;
            }
            if IGNORED.contains(&tag) {
                continue;
            }
            let id = required_id(n)?;
            let mut element = parse_element(n, &id, event_sub, errors)?;
            element.parent = parent;
            let me = self.elements.len();
            if self.index.insert(id.clone(), me).is_some() {
                return Err(ModelError::invalid(&id, "two elements share this id"));
            }
            if let Some(d) = n.attribute("default") {
                self.defaults.push((me, d.to_string()));
            }
            if tag == "boundaryEvent" {
                let host = n.attribute("attachedToRef").ok_or_else(|| {
                    ModelError::invalid(&id, "a boundary event needs attachedToRef")
                })?;
                self.attachments.push((me, host.to_string()));
            }
            self.elements.push(element);
            if tag == "subProcess" {
                let triggered =
                    matches!(self.elements[me].kind, ElementKind::EventSubProcess { .. });
                self.collect(n, Some(me), triggered, errors)?;
                let starts: Vec<usize> = (me + 1..self.elements.len())
                    .filter(|&i| self.elements[i].parent == Some(me))
                    .filter(|&i| {
                        matches!(
                            self.elements[i].kind,
                            ElementKind::StartEvent
                                | ElementKind::ErrorStartEvent { .. }
                                | ElementKind::EscalationStartEvent { .. }
                                | ElementKind::TimerStartEvent { .. }
                        )
                    })
                    .collect();
                let start = match starts.as_slice() {
                    [one] => *one,
                    [] => {
                        return Err(ModelError::invalid(
                            &id,
                            "a sub-process needs one start event",
                        ));
                    }
                    _ => {
                        return Err(ModelError::unsupported(
                            tag,
                            &id,
                            "a sub-process with more than one start event is not supported",
                        ));
                    }
                };
                match &mut self.elements[me].kind {
                    ElementKind::SubProcess { start: s }
                    | ElementKind::EventSubProcess { start: s } => *s = start,
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

fn parse_process(process: Node, errors: &Errors) -> Result<ProcessDefinition, ModelError> {
    let key = required_id(process)?;
    // Process-level listeners would be silently skipped: refuse them like element ones.
    extensions(process, "process", &key)?;
    let mut c = Collected {
        elements: Vec::new(),
        index: HashMap::new(),
        flow_nodes: Vec::new(),
        defaults: Vec::new(),
        attachments: Vec::new(),
    };
    c.collect(process, None, false, errors)?;
    let Collected {
        mut elements,
        index,
        flow_nodes,
        defaults,
        attachments,
    } = c;

    let mut flows: Vec<Flow> = Vec::new();
    let mut flow_index: HashMap<String, usize> = HashMap::new();
    for (i, (n, container)) in flow_nodes.iter().enumerate() {
        let id = n
            .attribute("id")
            .map(str::to_string)
            .unwrap_or_else(|| format!("flow#{i}"));
        let endpoint = |attr: &str| -> Result<usize, ModelError> {
            let r = n
                .attribute(attr)
                .ok_or_else(|| ModelError::invalid(&id, format!("sequence flow has no {attr}")))?;
            index.get(r).copied().ok_or_else(|| {
                ModelError::invalid(&id, format!("{attr} `{r}` names no element of the process"))
            })
        };
        let source = endpoint("sourceRef")?;
        let target = endpoint("targetRef")?;
        if elements[source].parent != *container || elements[target].parent != *container {
            return Err(ModelError::invalid(
                &id,
                "a sequence flow must connect elements of its own (sub-)process",
            ));
        }
        let condition = match child(*n, "conditionExpression") {
            Some(c) => {
                if let Some(lang) = c.attribute("language") {
                    return Err(ModelError::unsupported(
                        "conditionExpression",
                        &id,
                        format!("script conditions (language `{lang}`) are not supported"),
                    ));
                }
                let text = text_of(c);
                if text.is_empty() {
                    return Err(ModelError::invalid(
                        &id,
                        "the condition expression is empty",
                    ));
                }
                Some(expr(&text, &id)?)
            }
            None => None,
        };
        extensions(*n, "sequenceFlow", &id)?;
        if flow_index.insert(id.clone(), flows.len()).is_some() || index.contains_key(&id) {
            return Err(ModelError::invalid(&id, "two elements share this id"));
        }
        elements[source].outgoing.push(flows.len());
        elements[target].incoming.push(flows.len());
        flows.push(Flow {
            id,
            source,
            target,
            condition,
        });
    }

    for (el, flow_id) in defaults {
        let f = *flow_index.get(&flow_id).ok_or_else(|| {
            ModelError::invalid(
                &elements[el].id,
                format!("default flow `{flow_id}` does not exist"),
            )
        })?;
        if flows[f].source != el {
            return Err(ModelError::invalid(
                &elements[el].id,
                format!("default flow `{flow_id}` does not leave this element"),
            ));
        }
        elements[el].default_flow = Some(f);
    }

    for (b, host_id) in attachments {
        let host = *index.get(&host_id).ok_or_else(|| {
            ModelError::invalid(
                &elements[b].id,
                format!("attachedToRef `{host_id}` names no element of the process"),
            )
        })?;
        if !matches!(
            elements[host].kind,
            ElementKind::UserTask(_)
                | ElementKind::ExternalTask { .. }
                | ElementKind::SubProcess { .. }
        ) {
            return Err(ModelError::unsupported(
                "boundaryEvent",
                &elements[b].id,
                format!(
                    "boundary events on <{}> are not supported yet (only on user and service tasks and sub-processes)",
                    elements[host].tag
                ),
            ));
        }
        if elements[b].parent != elements[host].parent {
            return Err(ModelError::invalid(
                &elements[b].id,
                "a boundary event must sit in the same (sub-)process as its activity",
            ));
        }
        if !elements[b].incoming.is_empty() {
            return Err(ModelError::invalid(
                &elements[b].id,
                "a boundary event cannot have incoming flows",
            ));
        }
        if let ElementKind::BoundaryTimer { host: h, .. }
        | ElementKind::BoundaryError { host: h, .. }
        | ElementKind::BoundaryEscalation { host: h, .. } = &mut elements[b].kind
        {
            *h = host;
        }
        elements[host].boundaries.push(b);
    }

    let starts: Vec<usize> = (0..elements.len())
        .filter(|i| elements[*i].parent.is_none())
        .filter(|i| matches!(elements[*i].kind, ElementKind::StartEvent))
        .collect();
    let start = match starts.as_slice() {
        [one] => *one,
        [] => {
            return Err(ModelError::invalid(
                &key,
                "the process has no none start event",
            ));
        }
        _ => {
            return Err(ModelError::invalid(
                &key,
                "the process has more than one none start event",
            ));
        }
    };
    for e in &elements {
        let is_start = matches!(
            e.kind,
            ElementKind::StartEvent
                | ElementKind::ErrorStartEvent { .. }
                | ElementKind::EscalationStartEvent { .. }
                | ElementKind::TimerStartEvent { .. }
        );
        if is_start && !e.incoming.is_empty() {
            return Err(ModelError::invalid(
                &e.id,
                "a start event cannot have incoming flows",
            ));
        }
        if matches!(e.kind, ElementKind::EventSubProcess { .. })
            && !(e.incoming.is_empty() && e.outgoing.is_empty())
        {
            return Err(ModelError::invalid(
                &e.id,
                "an event sub-process cannot have sequence flows in or out",
            ));
        }
    }

    let reach = reachability(&elements, &flows);
    Ok(ProcessDefinition {
        name: process.attribute("name").map(str::to_string),
        key,
        elements,
        flows,
        start,
        index,
        reach,
    })
}

fn reachability(elements: &[Element], flows: &[Flow]) -> Vec<Vec<u64>> {
    let words = elements.len().div_ceil(64).max(1);
    // A token at an activity may also leave through its boundary events.
    let next = |n: usize| {
        elements[n]
            .outgoing
            .iter()
            .map(|f| flows[*f].target)
            .chain(elements[n].boundaries.iter().copied())
    };
    let mut reach = vec![vec![0u64; words]; elements.len()];
    for (from, row) in reach.iter_mut().enumerate() {
        let mut stack: Vec<usize> = next(from).collect();
        while let Some(n) = stack.pop() {
            if row[n / 64] & (1 << (n % 64)) != 0 {
                continue;
            }
            row[n / 64] |= 1 << (n % 64);
            stack.extend(next(n));
        }
    }
    reach
}

fn event_definitions<'a, 'i>(n: Node<'a, 'i>) -> Vec<Node<'a, 'i>> {
    bpmn_children(n)
        .filter(|c| {
            let name = c.tag_name().name();
            // A reference to a shared definition counts as one (and is refused below).
            name.ends_with("EventDefinition") || name == "eventDefinitionRef"
        })
        .collect()
}

fn parse_element(
    n: Node,
    id: &str,
    event_sub: bool,
    errors: &Errors,
) -> Result<Element, ModelError> {
    let tag = n.tag_name().name();
    let unsupported = |reason: &str| ModelError::unsupported(tag, id, reason);
    for c in bpmn_children(n) {
        let name = c.tag_name().name();
        if name == "multiInstanceLoopCharacteristics" || name == "standardLoopCharacteristics" {
            return Err(unsupported(&format!(
                "<{name}> (loops and multi-instance) is not supported yet"
            )));
        }
    }
    let ext = extensions(n, tag, id)?;
    let defs = event_definitions(n);
    let only_def = |allowed: &[&str]| -> Result<Option<Node>, ModelError> {
        match defs.as_slice() {
            [] => Ok(None),
            [d] if allowed.contains(&d.tag_name().name()) => Ok(Some(*d)),
            [d] => Err(unsupported(&format!(
                "<{}> on <{tag}> is not supported yet",
                d.tag_name().name()
            ))),
            _ => Err(unsupported(
                "several event definitions on one event are not supported",
            )),
        }
    };
    let kind = match tag {
        "startEvent" if event_sub => {
            match only_def(&[
                "errorEventDefinition",
                "timerEventDefinition",
                "escalationEventDefinition",
            ])? {
                Some(d) if d.tag_name().name() == "escalationEventDefinition" => {
                    ElementKind::EscalationStartEvent {
                        code: escalation_code(d, tag, id, errors)?,
                        interrupting: n.attribute("isInterrupting") != Some("false"),
                    }
                }
                Some(t) if t.tag_name().name() == "timerEventDefinition" => {
                    ElementKind::TimerStartEvent {
                        timer: timer(t, tag, id)?,
                        interrupting: n.attribute("isInterrupting") != Some("false"),
                    }
                }
                Some(d) => {
                    if n.attribute("isInterrupting") == Some("false") {
                        return Err(ModelError::invalid(
                            id,
                            "an error start event is always interrupting",
                        ));
                    }
                    ElementKind::ErrorStartEvent {
                        code: error_code(d, tag, id, errors)?,
                    }
                }
                None => {
                    return Err(ModelError::invalid(
                        id,
                        "the start event of an event sub-process needs an event definition",
                    ));
                }
            }
        }
        "startEvent" => {
            only_def(&[])?;
            ElementKind::StartEvent
        }
        "endEvent" => match only_def(&[
            "terminateEventDefinition",
            "errorEventDefinition",
            "escalationEventDefinition",
        ])? {
            Some(d) if d.tag_name().name() == "escalationEventDefinition" => {
                ElementKind::EscalationEndEvent {
                    code: thrown_escalation(d, tag, id, errors)?,
                }
            }
            Some(d) if d.tag_name().name() == "errorEventDefinition" => {
                match error_code(d, tag, id, errors)? {
                    Some(code) => ElementKind::ErrorEndEvent { code },
                    None => {
                        return Err(ModelError::invalid(
                            id,
                            "an error end event needs errorRef naming an <error> with an errorCode",
                        ));
                    }
                }
            }
            Some(_) => ElementKind::TerminateEndEvent,
            None => ElementKind::EndEvent,
        },
        "subProcess" => {
            if n.attribute("triggeredByEvent") == Some("true") {
                ElementKind::EventSubProcess { start: usize::MAX }
            } else {
                ElementKind::SubProcess { start: usize::MAX }
            }
        }
        "intermediateThrowEvent" => match only_def(&["escalationEventDefinition"])? {
            Some(d) => ElementKind::EscalationThrow {
                code: thrown_escalation(d, tag, id, errors)?,
            },
            None => ElementKind::PassThrough,
        },
        "boundaryEvent" => match only_def(&[
            "timerEventDefinition",
            "errorEventDefinition",
            "escalationEventDefinition",
        ])? {
            Some(d) if d.tag_name().name() == "escalationEventDefinition" => {
                ElementKind::BoundaryEscalation {
                    host: usize::MAX,
                    code: escalation_code(d, tag, id, errors)?,
                    interrupting: n.attribute("cancelActivity") != Some("false"),
                }
            }
            Some(d) if d.tag_name().name() == "errorEventDefinition" => {
                if n.attribute("cancelActivity") == Some("false") {
                    return Err(ModelError::invalid(
                        id,
                        "an error boundary event is always interrupting (cancelActivity=\"false\")",
                    ));
                }
                ElementKind::BoundaryError {
                    host: usize::MAX,
                    code: error_code(d, tag, id, errors)?,
                }
            }
            Some(t) => ElementKind::BoundaryTimer {
                host: usize::MAX,
                interrupting: n.attribute("cancelActivity") != Some("false"),
                timer: timer(t, tag, id)?,
            },
            None => return Err(unsupported("a boundary event needs an event definition")),
        },
        "intermediateCatchEvent" => match only_def(&["timerEventDefinition"])? {
            Some(t) => ElementKind::TimerCatch(timer(t, tag, id)?),
            None => {
                return Err(unsupported(
                    "an intermediate catch event needs an event definition",
                ));
            }
        },
        "task" | "manualTask" => ElementKind::PassThrough,
        "userTask" => ElementKind::UserTask(user_task(n, id, &ext)?),
        "serviceTask" | "sendTask" | "businessRuleTask" => external_task(n, tag, id, &ext)?,
        "exclusiveGateway" => ElementKind::ExclusiveGateway,
        "parallelGateway" => ElementKind::ParallelGateway,
        "inclusiveGateway" => ElementKind::InclusiveGateway,
        "scriptTask" => {
            return Err(unsupported(&format!(
                "script tasks{} cannot run in Steadyflow yet; model the work as an external service task",
                n.attribute("scriptFormat")
                    .map(|f| format!(" ({f})"))
                    .unwrap_or_default()
            )));
        }
        _ => return Err(unsupported(&format!("<{tag}> is not supported yet"))),
    };
    let completes = !kind.is_gateway()
        && !matches!(
            kind,
            ElementKind::EndEvent
                | ElementKind::TerminateEndEvent
                | ElementKind::ErrorEndEvent { .. }
                | ElementKind::EscalationEndEvent { .. }
                | ElementKind::EventSubProcess { .. }
        );
    if !ext.outputs.is_empty() && !completes {
        return Err(unsupported(
            "output mappings on this element are not supported yet",
        ));
    }
    Ok(Element {
        id: id.to_string(),
        name: n.attribute("name").map(str::to_string),
        tag: tag.to_string(),
        kind,
        incoming: Vec::new(),
        outgoing: Vec::new(),
        default_flow: None,
        inputs: ext.inputs,
        outputs: ext.outputs,
        boundaries: Vec::new(),
        parent: None,
    })
}

/// The escalation code an `<escalationEventDefinition>` names: `None` without
/// escalationRef (catch-all).
fn escalation_code(
    def: Node,
    tag: &str,
    id: &str,
    errors: &Errors,
) -> Result<Option<String>, ModelError> {
    let Some(r) = def.attribute("escalationRef") else {
        return Ok(None);
    };
    let found = errors.escalations.get(r).or_else(|| {
        r.split_once(':')
            .and_then(|(_, local)| errors.escalations.get(local))
    });
    match found {
        Some(Some(code)) => Ok(Some(code.clone())),
        Some(None) => Err(ModelError::unsupported(
            tag,
            id,
            format!(
                "<escalation id=\"{r}\"> has no escalationCode; catching or throwing it is not supported"
            ),
        )),
        None => Err(ModelError::invalid(
            id,
            format!("escalationRef `{r}` names no <escalation> of the document"),
        )),
    }
}

/// An escalation code to throw: required.
fn thrown_escalation(
    def: Node,
    tag: &str,
    id: &str,
    errors: &Errors,
) -> Result<String, ModelError> {
    escalation_code(def, tag, id, errors)?.ok_or_else(|| {
        ModelError::invalid(
            id,
            "an escalation throw event needs escalationRef naming an <escalation> with an escalationCode",
        )
    })
}

/// The error code an `<errorEventDefinition>` names: `None` without errorRef (catch-all).
fn error_code(
    def: Node,
    tag: &str,
    id: &str,
    errors: &Errors,
) -> Result<Option<String>, ModelError> {
    for attr in ["errorCodeVariable", "errorMessageVariable"] {
        if def.attribute((CAMUNDA, attr)).is_some() {
            return Err(ModelError::unsupported(
                tag,
                id,
                format!("camunda:{attr} is not supported yet"),
            ));
        }
    }
    let Some(r) = def.attribute("errorRef") else {
        return Ok(None);
    };
    let found = errors.errors.get(r).or_else(|| {
        r.split_once(':')
            .and_then(|(_, local)| errors.errors.get(local))
    });
    match found {
        Some(Some(code)) => Ok(Some(code.clone())),
        Some(None) => Err(ModelError::unsupported(
            tag,
            id,
            format!(
                "<error id=\"{r}\"> has no errorCode; catching or throwing it is not supported"
            ),
        )),
        None => Err(ModelError::invalid(
            id,
            format!("errorRef `{r}` names no <error> of the document"),
        )),
    }
}

/// What the `<extensionElements>` of an element say.
#[derive(Default)]
struct Extensions<'a, 'i> {
    inputs: Vec<IoMapping>,
    outputs: Vec<IoMapping>,
    zeebe_task: Option<Node<'a, 'i>>,
    zeebe_assignment: Option<Node<'a, 'i>>,
}

fn extensions<'a, 'i>(
    n: Node<'a, 'i>,
    tag: &str,
    id: &str,
) -> Result<Extensions<'a, 'i>, ModelError> {
    let mut ext = Extensions::default();
    let Some(block) = child(n, "extensionElements") else {
        return Ok(ext);
    };
    for e in block.children().filter(|c| c.is_element()) {
        let ns = e.tag_name().namespace();
        if ns != Some(CAMUNDA) && ns != Some(ZEEBE) {
            continue; // other vendors' metadata (Signavio ...) carries no execution meaning
        }
        let name = e.tag_name().name();
        if REFUSED_EXTENSIONS.contains(&name) {
            return Err(ModelError::unsupported(
                tag,
                id,
                format!("extension <{name}> is not supported yet"),
            ));
        }
        match (ns == Some(ZEEBE), name) {
            (true, "ioMapping") => {
                for m in e.children().filter(|c| c.is_element()) {
                    let source = m.attribute("source").unwrap_or("");
                    let target = m
                        .attribute("target")
                        .ok_or_else(|| ModelError::invalid(id, "an io mapping has no target"))?;
                    let mapping = IoMapping {
                        source: expr(source, id)?,
                        target: target.to_string(),
                    };
                    match m.tag_name().name() {
                        "input" if tag == "subProcess" => ext.inputs.push(mapping),
                        "input" => {
                            return Err(ModelError::unsupported(
                                tag,
                                id,
                                "zeebe:ioMapping input mappings are supported on sub-processes only yet",
                            ));
                        }
                        "output" => ext.outputs.push(mapping),
                        other => {
                            return Err(ModelError::invalid(
                                id,
                                format!("unknown io mapping <{other}>"),
                            ));
                        }
                    }
                }
            }
            (true, "taskDefinition") => ext.zeebe_task = Some(e),
            (true, "assignmentDefinition") => ext.zeebe_assignment = Some(e),
            _ => {}
        }
    }
    Ok(ext)
}

fn split_list(text: &str, id: &str) -> Result<Vec<Expression>, ModelError> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| expr(s, id))
        .collect()
}

fn user_task(n: Node, id: &str, ext: &Extensions) -> Result<UserTaskDef, ModelError> {
    let mut def = UserTaskDef::default();
    if let Some(name) = n
        .attribute("name")
        .filter(|s| s.contains("${") || s.contains("#{"))
    {
        def.name = Some(expr(name, id)?);
    }
    let attr = |local: &str| {
        n.attribute((CAMUNDA, local))
            .or_else(|| ext.zeebe_assignment.and_then(|z| z.attribute(local)))
    };
    if let Some(a) = attr("assignee").filter(|s| !s.trim().is_empty()) {
        def.assignee = Some(expr(a, id)?);
    }
    if let Some(u) = attr("candidateUsers") {
        def.candidate_users = split_list(u, id)?;
    }
    if let Some(g) = attr("candidateGroups") {
        def.candidate_groups = split_list(g, id)?;
    }
    // Standard BPMN people assignment.
    for role in bpmn_children(n) {
        let rname = role.tag_name().name();
        if rname != "potentialOwner" && rname != "humanPerformer" {
            continue;
        }
        let Some(fe) = role.descendants().find(|d| is_bpmn(*d, "formalExpression")) else {
            continue;
        };
        let text = text_of(fe);
        if rname == "humanPerformer" {
            if def.assignee.is_some() {
                return Err(ModelError::invalid(
                    id,
                    "the assignee is declared twice (humanPerformer and an assignee attribute)",
                ));
            }
            def.assignee = Some(expr(&text, id)?);
            continue;
        }
        for part in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            // `user(x)` and `group(x)`; a bare name means a group, as in Camunda.
            let (is_user, inner) = if let Some(r) = part.strip_prefix("user(") {
                (true, r.strip_suffix(')'))
            } else if let Some(r) = part.strip_prefix("group(") {
                (false, r.strip_suffix(')'))
            } else {
                (false, Some(part))
            };
            let inner = inner.ok_or_else(|| {
                ModelError::invalid(id, format!("malformed potential owner `{part}`"))
            })?;
            let e = expr(inner.trim(), id)?;
            if is_user {
                def.candidate_users.push(e);
            } else {
                def.candidate_groups.push(e);
            }
        }
    }
    Ok(def)
}

fn external_task(
    n: Node,
    tag: &str,
    id: &str,
    ext: &Extensions,
) -> Result<ElementKind, ModelError> {
    let unsupported = |reason: String| ModelError::unsupported(tag, id, reason);
    for java in ["class", "expression", "delegateExpression", "decisionRef"] {
        if let Some(v) = n.attribute((CAMUNDA, java)) {
            return Err(unsupported(format!(
                "camunda:{java}=\"{v}\" needs Java code; use camunda:type=\"external\" with a topic"
            )));
        }
    }
    if let Some(z) = ext.zeebe_task {
        let ty = z
            .attribute("type")
            .ok_or_else(|| ModelError::invalid(id, "zeebe:taskDefinition has no type"))?;
        let retries = match z.attribute("retries") {
            Some(r) => Some(
                r.trim()
                    .parse::<i32>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        ModelError::invalid(
                            id,
                            format!(
                                "zeebe:taskDefinition retries `{r}` is not a number of at least 1"
                            ),
                        )
                    })?,
            ),
            None => None,
        };
        return Ok(ElementKind::ExternalTask {
            topic: expr(ty, id)?,
            retries,
        });
    }
    match n.attribute((CAMUNDA, "type")) {
        Some("external") => {
            let topic = n
                .attribute((CAMUNDA, "topic"))
                .filter(|t| !t.trim().is_empty())
                .ok_or_else(|| ModelError::invalid(id, "an external task needs camunda:topic"))?;
            Ok(ElementKind::ExternalTask {
                topic: expr(topic, id)?,
                retries: None,
            })
        }
        Some(other) => Err(unsupported(format!("camunda:type=\"{other}\" is not supported yet"))),
        None => Err(unsupported(
            "no implementation given: use camunda:type=\"external\" with camunda:topic, or zeebe:taskDefinition"
                .to_string(),
        )),
    }
}

fn timer(def: Node, tag: &str, id: &str) -> Result<TimerDef, ModelError> {
    let pick = |local: &str| child(def, local).map(text_of);
    if pick("timeCycle").is_some() {
        return Err(ModelError::unsupported(
            tag,
            id,
            "timeCycle timers are not supported yet",
        ));
    }
    if let Some(text) = pick("timeDuration") {
        let e = expr(&text, id)?;
        if e.is_literal() && parse_duration(&text).is_none() {
            return Err(ModelError::invalid(
                id,
                format!("`{text}` is not an ISO-8601 duration"),
            ));
        }
        return Ok(TimerDef::Duration(e));
    }
    if let Some(text) = pick("timeDate") {
        let e = expr(&text, id)?;
        if e.is_literal() && parse_date_time(&text).is_none() {
            return Err(ModelError::invalid(
                id,
                format!("`{text}` is not an ISO-8601 date-time"),
            ));
        }
        return Ok(TimerDef::Date(e));
    }
    Err(ModelError::invalid(
        id,
        "a timer needs timeDuration or timeDate",
    ))
}
