//! The service mode on this node: what it is ([`Modes`]), how it follows the database
//! ([`follow`]), and what it refuses ([`gate`]).
//!
//! The mode is one row in the database ([`steadyflow_store::mode`]), so every node
//! sharing it agrees: each node reads the row every [`POLL_INTERVAL`] and takes a
//! change over within about that time; the node that changes it (`PUT
//! /api/v1/system/mode`) at once. A mode with `until` turns back to `normal` by itself
//! once that time has passed (computed by every node; the first to notice writes the
//! `normal` row, journaled with `set_by` `expiry`).
//!
//! | mode | refused with 503 |
//! |---|---|
//! | `normal` | nothing |
//! | `read-only` | every write (`read_only`); reads work, the timer driver waits |
//! | `core-only` | deployments, and listings past their first page or larger than the default page (`core_only`) |
//! | `offline` | everything under `/api/v1` (`offline`) |
//!
//! Never refused: the probes and `/metrics` (outside `/api/v1`), `GET|PUT
//! /api/v1/system/mode` (to change the mode back), `POST /api/v1/auth/token` (logging
//! in, to get the token that does it) and `GET /api/v1/openapi.json`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use steadyflow_engine::Clock;
use steadyflow_store::mode::{Mode, SYSTEM_MODE_KEY, SystemModeRecord};
use steadyflow_store::users::{self, PlainWrite};
use steadyflow_store::{Store, StoreError, Timestamp};
use tokio::sync::watch;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, Code};

/// How often a node reads the mode row.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// `Retry-After` (seconds) of a refused request when the mode has no `until`.
pub const DEFAULT_RETRY_AFTER_SECS: u32 = 30;

/// The `set_by` of the row a node writes when a mode's `until` has passed.
pub const EXPIRY: &str = "expiry";

/// The mode in force on this node, and what it was set with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModeView {
    #[schema(value_type = ModeName)]
    pub mode: Mode,
    /// Why (shown to clients whose requests the mode refuses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the mode ends by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// Who set it: a user, `cli:<name>`, `expiry`; absent while no mode was ever set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_at: Option<DateTime<Utc>>,
}

/// The four modes, as the API names them (the schema of [`Mode`]).
#[derive(Serialize, ToSchema)]
#[allow(dead_code, reason = "only its schema is used")]
pub enum ModeName {
    #[serde(rename = "normal")]
    Normal,
    #[serde(rename = "read-only")]
    ReadOnly,
    #[serde(rename = "core-only")]
    CoreOnly,
    #[serde(rename = "offline")]
    Offline,
}

impl Default for ModeView {
    fn default() -> Self {
        ModeView {
            mode: Mode::Normal,
            reason: None,
            until: None,
            set_by: None,
            set_at: None,
        }
    }
}

impl ModeView {
    /// What `record` means at `now` (`normal` once its `until` passed).
    pub fn of(record: Option<&SystemModeRecord>, now: Timestamp) -> ModeView {
        let Some(r) = record else {
            return ModeView::default();
        };
        let (mode, expired) = r.effective(now);
        if expired {
            return ModeView {
                mode,
                reason: None,
                until: None,
                set_by: Some(EXPIRY.to_string()),
                set_at: r.until,
            };
        }
        ModeView {
            mode,
            reason: r.reason.clone(),
            until: r.until,
            set_by: Some(r.set_by.clone()),
            set_at: Some(r.set_at),
        }
    }

    /// Whether the timer driver fires timers in this mode.
    pub fn runs_timers(&self) -> bool {
        matches!(self.mode, Mode::Normal | Mode::CoreOnly)
    }
}

/// Longest `reason` accepted (it is shown on every refused request and the status page).
pub const MAX_REASON_LEN: usize = 500;

/// The record of a mode someone (`by`) sets at `now`, checked: a blank reason is none,
/// a reason is at most [`MAX_REASON_LEN`] characters. An `until` already past ends the
/// mode at once (back to `normal`).
pub fn checked_record(
    mode: Mode,
    reason: Option<String>,
    until: Option<Timestamp>,
    by: &str,
    now: Timestamp,
) -> Result<SystemModeRecord, String> {
    let reason = reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    if reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON_LEN)
    {
        return Err(format!("reason is longer than {MAX_REASON_LEN} characters"));
    }
    Ok(SystemModeRecord::new(mode, reason, until, by, now))
}

/// This node's mode. Cheap to clone; every clone sees the same mode.
#[derive(Clone)]
pub struct Modes {
    tx: Arc<watch::Sender<ModeView>>,
    /// The mode stored in the database, and the one this node took by itself (the
    /// database gone or refusing writes); the stronger of the two is in force.
    both: Arc<std::sync::Mutex<(ModeView, Option<ModeView>)>>,
}

impl Default for Modes {
    fn default() -> Self {
        Modes::new()
    }
}

/// How much a mode refuses, to pick the stronger of a stored and an automatic mode.
fn strength(mode: Mode) -> u8 {
    match mode {
        Mode::Normal => 0,
        Mode::CoreOnly => 1,
        Mode::ReadOnly => 2,
        Mode::Offline => 3,
    }
}

/// `set_by` of a mode a node took by itself.
pub const AUTO: &str = "auto";

impl Modes {
    /// `normal` until told otherwise.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(ModeView::default());
        set_metric(Mode::Normal);
        Modes {
            tx: Arc::new(tx),
            both: Arc::new(std::sync::Mutex::new((ModeView::default(), None))),
        }
    }

    pub fn current(&self) -> ModeView {
        self.tx.borrow().clone()
    }

    /// Changes as they happen (for background work that waits out a mode).
    pub fn subscribe(&self) -> watch::Receiver<ModeView> {
        self.tx.subscribe()
    }

    /// Takes `view` over as the stored mode (logged and counted when it changes what
    /// is in force).
    pub fn observe(&self, view: ModeView) {
        self.update(|both| both.0 = view);
    }

    /// The mode this node takes by itself (`set_by` [`AUTO`]), or `None` to leave it.
    pub fn set_auto(&self, auto: Option<(Mode, String)>) {
        let auto = auto.map(|(mode, reason)| ModeView {
            mode,
            reason: Some(reason),
            until: None,
            set_by: Some(AUTO.to_string()),
            set_at: Some(chrono::Utc::now()),
        });
        self.update(|both| {
            // A mode taken already keeps its first reason and time.
            if both.1.as_ref().map(|a| a.mode) != auto.as_ref().map(|a| a.mode) {
                both.1 = auto;
            }
        });
    }

    /// The mode this node took by itself, if it did.
    pub fn auto(&self) -> Option<ModeView> {
        self.both
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut (ModeView, Option<ModeView>))) {
        let view = {
            let mut both = self
                .both
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut both);
            match &both.1 {
                Some(auto) if strength(auto.mode) > strength(both.0.mode) => auto.clone(),
                _ => both.0.clone(),
            }
        };
        let old = self.tx.send_replace(view.clone());
        if old != view {
            set_metric(view.mode);
            tracing::warn!(
                mode = %view.mode,
                was = %old.mode,
                reason = view.reason.as_deref().unwrap_or(""),
                set_by = view.set_by.as_deref().unwrap_or(""),
                until = ?view.until,
                "service mode changed"
            );
        }
    }

    /// Reads the mode row and takes it over; a mode whose `until` passed is written
    /// back as `normal` (so the journal shows its end).
    pub async fn refresh(&self, store: &dyn Store, now: Timestamp) -> Result<ModeView, StoreError> {
        let record: Option<SystemModeRecord> = users::one(store, SYSTEM_MODE_KEY).await?;
        let view = ModeView::of(record.as_ref(), now);
        if let Some(r) = &record
            && r.effective(now).1
        {
            let normal = SystemModeRecord::new(Mode::Normal, None, None, EXPIRY, now);
            store
                .plain_write(now, vec![PlainWrite::put(&normal)?])
                .await?;
        }
        self.observe(view.clone());
        Ok(view)
    }

    /// Stores `record` (journaled) and takes it over on this node at once.
    pub async fn set(
        &self,
        store: &dyn Store,
        record: SystemModeRecord,
        now: Timestamp,
    ) -> Result<ModeView, StoreError> {
        store
            .plain_write(now, vec![PlainWrite::put(&record)?])
            .await?;
        let view = ModeView::of(Some(&record), now);
        self.observe(view.clone());
        Ok(view)
    }
}

/// Reads the mode row every [`POLL_INTERVAL`] until `stop` turns true. A failed read
/// keeps the mode this node has (logged once per failure streak).
pub async fn follow(
    modes: Modes,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failing = false;
    let mut every = tokio::time::interval(POLL_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        match modes.refresh(store.as_ref(), clock.now()).await {
            Ok(_) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot read the service mode; keeping the one this node has");
            }
            Err(_) => {}
        }
    }
}

/// `steadyflow_mode{mode}`: 1 for the mode in force, 0 for the others.
fn set_metric(mode: Mode) {
    for m in Mode::ALL {
        metrics::gauge!(crate::metrics::MODE, "mode" => m.as_str()).set(if *m == mode {
            1.0
        } else {
            0.0
        });
    }
}

/// Requests no mode refuses: `(method, route template)`.
const ALWAYS: &[(&str, &str)] = &[
    ("GET", "/api/v1/system/mode"),
    ("PUT", "/api/v1/system/mode"),
    ("POST", "/api/v1/auth/token"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/spool/{id}"),
];

/// List routes: paged with `limit` and `after` (`core-only` serves their first page).
const LISTINGS: &[&str] = &[
    "/api/v1/process-definitions",
    "/api/v1/process-instances",
    "/api/v1/process-instances/{id}/history",
    "/api/v1/tasks",
    "/api/v1/external-tasks",
    "/api/v1/incidents",
    "/api/v1/users",
    "/api/v1/users/{id}/tokens",
];

/// Not core work: deployments.
const NOT_CORE_WRITES: &[(&str, &str)] = &[("POST", "/api/v1/process-definitions")];

fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether a listing asks for more than a first default page: a cursor (`after`), or a
/// `limit` above [`crate::params::DEFAULT_LIMIT`].
fn beyond_first_page(query: Option<&str>) -> bool {
    let Some(query) = query else { return false };
    query.split('&').any(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "after" => !v.is_empty(),
            "limit" => v
                .parse::<u64>()
                .map_or(true, |n| n > u64::from(crate::params::DEFAULT_LIMIT)),
            _ => false,
        }
    })
}

/// What `mode` does with `method` on `route` (with `query`): `None` lets it through.
pub(crate) fn refusal(
    view: &ModeView,
    method: &Method,
    route: &str,
    query: Option<&str>,
) -> Option<Code> {
    if ALWAYS
        .iter()
        .any(|(m, r)| *r == route && *m == method.as_str())
    {
        return None;
    }
    match view.mode {
        Mode::Normal => None,
        Mode::ReadOnly => is_write(method).then_some(Code::ReadOnly),
        Mode::CoreOnly => {
            let not_core = NOT_CORE_WRITES
                .iter()
                .any(|(m, r)| *r == route && *m == method.as_str())
                || (*method == Method::GET
                    && LISTINGS.contains(&route)
                    && beyond_first_page(query));
            not_core.then_some(Code::CoreOnly)
        }
        Mode::Offline => Some(Code::Offline),
    }
}

/// The 503 a mode answers: the reason as message, `Retry-After` (until the mode ends,
/// else [`DEFAULT_RETRY_AFTER_SECS`]), and the mode in `details`.
pub(crate) fn refused(code: Code, view: &ModeView, now: Timestamp) -> ApiError {
    let message = view
        .reason
        .clone()
        .unwrap_or_else(|| format!("the service is {}; retry later", view.mode));
    let retry_after = view
        .until
        .map(|u| (u - now).num_seconds().clamp(1, i64::from(u32::MAX)) as u32)
        .unwrap_or(DEFAULT_RETRY_AFTER_SECS);
    ApiError::new(code, message)
        .with_details(json!({
            "mode": view.mode.as_str(),
            "until": view.until,
            "setBy": view.set_by,
        }))
        .with_retry_after(retry_after)
}

/// A route layer over `/api/v1` (outside authentication): refuses what the mode does
/// not serve, before anything reaches the database. A spooled request being replayed
/// passes (the node drains its spool before it leaves an automatic `offline`).
pub(crate) async fn gate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.degraded.modes.current().mode == Mode::Normal
        || req.extensions().get::<crate::spool::Replayed>().is_some()
    {
        return next.run(req).await;
    }
    match answer_for_mode(&state, req).await {
        Ok(req) => next.run(req).await,
        Err(response) => response,
    }
}

/// What the mode in force says about `req`: `Ok` (hand it on), or the answer (a
/// refusal, the status page, or 202 for a write kept in the spool).
pub(crate) async fn answer_for_mode(state: &AppState, req: Request) -> Result<Request, Response> {
    let view = state.degraded.modes.current();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let now = state.engine.clock().now();
    match refusal(&view, req.method(), &route, req.uri().query()) {
        None => Ok(req),
        Some(Code::Offline) if is_write(req.method()) => Err(match &state.degraded.spool {
            Some(spool) => spool_request(spool, &view, req, now).await,
            None => refused(Code::Offline, &view, now).into_response(),
        }),
        Some(Code::Offline) if crate::status_page::wants_html(req.headers()) => Err(
            crate::status_page::page(&view, req.headers(), StatusCode::SERVICE_UNAVAILABLE),
        ),
        Some(code) => Err(refused(code, &view, now).into_response()),
    }
}

/// What a client hears of a spooled request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Spooled {
    /// Ask `GET /api/v1/spool/{spoolId}` (the `Location`) for its outcome.
    pub spool_id: String,
    /// `queued`.
    pub state: crate::spool::SpoolState,
    /// Why the service is offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Offline: keeps the write in the spool (on disk before the answer) and answers 202
/// with its id and a `Location` to ask about it.
async fn spool_request(
    spool: &crate::spool::Spool,
    view: &ModeView,
    req: Request,
    now: Timestamp,
) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 2 * 1024 * 1024).await else {
        return ApiError::new(Code::PayloadTooLarge, "the request body is too large")
            .into_response();
    };
    let uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    match spool
        .accept(&parts.method, &uri, &parts.headers, &body, now)
        .await
    {
        Ok(id) => {
            let location = format!("/api/v1/spool/{id}");
            let body = Spooled {
                spool_id: id,
                state: crate::spool::SpoolState::Queued,
                reason: view.reason.clone(),
            };
            let mut response = (StatusCode::ACCEPTED, crate::json::Json(body)).into_response();
            if let Ok(v) = axum::http::HeaderValue::from_str(&location) {
                response
                    .headers_mut()
                    .insert(axum::http::header::LOCATION, v);
            }
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot spool a request");
            let mut e = refused(Code::Offline, view, now);
            e = ApiError::new(
                Code::Offline,
                format!("{}; the request was not kept", e.message()),
            )
            .with_retry_after(e.retry_after().unwrap_or(DEFAULT_RETRY_AFTER_SECS));
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(mode: Mode) -> ModeView {
        ModeView {
            mode,
            ..ModeView::default()
        }
    }

    #[test]
    fn read_only_refuses_writes_only() {
        let v = view(Mode::ReadOnly);
        let start = "/api/v1/process-definitions/key/{key}/start";
        assert_eq!(
            refusal(&v, &Method::POST, start, None),
            Some(Code::ReadOnly)
        );
        assert_eq!(
            refusal(&v, &Method::DELETE, "/api/v1/process-instances/{id}", None),
            Some(Code::ReadOnly)
        );
        assert_eq!(
            refusal(&v, &Method::GET, "/api/v1/tasks", Some("after=x")),
            None
        );
        assert_eq!(refusal(&v, &Method::PUT, "/api/v1/system/mode", None), None);
        assert_eq!(refusal(&v, &Method::POST, "/api/v1/auth/token", None), None);
    }

    #[test]
    fn core_only_refuses_deployments_and_pages_past_the_first() {
        let v = view(Mode::CoreOnly);
        let defs = "/api/v1/process-definitions";
        assert_eq!(refusal(&v, &Method::POST, defs, None), Some(Code::CoreOnly));
        assert_eq!(refusal(&v, &Method::GET, defs, None), None);
        assert_eq!(refusal(&v, &Method::GET, defs, Some("limit=100")), None);
        assert_eq!(
            refusal(&v, &Method::GET, defs, Some("limit=101")),
            Some(Code::CoreOnly)
        );
        assert_eq!(
            refusal(&v, &Method::GET, "/api/v1/tasks", Some("limit=5&after=abc")),
            Some(Code::CoreOnly)
        );
        // Core work goes on.
        let start = "/api/v1/process-definitions/key/{key}/start";
        assert_eq!(refusal(&v, &Method::POST, start, None), None);
        let complete = "/api/v1/external-tasks/{id}/complete";
        assert_eq!(refusal(&v, &Method::POST, complete, None), None);
        assert_eq!(refusal(&v, &Method::GET, "/api/v1/tasks/{id}", None), None);
    }

    #[test]
    fn offline_refuses_reads_too() {
        let v = view(Mode::Offline);
        assert_eq!(
            refusal(&v, &Method::GET, "/api/v1/tasks/{id}", None),
            Some(Code::Offline)
        );
        assert_eq!(refusal(&v, &Method::GET, "/api/v1/system/mode", None), None);
    }

    #[test]
    fn an_expired_mode_is_normal_and_says_so() {
        let t = |ms| chrono::DateTime::from_timestamp_millis(ms).unwrap();
        let r = SystemModeRecord::new(Mode::Offline, Some("x".into()), Some(t(50)), "ann", t(10));
        assert_eq!(ModeView::of(Some(&r), t(49)).mode, Mode::Offline);
        let after = ModeView::of(Some(&r), t(50));
        assert_eq!(after.mode, Mode::Normal);
        assert_eq!(after.set_by.as_deref(), Some(EXPIRY));
        let e = refused(Code::Offline, &ModeView::of(Some(&r), t(10)), t(10));
        assert_eq!(
            e.retry_after(),
            Some(1),
            "until is 40 ms away: at least 1 s"
        );
        assert_eq!(e.message(), "x");
    }
}
