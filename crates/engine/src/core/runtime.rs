//! The persisted execution state of one instance (`InstanceRecord::runtime`).

use serde::{Deserialize, Serialize};
use steadyflow_model::{ElementKind, ProcessDefinition};
use steadyflow_store::{RawJson, Vars};

/// Where a token stands while the instance is at rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Wait {
    /// Arrived, not yet processed (only inside a transition, never persisted).
    Ready,
    UserTask {
        task_id: String,
    },
    ExternalTask {
        task_id: String,
    },
    Timer {
        timer_id: String,
    },
    /// Waiting at a joining parallel or inclusive gateway.
    Join,
    /// Standing at a sub-process (or an event sub-process) whose body runs: the tokens
    /// inside have this token's id as their `scope`; the sub-process completes when
    /// none is left.
    SubProcess,
    /// Stopped by an incident; `leaving` tells whether it stopped while choosing outgoing
    /// flows (retry re-evaluates them) or while entering (retry enters again);
    /// `completing`, that an output mapping failed while the activity completed (retry
    /// applies the mappings again, to the completion's variables kept in the token's
    /// locals, then leaves).
    Incident {
        incident_id: String,
        leaving: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        completing: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Token {
    pub id: u64,
    /// Element id the token stands at.
    pub element: String,
    /// Sequence flow the token arrived by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    pub wait: Wait,
    /// Local variables (input mappings).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub locals: Vars,
    /// The token standing at the sub-process this token runs inside (`Wait::SubProcess`);
    /// `None` at process level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u64>,
    /// Timers of the boundary events of the activity the token waits in, and, at a
    /// sub-process, of the timer start events of its event sub-processes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boundary_timers: Vec<BoundaryTimer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BoundaryTimer {
    pub timer_id: String,
    /// The boundary event's element id.
    pub boundary: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Runtime {
    pub tokens: Vec<Token>,
    pub next_token: u64,
    /// Open incidents that hold a waiting token (failed external tasks): (incident, task).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_incidents: Vec<(String, String)>,
    /// Timers of the timer start events of the process-level event sub-processes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scope_timers: Vec<BoundaryTimer>,
}

impl Runtime {
    pub fn from_json(v: &RawJson) -> Result<Runtime, serde_json::Error> {
        match v.as_str() {
            "null" => Ok(Runtime::default()),
            text => serde_json::from_str(text),
        }
    }

    #[allow(
        clippy::expect_used,
        reason = "a `Runtime` is plain data that serde_json always serializes"
    )]
    pub fn to_json(&self) -> RawJson {
        // Local invariant: a `Runtime` is plain data (strings, numbers, maps with string
        // keys), which serde_json always serializes.
        RawJson::to_raw(self).expect("runtime serializes")
    }

    /// Checks what the transition code relies on but the stored JSON could contradict
    /// (a bad manual edit, a restore that went wrong): every token stands at an element
    /// of `def`, every boundary timer names a boundary timer event of `def`, token ids
    /// are unique and below `next_token`, and no token is persisted mid-step (`Ready`).
    /// `Err` names the first contradiction found.
    pub fn check(&self, def: &ProcessDefinition) -> Result<(), String> {
        // Runs on every command: no allocation for the usual handful of tokens.
        let mut many = (self.tokens.len() > 32).then(std::collections::HashSet::new);
        for (i, t) in self.tokens.iter().enumerate() {
            let twice = match &mut many {
                Some(seen) => !seen.insert(t.id),
                None => self.tokens[..i].iter().any(|o| o.id == t.id),
            };
            if twice {
                return Err(format!("token id {} is used twice", t.id));
            }
            if t.id >= self.next_token {
                return Err(format!(
                    "token id {} is not below nextToken {}",
                    t.id, self.next_token
                ));
            }
            let Some(here) = def.element_index(&t.element) else {
                return Err(format!(
                    "token {} stands at `{}`, which process `{}` does not have",
                    t.id, t.element, def.key
                ));
            };
            if t.wait == Wait::Ready {
                return Err(format!("token {} was stored mid-step (ready)", t.id));
            }
            if let Some(s) = t.scope {
                let at = self.tokens.iter().find(|o| o.id == s);
                let host = at.and_then(|o| def.element_index(&o.element));
                let fits = at.is_some_and(|o| o.wait == Wait::SubProcess)
                    && host.is_some()
                    && def.elements[here].parent == host;
                if !fits {
                    return Err(format!(
                        "token {} runs in scope {s}, which is no token at the sub-process around `{}`",
                        t.id, t.element
                    ));
                }
            } else if def.elements[here].parent.is_some() {
                return Err(format!(
                    "token {} stands inside a sub-process at `{}` but has no scope",
                    t.id, t.element
                ));
            }
            if t.wait == Wait::SubProcess && !def.elements[here].kind.is_scope() {
                return Err(format!(
                    "token {} waits in a sub-process at `{}`, which is none",
                    t.id, t.element
                ));
            }
            for b in &t.boundary_timers {
                let is_boundary_timer = def.element_index(&b.boundary).is_some_and(|el| {
                    matches!(
                        def.elements[el].kind,
                        ElementKind::BoundaryTimer { .. } | ElementKind::TimerStartEvent { .. }
                    )
                });
                if !is_boundary_timer {
                    return Err(format!(
                        "timer {} of token {} names `{}`, which is not a boundary timer event of process `{}`",
                        b.timer_id, t.id, b.boundary, def.key
                    ));
                }
            }
        }
        for b in &self.scope_timers {
            let at_root = def.element_index(&b.boundary).is_some_and(|el| {
                matches!(def.elements[el].kind, ElementKind::TimerStartEvent { .. })
                    && def.elements[el]
                        .parent
                        .is_some_and(|es| def.elements[es].parent.is_none())
            });
            if !at_root {
                return Err(format!(
                    "timer {} names `{}`, which is not a timer start event of a process-level event sub-process of `{}`",
                    b.timer_id, b.boundary, def.key
                ));
            }
        }
        Ok(())
    }

    pub fn has_incident(&self) -> bool {
        !self.task_incidents.is_empty()
            || self
                .tokens
                .iter()
                .any(|t| matches!(t.wait, Wait::Incident { .. }))
    }

    /// Element ids where tokens stand (deduplicated, sorted): the active activities.
    pub fn active_activity_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.tokens.iter().map(|t| t.element.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    }
}
