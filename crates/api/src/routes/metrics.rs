//! `/metrics`: every series of this process in Prometheus' text format.

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::health::{ping_database, ping_redis};
use crate::AppState;
use crate::error::{ApiError, ErrorResponse};
use crate::observe::Observability;

/// The exposition format's content type.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// Prometheus metrics of this node (text exposition format 0.0.4).
///
/// Each scrape pings the database (and Redis, when configured) for `steadyflow_db_up`
/// and `steadyflow_redis_up`; the database-wide gauges (`steadyflow_instances_active`,
/// `steadyflow_tasks_open`, `steadyflow_external_tasks_open`) are counted at most once
/// per `metrics.gauge_refresh_ms`. Open by default; with `metrics.token` configured it
/// requires `Authorization: Bearer <token>`. The series are listed in the README.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses(
        (status = 200, description = "The metrics", content_type = "text/plain", body = String),
        (status = 401, description = "`metrics.token` is configured and the request does not carry it", body = ErrorResponse),
    )
)]
async fn metrics(
    State(state): State<AppState>,
    Extension(obs): Extension<Observability>,
    headers: HeaderMap,
) -> Response {
    if let Some(digest) = obs.token_digest() {
        let presented = bearer(&headers).unwrap_or_default();
        if !crate::metrics::secret_matches(presented, digest) {
            let mut response =
                ApiError::unauthorized("/metrics requires its bearer token").into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"metrics\""),
            );
            return response;
        }
    }
    let handle = crate::metrics::install();
    let _ = ping_database(&state.engine).await;
    if let Some(redis) = obs.redis() {
        let _ = ping_redis(redis.as_ref()).await;
    }
    obs.gauges()
        .refresh(&state.engine, obs.gauge_refresh())
        .await;
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], handle.render()).into_response()
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}
