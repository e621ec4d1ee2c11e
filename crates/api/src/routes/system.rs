//! The service mode (admin): read it, change it. See [`crate::modes`] for what each mode
//! refuses.

use axum::Extension;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use steadyflow_store::Timestamp;
use steadyflow_store::mode::{Mode, SystemModeRecord};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorResponse};
use crate::json::Json;
use crate::modes::{ModeName, ModeView};
use crate::params::Path;
use crate::spool::SpoolStatus;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_mode, set_mode))
        .routes(routes!(spool_status))
}

/// A mode to set.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModeChange {
    #[schema(value_type = ModeName)]
    pub mode: Mode,
    /// Why: the message of every request the mode refuses, and the status page's text.
    #[serde(default)]
    #[schema(max_length = 500, nullable)]
    pub reason: Option<String>,
    /// When to return to `normal` by itself (RFC 3339; a time already past ends the
    /// mode at once).
    #[serde(default)]
    #[schema(nullable)]
    pub until: Option<DateTime<Utc>>,
}

/// The service mode in force on this node (admin).
#[utoipa::path(
    get,
    path = "/api/v1/system/mode",
    tag = "system",
    responses((status = 200, body = ModeView), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse))
)]
async fn get_mode(State(state): State<AppState>) -> Json<ModeView> {
    Json(state.degraded.modes.current())
}

/// Set the service mode of every node sharing the database (admin). Stored and
/// journaled; this node follows at once, the others within 2 s. Never refused by a mode.
#[utoipa::path(
    put,
    path = "/api/v1/system/mode",
    tag = "system",
    request_body = ModeChange,
    responses(
        (status = 200, description = "The mode now in force", body = ModeView),
        (status = 400, description = "`bad_request`: `reason` too long; `invalid_json`", body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse),
        (status = 503, description = "`unavailable`: the database cannot store the mode", body = ErrorResponse),
    )
)]
async fn set_mode(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Json(body): Json<ModeChange>,
) -> Result<Json<ModeView>, ApiError> {
    let now = state.engine.clock().now();
    let record = change_record(body, &p.name, now)?;
    let view = state
        .degraded
        .modes
        .set(state.engine.store().as_ref(), record, now)
        .await?;
    tracing::warn!(by = %p.name, mode = %view.mode, "service mode set through the API");
    Ok(Json(view))
}

/// The record `change` asks for, checked.
fn change_record(
    change: ModeChange,
    by: &str,
    now: Timestamp,
) -> Result<SystemModeRecord, ApiError> {
    crate::modes::checked_record(change.mode, change.reason, change.until, by, now)
        .map_err(ApiError::bad_request)
}

/// Where a request spooled while the service was offline stands: `queued`, or
/// `replayed` with the answer it got. Open (no token): the id is the capability, and
/// it is asked of the node that took the request (its `Location`).
#[utoipa::path(
    get,
    path = "/api/v1/spool/{id}",
    tag = "system",
    params(("id" = String, Path, description = "The spool id of a 202 answer")),
    responses(
        (status = 200, body = SpoolStatus),
        (status = 404, description = "`not_found`: no such spooled request on this node", body = ErrorResponse),
    )
)]
async fn spool_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SpoolStatus>, ApiError> {
    let not_found = || ApiError::not_found(format!("no spooled request {id} on this node"));
    let Some(spool) = &state.degraded.spool else {
        return Err(not_found());
    };
    match spool.status(&id) {
        Ok(Some(s)) => Ok(Json(s)),
        Ok(None) => Err(not_found()),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the spool");
            Err(ApiError::internal())
        }
    }
}
