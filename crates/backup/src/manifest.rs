//! `manifest.json`: what an archive holds, written first in the archive and, beside it,
//! as `<id>.manifest.json` (with the archive's own size, checksum and verification time)
//! so that `backup list` needs no key.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use steadyflow_store::recovery::{DataClass, SnapshotInfo};

/// The archive layout this binary writes. A reader refuses newer formats.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Full,
    Incremental,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Incremental => "incremental",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    /// Path inside the archive (`tables/instances.jsonl`, `config/config.yaml`).
    pub path: String,
    pub size: u64,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
    pub class: DataClass,
    /// Table files: the table, its row count and content checksum (backend-neutral).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format_version: u32,
    pub engine_version: String,
    pub id: String,
    pub kind: Kind,
    pub parent: Option<String>,
    pub created_at: DateTime<Utc>,
    /// `sqlite` or `postgres`; `None` for a backup without database tables.
    pub source_backend: Option<String>,
    pub schema_version: Option<i64>,
    pub data_classes: Vec<DataClass>,
    /// Journal rows inside the snapshot (full) or shipped (incremental).
    pub journal: Option<SnapshotInfo>,
    pub compression: String,
    pub encryption: String,
    pub files: Vec<FileEntry>,
    /// The Redis keys (`redis/keys.jsonl`), when the backup holds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheInfo>,
}

/// Where the archive's Redis keys came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheInfo {
    pub prefix: String,
    pub keys: u64,
    /// Redis' clock when the dump began: restored TTLs count on from here.
    pub dumped_at: DateTime<Utc>,
}

/// The archive path of the Redis keys.
pub const REDIS_KEYS: &str = "redis/keys.jsonl";

impl Manifest {
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    pub fn table_rows(&self) -> u64 {
        self.files.iter().filter_map(|f| f.rows).sum()
    }
}

/// The sidecar beside an archive: the manifest plus facts about the archive file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sidecar {
    pub manifest: Manifest,
    /// File name of the archive in the same directory.
    pub archive: String,
    pub archive_size: u64,
    pub archive_sha256: String,
    /// When the archive was last read back whole and found to match its manifest.
    pub verified_at: Option<DateTime<Utc>>,
}
