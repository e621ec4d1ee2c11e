//! Queries on reader connections.

use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OptionalExtension, Row, params_from_iter};
use steadyflow_store::listing::{self, Arg, Dialect, Listing};
use steadyflow_store::schema::*;
use steadyflow_store::*;

use crate::rows;

/// SQLite's spelling of the shared listing queries.
const DIALECT: Dialect = Dialect {
    param: |n| format!("?{n}"),
    has_candidate_group: |p| {
        format!(
            "EXISTS (SELECT 1 FROM json_each(tasks.candidate_groups) WHERE json_each.value = {p})"
        )
    },
    has_candidate_user: |p| {
        format!(
            "EXISTS (SELECT 1 FROM json_each(tasks.candidate_users) WHERE json_each.value = {p})"
        )
    },
};

fn all<T>(
    c: &Connection,
    q: Listing,
    map: impl Fn(&Row) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let args = q.args.into_iter().map(|a| match a {
        Arg::Text(s) => Sql::Text(s),
        Arg::Int(n) => Sql::Integer(n),
    });
    let mut stmt = c.prepare_cached(&q.sql)?;
    stmt.query_map(params_from_iter(args), |r| map(r))?
        .collect()
}

/// A query with fixed SQL.
fn fixed(sql: &str, args: Vec<Arg>) -> Listing {
    Listing {
        sql: sql.to_string(),
        args,
    }
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
    f: &DefinitionFilter,
) -> rusqlite::Result<Vec<DefinitionRecord>> {
    all(c, listing::definitions(&DIALECT, f), |r| {
        rows::definition(r, false)
    })
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
    all(c, listing::instances(&DIALECT, f), rows::instance)
}

pub(crate) fn task(c: &Connection, id: &str) -> rusqlite::Result<Option<TaskRecord>> {
    let sql = format!("SELECT {TASK_COLS} FROM tasks WHERE id = ?1");
    c.prepare_cached(&sql)?
        .query_row([id], rows::task)
        .optional()
}

pub(crate) fn list_tasks(c: &Connection, f: &TaskFilter) -> rusqlite::Result<Vec<TaskRecord>> {
    all(c, listing::tasks(&DIALECT, f), rows::task)
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
    all(c, listing::external_tasks(&DIALECT, f), rows::external)
}

pub(crate) fn list_timers(c: &Connection, instance_id: &str) -> rusqlite::Result<Vec<TimerRecord>> {
    let sql = format!("SELECT {TIMER_COLS} FROM timers WHERE instance_id = ?1 ORDER BY due_at, id");
    all(
        c,
        fixed(&sql, vec![Arg::Text(instance_id.into())]),
        rows::timer,
    )
}

pub(crate) fn next_timer_due(c: &Connection) -> rusqlite::Result<Option<Timestamp>> {
    c.prepare_cached("SELECT MIN(due_at) FROM timers")?
        .query_row([], |r| rows::opt_ts(r, 0))
}

pub(crate) fn list_incidents(
    c: &Connection,
    f: &IncidentFilter,
) -> rusqlite::Result<Vec<IncidentRecord>> {
    all(c, listing::incidents(&DIALECT, f), rows::incident)
}

pub(crate) fn history(c: &Connection, instance_id: &str) -> rusqlite::Result<Vec<HistoryRecord>> {
    let q = fixed(
        "SELECT instance_id, events FROM history WHERE instance_id = ?1 ORDER BY seq",
        vec![Arg::Text(instance_id.into())],
    );
    let batches = all(c, q, rows::history_events)?;
    Ok(batches.into_iter().flatten().collect())
}

pub(crate) fn history_page(
    c: &Connection,
    instance_id: &str,
    after: Option<HistoryPosition>,
    limit: usize,
) -> rusqlite::Result<Vec<(HistoryPosition, HistoryRecord)>> {
    let q = listing::history(&DIALECT, instance_id, after, limit);
    let rows = all(c, q, |r| {
        Ok((r.get::<_, i64>(2)?, rows::history_events(r)?))
    })?;
    Ok(listing::history_events_behind(rows, after, limit))
}

pub(crate) fn journal_since(
    c: &Connection,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<JournalRecord>> {
    let sql = format!("SELECT {JOURNAL_COLS} FROM journal WHERE seq > ?1 ORDER BY seq LIMIT ?2");
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    all(
        c,
        fixed(&sql, vec![Arg::Int(after), Arg::Int(limit)]),
        rows::journal,
    )
}
