//! Schema migrations: plain SQL files embedded in the binary, tracked in
//! `schema_version`, applied in one transaction under a transaction-scoped advisory
//! lock so nodes starting together apply each migration exactly once.

use steadyflow_store::{Result, StoreError};
use tokio_postgres::Client;

use crate::error::db_err;

/// `(version, name, sql)`, in order.
pub(crate) const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "init",
    include_str!("../migrations/postgres/0001_init.sql"),
)];

/// Advisory lock key of the migration lock ("steadyfl" in ASCII).
const MIGRATION_LOCK: i64 = 0x7374_6561_6479_666c;

/// The schema version this binary writes.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}

/// Brings the schema up to date; returns the versions applied now.
pub(crate) async fn migrate(client: &mut Client) -> Result<Vec<i32>> {
    let tx = client.transaction().await.map_err(db_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (\
             version INT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .await
    .map_err(db_err)?;
    let current: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(db_err)?;
    if current > latest_version() {
        tracing::warn!(
            current,
            known = latest_version(),
            "PostgreSQL schema is newer than this binary; continuing with the known tables"
        );
    }
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql).await.map_err(|e| {
            StoreError::Backend(format!(
                "migration {version} ({name}) failed: {}",
                db_err(e)
            ))
        })?;
        tx.execute(
            "INSERT INTO schema_version (version, name, applied_at) VALUES ($1, $2, $3)",
            &[version, name, &chrono::Utc::now().timestamp_millis()],
        )
        .await
        .map_err(db_err)?;
        applied.push(*version);
    }
    tx.commit().await.map_err(db_err)?;
    if !applied.is_empty() {
        tracing::info!(?applied, "applied PostgreSQL migrations");
    }
    Ok(applied)
}
