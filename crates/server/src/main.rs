//! `steadyflow`: the BPMN engine with disaster recovery built in.

mod backup_cmd;
mod bench;
mod config;
mod mode_cmd;
mod outage;
mod redis_cache;
mod serve;
mod stores;
mod tls;
mod user_cmd;
mod verify_cmd;

use anyhow::Result;

/// mimalloc: the engine allocates on request threads and frees on the store's writer
/// thread; glibc's malloc spent a quarter of the writer's time on that.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "steadyflow",
    version,
    about = "Steadyflow: a BPMN 2.0 workflow engine with disaster recovery built in"
)]
struct Cli {
    /// Configuration file (default: configs/config.yaml when present).
    #[arg(long, global = true, env = "STEADYFLOW_CONFIG")]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine and its REST API (default: SQLite at ./data/steadyflow.db, port 8080).
    ///
    /// Also serves /health (each component with its latency), /ready (200 while the
    /// database answers) and /metrics (Prometheus; `metrics.token` puts it behind a bearer
    /// token). Logs go to stderr: STEADYFLOW_LOG sets the filter, `log.format` text or json.
    ///
    /// With `backup.targets` in the configuration it backs up by itself: ships the journal
    /// (`backup.continuous`), takes the scheduled backups (`backup.schedules`), answers
    /// /api/v1/backups (start one now, list, show with its verification state), lists a
    /// `backup` component in /health (degraded past `backup.alerts.max_backup_age` or
    /// `max_shipping_lag`) and alerts by webhook and e-mail (`backup.alerts`).
    Serve(config::ServeArgs),
    /// Apply database migrations and exit.
    Migrate(config::DbArgs),
    /// Benchmark: run the reference process (external task -> exclusive gateway -> parallel
    /// fork of two external tasks -> join) for N instances with persistence; prints instances/s.
    Bench(bench::BenchArgs),
    /// Benchmark of backup and restore: generates about --size-mb of realistic data on
    /// PostgreSQL (and SQLite with --sqlite) and times our backup, verify, restore and
    /// incremental beside pg_dump, pg_restore, psql and sqlite3 + zstd.
    BenchBackup(bench::backup::BenchBackupArgs),
    /// Back up the database and configuration files into a verified archive
    /// (`backup list`, `backup verify` manage them).
    Backup(backup_cmd::BackupArgs),
    /// Restore a backup (by id, file or `latest`) into the configured database, after
    /// checking every row against the archive's manifest.
    Restore(backup_cmd::RestoreArgs),
    /// Manage users, roles, groups and API tokens (`user add|token|list|set|disable|enable|remove|revoke`).
    User(user_cmd::UserArgs),
    /// Read or set the service mode of every node sharing the database
    /// (`mode get`, `mode set normal|read-only|core-only|offline --reason TEXT [--until RFC3339]`).
    Mode(mode_cmd::ModeArgs),
    /// Check that a (recovered) node is whole, over its HTTP API: /health and /ready, the
    /// newest backup's journal chain, row counts against its manifest, no instance whose
    /// runtime cannot be read, and an end-to-end smoke process (deployed as
    /// `steadyflow-verify-recovery`, started, its user and external tasks completed, its
    /// history read; cancelled if it does not finish). The token comes from
    /// STEADYFLOW_TOKEN (an admin's or operator's, to read backups). Exit 0 only when
    /// every check holds.
    VerifyRecovery(verify_cmd::VerifyArgs),
    /// Print the OpenAPI document of the REST API (the same one served at /api/v1/openapi.json).
    Openapi,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(config::log_format(cli.config.as_deref()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => {
                let cfg = config::load(cli.config.as_deref(), &args.db, args.listen.as_deref())?;
                serve::run(cfg, args).await
            }
            Command::Migrate(args) => {
                let cfg = config::load(cli.config.as_deref(), &args, None)?;
                stores::open_configured(&cfg).await?;
                tracing::info!(url = %config::redact(&cfg.database_url()), "migrations applied");
                Ok(())
            }
            Command::Bench(args) => bench::run(args).await,
            Command::BenchBackup(args) => bench::backup::run(args).await,
            Command::Backup(args) => {
                let code = backup_cmd::backup(args, cli.config.as_deref()).await;
                std::process::exit(code)
            }
            Command::Restore(args) => {
                let code = backup_cmd::restore(args, cli.config.as_deref()).await;
                std::process::exit(code)
            }
            Command::User(args) => user_cmd::run(args, cli.config.as_deref()).await,
            Command::Mode(args) => mode_cmd::run(args, cli.config.as_deref()).await,
            Command::VerifyRecovery(args) => std::process::exit(verify_cmd::run(args).await),
            Command::Openapi => {
                println!("{}", steadyflow_api::openapi().to_pretty_json()?);
                Ok(())
            }
        }
    })
}

/// Logs to stderr, filtered by `STEADYFLOW_LOG` (default `info`), as text or as one JSON
/// object per line (`log.format`), each carrying its request's span fields.
fn init_logging(format: config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STEADYFLOW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Text => builder.init(),
        config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}
