//! Why a backup, verification or restore failed, each with its exit code.

use steadyflow_store::StoreError;
use thiserror::Error;

/// Exit codes of `steadyflow backup` / `restore` (also in their `--help`).
pub mod exit {
    pub const OK: i32 = 0;
    /// Anything not listed below (database or Redis unreachable, I/O error ...).
    pub const FAILED: i32 = 1;
    /// Bad input: unknown backup, unreadable or foreign file, wrong or missing key,
    /// newer format or schema, unsafe archive entries, bad flags.
    pub const BAD_INPUT: i32 = 2;
    /// The archive does not match its manifest (checksums, sizes, counts, chain).
    pub const VERIFY_FAILED: i32 = 3;
    /// The restore target holds data and `--force` was not given.
    pub const TARGET_NOT_EMPTY: i32 = 4;
    /// The restore target is used by a running server.
    pub const TARGET_IN_USE: i32 = 5;
}

#[derive(Debug, Error)]
pub enum BackupError {
    /// The input cannot be used as given (see [`exit::BAD_INPUT`]).
    #[error("{0}")]
    BadInput(String),
    /// The archive is damaged or was changed (see [`exit::VERIFY_FAILED`]).
    #[error("verification failed: {0}")]
    Verify(String),
    #[error("{0}")]
    TargetNotEmpty(String),
    #[error("{0}")]
    TargetInUse(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Redis (the cache) is unreachable or failed a command (see [`exit::FAILED`]).
    #[error("{0}")]
    Cache(String),
    /// A backup target (bucket, directory) refused or failed a request.
    #[error("{0}")]
    Remote(String),
    /// The object is under S3 Object Lock retention and cannot be deleted.
    #[error("{0}")]
    Locked(String),
}

impl BackupError {
    pub fn exit_code(&self) -> i32 {
        match self {
            BackupError::BadInput(_) => exit::BAD_INPUT,
            BackupError::Verify(_) => exit::VERIFY_FAILED,
            BackupError::TargetNotEmpty(_) => exit::TARGET_NOT_EMPTY,
            BackupError::TargetInUse(_) => exit::TARGET_IN_USE,
            BackupError::Store(StoreError::Corrupt(_)) => exit::VERIFY_FAILED,
            BackupError::Io { .. }
            | BackupError::Store(_)
            | BackupError::Cache(_)
            | BackupError::Remote(_)
            | BackupError::Locked(_) => exit::FAILED,
        }
    }

    /// Short code for `--json` output.
    pub fn code(&self) -> &'static str {
        match self.exit_code() {
            exit::BAD_INPUT => "bad_input",
            exit::VERIFY_FAILED => "verification_failed",
            exit::TARGET_NOT_EMPTY => "target_not_empty",
            exit::TARGET_IN_USE => "target_in_use",
            _ => "failed",
        }
    }

    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
        let what = what.into();
        move |source| BackupError::Io { what, source }
    }
}

pub type Result<T, E = BackupError> = std::result::Result<T, E>;
