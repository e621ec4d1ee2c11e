//! Liveness/readiness probe for load balancers and orchestrators.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::json::Json;
use crate::model::{ComponentStatus, Health, Status};

/// How long the database may take to answer a ping before it counts as down.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}

/// Whether this node can serve, and the state of each of its components.
///
/// Components: `database` (answers a ping within 2 s), and every background component
/// registered with the engine (`timerDriver`: fires due timers; later the backup
/// scheduler and the journal shipper). A background component is `down`, with a
/// `reason`, while it is not running (backing off after a failed or panicked iteration).
/// Overall: `down` (503) when the database does not answer; `degraded` (200, requests
/// are still served) when a background component is down; else `up`.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    responses(
        (status = 200, description = "Up, or degraded: the database answers but a background component is down", body = Health),
        (status = 503, description = "The database does not answer", body = Health),
    )
)]
async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let database = match tokio::time::timeout(PING_TIMEOUT, state.engine.store().ping()).await {
        Ok(Ok(())) => ComponentStatus::up(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health: database ping failed");
            ComponentStatus::down("the database does not answer")
        }
        Err(_) => {
            tracing::warn!(timeout = ?PING_TIMEOUT, "health: database ping timed out");
            ComponentStatus::down(format!("no answer within {} s", PING_TIMEOUT.as_secs()))
        }
    };
    let database_up = database.status == Status::Up;
    let mut components = std::collections::BTreeMap::new();
    components.insert("database".to_string(), database);
    let mut all_up = database_up;
    for report in state.engine.components().snapshot() {
        all_up &= report.up;
        components.insert(report.name.clone(), report.into());
    }
    let (code, status) = match (database_up, all_up) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, Status::Down),
        (true, false) => (StatusCode::OK, Status::Degraded),
        (true, true) => (StatusCode::OK, Status::Up),
    };
    (code, Json(Health { status, components }))
}
