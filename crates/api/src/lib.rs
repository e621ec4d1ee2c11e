//! Steadyflow's HTTP edge: axum routes over the [`Engine`], their OpenAPI document, and
//! the mapping of every failure to a JSON error with a stable code.
//!
//! * [`router`] builds the whole service: the probes (`/health`, `/ready`), `/metrics`,
//!   and everything under `/api/v1`; every request gets a request id, a tracing span and
//!   its HTTP series ([`observe`], [`metrics`]).
//! * [`openapi`] is the document of exactly those routes (it is built from the same
//!   route table, and served at `/api/v1/openapi.json`).
//! * [`Authenticator`] is the seam for authentication; every `/api/v1` request passes it.
//! * [`ApiError`] is the only error type handlers return.
//!
//! Handlers never touch a database: they call [`Engine`] and convert its records to the
//! JSON shapes in [`model`].

use std::sync::Arc;

use axum::Extension;
use axum::http::{Method, Uri};
use axum::middleware;
use steadyflow_engine::Engine;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

pub mod access;
pub mod accounts;
mod auth;
pub mod backups;
mod error;
pub mod grace;
pub mod idempotency;
mod json;
pub mod metrics;
pub mod model;
pub mod modes;
pub mod observe;
mod params;
mod routes;
pub mod spool;
pub mod status_page;

pub use auth::{AllowAll, Authenticator, BOOTSTRAP_ADMIN, Principal, TokenAuth, bearer};
pub use error::{ApiError, Code, ErrorBody, ErrorResponse};
pub use json::{Json, JsonOrEmpty};
pub use observe::{Observability, ObservabilityOptions, Probe, RequestId};

/// What every handler can reach: an [`AppContext`] behind one `Arc`. Every middleware
/// layer and handler clones the state for each request; one reference count instead of
/// one per shared part measured 4 % of the server's CPU under `wrk` (2 cores).
#[derive(Clone)]
pub struct AppState(Arc<AppContext>);

/// The parts of [`AppState`].
pub struct AppContext {
    pub engine: Arc<Engine>,
    pub auth: Arc<dyn Authenticator>,
    /// Service modes, idempotency keys, the offline spool ([`Degraded::default`]:
    /// `normal` for good, keys in memory).
    pub degraded: Degraded,
    /// Backups (`/api/v1/backups`, the `backup` component of `/health`); `None`: the
    /// backup routes answer `503 backups_not_configured`.
    pub backups: Option<Arc<dyn backups::Backups>>,
}

impl From<AppContext> for AppState {
    fn from(parts: AppContext) -> Self {
        AppState(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppContext;

    fn deref(&self) -> &AppContext {
        &self.0
    }
}

/// What keeps the API answering through outages and maintenance: this node's service
/// mode ([`modes`]) and where `Idempotency-Key`s are kept ([`idempotency`]).
#[derive(Clone)]
pub struct Degraded {
    pub modes: modes::Modes,
    pub keys: Arc<dyn steadyflow_store::idempotency::IdempotencyStore>,
    /// Where writes go while `offline` ([`spool`]); `None`: they answer 503 `offline`.
    pub spool: Option<spool::Spool>,
    /// How long a request retries through a database outage ([`grace`]); zero: never.
    pub grace: std::time::Duration,
    /// What workers may take at once while the mode is `core-only`.
    pub core_only: CoreOnlyCaps,
}

/// `core-only` keeps the engine's essential work going at a bounded pace: a
/// fetch-and-lock takes at most `fetch_max_tasks` tasks, and at most
/// `fetch_concurrency` fetch-and-lock requests run at once (more answer 503 `core_only`
/// with `Retry-After`). The timer driver's cap is the server's (`modes.core_only_timer_batch`).
#[derive(Clone, Debug)]
pub struct CoreOnlyCaps {
    pub fetch_max_tasks: u32,
    pub fetch_slots: Arc<tokio::sync::Semaphore>,
    pub fetch_concurrency: usize,
}

impl CoreOnlyCaps {
    pub fn new(fetch_max_tasks: u32, fetch_concurrency: usize) -> CoreOnlyCaps {
        let fetch_concurrency = fetch_concurrency.max(1);
        CoreOnlyCaps {
            fetch_max_tasks: fetch_max_tasks.max(1),
            fetch_slots: Arc::new(tokio::sync::Semaphore::new(fetch_concurrency)),
            fetch_concurrency,
        }
    }
}

impl Default for CoreOnlyCaps {
    fn default() -> Self {
        CoreOnlyCaps::new(10, 4)
    }
}

impl Default for Degraded {
    fn default() -> Self {
        Degraded {
            modes: modes::Modes::default(),
            keys: Arc::new(steadyflow_store::idempotency::MemoryKeys::default()),
            spool: None,
            grace: grace::DEFAULT_GRACE,
            core_only: CoreOnlyCaps::default(),
        }
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Steadyflow",
        description = "BPMN workflow engine REST API. Errors are \
            `{\"error\":{\"code\":\"...\",\"message\":\"...\",\"details\":{...}}}` with one \
            stable code per condition; the `ErrorBody` schema lists every code with its HTTP status \
            and meaning. A `busy` answer (503) carries `Retry-After`. Every `/api/v1` route \
            except `POST /api/v1/auth/token` needs `Authorization: Bearer <token>`: a missing, \
            malformed, unknown, expired or revoked token answers 401 with `WWW-Authenticate`, \
            a role that may not answers 403."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "process definitions", description = "Deploy BPMN and start instances"),
        (name = "process instances", description = "Inspect and steer running instances"),
        (name = "tasks", description = "User tasks"),
        (name = "external tasks", description = "The worker protocol"),
        (name = "incidents", description = "Where instances are stuck"),
        (name = "auth", description = "Log-in, users and API tokens"),
        (name = "backups", description = "Recovery points: start a backup now, list them, see one verified"),
        (name = "system", description = "The service mode (read-only, core-only, offline)"),
        (name = "health", description = "Probes and metrics (open; `/metrics` may require a token)"),
        (name = "meta", description = "This document"),
    )
)]
struct ApiDoc;

/// Declares the `bearer` security scheme every `/api/v1` operation requires.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from `steadyflow user token`, `POST /api/v1/users/{id}/tokens` \
                         or `POST /api/v1/auth/token`",
                    ))
                    .build(),
            ),
        );
    }
}

/// The complete route table with its OpenAPI document; `v1` is the `/api/v1` part,
/// with or without its authentication layer.
fn table(v1: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(v1)
        .merge(routes::public())
}

/// The OpenAPI document of every route [`router`] serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = table(routes::v1()).into_openapi();
    document_auth_answers(&mut doc);
    doc
}

/// Every `/api/v1` operation may answer 401 (no valid token) and 403 (a role that may
/// not), as its access rule says; public ones only what they declare themselves.
fn document_auth_answers(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let answer = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorResponse")))
                        .build(),
                )
                .build(),
        )
    };
    let open = || {
        Some(vec![
            utoipa::openapi::security::SecurityRequirement::default(),
        ])
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.starts_with("/api/v1/") {
            // Probes, metrics and the docs page need no token.
            for op in [&mut item.get, &mut item.post].into_iter().flatten() {
                op.security = open();
            }
            continue;
        }
        let operations = [
            ("GET", &mut item.get),
            ("POST", &mut item.post),
            ("PUT", &mut item.put),
            ("PATCH", &mut item.patch),
            ("DELETE", &mut item.delete),
        ];
        for (method, op) in operations {
            let Some(op) = op.as_mut() else { continue };
            let Ok(m) = axum::http::Method::from_bytes(method.as_bytes()) else {
                continue;
            };
            if access::rule(&m, path) == Some(access::Rule::Public) {
                op.security = open();
                continue;
            }
            if method != "GET" {
                document_idempotency_key(op, &answer);
            }
            let responses = &mut op.responses.responses;
            responses.entry("401".into()).or_insert_with(|| {
                answer("`unauthorized`: no token, or one that is malformed, unknown, expired or revoked (with `WWW-Authenticate`)")
            });
            responses
                .entry("403".into())
                .or_insert_with(|| answer("`forbidden`: the caller's role may not do this"));
        }
    }
}

/// Every `/api/v1` write takes an optional `Idempotency-Key` ([`idempotency`]), and may
/// answer 400 (a malformed key), 409 (the same key still running) and 422 (the key used
/// for another request).
fn document_idempotency_key(
    op: &mut utoipa::openapi::path::Operation,
    answer: &impl Fn(&str) -> utoipa::openapi::RefOr<utoipa::openapi::Response>,
) {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::{Required, Schema};
    let schema = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(idempotency::MAX_KEY_LEN))
        .pattern(Some("^[!-~]+$"))
        .build();
    let parameter = ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "Makes the write safe to send again: the same key (of the same caller, kept 24 h) \
             gets the first answer again, with `Idempotent-Replayed: true`, and the work is done once",
        ))
        .schema(Some(Schema::Object(schema)))
        .build();
    op.parameters
        .get_or_insert_with(Vec::new)
        .push(utoipa::openapi::RefOr::T(parameter));
    let responses = &mut op.responses.responses;
    responses.entry("400".into()).or_insert_with(|| {
        answer("`bad_request`: a malformed request, or an `Idempotency-Key` that is not 1 to 255 visible ASCII characters")
    });
    responses.entry("409".into()).or_insert_with(|| {
        answer("`idempotency_key_in_use`: a request with this `Idempotency-Key` is still running")
    });
    responses.entry("422".into()).or_insert_with(|| {
        answer("`idempotency_key_reused`: this `Idempotency-Key` was used for another request")
    });
}

/// The HTTP service: `/health`, `/ready`, `/metrics` (open), and everything under
/// `/api/v1` behind `state.auth`. Unknown routes answer `404 not_found`, known routes
/// with another method `405 method_not_allowed`, both as JSON errors. The probes and
/// `/metrics` run with [`Observability::default`] (see [`router_with`]).
pub fn router(state: impl Into<AppState>) -> axum::Router {
    router_with(state, Observability::default())
}

/// [`router`] with the given [`Observability`] (the `/metrics` token, the gauges'
/// refresh interval, the Redis probe).
pub fn router_with(state: impl Into<AppState>, observability: Observability) -> axum::Router {
    let state: AppState = state.into();
    let v1 = routes::v1()
        // Inside authentication: keys are scoped to the caller.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            idempotency::keyed,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        // Outside authentication: token look-ups wait out an outage too.
        .route_layer(middleware::from_fn_with_state(state.clone(), grace::grace))
        // Outside authentication: a mode refuses before anything asks the database.
        .route_layer(middleware::from_fn_with_state(state.clone(), modes::gate));
    let router: axum::Router<AppState> = table(v1).into();
    router
        .route_layer(middleware::from_fn(observe::mark_route))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(observe::observe))
        .layer(Extension(observability))
        .with_state(state)
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        Code::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}
