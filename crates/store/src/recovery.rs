//! What backup and restore need from a store, shared by both backends.
//!
//! A backup is a consistent export of every table as JSON Lines, one JSON object per row
//! keyed by column name. The column list of each table is declared once here ([`TABLES`]);
//! both backends build their export and import SQL from it, so an archive written by one
//! backend restores into the other. Integers are JSON numbers, text is a JSON string, and
//! JSON columns (variables, runtime, candidate lists, history events) are embedded as JSON
//! values, not as strings.
//!
//! Two checksums guard a table: the SHA-256 of the exported bytes (the archive's own
//! integrity, checkable with `sha256sum`) and a *content* checksum over each row in a
//! canonical form (keys sorted, no whitespace), which is the same whichever backend wrote
//! or re-reads the rows. A restore recomputes the content checksum from the target and
//! compares it with the manifest before it swaps the data in.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Result, StoreError, Timestamp};

/// How a column's value is carried in JSON Lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// Text (JSON string or null).
    Text,
    /// 64-bit integer (JSON number or null).
    Int,
    /// A JSON document stored in the column, embedded as a JSON value.
    Json,
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub kind: ColumnKind,
}

/// What a table's rows are worth to an operator; retention and `--db-only` style
/// selections are stated in these classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataClass {
    /// Definitions, instances, tasks, external tasks, timers, incidents (and users).
    Critical,
    /// History and journal.
    Important,
    /// Configuration files.
    Config,
    /// Cache contents (Redis keys under the engine's prefix).
    Cache,
}

impl DataClass {
    pub fn as_str(self) -> &'static str {
        match self {
            DataClass::Critical => "critical",
            DataClass::Important => "important",
            DataClass::Config => "config",
            DataClass::Cache => "cache",
        }
    }
}

#[derive(Debug)]
pub struct TableSpec {
    pub name: &'static str,
    pub class: DataClass,
    /// Rows are exported in this column's order (the primary key).
    pub key: &'static str,
    pub columns: &'static [Column],
    /// Written into a restore target (false for the journal: see [`TableSpec::restored`]).
    pub restored: bool,
}

impl TableSpec {
    /// Whether a restore writes this table into the target. The journal is kept in the
    /// archive (it is what incrementals and point-in-time restores replay) but a restored
    /// database starts its own journal: its sequence numbers belong to the new timeline.
    pub fn restored(&self) -> bool {
        self.restored
    }

    pub fn column_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.columns.iter().map(|c| c.name)
    }
}

const fn text(name: &'static str) -> Column {
    Column {
        name,
        kind: ColumnKind::Text,
    }
}
const fn int(name: &'static str) -> Column {
    Column {
        name,
        kind: ColumnKind::Int,
    }
}
const fn json(name: &'static str) -> Column {
    Column {
        name,
        kind: ColumnKind::Json,
    }
}

/// Every table a backup holds, in restore order.
pub const TABLES: &[TableSpec] = &[
    TableSpec {
        name: "definitions",
        class: DataClass::Critical,
        key: "id",
        restored: true,
        columns: &[
            text("id"),
            text("key"),
            int("version"),
            text("name"),
            text("checksum"),
            text("xml"),
            int("deployed_at"),
        ],
    },
    TableSpec {
        name: "instances",
        class: DataClass::Critical,
        key: "id",
        restored: true,
        columns: &[
            text("id"),
            text("definition_id"),
            text("definition_key"),
            text("business_key"),
            text("state"),
            json("variables"),
            json("runtime"),
            int("version"),
            int("started_at"),
            int("ended_at"),
        ],
    },
    TableSpec {
        name: "tasks",
        class: DataClass::Critical,
        key: "id",
        restored: true,
        columns: &[
            text("id"),
            text("instance_id"),
            text("definition_id"),
            text("activity_id"),
            text("name"),
            text("assignee"),
            json("candidate_users"),
            json("candidate_groups"),
            int("created_at"),
        ],
    },
    TableSpec {
        name: "external_tasks",
        class: DataClass::Critical,
        key: "id",
        restored: true,
        columns: &[
            text("id"),
            text("instance_id"),
            text("definition_id"),
            text("activity_id"),
            text("topic"),
            text("worker_id"),
            int("lock_expires_at"),
            int("retries"),
            text("error_message"),
            int("retry_at"),
            int("created_at"),
        ],
    },
    TableSpec {
        name: "timers",
        class: DataClass::Critical,
        key: "id",
        restored: true,
        columns: &[
            text("id"),
            text("instance_id"),
            text("activity_id"),
            int("due_at"),
            text("owner"),
            int("lock_until"),
            int("created_at"),
        ],
    },
    TableSpec {
        name: "incidents",
        class: DataClass::Critical,
        key: "id",
        restored: true,
        columns: &[
            text("id"),
            text("instance_id"),
            text("activity_id"),
            text("incident_type"),
            text("message"),
            text("external_task_id"),
            int("created_at"),
            int("resolved_at"),
        ],
    },
    TableSpec {
        name: "history",
        class: DataClass::Important,
        key: "seq",
        restored: true,
        columns: &[int("seq"), text("instance_id"), int("time"), json("events")],
    },
    TableSpec {
        name: "journal",
        class: DataClass::Important,
        key: "seq",
        restored: false,
        columns: &[
            int("seq"),
            int("tx_time"),
            text("entity"),
            text("entity_id"),
            text("op"),
            text("row"),
        ],
    },
];

pub fn table(name: &str) -> Option<&'static TableSpec> {
    TABLES.iter().find(|t| t.name == name)
}

/// A batch of exported rows of one table, each a JSON object on one line (no newline).
#[derive(Debug)]
pub struct ExportBatch {
    pub table: &'static TableSpec,
    pub lines: Vec<String>,
}

/// Rows sent per [`ExportBatch`].
pub const EXPORT_BATCH: usize = 2_000;

/// Facts about one consistent export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    pub backend: String,
    pub schema_version: i64,
    /// Journal rows inside the snapshot: lowest and highest sequence, with their times.
    pub journal_first_seq: Option<i64>,
    pub journal_last_seq: Option<i64>,
    pub journal_first_time: Option<Timestamp>,
    pub journal_last_time: Option<Timestamp>,
}

/// Backup side of a store: one consistent read of every table.
#[async_trait]
pub trait Exporter: Send + Sync {
    /// Reads every table of [`TABLES`] in that order inside ONE read transaction
    /// (REPEATABLE READ on PostgreSQL), rows ordered by the table's key, and sends them in
    /// batches to `out` (bounded: a slow consumer slows the export, memory stays flat).
    /// Every table is announced by at least one batch, possibly empty.
    async fn export(&self, out: tokio::sync::mpsc::Sender<ExportBatch>) -> Result<SnapshotInfo>;
}

/// A restore target being filled: a side file (SQLite) or a side database (PostgreSQL)
/// that replaces the target only when [`promote`](Staging::promote) is called after
/// every check passed. Dropping it without promoting leaves the target untouched.
#[async_trait]
pub trait Staging: Send {
    /// Where the rows go, for messages ("SQLite file …", "PostgreSQL database …").
    fn describe(&self) -> String;
    /// Inserts rows (JSON object lines as exported) into `table`.
    async fn import(&mut self, table: &'static TableSpec, lines: Vec<String>) -> Result<()>;
    /// Row count and content checksum of `table` as the staging holds it now.
    async fn table_digest(&mut self, table: &'static TableSpec) -> Result<TableDigest>;
    /// Makes the imported data durable and puts it in place of the target.
    async fn promote(self: Box<Self>) -> Result<()>;
    /// Removes the staging data (the target stays as it was).
    async fn discard(self: Box<Self>) -> Result<()>;
}

/// What a restore target holds before anything is written: empty or not, and whether
/// a running server uses it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetState {
    /// Non-empty tables with their row counts.
    pub tables: Vec<(String, u64)>,
    /// Why the target is in use (a running `serve`), if it is.
    pub in_use: Option<String>,
}

/// Row count and content checksum of one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableDigest {
    pub rows: u64,
    pub content_sha256: String,
}

/// Content checksum over rows in canonical form (see the module docs): SHA-256 over each
/// row re-serialized with sorted keys, one per line, in export order.
#[derive(Default)]
pub struct ContentHasher {
    hasher: Sha256,
    rows: u64,
    buf: Vec<u8>,
}

impl ContentHasher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one exported line. `Corrupt` when it is not a JSON object.
    pub fn add(&mut self, line: &str) -> Result<()> {
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| StoreError::Corrupt(format!("row is not JSON: {e}")))?;
        if !value.is_object() {
            return Err(StoreError::Corrupt("row is not a JSON object".into()));
        }
        self.buf.clear();
        // serde_json's Map is ordered by key (no `preserve_order`), so this is canonical.
        serde_json::to_writer(&mut self.buf, &value)
            .map_err(|e| StoreError::Corrupt(format!("row cannot be re-serialized: {e}")))?;
        self.buf.push(b'\n');
        self.hasher.update(&self.buf);
        self.rows += 1;
        Ok(())
    }

    pub fn finish(self) -> TableDigest {
        TableDigest {
            rows: self.rows,
            content_sha256: hex(&self.hasher.finalize()),
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_checksum_ignores_key_order_and_whitespace() {
        let mut a = ContentHasher::new();
        a.add(r#"{"id":"x","variables":{"b":1,"a":[1, 2]}}"#)
            .unwrap();
        let mut b = ContentHasher::new();
        b.add(r#"{ "variables": {"a": [1,2], "b": 1}, "id": "x" }"#)
            .unwrap();
        assert_eq!(a.finish(), b.finish());
    }

    #[test]
    fn content_checksum_sees_a_changed_value() {
        let mut a = ContentHasher::new();
        a.add(r#"{"id":"x","n":1}"#).unwrap();
        let mut b = ContentHasher::new();
        b.add(r#"{"id":"x","n":2}"#).unwrap();
        assert_ne!(a.finish().content_sha256, b.finish().content_sha256);
    }

    #[test]
    fn a_row_that_is_not_an_object_is_corrupt() {
        let mut h = ContentHasher::new();
        assert!(matches!(h.add("[1]"), Err(StoreError::Corrupt(_))));
        assert!(matches!(h.add("{oops"), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn every_table_has_its_key_among_its_columns() {
        for t in TABLES {
            assert!(t.column_names().any(|c| c == t.key), "{}", t.name);
        }
    }
}
