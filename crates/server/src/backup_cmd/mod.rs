//! `steadyflow backup …` and `steadyflow restore …`: the operators' commands around
//! `steadyflow-backup`, with the database taken from the same configuration as `serve`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use serde_json::json;
use steadyflow_backup::targets::{Located, SyncOutcome};
use steadyflow_backup::{
    BackupError, BackupOptions, ConfigFile, DecryptWith, EncryptTo, Parts, Progress, ProgressSink,
    Sidecar, Target, catalog, exit,
};
use steadyflow_store::recovery::{Exporter, Staging, TargetState};

use crate::config::{self, DbArgs};

mod restore;
pub mod schedule;
pub mod service;
pub mod ship;
pub use restore::restore;

const EXIT_CODES: &str = "Exit codes: 0 ok, 1 failed (database or I/O), 2 bad input (unknown backup, \
wrong or missing key, newer format or schema, unsafe archive, bad flags), 3 verification failed \
(damaged or changed archive), 4 target not empty (use --force), 5 target in use by a running server.";

#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = EXIT_CODES,
)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub command: Option<BackupCommand>,
    #[command(flatten)]
    pub take: TakeArgs,
}

#[derive(Debug, Args)]
pub struct TakeArgs {
    /// Only the journal since the newest backup in --dir (its parent); restores replay it
    /// on top of the chain's full backup.
    #[arg(long, conflicts_with_all = ["redis_only", "config_only"])]
    pub incremental: bool,
    #[command(flatten)]
    pub part: PartFlags,
    /// Write a plain tar (zstd is the default).
    #[arg(long)]
    pub no_compress: bool,
    /// Keep the live journal's rows that this backup holds (by default they are deleted
    /// once the backup is verified, so the journal stays small).
    #[arg(long, env = "STEADYFLOW_BACKUP_KEEP_JOURNAL")]
    pub keep_journal: bool,
    /// Encrypt with age: passphrase from ENCRYPT_KEY, or to the recipients in
    /// STEADYFLOW_AGE_RECIPIENTS (comma-separated `age1…` keys).
    #[arg(long)]
    pub encrypt: bool,
    #[command(flatten)]
    pub common: Common,
}

/// One part instead of everything (tables, configuration files, and the Redis keys when
/// Redis is configured).
#[derive(Debug, Args, Clone, Copy)]
#[group(multiple = false)]
pub struct PartFlags {
    /// Only the database tables.
    #[arg(long)]
    pub db_only: bool,
    /// Only the Redis keys under the engine's prefix (STEADYFLOW_REDIS_URL,
    /// STEADYFLOW_REDIS_PREFIX).
    #[arg(long)]
    pub redis_only: bool,
    /// Only the configuration files (restored into --config-dir).
    #[arg(long)]
    pub config_only: bool,
}

#[derive(Debug, Args, Clone)]
pub struct Common {
    /// Backup directory.
    #[arg(long, env = "STEADYFLOW_BACKUP_DIR", default_value = "./backups")]
    pub dir: PathBuf,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// List the recovery points in the backup directory (oldest first).
    #[command(after_help = EXIT_CODES)]
    List(Common),
    /// Read archives back whole: checksums, decryption, manifest, row counts and content.
    #[command(after_help = EXIT_CODES)]
    Verify(VerifyArgs),
    /// Delete the recovery points past the retention of their data classes
    /// (`backup.retention`), in the backup directory and on every target. Never deletes the
    /// newest verified full backup, a point a kept incremental needs, or an object under
    /// S3 Object Lock.
    #[command(after_help = EXIT_CODES)]
    Prune(PruneArgs),
    /// Fold the incrementals of every closed chain (one that a newer full backup ended:
    /// chiefly the shipped segments, thousands an hour) into one incremental per chain,
    /// in the backup directory and on every target. Restores reach the same data and
    /// times; encrypted chains are left alone. `serve` does it after each scheduled full
    /// backup.
    #[command(after_help = EXIT_CODES)]
    Compact(CompactArgs),
}

#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Print what would be folded; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Print what would be deleted and why; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Measure ages at this time instead of now (RFC 3339), e.g. to see what a date would
    /// prune.
    #[arg(long, value_name = "RFC3339")]
    pub now: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Backup id, archive file, or `latest`.
    #[arg(required_unless_present = "all")]
    pub backup: Option<String>,
    /// Every recovery point in the directory.
    #[arg(long)]
    pub all: bool,
    /// age identity file for archives encrypted to recipients (env STEADYFLOW_AGE_IDENTITY).
    #[arg(long, env = "STEADYFLOW_AGE_IDENTITY")]
    pub identity: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub struct RestoreArgs {
    /// Backup id, archive file, or `latest`.
    pub backup: String,
    #[command(flatten)]
    pub part: PartFlags,
    /// Point-in-time restore: the chain's full backup, then every journal transaction
    /// committed at or before this time (RFC 3339, e.g. 2026-12-03T10:15:00Z). The backup
    /// named (default `latest`) ends the chain. Work done after that time is listed in the
    /// replay report.
    #[arg(long, value_name = "RFC3339")]
    pub to_time: Option<String>,
    /// Restore into a scratch database, check it, report, and drop it: the target is
    /// never touched.
    #[arg(long)]
    pub test: bool,
    /// Replace a target that holds data.
    #[arg(long)]
    pub force: bool,
    /// Where configuration files are restored.
    #[arg(long, default_value = "configs")]
    pub config_dir: PathBuf,
    /// age identity file for archives encrypted to recipients (env STEADYFLOW_AGE_IDENTITY).
    #[arg(long, env = "STEADYFLOW_AGE_IDENTITY")]
    pub identity: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

/// The database a command works on.
enum Db {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Db {
    fn from_url(url: &str) -> Result<Db, BackupError> {
        if let Some(p) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            Ok(Db::Sqlite(PathBuf::from(p)))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Db::Postgres(url.to_string()))
        } else {
            Err(BackupError::BadInput(format!(
                "unsupported database URL `{}`: use sqlite://PATH or postgres://HOST/DB",
                config::redact(url)
            )))
        }
    }

    fn exporter(&self) -> Result<Box<dyn Exporter>, BackupError> {
        Ok(match self {
            Db::Sqlite(p) => Box::new(steadyflow_store_sqlite::recovery::SqliteExporter::new(p)),
            Db::Postgres(u) => Box::new(steadyflow_store_pg::recovery::PgExporter::new(u)?),
        })
    }

    async fn state(&self) -> Result<TargetState, BackupError> {
        Ok(match self {
            Db::Sqlite(p) => steadyflow_store_sqlite::recovery::target_state(p)?,
            Db::Postgres(u) => steadyflow_store_pg::recovery::target_state(u).await?,
        })
    }

    async fn stage(&self) -> Result<Box<dyn Staging>, BackupError> {
        Ok(match self {
            Db::Sqlite(p) => {
                let p = p.clone();
                Box::new(
                    tokio::task::spawn_blocking(move || {
                        steadyflow_store_sqlite::recovery::stage(&p)
                    })
                    .await
                    .map_err(|e| BackupError::BadInput(format!("staging failed: {e}")))??,
                )
            }
            Db::Postgres(u) => Box::new(steadyflow_store_pg::recovery::stage(u).await?),
        })
    }

    fn schema_version(&self) -> i64 {
        match self {
            Db::Sqlite(_) => steadyflow_store_sqlite::recovery::schema_version(),
            Db::Postgres(_) => i64::from(steadyflow_store_pg::schema_version()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Db::Sqlite(p) => format!("SQLite database {}", p.display()),
            Db::Postgres(u) => format!("PostgreSQL database {}", config::redact(u)),
        }
    }

    /// A scratch target on the same kind of backend, for `restore --test`.
    fn scratch(&self, dir: &Path) -> Db {
        match self {
            Db::Sqlite(_) => Db::Sqlite(dir.join("restore-test.db")),
            Db::Postgres(u) => {
                let mut cfg: tokio_postgres::Config =
                    u.parse().unwrap_or_else(|_| tokio_postgres::Config::new());
                cfg.dbname(format!("steadyflow_restore_test_{}", std::process::id()));
                Db::Postgres(pg_url(u, &cfg))
            }
        }
    }
}

/// `url` with its database name replaced by `cfg`'s.
fn pg_url(url: &str, cfg: &tokio_postgres::Config) -> String {
    let name = cfg.get_dbname().unwrap_or("postgres");
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn database(common: &Common, config_file: Option<&Path>) -> Result<Db, BackupError> {
    let cfg = config::load(config_file, &common.db, None)
        .map_err(|e| BackupError::BadInput(format!("{e:#}")))?;
    Db::from_url(&cfg.database_url())
}

/// The configured backup targets (`backup.targets`), opened.
fn targets(common: &Common, config_file: Option<&Path>) -> Result<Vec<Target>, BackupError> {
    let cfg = config::load(config_file, &common.db, None)
        .map_err(|e| BackupError::BadInput(format!("{e:#}")))?;
    steadyflow_backup::targets::open_all(&cfg.backup.targets)
}

/// The engine's Redis, when configured: `STEADYFLOW_REDIS_URL`, keys under
/// `STEADYFLOW_REDIS_PREFIX` (default `steadyflow:`).
pub(crate) fn redis_source() -> Option<steadyflow_backup::RedisSource> {
    let url = std::env::var("STEADYFLOW_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    let prefix = std::env::var("STEADYFLOW_REDIS_PREFIX")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "steadyflow:".into());
    Some(steadyflow_backup::RedisSource { url, prefix })
}

fn encrypt_keys() -> EncryptTo {
    EncryptTo {
        passphrase: std::env::var("ENCRYPT_KEY").ok().filter(|k| !k.is_empty()),
        recipients: std::env::var("STEADYFLOW_AGE_RECIPIENTS")
            .ok()
            .map(|r| {
                r.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn decrypt_keys(identity: Option<&PathBuf>) -> DecryptWith {
    DecryptWith {
        passphrase: std::env::var("ENCRYPT_KEY").ok().filter(|k| !k.is_empty()),
        identity_files: identity.cloned().into_iter().collect(),
    }
}

/// The configuration files a backup carries: the `--config` file, or the YAML files in
/// `configs/`.
fn config_files(config_file: Option<&Path>) -> Vec<ConfigFile> {
    let named = |p: &Path| ConfigFile {
        path: p.to_path_buf(),
        name: p
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "config.yaml".into()),
    };
    if let Some(f) = config_file {
        return vec![named(f)];
    }
    let mut files: Vec<ConfigFile> = std::fs::read_dir("configs")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .map(|p| named(&p))
        .collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    files
}

/// Progress on a terminal: one bar per step with rows and bytes; nothing otherwise
/// (the command prints one summary line at the end).
struct TermProgress {
    bar: indicatif::ProgressBar,
}

impl TermProgress {
    fn on_terminal() -> Option<Progress> {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg}: {pos} rows ({per_sec}), {prefix} [{elapsed}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Some(Progress::new(Arc::new(TermProgress { bar })))
    }
}

impl ProgressSink for TermProgress {
    fn stage(&self, name: &str) {
        self.bar.set_message(name.to_string());
    }
    fn rows(&self, rows: u64, bytes: u64) {
        self.bar.inc(rows);
        if bytes > 0 {
            self.bar
                .set_prefix(format!("{}", indicatif::HumanBytes(bytes)));
        }
    }
}

impl Drop for TermProgress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

fn progress() -> Progress {
    TermProgress::on_terminal().unwrap_or_default()
}

/// Prints the error (JSON on stdout with `--json`, text on stderr) and returns its code.
fn fail(json: bool, e: &BackupError) -> i32 {
    if json {
        println!(
            "{}",
            json!({"ok": false, "error": {"code": e.code(), "message": e.to_string()}})
        );
    } else {
        eprintln!("error: {e}");
    }
    e.exit_code()
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub async fn backup(args: BackupArgs, config_file: Option<&Path>) -> i32 {
    match args.command {
        Some(BackupCommand::List(c)) => list(&c, config_file).await,
        Some(BackupCommand::Verify(v)) => verify(&v).await,
        Some(BackupCommand::Prune(p)) => prune(&p, config_file).await,
        Some(BackupCommand::Compact(a)) => compact(&a, config_file).await,
        None => {
            let json = args.take.common.json;
            match take(&args.take, config_file).await {
                Ok((s, copies)) => {
                    let failed: Vec<&SyncOutcome> =
                        copies.iter().filter(|c| c.error.is_some()).collect();
                    if json {
                        print_json(
                            &json!({"ok": failed.is_empty(), "backup": s, "targets": copies}),
                        );
                    } else {
                        println!(
                            "backup {} written: {} ({} bytes, {} rows, verified)",
                            s.manifest.id,
                            args.take.common.dir.join(&s.archive).display(),
                            s.archive_size,
                            s.manifest.table_rows()
                        );
                        for c in &copies {
                            match &c.error {
                                None => println!(
                                    "copied to {}: {} uploaded and verified",
                                    c.target,
                                    if c.uploaded.is_empty() {
                                        "nothing new".to_string()
                                    } else {
                                        c.uploaded.join(", ")
                                    }
                                ),
                                Some(e) => eprintln!("error: target {} failed: {e}", c.target),
                            }
                        }
                    }
                    if failed.is_empty() {
                        exit::OK
                    } else {
                        exit::FAILED
                    }
                }
                Err(e) => fail(json, &e),
            }
        }
    }
}

/// Takes the backup into the backup directory, then copies it (and anything a target is
/// missing) to every configured target.
async fn take(
    args: &TakeArgs,
    config_file: Option<&Path>,
) -> Result<(Sidecar, Vec<SyncOutcome>), BackupError> {
    let targets = targets(&args.common, config_file)?;
    let parts = if args.part.redis_only {
        Parts::RedisOnly
    } else if args.part.db_only {
        Parts::DbOnly
    } else if args.part.config_only {
        Parts::ConfigOnly
    } else {
        Parts::All
    };
    let kind = if args.incremental {
        steadyflow_backup::Kind::Incremental
    } else {
        steadyflow_backup::Kind::Full
    };
    let exporter = if matches!(parts, Parts::ConfigOnly | Parts::RedisOnly) {
        None
    } else {
        Some(database(&args.common, config_file)?.exporter()?)
    };
    let opts = BackupOptions {
        dir: args.common.dir.clone(),
        parts,
        compress: !args.no_compress,
        encrypt: args.encrypt.then(encrypt_keys),
        config_files: config_files(config_file),
        now: chrono::Utc::now(),
        kind,
        prune_journal: !args.keep_journal,
        redis: redis_source(),
    };
    let sidecar = steadyflow_backup::create(exporter.as_deref(), &opts, &progress()).await?;
    let copies = steadyflow_backup::targets::sync(&args.common.dir, &targets).await?;
    Ok((sidecar, copies))
}

/// One line per recovery point; the journal's sequence and time range say what a
/// point-in-time restore can reach with it.
fn print_list(points: &[Located]) {
    println!(
        "{:<28} {:<11} {:<28} {:<8} {:>12} {:>10} {:<5} {:<23} {:<39} {:<19} {:<24} locations",
        "id",
        "kind",
        "parent",
        "backend",
        "bytes",
        "rows",
        "enc",
        "journal seq",
        "journal time range",
        "verified",
        "classes"
    );
    let t = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or("-".to_string(), |t| {
            t.format("%Y-%m-%d %H:%M:%S").to_string()
        })
    };
    for l in points {
        let p = &l.sidecar;
        let m = &p.manifest;
        let (seq, times) = match &m.journal {
            Some(j) => (
                match (j.journal_first_seq, j.journal_last_seq) {
                    (Some(a), Some(b)) => format!("{a}..{b}"),
                    _ => "-".into(),
                },
                format!("{} .. {}", t(j.journal_first_time), t(j.journal_last_time)),
            ),
            None => ("-".into(), "-".into()),
        };
        let classes: Vec<&str> = m.data_classes.iter().map(|c| c.as_str()).collect();
        println!(
            "{:<28} {:<11} {:<28} {:<8} {:>12} {:>10} {:<5} {:<23} {:<39} {:<19} {:<24} {}",
            m.id,
            m.kind.as_str(),
            m.parent.as_deref().unwrap_or("-"),
            m.source_backend.as_deref().unwrap_or("-"),
            p.archive_size,
            m.table_rows(),
            if m.encryption == "none" { "no" } else { "yes" },
            seq,
            times,
            t(p.verified_at),
            classes.join(","),
            l.locations.join(",")
        );
    }
}

/// The recovery points of the backup directory and of every target, with where each
/// one exists.
async fn list(c: &Common, config_file: Option<&Path>) -> i32 {
    let all = match targets(c, config_file) {
        Ok(t) => steadyflow_backup::targets::list_all(&c.dir, &t).await,
        Err(e) => Err(e),
    };
    match all {
        Ok((points, unreachable)) => {
            for u in &unreachable {
                eprintln!("warning: target not listed: {u}");
            }
            if c.json {
                print_json(&json!(points));
            } else if points.is_empty() {
                println!("no backups in {} or any target", c.dir.display());
            } else {
                print_list(&points);
            }
            exit::OK
        }
        Err(e) => fail(c.json, &e),
    }
}

async fn verify(v: &VerifyArgs) -> i32 {
    let c = &v.common;
    let targets: Vec<(PathBuf, Option<Sidecar>)> = if v.all {
        match catalog::list(&c.dir) {
            Ok(points) => points
                .into_iter()
                .map(|p| (c.dir.join(&p.archive), Some(p)))
                .collect(),
            Err(e) => return fail(c.json, &e),
        }
    } else {
        match catalog::resolve(&c.dir, v.backup.as_deref().unwrap_or("latest")) {
            Ok(t) => vec![t],
            Err(e) => return fail(c.json, &e),
        }
    };
    let keys = decrypt_keys(v.identity.as_ref());
    let mut results = Vec::new();
    let mut worst = exit::OK;
    for (path, sidecar) in targets {
        let (p2, k2) = (path.clone(), keys.clone());
        let s2 = sidecar.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            // An incremental is only as good as its chain: every parent there, no gap.
            if let Some(s) = &s2 {
                catalog::chain(p2.parent().unwrap_or(Path::new(".")), s)?;
            }
            // The file against its sidecar, in the same read as its content.
            let sum = s2.as_ref().map(steadyflow_backup::archive::FileSum::from);
            steadyflow_backup::verify(&p2, &k2, sum.as_ref())
        })
        .await
        .unwrap_or_else(|e| Err(BackupError::BadInput(format!("verify failed: {e}"))))
        .and_then(|m| match &sidecar {
            Some(s) if s.manifest != m => Err(BackupError::Verify(format!(
                "the archive's manifest differs from its sidecar {}.manifest.json",
                s.manifest.id
            ))),
            _ => Ok(m),
        });
        match outcome {
            Ok(m) => {
                if let Some(mut s) = sidecar {
                    let dir = path.parent().unwrap_or(Path::new("."));
                    if let Err(e) = catalog::mark_verified(dir, &mut s, chrono::Utc::now()) {
                        tracing::warn!(error = %e, "could not record the verification");
                    }
                }
                if !c.json {
                    println!(
                        "OK   {} ({} files, {} rows)",
                        path.display(),
                        m.files.len(),
                        m.table_rows()
                    );
                }
                results.push(json!({"file": path, "id": m.id, "ok": true}));
            }
            Err(e) => {
                if !c.json {
                    println!("FAIL {}: {e}", path.display());
                }
                results.push(json!({"file": path, "ok": false,
                    "error": {"code": e.code(), "message": e.to_string()}}));
                worst = worst.max(e.exit_code());
            }
        }
    }
    if c.json {
        print_json(&json!({"ok": worst == exit::OK, "results": results}));
    }
    worst
}

async fn compact(a: &CompactArgs, config_file: Option<&Path>) -> i32 {
    let c = &a.common;
    let run = async {
        let targets = targets(c, config_file)?;
        steadyflow_backup::fold::fold_all(&c.dir, &targets, a.dry_run).await
    };
    match run.await {
        Ok(folds) => {
            if c.json {
                print_json(&json!({"ok": true, "dryRun": a.dry_run, "folds": folds}));
            } else if folds.is_empty() {
                println!("nothing to fold: no closed chain with two or more incrementals");
            } else {
                for f in &folds {
                    let (first, last) = (
                        f.folded.first().map_or("-", String::as_str),
                        f.folded.last().map_or("-", String::as_str),
                    );
                    match &f.into {
                        Some(into) => println!(
                            "folded {} incrementals after {} ({first} .. {last}, {} journal rows) into {into}",
                            f.folded.len(),
                            f.base,
                            f.rows
                        ),
                        None => println!(
                            "would fold {} incrementals after {} ({first} .. {last}, {} journal rows; dry run)",
                            f.folded.len(),
                            f.base,
                            f.rows
                        ),
                    }
                    for (loc, why) in &f.kept {
                        println!("       kept on {loc}: {why}");
                    }
                }
            }
            exit::OK
        }
        Err(e) => fail(c.json, &e),
    }
}

async fn prune(a: &PruneArgs, config_file: Option<&Path>) -> i32 {
    let c = &a.common;
    let run = async {
        let now = match &a.now {
            Some(t) => chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|e| BackupError::BadInput(format!("--now `{t}` is not RFC 3339: {e}")))?,
            None => chrono::Utc::now(),
        };
        let cfg = config::load(config_file, &c.db, None)
            .map_err(|e| BackupError::BadInput(format!("{e:#}")))?;
        let targets = steadyflow_backup::targets::open_all(&cfg.backup.targets)?;
        steadyflow_backup::prune::prune_all(&c.dir, &targets, &cfg.backup.retention, now, a.dry_run)
            .await
    };
    match run.await {
        Ok(outcome) => {
            if c.json {
                print_json(&json!({"ok": true, "dryRun": a.dry_run, "points": outcome}));
            } else {
                for p in &outcome {
                    let d = &p.decision;
                    if !d.delete {
                        println!("keep   {}: {}", d.id, d.reason);
                    } else if a.dry_run {
                        println!(
                            "delete {} from {} ({}; dry run)",
                            d.id,
                            p.locations.join(", "),
                            d.reason
                        );
                    } else {
                        println!(
                            "delete {} from {} ({})",
                            d.id,
                            p.deleted.join(", "),
                            d.reason
                        );
                        for (loc, why) in &p.refused {
                            println!("       {} kept on {loc}: {why}", d.id);
                        }
                    }
                }
            }
            exit::OK
        }
        Err(e) => fail(c.json, &e),
    }
}
