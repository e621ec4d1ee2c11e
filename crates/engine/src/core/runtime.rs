//! The persisted execution state of one instance (`InstanceRecord::runtime`).

use serde::{Deserialize, Serialize};
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
    /// Stopped by an incident; `leaving` tells whether it stopped while choosing outgoing
    /// flows (retry re-evaluates them) or while entering (retry enters again).
    Incident {
        incident_id: String,
        leaving: bool,
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
    /// Timers of the boundary events of the activity the token waits in.
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
}

impl Runtime {
    pub fn from_json(v: &RawJson) -> Result<Runtime, serde_json::Error> {
        match v.as_str() {
            "null" => Ok(Runtime::default()),
            text => serde_json::from_str(text),
        }
    }

    pub fn to_json(&self) -> RawJson {
        RawJson::to_raw(self).expect("runtime serializes")
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
