//! `serve`'s continuous journal shipping (`backup.continuous`): one round per interval,
//! by one node at a time, with its metrics.
//!
//! The lease: on PostgreSQL a session-level advisory lock held on a connection of the
//! shipper's own (`pg_try_advisory_lock`). It needs no table, and a node that dies (even
//! killed with -9) loses it the moment its connection drops, so another node takes over
//! within one interval. On SQLite one `serve` owns the database file (its `.lock`), so
//! there is nothing to share.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use steadyflow_backup::alert::{Alert, Alerter};
use steadyflow_backup::ship::Shipper;
use tokio::sync::watch;

use super::Db;
use super::service::BackupStatus;
use crate::config::Config;

/// The advisory lock key of the shipping lease ("sfship" in ASCII).
const LEASE_KEY: i64 = 0x7366_7368_6970;

/// Gauge: seconds since the start of the last round after which every target held every
/// durable journal row (the age of the oldest change that may not be on every target yet).
pub const RPO: &str = "steadyflow_rpo_seconds";
/// Gauge: the newest journal sequence a target holds; label `target`.
pub const SHIPPED_SEQ: &str = "steadyflow_journal_shipped_seq";
/// Gauge: Unix time of the last successful backup; labels `kind` (`full`, `incremental`,
/// `segment`), `target`.
pub const LAST_SUCCESS: &str = "steadyflow_backup_last_success_timestamp_seconds";
/// Histogram: seconds a shipping round (export, archive, uploads) took.
pub const DURATION: &str = "steadyflow_backup_duration_seconds";
/// Gauge: bytes of the last archive written; label `kind`.
pub const SIZE: &str = "steadyflow_backup_size_bytes";
/// Counter: scheduled backups this node took; label `kind`.
pub const TAKEN: &str = "steadyflow_backups_taken_total";
/// Gauge: 1 while this node holds the shipping lease.
pub const LEADER: &str = "steadyflow_journal_shipper_leader";

pub(super) fn describe() {
    use metrics::{Unit, describe_gauge, describe_histogram};
    describe_gauge!(
        RPO,
        Unit::Seconds,
        "Age of the oldest change that may not be on every backup target yet"
    );
    describe_gauge!(
        SHIPPED_SEQ,
        "Newest journal sequence held by a backup target (label target)"
    );
    describe_gauge!(
        LAST_SUCCESS,
        Unit::Seconds,
        "Unix time of the last successful backup (labels kind, target)"
    );
    describe_histogram!(
        DURATION,
        Unit::Seconds,
        "Duration of a journal shipping round"
    );
    describe_gauge!(SIZE, Unit::Bytes, "Size of the last archive written");
    describe_gauge!(LEADER, "1 while this node ships the journal");
    metrics::describe_counter!(TAKEN, "Scheduled backups this node took (label kind)");
}

/// The lease that lets one node ship.
enum Lease {
    /// SQLite: this process owns the database.
    Sole,
    Postgres {
        url: String,
        /// The connection that holds the advisory lock, while it is held.
        held: Option<tokio_postgres::Client>,
    },
}

impl Lease {
    /// Whether this node holds the lease now (taking it when free).
    async fn hold(&mut self) -> bool {
        let Lease::Postgres { url, held } = self else {
            return true;
        };
        if let Some(c) = held {
            if !c.is_closed() && c.simple_query("SELECT 1").await.is_ok() {
                return true;
            }
            tracing::warn!("lost the journal shipping lease (connection closed)");
            *held = None;
        }
        let Ok((client, conn)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await else {
            return false;
        };
        tokio::spawn(async move {
            let _ = conn.await;
        });
        match client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LEASE_KEY])
            .await
            .map(|r| r.get::<_, bool>(0))
        {
            Ok(true) => {
                tracing::info!("took the journal shipping lease");
                *held = Some(client);
                true
            }
            _ => false,
        }
    }
}

/// A lease held by this node until dropped (for one scheduled run).
pub(super) enum LeaseGuard {
    Sole,
    /// Its connection holds the advisory lock; dropping it ends the session.
    Postgres {
        _conn: tokio_postgres::Client,
    },
}

/// Takes the lease `key` when it is free: always on SQLite (one `serve` per file), a
/// session-level advisory lock on a connection of its own on PostgreSQL.
pub(super) async fn lease_for(db: &Db, key: i64) -> Option<LeaseGuard> {
    let Db::Postgres(url) = db else {
        return Some(LeaseGuard::Sole);
    };
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let row = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await
        .ok()?;
    row.get::<_, bool>(0)
        .then_some(LeaseGuard::Postgres { _conn: client })
}

/// Starts the shipper when `backup.continuous` is enabled and targets are configured;
/// `None` otherwise. It stops (after a last round) when `stop` turns true.
pub fn spawn(
    cfg: &Config,
    stop: watch::Receiver<bool>,
    alerter: Arc<Alerter>,
    status: Arc<BackupStatus>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let b = &cfg.backup;
    if !b.continuous.enabled || b.targets.is_empty() {
        return Ok(None);
    }
    let interval = b.continuous.interval().map_err(anyhow::Error::msg)?;
    let db = Db::from_url(&cfg.database_url())?;
    let targets = steadyflow_backup::targets::open_all(&b.targets)?;
    let lease = match &db {
        Db::Sqlite(_) => Lease::Sole,
        Db::Postgres(u) => Lease::Postgres {
            url: u.clone(),
            held: None,
        },
    };
    let shipper = Shipper::new(db.exporter()?, targets, b.dir.clone());
    describe();
    tracing::info!(interval = ?interval, dir = %b.dir.display(), "continuous journal shipping on");
    Ok(Some(tokio::spawn(run(
        shipper, lease, interval, stop, alerter, status,
    ))))
}

async fn run(
    mut shipper: Shipper,
    mut lease: Lease,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
    alerter: Arc<Alerter>,
    status: Arc<BackupStatus>,
) {
    // Start of the last round after which every target held every durable row.
    let mut safe_since: Option<Instant> = None;
    let mut leader = false;
    // When this node became the shipper (the lag counts from there until a round succeeds).
    let mut leading_since = Instant::now();
    loop {
        let stopping = *stop.borrow();
        if !stopping {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => {}
            }
        }
        if lease.hold().await {
            if !leader {
                shipper.reset();
                leader = true;
                leading_since = Instant::now();
            }
            metrics::gauge!(LEADER).set(1.0);
            let started = Instant::now();
            match shipper.round(Utc::now()).await {
                Ok(round) => {
                    metrics::histogram!(DURATION).record(started.elapsed().as_secs_f64());
                    if let Some(s) = &round.written {
                        metrics::gauge!(SIZE, "kind" => "segment").set(s.archive_size as f64);
                        if round.failed.is_empty() {
                            status.saw([s]);
                        }
                    }
                    let failed: Vec<&str> = round.failed.iter().map(|(t, _)| t.as_str()).collect();
                    alerter.ok("shipping");
                    for (t, e) in &round.failed {
                        let alert = Alert {
                            kind: steadyflow_backup::alert::TARGET_FAILED.into(),
                            message: format!("journal shipping to {t} failed: {e}"),
                            target: Some(t.clone()),
                            at: Utc::now(),
                        };
                        alerter.fail(&format!("target:{t}"), alert).await;
                    }
                    let now = Utc::now().timestamp() as f64;
                    for t in shipper.targets() {
                        if failed.contains(&t.name.as_str()) {
                            continue;
                        }
                        alerter.ok(&format!("target:{}", t.name));
                        metrics::gauge!(LAST_SUCCESS, "kind" => "segment", "target" => t.name.clone())
                            .set(now);
                        if let Some(seq) = round.shipped_seq {
                            metrics::gauge!(SHIPPED_SEQ, "target" => t.name.clone())
                                .set(seq as f64);
                        }
                    }
                    if round.failed.is_empty() {
                        safe_since = Some(started);
                    }
                    // The lag counts from the last complete round, or from the
                    // leadership's start when none completed since.
                    status.shipping(Some(
                        safe_since
                            .filter(|s| *s >= leading_since)
                            .unwrap_or(leading_since),
                    ));
                }
                Err(e) => {
                    let alert = Alert {
                        kind: steadyflow_backup::alert::SHIPPING_FAILED.into(),
                        message: format!("journal shipping round failed: {e}"),
                        target: None,
                        at: Utc::now(),
                    };
                    alerter.fail("shipping", alert).await;
                }
            }
        } else {
            if leader {
                shipper.reset();
                leader = false;
            }
            // Only the shipping node knows what is not yet on every target: another
            // node's rounds are not this one's (its figure would only grow).
            safe_since = None;
            metrics::gauge!(LEADER).set(0.0);
            metrics::gauge!(RPO).set(0.0);
            status.shipping(None);
        }
        if let Some(s) = safe_since.filter(|_| leader) {
            metrics::gauge!(RPO).set(s.elapsed().as_secs_f64());
        }
        if stopping {
            break;
        }
    }
}
