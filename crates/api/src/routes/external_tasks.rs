//! External tasks: the worker protocol (fetch-and-lock, complete, failure, BPMN error) and
//! retries.

use axum::extract::State;
use serde::Deserialize;
use steadyflow_engine::ExternalFailure;
use steadyflow_store::{ExternalTaskFilter, TopicLock};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::{ApiError, ErrorResponse};
use crate::json::Json;
use crate::model::{
    CompleteExternalTask, ExternalTask, ExternalTaskBpmnError, ExternalTaskFailure,
    ExternalTaskPage, FetchAndLock, MAX_FETCH, ProcessInstance, SetRetries, check_not_blank,
};
use crate::params::{Path, Query, cursor, page_limit};

/// The list name in this list's cursors.
const LIST: &str = "external-tasks";

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_external_tasks))
        .routes(routes!(get_external_task))
        .routes(routes!(fetch_and_lock))
        .routes(routes!(complete_external_task))
        .routes(routes!(fail_external_task))
        .routes(routes!(bpmn_error_external_task))
        .routes(routes!(set_retries))
        .routes(routes!(unlock_external_task))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
struct ExternalTaskQuery {
    process_instance_id: Option<String>,
    topic_name: Option<String>,
    /// Items per page, 1 to 1000; 100 when left out.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<u32>,
    /// The `nextCursor` of the previous page; left out for the first page.
    #[param(min_length = 1)]
    after: Option<String>,
}

/// List external tasks, optionally filtered, one page at a time (in id order).
#[utoipa::path(
    get,
    path = "/api/v1/external-tasks",
    tag = "external tasks",
    params(ExternalTaskQuery),
    responses((status = 200, body = ExternalTaskPage), (status = 400, body = ErrorResponse))
)]
async fn list_external_tasks(
    State(state): State<AppState>,
    Query(q): Query<ExternalTaskQuery>,
) -> Result<Json<ExternalTaskPage>, ApiError> {
    let limit = page_limit(q.limit)?;
    let filter = ExternalTaskFilter {
        instance_id: q.process_instance_id,
        topic: q.topic_name,
        after: cursor::decode(LIST, q.after.as_deref())?,
        limit: Some(limit + 1),
    };
    let mut rows = state.engine.external_tasks(&filter).await?;
    let next_cursor = cursor::next(LIST, &mut rows, limit, |t| t.id.clone());
    Ok(Json(ExternalTaskPage {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// One external task.
#[utoipa::path(
    get,
    path = "/api/v1/external-tasks/{id}",
    tag = "external tasks",
    params(("id" = String, Path, description = "External task id")),
    responses((status = 200, body = ExternalTask), (status = 404, body = ErrorResponse))
)]
async fn get_external_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ExternalTask>, ApiError> {
    Ok(Json(state.engine.external_task(&id).await?.into()))
}

/// Lock tasks for a worker.
///
/// Locks up to `maxTasks` fetchable tasks of the given topics, oldest first, and returns
/// them with their instances' variables. In `core-only` mode a fetch takes at most
/// `modes.core_only_fetch_max_tasks` tasks, and at most `modes.core_only_fetch_concurrency`
/// fetches run at once (more answer 503 `core_only` with `Retry-After`).
#[utoipa::path(
    post,
    path = "/api/v1/external-tasks/fetch-and-lock",
    tag = "external tasks",
    request_body = FetchAndLock,
    responses(
        (status = 200, body = Vec<ExternalTask>),
        (status = 400, description = "A blank `workerId`, `maxTasks` or `lockDuration` out of range, or a malformed body", body = ErrorResponse),
        (status = 503, description = "`core_only`: the service is in core-only mode and its concurrent fetches are taken; retry after `Retry-After` seconds (or `unavailable`)", body = ErrorResponse,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn fetch_and_lock(
    State(state): State<AppState>,
    Json(body): Json<FetchAndLock>,
) -> Result<Json<Vec<ExternalTask>>, ApiError> {
    if body.max_tasks > MAX_FETCH {
        return Err(ApiError::bad_request(format!(
            "maxTasks {} is out of range: 0 to {MAX_FETCH}",
            body.max_tasks
        )));
    }
    // core-only: a bounded number of tasks per fetch, and of fetches at once.
    let core_only = state.degraded.modes.current().mode == steadyflow_store::mode::Mode::CoreOnly;
    let caps = &state.degraded.core_only;
    let _slot = if core_only {
        match caps.fetch_slots.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) => {
                return Err(ApiError::new(
                    crate::Code::CoreOnly,
                    format!(
                        "the service is in core-only mode: at most {} fetch-and-lock requests run at once",
                        caps.fetch_concurrency
                    ),
                )
                .with_retry_after(1));
            }
        }
    } else {
        None
    };
    let max_tasks = if core_only {
        body.max_tasks.min(caps.fetch_max_tasks)
    } else {
        body.max_tasks
    };
    let topics: Vec<TopicLock> = body
        .topics
        .into_iter()
        .map(|t| TopicLock {
            topic: t.topic_name,
            lock_duration_ms: t.lock_duration,
        })
        .collect();
    let locked = state
        .engine
        .fetch_and_lock(&body.worker_id, max_tasks as usize, &topics)
        .await?;
    Ok(Json(locked.into_iter().map(Into::into).collect()))
}

/// Complete a locked external task.
///
/// Its variables are set on the instance; returns the instance after it moved on.
#[utoipa::path(
    post,
    path = "/api/v1/external-tasks/{id}/complete",
    tag = "external tasks",
    params(("id" = String, Path, description = "External task id")),
    request_body = CompleteExternalTask,
    responses(
        (status = 200, body = ProcessInstance),
        (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "`lock_expired` (this worker's lock ran out or was released) or `locked_by_other_worker`", body = ErrorResponse),
        (status = 503, description = "`busy`: other changes to the instance kept winning; retry after `Retry-After` seconds (or `unavailable`)", body = ErrorResponse,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying (with `busy`)"))),
    )
)]
async fn complete_external_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<CompleteExternalTask>,
) -> Result<Json<ProcessInstance>, ApiError> {
    check_not_blank("workerId", &body.worker_id)?;
    let inst = state
        .engine
        .complete_external_task(&id, &body.worker_id, body.variables)
        .await?;
    Ok(Json(inst.into()))
}

/// Report a failed external task.
///
/// With retries left the task is fetchable again after `retryTimeout` ms; with 0 retries
/// the instance gets an incident.
#[utoipa::path(
    post,
    path = "/api/v1/external-tasks/{id}/failure",
    tag = "external tasks",
    params(("id" = String, Path, description = "External task id")),
    request_body = ExternalTaskFailure,
    responses(
        (status = 200, body = ExternalTask),
        (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "`lock_expired` (this worker's lock ran out or was released) or `locked_by_other_worker`", body = ErrorResponse),
        (status = 503, description = "`busy`: other changes to the instance kept winning; retry after `Retry-After` seconds (or `unavailable`)", body = ErrorResponse,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying (with `busy`)"))),
    )
)]
async fn fail_external_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<ExternalTaskFailure>,
) -> Result<Json<ExternalTask>, ApiError> {
    check_not_blank("workerId", &body.worker_id)?;
    let failure = ExternalFailure {
        worker_id: body.worker_id,
        error_message: body.error_message,
        retries: body.retries,
        retry_timeout_ms: body.retry_timeout,
    };
    Ok(Json(
        state.engine.fail_external_task(&id, failure).await?.into(),
    ))
}

/// Report a BPMN error for a locked external task.
///
/// As Camunda 7's `handleBpmnError`: the task ends, `variables` are set on the instance,
/// and the error `errorCode` is thrown at the task's activity. The nearest error boundary
/// event or error event sub-process whose `errorCode` matches (or that has none) catches
/// it and the instance goes on there; when none does, the instance stands in an
/// `unhandledError` incident at the activity (retrying it creates the task again).
/// Returns the instance after it moved on.
#[utoipa::path(
    post,
    path = "/api/v1/external-tasks/{id}/bpmnError",
    tag = "external tasks",
    params(("id" = String, Path, description = "External task id")),
    request_body = ExternalTaskBpmnError,
    responses(
        (status = 200, body = ProcessInstance),
        (status = 400, description = "A blank `workerId` or `errorCode`, or a malformed body", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "`lock_expired` (this worker's lock ran out or was released) or `locked_by_other_worker`", body = ErrorResponse),
        (status = 503, description = "`busy`: other changes to the instance kept winning; retry after `Retry-After` seconds (or `unavailable`)", body = ErrorResponse,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying (with `busy`)"))),
    )
)]
async fn bpmn_error_external_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<ExternalTaskBpmnError>,
) -> Result<Json<ProcessInstance>, ApiError> {
    check_not_blank("workerId", &body.worker_id)?;
    check_not_blank("errorCode", &body.error_code)?;
    let inst = state
        .engine
        .external_task_bpmn_error(
            &id,
            &body.worker_id,
            &body.error_code,
            body.error_message.as_deref(),
            body.variables,
        )
        .await?;
    Ok(Json(inst.into()))
}

/// Set a task's retries; above 0 resolves its incident and makes it fetchable.
#[utoipa::path(
    put,
    path = "/api/v1/external-tasks/{id}/retries",
    tag = "external tasks",
    params(("id" = String, Path, description = "External task id")),
    request_body = SetRetries,
    responses(
        (status = 200, body = ExternalTask),
        (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "`instance_ended`: the instance has already ended", body = ErrorResponse),
        (status = 503, description = "`busy`: other changes to the instance kept winning; retry after `Retry-After` seconds (or `unavailable`)", body = ErrorResponse,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying (with `busy`)"))),
    )
)]
async fn set_retries(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<SetRetries>,
) -> Result<Json<ExternalTask>, ApiError> {
    Ok(Json(
        state
            .engine
            .set_external_retries(&id, body.retries)
            .await?
            .into(),
    ))
}

/// Release a worker's lock so the task can be fetched again at once.
#[utoipa::path(
    post,
    path = "/api/v1/external-tasks/{id}/unlock",
    tag = "external tasks",
    params(("id" = String, Path, description = "External task id")),
    responses(
        (status = 200, body = ExternalTask),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "`instance_ended`: the instance has already ended", body = ErrorResponse),
        (status = 503, description = "`busy`: other changes to the instance kept winning; retry after `Retry-After` seconds (or `unavailable`)", body = ErrorResponse,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying (with `busy`)"))),
    )
)]
async fn unlock_external_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ExternalTask>, ApiError> {
    Ok(Json(state.engine.unlock_external_task(&id).await?.into()))
}
