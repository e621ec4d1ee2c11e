//! Process instances: query, inspect, cancel, change variables.

use axum::Extension;
use axum::extract::State;
use serde::Deserialize;
use steadyflow_store::{HistoryPosition, InstanceFilter, InstanceState};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorResponse};
use crate::json::Json;
use crate::model::{
    HistoryPage, ProcessInstance, ProcessInstancePage, ProcessInstanceState, SetVariables,
};
use crate::params::{Path, Query, cursor, page_limit};

/// The list name in this list's cursors.
const LIST: &str = "process-instances";

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_instances))
        .routes(routes!(get_instance, cancel_instance))
        .routes(routes!(instance_history))
        .routes(routes!(set_variables))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
struct InstanceQuery {
    #[param(value_type = Option<ProcessInstanceState>)]
    state: Option<String>,
    definition_key: Option<String>,
    business_key: Option<String>,
    /// Items per page, 1 to 1000; 100 when left out.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<u32>,
    /// The `nextCursor` of the previous page; left out for the first page.
    #[param(min_length = 1)]
    after: Option<String>,
}

/// List process instances, optionally filtered, one page at a time (in id order).
#[utoipa::path(
    get,
    path = "/api/v1/process-instances",
    tag = "process instances",
    params(InstanceQuery),
    responses(
        (status = 200, body = ProcessInstancePage),
        (status = 400, description = "Unknown state, `limit` out of range, a cursor of another list or malformed query", body = ErrorResponse),
    )
)]
async fn list_instances(
    State(state): State<AppState>,
    Query(q): Query<InstanceQuery>,
) -> Result<Json<ProcessInstancePage>, ApiError> {
    let limit = page_limit(q.limit)?;
    let filter = InstanceFilter {
        state: q
            .state
            .as_deref()
            .map(|s| {
                InstanceState::parse(s).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "unknown state `{s}`: expected active, completed, cancelled or incident"
                    ))
                })
            })
            .transpose()?,
        definition_key: q.definition_key,
        business_key: q.business_key,
        after: cursor::decode(LIST, q.after.as_deref())?,
        limit: Some(limit + 1),
    };
    let mut rows = state.engine.instances(&filter).await?;
    let next_cursor = cursor::next(LIST, &mut rows, limit, |i| i.id.clone());
    Ok(Json(ProcessInstancePage {
        items: rows.into_iter().map(ProcessInstance::from).collect(),
        next_cursor,
    }))
}

/// One process instance with its variables and active activities.
#[utoipa::path(
    get,
    path = "/api/v1/process-instances/{id}",
    tag = "process instances",
    params(("id" = String, Path, description = "Process instance id")),
    responses(
        (status = 200, body = ProcessInstance),
        (status = 404, body = ErrorResponse),
    )
)]
async fn get_instance(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ProcessInstance>, ApiError> {
    Ok(Json(state.engine.instance(&id).await?.into()))
}

/// Cancel a running instance; returns it as cancelled.
///
/// The instance is not deleted: it stays readable (state `cancelled`), with its history.
#[utoipa::path(
    delete,
    path = "/api/v1/process-instances/{id}",
    tag = "process instances",
    params(("id" = String, Path, description = "Process instance id")),
    responses(
        (status = 200, body = ProcessInstance),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "`instance_ended`: the instance has already ended", body = ErrorResponse),
        (status = 503, description = "`busy`: other changes to the instance kept winning; retry after `Retry-After` seconds (or `unavailable`)", body = ErrorResponse,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying (with `busy`)"))),
    )
)]
async fn cancel_instance(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<ProcessInstance>, ApiError> {
    let reason = format!("cancelled through the REST API by {}", principal.name);
    Ok(Json(state.engine.cancel(&id, &reason).await?.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// Items per page, 1 to 1000; 100 when left out.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<u32>,
    /// The `nextCursor` of the previous page; left out for the first page.
    #[param(min_length = 1)]
    after: Option<String>,
}

/// The list name in history cursors.
const HISTORY: &str = "history";

/// What happened to the instance, oldest first, one page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/process-instances/{id}/history",
    tag = "process instances",
    params(("id" = String, Path, description = "Process instance id"), PageQuery),
    responses(
        (status = 200, body = HistoryPage),
        (status = 400, description = "`limit` out of range, a cursor of another list or malformed query", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
    )
)]
async fn instance_history(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    let limit = page_limit(q.limit)?;
    let after = cursor::decode(HISTORY, q.after.as_deref())?
        .map(|p| history_position(&p))
        .transpose()?;
    let mut rows = state.engine.history_page(&id, after, limit + 1).await?;
    let next_cursor = cursor::next(HISTORY, &mut rows, limit, |(p, _)| {
        format!("{}.{}", p.seq, p.index)
    });
    Ok(Json(HistoryPage {
        items: rows.into_iter().map(|(_, e)| e.into()).collect(),
        next_cursor,
    }))
}

/// A history cursor's position: `<seq>.<index>`.
fn history_position(p: &str) -> Result<HistoryPosition, ApiError> {
    p.split_once('.')
        .and_then(|(seq, index)| {
            Some(HistoryPosition {
                seq: seq.parse().ok()?,
                index: index.parse().ok()?,
            })
        })
        .ok_or_else(|| ApiError::bad_request("`after` is not a cursor of this history"))
}

/// Merge variables into the instance.
#[utoipa::path(
    post,
    path = "/api/v1/process-instances/{id}/variables",
    tag = "process instances",
    params(("id" = String, Path, description = "Process instance id")),
    request_body = SetVariables,
    responses(
        (status = 200, body = ProcessInstance),
        (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "`instance_ended`: the instance has already ended", body = ErrorResponse),
        (status = 503, description = "`busy`: other changes to the instance kept winning; retry after `Retry-After` seconds (or `unavailable`)", body = ErrorResponse,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying (with `busy`)"))),
    )
)]
async fn set_variables(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<SetVariables>,
) -> Result<Json<ProcessInstance>, ApiError> {
    Ok(Json(
        state
            .engine
            .set_variables(&id, body.variables)
            .await?
            .into(),
    ))
}
