//! `Idempotency-Key` on every write: the same key (of the same caller) gives the same
//! answer, and the work is done once.
//!
//! A write carrying the header claims the key in the database
//! ([`steadyflow_store::idempotency`]) before its handler runs, and stores the answer
//! afterwards. Sent again, it gets the stored answer (with `Idempotent-Replayed:
//! true`) and nothing runs. Sent again while the first is still running (two concurrent
//! requests with one key), the second waits for the first's answer up to
//! [`WAIT_FOR_RUNNING`], then answers 409 `idempotency_key_in_use`. The same key with a
//! different method, path or body answers 422 `idempotency_key_reused`.
//!
//! Keys are scoped to the caller (two users may use the same key), kept for
//! [`RETENTION`] (24 h), and only answers below 500 are stored: a 5xx (`busy`,
//! `unavailable`, `internal`) releases the key, so a retry runs the request again.
//! A node that dies while running a request holds its key until the lease
//! ([`LEASE`]) runs out; then a retry takes the key over and runs the request again.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use steadyflow_engine::Clock;
use steadyflow_store::idempotency::{Claim, IdempotencyStore, KeyClaim, StoredAnswer};

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, Code};

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// Set on an answer that was replayed from a stored one.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 255;
/// How long keys are kept.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How long a running request holds its key before another may take it over.
pub const LEASE: Duration = Duration::from_secs(60);
/// How long a request waits for another running with the same key.
pub const WAIT_FOR_RUNNING: Duration = Duration::from_secs(10);
/// The largest body a keyed request may have (axum's default body limit).
const MAX_BODY: usize = 2 * 1024 * 1024;
/// Answers larger than this are not stored (the key is released instead).
const MAX_STORED_ANSWER: usize = 1024 * 1024;

/// Whether `key` may be used: 1 to [`MAX_KEY_LEN`] visible ASCII characters.
pub fn is_valid_key(key: &str) -> bool {
    (1..=MAX_KEY_LEN).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The stored key: the caller and their key, hashed (so neither length nor characters
/// of a name can make two callers' keys meet).
pub fn scoped_key(caller: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(caller.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    hex(&h.finalize())
}

fn fingerprint(method: &Method, uri: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(method.as_str().as_bytes());
    h.update([0]);
    h.update(uri.as_bytes());
    h.update([0]);
    h.update(body);
    hex(&h.finalize())
}

/// A route layer inside authentication (it scopes keys to the caller): writes with an
/// `Idempotency-Key` run at most once per key.
pub(crate) async fn keyed(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !is_write(req.method()) {
        return next.run(req).await;
    }
    let Some(key) = req.headers().get(HEADER) else {
        return next.run(req).await;
    };
    let Some(key) = key.to_str().ok().filter(|k| is_valid_key(k)) else {
        return ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
        ))
        .into_response();
    };
    // Public routes (logging in) have no caller to scope a key to: not keyed.
    let Some(caller) = req.extensions().get::<Principal>().map(|p| p.name.clone()) else {
        return next.run(req).await;
    };
    let key = scoped_key(&caller, key);
    let (parts, body) = req.into_parts();
    let Ok(body) = to_bytes(body, MAX_BODY).await else {
        return ApiError::new(Code::PayloadTooLarge, "the request body is too large")
            .into_response();
    };
    let uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    let print = fingerprint(&parts.method, &uri, &body);
    // Every attempt of one request (the outage grace retries) is one owner.
    let owner = parts
        .extensions
        .get::<crate::grace::Attempt>()
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), |a| a.0.clone());
    let keys = state.degraded.keys.clone();
    let clock = state.engine.clock().clone();
    match claim(keys.as_ref(), clock.as_ref(), &key, &print, &owner).await {
        Ok(Claim::Claimed) => {}
        Ok(Claim::Done(answer)) => return replay(answer),
        Ok(Claim::Running) => {
            return ApiError::new(
                Code::IdempotencyKeyInUse,
                "a request with this Idempotency-Key is still running; retry later",
            )
            .with_retry_after(1)
            .into_response();
        }
        Ok(Claim::Mismatch) => {
            return ApiError::new(
                Code::IdempotencyKeyReused,
                "this Idempotency-Key was used for a different request (method, path or body)",
            )
            .into_response();
        }
        Err(e) => return ApiError::from(e).into_response(),
    }
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    settle(keys, clock.as_ref(), &key, &owner, response).await
}

/// Claims `key`; while another request runs with it, waits for its answer up to
/// [`WAIT_FOR_RUNNING`].
async fn claim(
    keys: &dyn IdempotencyStore,
    clock: &dyn Clock,
    key: &str,
    print: &str,
    owner: &str,
) -> steadyflow_store::Result<Claim> {
    let deadline = tokio::time::Instant::now() + WAIT_FOR_RUNNING;
    let mut pause = Duration::from_millis(5);
    loop {
        let now = clock.now();
        let lease = chrono::Duration::from_std(LEASE).unwrap_or(chrono::Duration::MAX);
        let claim = KeyClaim {
            key,
            fingerprint: print,
            owner,
            now,
            lease_until: now + lease,
        };
        match keys.claim_key(&claim).await? {
            Claim::Running if tokio::time::Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            other => return Ok(other),
        }
    }
}

/// Stores the answer of a claimed key (or releases the key after a 5xx) and hands the
/// answer on.
async fn settle(
    keys: Arc<dyn IdempotencyStore>,
    clock: &dyn Clock,
    key: &str,
    owner: &str,
    response: Response,
) -> Response {
    let status = response.status();
    if status.is_server_error() {
        if let Err(e) = keys.release_key(key, owner).await {
            tracing::warn!(error = %e, "cannot release an idempotency key");
        }
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = match to_bytes(body, MAX_STORED_ANSWER).await {
        Ok(b) => b,
        Err(_) => {
            let _ = keys.release_key(key, owner).await;
            tracing::warn!("an answer too large to keep for its idempotency key");
            return ApiError::internal().into_response();
        }
    };
    let text = |name| {
        parts
            .headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let answer = StoredAnswer {
        status: status.as_u16(),
        content_type: text(header::CONTENT_TYPE),
        location: text(header::LOCATION),
        body: String::from_utf8_lossy(&bytes).into_owned(),
    };
    match keys.finish_key(key, owner, &answer, clock.now()).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!("an idempotency key was taken over while its request ran"),
        Err(e) => tracing::warn!(error = %e, "cannot store the answer of an idempotency key"),
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// The stored answer as a response.
fn replay(answer: StoredAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut response = (status, answer.body).into_response();
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    for (name, value) in [
        (header::CONTENT_TYPE, answer.content_type),
        (header::LOCATION, answer.location),
    ] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(name, v);
        }
    }
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}

/// Removes keys older than [`RETENTION`], hourly (and once at start).
pub async fn prune(keys: Arc<dyn IdempotencyStore>, clock: Arc<dyn Clock>) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let keep = chrono::Duration::from_std(RETENTION).unwrap_or(chrono::Duration::MAX);
        match keys.prune_keys(clock.now() - keep).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "idempotency keys pruned"),
            Err(e) => tracing::warn!(error = %e, "cannot prune idempotency keys"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_scoped_to_their_caller() {
        assert_ne!(scoped_key("ann", "k"), scoped_key("bob", "k"));
        assert_ne!(scoped_key("a:b", "c"), scoped_key("a", "b:c"));
        assert_eq!(scoped_key("ann", "k").len(), 64);
    }

    #[test]
    fn keys_are_bounded_visible_ascii() {
        assert!(is_valid_key("order-4711"));
        assert!(!is_valid_key(""));
        assert!(!is_valid_key("two words"));
        assert!(!is_valid_key(&"k".repeat(MAX_KEY_LEN + 1)));
    }
}
