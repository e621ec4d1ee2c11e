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

/// A closed set of names stored as text: each variant's text is written once, here, and
/// used by serde (row images, journal, history documents) and by the stores' columns
/// alike, so stored values cannot drift from the code.
///
/// Unknown text is never guessed at: [`parse`](InstanceState::parse) answers `None`, and
/// a store reading such a row reports [`StoreError::Corrupt`](crate::StoreError::Corrupt)
/// (through `decode`); serde refuses it likewise. There is deliberately no catch-all
/// `Other(String)` variant: a new name is a format change, and an older binary reading
/// it reports the row instead of treating it as something it is not.
macro_rules! closed_set {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored text.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }

            /// The variant stored as `s`; `None` for text this binary does not know.
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $( $text => Some($name::$variant), )+
                    _ => None,
                }
            }

            /// [`parse`](Self::parse) for text read from the database: unknown text is
            /// a corrupt row.
            pub fn decode(s: &str) -> crate::Result<Self> {
                Self::parse(s).ok_or_else(|| {
                    crate::StoreError::Corrupt(format!(
                        concat!("unknown ", stringify!($name), " `{}`"),
                        s
                    ))
                })
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub(crate) use closed_set;

closed_set! {
    pub enum InstanceState {
        Active = "active",
        Completed = "completed",
        Cancelled = "cancelled",
        /// Running, but stopped at one or more open incidents.
        Incident = "incident",
    }
}

impl InstanceState {
    pub fn is_ended(self) -> bool {
        matches!(self, InstanceState::Completed | InstanceState::Cancelled)
    }
}

closed_set! {
    /// Why an instance stopped at an incident.
    pub enum IncidentType {
        /// No outgoing flow of an exclusive or inclusive gateway matched.
        NoMatchingFlow = "noMatchingFlow",
        /// A condition or script expression could not be evaluated.
        ExpressionFailed = "expressionFailed",
        /// An external task ran out of retries.
        FailedExternalTask = "failedExternalTask",
        /// A cycle of elements without a wait state ran past the step limit.
        LoopWithoutWaitState = "loopWithoutWaitState",
        /// The instance's stored state cannot be executed (corrupt or mis-restored row).
        CorruptState = "corruptState",
        /// A BPMN error was thrown (error end event, worker's `bpmnError`) and no error
        /// boundary event or error event sub-process around it catches its code.
        UnhandledError = "unhandledError",
    }
}

closed_set! {
    /// What a history record tells.
    pub enum HistoryEvent {
        InstanceStarted = "instanceStarted",
        InstanceCompleted = "instanceCompleted",
        InstanceCancelled = "instanceCancelled",
        ActivityStarted = "activityStarted",
        ActivityCompleted = "activityCompleted",
        /// Interrupted (by a boundary event).
        ActivityCancelled = "activityCancelled",
        VariablesChanged = "variablesChanged",
        IncidentCreated = "incidentCreated",
        IncidentResolved = "incidentResolved",
    }
}

closed_set! {
    /// The kind of row a journal entry images (one per table).
    pub enum JournalEntity {
        Definition = "definition",
        Instance = "instance",
        Task = "task",
        ExternalTask = "externalTask",
        Timer = "timer",
        Incident = "incident",
        /// One change set's history document.
        History = "history",
        /// A user of the API (a plain row: [`crate::users`]).
        User = "user",
        /// An API token (a plain row).
        ApiToken = "apiToken",
        /// The service mode (a plain row: [`crate::mode`]).
        SystemMode = "systemMode",
    }
}

closed_set! {
    /// What happened to a journaled row.
    pub enum JournalOp {
        Insert = "insert",
        Update = "update",
        /// No image (the row is gone).
        Delete = "delete",
        /// A row added to an append-only table (history).
        Append = "append",
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
        RawJson(serde_json::value::RawValue::NULL.to_owned().into())
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
    #[allow(
        clippy::expect_used,
        reason = "a `Value` always serializes: its map keys are strings and its numbers finite"
    )]
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
    pub incident_type: IncidentType,
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
    pub event: HistoryEvent,
    pub activity_id: Option<String>,
    pub detail: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JournalRecord {
    pub seq: i64,
    pub tx_time: Timestamp,
    pub entity: JournalEntity,
    pub entity_id: String,
    pub op: JournalOp,
    /// Full row image after the change (`null` for deletes).
    pub row: Value,
}

/// Everything one engine command changes, committed atomically with its journal rows.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeSet {
    pub instance: InstanceRecord,
    /// When the command happened, on the engine's clock: the time the store writes for
    /// it (journal `tx_time`, the history row's time, `resolved_at` of the incidents it
    /// resolves). A store never reads the system clock itself.
    pub time: Timestamp,
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
    /// Incidents to mark resolved at [`time`](Self::time).
    pub incidents_resolved: Vec<String>,
    pub history: Vec<HistoryRecord>,
}

impl ChangeSet {
    pub fn new(instance: InstanceRecord, expected_version: Option<i64>, time: Timestamp) -> Self {
        ChangeSet {
            prior_state: None,
            lock_guard: None,
            instance,
            time,
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

// ---- listing filters ------------------------------------------------------------------
//
// Every listing is keyset-paged: rows come in the order of a unique key, `after` names
// the key of the last row of the previous page and the listing continues behind it
// (never an OFFSET: a page costs the same on row 1,000,000 as on row 1, and rows
// inserted or removed between pages never make a client skip or repeat a row that was
// there throughout). `limit: None` lists everything.
//
// Instances, tasks, external tasks and incidents are ordered by `id` (their primary
// key; the engine's ids are UUIDv7, so that is creation order), compared bytewise on
// every backend.

/// Definitions, ordered by key, then newest version first.
#[derive(Debug, Clone, Default)]
pub struct DefinitionFilter {
    /// Only versions of this process key.
    pub key: Option<String>,
    /// Continue behind this `(key, version)`.
    pub after: Option<DefinitionPosition>,
    pub limit: Option<usize>,
}

/// Where a definition listing stands: the last `(key, version)` handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionPosition {
    pub key: String,
    pub version: i32,
}

#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    pub state: Option<InstanceState>,
    pub definition_key: Option<String>,
    pub business_key: Option<String>,
    /// Only ids greater than this one.
    pub after: Option<String>,
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub assignee: Option<String>,
    pub candidate_group: Option<String>,
    pub instance_id: Option<String>,
    /// Only ids greater than this one.
    pub after: Option<String>,
    pub limit: Option<usize>,
    /// Only the tasks this viewer may see (see [`TaskViewer`]).
    pub visible_to: Option<TaskViewer>,
}

/// Someone who sees a task when it is assigned to them, names them as a candidate user,
/// or names one of their groups as a candidate group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskViewer {
    pub user: String,
    pub groups: Vec<String>,
}

impl TaskViewer {
    pub fn sees(&self, t: &TaskRecord) -> bool {
        t.assignee.as_deref() == Some(self.user.as_str())
            || t.candidate_users.contains(&self.user)
            || t.candidate_groups.iter().any(|g| self.groups.contains(g))
    }
}

#[derive(Debug, Clone, Default)]
pub struct ExternalTaskFilter {
    pub instance_id: Option<String>,
    pub topic: Option<String>,
    /// Only ids greater than this one.
    pub after: Option<String>,
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Default)]
pub struct IncidentFilter {
    pub instance_id: Option<String>,
    /// `Some(true)`: only incidents not yet resolved; `Some(false)`: only resolved ones.
    pub open: Option<bool>,
    /// Only ids greater than this one.
    pub after: Option<String>,
    pub limit: Option<usize>,
}

/// Where an event stands in its instance's history: event `index` (from 0) of the
/// history row `seq` (one row per command). Histories only grow, so a position never
/// moves: a history page continues behind one (see [`Store::history_page`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HistoryPosition {
    pub seq: i64,
    pub index: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopicLock {
    pub topic: String,
    pub lock_duration_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serde writes exactly the stored text, so row images, journal rows and history
    /// documents keep the values they had when these were strings.
    fn round_trips<T>(all: &[T], as_str: fn(T) -> &'static str, parse: fn(&str) -> Option<T>)
    where
        T: Copy + PartialEq + std::fmt::Debug + Serialize + serde::de::DeserializeOwned,
    {
        for &v in all {
            let text = as_str(v);
            assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{text}\""));
            assert_eq!(
                serde_json::from_str::<T>(&format!("\"{text}\"")).unwrap(),
                v
            );
            assert_eq!(parse(text), Some(v));
        }
        assert_eq!(parse("somethingElse"), None);
        assert!(serde_json::from_str::<T>("\"somethingElse\"").is_err());
    }

    #[test]
    fn closed_sets_round_trip_their_stored_text() {
        round_trips(
            InstanceState::ALL,
            InstanceState::as_str,
            InstanceState::parse,
        );
        round_trips(IncidentType::ALL, IncidentType::as_str, IncidentType::parse);
        round_trips(HistoryEvent::ALL, HistoryEvent::as_str, HistoryEvent::parse);
        round_trips(
            JournalEntity::ALL,
            JournalEntity::as_str,
            JournalEntity::parse,
        );
        round_trips(JournalOp::ALL, JournalOp::as_str, JournalOp::parse);
        assert_eq!(JournalEntity::ExternalTask.as_str(), "externalTask");
        assert_eq!(IncidentType::CorruptState.to_string(), "corruptState");
    }

    #[test]
    fn unknown_stored_text_is_corrupt() {
        match JournalOp::decode("upsert") {
            Err(crate::StoreError::Corrupt(m)) => assert!(m.contains("JournalOp `upsert`"), "{m}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert_eq!(
            HistoryEvent::decode("incidentCreated").unwrap(),
            HistoryEvent::IncidentCreated
        );
    }
}
