//! `steadyflow restore …`: a backup (or a chain, up to a point in time) into the
//! configured database through a checked staging copy.

use std::path::{Path, PathBuf};

use serde_json::json;
use steadyflow_backup::archive::FileSum;
use steadyflow_backup::{BackupError, Sidecar, catalog, exit};

use super::{Db, RestoreArgs, database, decrypt_keys, fail, print_json, progress};

pub async fn restore(args: RestoreArgs, config_file: Option<&Path>) -> i32 {
    let json = args.common.json;
    match run_restore(&args, config_file).await {
        Ok(report) => {
            if json {
                print_json(&report);
            } else if let Some(line) = report.get("summary").and_then(|s| s.as_str()) {
                println!("{line}");
            }
            exit::OK
        }
        Err(e) => fail(json, &e),
    }
}

async fn run_restore(
    args: &RestoreArgs,
    config_file: Option<&Path>,
) -> Result<serde_json::Value, BackupError> {
    let to_time = args
        .to_time
        .as_deref()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|e| BackupError::BadInput(format!("--to-time `{t}` is not RFC 3339: {e}")))
        })
        .transpose()?;
    // Each archive of the chain comes from the nearest intact copy: the backup directory,
    // then the configured targets in order.
    let targets = super::targets(&args.common, config_file)?;
    let fetched =
        steadyflow_backup::targets::fetch_chain(&args.common.dir, &targets, &args.backup).await?;
    for f in &fetched {
        eprintln!("fetched {f}");
    }
    let (path, sidecar) = catalog::resolve(&args.common.dir, &args.backup)?;
    // Every read below checks the archive file against its sidecar in the same pass.
    let sum: Option<FileSum> = sidecar.as_ref().map(FileSum::from);
    if args.part.redis_only {
        let redis = super::redis_source().ok_or_else(|| {
            BackupError::BadInput("no Redis is configured (STEADYFLOW_REDIS_URL)".into())
        })?;
        if args.test {
            let (p, k, f) = (
                path.clone(),
                decrypt_keys(args.identity.as_ref()),
                sum.clone(),
            );
            let m =
                tokio::task::spawn_blocking(move || steadyflow_backup::verify(&p, &k, f.as_ref()))
                    .await
                    .map_err(|e| BackupError::BadInput(format!("verify failed: {e}")))??;
            return Ok(json!({"ok": true, "test": true, "backup": m.id,
                "summary": format!("backup {} verified; Redis not written (--test)", m.id)}));
        }
        let stats = steadyflow_backup::restore_redis(
            &path,
            &decrypt_keys(args.identity.as_ref()),
            sum.as_ref(),
            &redis.url,
            &redis.prefix,
            args.force,
        )
        .await?;
        return Ok(
            json!({"ok": true, "redis": {"prefix": redis.prefix, "restored": stats.restored,
            "expired": stats.expired, "cleared": stats.cleared},
            "summary": format!("restored {} Redis key(s) under `{}` ({} expired since the backup, {} replaced)",
                stats.restored, redis.prefix, stats.expired, stats.cleared)}),
        );
    }
    let keys = decrypt_keys(args.identity.as_ref());
    if args.part.config_only {
        if args.test {
            let (p, k, f) = (path.clone(), keys.clone(), sum.clone());
            let m =
                tokio::task::spawn_blocking(move || steadyflow_backup::verify(&p, &k, f.as_ref()))
                    .await
                    .map_err(|e| BackupError::BadInput(format!("verify failed: {e}")))??;
            return Ok(json!({"ok": true, "test": true, "backup": m.id,
                "summary": format!("backup {} verified; configuration files not written (--test)", m.id)}));
        }
        let (p, k, f, dest, force) = (
            path.clone(),
            keys.clone(),
            sum.clone(),
            args.config_dir.clone(),
            args.force,
        );
        let written = tokio::task::spawn_blocking(move || {
            steadyflow_backup::restore_config(&p, &k, f.as_ref(), &dest, force)
        })
        .await
        .map_err(|e| BackupError::BadInput(format!("restore failed: {e}")))??;
        return Ok(json!({"ok": true, "configFiles": written,
            "summary": format!("restored {} configuration file(s) into {}", written.len(), args.config_dir.display())}));
    }
    let target = database(&args.common, config_file)?;
    let scratch_dir =
        tempfile::tempdir().map_err(BackupError::io("cannot create a scratch directory"))?;
    let db = if args.test {
        target.scratch(scratch_dir.path())
    } else {
        target
    };
    if !args.test {
        let state = db.state().await?;
        if let Some(reason) = state.in_use {
            return Err(BackupError::TargetInUse(reason));
        }
        if !state.tables.is_empty() && !args.force {
            let what: Vec<String> = state
                .tables
                .iter()
                .map(|(t, n)| format!("{t}: {n} rows"))
                .collect();
            return Err(BackupError::TargetNotEmpty(format!(
                "{} is not empty ({}); use --force to replace it",
                db.describe(),
                what.join(", ")
            )));
        }
    }
    // The chain that restores the named point: its full backup, then its incrementals.
    let chain: Vec<(PathBuf, Sidecar)> = match &sidecar {
        Some(s) => {
            let dir = path.parent().unwrap_or(Path::new("."));
            // Each link's file is checked against its sidecar while it is read.
            let chain = catalog::chain(dir, s)?;
            chain
                .into_iter()
                .map(|s| (dir.join(&s.archive), s))
                .collect()
        }
        None => Vec::new(),
    };
    let staging = db.stage().await?;
    let (staged, replay) = if chain.len() > 1 || to_time.is_some() {
        if chain.is_empty() {
            return Err(BackupError::BadInput(
                "a point-in-time restore needs the backup directory's catalog: name the backup by id".into(),
            ));
        }
        let (staged, summary) = steadyflow_backup::restore_chain(
            &chain,
            &keys,
            staging,
            db.schema_version(),
            to_time,
            &progress(),
        )
        .await?;
        (staged, Some(summary))
    } else {
        let staged = steadyflow_backup::restore_tables(
            &path,
            &keys,
            sum.as_ref(),
            staging,
            db.schema_version(),
            &progress(),
        )
        .await?;
        (staged, None)
    };
    let m = &staged.manifest;
    let rows: u64 = staged
        .tables
        .iter()
        .filter(|t| t.restored)
        .map(|t| t.rows)
        .sum();
    let staging_name = staged.staging.describe();
    let (seconds, tables) = (staged.seconds, staged.tables.clone());
    let (id, kind, source) = (m.id.clone(), m.kind, m.source_backend.clone());
    if args.test {
        staged.staging.discard().await?;
    } else {
        staged.staging.promote().await?;
    }
    let report_file = match &replay {
        Some(r) if !args.test => Some(write_replay_report(&db, r)?),
        _ => None,
    };
    let mut written_config = Vec::new();
    // The configuration files are in the chain's full backup (incrementals hold none).
    let (config_path, config_sum) = chain
        .first()
        .map(|(p, s)| (p.clone(), Some(FileSum::from(s))))
        .unwrap_or_else(|| (path.clone(), sum.clone()));
    let config_manifest = chain.first().map_or(m, |(_, s)| &s.manifest);
    if !args.test
        && !args.part.db_only
        && config_manifest
            .files
            .iter()
            .any(|f| f.path.starts_with("config/"))
    {
        let (p, k, f, dest, force) = (
            config_path,
            keys.clone(),
            config_sum,
            args.config_dir.clone(),
            args.force,
        );
        written_config = tokio::task::spawn_blocking(move || {
            steadyflow_backup::restore_config(&p, &k, f.as_ref(), &dest, force)
        })
        .await
        .map_err(|e| BackupError::BadInput(format!("restore failed: {e}")))??;
    }
    // The cache must agree with the restored database: its keys come back from the
    // archive when it holds them, otherwise everything under the prefix is dropped.
    let mut cache_note = None;
    if !args.test
        && !args.part.db_only
        && let Some(redis) = super::redis_source()
    {
        cache_note = Some(if m.cache.is_some() {
            let stats = steadyflow_backup::restore_redis(
                &path,
                &keys,
                sum.as_ref(),
                &redis.url,
                &redis.prefix,
                true,
            )
            .await?;
            format!("{} Redis key(s) restored", stats.restored)
        } else {
            let n = steadyflow_backup::invalidate_redis(&redis.url, &redis.prefix).await?;
            format!(
                "Redis cache under `{}` invalidated ({n} keys)",
                redis.prefix
            )
        });
    }
    let replayed = replay
        .as_ref()
        .map(|r| {
            format!(
                "; {} incremental(s): {} journal rows in {} transactions replayed up to {}{}",
                r.incrementals,
                r.rows_replayed,
                r.transactions_replayed,
                r.restored_to.map_or("-".into(), |t| t.to_rfc3339()),
                if r.replay_report.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; {} task(s) worked on after that point will run again (replay report{})",
                        r.replay_report.len(),
                        report_file
                            .as_ref()
                            .map_or(String::new(), |f| format!(": {}", f.display()))
                    )
                }
            )
        })
        .unwrap_or_default();
    let summary = if args.test {
        format!(
            "test restore of backup {id} ({}, from {}) into {staging_name}: {} tables, {rows} rows, \
             counts and checksums match{replayed}, {seconds:.2} s; scratch dropped, nothing else touched",
            kind.as_str(),
            source.as_deref().unwrap_or("-"),
            tables.iter().filter(|t| t.restored).count()
        )
    } else {
        format!(
            "restored backup {id} ({}, from {}) into {}: {} tables, {rows} rows, counts and \
             checksums match{replayed}, {seconds:.2} s{}",
            kind.as_str(),
            source.as_deref().unwrap_or("-"),
            db.describe(),
            tables.iter().filter(|t| t.restored).count(),
            if written_config.is_empty() {
                String::new()
            } else {
                format!("; {} configuration file(s) restored", written_config.len())
            }
        )
    };
    Ok(json!({
        "ok": true,
        "test": args.test,
        "backup": id,
        "kind": kind.as_str(),
        "sourceBackend": source,
        "target": if args.test { staging_name } else { db.describe() },
        "tables": tables,
        "rows": rows,
        "seconds": seconds,
        "configFiles": written_config,
        "cache": cache_note,
        "replay": replay,
        "replayReportFile": report_file,
        "fetched": fetched,
        "summary": summary,
    }))
}

/// Writes the replay report beside the target: `<db>.replay-report.json` next to a
/// SQLite file, `replay-report-<database>.json` in the working directory for PostgreSQL.
fn write_replay_report(
    db: &Db,
    summary: &steadyflow_backup::ReplaySummary,
) -> Result<PathBuf, BackupError> {
    let path = match db {
        Db::Sqlite(p) => PathBuf::from(format!("{}.replay-report.json", p.display())),
        Db::Postgres(u) => {
            let name = steadyflow_store_pg::tls::PgTarget::parse(u)
                .ok()
                .and_then(|c| c.get_dbname().map(str::to_string))
                .unwrap_or_else(|| "postgres".into());
            PathBuf::from(format!("replay-report-{name}.json"))
        }
    };
    let text = serde_json::to_vec_pretty(&json!({
        "restoredTo": summary.restored_to,
        "coveredFrom": summary.covered_from,
        "coveredTo": summary.covered_to,
        "tasks": summary.replay_report,
        "note": "These tasks were worked on after the recovery point: the restored engine hands them out (or waits for them) again. Workers should use the task id as an idempotency key.",
    }))
    .map_err(|e| BackupError::BadInput(format!("replay report: {e}")))?;
    std::fs::write(&path, text)
        .map_err(BackupError::io(format!("cannot write {}", path.display())))?;
    Ok(path)
}
