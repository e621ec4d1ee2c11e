//! Plain rows (users, API tokens: [`steadyflow_store::users`]): one upsert or delete per
//! row and the journal rows, in one pipelined transaction; read back as table lines.

use std::borrow::Cow;

use serde_json::Value;
use steadyflow_store::journal::JournalEntry;
use steadyflow_store::recovery::TableSpec;
use steadyflow_store::users::{PlainWrite, plain_image, plain_line};
use steadyflow_store::{JournalOp, Result, StoreError, Timestamp, schema::to_ms};

use crate::PgStore;
use crate::error::db_err;
use crate::pipeline::{self, BEGIN_CUSTOM_PLANS, Finish, JOURNAL_INSERT, Param, Step};

/// Insert or replace one row given as a one-element JSON array of its table line;
/// answers whether it was inserted (`xmax = 0`: no earlier row version).
fn upsert_sql(table: &TableSpec) -> String {
    let cols: Vec<&str> = table.column_names().collect();
    let sets: Vec<String> = cols
        .iter()
        .filter(|c| **c != table.key)
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    format!(
        "INSERT INTO {t} ({cols}) SELECT {cols} FROM json_populate_recordset(NULL::{t}, $1::text::json) \
         ON CONFLICT ({key}) DO UPDATE SET {sets} RETURNING (xmax = 0) AS inserted",
        t = table.name,
        cols = cols.join(", "),
        key = table.key,
        sets = sets.join(", ")
    )
}

/// The channel every plain write notifies, at commit (PostgreSQL delivers a
/// transaction's notifications when it commits, and never for a rolled-back one).
pub(crate) const CHANNEL: &str = "steadyflow_plain";

/// Tells every listening node (see `watch.rs`) that plain rows changed.
const NOTIFY: &str = "SELECT pg_notify('steadyflow_plain', '')";

fn select_sql(table: &TableSpec, filter: &str) -> String {
    let cols: Vec<&str> = table.column_names().collect();
    format!(
        "SELECT row_to_json(r)::text FROM (SELECT {} FROM {} {filter} ORDER BY {}) r",
        cols.join(", "),
        table.name,
        table.key
    )
}

fn parse_line(table: &TableSpec, text: &str) -> Result<Value> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("{} row cannot be read: {e}", table.name)))
}

impl PgStore {
    pub(crate) async fn write_plain(&self, time: Timestamp, writes: &[PlainWrite]) -> Result<()> {
        let client = self.client().await?;
        let journal = client
            .prepare_cached(JOURNAL_INSERT)
            .await
            .map_err(db_err)?;
        // Everything the statements and journal rows borrow, made first.
        let mut docs: Vec<(Option<String>, &str)> = Vec::with_capacity(writes.len());
        let mut images = Vec::with_capacity(writes.len());
        let mut stmts = Vec::with_capacity(writes.len());
        for w in writes {
            let (table, line) = plain_line(w)?;
            let sql = match &line {
                Some(_) => upsert_sql(table),
                None => format!(
                    "DELETE FROM {} WHERE {} = $1 RETURNING 1",
                    table.name, table.key
                ),
            };
            stmts.push(client.prepare_cached(&sql).await.map_err(db_err)?);
            let doc = line.map(|l| {
                let map: serde_json::Map<String, Value> =
                    l.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                format!("[{}]", Value::Object(map))
            });
            docs.push((doc, w.id.as_str()));
            images.push(plain_image(w)?);
        }
        let notify = client.prepare_cached(NOTIFY).await.map_err(db_err)?;
        let mut steps: Vec<Step<'_>> = stmts
            .into_iter()
            .zip(&docs)
            .map(|(stmt, (doc, id))| {
                let p: Param<'_> = match doc {
                    Some(doc) => doc,
                    None => id,
                };
                Step::Query(stmt, vec![p])
            })
            .collect();
        // Last, so the step results above stay in the order of `writes`.
        steps.push(Step::Query(notify, Vec::new()));
        pipeline::transact(
            &client,
            BEGIN_CUSTOM_PLANS,
            &journal,
            to_ms(time),
            steps,
            |rows| {
                let mut entries = Vec::with_capacity(writes.len());
                for ((w, image), rows) in writes.iter().zip(&images).zip(rows) {
                    let op = match (&w.image, rows.first()) {
                        (Some(_), Some(r)) => {
                            if r.try_get::<_, bool>(0).map_err(db_err)? {
                                JournalOp::Insert
                            } else {
                                JournalOp::Update
                            }
                        }
                        (Some(_), None) => {
                            return Err(StoreError::Backend(format!(
                                "upsert of {} {} returned nothing",
                                w.entity, w.id
                            )));
                        }
                        (None, Some(_)) => JournalOp::Delete,
                        (None, None) => continue,
                    };
                    entries.push(JournalEntry {
                        entity: w.entity,
                        entity_id: Cow::Borrowed(w.id.as_str()),
                        op,
                        row: image.as_deref().map(Cow::Borrowed),
                    });
                }
                Ok(Finish::Commit((), entries))
            },
        )
        .await
        .map_err(StoreError::from)
    }

    pub(crate) async fn read_plain_row(
        &self,
        table: &'static TableSpec,
        key: &str,
    ) -> Result<Option<Value>> {
        let client = self.client().await?;
        let sql = select_sql(table, &format!("WHERE {} = $1", table.key));
        let stmt = client.prepare_cached(&sql).await.map_err(db_err)?;
        let row = client.query_opt(&stmt, &[&key]).await.map_err(db_err)?;
        row.map(|r| {
            let text: String = r.try_get(0).map_err(db_err)?;
            parse_line(table, &text)
        })
        .transpose()
    }

    pub(crate) async fn read_plain_rows(&self, table: &'static TableSpec) -> Result<Vec<Value>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&select_sql(table, ""))
            .await
            .map_err(db_err)?;
        let rows = client.query(&stmt, &[]).await.map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let text: String = r.try_get(0).map_err(db_err)?;
                parse_line(table, &text)
            })
            .collect()
    }
}
