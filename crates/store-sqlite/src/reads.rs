//! Queries on reader connections.

use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OptionalExtension, Row, params_from_iter};
use steadyflow_store::*;

use crate::rows::{self, *};

fn all<T>(
    c: &Connection,
    sql: &str,
    args: Vec<Sql>,
    map: impl Fn(&Row) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut stmt = c.prepare_cached(sql)?;
    stmt.query_map(params_from_iter(args), |r| map(r))?
        .collect()
}

/// `WHERE` clause builder for optional equality filters.
#[derive(Default)]
struct Where {
    clauses: Vec<String>,
    args: Vec<Sql>,
}

impl Where {
    fn eq(&mut self, col: &str, v: &Option<String>) -> &mut Self {
        if let Some(v) = v {
            self.args.push(Sql::Text(v.clone()));
            self.clauses.push(format!("{col} = ?{}", self.args.len()));
        }
        self
    }
    fn raw(&mut self, clause: &str, v: Sql) -> &mut Self {
        self.args.push(v);
        self.clauses
            .push(clause.replace("?", &format!("?{}", self.args.len())));
        self
    }
    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }
}

fn limit(l: Option<usize>) -> String {
    l.map(|n| format!(" LIMIT {n}")).unwrap_or_default()
}

pub(crate) fn definition(
    c: &Connection,
    by: &str,
    v: &str,
) -> rusqlite::Result<Option<DefinitionRecord>> {
    let sql = format!(
        "SELECT {DEFINITION_COLS}, xml FROM definitions WHERE {by} = ?1 ORDER BY version DESC LIMIT 1"
    );
    c.prepare_cached(&sql)?
        .query_row([v], |r| rows::definition(r, true))
        .optional()
}

pub(crate) fn list_definitions(
    c: &Connection,
    key: Option<&str>,
) -> rusqlite::Result<Vec<DefinitionRecord>> {
    let mut w = Where::default();
    w.eq("key", &key.map(str::to_string));
    let sql = format!(
        "SELECT {DEFINITION_COLS} FROM definitions{} ORDER BY key, version DESC",
        w.sql()
    );
    all(c, &sql, w.args, |r| rows::definition(r, false))
}

pub(crate) fn instance(c: &Connection, id: &str) -> rusqlite::Result<Option<InstanceRecord>> {
    let sql = format!("SELECT {INSTANCE_COLS} FROM instances WHERE id = ?1");
    c.prepare_cached(&sql)?
        .query_row([id], rows::instance)
        .optional()
}

/// The variables (JSON text) of each instance of `ids` that exists.
pub(crate) fn variables_of(
    c: &Connection,
    ids: &[String],
) -> rusqlite::Result<std::collections::HashMap<String, String>> {
    let mut out = std::collections::HashMap::with_capacity(ids.len());
    let mut stmt = c.prepare_cached("SELECT variables FROM instances WHERE id = ?1")?;
    for id in ids {
        if out.contains_key(id) {
            continue;
        }
        if let Some(v) = stmt.query_row([id], |r| r.get::<_, String>(0)).optional()? {
            out.insert(id.clone(), v);
        }
    }
    Ok(out)
}

pub(crate) fn list_instances(
    c: &Connection,
    f: &InstanceFilter,
) -> rusqlite::Result<Vec<InstanceRecord>> {
    let mut w = Where::default();
    w.eq("state", &f.state.map(|s| s.as_str().to_string()))
        .eq("definition_key", &f.definition_key)
        .eq("business_key", &f.business_key);
    let sql = format!(
        "SELECT {INSTANCE_COLS} FROM instances{} ORDER BY started_at, id{}",
        w.sql(),
        limit(f.limit)
    );
    all(c, &sql, w.args, rows::instance)
}

pub(crate) fn task(c: &Connection, id: &str) -> rusqlite::Result<Option<TaskRecord>> {
    let sql = format!("SELECT {TASK_COLS} FROM tasks WHERE id = ?1");
    c.prepare_cached(&sql)?
        .query_row([id], rows::task)
        .optional()
}

pub(crate) fn list_tasks(c: &Connection, f: &TaskFilter) -> rusqlite::Result<Vec<TaskRecord>> {
    let mut w = Where::default();
    w.eq("assignee", &f.assignee)
        .eq("instance_id", &f.instance_id);
    if let Some(g) = &f.candidate_group {
        w.raw(
            "EXISTS (SELECT 1 FROM json_each(tasks.candidate_groups) WHERE json_each.value = ?)",
            Sql::Text(g.clone()),
        );
    }
    let sql = format!(
        "SELECT {TASK_COLS} FROM tasks{} ORDER BY created_at, id{}",
        w.sql(),
        limit(f.limit)
    );
    all(c, &sql, w.args, rows::task)
}

pub(crate) fn external_task(
    c: &Connection,
    id: &str,
) -> rusqlite::Result<Option<ExternalTaskRecord>> {
    let sql = format!("SELECT {EXTERNAL_COLS} FROM external_tasks WHERE id = ?1");
    c.prepare_cached(&sql)?
        .query_row([id], rows::external)
        .optional()
}

pub(crate) fn list_external_tasks(
    c: &Connection,
    f: &ExternalTaskFilter,
) -> rusqlite::Result<Vec<ExternalTaskRecord>> {
    let mut w = Where::default();
    w.eq("instance_id", &f.instance_id).eq("topic", &f.topic);
    let sql = format!(
        "SELECT {EXTERNAL_COLS} FROM external_tasks{} ORDER BY created_at, id{}",
        w.sql(),
        limit(f.limit)
    );
    all(c, &sql, w.args, rows::external)
}

pub(crate) fn list_timers(c: &Connection, instance_id: &str) -> rusqlite::Result<Vec<TimerRecord>> {
    let sql = format!("SELECT {TIMER_COLS} FROM timers WHERE instance_id = ?1 ORDER BY due_at, id");
    all(c, &sql, vec![Sql::Text(instance_id.into())], rows::timer)
}

pub(crate) fn next_timer_due(c: &Connection) -> rusqlite::Result<Option<Timestamp>> {
    let v: Option<i64> = c
        .prepare_cached("SELECT MIN(due_at) FROM timers")?
        .query_row([], |r| r.get(0))?;
    Ok(v.map(from_ms))
}

pub(crate) fn list_incidents(
    c: &Connection,
    f: &IncidentFilter,
) -> rusqlite::Result<Vec<IncidentRecord>> {
    let mut w = Where::default();
    w.eq("instance_id", &f.instance_id);
    if f.open_only {
        w.clauses.push("resolved_at IS NULL".into());
    }
    let sql = format!(
        "SELECT {INCIDENT_COLS} FROM incidents{} ORDER BY created_at, id",
        w.sql()
    );
    all(c, &sql, w.args, rows::incident)
}

pub(crate) fn history(c: &Connection, instance_id: &str) -> rusqlite::Result<Vec<HistoryRecord>> {
    let batches = all(
        c,
        "SELECT instance_id, events FROM history WHERE instance_id = ?1 ORDER BY seq",
        vec![Sql::Text(instance_id.into())],
        rows::history_events,
    )?;
    Ok(batches.into_iter().flatten().collect())
}

pub(crate) fn journal_since(
    c: &Connection,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<JournalRecord>> {
    all(
        c,
        "SELECT seq, tx_time, entity, entity_id, op, row FROM journal WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        vec![Sql::Integer(after), Sql::Integer(limit as i64)],
        rows::journal,
    )
}
