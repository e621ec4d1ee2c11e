//! Plain SQL migrations tracked in `schema_version`, by the shared rules
//! ([`steadyflow_store::migrations`]): applied in order in one transaction, and a
//! database written by a newer binary refused.

use rusqlite::Connection;
use steadyflow_store::Result;
use steadyflow_store::migrations::{self, Migration};

use crate::backend_err;

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "users",
        sql: include_str!("../migrations/sqlite/0002_users.sql"),
    },
    Migration {
        version: 3,
        name: "page_indexes",
        sql: include_str!("../migrations/sqlite/0003_page_indexes.sql"),
    },
    Migration {
        version: 4,
        name: "system_mode",
        sql: include_str!("../migrations/sqlite/0004_system_mode.sql"),
    },
    Migration {
        version: 5,
        name: "idempotency",
        sql: include_str!("../migrations/sqlite/0005_idempotency.sql"),
    },
    Migration {
        version: 6,
        name: "process_definitions_view",
        sql: include_str!("../migrations/sqlite/0006_process_definitions_view.sql"),
    },
];

pub(crate) fn run(conn: &mut Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(backend_err)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .map_err(backend_err)?;
    let current: i32 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )
        .map_err(backend_err)?;
    for m in migrations::pending(current, MIGRATIONS)? {
        tracing::info!(
            version = m.version,
            name = m.name,
            "applying SQLite migration"
        );
        tx.execute_batch(m.sql).map_err(backend_err)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [m.version],
        )
        .map_err(backend_err)?;
    }
    tx.commit().map_err(backend_err)
}

#[cfg(test)]
mod tests {
    use steadyflow_store::StoreError;

    use crate::SqliteStore;

    #[test]
    fn a_schema_newer_than_this_binary_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("newer.db");
        drop(SqliteStore::open(&path).unwrap());
        let next = super::migrations::latest(super::MIGRATIONS) + 1;
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute("INSERT INTO schema_version (version) VALUES (?1)", [next])
            .unwrap();
        match SqliteStore::open(&path) {
            Err(StoreError::Unavailable(m)) => {
                assert!(m.contains("newer than this binary"), "{m}")
            }
            Err(e) => panic!("expected Unavailable, got {e}"),
            Ok(_) => panic!("a newer schema must be refused"),
        }
    }
}
