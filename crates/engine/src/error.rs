use steadyflow_model::ModelError;
use steadyflow_store::StoreError;
use thiserror::Error;

use crate::core::CoreError;

/// Every way an engine command can fail, one variant per condition a client may want to
/// tell apart. The HTTP edge maps each to a status and a stable code (see
/// `steadyflow-api`'s error table); nobody needs to match on message text.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{what} `{id}` not found")]
    NotFound { what: &'static str, id: String },
    /// The request's input is invalid (empty ids, out-of-range durations ...).
    #[error("{0}")]
    BadRequest(String),
    /// The instance has completed or was cancelled: no command changes it any more.
    #[error("process instance {instance} has already ended")]
    InstanceEnded { instance: String },
    /// The worker holds no valid lock on the external task: its lock expired, or was
    /// released (failure report, unlock, new retries). Fetch the task again.
    #[error(
        "external task {task} is not locked by worker `{worker}`: the lock expired or was released"
    )]
    LockExpired { task: String, worker: String },
    /// Another worker holds the lock on the external task.
    #[error("external task {task} is locked by another worker")]
    LockedByOtherWorker { task: String },
    /// The user task is assigned to someone else. `message` is the store's account
    /// (which names the holder).
    #[error("{message}")]
    TaskAlreadyClaimed { task: String, message: String },
    /// Other changes to the same instance kept winning: the command gave up after its
    /// attempts. Retryable as is.
    #[error("{what} {id} is too busy: gave up after {attempts} attempts; retry")]
    Busy {
        what: &'static str,
        id: String,
        attempts: usize,
    },
    /// The instance's stored state contradicts itself or its definition. The engine
    /// stopped it at a `corruptState` incident; it stays there until repaired.
    #[error(
        "process instance {instance} has corrupt state and was stopped at an incident: {reason}"
    )]
    Corrupt { instance: String, reason: String },
    /// A store precondition failed that the calling operation has no more specific
    /// variant for. Today every `StoreError::Rejected` is mapped by its call (the only
    /// one, `claim_task`, to [`EngineError::TaskAlreadyClaimed`]), so this is only the
    /// fallback for preconditions a store may add later.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(StoreError),
}

impl EngineError {
    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        EngineError::NotFound {
            what,
            id: id.into(),
        }
    }

    /// Whether the same request may succeed when simply sent again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            EngineError::Busy { .. } | EngineError::Store(StoreError::Unavailable(_))
        )
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what, id } => EngineError::NotFound { what, id },
            // Without its call's context a rejection means no more than this; calls
            // that know better (`claim_task`) map it themselves.
            StoreError::Rejected(m) => EngineError::Conflict(m),
            // An optimistic lock lost where no retry loop runs (every command retries
            // inside `Engine::command_on`): as good as busy.
            StoreError::Conflict(id) => EngineError::Busy {
                what: "process instance",
                id,
                attempts: 1,
            },
            other => EngineError::Store(other),
        }
    }
}

impl From<CoreError> for EngineError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Ended(instance) => EngineError::InstanceEnded { instance },
            CoreError::NotWaiting { what, id, .. } => EngineError::NotFound { what, id },
            CoreError::Corrupt { instance, reason } => EngineError::Corrupt { instance, reason },
        }
    }
}
