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

mod auth;
mod error;
mod json;
pub mod metrics;
pub mod model;
pub mod observe;
mod params;
mod routes;

pub use auth::{AllowAll, Authenticator, Principal};
pub use error::{ApiError, Code, ErrorBody, ErrorResponse};
pub use json::{Json, JsonOrEmpty};
pub use observe::{Observability, ObservabilityOptions, Probe, RequestId};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub auth: Arc<dyn Authenticator>,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Steadyflow",
        description = "BPMN workflow engine REST API. Errors are \
            `{\"error\":{\"code\":\"...\",\"message\":\"...\",\"details\":{...}}}` with one \
            stable code per condition; the `ErrorBody` schema lists every code with its HTTP status \
            and meaning. A `busy` answer (503) carries `Retry-After`."
    ),
    tags(
        (name = "process definitions", description = "Deploy BPMN and start instances"),
        (name = "process instances", description = "Inspect and steer running instances"),
        (name = "tasks", description = "User tasks"),
        (name = "external tasks", description = "The worker protocol"),
        (name = "incidents", description = "Where instances are stuck"),
        (name = "health", description = "Probes and metrics (open; `/metrics` may require a token)"),
        (name = "meta", description = "This document"),
    )
)]
struct ApiDoc;

/// The complete route table with its OpenAPI document; `v1` is the `/api/v1` part,
/// with or without its authentication layer.
fn table(v1: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(v1)
        .merge(routes::public())
}

/// The OpenAPI document of every route [`router`] serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    table(routes::v1()).into_openapi()
}

/// The HTTP service: `/health`, `/ready`, `/metrics` (open), and everything under
/// `/api/v1` behind `state.auth`. Unknown routes answer `404 not_found`, known routes
/// with another method `405 method_not_allowed`, both as JSON errors. The probes and
/// `/metrics` run with [`Observability::default`] (see [`router_with`]).
pub fn router(state: AppState) -> axum::Router {
    router_with(state, Observability::default())
}

/// [`router`] with the given [`Observability`] (the `/metrics` token, the gauges'
/// refresh interval, the Redis probe).
pub fn router_with(state: AppState, observability: Observability) -> axum::Router {
    let v1 = routes::v1().route_layer(middleware::from_fn_with_state(
        state.clone(),
        auth::authenticate,
    ));
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
