//! The operations measured: ours through the same library calls `steadyflow backup` and
//! `steadyflow restore` make (crates/server/src/backup_cmd.rs), the stock tools through
//! their command lines.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use steadyflow_backup::{BackupOptions, DecryptWith, Kind, Parts, Progress, ProgressSink, Sidecar};
use steadyflow_engine::{Engine, SystemClock};
use steadyflow_store::TopicLock;
use steadyflow_store::recovery::{Exporter, Staging};

use super::report::{self, Meter, Row};

/// The database an operation works on.
#[derive(Debug, Clone)]
pub enum Target {
    Postgres(String),
    Sqlite(PathBuf),
}

impl Target {
    fn exporter(&self) -> Result<Box<dyn Exporter>> {
        Ok(match self {
            Target::Sqlite(p) => {
                Box::new(steadyflow_store_sqlite::recovery::SqliteExporter::new(p))
            }
            Target::Postgres(u) => Box::new(steadyflow_store_pg::recovery::PgExporter::new(u)?),
        })
    }

    async fn stage(&self) -> Result<Box<dyn Staging>> {
        Ok(match self {
            Target::Sqlite(p) => {
                let p = p.clone();
                Box::new(
                    tokio::task::spawn_blocking(move || {
                        steadyflow_store_sqlite::recovery::stage(&p)
                    })
                    .await??,
                )
            }
            Target::Postgres(u) => Box::new(steadyflow_store_pg::recovery::stage(u).await?),
        })
    }

    fn schema_version(&self) -> i64 {
        match self {
            Target::Sqlite(_) => steadyflow_store_sqlite::recovery::schema_version(),
            Target::Postgres(_) => i64::from(steadyflow_store_pg::schema_version()),
        }
    }

    async fn check_empty(&self) -> Result<()> {
        let state = match self {
            Target::Sqlite(p) => steadyflow_store_sqlite::recovery::target_state(p)?,
            Target::Postgres(u) => steadyflow_store_pg::recovery::target_state(u).await?,
        };
        ensure!(
            state.in_use.is_none() && state.tables.is_empty(),
            "restore target is not empty or in use: {state:?}"
        );
        Ok(())
    }

    async fn open(&self) -> Result<Arc<dyn steadyflow_store::Store>> {
        Ok(match self {
            Target::Postgres(u) => Arc::new(steadyflow_store_pg::PgStore::connect(u).await?),
            Target::Sqlite(p) => {
                let p = p.clone();
                Arc::new(
                    tokio::task::spawn_blocking(move || {
                        steadyflow_store_sqlite::SqliteStore::open(&p)
                    })
                    .await??,
                )
            }
        })
    }
}

/// Records when each stage of an operation began.
#[derive(Default)]
struct StageClock {
    marks: Mutex<Vec<(String, Instant)>>,
}

impl ProgressSink for StageClock {
    fn stage(&self, name: &str) {
        if let Ok(mut m) = self.marks.lock() {
            m.push((name.to_string(), Instant::now()));
        }
    }
    fn rows(&self, _rows: u64, _bytes: u64) {}
}

impl StageClock {
    fn mark(&self, name: &str) {
        self.stage(name);
    }

    /// Seconds per stage, the first measured from `began`, the last up to `end`.
    fn durations(&self, began: Instant, end: Instant) -> Vec<(String, f64)> {
        let marks = self.marks.lock().map(|m| m.clone()).unwrap_or_default();
        let mut out = Vec::new();
        let mut prev = ("setup".to_string(), began);
        for (name, at) in marks {
            out.push((prev.0, at.duration_since(prev.1).as_secs_f64()));
            prev = (name, at);
        }
        out.push((prev.0, end.duration_since(prev.1).as_secs_f64()));
        out.retain(|(_, s)| *s >= 0.005);
        out
    }
}

fn progress() -> (Arc<StageClock>, Progress) {
    let clock = Arc::new(StageClock::default());
    (clock.clone(), Progress::new(clock))
}

/// `steadyflow backup --db-only [--incremental] --keep-journal`: the journal is kept so
/// that every later operation sees the same data (pruning is measured on its own).
pub async fn backup(target: &Target, dir: &Path, kind: Kind) -> Result<(Sidecar, Row)> {
    let exporter = target.exporter()?;
    let opts = BackupOptions {
        dir: dir.to_path_buf(),
        parts: Parts::DbOnly,
        compress: true,
        encrypt: None,
        config_files: Vec::new(),
        now: chrono::Utc::now(),
        kind,
        prune_journal: false,
        redis: None,
    };
    let (clock, progress) = progress();
    let meter = Meter::start();
    let began = Instant::now();
    let sidecar = steadyflow_backup::create(Some(exporter.as_ref()), &opts, &progress).await?;
    let stages = clock.durations(began, Instant::now());
    let usage = meter.stop();
    let name = match kind {
        Kind::Full => "steadyflow backup (full)",
        Kind::Incremental => "steadyflow backup --incremental",
    };
    // An incremental is not compared with the full backup's time and size.
    let compare = if kind == Kind::Full {
        report::Kind::Backup
    } else {
        report::Kind::Other
    };
    let row = Row::new(name, usage, compare, kind == Kind::Full)
        .archive(sidecar.archive_size)
        .stages(stages);
    Ok((sidecar, row))
}

/// `steadyflow backup verify ID`: the chain, then the whole archive read back, checked
/// against its sidecar and its manifest in one pass.
pub async fn verify(dir: &Path, sidecar: &Sidecar) -> Result<Row> {
    let path = dir.join(&sidecar.archive);
    let (dir, s) = (dir.to_path_buf(), sidecar.clone());
    let meter = Meter::start();
    let (file_s, content_s) = tokio::task::spawn_blocking(move || -> Result<(f64, f64)> {
        let t = Instant::now();
        steadyflow_backup::catalog::chain(&dir, &s)?;
        let file_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let m = steadyflow_backup::verify(&path, &DecryptWith::default(), Some(&(&s).into()))?;
        ensure!(
            m == s.manifest,
            "the archive's manifest differs from its sidecar"
        );
        Ok((file_s, t.elapsed().as_secs_f64()))
    })
    .await??;
    Ok(Row::new(
        "steadyflow backup verify",
        meter.stop(),
        report::Kind::Other,
        true,
    )
    .stages(vec![
        ("chain".into(), file_s),
        ("read back: file + member SHA-256, rows".into(), content_s),
    ]))
}

/// A restore of `sidecar` into `target` through staging: `--test` discards it (what
/// `restore --test` does), otherwise it is promoted and the restored engine must then
/// complete one external task (a usable engine, not just rows).
pub async fn restore(
    dir: &Path,
    sidecar: &Sidecar,
    target: &Target,
    test: bool,
) -> Result<Vec<Row>> {
    let path = dir.join(&sidecar.archive);
    let (clock, progress) = progress();
    let meter = Meter::start();
    let began = Instant::now();
    if !test {
        target.check_empty().await?;
    }
    clock.mark("staging (create + migrate)");
    let staging = target.stage().await?;
    let staged = steadyflow_backup::restore_tables(
        &path,
        &DecryptWith::default(),
        Some(&sidecar.into()),
        staging,
        target.schema_version(),
        &progress,
    )
    .await?;
    if test {
        clock.mark("discarding the scratch");
        staged.staging.discard().await?;
    } else {
        clock.mark("promoting");
        staged.staging.promote().await?;
    }
    let stages = clock.durations(began, Instant::now());
    let usage = meter.stop();
    let rows: u64 = staged
        .tables
        .iter()
        .filter(|t| t.restored)
        .map(|t| t.rows)
        .sum();
    let name = if test {
        "steadyflow restore --test"
    } else {
        "steadyflow restore (full, empty target)"
    };
    let mut out = vec![
        Row::new(name, usage, report::Kind::Restore, !test)
            .stages(stages)
            .note(format!("{rows} rows")),
    ];
    if !test {
        let meter = Meter::start();
        first_command(target).await?;
        let first = meter.stop();
        let mut total = first;
        total.seconds += usage.seconds;
        total.own_cpu += usage.own_cpu;
        total.pg_cpu += usage.pg_cpu;
        out.push(
            Row::new(
                "  + open store, first engine command",
                first,
                report::Kind::Other,
                true,
            )
            .note("fetch-and-lock + complete"),
        );
        out.push(Row::new(
            "= restore to a usable engine",
            total,
            report::Kind::Other,
            true,
        ));
    }
    Ok(out)
}

/// Opens the restored store and completes one external task through the engine.
pub async fn first_command(target: &Target) -> Result<()> {
    let store = target.open().await?;
    let engine = Engine::new(store, Arc::new(SystemClock));
    let topics: Vec<TopicLock> = ["reserve", "ship", "bill"]
        .iter()
        .map(|t| TopicLock {
            topic: t.to_string(),
            lock_duration_ms: 60_000,
        })
        .collect();
    let locked = engine.fetch_and_lock("bench-check", 1, &topics).await?;
    let Some(l) = locked.first() else {
        bail!("the restored engine has no external task to hand out");
    };
    engine
        .complete_external_task(&l.task.id, "bench-check", serde_json::Map::new())
        .await?;
    Ok(())
}

/// Changes about `instances` instances through the engine: their open external tasks
/// are fetched and completed (each completion updates its instance, writes history and
/// journal); returns how many instances changed.
pub async fn change(target: &Target, instances: usize) -> Result<usize> {
    let store = target.open().await?;
    let engine = Arc::new(Engine::new(store, Arc::new(SystemClock)));
    let topics: Vec<TopicLock> = ["reserve", "ship", "bill"]
        .iter()
        .map(|t| TopicLock {
            topic: t.to_string(),
            lock_duration_ms: 60_000,
        })
        .collect();
    let mut changed = std::collections::HashSet::new();
    while changed.len() < instances {
        let want = (instances - changed.len()).min(256);
        let locked = engine.fetch_and_lock("bench-change", want, &topics).await?;
        if locked.is_empty() {
            break;
        }
        let mut set = tokio::task::JoinSet::new();
        for l in locked {
            changed.insert(l.task.instance_id.clone());
            let engine = engine.clone();
            set.spawn(async move {
                let mut vars = serde_json::Map::new();
                vars.insert("changedBy".into(), "bench-backup".into());
                engine
                    .complete_external_task(&l.task.id, "bench-change", vars)
                    .await
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
    }
    Ok(changed.len())
}

/// Deletes the journal rows inside `sidecar` (what `steadyflow backup` does after a
/// verified backup unless --keep-journal).
pub async fn prune(target: &Target, sidecar: &Sidecar) -> Result<Row> {
    let upto = sidecar
        .manifest
        .journal
        .as_ref()
        .map(|j| j.resume_seq)
        .context("the backup has no journal range")?;
    let exporter = target.exporter()?;
    let meter = Meter::start();
    let n = exporter.prune_journal(upto).await?;
    Ok(Row::new(
        "journal pruning after a backup (default)",
        meter.stop(),
        report::Kind::Other,
        true,
    )
    .note(format!("{n} rows")))
}

/// Runs `script` with bash (`pipefail`), failing on a non-zero exit.
pub async fn shell(script: String) -> Result<()> {
    tokio::task::spawn_blocking(move || -> Result<()> {
        let out = Command::new("bash")
            .args(["-o", "pipefail", "-c", &script])
            .output()
            .with_context(|| format!("cannot run `{script}`"))?;
        ensure!(
            out.status.success(),
            "`{script}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    })
    .await?
}

/// Times a shell command as a table row; `archive` is the file it writes (if any).
pub async fn tool(
    name: &str,
    script: String,
    kind: report::Kind,
    archive: Option<&Path>,
) -> Result<Row> {
    let meter = Meter::start();
    shell(script).await?;
    let mut row = Row::new(name, meter.stop(), kind, false);
    if let Some(a) = archive {
        row = row.archive(std::fs::metadata(a)?.len());
    }
    Ok(row)
}

/// Shell-quotes `s` in single quotes.
pub fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub fn qp(p: &Path) -> String {
    q(&p.display().to_string())
}
