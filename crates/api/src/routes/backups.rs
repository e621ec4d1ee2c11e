//! Backups (`/api/v1/backups`): start one now (admin), list the recovery points and show
//! one with its verification state (operator, admin). The work is done by the
//! [`Backups`](crate::backups::Backups) of the state.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{StatusCode, header};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::Principal;
use crate::backups::{Backup, BackupKind, BackupParts, BackupState, Backups, StartBackup};
use crate::error::{ApiError, ErrorResponse};
use crate::json::Json;
use crate::model::BackupPage;
use crate::params::{Path, Query, cursor, page_limit};

/// The list name in this list's cursors.
const LIST: &str = "backups";

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_backups, start_backup))
        .routes(routes!(get_backup))
}

fn backups(state: &AppState) -> Result<&Arc<dyn Backups>, ApiError> {
    state
        .backups
        .as_ref()
        .ok_or_else(crate::backups::not_configured)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
struct BackupQuery {
    /// Items per page, 1 to 1000; 100 when left out.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<u32>,
    /// The `nextCursor` of the previous page; left out for the first page.
    #[param(min_length = 1)]
    after: Option<String>,
}

/// The position of a point in the list (newest first): its time, then its id.
fn position(created_at: &chrono::DateTime<chrono::Utc>, id: &str) -> String {
    format!("{}|{id}", created_at.to_rfc3339())
}

/// List the recovery points in the backup directory and on every target, newest first,
/// one page at a time, each with where it exists (`locations`) and its verification
/// state (operator, admin).
#[utoipa::path(
    get,
    path = "/api/v1/backups",
    tag = "backups",
    params(BackupQuery),
    responses(
        (status = 200, body = BackupPage),
        (status = 400, body = ErrorResponse),
        (status = 503, description = "`backups_not_configured`: this node has no backup targets", body = ErrorResponse),
    )
)]
async fn list_backups(
    State(state): State<AppState>,
    Query(q): Query<BackupQuery>,
) -> Result<Json<BackupPage>, ApiError> {
    let limit = page_limit(q.limit)?;
    let after = cursor::decode(LIST, q.after.as_deref())?;
    let backups = backups(&state)?;
    let after = match after {
        None => None,
        Some(a) => {
            let (time, id) = a
                .split_once('|')
                .and_then(|(t, id)| {
                    chrono::DateTime::parse_from_rfc3339(t)
                        .ok()
                        .map(|t| (t.with_timezone(&chrono::Utc), id.to_string()))
                })
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "`after` is not a cursor of this list: pass the `nextCursor` of the previous page of backups unchanged",
                    )
                })?;
            Some((time, id))
        }
    };
    let mut points = backups.points().await?;
    points.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    let mut rows: Vec<_> = points
        .into_iter()
        // Newest first: after the cursor means older than it.
        .filter(|p| {
            after
                .as_ref()
                .is_none_or(|(t, id)| (p.created_at, p.id.as_str()) < (*t, id.as_str()))
        })
        .take(limit + 1)
        .collect();
    let next_cursor = cursor::next(LIST, &mut rows, limit, |p| position(&p.created_at, &p.id));
    Ok(Json(BackupPage {
        items: rows,
        next_cursor,
    }))
}

/// Start a backup now (admin): taken into the backup directory, read back and verified,
/// then copied to every target, in the background. Encrypted as the scheduled backups
/// are (when `ENCRYPT_KEY` or `STEADYFLOW_AGE_RECIPIENTS` is set). Follow `Location`
/// until `state` is `completed` (the recovery point is in `point`) or `failed`.
#[utoipa::path(
    post,
    path = "/api/v1/backups",
    tag = "backups",
    request_body = StartBackup,
    responses(
        (status = 202, description = "Started; `Location` is where it stands", body = Backup,
            headers(("Location" = String, description = "`/api/v1/backups/{run id}`"))),
        (status = 400, description = "`bad_request`: an incremental of anything but the database, or `parts` `redis` without a Redis; `invalid_json`", body = ErrorResponse),
        (status = 409, description = "`backup_running`: a backup started through the API (or the scheduled one of this kind) is still running; `details.id` names the API's run", body = ErrorResponse),
        (status = 503, description = "`backups_not_configured`: this node has no backup targets", body = ErrorResponse),
    )
)]
async fn start_backup(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Json(body): Json<StartBackup>,
) -> Result<(StatusCode, [(header::HeaderName, String); 1], Json<Backup>), ApiError> {
    let backups = backups(&state)?;
    if body.kind == BackupKind::Incremental
        && !matches!(body.parts, BackupParts::All | BackupParts::Db)
    {
        return Err(ApiError::bad_request(
            "an incremental backup holds the database's journal only: `parts` must be `all` or `db`",
        ));
    }
    let run = backups.start(body, &p.name).await?;
    tracing::info!(by = %p.name, run = %run.id, kind = ?run.kind, "backup started through the API");
    let location = format!("/api/v1/backups/{}", run.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(Backup {
            id: run.id.clone(),
            state: BackupState::Running,
            run: Some(run),
            point: None,
        }),
    ))
}

/// One backup (operator, admin): a recovery point by its id, with its verification state
/// and locations; or a run started through `POST /api/v1/backups` by its run id, with
/// `state` `running`, `failed` (and why) or `completed` (and its recovery point).
#[utoipa::path(
    get,
    path = "/api/v1/backups/{id}",
    tag = "backups",
    params(("id" = String, Path, description = "A recovery point's id or a run's id")),
    responses(
        (status = 200, body = Backup),
        (status = 404, description = "`not_found`: no such recovery point or run", body = ErrorResponse),
        (status = 503, description = "`backups_not_configured`: this node has no backup targets", body = ErrorResponse),
    )
)]
async fn get_backup(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Backup>, ApiError> {
    let backups = backups(&state)?;
    backups
        .get(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no backup or backup run `{id}`")))
}
