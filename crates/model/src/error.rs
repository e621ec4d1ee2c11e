use thiserror::Error;

/// Why a BPMN document cannot be deployed.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ModelError {
    /// The document is not well-formed XML.
    #[error("malformed XML at line {line}, column {column}: {message}")]
    Xml {
        line: u32,
        column: u32,
        message: String,
    },
    /// An element (or a feature of it) that Steadyflow cannot execute yet.
    #[error("element `{element}` with id `{id}` is not supported yet: {reason}")]
    Unsupported {
        element: String,
        id: String,
        reason: String,
    },
    /// The model is structurally invalid (dangling reference, missing start event, bad expression ...).
    #[error("invalid model at `{id}`: {message}")]
    Invalid { id: String, message: String },
}

impl ModelError {
    pub(crate) fn unsupported(element: &str, id: &str, reason: impl Into<String>) -> Self {
        ModelError::Unsupported {
            element: element.to_string(),
            id: id.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(id: &str, message: impl Into<String>) -> Self {
        ModelError::Invalid {
            id: id.to_string(),
            message: message.into(),
        }
    }
}
