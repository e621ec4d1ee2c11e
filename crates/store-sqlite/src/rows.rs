//! Row <-> record mapping.

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::Row;
use rusqlite::types::Type;
use serde::de::DeserializeOwned;
use steadyflow_store::*;

pub(crate) fn ms(t: Timestamp) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(v: i64) -> Timestamp {
    Utc.timestamp_millis_opt(v)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn json<T: DeserializeOwned>(row: &Row, idx: usize) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    serde_json::from_str(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

fn opt_ms(row: &Row, idx: usize) -> rusqlite::Result<Option<Timestamp>> {
    Ok(row.get::<_, Option<i64>>(idx)?.map(from_ms))
}

pub(crate) const DEFINITION_COLS: &str = "id, key, version, name, checksum, deployed_at";

pub(crate) fn definition(row: &Row, with_xml: bool) -> rusqlite::Result<DefinitionRecord> {
    Ok(DefinitionRecord {
        id: row.get(0)?,
        key: row.get(1)?,
        version: row.get(2)?,
        name: row.get(3)?,
        checksum: row.get(4)?,
        deployed_at: from_ms(row.get(5)?),
        xml: if with_xml { Some(row.get(6)?) } else { None },
    })
}

pub(crate) const INSTANCE_COLS: &str = "id, definition_id, definition_key, business_key, state, variables, runtime, version, started_at, ended_at";

pub(crate) fn instance(row: &Row) -> rusqlite::Result<InstanceRecord> {
    let state: String = row.get(4)?;
    Ok(InstanceRecord {
        id: row.get(0)?,
        definition_id: row.get(1)?,
        definition_key: row.get(2)?,
        business_key: row.get(3)?,
        state: InstanceState::parse(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                4,
                Type::Text,
                format!("bad state {state}").into(),
            )
        })?,
        variables: json(row, 5)?,
        runtime: RawJson::from_text(row.get(6)?)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(6, Type::Text, Box::new(e)))?,
        version: row.get(7)?,
        started_at: from_ms(row.get(8)?),
        ended_at: opt_ms(row, 9)?,
    })
}

pub(crate) const TASK_COLS: &str = "id, instance_id, definition_id, activity_id, name, assignee, candidate_users, candidate_groups, created_at";

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
        created_at: from_ms(row.get(8)?),
    })
}

pub(crate) const EXTERNAL_COLS: &str = "id, instance_id, definition_id, activity_id, topic, worker_id, lock_expires_at, retries, error_message, retry_at, created_at";

pub(crate) fn external(row: &Row) -> rusqlite::Result<ExternalTaskRecord> {
    Ok(ExternalTaskRecord {
        id: row.get(0)?,
        instance_id: row.get(1)?,
        definition_id: row.get(2)?,
        activity_id: row.get(3)?,
        topic: row.get(4)?,
        worker_id: row.get(5)?,
        lock_expires_at: opt_ms(row, 6)?,
        retries: row.get(7)?,
        error_message: row.get(8)?,
        retry_at: opt_ms(row, 9)?,
        created_at: from_ms(row.get(10)?),
    })
}

pub(crate) const TIMER_COLS: &str =
    "id, instance_id, activity_id, due_at, owner, lock_until, created_at";

pub(crate) fn timer(row: &Row) -> rusqlite::Result<TimerRecord> {
    Ok(TimerRecord {
        id: row.get(0)?,
        instance_id: row.get(1)?,
        activity_id: row.get(2)?,
        due_at: from_ms(row.get(3)?),
        owner: row.get(4)?,
        lock_until: opt_ms(row, 5)?,
        created_at: from_ms(row.get(6)?),
    })
}

pub(crate) const INCIDENT_COLS: &str = "id, instance_id, activity_id, incident_type, message, external_task_id, created_at, resolved_at";

pub(crate) fn incident(row: &Row) -> rusqlite::Result<IncidentRecord> {
    Ok(IncidentRecord {
        id: row.get(0)?,
        instance_id: row.get(1)?,
        activity_id: row.get(2)?,
        incident_type: row.get(3)?,
        message: row.get(4)?,
        external_task_id: row.get(5)?,
        created_at: from_ms(row.get(6)?),
        resolved_at: opt_ms(row, 7)?,
    })
}

/// A history row (`instance_id, events`): its change set's records.
pub(crate) fn history_events(row: &Row) -> rusqlite::Result<Vec<HistoryRecord>> {
    let owner: String = row.get(0)?;
    let text: String = row.get(1)?;
    decode_history(&owner, &text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(1, Type::Text, Box::new(e)))
}

pub(crate) fn journal(row: &Row) -> rusqlite::Result<JournalRecord> {
    let text: Option<String> = row.get(5)?;
    let value = match text {
        Some(t) => serde_json::from_str(&t)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(5, Type::Text, Box::new(e)))?,
        None => serde_json::Value::Null,
    };
    Ok(JournalRecord {
        seq: row.get(0)?,
        tx_time: from_ms(row.get(1)?),
        entity: row.get(2)?,
        entity_id: row.get(3)?,
        op: row.get(4)?,
        row: value,
    })
}
