//! What every request passes on its way in and out: a request id (taken from
//! `X-Request-Id` when it is sane, else made), a tracing span carrying it, the HTTP
//! series of [`crate::metrics`], and one debug log line.
//!
//! [`Observability`] holds what the probes and `/metrics` need besides the engine: the
//! optional `/metrics` token, how often the database gauges are counted, and the Redis
//! probe once a cache is configured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::metrics::{GaugeClock, UNMATCHED_ROUTE};

/// The request id header, read and echoed.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest request id accepted from a client; a longer one is replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A request's id, in its extensions (handlers may read it with `Extension<RequestId>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// A component `/health` pings besides the database (the Redis cache).
#[async_trait::async_trait]
pub trait Probe: Send + Sync + 'static {
    /// One cheap round trip; `Err` with a short reason fit for `/health` (details
    /// belong in the log).
    async fn ping(&self) -> Result<(), String>;
}

/// Settings of [`Observability`].
#[derive(Clone)]
pub struct ObservabilityOptions {
    /// When set, `/metrics` requires `Authorization: Bearer <token>`.
    pub metrics_token: Option<String>,
    /// The database gauges are counted at most this often (scrapes in between serve the
    /// last count).
    pub gauge_refresh: Duration,
    /// The Redis cache's probe: `/health` then lists a `redis` component, and it
    /// drives `steadyflow_redis_up`.
    pub redis: Option<Arc<dyn Probe>>,
}

impl Default for ObservabilityOptions {
    fn default() -> Self {
        ObservabilityOptions {
            metrics_token: None,
            gauge_refresh: Duration::from_secs(15),
            redis: None,
        }
    }
}

/// What the probes and `/metrics` share. Cheap to clone.
#[derive(Clone, Default)]
pub struct Observability {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    token_digest: Option<[u8; 32]>,
    gauge_refresh: Duration,
    redis: Option<Arc<dyn Probe>>,
    gauges: GaugeClock,
}

impl Observability {
    pub fn new(options: ObservabilityOptions) -> Self {
        use sha2::{Digest, Sha256};
        let token_digest = options
            .metrics_token
            .filter(|t| !t.is_empty())
            .map(|t| Sha256::digest(t.as_bytes()).into());
        Observability {
            inner: Arc::new(Inner {
                token_digest,
                gauge_refresh: options.gauge_refresh,
                redis: options.redis,
                gauges: GaugeClock::default(),
            }),
        }
    }

    pub(crate) fn token_digest(&self) -> Option<&[u8; 32]> {
        self.inner.token_digest.as_ref()
    }

    pub(crate) fn redis(&self) -> Option<&Arc<dyn Probe>> {
        self.inner.redis.as_ref()
    }

    pub(crate) fn gauge_refresh(&self) -> Duration {
        self.inner.gauge_refresh
    }

    pub(crate) fn gauges(&self) -> &GaugeClock {
        &self.inner.gauges
    }
}

/// Whether a client's request id may be used as is: 1 to [`MAX_REQUEST_ID_LEN`]
/// visible ASCII characters (no spaces or control characters, so it cannot forge log
/// lines or headers).
pub fn is_sane_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The route template a response was produced under (put there by [`mark_route`]).
#[derive(Clone)]
struct RouteTemplate(MatchedPath);

/// Inside routing (a route layer): names the matched route template in the request's
/// span and hands it out to [`observe`] with the response.
pub(crate) async fn mark_route(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    if let Some(r) = &route {
        tracing::Span::current().record("route", r.as_str());
    }
    let mut response = next.run(req).await;
    if let Some(r) = route {
        response.extensions_mut().insert(RouteTemplate(r));
    }
    response
}

/// Outermost layer: request id, span, HTTP metrics, log line.
pub(crate) async fn observe(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_sane_request_id(v))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %method,
        route = tracing::field::Empty,
    );
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let route = response.extensions_mut().remove::<RouteTemplate>();
    let route = route.as_ref().map_or(UNMATCHED_ROUTE, |r| r.0.as_str());
    crate::metrics::record_request(method.as_str(), route, status, elapsed);
    span.in_scope(|| {
        tracing::debug!(
            route,
            status,
            elapsed_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    });
    // Sane ids and uuids are visible ASCII: always a valid header value.
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_bounded_visible_ascii() {
        assert!(is_sane_request_id("abc-123_XYZ.7"));
        assert!(is_sane_request_id(&"a".repeat(MAX_REQUEST_ID_LEN)));
        assert!(!is_sane_request_id(&"a".repeat(MAX_REQUEST_ID_LEN + 1)));
        assert!(!is_sane_request_id(""));
        assert!(!is_sane_request_id("two words"));
        assert!(!is_sane_request_id("line\nbreak"));
        assert!(!is_sane_request_id("caf\u{e9}"));
    }
}
