//! User tasks: query, claim, complete.

use axum::Extension;
use axum::extract::State;
use serde::Deserialize;
use steadyflow_store::users::Role;
use steadyflow_store::{TaskFilter, TaskRecord, TaskViewer};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorResponse};
use crate::json::{Json, JsonOrEmpty};
use crate::model::{ClaimTask, CompleteTask, ProcessInstance, Task, TaskPage};
use crate::params::{Path, Query, cursor, page_limit};

/// The list name in this list's cursors.
const LIST: &str = "tasks";

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tasks))
        .routes(routes!(get_task))
        .routes(routes!(claim_task))
        .routes(routes!(complete_task))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
struct TaskQuery {
    assignee: Option<String>,
    candidate_group: Option<String>,
    process_instance_id: Option<String>,
    /// Items per page, 1 to 1000; 100 when left out.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<u32>,
    /// The `nextCursor` of the previous page; left out for the first page.
    #[param(min_length = 1)]
    after: Option<String>,
}

/// Open user tasks, optionally filtered, one page at a time (in id order).
#[utoipa::path(
    get,
    path = "/api/v1/tasks",
    tag = "tasks",
    params(TaskQuery),
    responses((status = 200, body = TaskPage), (status = 400, body = ErrorResponse))
)]
async fn list_tasks(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<TaskQuery>,
) -> Result<Json<TaskPage>, ApiError> {
    let limit = page_limit(q.limit)?;
    let filter = TaskFilter {
        assignee: q.assignee,
        candidate_group: q.candidate_group,
        instance_id: q.process_instance_id,
        after: cursor::decode(LIST, q.after.as_deref())?,
        limit: Some(limit + 1),
        visible_to: viewer(&p),
    };
    let mut rows = state.engine.tasks(&filter).await?;
    let next_cursor = cursor::next(LIST, &mut rows, limit, |t| t.id.clone());
    Ok(Json(TaskPage {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// One open user task.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}",
    tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    responses((status = 200, body = Task), (status = 404, body = ErrorResponse))
)]
async fn get_task(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(visible_task(&state, &p, &id).await?.into()))
}

/// Whose tasks a caller sees: everyone's, except for the `user` role, who sees the tasks
/// assigned to them or naming them or one of their groups as candidates.
fn viewer(p: &Principal) -> Option<TaskViewer> {
    (p.role == Role::User).then(|| TaskViewer {
        user: p.name.clone(),
        groups: p.groups.clone(),
    })
}

/// The task, if the caller may see it (404 otherwise, as if it did not exist).
async fn visible_task(state: &AppState, p: &Principal, id: &str) -> Result<TaskRecord, ApiError> {
    let task = state.engine.task(id).await?;
    match viewer(p) {
        Some(v) if !v.sees(&task) => Err(ApiError::not_found(format!("task {id} not found"))),
        _ => Ok(task),
    }
}

/// Assign the task to a user. Claiming a task the same user already holds succeeds.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/{id}/claim",
    tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    request_body = ClaimTask,
    responses(
        (status = 200, body = Task),
        (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "`task_already_claimed`: another user holds the task", body = ErrorResponse),
    )
)]
async fn claim_task(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    Json(body): Json<ClaimTask>,
) -> Result<Json<Task>, ApiError> {
    // Operators and administrators claim for anyone; everyone else only for themselves.
    if !p.acts_for_others() && body.user_id != p.name {
        return Err(ApiError::forbidden(format!(
            "`{}` may claim tasks only for themselves",
            p.name
        )));
    }
    visible_task(&state, &p, &id).await?;
    Ok(Json(
        state.engine.claim_task(&id, &body.user_id).await?.into(),
    ))
}

/// Complete a user task.
///
/// Its variables are set on the instance; returns the instance after it moved on.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/{id}/complete",
    tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    request_body(content = Option<CompleteTask>, description = "May be left out: no variables"),
    responses(
        (status = 200, body = ProcessInstance),
        (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "`instance_ended`: the instance has already ended", body = ErrorResponse),
        (status = 503, description = "`busy`: other changes to the instance kept winning; retry after `Retry-After` seconds (or `unavailable`)", body = ErrorResponse,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying (with `busy`)"))),
    )
)]
async fn complete_task(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty<CompleteTask>,
) -> Result<Json<ProcessInstance>, ApiError> {
    let task = visible_task(&state, &p, &id).await?;
    if let Some(holder) = &task.assignee
        && !p.acts_for_others()
        && holder != &p.name
    {
        return Err(ApiError::forbidden(format!(
            "task {id} is assigned to {holder}"
        )));
    }
    Ok(Json(
        state
            .engine
            .complete_task(&id, body.variables)
            .await?
            .into(),
    ))
}
