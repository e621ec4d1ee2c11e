//! The one place where failures become HTTP responses.
//!
//! Every error leaves the API as `{"error":{"code":"...","message":"...","details":{...}}}`
//! with a stable `code` clients can match on: one code per condition, listed with its
//! HTTP status and meaning in one table ([`error_codes!`] below). Responses, the OpenAPI
//! document (the `code` field's schema) and the README's list come from that table.
//! Database failures are logged here and reach the client only as a generic message.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use steadyflow_engine::EngineError;
use steadyflow_model::ModelError;
use steadyflow_store::StoreError;
use utoipa::ToSchema;
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};

/// Declares [`Code`]: one line per error code, `Variant => "code", STATUS, "meaning";`.
macro_rules! error_codes {
    ($($variant:ident => $code:literal, $status:ident, $meaning:literal;)*) => {
        /// Every error code the API answers with.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($variant,)*
        }

        impl Code {
            /// Every code, in table order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The stable `error.code` string.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $code,)*
                }
            }

            pub const fn status(self) -> StatusCode {
                match self {
                    $(Code::$variant => StatusCode::$status,)*
                }
            }

            /// What the code means, for the documentation.
            pub const fn meaning(self) -> &'static str {
                match self {
                    $(Code::$variant => $meaning,)*
                }
            }
        }
    };
}

error_codes! {
    BpmnMalformed => "bpmn_malformed", BAD_REQUEST, "The BPMN XML is not well-formed; `details` has `line` and `column`.";
    BpmnUnsupported => "bpmn_unsupported", BAD_REQUEST, "The BPMN uses an element Steadyflow does not execute; `details` has `element` and `id`.";
    BpmnInvalid => "bpmn_invalid", BAD_REQUEST, "The BPMN is well-formed but not executable (dangling flow, no start event ...); `details` has `id`.";
    InvalidJson => "invalid_json", BAD_REQUEST, "The body is not JSON of the expected shape, or lacks `Content-Type: application/json`.";
    BadRequest => "bad_request", BAD_REQUEST, "A parameter or field has a value the operation does not accept.";
    Unauthorized => "unauthorized", UNAUTHORIZED, "The caller did not prove who they are.";
    Forbidden => "forbidden", FORBIDDEN, "The caller is known but may not do this.";
    TooManyRequests => "too_many_requests", TOO_MANY_REQUESTS, "Too many failed log-ins for this user or address; retry after `Retry-After` seconds.";
    AlreadyExists => "already_exists", CONFLICT, "A user with that name exists already.";
    NotFound => "not_found", NOT_FOUND, "No such route, or the named definition, instance, task, external task or incident does not exist (any more).";
    MethodNotAllowed => "method_not_allowed", METHOD_NOT_ALLOWED, "The route exists, but not with this method.";
    InstanceEnded => "instance_ended", CONFLICT, "The process instance has completed or was cancelled; nothing changes it any more.";
    LockExpired => "lock_expired", CONFLICT, "The worker holds no valid lock on the external task: it expired or was released. Fetch and lock it again.";
    LockedByOtherWorker => "locked_by_other_worker", CONFLICT, "Another worker holds the lock on the external task.";
    TaskAlreadyClaimed => "task_already_claimed", CONFLICT, "The user task is assigned to another user.";
    BackupRunning => "backup_running", CONFLICT, "A backup started through the API, or the scheduled one of the same kind, is still running; `details` has the API run's `id` when it is one.";
    IdempotencyKeyInUse => "idempotency_key_in_use", CONFLICT, "Another request with this `Idempotency-Key` is still running; retry after `Retry-After` seconds to get its answer.";
    IdempotencyKeyReused => "idempotency_key_reused", UNPROCESSABLE_ENTITY, "This `Idempotency-Key` was used for a different request (method, path or body).";
    Conflict => "conflict", CONFLICT, "Another precondition failed (fallback; no operation answers it today).";
    PayloadTooLarge => "payload_too_large", PAYLOAD_TOO_LARGE, "The request body exceeds the size limit.";
    Internal => "internal", INTERNAL_SERVER_ERROR, "An unexpected server-side failure; the cause is in the server log.";
    CorruptState => "corrupt_state", INTERNAL_SERVER_ERROR, "The process instance's stored state is corrupt; it was stopped at a `corruptState` incident until repaired.";
    Unavailable => "unavailable", SERVICE_UNAVAILABLE, "The database is unavailable; retry later.";
    BackupsNotConfigured => "backups_not_configured", SERVICE_UNAVAILABLE, "This node has no backup targets (`backup.targets`), so it neither takes nor lists backups.";
    Busy => "busy", SERVICE_UNAVAILABLE, "Concurrent changes to the same instance kept winning; retry after `Retry-After` seconds.";
    ReadOnly => "read_only", SERVICE_UNAVAILABLE, "The service is in `read-only` mode: reads work, writes do not; `message` says why, `Retry-After` when to try again, `details` has `mode` and `until`.";
    CoreOnly => "core_only", SERVICE_UNAVAILABLE, "The service is in `core-only` mode: instances, tasks and external tasks work, deployments and listings past their first page do not; `details` has `mode` and `until`.";
    Offline => "offline", SERVICE_UNAVAILABLE, "The service is `offline`: `message` says why, `Retry-After` when to try again, `details` has `mode` and `until`.";
}

impl Code {
    /// The table as Markdown (`code`, status, meaning), for documentation.
    pub fn markdown_table() -> String {
        let mut out = String::from("| code | status | meaning |\n|---|---|---|\n");
        for c in Code::ALL {
            out.push_str(&format!(
                "| `{}` | {} | {} |\n",
                c.as_str(),
                c.status().as_u16(),
                c.meaning()
            ));
        }
        out
    }
}

/// Seconds a client should wait before retrying a `busy` request.
const BUSY_RETRY_AFTER_SECS: u32 = 1;

/// What a client sees of a failure: a status, a stable code, a message and optional
/// structured details.
#[derive(Debug, Clone)]
pub struct ApiError {
    code: Code,
    message: String,
    details: Option<Value>,
    /// Sent as `Retry-After` (seconds).
    retry_after: Option<u32>,
    /// Sent as `WWW-Authenticate` (with 401).
    challenge: Option<&'static str>,
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable code (see the table in the schema).
    #[schema(schema_with = code_schema)]
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// Structured context (line/column of malformed XML, offending element id ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}

/// The `code` field's schema: every code of the table, each with its status and meaning.
fn code_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(Code::ALL.iter().map(|c| c.as_str())))
        .description(Some(format!(
            "Stable, machine-readable code:\n\n{}",
            Code::markdown_table()
        )))
        .build()
}

const INTERNAL_MESSAGE: &str = "internal error; see the server log";

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            details: None,
            retry_after: None,
            challenge: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Sends `Retry-After` (seconds, at least 1) with the error.
    pub fn with_retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Code::BadRequest, message)
    }

    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidJson, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    /// 401: the caller did not prove who they are (no credentials at all).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        let mut e = Self::new(Code::Unauthorized, message);
        e.challenge = Some(r#"Bearer realm="steadyflow""#);
        e
    }

    /// 401: the credentials presented are malformed, unknown, expired or revoked
    /// (RFC 6750's `invalid_token`).
    pub fn invalid_token(message: impl Into<String>) -> Self {
        let mut e = Self::new(Code::Unauthorized, message);
        e.challenge = Some(r#"Bearer realm="steadyflow", error="invalid_token""#);
        e
    }

    /// 429 with `Retry-After`.
    pub fn too_many_requests(message: impl Into<String>, retry_after_secs: u32) -> Self {
        let mut e = Self::new(Code::TooManyRequests, message);
        e.retry_after = Some(retry_after_secs.max(1));
        e
    }

    /// 403: the caller is known but may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Code::Forbidden, message)
    }

    /// 503 with a generic message; the cause belongs in the log, not the response.
    pub fn unavailable() -> Self {
        Self::new(
            Code::Unavailable,
            "the database is unavailable; retry later",
        )
    }

    /// 500 with a generic message; log the cause before calling this.
    pub fn internal() -> Self {
        Self::new(Code::Internal, INTERNAL_MESSAGE)
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    pub fn code(&self) -> &'static str {
        self.code.as_str()
    }

    pub fn kind(&self) -> Code {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn details(&self) -> Option<&Value> {
        self.details.as_ref()
    }

    /// Seconds after which the same request may succeed (`Retry-After`), if it may.
    pub fn retry_after(&self) -> Option<u32> {
        self.retry_after
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status().as_u16(),
            self.code(),
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = self.retry_after;
        let challenge = self.challenge;
        let body = ErrorResponse {
            error: ErrorBody {
                code: self.code.as_str().to_string(),
                message: self.message,
                details: self.details,
            },
        };
        let mut response = (status, Json(body)).into_response();
        // Which condition it was, for the layers outside the handler (the outage
        // grace retries `unavailable`).
        response.extensions_mut().insert(self.code);
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(c) = challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        response
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        let message = e.to_string();
        match e {
            ModelError::Xml { line, column, .. } => Self::new(Code::BpmnMalformed, message)
                .with_details(json!({ "line": line, "column": column })),
            ModelError::Unsupported { element, id, .. } => {
                Self::new(Code::BpmnUnsupported, message)
                    .with_details(json!({ "element": element, "id": id }))
            }
            ModelError::Invalid { id, .. } => {
                Self::new(Code::BpmnInvalid, message).with_details(json!({ "id": id }))
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => Self::not_found(e.to_string()),
            // Without an engine call's context (engine errors map these themselves).
            StoreError::Rejected(m) => Self::new(Code::Conflict, m),
            StoreError::Conflict(_) => busy(format!("{e}; retry")),
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

fn busy(message: String) -> ApiError {
    let mut e = ApiError::new(Code::Busy, message);
    e.retry_after = Some(BUSY_RETRY_AFTER_SECS);
    e
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            EngineError::Model(m) => m.into(),
            EngineError::Store(s) => s.into(),
            EngineError::NotFound { .. } => Self::not_found(message),
            EngineError::BadRequest(_) => Self::bad_request(message),
            EngineError::InstanceEnded { .. } => Self::new(Code::InstanceEnded, message),
            EngineError::LockExpired { .. } => Self::new(Code::LockExpired, message),
            EngineError::LockedByOtherWorker { .. } => {
                Self::new(Code::LockedByOtherWorker, message)
            }
            EngineError::TaskAlreadyClaimed { .. } => Self::new(Code::TaskAlreadyClaimed, message),
            EngineError::Busy { .. } => busy(message),
            EngineError::Corrupt { instance, reason } => {
                tracing::error!(%instance, %reason, "command on an instance with corrupt state");
                Self::new(Code::CorruptState, message)
            }
            EngineError::Conflict(_) => Self::new(Code::Conflict, message),
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
                EngineError::InstanceEnded {
                    instance: "i1".into(),
                },
                StatusCode::CONFLICT,
                "instance_ended",
            ),
            (
                EngineError::LockExpired {
                    task: "t1".into(),
                    worker: "w1".into(),
                },
                StatusCode::CONFLICT,
                "lock_expired",
            ),
            (
                EngineError::LockedByOtherWorker { task: "t1".into() },
                StatusCode::CONFLICT,
                "locked_by_other_worker",
            ),
            (
                EngineError::TaskAlreadyClaimed {
                    task: "t1".into(),
                    message: "task t1 is already claimed by bob".into(),
                },
                StatusCode::CONFLICT,
                "task_already_claimed",
            ),
            (
                EngineError::Busy {
                    what: "process instance",
                    id: "i1".into(),
                    attempts: 8,
                },
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
            ),
            (
                EngineError::Corrupt {
                    instance: "i1".into(),
                    reason: "token 1 stands at `ghost`".into(),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                "corrupt_state",
            ),
            (
                EngineError::BadRequest("x".into()),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
        ];
        for (err, status, code) in cases {
            let retryable = err.is_retryable();
            let e = ApiError::from(err);
            assert_eq!((e.status(), e.code()), (status, code));
            assert_eq!(e.retry_after().is_some(), retryable && code == "busy");
        }
    }

    #[test]
    fn the_code_table_is_consistent() {
        let mut seen = std::collections::HashSet::new();
        for c in Code::ALL {
            assert!(seen.insert(c.as_str()), "{} twice", c.as_str());
            assert!(
                c.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{} is not snake_case",
                c.as_str()
            );
            assert!(c.status().is_client_error() || c.status().is_server_error());
            assert!(c.meaning().ends_with('.'), "{}", c.as_str());
        }
        let table = Code::markdown_table();
        assert!(table.contains("| `busy` | 503 |"), "{table}");
        assert!(table.contains("| `lock_expired` | 409 |"), "{table}");
    }

    #[test]
    fn busy_answers_with_retry_after() {
        let busy = ApiError::from(EngineError::Busy {
            what: "external task",
            id: "t1".into(),
            attempts: 8,
        });
        let response = busy.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let other = ApiError::from(EngineError::LockedByOtherWorker { task: "t1".into() });
        assert!(
            other
                .into_response()
                .headers()
                .get(header::RETRY_AFTER)
                .is_none()
        );
    }
}
