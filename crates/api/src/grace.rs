//! Short database outages cost nothing: a request whose answer would be 503
//! `unavailable` (the database cannot be reached, or refused the connection) is run
//! again, with back-off, until the configured grace (default 10 s) has passed since it
//! arrived; only then does the client hear the 503. A restart of PostgreSQL or a
//! failover inside the grace is a slow answer, not a failed one.
//!
//! The layer sits outside authentication (token look-ups need the database too) and
//! outside the idempotency layer: every attempt carries the same [`Attempt`] id, so a
//! keyed request re-enters the claim it made on an earlier attempt instead of waiting
//! for itself.
//!
//! A write retried after its commit was cut off (the database went away between
//! `COMMIT` and its acknowledgement) may run twice; a client that cannot have that sends
//! an `Idempotency-Key`.

use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::Code;

/// Default of [`crate::Degraded::grace`].
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// The largest body a request may have to be retried (axum's default body limit);
/// larger ones run once.
const MAX_BODY: usize = 2 * 1024 * 1024;

/// How long past the grace a request keeps retrying: the node takes its automatic mode
/// once the outage has lasted the grace (noticed by a probe every 0.5 s), and a request
/// that met the outage's first moment should meet that mode (be spooled), not fail.
const MODE_MARGIN: Duration = Duration::from_millis(1500);

/// One id for every attempt of a request (the idempotency layer's claim owner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt(pub String);

fn unavailable(r: &Response) -> bool {
    r.extensions().get::<Code>() == Some(&Code::Unavailable)
}

/// The route layer: runs the request again while it answers `unavailable`, until the
/// grace has passed.
pub(crate) async fn grace(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let grace = state.degraded.grace;
    req.extensions_mut()
        .insert(Attempt(uuid::Uuid::now_v7().to_string()));
    if grace.is_zero() {
        return next.run(req).await;
    }
    let deadline = tokio::time::Instant::now() + grace + MODE_MARGIN;
    let (parts, body) = req.into_parts();
    let Ok(body) = to_bytes(body, MAX_BODY).await else {
        return crate::error::ApiError::new(Code::PayloadTooLarge, "the request body is too large")
            .into_response();
    };
    let mut pause = Duration::from_millis(25);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let attempt = Request::from_parts(parts.clone(), Body::from(body.clone()));
        let response = next.clone().run(attempt).await;
        let now = tokio::time::Instant::now();
        if unavailable(&response)
            && attempts > 1
            && parts.extensions.get::<crate::spool::Replayed>().is_none()
        {
            // The node may have changed its mode meanwhile (the database is gone:
            // offline, or refuses writes: read-only): answer as that mode does.
            let again = Request::from_parts(parts.clone(), Body::from(body.clone()));
            if let Err(answer) = crate::modes::answer_for_mode(&state, again).await {
                return answer;
            }
        }
        if !unavailable(&response) || now + pause >= deadline {
            if attempts > 1 {
                tracing::info!(
                    attempts,
                    status = response.status().as_u16(),
                    "request retried through a database outage"
                );
            }
            return response;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}
