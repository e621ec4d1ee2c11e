//! Process definitions: deploy BPMN, list versions, fetch XML, start instances.

use axum::extract::{FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use steadyflow_engine::StartRequest;
use steadyflow_store::{DefinitionFilter, DefinitionPosition};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::{ApiError, ErrorResponse};
use crate::json::{Json, JsonOrEmpty, body_bytes};
use crate::model::{
    Deployment, ProcessDefinition, ProcessDefinitionPage, ProcessInstance, StartInstance,
};
use crate::params::{Path, Query, cursor, page_limit};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(deploy, list_definitions))
        .routes(routes!(get_definition))
        .routes(routes!(get_definition_xml))
        .routes(routes!(start_by_key))
        .routes(routes!(start_by_id))
}

/// The raw request body as UTF-8 text, whatever its content type.
pub(crate) struct XmlBody(String);

impl<S: Send + Sync> FromRequest<S> for XmlBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        let text = String::from_utf8(bytes.to_vec()).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid UTF-8: {e}"))
        })?;
        if text.trim().is_empty() {
            return Err(ApiError::bad_request(
                "the request body is empty; send the BPMN XML",
            ));
        }
        Ok(XmlBody(text))
    }
}

/// Deploy a BPMN file.
///
/// Every executable process in it becomes a new version, unless the file is unchanged
/// since the last deployment (then 200 with `created: false`).
#[utoipa::path(
    post,
    path = "/api/v1/process-definitions",
    tag = "process definitions",
    request_body(content = String, content_type = "application/xml", description = "The BPMN 2.0 XML"),
    responses(
        (status = 201, description = "Deployed as new versions", body = Deployment),
        (status = 200, description = "Unchanged; the existing versions", body = Deployment),
        (status = 400, description = "Empty, malformed, invalid or unsupported BPMN \
            (`bpmn_malformed`, `bpmn_invalid`, `bpmn_unsupported`, `bad_request`)", body = ErrorResponse),
    )
)]
async fn deploy(
    State(state): State<AppState>,
    XmlBody(xml): XmlBody,
) -> Result<impl IntoResponse, ApiError> {
    let deployed = state.engine.deploy(&xml).await?;
    let deployment = Deployment::from_deployed(deployed).ok_or_else(|| {
        tracing::error!("the engine deployed no process without reporting an error");
        ApiError::internal()
    })?;
    let status = if deployment.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    tracing::info!(key = %deployment.key, version = deployment.version, created = deployment.created, "deployed");
    Ok((status, Json(deployment)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DefinitionQuery {
    /// Only versions of this process key.
    key: Option<String>,
    /// Items per page, 1 to 1000; 100 when left out.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<u32>,
    /// The `nextCursor` of the previous page; left out for the first page.
    #[param(min_length = 1)]
    after: Option<String>,
}

/// The list name in this list's cursors.
const LIST: &str = "process-definitions";

/// List deployed definitions, by key and newest version first per key, one page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/process-definitions",
    tag = "process definitions",
    params(DefinitionQuery),
    responses((status = 200, body = ProcessDefinitionPage), (status = 400, body = ErrorResponse))
)]
async fn list_definitions(
    State(state): State<AppState>,
    Query(q): Query<DefinitionQuery>,
) -> Result<Json<ProcessDefinitionPage>, ApiError> {
    let limit = page_limit(q.limit)?;
    let after = cursor::decode(LIST, q.after.as_deref())?
        .map(|p| definition_position(&p))
        .transpose()?;
    let filter = DefinitionFilter {
        key: q.key,
        after,
        limit: Some(limit + 1),
    };
    let mut rows = state.engine.definitions(&filter).await?;
    let next_cursor = cursor::next(LIST, &mut rows, limit, |d| {
        format!("{}|{}", d.version, d.key)
    });
    Ok(Json(ProcessDefinitionPage {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// A definition cursor's position: `<version>|<key>`.
fn definition_position(p: &str) -> Result<DefinitionPosition, ApiError> {
    p.split_once('|')
        .and_then(|(v, k)| {
            Some(DefinitionPosition {
                version: v.parse().ok()?,
                key: k.to_string(),
            })
        })
        .ok_or_else(|| ApiError::bad_request("`after` is not a cursor of process-definitions"))
}

/// One definition version (without its XML).
#[utoipa::path(
    get,
    path = "/api/v1/process-definitions/{id}",
    tag = "process definitions",
    params(("id" = String, Path, description = "Definition id, `<key>:<version>`")),
    responses(
        (status = 200, body = ProcessDefinition),
        (status = 404, body = ErrorResponse),
    )
)]
async fn get_definition(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ProcessDefinition>, ApiError> {
    Ok(Json(state.engine.definition(&id).await?.into()))
}

/// The BPMN XML the definition was deployed from.
#[utoipa::path(
    get,
    path = "/api/v1/process-definitions/{id}/xml",
    tag = "process definitions",
    params(("id" = String, Path, description = "Definition id, `<key>:<version>`")),
    responses(
        (status = 200, content_type = "application/xml", body = String),
        (status = 404, body = ErrorResponse),
    )
)]
async fn get_definition_xml(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let def = state.engine.definition(&id).await?;
    let xml = def.xml.ok_or_else(|| {
        tracing::error!(definition = %id, "definition stored without its XML");
        ApiError::internal()
    })?;
    Ok((
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        xml,
    ))
}

/// Start an instance of the latest version of a process key.
#[utoipa::path(
    post,
    path = "/api/v1/process-definitions/key/{key}/start",
    tag = "process definitions",
    params(("key" = String, Path, description = "Process key (the BPMN process id)")),
    request_body(content = Option<StartInstance>, description = "May be left out: no variables"),
    responses(
        (status = 201, body = ProcessInstance),
        (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
    )
)]
async fn start_by_key(
    State(state): State<AppState>,
    Path(key): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty<StartInstance>,
) -> Result<impl IntoResponse, ApiError> {
    let inst = state.engine.start(&key, start_request(body)).await?;
    Ok((StatusCode::CREATED, Json(ProcessInstance::from(inst))))
}

/// Start an instance of one specific definition version.
#[utoipa::path(
    post,
    path = "/api/v1/process-definitions/{id}/start",
    tag = "process definitions",
    params(("id" = String, Path, description = "Definition id, `<key>:<version>`")),
    request_body(content = Option<StartInstance>, description = "May be left out: no variables"),
    responses(
        (status = 201, body = ProcessInstance),
        (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
    )
)]
async fn start_by_id(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty<StartInstance>,
) -> Result<impl IntoResponse, ApiError> {
    let inst = state
        .engine
        .start_definition(&id, start_request(body))
        .await?;
    Ok((StatusCode::CREATED, Json(ProcessInstance::from(inst))))
}

fn start_request(body: StartInstance) -> StartRequest {
    StartRequest {
        variables: body.variables,
        business_key: body.business_key,
    }
}
