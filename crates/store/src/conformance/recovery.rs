//! Recovery cases: what backup and restore need of a backend ([`crate::recovery`]).
//! Each runs on a [`RecoveryBackend`](super::RecoveryBackend): a source database written
//! through its [`Store`] and read by its [`Exporter`], and a restore target filled
//! through a [`Staging`].
//!
//! - [`exports`]: an export announces every table in [`TABLES`] order and holds what the
//!   store holds; imported into a staging it has the export's content checksums; taken
//!   while the store is written it is one snapshot (tables and journal agree); journal
//!   ranges resume without a gap or a duplicate while writes go on; pruning deletes
//!   exactly the rows asked for.
//! - [`staging`]: replaying the journal onto an earlier export gives the later one;
//!   lookups; discard leaves the target as it was; promote puts the data in its place.
//!
//! The data they write comes from [`data`]; this module reads exports and journals.

pub mod data;
pub mod exports;
pub mod staging;

use std::collections::BTreeMap;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::recovery::{
    ContentHasher, ExportBatch, Exporter, JournalLine, SnapshotInfo, Staging, TABLES, TableDigest,
    TableSpec, table,
};
use crate::*;

/// One export read whole.
#[derive(Debug)]
pub struct Export {
    /// Table names in the order their batches came; a table whose batches were not
    /// contiguous shows up twice.
    pub order: Vec<&'static str>,
    pub lines: BTreeMap<&'static str, Vec<String>>,
    /// Batches per table, and the largest batch.
    pub batches: BTreeMap<&'static str, usize>,
    pub biggest: usize,
    pub info: SnapshotInfo,
}

impl Export {
    pub fn of(&self, table: &str) -> &[String] {
        self.lines.get(table).map_or(&[], Vec::as_slice)
    }

    /// The content checksum of `table`'s lines, in export order.
    pub fn digest(&self, table: &str) -> TableDigest {
        digest(self.of(table))
    }
}

#[derive(Default)]
pub(crate) struct Batches {
    order: Vec<&'static str>,
    lines: BTreeMap<&'static str, Vec<String>>,
    batches: BTreeMap<&'static str, usize>,
    biggest: usize,
}

impl Batches {
    pub(crate) fn add(&mut self, batch: ExportBatch) {
        let name = batch.table.name;
        if self.order.last() != Some(&name) {
            self.order.push(name);
        }
        *self.batches.entry(name).or_default() += 1;
        self.biggest = self.biggest.max(batch.lines.len());
        self.lines.entry(name).or_default().extend(batch.lines);
    }

    pub(crate) fn finish(self, info: SnapshotInfo) -> Export {
        Export {
            order: self.order,
            lines: self.lines,
            batches: self.batches,
            biggest: self.biggest,
            info,
        }
    }
}

/// Runs a full export and reads it whole.
pub async fn export_all(exporter: &dyn Exporter) -> Export {
    let (tx, mut rx) = mpsc::channel(4);
    let mut got = Batches::default();
    let (info, ()) = tokio::join!(exporter.export(tx), async {
        while let Some(batch) = rx.recv().await {
            got.add(batch);
        }
    });
    got.finish(info.unwrap_or_else(|e| panic!("export failed: {e}")))
}

/// Runs `export_journal(after)` and parses its lines.
pub async fn export_journal(
    exporter: &dyn Exporter,
    after: i64,
) -> (Vec<JournalLine>, SnapshotInfo) {
    let (tx, mut rx) = mpsc::channel(4);
    let mut lines = Vec::new();
    let (info, ()) = tokio::join!(exporter.export_journal(after, tx), async {
        while let Some(batch) = rx.recv().await {
            assert_eq!(
                batch.table.name, "journal",
                "export_journal sends journal rows only"
            );
            lines.extend(batch.lines);
        }
    });
    let info = info.unwrap_or_else(|e| panic!("export_journal({after}) failed: {e}"));
    let lines = lines
        .iter()
        .map(|l| JournalLine::parse(l).unwrap_or_else(|e| panic!("journal line {l}: {e}")))
        .collect();
    (lines, info)
}

/// The content checksum of exported lines.
pub fn digest(lines: &[String]) -> TableDigest {
    let mut hasher = ContentHasher::new();
    for line in lines {
        hasher
            .add(line)
            .unwrap_or_else(|e| panic!("exported line {line}: {e}"));
    }
    hasher.finish()
}

/// Imports every restored table of `export` in batches (an empty table too).
pub async fn import_all(staging: &mut dyn Staging, export: &Export) {
    for t in TABLES.iter().filter(|t| t.restored()) {
        let lines = export.of(t.name);
        let batches: Vec<&[String]> = if lines.is_empty() {
            vec![&[]]
        } else {
            lines.chunks(500).collect()
        };
        for batch in batches {
            staging.import(t, batch.to_vec()).await.unwrap_or_else(|e| {
                panic!("importing {} into {}: {e}", t.name, staging.describe())
            });
        }
    }
}

/// Every journal row visible now, page by page.
pub async fn journal_all(store: &dyn Store) -> Vec<JournalRecord> {
    let (mut all, mut after) = (Vec::new(), 0);
    loop {
        let page = store
            .journal_since(after, 10_000)
            .await
            .expect("journal_since failed");
        let Some(last) = page.last() else {
            return all;
        };
        after = last.seq;
        all.extend(page);
    }
}

pub fn value(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("line is not JSON ({e}): {line}"))
}

pub fn spec(name: &str) -> &'static TableSpec {
    table(name).unwrap_or_else(|| panic!("no table {name} in TABLES"))
}

/// A key as `lookup` takes it.
pub fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("a key must be text or a number, got {other}"),
    }
}

pub fn journal_seqs(rows: &[JournalRecord]) -> Vec<i64> {
    rows.iter().map(|r| r.seq).collect()
}

/// History lines without their `seq` (restored appends take new ones), in order.
pub fn without_seq(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| {
            let mut v = value(l);
            v.as_object_mut()
                .expect("a history row is an object")
                .remove("seq");
            v
        })
        .collect()
}

/// An exported journal line and a journal record must be the same row.
pub fn assert_same_row(line: &JournalLine, rec: &JournalRecord) {
    let image = line.image().expect("image").unwrap_or(Value::Null);
    assert_eq!(
        (
            line.seq,
            line.tx_time,
            line.entity.as_str(),
            line.entity_id.as_str()
        ),
        (
            rec.seq,
            rec.tx_time.timestamp_millis(),
            rec.entity.as_str(),
            rec.entity_id.as_str()
        ),
        "exported journal row against journal_since"
    );
    assert_eq!(
        (line.op.as_str(), &image),
        (rec.op.as_str(), &rec.row),
        "row {}",
        rec.seq
    );
}
