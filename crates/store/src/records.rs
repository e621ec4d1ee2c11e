//! Rows the engine persists. Serialized with serde as the journal's row images.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Timestamp, Vars};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDefinition {
    pub key: String,
    pub name: Option<String>,
    pub xml: String,
    /// SHA-256 of the XML, hex: decides whether a redeploy is a new version.
    pub checksum: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DefinitionRecord {
    /// `<key>:<version>`.
    pub id: String,
    pub key: String,
    pub version: i32,
    pub name: Option<String>,
    pub checksum: String,
    /// `None` in listings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xml: Option<String>,
    pub deployed_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Deployed {
    pub definition: DefinitionRecord,
    /// False when an identical definition was already deployed.
    pub created: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    Active,
    Completed,
    Cancelled,
    /// Running, but stopped at one or more open incidents.
    Incident,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Active => "active",
            InstanceState::Completed => "completed",
            InstanceState::Cancelled => "cancelled",
            InstanceState::Incident => "incident",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => InstanceState::Active,
            "completed" => InstanceState::Completed,
            "cancelled" => InstanceState::Cancelled,
            "incident" => InstanceState::Incident,
            _ => return None,
        })
    }

    pub fn is_ended(self) -> bool {
        matches!(self, InstanceState::Completed | InstanceState::Cancelled)
    }
}

/// JSON text kept as it was written: checked once, then passed through (stored, read,
/// cloned, embedded in a journal image) without being parsed into a tree again. Cheap
/// to clone. Equality compares the text.
#[derive(Clone)]
pub struct RawJson(std::sync::Arc<serde_json::value::RawValue>);

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<serde_json::value::RawValue>::deserialize(d).map(RawJson::from)
    }
}

impl RawJson {
    pub fn null() -> Self {
        RawJson::from_text("null".to_string()).expect("null is JSON")
    }

    /// Checks that `text` is one JSON value.
    pub fn from_text(text: String) -> Result<Self, serde_json::Error> {
        serde_json::value::RawValue::from_string(text).map(|r| RawJson(r.into()))
    }

    pub fn to_raw<T: Serialize + ?Sized>(v: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(v).map(|r| RawJson(r.into()))
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    pub fn as_raw(&self) -> &serde_json::value::RawValue {
        &self.0
    }
}

/// Already checked JSON (as a driver hands it over): kept without copying.
impl From<Box<serde_json::value::RawValue>> for RawJson {
    fn from(raw: Box<serde_json::value::RawValue>) -> Self {
        RawJson(raw.into())
    }
}

impl From<Value> for RawJson {
    fn from(v: Value) -> Self {
        RawJson::to_raw(&v).expect("a JSON value serializes")
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl std::fmt::Debug for RawJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRecord {
    pub id: String,
    pub definition_id: String,
    pub definition_key: String,
    pub business_key: Option<String>,
    pub state: InstanceState,
    pub variables: Vars,
    /// Engine-owned execution state (tokens, joins); opaque to the store, kept as text.
    pub runtime: RawJson,
    /// Optimistic lock: bumped by every committed change.
    pub version: i64,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    pub id: String,
    pub instance_id: String,
    pub definition_id: String,
    /// The userTask element id (Camunda's taskDefinitionKey).
    pub activity_id: String,
    pub name: Option<String>,
    pub assignee: Option<String>,
    pub candidate_users: Vec<String>,
    pub candidate_groups: Vec<String>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalTaskRecord {
    pub id: String,
    pub instance_id: String,
    pub definition_id: String,
    pub activity_id: String,
    pub topic: String,
    pub worker_id: Option<String>,
    pub lock_expires_at: Option<Timestamp>,
    /// `None` until a worker reports a failure; 0 means an incident holds the task.
    pub retries: Option<i32>,
    pub error_message: Option<String>,
    /// Not fetchable before this instant (after a failure with a retry timeout).
    pub retry_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

/// A task handed to a worker by fetch-and-lock, with the instance's variables.
#[derive(Debug, Clone, PartialEq)]
pub struct LockedTask {
    pub task: ExternalTaskRecord,
    pub variables: Vars,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimerRecord {
    pub id: String,
    pub instance_id: String,
    pub activity_id: String,
    pub due_at: Timestamp,
    /// Node holding the timer while it fires.
    pub owner: Option<String>,
    pub lock_until: Option<Timestamp>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IncidentRecord {
    pub id: String,
    pub instance_id: String,
    pub activity_id: String,
    /// `noMatchingFlow`, `expressionFailed`, `failedExternalTask`.
    pub incident_type: String,
    pub message: String,
    pub external_task_id: Option<String>,
    pub created_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryRecord {
    pub instance_id: String,
    pub time: Timestamp,
    /// `instanceStarted`, `activityStarted`, `activityCompleted`, `variablesChanged`,
    /// `incidentCreated`, `instanceCompleted`, `instanceCancelled` ...
    pub event: String,
    pub activity_id: Option<String>,
    pub detail: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JournalRecord {
    pub seq: i64,
    pub tx_time: Timestamp,
    /// `definition`, `instance`, `task`, `externalTask`, `timer`, `incident`, `history`.
    pub entity: String,
    pub entity_id: String,
    /// `insert`, `update`, `delete`, `append`.
    pub op: String,
    /// Full row image after the change (`null` for deletes).
    pub row: Value,
}

/// Everything one engine command changes, committed atomically with its journal rows.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeSet {
    pub instance: InstanceRecord,
    /// `None` inserts a new instance; `Some(v)` updates only if the stored version is `v`.
    pub expected_version: Option<i64>,
    /// Commit only if this worker still holds an unexpired lock on this external task
    /// (checked before anything is written; `Conflict` otherwise, like a lost lock).
    pub lock_guard: Option<LockGuard>,
    /// The state the instance had when the command read it, if known: a store may then
    /// skip writing an unchanged state. `None` always writes it.
    pub prior_state: Option<InstanceState>,
    pub tasks_created: Vec<TaskRecord>,
    pub tasks_removed: Vec<String>,
    /// Inserted, or replacing the row with the same id.
    pub external_upserted: Vec<ExternalTaskRecord>,
    pub external_removed: Vec<String>,
    pub timers_created: Vec<TimerRecord>,
    pub timers_removed: Vec<String>,
    pub incidents_created: Vec<IncidentRecord>,
    pub incidents_resolved: Vec<String>,
    pub history: Vec<HistoryRecord>,
}

impl ChangeSet {
    pub fn new(instance: InstanceRecord, expected_version: Option<i64>) -> Self {
        ChangeSet {
            prior_state: None,
            lock_guard: None,
            instance,
            expected_version,
            tasks_created: Vec::new(),
            tasks_removed: Vec::new(),
            external_upserted: Vec::new(),
            external_removed: Vec::new(),
            timers_created: Vec::new(),
            timers_removed: Vec::new(),
            incidents_created: Vec::new(),
            incidents_resolved: Vec::new(),
            history: Vec::new(),
        }
    }
}

/// A worker's lock that must still hold when a change set commits.
#[derive(Debug, Clone, PartialEq)]
pub struct LockGuard {
    pub task_id: String,
    pub worker_id: String,
    /// The lock must expire after this instant.
    pub now: Timestamp,
}

#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    pub state: Option<InstanceState>,
    pub definition_key: Option<String>,
    pub business_key: Option<String>,
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub assignee: Option<String>,
    pub candidate_group: Option<String>,
    pub instance_id: Option<String>,
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Default)]
pub struct ExternalTaskFilter {
    pub instance_id: Option<String>,
    pub topic: Option<String>,
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Default)]
pub struct IncidentFilter {
    pub instance_id: Option<String>,
    /// Only incidents not yet resolved.
    pub open_only: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopicLock {
    pub topic: String,
    pub lock_duration_ms: i64,
}
