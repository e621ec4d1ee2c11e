//! The route table: one module per concept, each contributing handlers that carry their
//! own OpenAPI description, so routes and document cannot drift.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

mod accounts;
mod backups;
mod definitions;
mod docs;
mod external_tasks;
mod health;
mod incidents;
mod instances;
mod metrics;
mod status;
mod system;
mod tasks;

/// Every `/api/v1` route (all behind the authentication middleware).
pub(crate) fn v1() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(definitions::router())
        .merge(instances::router())
        .merge(tasks::router())
        .merge(external_tasks::router())
        .merge(incidents::router())
        .merge(accounts::router())
        .merge(system::router())
        .merge(backups::router())
        .routes(routes!(openapi_json))
}

/// Routes outside `/api/v1`, open to everyone.
pub(crate) fn public() -> OpenApiRouter<AppState> {
    health::router()
        .merge(metrics::router())
        .merge(docs::router())
        .merge(status::router())
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object))
)]
async fn openapi_json() -> impl IntoResponse {
    static DOC: OnceLock<String> = OnceLock::new();
    // Local invariant: the document is built from this crate's own types, which
    // serialize (the checked-in copy is made by the same call in a test).
    #[allow(
        clippy::expect_used,
        reason = "the document is built from this crate's own types, which serialize"
    )]
    let doc = DOC.get_or_init(|| {
        crate::openapi()
            .to_json()
            .expect("the OpenAPI document serializes")
    });
    ([(header::CONTENT_TYPE, "application/json")], doc.as_str())
}
