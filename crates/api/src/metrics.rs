//! Prometheus metrics: the process-wide recorder, the HTTP and node series this crate
//! records, and the database gauges refreshed at most once per interval.
//!
//! Why the `metrics` facade (with `metrics-exporter-prometheus`, HTTP listener off)
//! rather than `prometheus-client`: the engine and both stores record their own series
//! (`counter!`, `histogram!`) where things happen, without a registry handed down through
//! every constructor; only this crate knows the exporter, and `/metrics` renders it.
//!
//! Every series is listed in the README ("Observability"); their help texts are
//! registered by [`install`], so `promtool check metrics` finds each documented.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use steadyflow_engine::Engine;

/// Counter: requests answered; labels `method`, `route` (the route template, e.g.
/// `/api/v1/tasks/{id}`, or [`UNMATCHED_ROUTE`]), `status`.
pub const HTTP_REQUESTS: &str = "http_requests_total";
/// Histogram: seconds from a request's arrival until its response head; labels
/// `method`, `route`.
pub const HTTP_DURATION: &str = "http_request_duration_seconds";
/// The `route` label of requests no route matched (so raw paths never become labels).
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// Gauge: 1 while this process serves.
pub const UP: &str = "steadyflow_up";
/// Gauge: 1 when the database answered this node's last ping.
pub const DB_UP: &str = "steadyflow_db_up";
/// Gauge: 1 when Redis answered this node's last ping; 0 when down or not configured.
pub const REDIS_UP: &str = "steadyflow_redis_up";
/// Gauge: instances not ended (active or stopped at an incident), whole database.
pub const INSTANCES_ACTIVE: &str = "steadyflow_instances_active";
/// Gauge: open user tasks, whole database.
pub const TASKS_OPEN: &str = "steadyflow_tasks_open";
/// Gauge: open external tasks (waiting or locked by a worker), whole database.
pub const EXTERNAL_TASKS_OPEN: &str = "steadyflow_external_tasks_open";
/// Gauge: 1 for the service mode in force on this node, 0 for the others; label `mode`.
pub const MODE: &str = "steadyflow_mode";
/// Gauge: Unix time of the last successful refresh of the three gauges above.
pub const GAUGES_REFRESHED: &str = "steadyflow_gauges_refreshed_timestamp_seconds";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
const LAG_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder, installed as the global `metrics` recorder on the
/// first call (later calls return the same handle). When another global recorder was
/// installed first, the handle renders this crate's series only... which are then
/// never recorded: one process, one recorder.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = buckets(PrometheusBuilder::new()).build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was installed before; /metrics stays empty");
        }
        describe();
        handle
    })
}

/// Folds recent histogram samples in; run every few seconds (the server does).
pub fn upkeep() {
    install().run_upkeep();
}

fn buckets(builder: PrometheusBuilder) -> PrometheusBuilder {
    use steadyflow_store::gauges::{BATCH_SIZE, COMMIT_SECONDS, WAL_SYNC_SECONDS};
    let rules: [(&str, &[f64]); 5] = [
        (HTTP_DURATION, LATENCY_BUCKETS),
        (COMMIT_SECONDS, LATENCY_BUCKETS),
        (WAL_SYNC_SECONDS, LATENCY_BUCKETS),
        (BATCH_SIZE, BATCH_BUCKETS),
        (steadyflow_engine::metrics::TIMER_LAG_SECONDS, LAG_BUCKETS),
    ];
    rules.into_iter().fold(builder, |b, (name, values)| {
        #[allow(
            clippy::expect_used,
            reason = "only an empty bucket list is refused, and these constants are not empty"
        )]
        b.set_buckets_for_metric(Matcher::Full(name.to_string()), values)
            .expect("non-empty bucket list")
    })
}

/// Help texts of every series of the process, and the node gauges' starting values.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram, gauge};
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, route template and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time from a request's arrival until its response, by method and route template"
    );
    describe_gauge!(UP, "1 while this Steadyflow process serves");
    describe_gauge!(
        DB_UP,
        "1 when the database answered this node's last ping, else 0"
    );
    describe_gauge!(
        REDIS_UP,
        "1 when Redis answered this node's last ping; 0 when it is down or not configured"
    );
    describe_gauge!(
        INSTANCES_ACTIVE,
        "Process instances not ended (active or stopped at an incident), whole database"
    );
    describe_gauge!(
        MODE,
        "1 for the service mode in force on this node (normal, read-only, core-only, offline), 0 for the others"
    );
    describe_gauge!(TASKS_OPEN, "Open user tasks, whole database");
    describe_gauge!(
        EXTERNAL_TASKS_OPEN,
        "Open external tasks (waiting for or locked by a worker), whole database"
    );
    describe_gauge!(
        GAUGES_REFRESHED,
        Unit::Seconds,
        "Unix time at which the database gauges were last counted"
    );
    gauge!(UP).set(1.0);
    gauge!(DB_UP).set(0.0);
    gauge!(REDIS_UP).set(0.0);
    steadyflow_engine::metrics::describe_metrics();
    steadyflow_store::gauges::describe_metrics();
}

/// Sets `steadyflow_redis_up` (the Redis cache's hook: call it on every ping or
/// connection event; 0 is the value while no cache is configured).
pub fn set_redis_up(up: bool) {
    metrics::gauge!(REDIS_UP).set(if up { 1.0 } else { 0.0 });
}

/// Sets `steadyflow_db_up` (`/health`, `/ready` and every scrape ping the database).
pub fn set_db_up(up: bool) {
    metrics::gauge!(DB_UP).set(if up { 1.0 } else { 0.0 });
}

/// Counts one answered request.
pub(crate) fn record_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    let (method, route) = (method.to_string(), route.to_string());
    metrics::counter!(HTTP_REQUESTS, "method" => method.clone(), "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route)
        .record(elapsed.as_secs_f64());
}

/// When the database gauges were last counted, shared by the scrapes of one node.
#[derive(Default)]
pub(crate) struct GaugeClock {
    last: tokio::sync::Mutex<Option<Instant>>,
}

/// How long counting the database gauges may take before a scrape gives up on them
/// (and serves the values of the last count).
const COUNT_TIMEOUT: Duration = Duration::from_secs(5);

impl GaugeClock {
    /// Counts the database gauges again when the last count is older than `every`. A
    /// scrape that finds another one counting does not wait for it: it serves what is
    /// there. A failed count keeps the previous values (and is logged).
    pub async fn refresh(&self, engine: &Engine, every: Duration) {
        let Ok(mut last) = self.last.try_lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        let counted = tokio::time::timeout(COUNT_TIMEOUT, engine.store().live_counts()).await;
        match counted {
            Ok(Ok(Some(c))) => {
                metrics::gauge!(INSTANCES_ACTIVE).set(c.running_instances as f64);
                metrics::gauge!(TASKS_OPEN).set(c.open_tasks as f64);
                metrics::gauge!(EXTERNAL_TASKS_OPEN).set(c.open_external_tasks as f64);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                metrics::gauge!(GAUGES_REFRESHED).set(now.as_secs_f64());
                *last = Some(Instant::now());
            }
            Ok(Ok(None)) => *last = Some(Instant::now()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "metrics: counting the database gauges failed")
            }
            Err(_) => {
                tracing::warn!(timeout = ?COUNT_TIMEOUT, "metrics: counting the database gauges timed out")
            }
        }
    }
}

/// Compares a presented secret with the configured one in time independent of where
/// they differ: both are hashed to 32 bytes first, so neither length nor content leaks.
pub(crate) fn secret_matches(presented: &str, expected_digest: &[u8; 32]) -> bool {
    use sha2::{Digest, Sha256};
    let got: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let diff = got
        .iter()
        .zip(expected_digest)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_digest() {
        use sha2::{Digest, Sha256};
        let digest: [u8; 32] = Sha256::digest(b"s3cret").into();
        assert!(secret_matches("s3cret", &digest));
        assert!(!secret_matches("s3cres", &digest));
        assert!(!secret_matches("", &digest));
        assert!(!secret_matches("s3cret ", &digest));
    }
}
