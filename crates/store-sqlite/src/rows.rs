//! Row <-> record mapping. Column lists come from [`steadyflow_store::schema`]; a value
//! that does not convert is reported by rusqlite as a conversion failure, which
//! [`crate::backend_err`] turns into [`StoreError::Corrupt`].

use rusqlite::Row;
use rusqlite::types::Type;
use serde::de::DeserializeOwned;
use steadyflow_store::schema::from_ms;
use steadyflow_store::*;

/// A value of column `idx` that does not make a record.
fn bad(
    idx: usize,
    ty: Type,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, ty, e.into())
}

fn ts(row: &Row, idx: usize) -> rusqlite::Result<Timestamp> {
    from_ms(row.get(idx)?).map_err(|e| bad(idx, Type::Integer, e))
}

pub(crate) fn opt_ts(row: &Row, idx: usize) -> rusqlite::Result<Option<Timestamp>> {
    row.get::<_, Option<i64>>(idx)?
        .map(|v| from_ms(v).map_err(|e| bad(idx, Type::Integer, e)))
        .transpose()
}

fn json<T: DeserializeOwned>(row: &Row, idx: usize) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    serde_json::from_str(&text).map_err(|e| bad(idx, Type::Text, e))
}

/// A closed-set column (`decode` of one of the record enums).
fn named<T>(row: &Row, idx: usize, decode: fn(&str) -> Result<T>) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    decode(&text).map_err(|e| bad(idx, Type::Text, e))
}

/// Reads [`schema::DEFINITION_COLS`](steadyflow_store::schema::DEFINITION_COLS), plus
/// `xml` as column 6 when `with_xml`.
pub(crate) fn definition(row: &Row, with_xml: bool) -> rusqlite::Result<DefinitionRecord> {
    Ok(DefinitionRecord {
        id: row.get(0)?,
        key: row.get(1)?,
        version: row.get(2)?,
        name: row.get(3)?,
        checksum: row.get(4)?,
        deployed_at: ts(row, 5)?,
        xml: if with_xml { Some(row.get(6)?) } else { None },
    })
}

pub(crate) fn instance(row: &Row) -> rusqlite::Result<InstanceRecord> {
    Ok(InstanceRecord {
        id: row.get(0)?,
        definition_id: row.get(1)?,
        definition_key: row.get(2)?,
        business_key: row.get(3)?,
        state: named(row, 4, InstanceState::decode)?,
        variables: json(row, 5)?,
        runtime: RawJson::from_text(row.get(6)?).map_err(|e| bad(6, Type::Text, e))?,
        version: row.get(7)?,
        started_at: ts(row, 8)?,
        ended_at: opt_ts(row, 9)?,
    })
}

pub(crate) fn task(row: &Row) -> rusqlite::Result<TaskRecord> {
    Ok(TaskRecord {
        id: row.get(0)?,
        instance_id: row.get(1)?,
        definition_id: row.get(2)?,
        activity_id: row.get(3)?,
        name: row.get(4)?,
        assignee: row.get(5)?,
        candidate_users: json(row, 6)?,
        candidate_groups: json(row, 7)?,
        created_at: ts(row, 8)?,
    })
}

pub(crate) fn external(row: &Row) -> rusqlite::Result<ExternalTaskRecord> {
    Ok(ExternalTaskRecord {
        id: row.get(0)?,
        instance_id: row.get(1)?,
        definition_id: row.get(2)?,
        activity_id: row.get(3)?,
        topic: row.get(4)?,
        worker_id: row.get(5)?,
        lock_expires_at: opt_ts(row, 6)?,
        retries: row.get(7)?,
        error_message: row.get(8)?,
        retry_at: opt_ts(row, 9)?,
        created_at: ts(row, 10)?,
    })
}

pub(crate) fn timer(row: &Row) -> rusqlite::Result<TimerRecord> {
    Ok(TimerRecord {
        id: row.get(0)?,
        instance_id: row.get(1)?,
        activity_id: row.get(2)?,
        due_at: ts(row, 3)?,
        owner: row.get(4)?,
        lock_until: opt_ts(row, 5)?,
        created_at: ts(row, 6)?,
    })
}

pub(crate) fn incident(row: &Row) -> rusqlite::Result<IncidentRecord> {
    Ok(IncidentRecord {
        id: row.get(0)?,
        instance_id: row.get(1)?,
        activity_id: row.get(2)?,
        incident_type: named(row, 3, IncidentType::decode)?,
        message: row.get(4)?,
        external_task_id: row.get(5)?,
        created_at: ts(row, 6)?,
        resolved_at: opt_ts(row, 7)?,
    })
}

/// A history row (`instance_id, events`): its change set's records.
pub(crate) fn history_events(row: &Row) -> rusqlite::Result<Vec<HistoryRecord>> {
    let owner: String = row.get(0)?;
    let text: String = row.get(1)?;
    decode_history(&owner, &text).map_err(|e| bad(1, Type::Text, e))
}

/// Reads [`schema::JOURNAL_COLS`](steadyflow_store::schema::JOURNAL_COLS).
pub(crate) fn journal(row: &Row) -> rusqlite::Result<JournalRecord> {
    let text: Option<String> = row.get(5)?;
    let value = match text {
        Some(t) => serde_json::from_str(&t).map_err(|e| bad(5, Type::Text, e))?,
        None => serde_json::Value::Null,
    };
    Ok(JournalRecord {
        seq: row.get(0)?,
        tx_time: ts(row, 1)?,
        entity: named(row, 2, JournalEntity::decode)?,
        entity_id: row.get(3)?,
        op: named(row, 4, JournalOp::decode)?,
        row: value,
    })
}
