//! Liveness/readiness probe for load balancers and orchestrators.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::json::Json;
use crate::model::{Health, HealthComponents, Status};

/// How long the database may take to answer a ping before it counts as down.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}

/// Whether this node can serve: 200 when the database answers, 503 when it does not.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    responses(
        (status = 200, description = "Up", body = Health),
        (status = 503, description = "The database does not answer", body = Health),
    )
)]
async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let database = match tokio::time::timeout(PING_TIMEOUT, state.engine.store().ping()).await {
        Ok(Ok(())) => Status::Up,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health: database ping failed");
            Status::Down
        }
        Err(_) => {
            tracing::warn!(timeout = ?PING_TIMEOUT, "health: database ping timed out");
            Status::Down
        }
    };
    let status = if database == Status::Up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: database,
        components: HealthComponents { database },
    };
    (status, Json(body))
}
