//! Probes for load balancers and orchestrators: `/health` (liveness and each
//! component) and `/ready` (may this node take writes). Both are open: no token.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use steadyflow_engine::{ComponentReport, Engine};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::json::Json;
use crate::observe::{Observability, Probe};

/// How long the database (or Redis) may take to answer a ping before it counts as down.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Up,
    /// Overall: the database answers, but another component is down or degraded. The
    /// `backup` component: it works, but a backup or the shipping is late (`reason`).
    Degraded,
    Down,
}

/// `status`: `down` when the database does not answer (503), else `degraded` when
/// another component is down (200: requests are still served), else `up`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: Status,
    /// By name: `database`, `redis` (when a cache is configured), `backup` (when backup
    /// targets are configured), and every background component of this node
    /// (`timerDriver`, and those registered later).
    pub components: BTreeMap<String, ComponentStatus>,
    /// The service mode in force on this node: `mode`, and the `reason`, `setBy`,
    /// `setAt` and `until` it was set with.
    #[serde(default)]
    pub mode: crate::modes::ModeView,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// `up` or `down`; `degraded` for `backup` past a limit.
    pub status: Status,
    /// Milliseconds: for `database` and `redis` the round trip of this request's ping
    /// (absent when it timed out); for a background component, how long its last
    /// completed iteration took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub latency_ms: Option<f64>,
    /// Why it is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The last failure of a background component, kept after it recovered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// How often a background component was restarted after a panic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u64>,
    /// `backup`: seconds since the newest backup of the database (full, incremental or
    /// shipped journal segment); absent when there is none yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub last_backup_age_seconds: Option<f64>,
    /// `backup`: the age in seconds of the oldest change not yet on every target; absent
    /// when this node does not ship the journal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub shipping_lag_seconds: Option<f64>,
}

impl ComponentStatus {
    fn pinged(result: Result<Duration, String>) -> Self {
        let (status, latency_ms, reason) = match result {
            Ok(d) => (Status::Up, Some(millis(d)), None),
            Err(reason) => (Status::Down, None, Some(reason)),
        };
        ComponentStatus {
            status,
            latency_ms,
            reason,
            last_error: None,
            restarts: None,
            last_backup_age_seconds: None,
            shipping_lag_seconds: None,
        }
    }

    /// The `backup` component: `degraded`, with the warnings as `reason`, past a limit.
    fn backup(h: crate::backups::BackupHealth) -> Self {
        let degraded = !h.warnings.is_empty();
        ComponentStatus {
            status: if degraded {
                Status::Degraded
            } else {
                Status::Up
            },
            latency_ms: None,
            reason: degraded.then(|| h.warnings.join("; ")),
            last_error: None,
            restarts: None,
            last_backup_age_seconds: h.last_success_age.map(|d| d.as_secs_f64()),
            shipping_lag_seconds: h.shipping_lag.map(|d| d.as_secs_f64()),
        }
    }
}

impl From<ComponentReport> for ComponentStatus {
    fn from(r: ComponentReport) -> Self {
        ComponentStatus {
            status: if r.up { Status::Up } else { Status::Down },
            latency_ms: r.latency.map(millis),
            reason: r.reason,
            last_error: r.last_error,
            restarts: Some(r.restarts),
            last_backup_age_seconds: None,
            shipping_lag_seconds: None,
        }
    }
}

/// Milliseconds with microsecond precision.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// Pings the database within [`PING_TIMEOUT`]: its round trip, or why it counts as
/// down (a client-safe text: the driver's message goes to the log). Sets
/// `steadyflow_db_up`.
pub(crate) async fn ping_database(engine: &Engine) -> Result<Duration, String> {
    let started = Instant::now();
    let result = match tokio::time::timeout(PING_TIMEOUT, engine.store().ping()).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "database ping failed");
            Err("the database does not answer".to_string())
        }
        Err(_) => {
            tracing::warn!(timeout = ?PING_TIMEOUT, "database ping timed out");
            Err(format!("no answer within {} s", PING_TIMEOUT.as_secs()))
        }
    };
    crate::metrics::set_db_up(result.is_ok());
    result
}

/// Pings Redis within [`PING_TIMEOUT`]; sets `steadyflow_redis_up`.
pub(crate) async fn ping_redis(redis: &dyn Probe) -> Result<Duration, String> {
    let started = Instant::now();
    let result = match tokio::time::timeout(PING_TIMEOUT, redis.ping()).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(reason)) => Err(reason),
        Err(_) => Err(format!("no answer within {} s", PING_TIMEOUT.as_secs())),
    };
    crate::metrics::set_redis_up(result.is_ok());
    result
}

/// Whether this node can serve, and the state of each of its components.
///
/// Components: `database` (answers a ping within 2 s), `redis` when a cache is
/// configured (likewise), and every background component registered with the engine
/// (`timerDriver`: fires due timers). A background component is `down`, with a `reason`,
/// while it is not running (backing off after a failed or panicked iteration).
/// `latencyMs`: the ping's round trip, or a background component's last iteration.
/// `backup` (when backup targets are configured): `lastBackupAgeSeconds` and
/// `shippingLagSeconds`, `degraded` with the reason when the newest backup is older than
/// `backup.alerts.max_backup_age`, the shipping lag exceeds
/// `backup.alerts.max_shipping_lag`, or a backup failure is raised as an alert (a target
/// refusing writes, a failed backup). Overall: `down` (503) when the database does not
/// answer; `degraded` (200, requests are still served) when another component is down or
/// degraded; else `up`.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    responses(
        (status = 200, description = "Up, or degraded: the database answers but another component is down", body = Health),
        (status = 503, description = "The database does not answer", body = Health),
    )
)]
async fn health(
    State(state): State<AppState>,
    Extension(obs): Extension<Observability>,
) -> (StatusCode, Json<Health>) {
    let database = ComponentStatus::pinged(ping_database(&state.engine).await);
    let database_up = database.status == Status::Up;
    let mut components = BTreeMap::new();
    components.insert("database".to_string(), database);
    if let Some(redis) = obs.redis() {
        let redis = ComponentStatus::pinged(ping_redis(redis.as_ref()).await);
        components.insert("redis".to_string(), redis);
    }
    for report in state.engine.components().snapshot() {
        components.insert(report.name.clone(), report.into());
    }
    if let Some(b) = &state.backups {
        components.insert("backup".to_string(), ComponentStatus::backup(b.health()));
    }
    let all_up = components.values().all(|c| c.status == Status::Up);
    let (code, status) = match (database_up, all_up) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, Status::Down),
        (true, false) => (StatusCode::OK, Status::Degraded),
        (true, true) => (StatusCode::OK, Status::Up),
    };
    let mode = state.degraded.modes.current();
    (
        code,
        Json(Health {
            status,
            components,
            mode,
        }),
    )
}

/// Whether this node can serve writes now: 200 when the database answers a ping
/// within 2 s, else 503. Only the `database` component is listed; a load balancer
/// sends traffic to nodes that answer 200.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "health",
    responses(
        (status = 200, description = "Ready: the database answers", body = Health),
        (status = 503, description = "Not ready: the database does not answer", body = Health),
    )
)]
async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let database = ComponentStatus::pinged(ping_database(&state.engine).await);
    let (code, status) = if database.status == Status::Up {
        (StatusCode::OK, Status::Up)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Status::Down)
    };
    let components = BTreeMap::from([("database".to_string(), database)]);
    let mode = state.degraded.modes.current();
    (
        code,
        Json(Health {
            status,
            components,
            mode,
        }),
    )
}
