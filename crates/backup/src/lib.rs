//! Steadyflow backups: consistent, verified archives of everything the engine holds, and
//! restores that never touch the target before the data checked out.
//!
//! Sees only the store's recovery traits (`steadyflow_store::recovery`), never a backend
//! or HTTP. The `steadyflow` binary drives it (`backup`, `backup list|verify`,
//! `restore`).
//!
//! Archive: `YYYYMMDD_HHMMSS-<kind>.tar.zst[.age]` holding `manifest.json`,
//! `tables/<table>.jsonl` (one JSON object per row, portable across SQLite and
//! PostgreSQL) and `config/<file>`; beside it `<id>.manifest.json`, the sidecar that
//! `backup list` reads without a key.
//!
//! [`redis`] dumps and restores the Redis keys under the engine's prefix (data class
//! `cache`) as JSON Lines, one key per line.

pub mod alert;
pub mod archive;
pub mod catalog;
pub mod config;
pub mod create;
pub mod error;
pub mod fold;
pub mod keys;
pub mod manifest;
pub mod progress;
pub mod prune;
pub mod redis;
pub mod restore;
pub mod s3lock;
pub mod schedule;
pub mod ship;
pub mod targets;

pub use config::BackupConfig;
pub use create::{BackupOptions, ConfigFile, Parts, RedisSource, create, create_segment};
pub use error::{BackupError, Result, exit};
pub use keys::{DecryptWith, EncryptTo};
pub use manifest::{FORMAT_VERSION, Kind, Manifest, Sidecar};
pub use progress::{Progress, ProgressSink};
pub use restore::{
    ReplaySummary, ReplayedWork, Staged, TableCheck, invalidate_redis, restore_chain,
    restore_config, restore_redis, restore_tables, verify,
};
pub use targets::{Target, TargetSpec};
