//! The seam between the API and the backups: [`Backups`] is what `/api/v1/backups` and
//! the `backup` component of `/health` ask. The `steadyflow` binary implements it with
//! `steadyflow-backup` (its archives, targets, schedules and shipping); this crate only
//! knows the shapes below, so it never touches a backup directory or a bucket itself.
//!
//! Without an implementation in [`AppState::backups`](crate::AppState) the routes answer
//! `503 backups_not_configured` and `/health` lists no `backup` component.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, Code};

/// Backups as the API sees them.
#[async_trait]
pub trait Backups: Send + Sync + 'static {
    /// Starts a backup now, in the background; `by` names the caller. `Err` with
    /// `backup_running` (409) while one is running, `bad_request` for a combination the
    /// backup cannot take.
    async fn start(&self, request: StartBackup, by: &str) -> Result<BackupRun, ApiError>;

    /// Every recovery point in the backup directory or on a target, newest first.
    async fn points(&self) -> Result<Vec<RecoveryPoint>, ApiError>;

    /// A recovery point by its id, or a run started through the API by its run id.
    async fn get(&self, id: &str) -> Result<Option<Backup>, ApiError>;

    /// The last successful backup and the shipping lag, with what is past its limit.
    fn health(&self) -> BackupHealth;
}

/// The error of every backup route on a node without backups.
pub(crate) fn not_configured() -> ApiError {
    ApiError::new(
        Code::BackupsNotConfigured,
        "this node has no backup targets (`backup.targets` in the configuration)",
    )
}

/// What `POST /api/v1/backups` takes: the options of `steadyflow backup create`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartBackup {
    /// `full` (default), or `incremental`: only the journal since the newest backup
    /// (database only: `parts` must be `all` or `db`).
    #[serde(default)]
    pub kind: BackupKind,
    /// What a full backup holds: `all` (default: tables, configuration files, and the
    /// Redis keys when Redis is configured), `db`, `redis` or `config`.
    #[serde(default)]
    pub parts: BackupParts,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    #[default]
    Full,
    Incremental,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupParts {
    #[default]
    All,
    Db,
    Redis,
    Config,
}

/// A backup started through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRun {
    /// The run's id (`run-…`): `GET /api/v1/backups/{id}` follows it.
    pub id: String,
    pub kind: BackupKind,
    pub parts: BackupParts,
    pub started_at: DateTime<Utc>,
    /// Who started it.
    pub started_by: String,
    /// When it completed or failed.
    #[schema(nullable)]
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The recovery point it wrote, once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
}

/// Where a backup stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupState {
    /// Started through the API, not finished yet.
    Running,
    /// Started through the API, failed: `run.error` says why.
    Failed,
    /// A recovery point exists (`point`).
    Completed,
}

/// One backup: a recovery point, or a run started through the API (or both, once the
/// run completed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backup {
    /// The id asked for: a recovery point's id or a run's id.
    pub id: String,
    pub state: BackupState,
    /// The run, when the backup was started through the API on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<BackupRun>,
    /// The recovery point, once there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<RecoveryPoint>,
}

/// A recovery point: an archive with its sidecar, in the backup directory or on a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryPoint {
    /// `YYYYMMDD_HHMMSS-<kind>` (the archive's name without its extensions).
    pub id: String,
    pub kind: BackupKind,
    /// The backup an incremental continues (`null` for a full backup).
    #[schema(nullable)]
    pub parent: Option<String>,
    pub created_at: DateTime<Utc>,
    /// `sqlite` or `postgres`; `null` for a backup without database tables.
    #[schema(nullable)]
    pub source_backend: Option<String>,
    /// `critical`, `important`, `config`, `cache`.
    pub data_classes: Vec<String>,
    /// The archive's file name.
    pub archive: String,
    #[schema(minimum = 0)]
    pub archive_size: u64,
    pub encrypted: bool,
    #[schema(minimum = 0)]
    pub table_rows: u64,
    /// Rows per table in the manifest (`definitions`, `instances`, `history` ...): what a
    /// restore of this point brings back, for `verify-recovery` to compare with the live
    /// database. Empty for a backup without database tables.
    #[serde(default)]
    pub tables: std::collections::BTreeMap<String, u64>,
    /// The journal the point holds (database backups only).
    #[schema(nullable)]
    pub journal: Option<JournalRange>,
    pub verification: Verification,
    /// Where it exists: `local` (this node's backup directory) and the targets' names.
    pub locations: Vec<String>,
}

/// The journal inside a recovery point: what a point-in-time restore can reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JournalRange {
    /// The sequence the next incremental continues after.
    pub resume_seq: i64,
    #[schema(nullable)]
    pub first_seq: Option<i64>,
    #[schema(nullable)]
    pub last_seq: Option<i64>,
    #[schema(nullable)]
    pub first_time: Option<DateTime<Utc>>,
    #[schema(nullable)]
    pub last_time: Option<DateTime<Utc>>,
}

/// Whether the point was read back and found intact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    pub state: VerificationState,
    /// When it was last read back whole and matched its manifest.
    #[schema(nullable)]
    pub verified_at: Option<DateTime<Utc>>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VerificationState {
    /// Read back whole after it was written (or by `backup verify`) and intact.
    Verified,
    /// Not read back yet.
    Unverified,
    /// Its chain is broken (a parent missing, or a gap in the journal): it cannot be
    /// restored.
    Failed,
}

/// The `backup` component of `/health`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackupHealth {
    /// Age of the newest backup of the database (full, incremental or shipped segment);
    /// `None` when there is none.
    pub last_success_age: Option<Duration>,
    /// Age of the oldest change not yet on every target; `None` when this node does not
    /// ship the journal.
    pub shipping_lag: Option<Duration>,
    /// What is past its limit (`backup.alerts.max_backup_age`, `max_shipping_lag`), and
    /// failures still raised as alerts (a target refusing writes, a failed backup).
    pub warnings: Vec<String>,
}
