//! Row <-> record mapping, in the column order of [`steadyflow_store::schema`]'s lists.

use serde::de::DeserializeOwned;
use serde_json::Value;
use steadyflow_store::schema::from_ms;
use steadyflow_store::*;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, Json};

use crate::error::corrupt;

pub(crate) fn get<'a, T: FromSql<'a>>(row: &'a Row, idx: usize) -> Result<T> {
    row.try_get(idx)
        .map_err(|e| corrupt(&format!("column {idx}"), e))
}

fn ts(row: &Row, idx: usize) -> Result<Timestamp> {
    from_ms(get(row, idx)?)
}

fn opt_ts(row: &Row, idx: usize) -> Result<Option<Timestamp>> {
    get::<Option<i64>>(row, idx)?.map(from_ms).transpose()
}

/// Deserializes a JSONB column straight into `T` (no intermediate `Value`).
fn json<T: DeserializeOwned>(row: &Row, idx: usize) -> Result<T> {
    let Json(v) = row
        .try_get::<_, Json<T>>(idx)
        .map_err(|e| corrupt(&format!("JSON column {idx}"), e))?;
    Ok(v)
}

pub(crate) fn vars(v: Value) -> Result<Vars> {
    match v {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Vars::new()),
        other => Err(corrupt(
            "variables",
            format!("expected a JSON object, got {other}"),
        )),
    }
}

/// A closed-set column (`decode` of one of the record enums).
fn named<T>(row: &Row, idx: usize, decode: fn(&str) -> Result<T>) -> Result<T> {
    decode(get(row, idx)?)
}

/// Reads the definition columns, plus `xml` as column 6 when `with_xml`.
pub(crate) fn definition(row: &Row, with_xml: bool) -> Result<DefinitionRecord> {
    Ok(DefinitionRecord {
        id: get(row, 0)?,
        key: get(row, 1)?,
        version: get(row, 2)?,
        name: get(row, 3)?,
        checksum: get(row, 4)?,
        deployed_at: ts(row, 5)?,
        xml: if with_xml { Some(get(row, 6)?) } else { None },
    })
}

pub(crate) fn instance(row: &Row) -> Result<InstanceRecord> {
    instance_at(row, 0)
}

/// Reads the instance columns starting at column `at` (after a joined table's).
pub(crate) fn instance_at(row: &Row, at: usize) -> Result<InstanceRecord> {
    Ok(InstanceRecord {
        id: get(row, at)?,
        definition_id: get(row, at + 1)?,
        definition_key: get(row, at + 2)?,
        business_key: get(row, at + 3)?,
        state: named(row, at + 4, InstanceState::decode)?,
        variables: vars(get(row, at + 5)?)?,
        runtime: {
            let Json(raw) = get::<Json<Box<serde_json::value::RawValue>>>(row, at + 6)?;
            RawJson::from(raw)
        },
        version: get(row, at + 7)?,
        started_at: ts(row, at + 8)?,
        ended_at: opt_ts(row, at + 9)?,
    })
}

pub(crate) fn task(row: &Row) -> Result<TaskRecord> {
    Ok(TaskRecord {
        id: get(row, 0)?,
        instance_id: get(row, 1)?,
        definition_id: get(row, 2)?,
        activity_id: get(row, 3)?,
        name: get(row, 4)?,
        assignee: get(row, 5)?,
        candidate_users: json(row, 6)?,
        candidate_groups: json(row, 7)?,
        created_at: ts(row, 8)?,
    })
}

pub(crate) fn external(row: &Row) -> Result<ExternalTaskRecord> {
    Ok(ExternalTaskRecord {
        id: get(row, 0)?,
        instance_id: get(row, 1)?,
        definition_id: get(row, 2)?,
        activity_id: get(row, 3)?,
        topic: get(row, 4)?,
        worker_id: get(row, 5)?,
        lock_expires_at: opt_ts(row, 6)?,
        retries: get(row, 7)?,
        error_message: get(row, 8)?,
        retry_at: opt_ts(row, 9)?,
        created_at: ts(row, 10)?,
    })
}

pub(crate) fn timer(row: &Row) -> Result<TimerRecord> {
    Ok(TimerRecord {
        id: get(row, 0)?,
        instance_id: get(row, 1)?,
        activity_id: get(row, 2)?,
        due_at: ts(row, 3)?,
        owner: get(row, 4)?,
        lock_until: opt_ts(row, 5)?,
        created_at: ts(row, 6)?,
    })
}

pub(crate) fn incident(row: &Row) -> Result<IncidentRecord> {
    Ok(IncidentRecord {
        id: get(row, 0)?,
        instance_id: get(row, 1)?,
        activity_id: get(row, 2)?,
        incident_type: named(row, 3, IncidentType::decode)?,
        message: get(row, 4)?,
        external_task_id: get(row, 5)?,
        created_at: ts(row, 6)?,
        resolved_at: opt_ts(row, 7)?,
    })
}

/// A history row (`instance_id, events`): its change set's records.
pub(crate) fn history_events(row: &Row) -> Result<Vec<HistoryRecord>> {
    let owner: &str = get(row, 0)?;
    let events: Json<&serde_json::value::RawValue> = get(row, 1)?;
    decode_history(owner, events.0.get()).map_err(|e| corrupt("history events", e))
}

pub(crate) fn journal(row: &Row) -> Result<JournalRecord> {
    Ok(JournalRecord {
        seq: get(row, 0)?,
        tx_time: ts(row, 1)?,
        entity: named(row, 2, JournalEntity::decode)?,
        entity_id: get(row, 3)?,
        op: named(row, 4, JournalOp::decode)?,
        row: match get::<Option<&str>>(row, 5)? {
            Some(text) => {
                serde_json::from_str(text).map_err(|e| corrupt("journal row image", e))?
            }
            None => Value::Null,
        },
    })
}
