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

mod canonical;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

#[derive(Debug, PartialEq, Eq)]
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
        name: "users",
        class: DataClass::Critical,
        key: "id",
        restored: true,
        columns: &[
            text("id"),
            text("role"),
            json("groups"),
            text("password_hash"),
            int("created_at"),
            int("updated_at"),
            int("disabled_at"),
        ],
    },
    TableSpec {
        name: "api_tokens",
        class: DataClass::Critical,
        key: "id",
        restored: true,
        columns: &[
            text("id"),
            text("user_id"),
            text("label"),
            text("hash"),
            int("created_at"),
            int("expires_at"),
            int("revoked_at"),
        ],
    },
    TableSpec {
        name: "system_mode",
        class: DataClass::Critical,
        key: "id",
        restored: true,
        columns: &[
            text("id"),
            text("mode"),
            text("reason"),
            int("until"),
            text("set_by"),
            int("set_at"),
        ],
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

/// Cuts one table's exported lines into [`ExportBatch`]es; a table is announced by one
/// batch even when it is empty.
pub struct Batcher {
    table: &'static TableSpec,
    lines: Vec<String>,
    sent: bool,
}

impl Batcher {
    pub fn new(table: &'static TableSpec) -> Self {
        Batcher {
            table,
            lines: Vec::with_capacity(EXPORT_BATCH),
            sent: false,
        }
    }

    /// Adds a line; a full batch comes back to be sent.
    pub fn push(&mut self, line: String) -> Option<ExportBatch> {
        self.lines.push(line);
        (self.lines.len() == EXPORT_BATCH).then(|| {
            self.sent = true;
            ExportBatch {
                table: self.table,
                lines: std::mem::replace(&mut self.lines, Vec::with_capacity(EXPORT_BATCH)),
            }
        })
    }

    /// The last batch, if there is one to send.
    pub fn finish(self) -> Option<ExportBatch> {
        (!self.lines.is_empty() || !self.sent).then_some(ExportBatch {
            table: self.table,
            lines: self.lines,
        })
    }
}

/// `[line,line,…]`: rows handed to the database as one JSON array.
pub fn json_array(lines: &[String]) -> String {
    let mut doc = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum::<usize>() + 2);
    doc.push('[');
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            doc.push(',');
        }
        doc.push_str(line);
    }
    doc.push(']');
    doc
}

/// The first and last journal rows an export saw: `(seq, tx_time ms)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalSpan {
    pub first: Option<(i64, i64)>,
    pub last: Option<(i64, i64)>,
}

impl JournalSpan {
    /// Notes a journal line (as exported). Only its sequence and time are read (the row
    /// image is skipped over, not copied).
    pub fn see(&mut self, line: &str) -> Result<()> {
        #[derive(Deserialize)]
        struct SeqTime {
            seq: i64,
            tx_time: i64,
        }
        let j: SeqTime = serde_json::from_str(line)
            .map_err(|e| StoreError::Corrupt(format!("journal row cannot be read: {e}")))?;
        self.first.get_or_insert((j.seq, j.tx_time));
        self.last = Some((j.seq, j.tx_time));
        Ok(())
    }
}

impl SnapshotInfo {
    pub fn new(
        backend: &str,
        schema_version: i64,
        resume_seq: i64,
        after_seq: Option<i64>,
        pg_snapshot: Option<PgSnapshot>,
        span: JournalSpan,
    ) -> SnapshotInfo {
        let time = |ms: Option<i64>| ms.and_then(chrono::DateTime::from_timestamp_millis);
        SnapshotInfo {
            backend: backend.into(),
            schema_version,
            resume_seq,
            after_seq,
            pg_snapshot,
            journal_first_seq: span.first.map(|f| f.0),
            journal_last_seq: span.last.map(|l| l.0),
            journal_first_time: time(span.first.map(|f| f.1)),
            journal_last_time: time(span.last.map(|l| l.1)),
        }
    }
}

/// Which journal rows a PostgreSQL snapshot already holds: its `pg_current_snapshot()`.
/// A row's transaction id is `seq >> 20`; the transaction is inside the snapshot when it
/// finished before `xmin`, or ran below `xmax` and was not in progress (`xip`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PgSnapshot {
    pub xmin: i64,
    pub xmax: i64,
    pub xip: Vec<i64>,
}

impl PgSnapshot {
    pub fn holds(&self, seq: i64) -> bool {
        let xid = seq >> 20;
        xid < self.xmin || (xid < self.xmax && !self.xip.contains(&xid))
    }
}

/// Facts about one consistent export (of every table, or of the journal alone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    pub backend: String,
    pub schema_version: i64,
    /// Incrementals go on with the journal rows after this sequence: every row at or
    /// below it is inside this export (SQLite: its last row; PostgreSQL: below the
    /// snapshot's `xmin`, whose transactions have all ended).
    pub resume_seq: i64,
    /// A journal-only export: the rows after this sequence (the parent's `resume_seq`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<i64>,
    /// PostgreSQL: the rows above `resume_seq` that the snapshot holds all the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_snapshot: Option<PgSnapshot>,
    /// Journal rows inside the snapshot: lowest and highest sequence, with their times.
    pub journal_first_seq: Option<i64>,
    pub journal_last_seq: Option<i64>,
    pub journal_first_time: Option<Timestamp>,
    pub journal_last_time: Option<Timestamp>,
}

/// Backup side of a store: one consistent read of every table.
///
/// Only durable rows are exported: the SQLite exporter flushes the WAL it read from
/// (`fdatasync`, which covers every commit it saw) before it reports success, and on
/// PostgreSQL a committed row is durable.
#[async_trait]
pub trait Exporter: Send + Sync {
    /// Reads every table of [`TABLES`] in that order inside ONE read transaction
    /// (REPEATABLE READ on PostgreSQL), rows ordered by the table's key, and sends them in
    /// batches to `out` (bounded: a slow consumer slows the export, memory stays flat).
    /// Every table is announced by at least one batch, possibly empty.
    async fn export(&self, out: tokio::sync::mpsc::Sender<ExportBatch>) -> Result<SnapshotInfo>;

    /// Reads the journal rows after `after_seq` that no transaction still running can
    /// precede, in sequence order, as the journal table's lines.
    async fn export_journal(
        &self,
        after_seq: i64,
        out: tokio::sync::mpsc::Sender<ExportBatch>,
    ) -> Result<SnapshotInfo>;

    /// Deletes the live journal's rows at or below `upto_seq` (already inside a verified
    /// backup), in short transactions beside a running server; returns how many.
    async fn prune_journal(&self, upto_seq: i64) -> Result<u64>;
}

/// Rows deleted per pruning transaction: short enough not to hold up the writer.
pub const PRUNE_BATCH: i64 = 20_000;

/// One journal row as an archive holds it (the journal table's line).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct JournalLine {
    pub seq: i64,
    /// Commit time, milliseconds since the epoch.
    pub tx_time: i64,
    pub entity: String,
    pub entity_id: String,
    pub op: String,
    /// The row image (the record's JSON text), `None` for deletes.
    pub row: Option<String>,
}

impl JournalLine {
    pub fn parse(line: &str) -> Result<JournalLine> {
        serde_json::from_str(line)
            .map_err(|e| StoreError::Corrupt(format!("journal row cannot be read: {e}")))
    }

    /// The transaction the row belongs to: rows of one transaction are restored together
    /// or not at all. PostgreSQL: the transaction id in the sequence's high bits;
    /// SQLite: one writer transaction shares one `tx_time` (see the journal's docs).
    pub fn transaction(&self, backend: &str) -> i64 {
        if backend == "postgres" {
            self.seq >> 20
        } else {
            self.tx_time
        }
    }

    pub fn time(&self) -> Option<Timestamp> {
        chrono::DateTime::from_timestamp_millis(self.tx_time)
    }

    /// The image parsed, `None` for deletes.
    pub fn image(&self) -> Result<Option<serde_json::Value>> {
        self.row
            .as_deref()
            .map(|r| {
                serde_json::from_str(r).map_err(|e| {
                    StoreError::Corrupt(format!("journal row {} image: {e}", self.seq))
                })
            })
            .transpose()
    }
}

/// What replaying one journal row does to a restored database.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayOp {
    /// Insert the row, or replace the one with the same key (a line of the table).
    Upsert(&'static TableSpec, String),
    /// Remove the row with this key, if there.
    Delete(&'static TableSpec, String),
    /// Append a row to an append-only table (history), without its key.
    Append(&'static TableSpec, String),
}

fn entity_table(entity: &str) -> Result<&'static TableSpec> {
    let name = match entity {
        "definition" => "definitions",
        "instance" => "instances",
        "task" => "tasks",
        "externalTask" => "external_tasks",
        "timer" => "timers",
        "incident" => "incidents",
        "history" => "history",
        "user" => "users",
        "apiToken" => "api_tokens",
        "systemMode" => "system_mode",
        other => {
            return Err(StoreError::Corrupt(format!(
                "journal names an unknown entity `{other}`"
            )));
        }
    };
    table(name).ok_or_else(|| StoreError::Corrupt(format!("no table {name}")))
}

/// `snake_case` column name to the camelCase field of a row image.
pub fn camel_case(column: &str) -> String {
    camel(column)
}

fn camel(column: &str) -> String {
    let mut out = String::with_capacity(column.len());
    let mut upper = false;
    for c in column.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn to_ms(v: &serde_json::Value, what: &str) -> Result<serde_json::Value> {
    Ok(match v {
        serde_json::Value::String(s) => {
            let t = chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|e| StoreError::Corrupt(format!("{what}: `{s}` is not a time: {e}")))?;
            serde_json::Value::from(t.timestamp_millis())
        }
        other => other.clone(),
    })
}

/// Turns a journal row into what replaying it does. The image is the record's JSON
/// (camelCase fields, RFC 3339 times); the result is a table line (column names,
/// milliseconds), the same form a backup's table files hold.
pub fn replay_op(j: &JournalLine) -> Result<ReplayOp> {
    let table = entity_table(&j.entity)?;
    if j.op == "delete" {
        return Ok(ReplayOp::Delete(table, j.entity_id.clone()));
    }
    let image = j.image()?.ok_or_else(|| {
        StoreError::Corrupt(format!("journal row {} ({}) has no image", j.seq, j.op))
    })?;
    let mut row = serde_json::Map::new();
    if table.name == "history" {
        // The image is the history document itself: {"time": …, "events": […]}.
        row.insert("instance_id".into(), j.entity_id.clone().into());
        row.insert("time".into(), to_ms(&image["time"], "history time")?);
        row.insert("events".into(), image);
        return Ok(ReplayOp::Append(
            table,
            serde_json::Value::Object(row).to_string(),
        ));
    }
    for col in table.columns {
        let v = image.get(camel(col.name)).cloned().unwrap_or_default();
        let v = match col.kind {
            ColumnKind::Int => to_ms(&v, col.name)?,
            _ => v,
        };
        row.insert(col.name.to_string(), v);
    }
    Ok(ReplayOp::Upsert(
        table,
        serde_json::Value::Object(row).to_string(),
    ))
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
    /// Every row of `table` was given to [`import`](Staging::import): a staging may end
    /// its load of that table here and start checking it while the next one loads.
    async fn end_table(&mut self, _table: &'static TableSpec) -> Result<()> {
        Ok(())
    }
    /// Row count and content checksum of `table` as the staging holds it now.
    async fn table_digest(&mut self, table: &'static TableSpec) -> Result<TableDigest>;
    /// Applies journal rows in order (see [`replay_op`]).
    async fn replay(&mut self, ops: Vec<ReplayOp>) -> Result<()>;
    /// The row of `table` with this key, as a table line.
    async fn lookup(&mut self, table: &'static TableSpec, key: &str) -> Result<Option<String>>;
    /// Makes the imported data durable and puts it in place of the target.
    async fn promote(self: Box<Self>) -> Result<()>;
    /// Removes the staging data (the target stays as it was).
    async fn discard(self: Box<Self>) -> Result<()>;
}

/// An import that failed: the database going away (disk full, connection lost) stays
/// `Unavailable`, anything else means the rows do not fit the table (`Corrupt`).
pub fn import_error(table: &TableSpec, e: StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => {
            StoreError::Unavailable(format!("importing table {} failed: {m}", table.name))
        }
        other => StoreError::Corrupt(format!(
            "rows of table {} cannot be imported: {other}",
            table.name
        )),
    }
}

/// Every row given must have been inserted.
pub fn check_imported(table: &TableSpec, given: usize, inserted: u64) -> Result<()> {
    if inserted == given as u64 {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "table {}: {given} rows given, {inserted} imported",
            table.name
        )))
    }
}

/// A staging used after it was promoted or discarded (a bug in the caller).
pub fn staging_closed() -> StoreError {
    StoreError::Backend("the restore staging is already closed".into())
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

impl TargetState {
    /// Notes a table's row count (empty tables are not listed).
    pub fn count(&mut self, table: &TableSpec, rows: i64) {
        if rows > 0 {
            self.tables.push((table.name.to_string(), rows as u64));
        }
    }
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
        self.buf.clear();
        canonical::write(line, &mut self.buf)?;
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
    fn journal_images_become_table_lines() {
        let j = JournalLine::parse(
            r#"{"seq":7,"tx_time":1000,"entity":"externalTask","entity_id":"x1","op":"update","row":"{\"id\":\"x1\",\"instanceId\":\"i\",\"definitionId\":\"d:1\",\"activityId\":\"a\",\"topic\":\"t\",\"workerId\":\"w\",\"lockExpiresAt\":\"2026-06-01T09:00:00Z\",\"retries\":null,\"errorMessage\":null,\"retryAt\":null,\"createdAt\":\"2026-06-01T08:00:00.5Z\"}"}"#,
        )
        .unwrap();
        let ReplayOp::Upsert(t, line) = replay_op(&j).unwrap() else {
            panic!("an update is an upsert");
        };
        assert_eq!(t.name, "external_tasks");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["lock_expires_at"], 1_780_304_400_000_i64);
        assert_eq!(v["created_at"], 1_780_300_800_500_i64);
        assert_eq!(v["worker_id"], "w");
        let del = JournalLine {
            op: "delete".into(),
            row: None,
            ..j.clone()
        };
        assert_eq!(
            replay_op(&del).unwrap(),
            ReplayOp::Delete(table("external_tasks").unwrap(), "x1".into())
        );
        let hist = JournalLine {
            entity: "history".into(),
            entity_id: "i".into(),
            op: "append".into(),
            row: Some(
                r#"{"time":"2026-06-01T09:00:00Z","events":[{"event":"instanceStarted"}]}"#.into(),
            ),
            ..j
        };
        let ReplayOp::Append(t, line) = replay_op(&hist).unwrap() else {
            panic!("history is appended");
        };
        assert_eq!(t.name, "history");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["instance_id"], "i");
        assert_eq!(v["events"]["events"][0]["event"], "instanceStarted");
    }

    #[test]
    fn a_postgres_snapshot_holds_what_ended_before_it() {
        let s = PgSnapshot {
            xmin: 10,
            xmax: 20,
            xip: vec![12],
        };
        assert!(s.holds(9 << 20 | 3));
        assert!(s.holds(11 << 20));
        assert!(!s.holds(12 << 20 | 1));
        assert!(!s.holds(20 << 20));
    }

    #[test]
    fn every_table_has_its_key_among_its_columns() {
        for t in TABLES {
            assert!(t.column_names().any(|c| c == t.key), "{}", t.name);
        }
    }
}
