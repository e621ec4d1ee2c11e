use steadyflow_model::ModelError;
use steadyflow_store::StoreError;
use thiserror::Error;

/// Every way an engine command can fail. The HTTP edge maps each to a status and a
/// stable code (see `steadyflow-api`).
#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{what} `{id}` not found")]
    NotFound { what: &'static str, id: String },
    /// The request contradicts current state (lock held by another worker, task claimed by
    /// someone else, instance already ended ...).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
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
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what, id } => EngineError::NotFound { what, id },
            StoreError::Rejected(m) => EngineError::Conflict(m),
            StoreError::Conflict(id) => EngineError::Conflict(format!(
                "instance {id} is being changed concurrently; retry"
            )),
            other => EngineError::Store(other),
        }
    }
}
