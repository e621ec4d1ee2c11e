//! Schema migrations by the shared rules ([`steadyflow_store::migrations`]): plain SQL
//! files embedded in the binary, tracked in `schema_version`, applied in one
//! transaction under a transaction-scoped advisory lock so nodes starting together
//! apply each migration exactly once; a database written by a newer binary is refused.

use steadyflow_store::migrations::{self, Migration};
use steadyflow_store::{Result, StoreError};
use tokio_postgres::Client;

use crate::error::db_err;

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "users",
        sql: include_str!("../migrations/postgres/0002_users.sql"),
    },
    Migration {
        version: 3,
        name: "page_indexes",
        sql: include_str!("../migrations/postgres/0003_page_indexes.sql"),
    },
    Migration {
        version: 4,
        name: "system_mode",
        sql: include_str!("../migrations/postgres/0004_system_mode.sql"),
    },
    Migration {
        version: 5,
        name: "idempotency",
        sql: include_str!("../migrations/postgres/0005_idempotency.sql"),
    },
    Migration {
        version: 6,
        name: "process_definitions_view",
        sql: include_str!("../migrations/postgres/0006_process_definitions_view.sql"),
    },
];

/// Advisory lock key of the migration lock ("steadyfl" in ASCII).
const MIGRATION_LOCK: i64 = 0x7374_6561_6479_666c;

/// The schema version this binary writes.
pub fn latest_version() -> i32 {
    migrations::latest(MIGRATIONS)
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
    let mut applied = Vec::new();
    for m in migrations::pending(current, MIGRATIONS)? {
        tx.batch_execute(m.sql).await.map_err(|e| {
            StoreError::Backend(format!(
                "migration {} ({}) failed: {}",
                m.version,
                m.name,
                db_err(e)
            ))
        })?;
        // Bookkeeping of the schema, not engine state: the database's own clock.
        tx.execute(
            "INSERT INTO schema_version (version, name, applied_at) \
             VALUES ($1, $2, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)",
            &[&m.version, &m.name],
        )
        .await
        .map_err(db_err)?;
        applied.push(m.version);
    }
    tx.commit().await.map_err(db_err)?;
    if !applied.is_empty() {
        tracing::info!(?applied, "applied PostgreSQL migrations");
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use steadyflow_store::StoreError;
    use tokio_postgres::NoTls;

    use crate::PgStore;
    use crate::testing::fresh_database;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_schema_newer_than_this_binary_is_refused() {
        let Some(db) = fresh_database().await else {
            return;
        };
        drop(PgStore::connect(db.url()).await.expect("migrate"));
        let (client, conn) = tokio_postgres::connect(db.url(), NoTls).await.unwrap();
        tokio::spawn(conn);
        client
            .execute(
                "INSERT INTO schema_version (version, name, applied_at) VALUES ($1, 'future', 0)",
                &[&(super::latest_version() + 1)],
            )
            .await
            .unwrap();
        drop(client);
        match PgStore::connect(db.url()).await {
            Err(StoreError::Unavailable(m)) => {
                assert!(m.contains("newer than this binary"), "{m}")
            }
            Err(e) => panic!("expected Unavailable, got {e}"),
            Ok(_) => panic!("a newer schema must be refused"),
        }
        db.cleanup().await;
    }
}
