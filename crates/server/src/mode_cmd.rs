//! `steadyflow mode get|set`: the service mode of every node sharing the database,
//! read and written straight in the database (journaled; running nodes follow within
//! 2 s). On SQLite the server must be stopped (it holds the database): use `PUT
//! /api/v1/system/mode` with an admin token instead.

use anyhow::{Context, Result, anyhow};
use steadyflow_api::modes::{Modes, checked_record};
use steadyflow_store::mode::Mode;

use crate::config::{self, DbArgs};

#[derive(Debug, clap::Args)]
pub struct ModeArgs {
    #[command(subcommand)]
    pub command: ModeCommand,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum ModeCommand {
    /// Print the mode in force (JSON: mode, reason, until, setBy, setAt).
    Get,
    /// Set the mode: normal, read-only, core-only or offline.
    Set {
        #[arg(value_parser = parse_mode)]
        mode: Mode,
        /// Why: shown in every refused request's message and on the status page.
        #[arg(long)]
        reason: Option<String>,
        /// Return to normal by itself at this time (RFC 3339, e.g. 2026-12-03T18:00:00Z).
        #[arg(long, value_parser = parse_time)]
        until: Option<chrono::DateTime<chrono::Utc>>,
    },
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    Mode::parse(s)
        .ok_or_else(|| format!("`{s}` is not a mode: normal, read-only, core-only or offline"))
}

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("`{s}` is not an RFC 3339 time: {e}"))
}

/// `cli:<login name>`: who set a mode from the command line.
fn cli_user() -> String {
    let name = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_string());
    format!("cli:{name}")
}

pub async fn run(args: ModeArgs, config_file: Option<&std::path::Path>) -> Result<()> {
    let cfg = config::load(config_file, &args.db, None)?;
    let store = crate::stores::open_configured(&cfg).await.with_context(|| {
        "cannot open the database (on SQLite, stop the server first, or use PUT /api/v1/system/mode with an admin token)"
    })?;
    let modes = Modes::new();
    let now = chrono::Utc::now();
    let view = match args.command {
        ModeCommand::Get => modes.refresh(store.as_ref(), now).await?,
        ModeCommand::Set {
            mode,
            reason,
            until,
        } => {
            let record =
                checked_record(mode, reason, until, &cli_user(), now).map_err(|e| anyhow!(e))?;
            let view = modes.set(store.as_ref(), record, now).await?;
            eprintln!("mode {} set; running nodes follow within 2 s", view.mode);
            view
        }
    };
    println!("{}", serde_json::to_string_pretty(&view)?);
    Ok(())
}
