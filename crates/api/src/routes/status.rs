//! `GET /status`: the status page ([`crate::status_page`]), open, in every mode.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::modes::ModeView;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(status))
}

/// The service mode for people and programs: an HTML page when `Accept` names
/// `text/html` (English or Simplified Chinese by `Accept-Language`), else JSON (the
/// mode, its reason, who set it, when it ends, and a `message`). Static: it answers
/// while the database is gone.
#[utoipa::path(
    get,
    path = "/status",
    tag = "health",
    responses(
        (status = 200, description = "The mode (JSON, or HTML for browsers)", body = ModeView, content_type = "application/json"),
    )
)]
async fn status(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let view = state.degraded.modes.current();
    crate::status_page::page(&view, &headers, StatusCode::OK)
}
