//! Incidents: where instances are stuck, and retrying them.

use axum::extract::State;
use serde::Deserialize;
use steadyflow_store::IncidentFilter;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::{ApiError, ErrorResponse};
use crate::json::Json;
use crate::model::{IncidentPage, ProcessInstance};
use crate::params::{Path, Query, cursor, page_limit};

/// The list name in this list's cursors.
const LIST: &str = "incidents";

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_incidents))
        .routes(routes!(retry_incident))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
struct IncidentQuery {
    process_instance_id: Option<String>,
    /// `true`: only open incidents; `false`: only resolved ones; absent: all.
    open: Option<bool>,
    /// Items per page, 1 to 1000; 100 when left out.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<u32>,
    /// The `nextCursor` of the previous page; left out for the first page.
    #[param(min_length = 1)]
    after: Option<String>,
}

/// List incidents, optionally filtered, one page at a time (in id order).
#[utoipa::path(
    get,
    path = "/api/v1/incidents",
    tag = "incidents",
    params(IncidentQuery),
    responses((status = 200, body = IncidentPage), (status = 400, body = ErrorResponse))
)]
async fn list_incidents(
    State(state): State<AppState>,
    Query(q): Query<IncidentQuery>,
) -> Result<Json<IncidentPage>, ApiError> {
    let limit = page_limit(q.limit)?;
    let filter = IncidentFilter {
        instance_id: q.process_instance_id,
        open: q.open,
        after: cursor::decode(LIST, q.after.as_deref())?,
        limit: Some(limit + 1),
    };
    let mut rows = state.engine.incidents(&filter).await?;
    let next_cursor = cursor::next(LIST, &mut rows, limit, |i| i.id.clone());
    Ok(Json(IncidentPage {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// Retry the element an incident stopped at (after fixing its cause).
///
/// Incidents of external tasks are resolved by setting the task's retries instead.
#[utoipa::path(
    post,
    path = "/api/v1/incidents/{id}/retry",
    tag = "incidents",
    params(("id" = String, Path, description = "Incident id")),
    responses(
        (status = 200, body = ProcessInstance),
        (status = 400, description = "An external task's incident", body = ErrorResponse),
        (status = 404, description = "No open incident with this id", body = ErrorResponse),
        (status = 409, description = "`instance_ended`: the instance has already ended", body = ErrorResponse),
        (status = 503, description = "`busy`: other changes to the instance kept winning; retry after `Retry-After` seconds (or `unavailable`)", body = ErrorResponse,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying (with `busy`)"))),
    )
)]
async fn retry_incident(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ProcessInstance>, ApiError> {
    Ok(Json(state.engine.retry_incident(&id).await?.into()))
}
