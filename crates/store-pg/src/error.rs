//! Driver and pool errors -> [`StoreError`].

use deadpool_postgres::PoolError;
use steadyflow_store::StoreError;
use tokio_postgres::error::SqlState;

/// Maps a driver error: lost connections and servers refusing work are
/// `Unavailable`, everything else the server reports is `Backend`.
pub(crate) fn db_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let unavailable = code.starts_with("08") // connection exception
            || code.starts_with("57P") // admin/crash shutdown, cannot connect now
            || code == "53300" // too many connections
            || code == "25006" // read-only transaction (hot standby, default_transaction_read_only)
            || code == "53100" // disk full
            || code == "3D000"; // database does not exist
        let msg = format!("{} ({code})", db.message());
        return if unavailable {
            StoreError::Unavailable(msg)
        } else {
            StoreError::Backend(msg)
        };
    }
    if e.is_closed() || is_io(&e) {
        // With the cause: a refused TLS handshake says which certificate check failed.
        return StoreError::Unavailable(with_source(&e));
    }
    let text = e.to_string();
    if text.starts_with("error connecting")
        || text.starts_with("timeout")
        || text.starts_with("error communicating")
    {
        StoreError::Unavailable(with_source(&e))
    } else {
        StoreError::Backend(with_source(&e))
    }
}

fn with_source(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}

fn is_io(e: &tokio_postgres::Error) -> bool {
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

pub(crate) fn pool_err(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => db_err(e),
        PoolError::Timeout(kind) => StoreError::Unavailable(format!(
            "timed out waiting for a database connection ({kind:?})"
        )),
        PoolError::Closed => StoreError::Unavailable("connection pool closed".into()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// `40001` serialization failure or `40P01` deadlock: the transaction was rolled back
/// and may simply be retried.
pub(crate) fn is_retryable(e: &tokio_postgres::Error) -> bool {
    matches!(e.code(), Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED)
}

/// Unique violation on the given constraint.
pub(crate) fn is_unique_violation(e: &tokio_postgres::Error, constraint: &str) -> bool {
    e.as_db_error().is_some_and(|db| {
        *db.code() == SqlState::UNIQUE_VIOLATION && db.constraint() == Some(constraint)
    })
}

/// The server answered with an error, so the transaction it ran in is rolled back
/// (as opposed to a lost connection, where the outcome of a COMMIT is unknown).
pub(crate) fn server_rejected(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some()
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}
