//! The one place where failures become HTTP responses.
//!
//! Every error leaves the API as `{"error":{"code":"...","message":"...","details":{...}}}`
//! with a stable `code` clients can match on. Database failures are logged here and
//! reach the client only as a generic message.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use steadyflow_engine::EngineError;
use steadyflow_model::ModelError;
use steadyflow_store::StoreError;
use utoipa::ToSchema;

/// What a client sees of a failure: a status, a stable code, a message and optional
/// structured details.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Option<Value>,
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable code, e.g. `not_found`, `conflict`, `bpmn_unsupported`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// Structured context (line/column of malformed XML, offending element id ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}

const INTERNAL_MESSAGE: &str = "internal error; see the server log";

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 401: the caller did not prove who they are.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: the caller is known but may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 503 with a generic message; the cause belongs in the log, not the response.
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the database is unavailable; retry later",
        )
    }

    /// 500 with a generic message; log the cause before calling this.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            INTERNAL_MESSAGE,
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn details(&self) -> Option<&Value> {
        self.details.as_ref()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorResponse {
            error: ErrorBody {
                code: self.code.to_string(),
                message: self.message,
                details: self.details,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        let message = e.to_string();
        match e {
            ModelError::Xml { line, column, .. } => {
                Self::new(StatusCode::BAD_REQUEST, "bpmn_malformed", message)
                    .with_details(json!({ "line": line, "column": column }))
            }
            ModelError::Unsupported { element, id, .. } => {
                Self::new(StatusCode::BAD_REQUEST, "bpmn_unsupported", message)
                    .with_details(json!({ "element": element, "id": id }))
            }
            ModelError::Invalid { id, .. } => {
                Self::new(StatusCode::BAD_REQUEST, "bpmn_invalid", message)
                    .with_details(json!({ "id": id }))
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => Self::not_found(e.to_string()),
            StoreError::Rejected(m) => Self::conflict(m),
            StoreError::Conflict(_) => Self::conflict(format!("{e}; retry")),
            StoreError::Unavailable(cause) => {
                tracing::error!(%cause, "database unavailable");
                Self::unavailable()
            }
            StoreError::Backend(_) | StoreError::Corrupt(_) => {
                tracing::error!(error = %e, "store error");
                Self::internal()
            }
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Model(m) => m.into(),
            EngineError::NotFound { .. } => Self::not_found(e.to_string()),
            EngineError::Conflict(m) => Self::conflict(m),
            EngineError::BadRequest(m) => Self::bad_request(m),
            EngineError::Store(s) => s.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_messages_never_reach_the_client() {
        let e: ApiError =
            EngineError::Store(StoreError::Backend("secret driver text".into())).into();
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.code(), "internal");
        assert!(!e.message().contains("secret"));

        let e: ApiError =
            EngineError::Store(StoreError::Unavailable("10.0.0.7 refused".into())).into();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!e.message().contains("10.0.0.7"));
    }

    #[test]
    fn model_errors_carry_their_position_and_element() {
        let e: ApiError = EngineError::Model(ModelError::Xml {
            line: 3,
            column: 7,
            message: "unexpected end".into(),
        })
        .into();
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::BAD_REQUEST, "bpmn_malformed")
        );
        assert_eq!(e.details(), Some(&json!({"line": 3, "column": 7})));

        let e: ApiError = EngineError::Model(ModelError::Unsupported {
            element: "scriptTask".into(),
            id: "s1".into(),
            reason: "no scripts".into(),
        })
        .into();
        assert_eq!(e.code(), "bpmn_unsupported");
        assert!(e.message().contains("`scriptTask`") && e.message().contains("`s1`"));
        assert_eq!(
            e.details(),
            Some(&json!({"element": "scriptTask", "id": "s1"}))
        );

        let e: ApiError = EngineError::Model(ModelError::Invalid {
            id: "f1".into(),
            message: "dangling".into(),
        })
        .into();
        assert_eq!(e.code(), "bpmn_invalid");
        assert_eq!(e.details(), Some(&json!({"id": "f1"})));
    }

    #[test]
    fn engine_outcomes_map_to_statuses() {
        let cases = [
            (
                EngineError::not_found("task", "t1"),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                EngineError::Conflict("x".into()),
                StatusCode::CONFLICT,
                "conflict",
            ),
            (
                EngineError::BadRequest("x".into()),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
        ];
        for (err, status, code) in cases {
            let e = ApiError::from(err);
            assert_eq!((e.status(), e.code()), (status, code));
        }
    }
}
