//! The API's JSON shapes (camelCase, ids as strings, timestamps RFC 3339) and their
//! conversions from the store's records. Kept apart from the records so the wire format
//! does not change when storage does.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use steadyflow_engine::DeployedDefinition as EngineDeployed;
use steadyflow_engine::core::Runtime;
use steadyflow_store::{
    DefinitionRecord, ExternalTaskRecord, HistoryRecord, IncidentRecord, InstanceRecord,
    InstanceState, LockedTask, TaskRecord, Vars,
};
use utoipa::ToSchema;

/// Timestamps leave the API with millisecond precision, whether they come from the
/// store (which keeps milliseconds) or fresh from a command (which may carry nanoseconds),
/// so the same instant always reads the same.
fn ms(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(3)
}

// ---- constrained values -----------------------------------------------------------

/// Upper bound of lock durations and retry timeouts in milliseconds (30 days), as the
/// engine enforces it; stated as a literal in the schema attributes below.
pub const MAX_DURATION_MS: i64 = 30 * 24 * 3_600_000;

/// One character that is not white space (Unicode `White_Space`, as Rust's
/// `char::is_whitespace` and the engine's checks see it): the `pattern` of user and
/// worker ids.
pub const NOT_BLANK_PATTERN: &str =
    r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";

/// The schema of a user or worker id: not empty, not only white space.
fn not_blank() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .min_length(Some(1))
        .pattern(Some(NOT_BLANK_PATTERN))
        .description(Some("Not empty, and not only white space."))
        .build()
}

/// `400 bad_request` when `value` (the field `field`) is empty or only white space, as
/// [`not_blank`] states in the schema.
pub(crate) fn check_not_blank(field: &str, value: &str) -> Result<(), crate::ApiError> {
    if value.trim().is_empty() {
        return Err(crate::ApiError::bad_request(format!(
            "{field} must not be empty or blank"
        )));
    }
    Ok(())
}

/// An integer field: JSON Schema's `integer` is any number without a fractional part,
/// so `5.0` and `5e3` are integers too (serde alone takes only `5`). Out of the target
/// type's range is an error (`400 invalid_json`).
pub(crate) fn integral<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    let n = serde_json::Number::deserialize(d)?;
    n.as_i64()
        .or_else(|| {
            // Exactly representable integers only (|v| < 2^53 is exact, and that is
            // far beyond every range these fields allow).
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0)
                .map(|f| f as i64)
        })
        .and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| serde::de::Error::custom(format!("{n} is not an integer in range")))
}

/// `null` as the type's default (an absent field's value).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

// ---- pages -------------------------------------------------------------------------

/// Declares the page type of a list endpoint: `{"items": [...], "nextCursor": ...}`.
macro_rules! page {
    ($(#[$doc:meta])* $page:ident of $item:ty) => {
        $(#[$doc])*
        ///
        /// Pass `nextCursor` as `after` to get the next page; it is `null` on the last
        /// page. Pages follow a fixed order by a unique key, so a client walking every
        /// page sees each item that exists throughout exactly once, even while items are
        /// added or removed between pages.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "camelCase")]
        pub struct $page {
            pub items: Vec<$item>,
            /// Opaque; `null` when this is the last page.
            #[schema(required = true, min_length = 1)]
            pub next_cursor: Option<String>,
        }
    };
}

page!(
    /// A page of process definitions: by key, newest version first per key.
    ProcessDefinitionPage of ProcessDefinition
);
page!(
    /// A page of process instances, in id order (creation order).
    ProcessInstancePage of ProcessInstance
);
page!(
    /// A page of an instance's history, oldest first.
    HistoryPage of HistoryEvent
);
page!(
    /// A page of open user tasks, in id order (creation order).
    TaskPage of Task
);
page!(
    /// A page of external tasks, in id order (creation order).
    ExternalTaskPage of ExternalTask
);
page!(
    /// A page of incidents, in id order (creation order).
    IncidentPage of Incident
);
page!(
    /// A page of recovery points, newest first (by creation time, then id).
    BackupPage of crate::backups::RecoveryPoint
);

// ---- definitions -------------------------------------------------------------------

/// A deployed version of a process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessDefinition {
    /// `<key>:<version>`.
    pub id: String,
    /// The `<process id>` of the BPMN file.
    pub key: String,
    pub version: i32,
    pub name: Option<String>,
    pub deployed_at: DateTime<Utc>,
}

impl From<DefinitionRecord> for ProcessDefinition {
    fn from(r: DefinitionRecord) -> Self {
        ProcessDefinition {
            id: r.id,
            key: r.key,
            version: r.version,
            name: r.name,
            deployed_at: ms(r.deployed_at),
        }
    }
}

/// One process of a deployed file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployedDefinition {
    pub id: String,
    pub key: String,
    pub version: i32,
    pub name: Option<String>,
    pub deployed_at: DateTime<Utc>,
    /// False when this exact process was already deployed (its existing version is returned).
    pub created: bool,
}

impl From<EngineDeployed> for DeployedDefinition {
    fn from(d: EngineDeployed) -> Self {
        let r = d.record;
        DeployedDefinition {
            id: r.id,
            key: r.key,
            version: r.version,
            name: r.name,
            deployed_at: ms(r.deployed_at),
            created: d.created,
        }
    }
}

/// The result of a deployment: the top-level fields describe the first process of the
/// file, `definitions` lists every process in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub id: String,
    pub key: String,
    pub version: i32,
    pub name: Option<String>,
    pub deployed_at: DateTime<Utc>,
    /// False when nothing in the file changed.
    pub created: bool,
    pub definitions: Vec<DeployedDefinition>,
}

impl Deployment {
    /// `None` for an empty list (the engine never deploys nothing).
    pub fn from_deployed(deployed: Vec<EngineDeployed>) -> Option<Self> {
        let definitions: Vec<DeployedDefinition> = deployed.into_iter().map(Into::into).collect();
        let first = definitions.first()?.clone();
        Some(Deployment {
            id: first.id,
            key: first.key,
            version: first.version,
            name: first.name,
            deployed_at: first.deployed_at,
            created: definitions.iter().any(|d| d.created),
            definitions,
        })
    }
}

// ---- instances ---------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProcessInstanceState {
    Active,
    Completed,
    Cancelled,
    /// Running, but stopped at one or more open incidents.
    Incident,
}

impl From<InstanceState> for ProcessInstanceState {
    fn from(s: InstanceState) -> Self {
        match s {
            InstanceState::Active => ProcessInstanceState::Active,
            InstanceState::Completed => ProcessInstanceState::Completed,
            InstanceState::Cancelled => ProcessInstanceState::Cancelled,
            InstanceState::Incident => ProcessInstanceState::Incident,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessInstance {
    pub id: String,
    pub definition_id: String,
    pub definition_key: String,
    pub business_key: Option<String>,
    pub state: ProcessInstanceState,
    #[schema(value_type = Object)]
    pub variables: Vars,
    /// Element ids where tokens stand (sorted, deduplicated); empty once ended, and
    /// when the stored runtime cannot be read (corrupt state: the instance is stopped at
    /// a `corruptState` incident as soon as a command meets it).
    pub active_activity_ids: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// Infallible: one instance with an unreadable runtime must not fail a whole listing.
impl From<InstanceRecord> for ProcessInstance {
    fn from(r: InstanceRecord) -> Self {
        let active_activity_ids = match Runtime::from_json(&r.runtime) {
            Ok(runtime) => runtime.active_activity_ids(),
            Err(e) => {
                tracing::warn!(instance = %r.id, error = %e, "unreadable instance runtime");
                Vec::new()
            }
        };
        ProcessInstance {
            active_activity_ids,
            id: r.id,
            definition_id: r.definition_id,
            definition_key: r.definition_key,
            business_key: r.business_key,
            state: r.state.into(),
            variables: r.variables,
            started_at: ms(r.started_at),
            ended_at: r.ended_at.map(ms),
        }
    }
}

/// One entry of an instance's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEvent {
    pub time: DateTime<Utc>,
    /// `instanceStarted`, `activityStarted`, `activityCompleted`, `variablesChanged`,
    /// `incidentCreated`, `instanceCompleted`, `instanceCancelled` ...
    pub event: String,
    pub activity_id: Option<String>,
    /// What the event carries (variables changed, incident message ...); `null` when
    /// nothing.
    #[schema(value_type = Option<Object>, required = true)]
    pub detail: serde_json::Value,
}

impl From<HistoryRecord> for HistoryEvent {
    fn from(r: HistoryRecord) -> Self {
        HistoryEvent {
            time: ms(r.time),
            event: r.event.as_str().to_string(),
            activity_id: r.activity_id,
            detail: r.detail,
        }
    }
}

/// Body of the start endpoints; may be left out entirely.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartInstance {
    /// Absent or `null`: none.
    #[serde(default, deserialize_with = "null_as_default")]
    #[schema(value_type = Option<Object>)]
    pub variables: Vars,
    #[serde(default)]
    pub business_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetVariables {
    /// Merged into the instance's variables.
    #[schema(value_type = Object)]
    pub variables: Vars,
}

// ---- user tasks --------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub id: String,
    pub name: Option<String>,
    /// The userTask element id.
    pub task_definition_key: String,
    pub process_instance_id: String,
    pub process_definition_id: String,
    pub assignee: Option<String>,
    pub candidate_users: Vec<String>,
    pub candidate_groups: Vec<String>,
    pub created: DateTime<Utc>,
}

impl From<TaskRecord> for Task {
    fn from(r: TaskRecord) -> Self {
        Task {
            id: r.id,
            name: r.name,
            task_definition_key: r.activity_id,
            process_instance_id: r.instance_id,
            process_definition_id: r.definition_id,
            assignee: r.assignee,
            candidate_users: r.candidate_users,
            candidate_groups: r.candidate_groups,
            created: ms(r.created_at),
        }
    }
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimTask {
    #[schema(schema_with = not_blank)]
    pub user_id: String,
}

/// Body of task completion; may be left out entirely.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompleteTask {
    /// Absent or `null`: none.
    #[serde(default, deserialize_with = "null_as_default")]
    #[schema(value_type = Option<Object>)]
    pub variables: Vars,
}

// ---- external tasks ----------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalTask {
    pub id: String,
    pub topic_name: String,
    pub activity_id: String,
    pub process_instance_id: String,
    pub process_definition_id: String,
    pub worker_id: Option<String>,
    pub lock_expiration_time: Option<DateTime<Utc>>,
    /// `null` until a worker reports a failure; 0 means an incident holds the task.
    pub retries: Option<i32>,
    pub error_message: Option<String>,
    /// The instance's variables; only filled by fetch-and-lock, otherwise `null`.
    #[schema(value_type = Option<Object>)]
    pub variables: Option<Vars>,
}

impl From<ExternalTaskRecord> for ExternalTask {
    fn from(r: ExternalTaskRecord) -> Self {
        ExternalTask {
            id: r.id,
            topic_name: r.topic,
            activity_id: r.activity_id,
            process_instance_id: r.instance_id,
            process_definition_id: r.definition_id,
            worker_id: r.worker_id,
            lock_expiration_time: r.lock_expires_at.map(ms),
            retries: r.retries,
            error_message: r.error_message,
            variables: None,
        }
    }
}

impl From<LockedTask> for ExternalTask {
    fn from(l: LockedTask) -> Self {
        ExternalTask {
            variables: Some(l.variables),
            ..l.task.into()
        }
    }
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FetchTopic {
    pub topic_name: String,
    /// How long the lock holds, in milliseconds: 1 to 30 days.
    #[serde(deserialize_with = "integral")]
    #[schema(minimum = 1, maximum = 2592000000i64)]
    pub lock_duration: i64,
}

/// The largest `maxTasks` of one fetch-and-lock.
pub const MAX_FETCH: u32 = 1000;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FetchAndLock {
    #[schema(schema_with = not_blank)]
    pub worker_id: String,
    /// At most this many tasks, 0 to 1000.
    #[serde(deserialize_with = "integral")]
    #[schema(minimum = 0, maximum = 1000)]
    pub max_tasks: u32,
    pub topics: Vec<FetchTopic>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompleteExternalTask {
    #[schema(schema_with = not_blank)]
    pub worker_id: String,
    /// Absent or `null`: none.
    #[serde(default, deserialize_with = "null_as_default")]
    #[schema(value_type = Option<Object>)]
    pub variables: Vars,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalTaskFailure {
    #[schema(schema_with = not_blank)]
    pub worker_id: String,
    #[serde(default)]
    pub error_message: String,
    /// Retries left; 0 raises an incident on the instance.
    #[serde(deserialize_with = "integral")]
    #[schema(minimum = 0)]
    pub retries: i32,
    /// Milliseconds before the task can be fetched again: 0 to 30 days.
    #[serde(default, deserialize_with = "integral")]
    #[schema(minimum = 0, maximum = 2592000000i64)]
    pub retry_timeout: i64,
}

/// A BPMN error reported by a worker (Camunda 7's `handleBpmnError`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalTaskBpmnError {
    #[schema(schema_with = not_blank)]
    pub worker_id: String,
    /// The error code, matched against the `errorCode` of error boundary events and
    /// error event sub-processes (those without one catch every code).
    #[schema(schema_with = not_blank)]
    pub error_code: String,
    /// Shown in the incident when nothing catches the error.
    #[serde(default)]
    pub error_message: Option<String>,
    /// Set on the instance before the error is thrown. Absent or `null`: none.
    #[serde(default, deserialize_with = "null_as_default")]
    #[schema(value_type = Option<Object>)]
    pub variables: Vars,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetRetries {
    /// Above 0 resolves the task's incident.
    #[serde(deserialize_with = "integral")]
    #[schema(minimum = 0)]
    pub retries: i32,
}

// ---- incidents ---------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Incident {
    pub id: String,
    pub process_instance_id: String,
    pub activity_id: String,
    /// `noMatchingFlow`, `expressionFailed`, `failedExternalTask`, `loopWithoutWaitState`,
    /// `corruptState`, `unhandledError` (a BPMN error nothing catches).
    pub incident_type: String,
    pub message: String,
    pub external_task_id: Option<String>,
    pub created: DateTime<Utc>,
    /// When it was resolved; `null` while open.
    pub resolved: Option<DateTime<Utc>>,
}

impl From<IncidentRecord> for Incident {
    fn from(r: IncidentRecord) -> Self {
        Incident {
            id: r.id,
            process_instance_id: r.instance_id,
            activity_id: r.activity_id,
            incident_type: r.incident_type.as_str().to_string(),
            message: r.message,
            external_task_id: r.external_task_id,
            created: ms(r.created_at),
            resolved: r.resolved_at.map(ms),
        }
    }
}
