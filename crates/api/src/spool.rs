//! The offline spool: write requests accepted while the service is `offline`, kept on
//! this node's disk, and replayed in arrival order, once each, when the mode returns to
//! `normal`.
//!
//! One file per request, `<id>.req` in the spool directory, written to a temporary
//! name, fsynced, renamed and the directory fsynced before the client hears 202: a
//! request answered 202 survives `kill -9` and power loss. The id starts with a
//! zero-padded sequence number (arrival order is name order) followed by 128 random
//! bits (the id is the capability to ask for the outcome: `GET /api/v1/spool/{id}`).
//!
//! Replaying runs the request through the API as it arrived (its `Authorization` is
//! checked then; a revoked token gets its 401), with `Idempotency-Key: spool-<id>`
//! unless the client sent one: a replay cut short by a crash and run again after the
//! restart gets the stored answer instead of doing the work twice. The answer is kept in
//! `<id>.out` before `<id>.req` is removed (neither fsynced: a `.req` a power loss
//! brings back is replayed into the answer the database keeps for its key). A replay answered 5xx (the
//! database went away again) stops the round; the rest wait for the next one, in order.
//!
//! The files hold the requests' bearer tokens: the directory is created `0700`, the
//! files `0600`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use steadyflow_store::Timestamp;
use utoipa::ToSchema;

/// Request headers kept with a spooled request (everything else is dropped).
const KEPT_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "accept",
    "accept-language",
    "idempotency-key",
    "x-request-id",
];

/// Marks a request the spool replays (the mode gate lets it through).
#[derive(Debug, Clone, Copy)]
pub struct Replayed;

/// Largest answer body kept in an outcome.
const MAX_OUTCOME_BODY: usize = 1024 * 1024;

/// A request as spooled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpooledRequest {
    pub id: String,
    pub received_at: DateTime<Utc>,
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub headers: BTreeMap<String, String>,
    /// Base64.
    pub body: String,
}

/// Where a spooled request stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpoolStatus {
    pub id: String,
    /// `queued` (waiting for the service to return) or `replayed`.
    pub state: SpoolState,
    pub received_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_at: Option<DateTime<Utc>>,
    /// The replayed request's answer: its status and body (JSON when it was JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub answer: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SpoolState {
    Queued,
    Replayed,
}

/// The spool of this node. Cheap to clone.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    next: AtomicU64,
    /// Requests waiting (`.req` files), counted at open and kept up to date.
    waiting: std::sync::atomic::AtomicUsize,
    max_entries: usize,
    /// One replay round at a time.
    replaying: tokio::sync::Mutex<()>,
}

/// Why a request was not spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({0} requests wait)")]
    Full(usize),
    #[error("spool I/O: {0}")]
    Io(#[from] io::Error),
}

fn is_valid_id(id: &str) -> bool {
    let Some((seq, random)) = id.split_once('-') else {
        return false;
    };
    seq.len() == 12
        && seq.bytes().all(|b| b.is_ascii_digit())
        && random.len() == 32
        && random.bytes().all(|b| b.is_ascii_hexdigit())
}

fn random_hex() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `bytes` to `path` durably: a temporary file, fsynced, renamed, and the
/// directory fsynced.
fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

impl Spool {
    /// Opens (creating it `0700`) the spool in `dir`; numbering continues after the
    /// highest id found. At most `max_entries` requests wait at once.
    pub fn open(dir: impl Into<PathBuf>, max_entries: usize) -> io::Result<Spool> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        }
        let mut highest = 0;
        let mut waiting = 0;
        for entry in fs::read_dir(&dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                // A write cut short: never acknowledged.
                let _ = fs::remove_file(dir.join(name.as_ref()));
                continue;
            }
            if let Some(seq) = name.get(..12).and_then(|s| s.parse::<u64>().ok()) {
                highest = highest.max(seq);
            }
            if name.ends_with(".req") {
                waiting += 1;
            }
        }
        Ok(Spool {
            inner: Arc::new(Inner {
                dir,
                next: AtomicU64::new(highest + 1),
                waiting: std::sync::atomic::AtomicUsize::new(waiting),
                max_entries,
                replaying: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// How many requests wait.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::SeqCst)
    }

    /// Ids of the requests waiting, in arrival order.
    pub fn queued(&self) -> io::Result<Vec<String>> {
        let mut ids: Vec<String> = Vec::new();
        for entry in fs::read_dir(&self.inner.dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".req") {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Keeps a request durably; returns its id once it is on disk.
    pub async fn accept(
        &self,
        method: &Method,
        uri: &str,
        headers: &HeaderMap,
        body: &[u8],
        now: Timestamp,
    ) -> Result<String, SpoolError> {
        let waiting = self.inner.waiting.load(Ordering::SeqCst);
        if waiting >= self.inner.max_entries {
            return Err(SpoolError::Full(waiting));
        }
        let seq = self.inner.next.fetch_add(1, Ordering::SeqCst);
        let id = format!("{seq:012}-{}", random_hex()?);
        let kept = KEPT_HEADERS
            .iter()
            .filter_map(|name| {
                headers
                    .get(*name)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| (name.to_string(), v.to_string()))
            })
            .collect();
        let request = SpooledRequest {
            id: id.clone(),
            received_at: now,
            method: method.as_str().to_string(),
            uri: uri.to_string(),
            headers: kept,
            body: B64.encode(body),
        };
        let bytes = serde_json::to_vec(&request).map_err(io::Error::other)?;
        let dir = self.inner.dir.clone();
        let path = dir.join(format!("{id}.req"));
        tokio::task::spawn_blocking(move || write_durably(&dir, &path, &bytes))
            .await
            .map_err(io::Error::other)??;
        self.inner.waiting.fetch_add(1, Ordering::SeqCst);
        Ok(id)
    }

    /// Where request `id` stands; `None` for an id this spool never gave out (or whose
    /// outcome was removed).
    pub fn status(&self, id: &str) -> io::Result<Option<SpoolStatus>> {
        if !is_valid_id(id) {
            return Ok(None);
        }
        let out = self.inner.dir.join(format!("{id}.out"));
        let read_out = || match fs::read(&out) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        };
        if let Some(done) = read_out()? {
            return Ok(Some(done));
        }
        let req = self.inner.dir.join(format!("{id}.req"));
        match fs::read(&req) {
            Ok(bytes) => {
                let r: SpooledRequest = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
                Ok(Some(SpoolStatus {
                    id: r.id,
                    state: SpoolState::Queued,
                    received_at: r.received_at,
                    replayed_at: None,
                    status: None,
                    answer: None,
                }))
            }
            // Replayed between the two reads: the outcome is written before the request
            // is removed, so it is there now.
            Err(e) if e.kind() == io::ErrorKind::NotFound => read_out(),
            Err(e) => Err(e),
        }
    }

    /// Replays every queued request through `router`, in arrival order; stops at the
    /// first answered 5xx (it stays queued, with those after it). Returns how many were
    /// replayed.
    pub async fn replay(&self, router: &Router, now: impl Fn() -> Timestamp) -> io::Result<usize> {
        self.replay_up_to(router, usize::MAX, now).await
    }

    /// [`replay`](Self::replay) of the first `limit` queued requests at most.
    pub async fn replay_up_to(
        &self,
        router: &Router,
        limit: usize,
        now: impl Fn() -> Timestamp,
    ) -> io::Result<usize> {
        let _round = self.inner.replaying.lock().await;
        let mut done = 0;
        for id in self.queued()?.into_iter().take(limit) {
            let dir = self.inner.dir.clone();
            let req_path = dir.join(format!("{id}.req"));
            let out_path = dir.join(format!("{id}.out"));
            if out_path.exists() {
                // Replayed before a crash cut the clean-up short.
                fs::remove_file(&req_path)?;
                self.inner.waiting.fetch_sub(1, Ordering::SeqCst);
                done += 1;
                continue;
            }
            let spooled: SpooledRequest =
                serde_json::from_slice(&fs::read(&req_path)?).map_err(io::Error::other)?;
            let request = rebuild(&spooled)?;
            let response = match tower::ServiceExt::oneshot(router.clone(), request).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let status = response.status();
            if status.is_server_error() {
                tracing::warn!(
                    id,
                    status = status.as_u16(),
                    "spool replay answered 5xx; the rest waits"
                );
                break;
            }
            let body = to_bytes(response.into_body(), MAX_OUTCOME_BODY)
                .await
                .unwrap_or_default();
            // An earlier replay of this request still holds its key (this node died
            // while running it): wait until its lease runs out, not record a refusal.
            if status == axum::http::StatusCode::CONFLICT
                && serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|b| {
                    b["error"]["code"] == crate::error::Code::IdempotencyKeyInUse.as_str()
                })
            {
                tracing::warn!(
                    id,
                    "a spooled request's earlier replay still holds its key; the rest waits"
                );
                break;
            }
            let answer = serde_json::from_slice(&body).ok().or_else(|| {
                (!body.is_empty())
                    .then(|| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()))
            });
            let outcome = SpoolStatus {
                id: id.clone(),
                state: SpoolState::Replayed,
                received_at: spooled.received_at,
                replayed_at: Some(now()),
                status: Some(status.as_u16()),
                answer,
            };
            let bytes = serde_json::to_vec(&outcome).map_err(io::Error::other)?;
            // Not fsynced: the database holds the answer under the request's idempotency
            // key (24 h), so a `.req` that comes back after a power loss is replayed
            // into that stored answer, not run again.
            tokio::task::spawn_blocking(move || {
                let tmp = out_path.with_extension("tmp");
                fs::write(&tmp, &bytes)?;
                fs::rename(&tmp, &out_path)?;
                fs::remove_file(&req_path)
            })
            .await
            .map_err(io::Error::other)??;
            self.inner.waiting.fetch_sub(1, Ordering::SeqCst);
            tracing::info!(id, status = status.as_u16(), "spooled request replayed");
            done += 1;
        }
        Ok(done)
    }
}

/// The request as it arrived, with `Idempotency-Key: spool-<id>` unless it had one.
fn rebuild(s: &SpooledRequest) -> io::Result<Request<Body>> {
    let body = B64.decode(&s.body).map_err(io::Error::other)?;
    let method = Method::from_bytes(s.method.as_bytes()).map_err(io::Error::other)?;
    let mut b = Request::builder().method(method).uri(&s.uri);
    let headers = b
        .headers_mut()
        .ok_or_else(|| io::Error::other("bad spooled request"))?;
    for (k, v) in &s.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v))
        {
            headers.insert(name, value);
        }
    }
    if !headers.contains_key(crate::idempotency::HEADER) {
        let key = HeaderValue::from_str(&format!("spool-{}", s.id)).map_err(io::Error::other)?;
        headers.insert(crate::idempotency::HEADER, key);
    }
    let mut request = b.body(Body::from(body)).map_err(io::Error::other)?;
    request.extensions_mut().insert(Replayed);
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_a_sequence_and_random_bits() {
        assert!(is_valid_id("000000000042-0123456789abcdef0123456789abcdef"));
        assert!(!is_valid_id("42-0123456789abcdef0123456789abcdef"));
        assert!(!is_valid_id("000000000042-../../etc/passwd"));
        assert!(!is_valid_id("000000000042"));
    }

    #[tokio::test]
    async fn accepted_requests_survive_a_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool"), 10).unwrap();
        let now = chrono::Utc::now();
        let mut ids = Vec::new();
        for i in 0..3 {
            let mut h = HeaderMap::new();
            h.insert("authorization", HeaderValue::from_static("Bearer x"));
            h.insert("cookie", HeaderValue::from_static("dropped"));
            let body = format!("{{\"n\":{i}}}");
            ids.push(
                spool
                    .accept(&Method::POST, "/api/v1/x", &h, body.as_bytes(), now)
                    .await
                    .unwrap(),
            );
        }
        drop(spool);
        let spool = Spool::open(dir.path().join("spool"), 10).unwrap();
        assert_eq!(spool.queued().unwrap(), ids, "arrival order");
        let st = spool.status(&ids[1]).unwrap().unwrap();
        assert_eq!(st.state, SpoolState::Queued);
        let next = spool
            .accept(&Method::POST, "/api/v1/x", &HeaderMap::new(), b"", now)
            .await
            .unwrap();
        assert!(next > ids[2], "numbering continues after a reopen");
        let raw = fs::read_to_string(spool.dir().join(format!("{}.req", ids[0]))).unwrap();
        assert!(
            raw.contains("authorization") && !raw.contains("cookie"),
            "{raw}"
        );
    }

    #[tokio::test]
    async fn a_full_spool_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1).unwrap();
        let now = chrono::Utc::now();
        spool
            .accept(&Method::POST, "/a", &HeaderMap::new(), b"", now)
            .await
            .unwrap();
        assert!(matches!(
            spool
                .accept(&Method::POST, "/a", &HeaderMap::new(), b"", now)
                .await,
            Err(SpoolError::Full(1))
        ));
    }
}
