use std::collections::HashMap;

use steadyflow_expr::Expression;

/// One executable `<process>`: elements, sequence flows and precomputed reachability.
#[derive(Debug, Clone)]
pub struct ProcessDefinition {
    /// The process id: the definition key.
    pub key: String,
    pub name: Option<String>,
    pub elements: Vec<Element>,
    pub flows: Vec<Flow>,
    /// Index of the none start event (of the process itself, not of a sub-process).
    pub start: usize,
    pub(crate) index: HashMap<String, usize>,
    /// `reach[a]` has bit `b` set when element `b` can be reached from `a` along flows.
    pub(crate) reach: Vec<Vec<u64>>,
}

impl ProcessDefinition {
    /// Element index by its id.
    pub fn element_index(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    pub fn element(&self, idx: usize) -> &Element {
        &self.elements[idx]
    }

    /// The event sub-processes directly inside `container` (a sub-process element, or the
    /// process itself for `None`), in document order.
    pub fn event_subprocesses(&self, container: Option<usize>) -> impl Iterator<Item = usize> {
        (0..self.elements.len()).filter(move |&i| {
            self.elements[i].parent == container
                && matches!(self.elements[i].kind, ElementKind::EventSubProcess { .. })
        })
    }

    /// True when a token at `from` can still arrive at `to` by following sequence flows
    /// (`from == to` counts as reachable).
    pub fn can_reach(&self, from: usize, to: usize) -> bool {
        from == to || self.reach[from][to / 64] & (1u64 << (to % 64)) != 0
    }
}

#[derive(Debug, Clone)]
pub struct Flow {
    /// Sequence flows without an id attribute get a generated one (`flow#<n>`).
    pub id: String,
    pub source: usize,
    pub target: usize,
    pub condition: Option<Expression>,
}

#[derive(Debug, Clone)]
pub struct Element {
    pub id: String,
    pub name: Option<String>,
    /// The XML tag (local name), for messages.
    pub tag: String,
    pub kind: ElementKind,
    /// Indices into [`ProcessDefinition::flows`], in document order.
    pub incoming: Vec<usize>,
    pub outgoing: Vec<usize>,
    pub default_flow: Option<usize>,
    /// Input mappings (`zeebe:ioMapping` input): evaluated on entry into token-local variables.
    pub inputs: Vec<IoMapping>,
    /// Output mappings (`zeebe:ioMapping` output): evaluated on completion into instance variables.
    pub outputs: Vec<IoMapping>,
    /// Boundary events attached to this activity (element indices).
    pub boundaries: Vec<usize>,
    /// The (event) sub-process this element sits directly in; `None` at process level.
    pub parent: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct IoMapping {
    pub source: Expression,
    pub target: String,
}

#[derive(Debug, Clone)]
pub enum ElementKind {
    StartEvent,
    EndEvent,
    TerminateEndEvent,
    /// Error end event: throws the BPMN error `code` to the nearest catcher.
    ErrorEndEvent {
        code: String,
    },
    /// Embedded sub-process: a scope whose body starts at its none start event `start`.
    SubProcess {
        start: usize,
    },
    /// Event sub-process (`triggeredByEvent`): started by the event of its start event
    /// `start` while its enclosing scope runs; interrupting (error start events always are).
    EventSubProcess {
        start: usize,
    },
    /// Timer start event of an event sub-process: armed while the enclosing scope runs.
    TimerStartEvent {
        timer: TimerDef,
        interrupting: bool,
    },
    /// Intermediate escalation throw event: escalates `code` to the nearest catcher and
    /// goes on unless an interrupting catcher cancelled it.
    EscalationThrow {
        code: String,
    },
    /// Escalation end event: escalates `code`, then ends like a none end event.
    EscalationEndEvent {
        code: String,
    },
    /// Escalation boundary event on the (sub-process) activity `host`; `code: None`
    /// catches every escalation.
    BoundaryEscalation {
        host: usize,
        code: Option<String>,
        interrupting: bool,
    },
    /// Escalation start event of an event sub-process; `code: None` catches every one.
    EscalationStartEvent {
        code: Option<String>,
        interrupting: bool,
    },
    /// Error start event of an event sub-process; `code: None` catches every error.
    ErrorStartEvent {
        code: Option<String>,
    },
    /// Passes the token straight on: manual task, plain task, none intermediate throw event.
    PassThrough,
    UserTask(UserTaskDef),
    /// Service/send/business-rule task executed by an external worker (topic / job type).
    ExternalTask {
        topic: Expression,
        retries: Option<i32>,
    },
    ExclusiveGateway,
    ParallelGateway,
    InclusiveGateway,
    TimerCatch(TimerDef),
    /// Timer boundary event on the activity `host`; `interrupting` cancels the host.
    BoundaryTimer {
        host: usize,
        interrupting: bool,
        timer: TimerDef,
    },
    /// Error boundary event on the activity `host` (always interrupting); `code: None`
    /// catches every error.
    BoundaryError {
        host: usize,
        code: Option<String>,
    },
}

/// What a throw event sends to the catch events around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thrown {
    Error,
    Escalation,
}

impl ElementKind {
    /// What a catch event of `what` waits for: `(code, interrupting)`, where `code:
    /// None` catches every code; `None` when this is no such catch event.
    pub fn catches(&self, what: Thrown) -> Option<(Option<&str>, bool)> {
        match (self, what) {
            (ElementKind::BoundaryError { code, .. }, Thrown::Error)
            | (ElementKind::ErrorStartEvent { code }, Thrown::Error) => {
                Some((code.as_deref(), true))
            }
            (
                ElementKind::BoundaryEscalation {
                    code, interrupting, ..
                },
                Thrown::Escalation,
            )
            | (ElementKind::EscalationStartEvent { code, interrupting }, Thrown::Escalation) => {
                Some((code.as_deref(), *interrupting))
            }
            _ => None,
        }
    }

    /// The timer of a timer start event of an event sub-process.
    pub fn event_sub_timer(&self) -> Option<(&TimerDef, bool)> {
        match self {
            ElementKind::TimerStartEvent {
                timer,
                interrupting,
            } => Some((timer, *interrupting)),
            _ => None,
        }
    }

    /// Elements that hold a scope of their own while tokens run inside them.
    pub fn is_scope(&self) -> bool {
        matches!(
            self,
            ElementKind::SubProcess { .. } | ElementKind::EventSubProcess { .. }
        )
    }

    pub fn is_gateway(&self) -> bool {
        matches!(
            self,
            ElementKind::ExclusiveGateway
                | ElementKind::ParallelGateway
                | ElementKind::InclusiveGateway
        )
    }
}

#[derive(Debug, Clone, Default)]
pub struct UserTaskDef {
    /// The task name when it holds an expression (`My Task ${loopCounter}`).
    pub name: Option<Expression>,
    pub assignee: Option<Expression>,
    /// Each expression yields a comma separated string or a list.
    pub candidate_users: Vec<Expression>,
    pub candidate_groups: Vec<Expression>,
}

#[derive(Debug, Clone)]
pub enum TimerDef {
    /// ISO-8601 duration (`PT5M`), possibly from an expression.
    Duration(Expression),
    /// ISO-8601 date-time (`2026-01-01T10:00:00Z`, or local time read as UTC).
    Date(Expression),
}
