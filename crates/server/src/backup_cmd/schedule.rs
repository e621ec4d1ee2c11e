//! `serve`'s scheduled backups (`backup.schedules`): at each slot, one node (the lease)
//! takes the backup into its backup directory and copies it to every target.
//!
//! Whether a run is due comes from the recovery points on the targets and in the backup
//! directory (`steadyflow_backup::schedule`), checked at start-up and at every slot: a
//! missed run happens once at start-up, and a node that finds the lease taken, or the
//! backup already there, skips the slot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use steadyflow_backup::alert::{Alert, Alerter};
use steadyflow_backup::schedule::Schedule;
use steadyflow_backup::{BackupOptions, Kind, Parts, Progress, Target};
use tokio::sync::watch;

use super::Db;
use super::service::BackupStatus;
use super::ship::{DURATION, LAST_SUCCESS, SIZE, TAKEN, lease_for};
use crate::config::Config;

/// Advisory lock keys of the scheduled runs, one per kind.
pub(super) const FULL_KEY: i64 = 0x7366_6675_6c6c;
pub(super) const INCREMENTAL_KEY: i64 = 0x7366_696e_6372;

/// Longest sleep between checks (a changed clock is noticed within it).
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Starts the scheduler when schedules and at least one target are configured (targets
/// opt `serve` into backing up by itself); `None` otherwise.
pub fn spawn(
    cfg: &Config,
    stop: watch::Receiver<bool>,
    alerter: Arc<Alerter>,
    status: Arc<BackupStatus>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let b = &cfg.backup;
    let schedules = b.schedules.parse().map_err(anyhow::Error::msg)?;
    if schedules.is_empty() || b.targets.is_empty() {
        return Ok(None);
    }
    let db = Db::from_url(&cfg.database_url())?;
    let targets = steadyflow_backup::targets::open_all(&b.targets)?;
    let job = Job {
        db,
        targets,
        dir: b.dir.clone(),
        retention: b.retention.clone(),
        alerter,
        status,
    };
    super::ship::describe();
    for s in &schedules {
        tracing::info!(kind = s.kind.as_str(), cron = %s.expr, "scheduled backups");
    }
    Ok(Some(tokio::spawn(run(job, schedules, stop))))
}

struct Job {
    db: Db,
    targets: Vec<Target>,
    dir: std::path::PathBuf,
    retention: steadyflow_backup::prune::Retention,
    alerter: Arc<Alerter>,
    status: Arc<BackupStatus>,
}

async fn run(job: Job, schedules: Vec<Schedule>, mut stop: watch::Receiver<bool>) {
    // At start-up first: a slot missed while the node was down runs now, once.
    loop {
        for s in &schedules {
            if *stop.borrow() {
                return;
            }
            let key = format!("schedule:{}", s.kind.as_str());
            match job.run_if_due(s).await {
                Ok(()) => job.alerter.ok(&key),
                Err(e) => {
                    let alert = Alert {
                        kind: steadyflow_backup::alert::BACKUP_FAILED.into(),
                        message: format!("scheduled {} backup failed: {e}", s.kind.as_str()),
                        target: None,
                        at: Utc::now(),
                    };
                    job.alerter.fail(&key, alert).await;
                }
            }
        }
        let now = Utc::now();
        let next = schedules
            .iter()
            .filter_map(|s| s.next_slot(now))
            .min()
            .and_then(|t| (t - now).to_std().ok())
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = stop.changed() => return,
        }
    }
}

impl Job {
    async fn run_if_due(&self, s: &Schedule) -> Result<(), steadyflow_backup::BackupError> {
        let now = Utc::now();
        // Cheap first: nothing to do unless a slot passed since the newest local point.
        let local = steadyflow_backup::catalog::list(&self.dir)?;
        if !s.due(local.iter(), now) && self.targets.is_empty() {
            return Ok(());
        }
        let key = match s.kind {
            Kind::Full => FULL_KEY,
            Kind::Incremental => INCREMENTAL_KEY,
        };
        // Held for the whole run; released when dropped (its connection closes).
        let Some(_lease) = lease_for(&self.db, key).await else {
            tracing::debug!(kind = s.kind.as_str(), "another node runs this backup");
            return Ok(());
        };
        let (points, _) = steadyflow_backup::targets::list_all(&self.dir, &self.targets).await?;
        self.status.saw(points.iter().map(|p| &p.sidecar));
        if !s.due(points.iter().map(|p| &p.sidecar), now) {
            return Ok(());
        }
        if s.kind == Kind::Incremental
            && !points.iter().any(|p| p.sidecar.manifest.journal.is_some())
        {
            // An incremental needs a full backup to continue from: the full schedule's
            // first run provides it.
            return Ok(());
        }
        // Continue the targets' chain (another node may have taken the last backup).
        steadyflow_backup::targets::fetch_chain(&self.dir, &self.targets, "latest").await?;
        let started = Instant::now();
        let exporter = self.db.exporter()?;
        let keys = super::encrypt_keys();
        let opts = BackupOptions {
            dir: self.dir.clone(),
            parts: if s.kind == Kind::Full {
                Parts::All
            } else {
                Parts::DbOnly
            },
            compress: true,
            encrypt: keys.is_set().then_some(keys),
            config_files: super::config_files(None),
            now,
            kind: s.kind,
            redis: super::redis_source(),
            prune_journal: true,
        };
        let point =
            steadyflow_backup::create(Some(exporter.as_ref()), &opts, &Progress::none()).await?;
        self.status.saw([&point]);
        let copies = steadyflow_backup::targets::sync(&self.dir, &self.targets).await?;
        let kind = s.kind.as_str();
        metrics::counter!(TAKEN, "kind" => kind).increment(1);
        metrics::histogram!(DURATION).record(started.elapsed().as_secs_f64());
        metrics::gauge!(SIZE, "kind" => kind).set(point.archive_size as f64);
        let at = Utc::now().timestamp() as f64;
        metrics::gauge!(LAST_SUCCESS, "kind" => kind, "target" => "local").set(at);
        for c in &copies {
            let key = format!("target:{}", c.target);
            match &c.error {
                None => {
                    metrics::gauge!(LAST_SUCCESS, "kind" => kind, "target" => c.target.clone())
                        .set(at);
                    self.alerter.ok(&key);
                }
                Some(e) => {
                    let alert = Alert {
                        kind: steadyflow_backup::alert::TARGET_FAILED.into(),
                        message: format!("scheduled {kind} backup not copied to {}: {e}", c.target),
                        target: Some(c.target.clone()),
                        at: Utc::now(),
                    };
                    self.alerter.fail(&key, alert).await;
                }
            }
        }
        tracing::info!(kind, backup = %point.manifest.id, bytes = point.archive_size, "scheduled backup taken");
        // Retention after each scheduled backup, on every location.
        match steadyflow_backup::prune::prune_all(
            &self.dir,
            &self.targets,
            &self.retention,
            Utc::now(),
            false,
        )
        .await
        {
            Ok(p) => {
                let n = p.iter().filter(|p| !p.deleted.is_empty()).count();
                if n > 0 {
                    tracing::info!(points = n, "pruned backups past their retention");
                }
            }
            Err(e) => tracing::warn!(error = %e, "pruning after the scheduled backup failed"),
        }
        // A full backup closes the chain before it: its incrementals (the shipped
        // segments) become one.
        if s.kind == Kind::Full
            && let Err(e) = steadyflow_backup::fold::fold_all(&self.dir, &self.targets, false).await
        {
            tracing::warn!(error = %e, "folding the closed chain after the full backup failed");
        }
        Ok(())
    }
}
