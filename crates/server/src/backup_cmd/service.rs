//! `serve`'s backups as the API sees them (`steadyflow_api::backups::Backups`): backups
//! started over HTTP, the recovery points with their verification state, and the
//! `backup` component of `/health`, with the late-backup and shipping-lag alerts.
//!
//! [`BackupStatus`] is what the scheduler, the shipper and API-started runs report to:
//! the newest backup of the database this node knows of, and the shipping lag while this
//! node ships. A node that finds its own knowledge past the limit lists the targets
//! before it warns (another node may have taken the backup), at most once a minute.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use steadyflow_api::backups::{
    Backup, BackupHealth, BackupKind, BackupParts, BackupRun, BackupState, Backups, JournalRange,
    RecoveryPoint, StartBackup, Verification, VerificationState,
};
use steadyflow_api::{ApiError, Code};
use steadyflow_backup::alert::{self, Alert, Alerter};
use steadyflow_backup::targets::Located;
use steadyflow_backup::{BackupError, BackupOptions, Kind, Parts, Progress, Sidecar, Target};
use tokio::sync::watch;

use super::Db;
use super::ship::{DURATION, LAST_SUCCESS, SIZE};
use crate::config::Config;

/// How many finished API runs a node remembers.
const KEPT_RUNS: usize = 100;
/// How often the limits are checked.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Least time between two listings of the targets by a node that finds a backup late.
const RELIST_EVERY: Duration = Duration::from_secs(60);
/// How long a run waits for the backup directory while another backup (a shipped
/// segment, a scheduled backup) holds it.
const DIR_WAIT: Duration = Duration::from_secs(60);

/// The newest backup and the shipping lag, as this node knows them.
pub struct BackupStatus {
    max_backup_age: Duration,
    /// `None`: continuous shipping is off.
    max_shipping_lag: Option<Duration>,
    started: Instant,
    inner: Mutex<StatusInner>,
}

#[derive(Default)]
struct StatusInner {
    /// Creation time of the newest backup of the database (full, incremental, segment).
    newest: Option<DateTime<Utc>>,
    /// While this node ships: since when changes may be missing from a target (the
    /// start of the last round after which every target held everything, or of the
    /// leadership when no round succeeded yet).
    shipping_since: Option<Instant>,
}

impl BackupStatus {
    pub fn new(cfg: &Config) -> anyhow::Result<Arc<BackupStatus>> {
        let b = &cfg.backup;
        let (age, lag) = b.alerts.limits().map_err(anyhow::Error::msg)?;
        let status = BackupStatus {
            max_backup_age: age,
            max_shipping_lag: b.continuous.enabled.then_some(lag),
            started: Instant::now(),
            inner: Mutex::default(),
        };
        // What the backup directory holds; the targets are listed by the monitor.
        if let Ok(points) = steadyflow_backup::catalog::list(&b.dir) {
            status.saw(points.iter());
        }
        Ok(Arc::new(status))
    }

    /// Recovery points seen: the newest database backup among them counts.
    pub fn saw<'a>(&self, points: impl IntoIterator<Item = &'a Sidecar>) {
        let newest = points
            .into_iter()
            .filter(|p| p.manifest.journal.is_some())
            .map(|p| p.manifest.created_at)
            .max();
        if let (Some(t), Ok(mut i)) = (newest, self.inner.lock()) {
            i.newest = i.newest.max(Some(t));
        }
    }

    /// This node ships now (`since`: the start of its last complete round, or now when it
    /// just became the shipper), or no longer (`None`).
    pub fn shipping(&self, since: Option<Instant>) {
        if let Ok(mut i) = self.inner.lock() {
            i.shipping_since = since;
        }
    }

    /// The `backup` component of `/health` at `now`.
    pub fn health(&self, now: DateTime<Utc>) -> BackupHealth {
        let (newest, since) = self
            .inner
            .lock()
            .map(|i| (i.newest, i.shipping_since))
            .unwrap_or_default();
        let age = newest.and_then(|t| (now - t).to_std().ok().or(Some(Duration::ZERO)));
        let lag = since.map(|s| s.elapsed());
        let mut warnings = Vec::new();
        // Without any backup yet, the node's start is where the clock begins.
        let waited = age.unwrap_or_else(|| self.started.elapsed());
        if waited > self.max_backup_age {
            warnings.push(match age {
                Some(a) => format!(
                    "the newest backup of the database is {} old (limit {})",
                    human(a),
                    human(self.max_backup_age)
                ),
                None => format!(
                    "no backup of the database in {} since this node started (limit {})",
                    human(waited),
                    human(self.max_backup_age)
                ),
            });
        }
        if let (Some(l), Some(max)) = (lag, self.max_shipping_lag)
            && l > max
        {
            warnings.push(format!(
                "changes have waited {} to reach every target (limit {})",
                human(l),
                human(max)
            ));
        }
        BackupHealth {
            last_success_age: age,
            shipping_lag: lag,
            warnings,
        }
    }

    fn late(&self, now: DateTime<Utc>) -> Option<String> {
        let h = self.health(now);
        h.warnings
            .into_iter()
            .find(|w| !w.starts_with("changes have waited"))
    }

    fn lagging(&self, now: DateTime<Utc>) -> Option<String> {
        let h = self.health(now);
        h.warnings
            .into_iter()
            .find(|w| w.starts_with("changes have waited"))
    }
}

/// `3h 12m`, `45s`, `1.5s`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Watches the limits: raises `backup_late` and `shipping_lag` alerts (once per
/// condition) and lists the targets before calling a backup late.
pub fn spawn_monitor(
    cfg: &Config,
    status: Arc<BackupStatus>,
    alerter: Arc<Alerter>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let dir = cfg.backup.dir.clone();
    let targets = steadyflow_backup::targets::open_all(&cfg.backup.targets)?;
    Ok(tokio::spawn(async move {
        let mut listed: Option<Instant> = None;
        loop {
            let now = Utc::now();
            // At start, and when late by this node's own knowledge (at most once a minute).
            let relist = match listed {
                None => true,
                Some(l) => status.late(now).is_some() && l.elapsed() >= RELIST_EVERY,
            };
            if relist {
                listed = Some(Instant::now());
                match steadyflow_backup::targets::list_all(&dir, &targets).await {
                    Ok((points, _)) => status.saw(points.iter().map(|p| &p.sidecar)),
                    Err(e) => tracing::warn!(error = %e, "cannot list the recovery points"),
                }
            }
            let now = Utc::now();
            match status.late(now) {
                Some(why) => {
                    let alert = Alert {
                        kind: alert::BACKUP_LATE.into(),
                        message: why,
                        target: None,
                        at: now,
                    };
                    alerter.fail("late", alert).await;
                }
                None => alerter.ok("late"),
            }
            match status.lagging(now) {
                Some(why) => {
                    let alert = Alert {
                        kind: alert::SHIPPING_LAG.into(),
                        message: why,
                        target: None,
                        at: now,
                    };
                    alerter.fail("lag", alert).await;
                }
                None => alerter.ok("lag"),
            }
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = stop.changed() => return,
            }
        }
    }))
}

/// Backups over HTTP on this node.
pub struct BackupService {
    db: Db,
    targets: Vec<Target>,
    dir: PathBuf,
    status: Arc<BackupStatus>,
    alerter: Arc<Alerter>,
    /// API runs, oldest first (the running one included).
    runs: Arc<Mutex<VecDeque<BackupRun>>>,
    counter: AtomicU64,
}

impl BackupService {
    /// The service when `backup.targets` are configured (as for scheduled backups and
    /// shipping); `None` otherwise.
    pub fn new(
        cfg: &Config,
        status: Arc<BackupStatus>,
        alerter: Arc<Alerter>,
    ) -> anyhow::Result<Option<Arc<BackupService>>> {
        let b = &cfg.backup;
        if b.targets.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(BackupService {
            db: Db::from_url(&cfg.database_url())?,
            targets: steadyflow_backup::targets::open_all(&b.targets)?,
            dir: b.dir.clone(),
            status,
            alerter,
            runs: Arc::default(),
            counter: AtomicU64::new(0),
        })))
    }

    fn running(&self) -> Option<String> {
        self.runs.lock().ok().and_then(|r| {
            r.iter()
                .find(|r| r.finished_at.is_none())
                .map(|r| r.id.clone())
        })
    }

    fn run(&self, id: &str) -> Option<BackupRun> {
        self.runs
            .lock()
            .ok()
            .and_then(|r| r.iter().find(|r| r.id == id).cloned())
    }

    fn finish(runs: &Mutex<VecDeque<BackupRun>>, id: &str, outcome: Result<String, String>) {
        if let Ok(mut r) = runs.lock() {
            if let Some(run) = r.iter_mut().find(|r| r.id == id) {
                run.finished_at = Some(Utc::now());
                match outcome {
                    Ok(point) => run.backup_id = Some(point),
                    Err(e) => run.error = Some(e),
                }
            }
            while r.len() > KEPT_RUNS {
                r.pop_front();
            }
        }
    }

    async fn located(&self) -> Result<Vec<Located>, ApiError> {
        steadyflow_backup::targets::list_all(&self.dir, &self.targets)
            .await
            .map(|(points, _)| points)
            .map_err(|e| {
                tracing::error!(error = %e, "cannot list the recovery points");
                ApiError::internal()
            })
    }
}

/// The work of one API run: the targets' chain first (another node may have taken the
/// last backup), the backup, then every target.
struct Take {
    db: Db,
    targets: Vec<Target>,
    dir: PathBuf,
    kind: Kind,
    parts: Parts,
}

impl Take {
    async fn run(&self) -> Result<Sidecar, BackupError> {
        steadyflow_backup::targets::fetch_chain(&self.dir, &self.targets, "latest").await?;
        let started = Instant::now();
        let exporter = match self.parts {
            Parts::All | Parts::DbOnly => Some(self.db.exporter()?),
            Parts::ConfigOnly | Parts::RedisOnly => None,
        };
        let keys = super::encrypt_keys();
        let opts = BackupOptions {
            dir: self.dir.clone(),
            parts: self.parts,
            compress: true,
            encrypt: keys.is_set().then_some(keys),
            config_files: super::config_files(None),
            now: Utc::now(),
            kind: self.kind,
            redis: super::redis_source(),
            prune_journal: true,
        };
        // A shipped segment holds the directory for a moment: wait for it.
        let waited = Instant::now();
        let point = loop {
            match steadyflow_backup::create(exporter.as_deref(), &opts, &Progress::none()).await {
                Err(BackupError::TargetInUse(_)) if waited.elapsed() < DIR_WAIT => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => break other?,
            }
        };
        let copies = steadyflow_backup::targets::sync(&self.dir, &self.targets).await?;
        let kind = self.kind.as_str();
        metrics::histogram!(DURATION).record(started.elapsed().as_secs_f64());
        metrics::gauge!(SIZE, "kind" => kind).set(point.archive_size as f64);
        let at = Utc::now().timestamp() as f64;
        metrics::gauge!(LAST_SUCCESS, "kind" => kind, "target" => "local").set(at);
        let failed: Vec<String> = copies
            .iter()
            .filter_map(|c| c.error.as_ref().map(|e| format!("{}: {e}", c.target)))
            .collect();
        for c in copies.iter().filter(|c| c.error.is_none()) {
            metrics::gauge!(LAST_SUCCESS, "kind" => kind, "target" => c.target.clone()).set(at);
        }
        if !failed.is_empty() {
            return Err(BackupError::Remote(format!(
                "backup {} written and verified in the backup directory, but not copied to {}",
                point.manifest.id,
                failed.join("; ")
            )));
        }
        Ok(point)
    }
}

fn kind_of(k: BackupKind) -> Kind {
    match k {
        BackupKind::Full => Kind::Full,
        BackupKind::Incremental => Kind::Incremental,
    }
}

fn api_kind(k: Kind) -> BackupKind {
    match k {
        Kind::Full => BackupKind::Full,
        Kind::Incremental => BackupKind::Incremental,
    }
}

fn parts_of(p: BackupParts) -> Parts {
    match p {
        BackupParts::All => Parts::All,
        BackupParts::Db => Parts::DbOnly,
        BackupParts::Redis => Parts::RedisOnly,
        BackupParts::Config => Parts::ConfigOnly,
    }
}

#[async_trait]
impl Backups for BackupService {
    async fn start(&self, request: StartBackup, by: &str) -> Result<BackupRun, ApiError> {
        if let Some(id) = self.running() {
            return Err(ApiError::new(
                Code::BackupRunning,
                format!("backup {id} is still running; follow /api/v1/backups/{id}"),
            )
            .with_details(serde_json::json!({ "id": id })));
        }
        if request.parts == BackupParts::Redis && super::redis_source().is_none() {
            return Err(ApiError::bad_request(
                "no Redis is configured (STEADYFLOW_REDIS_URL): there are no keys to back up",
            ));
        }
        let kind = kind_of(request.kind);
        // One node at a time per kind, as the schedule's runs (PostgreSQL advisory lock).
        let key = match kind {
            Kind::Full => super::schedule::FULL_KEY,
            Kind::Incremental => super::schedule::INCREMENTAL_KEY,
        };
        let Some(lease) = super::ship::lease_for(&self.db, key).await else {
            return Err(ApiError::new(
                Code::BackupRunning,
                format!(
                    "a scheduled {} backup is running (on this or another node)",
                    kind.as_str()
                ),
            ));
        };
        let now = Utc::now();
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let run = BackupRun {
            id: format!("run-{}-{n}", now.format("%Y%m%d_%H%M%S")),
            kind: request.kind,
            parts: request.parts,
            started_at: now,
            started_by: by.to_string(),
            finished_at: None,
            error: None,
            backup_id: None,
        };
        {
            let Ok(mut runs) = self.runs.lock() else {
                return Err(ApiError::internal());
            };
            // Checked again under the lock: two requests at once start one run.
            if let Some(r) = runs.iter().find(|r| r.finished_at.is_none()) {
                return Err(ApiError::new(
                    Code::BackupRunning,
                    format!("backup {} is still running", r.id),
                )
                .with_details(serde_json::json!({ "id": r.id })));
            }
            runs.push_back(run.clone());
        }
        let take = Take {
            db: match &self.db {
                Db::Sqlite(p) => Db::Sqlite(p.clone()),
                Db::Postgres(u) => Db::Postgres(u.clone()),
            },
            targets: self.targets.clone(),
            dir: self.dir.clone(),
            kind,
            parts: parts_of(request.parts),
        };
        let (runs, status, alerter, id) = (
            self.runs.clone(),
            self.status.clone(),
            self.alerter.clone(),
            run.id.clone(),
        );
        tokio::spawn(async move {
            let outcome = take.run().await;
            drop(lease);
            match outcome {
                Ok(point) => {
                    tracing::info!(run = %id, backup = %point.manifest.id, bytes = point.archive_size, "backup taken through the API");
                    status.saw([&point]);
                    alerter.ok("api");
                    Self::finish(&runs, &id, Ok(point.manifest.id));
                }
                Err(e) => {
                    let message = format!("backup {id} (started through the API) failed: {e}");
                    Self::finish(&runs, &id, Err(e.to_string()));
                    let alert = Alert {
                        kind: alert::BACKUP_FAILED.into(),
                        message,
                        target: None,
                        at: Utc::now(),
                    };
                    alerter.fail("api", alert).await;
                }
            }
        });
        Ok(run)
    }

    async fn points(&self) -> Result<Vec<RecoveryPoint>, ApiError> {
        let located = self.located().await?;
        let mut out = recovery_points(&located);
        out.reverse();
        Ok(out)
    }

    async fn get(&self, id: &str) -> Result<Option<Backup>, ApiError> {
        let run = self.run(id);
        let point_id = match &run {
            Some(r) => r.backup_id.clone(),
            None => Some(id.to_string()),
        };
        let point = match point_id {
            Some(pid) => {
                let located = self.located().await?;
                recovery_points(&located).into_iter().find(|p| p.id == pid)
            }
            None => None,
        };
        // A point taken by an API run names it (the last run that wrote it).
        let run = run.or_else(|| {
            self.runs.lock().ok().and_then(|r| {
                r.iter()
                    .rev()
                    .find(|r| r.backup_id.as_deref() == Some(id))
                    .cloned()
            })
        });
        let state = match (&run, &point) {
            (_, Some(_)) => BackupState::Completed,
            (Some(r), None) if r.finished_at.is_none() => BackupState::Running,
            (Some(r), None) if r.error.is_some() => BackupState::Failed,
            // Completed, but its point is gone (pruned): only the run is left to show.
            (Some(_), None) => BackupState::Completed,
            (None, None) => return Ok(None),
        };
        Ok(Some(Backup {
            id: id.to_string(),
            state,
            run,
            point,
        }))
    }

    fn health(&self) -> BackupHealth {
        let mut h = self.status.health(Utc::now());
        // Failures still raised (a target refusing writes, a failed backup) degrade it
        // too; lateness and lag are in the limits' own words already.
        for (kind, message) in self.alerter.active() {
            if kind != alert::BACKUP_LATE && kind != alert::SHIPPING_LAG {
                h.warnings.push(format!("{kind}: {message}"));
            }
        }
        h
    }
}

/// The API's view of `located` (oldest first), each with its verification state: a
/// point whose chain is broken (a parent missing, a gap in the journal) failed.
fn recovery_points(located: &[Located]) -> Vec<RecoveryPoint> {
    let by_id: HashMap<&str, &Sidecar> = located
        .iter()
        .map(|l| (l.sidecar.manifest.id.as_str(), &l.sidecar))
        .collect();
    // Whether each point's chain is whole, memoized (chains of shipped segments are long).
    let mut whole: HashMap<String, Result<(), String>> = HashMap::new();
    for l in located {
        chain_check(&l.sidecar, &by_id, &mut whole);
    }
    located
        .iter()
        .map(|l| {
            let s = &l.sidecar;
            let m = &s.manifest;
            let broken = whole.get(&m.id).and_then(|r| r.clone().err());
            RecoveryPoint {
                id: m.id.clone(),
                kind: api_kind(m.kind),
                parent: m.parent.clone(),
                created_at: m.created_at,
                source_backend: m.source_backend.clone(),
                data_classes: m.data_classes.iter().map(|c| c.as_str().into()).collect(),
                archive: s.archive.clone(),
                archive_size: s.archive_size,
                encrypted: m.encryption != "none",
                table_rows: m.table_rows(),
                tables: m
                    .files
                    .iter()
                    .filter_map(|f| Some((f.table.clone()?, f.rows?)))
                    .collect(),
                journal: m.journal.as_ref().map(|j| JournalRange {
                    resume_seq: j.resume_seq,
                    first_seq: j.journal_first_seq,
                    last_seq: j.journal_last_seq,
                    first_time: j.journal_first_time,
                    last_time: j.journal_last_time,
                }),
                verification: Verification {
                    state: match (&broken, s.verified_at) {
                        (Some(_), _) => VerificationState::Failed,
                        (None, Some(_)) => VerificationState::Verified,
                        (None, None) => VerificationState::Unverified,
                    },
                    verified_at: s.verified_at,
                    reason: broken,
                },
                locations: l.locations.clone(),
            }
        })
        .collect()
}

/// Whether `point`'s chain down to its full backup is whole (memoized in `whole`).
fn chain_check(
    point: &Sidecar,
    by_id: &HashMap<&str, &Sidecar>,
    whole: &mut HashMap<String, Result<(), String>>,
) {
    // Walk down to the first link already known (or the full backup), then fill upwards.
    let mut path: Vec<&Sidecar> = Vec::new();
    let mut at = point;
    let base = loop {
        if let Some(r) = whole.get(&at.manifest.id) {
            break r.clone();
        }
        path.push(at);
        if path.len() > by_id.len() + 1 {
            break Err("the backup chain loops".to_string());
        }
        let Some(parent_id) = &at.manifest.parent else {
            break if at.manifest.kind == Kind::Full {
                Ok(())
            } else {
                Err(format!(
                    "{} is an incremental without a parent",
                    at.manifest.id
                ))
            };
        };
        let Some(parent) = by_id.get(parent_id.as_str()) else {
            break Err(format!(
                "{} needs its parent {parent_id}, which is in no location",
                at.manifest.id
            ));
        };
        let after = at.manifest.journal.as_ref().and_then(|j| j.after_seq);
        let resume = parent.manifest.journal.as_ref().map(|j| j.resume_seq);
        if after != resume {
            break Err(format!(
                "gap in the chain: {} starts after journal sequence {after:?}, its parent \
                 {parent_id} ends at {resume:?}",
                at.manifest.id
            ));
        }
        at = parent;
    };
    // The first link of `path` whose own check failed carries the reason; its children
    // inherit it.
    for link in path {
        whole.insert(link.manifest.id.clone(), base.clone());
    }
}
