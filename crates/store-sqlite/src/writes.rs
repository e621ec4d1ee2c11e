//! Write operations; each runs on the writer thread inside a batch savepoint, and
//! appends its journal rows in that same transaction.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use steadyflow_store::*;

use crate::backend_err;
use crate::rows::{self, *};

type R<T> = Result<T>;

fn journal<T: Serialize>(c: &Connection, tx: i64, entity: &str, id: &str, op: &str, row: Option<&T>) -> R<()> {
    let image = match row {
        Some(r) => Some(serde_json::to_string(r).map_err(|e| StoreError::Backend(e.to_string()))?),
        None => None,
    };
    c.prepare_cached(
        "INSERT INTO journal (tx_time, entity, entity_id, op, row) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| s.execute(params![tx, entity, id, op, image]))
    .map_err(backend_err)?;
    Ok(())
}

fn to_json<T: Serialize>(v: &T) -> R<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(e.to_string()))
}

pub(crate) fn deploy(c: &Connection, tx: i64, defs: &[NewDefinition], now: Timestamp) -> R<Vec<Deployed>> {
    let mut out = Vec::with_capacity(defs.len());
    for d in defs {
        let latest = crate::reads::definition(c, "key", &d.key).map_err(backend_err)?;
        if let Some(l) = latest.as_ref().filter(|l| l.checksum == d.checksum) {
            out.push(Deployed { definition: l.clone(), created: false });
            continue;
        }
        let version = latest.map(|l| l.version + 1).unwrap_or(1);
        let record = DefinitionRecord {
            id: format!("{}:{}", d.key, version),
            key: d.key.clone(),
            version,
            name: d.name.clone(),
            checksum: d.checksum.clone(),
            xml: Some(d.xml.clone()),
            deployed_at: now,
        };
        c.prepare_cached(
            "INSERT INTO definitions (id, key, version, name, checksum, xml, deployed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .and_then(|mut s| {
            s.execute(params![record.id, record.key, version, record.name, record.checksum, d.xml, ms(now)])
        })
        .map_err(backend_err)?;
        journal(c, tx, "definition", &record.id, "insert", Some(&record))?;
        out.push(Deployed { definition: record, created: true });
    }
    Ok(out)
}

pub(crate) fn apply(c: &Connection, tx: i64, ch: &ChangeSet) -> R<()> {
    let i = &ch.instance;
    let vars = to_json(&i.variables)?;
    let runtime = to_json(&i.runtime)?;
    match ch.expected_version {
        None => {
            c.prepare_cached(
                "INSERT INTO instances (id, definition_id, definition_key, business_key, state, variables, runtime, version, started_at, ended_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    i.id, i.definition_id, i.definition_key, i.business_key, i.state.as_str(), vars, runtime,
                    i.version, ms(i.started_at), i.ended_at.map(ms)
                ])
            })
            .map_err(backend_err)?;
            journal(c, tx, "instance", &i.id, "insert", Some(i))?;
        }
        Some(expected) => {
            let n = c
                .prepare_cached(
                    "UPDATE instances SET business_key = ?2, state = ?3, variables = ?4, runtime = ?5, version = ?6, ended_at = ?7 \
                     WHERE id = ?1 AND version = ?8",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        i.id, i.business_key, i.state.as_str(), vars, runtime, i.version, i.ended_at.map(ms), expected
                    ])
                })
                .map_err(backend_err)?;
            if n == 0 {
                return Err(StoreError::Conflict(i.id.clone()));
            }
            journal(c, tx, "instance", &i.id, "update", Some(i))?;
        }
    }
    for id in &ch.tasks_removed {
        delete(c, tx, "tasks", "task", id)?;
    }
    for t in &ch.tasks_created {
        c.prepare_cached(
            "INSERT INTO tasks (id, instance_id, definition_id, activity_id, name, assignee, candidate_users, candidate_groups, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .and_then(|mut s| {
            s.execute(params![
                t.id, t.instance_id, t.definition_id, t.activity_id, t.name, t.assignee,
                to_json(&t.candidate_users).unwrap_or_default(), to_json(&t.candidate_groups).unwrap_or_default(),
                ms(t.created_at)
            ])
        })
        .map_err(backend_err)?;
        journal(c, tx, "task", &t.id, "insert", Some(t))?;
    }
    for id in &ch.external_removed {
        delete(c, tx, "external_tasks", "externalTask", id)?;
    }
    for e in &ch.external_upserted {
        upsert_external(c, tx, e)?;
    }
    for id in &ch.timers_removed {
        delete(c, tx, "timers", "timer", id)?;
    }
    for t in &ch.timers_created {
        c.prepare_cached(
            "INSERT INTO timers (id, instance_id, activity_id, due_at, owner, lock_until, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .and_then(|mut s| {
            s.execute(params![t.id, t.instance_id, t.activity_id, ms(t.due_at), t.owner, t.lock_until.map(ms), ms(t.created_at)])
        })
        .map_err(backend_err)?;
        journal(c, tx, "timer", &t.id, "insert", Some(t))?;
    }
    for inc in &ch.incidents_created {
        c.prepare_cached(
            "INSERT INTO incidents (id, instance_id, activity_id, incident_type, message, external_task_id, created_at, resolved_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .and_then(|mut s| {
            s.execute(params![
                inc.id, inc.instance_id, inc.activity_id, inc.incident_type, inc.message, inc.external_task_id,
                ms(inc.created_at), inc.resolved_at.map(ms)
            ])
        })
        .map_err(backend_err)?;
        journal(c, tx, "incident", &inc.id, "insert", Some(inc))?;
    }
    for id in &ch.incidents_resolved {
        let sql = format!("UPDATE incidents SET resolved_at = ?2 WHERE id = ?1 RETURNING {INCIDENT_COLS}");
        let row = c
            .prepare_cached(&sql)
            .and_then(|mut s| s.query_row(params![id, tx], rows::incident).optional())
            .map_err(backend_err)?;
        if let Some(row) = row {
            journal(c, tx, "incident", id, "update", Some(&row))?;
        }
    }
    if !ch.history.is_empty() {
        let mut stmt = c
            .prepare_cached(
                "INSERT INTO history (instance_id, time, event, activity_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(backend_err)?;
        for h in &ch.history {
            stmt.execute(params![h.instance_id, ms(h.time), h.event, h.activity_id, to_json(&h.detail)?])
                .map_err(backend_err)?;
        }
        journal(c, tx, "history", &i.id, "append", Some(&ch.history))?;
    }
    Ok(())
}

fn delete(c: &Connection, tx: i64, table: &str, entity: &str, id: &str) -> R<()> {
    let n = c
        .prepare_cached(&format!("DELETE FROM {table} WHERE id = ?1"))
        .and_then(|mut s| s.execute([id]))
        .map_err(backend_err)?;
    if n > 0 {
        journal::<()>(c, tx, entity, id, "delete", None)?;
    }
    Ok(())
}

fn upsert_external(c: &Connection, tx: i64, e: &ExternalTaskRecord) -> R<()> {
    let p = params![
        e.id, e.instance_id, e.definition_id, e.activity_id, e.topic, e.worker_id,
        e.lock_expires_at.map(ms), e.retries, e.error_message, e.retry_at.map(ms), ms(e.created_at)
    ];
    let inserted = c
        .prepare_cached(
            "INSERT OR IGNORE INTO external_tasks (id, instance_id, definition_id, activity_id, topic, worker_id, lock_expires_at, retries, error_message, retry_at, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )
        .and_then(|mut s| s.execute(p))
        .map_err(backend_err)?;
    if inserted == 0 {
        c.prepare_cached(
            "UPDATE external_tasks SET instance_id = ?2, definition_id = ?3, activity_id = ?4, topic = ?5, worker_id = ?6, \
             lock_expires_at = ?7, retries = ?8, error_message = ?9, retry_at = ?10, created_at = ?11 WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(p))
        .map_err(backend_err)?;
    }
    journal(c, tx, "externalTask", &e.id, if inserted == 0 { "update" } else { "insert" }, Some(e))
}

pub(crate) fn claim_task(c: &Connection, tx: i64, id: &str, user: &str) -> R<TaskRecord> {
    let sql = format!(
        "UPDATE tasks SET assignee = ?2 WHERE id = ?1 AND (assignee IS NULL OR assignee = ?2) RETURNING {TASK_COLS}"
    );
    let row = c
        .prepare_cached(&sql)
        .and_then(|mut s| s.query_row(params![id, user], rows::task).optional())
        .map_err(backend_err)?;
    match row {
        Some(t) => {
            journal(c, tx, "task", id, "update", Some(&t))?;
            Ok(t)
        }
        None => match crate::reads::task(c, id).map_err(backend_err)? {
            Some(t) => Err(StoreError::Rejected(format!(
                "task {id} is already claimed by {}",
                t.assignee.unwrap_or_default()
            ))),
            None => Err(StoreError::NotFound { what: "task", id: id.to_string() }),
        },
    }
}

pub(crate) fn fetch_and_lock(
    c: &Connection,
    tx: i64,
    worker: &str,
    max: usize,
    topics: &[TopicLock],
    now: Timestamp,
) -> R<Vec<LockedTask>> {
    if topics.is_empty() || max == 0 {
        return Ok(Vec::new());
    }
    let marks = (0..topics.len()).map(|i| format!("?{}", i + 3)).collect::<Vec<_>>().join(", ");
    let cols = EXTERNAL_COLS
        .split(", ")
        .map(|c| format!("e.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {cols}, i.variables FROM external_tasks e JOIN instances i ON i.id = e.instance_id \
         WHERE e.topic IN ({marks}) AND (e.lock_expires_at IS NULL OR e.lock_expires_at <= ?1) \
         AND (e.retries IS NULL OR e.retries > 0) AND (e.retry_at IS NULL OR e.retry_at <= ?1) \
         ORDER BY e.created_at, e.id LIMIT ?2"
    );
    let mut args: Vec<rusqlite::types::Value> = vec![ms(now).into(), (max as i64).into()];
    args.extend(topics.iter().map(|t| rusqlite::types::Value::Text(t.topic.clone())));
    let found: Vec<(ExternalTaskRecord, String)> = c
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map(rusqlite::params_from_iter(args), |r| Ok((rows::external(r)?, r.get::<_, String>(11)?)))?
                .collect()
        })
        .map_err(backend_err)?;
    let mut out = Vec::with_capacity(found.len());
    for (mut task, vars) in found {
        let lock_ms = topics.iter().find(|t| t.topic == task.topic).map(|t| t.lock_duration_ms).unwrap_or(0);
        task.worker_id = Some(worker.to_string());
        task.lock_expires_at = Some(rows::from_ms(ms(now) + lock_ms));
        c.prepare_cached("UPDATE external_tasks SET worker_id = ?2, lock_expires_at = ?3 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![task.id, worker, task.lock_expires_at.map(ms)]))
            .map_err(backend_err)?;
        journal(c, tx, "externalTask", &task.id, "update", Some(&task))?;
        let variables = serde_json::from_str(&vars).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        out.push(LockedTask { task, variables });
    }
    Ok(out)
}

pub(crate) fn acquire_due_timers(
    c: &Connection,
    tx: i64,
    owner: &str,
    now: Timestamp,
    lock_until: Timestamp,
    limit: usize,
) -> R<Vec<TimerRecord>> {
    let sql = format!(
        "SELECT {TIMER_COLS} FROM timers WHERE due_at <= ?1 AND (lock_until IS NULL OR lock_until <= ?1) \
         ORDER BY due_at, id LIMIT ?2"
    );
    let due: Vec<TimerRecord> = c
        .prepare_cached(&sql)
        .and_then(|mut s| s.query_map(params![ms(now), limit as i64], rows::timer)?.collect())
        .map_err(backend_err)?;
    let mut out = Vec::with_capacity(due.len());
    for mut t in due {
        t.owner = Some(owner.to_string());
        t.lock_until = Some(lock_until);
        c.prepare_cached("UPDATE timers SET owner = ?2, lock_until = ?3 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![t.id, owner, ms(lock_until)]))
            .map_err(backend_err)?;
        journal(c, tx, "timer", &t.id, "update", Some(&t))?;
        out.push(t);
    }
    Ok(out)
}
