//! Plain rows (users, API tokens: [`steadyflow_store::users`]): written whole with one
//! upsert per row, journaled in the same transaction, read back as table lines.

use std::borrow::Cow;

use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OptionalExtension};
use serde_json::Value;
use steadyflow_store::journal::JournalEntry;
use steadyflow_store::recovery::{ColumnKind, TableSpec};
use steadyflow_store::users::{PlainWrite, plain_image, plain_line};
use steadyflow_store::{JournalOp, Result, StoreError};

use crate::backend_err;
use crate::writes::append_journal;

/// Writes `writes` and their journal rows at `tx_time` (on the writer thread).
pub(crate) fn write(c: &Connection, tx_time: i64, writes: &[PlainWrite]) -> Result<()> {
    let mut images = Vec::with_capacity(writes.len());
    let mut ops = Vec::with_capacity(writes.len());
    for w in writes {
        let (table, line) = plain_line(w)?;
        let existed = exists(c, table, &w.id)?;
        match line {
            Some(line) => {
                let values = line
                    .iter()
                    .map(|(name, v)| to_sql(table, name, v))
                    .collect::<Result<Vec<Sql>>>()?;
                c.prepare_cached(&upsert_sql(table))
                    .and_then(|mut s| s.execute(rusqlite::params_from_iter(values)))
                    .map_err(backend_err)?;
                ops.push(Some(if existed {
                    JournalOp::Update
                } else {
                    JournalOp::Insert
                }));
            }
            None if existed => {
                c.prepare_cached(&format!(
                    "DELETE FROM {} WHERE {} = ?1",
                    table.name, table.key
                ))
                .and_then(|mut s| s.execute([&w.id]))
                .map_err(backend_err)?;
                ops.push(Some(JournalOp::Delete));
            }
            None => ops.push(None),
        }
        images.push(plain_image(w)?);
    }
    let entries: Vec<JournalEntry<'_>> = writes
        .iter()
        .zip(ops)
        .zip(&images)
        .filter_map(|((w, op), image)| {
            op.map(|op| JournalEntry {
                entity: w.entity,
                entity_id: Cow::Borrowed(w.id.as_str()),
                op,
                row: image.as_deref().map(Cow::Borrowed),
            })
        })
        .collect();
    append_journal(c, tx_time, &entries)
}

fn exists(c: &Connection, table: &TableSpec, key: &str) -> Result<bool> {
    c.prepare_cached(&format!(
        "SELECT 1 FROM {} WHERE {} = ?1",
        table.name, table.key
    ))
    .and_then(|mut s| s.query_row([key], |_| Ok(())).optional())
    .map(|r| r.is_some())
    .map_err(backend_err)
}

fn upsert_sql(table: &TableSpec) -> String {
    let names: Vec<&str> = table.column_names().collect();
    let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
    let sets: Vec<String> = names
        .iter()
        .filter(|c| **c != table.key)
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}",
        table.name,
        names.join(", "),
        marks.join(", "),
        table.key,
        sets.join(", ")
    )
}

fn to_sql(table: &TableSpec, column: &str, v: &Value) -> Result<Sql> {
    let kind = table
        .columns
        .iter()
        .find(|c| c.name == column)
        .map(|c| c.kind)
        .unwrap_or(ColumnKind::Text);
    let bad = || {
        StoreError::Backend(format!(
            "{}.{column}: {v} does not fit a {kind:?} column",
            table.name
        ))
    };
    Ok(match (kind, v) {
        (_, Value::Null) => Sql::Null,
        (ColumnKind::Json, v) => Sql::Text(v.to_string()),
        (ColumnKind::Int, v) => Sql::Integer(v.as_i64().ok_or_else(bad)?),
        (ColumnKind::Text, Value::String(s)) => Sql::Text(s.clone()),
        (ColumnKind::Text, _) => return Err(bad()),
    })
}

fn select_sql(table: &TableSpec) -> String {
    let names: Vec<&str> = table.column_names().collect();
    format!("SELECT {} FROM {}", names.join(", "), table.name)
}

fn line(table: &TableSpec, r: &rusqlite::Row<'_>) -> Result<Value> {
    let mut out = serde_json::Map::with_capacity(table.columns.len());
    for (i, col) in table.columns.iter().enumerate() {
        let v = match col.kind {
            ColumnKind::Int => r
                .get::<_, Option<i64>>(i)
                .map_err(backend_err)?
                .map_or(Value::Null, Value::from),
            ColumnKind::Text => r
                .get::<_, Option<String>>(i)
                .map_err(backend_err)?
                .map_or(Value::Null, Value::from),
            ColumnKind::Json => match r.get::<_, Option<String>>(i).map_err(backend_err)? {
                None => Value::Null,
                Some(text) => serde_json::from_str(&text).map_err(|e| {
                    StoreError::Corrupt(format!("{}.{}: {e}", table.name, col.name))
                })?,
            },
        };
        out.insert(col.name.to_string(), v);
    }
    Ok(Value::Object(out))
}

pub(crate) fn row(c: &Connection, table: &TableSpec, key: &str) -> Result<Option<Value>> {
    let sql = format!("{} WHERE {} = ?1", select_sql(table), table.key);
    let mut stmt = c.prepare_cached(&sql).map_err(backend_err)?;
    let mut rows = stmt.query([key]).map_err(backend_err)?;
    match rows.next().map_err(backend_err)? {
        Some(r) => line(table, r).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn rows(c: &Connection, table: &TableSpec) -> Result<Vec<Value>> {
    let sql = format!("{} ORDER BY {}", select_sql(table), table.key);
    let mut stmt = c.prepare_cached(&sql).map_err(backend_err)?;
    let mut rows = stmt.query([]).map_err(backend_err)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(backend_err)? {
        out.push(line(table, r)?);
    }
    Ok(out)
}
