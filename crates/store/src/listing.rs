//! The listing queries both stores run: a filter becomes the same `SELECT … WHERE …
//! ORDER BY … LIMIT` on every backend, in the backend's [`Dialect`]; the backend binds
//! the [`Arg`]s and maps the rows.
//!
//! Pages are keyset pages (see the filters in `records`): the order is a unique key
//! (`id`, the primary key; definitions `(key, version)`, their unique index) and a page
//! continues with a condition on that key, so a deep page reads an index range instead
//! of counting past every row before it.

use crate::schema::{DEFINITION_COLS, EXTERNAL_COLS, INCIDENT_COLS, INSTANCE_COLS, TASK_COLS};
use crate::{
    DefinitionFilter, ExternalTaskFilter, HistoryPosition, HistoryRecord, IncidentFilter,
    InstanceFilter, TaskFilter,
};

/// What differs between backends in these queries.
#[derive(Debug, Clone, Copy)]
pub struct Dialect {
    /// The placeholder of parameter `n` (from 1): `?1`, `$1`.
    pub param: fn(usize) -> String,
    /// The condition "the JSON array column `candidate_groups` holds the text given as
    /// placeholder `p`" (an exact element match, never a substring).
    pub has_candidate_group: fn(p: &str) -> String,
    /// The same for the JSON array column `candidate_users`.
    pub has_candidate_user: fn(p: &str) -> String,
}

/// A query parameter, bound as the backend's text or 64-bit integer type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Text(String),
    Int(i64),
}

/// SQL with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub sql: String,
    pub args: Vec<Arg>,
}

/// Conditions joined by `AND`, with numbered parameters.
struct Where<'d> {
    dialect: &'d Dialect,
    clauses: Vec<String>,
    args: Vec<Arg>,
}

impl<'d> Where<'d> {
    fn new(dialect: &'d Dialect) -> Self {
        Where {
            dialect,
            clauses: Vec::new(),
            args: Vec::new(),
        }
    }

    fn next_param(&mut self, v: Arg) -> String {
        self.args.push(v);
        (self.dialect.param)(self.args.len())
    }

    fn eq(&mut self, col: &str, v: Option<&str>) -> &mut Self {
        if let Some(v) = v {
            let p = self.next_param(Arg::Text(v.to_string()));
            self.clauses.push(format!("{col} = {p}"));
        }
        self
    }

    /// Keyset paging on `id`: only rows behind the given id.
    fn after(&mut self, id: Option<&str>) -> &mut Self {
        if let Some(id) = id {
            let p = self.next_param(Arg::Text(id.to_string()));
            self.clauses.push(format!("id > {p}"));
        }
        self
    }

    /// `SELECT {cols} FROM {table} WHERE … ORDER BY {order} LIMIT …`.
    fn select(mut self, cols: &str, table: &str, order: &str, limit: Option<usize>) -> Listing {
        let mut sql = format!("SELECT {cols} FROM {table}");
        if !self.clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&self.clauses.join(" AND "));
        }
        sql.push_str(" ORDER BY ");
        sql.push_str(order);
        if let Some(n) = limit {
            let p = self.next_param(Arg::Int(i64::try_from(n).unwrap_or(i64::MAX)));
            sql.push_str(" LIMIT ");
            sql.push_str(&p);
        }
        Listing {
            sql,
            args: self.args,
        }
    }
}

/// Without XML bodies; by key, newest version first per key.
pub fn definitions(d: &Dialect, f: &DefinitionFilter) -> Listing {
    let mut w = Where::new(d);
    w.eq("key", f.key.as_deref());
    if let Some(after) = &f.after {
        let k1 = w.next_param(Arg::Text(after.key.clone()));
        let k2 = w.next_param(Arg::Text(after.key.clone()));
        let v = w.next_param(Arg::Int(i64::from(after.version)));
        // The cast lets PostgreSQL bind the 64-bit parameter against its INT column.
        w.clauses.push(format!(
            "(key > {k1} OR (key = {k2} AND CAST(version AS BIGINT) < {v}))"
        ));
    }
    w.select(DEFINITION_COLS, "definitions", "key, version DESC", f.limit)
}

pub fn instances(d: &Dialect, f: &InstanceFilter) -> Listing {
    let mut w = Where::new(d);
    w.eq("state", f.state.map(|s| s.as_str()))
        .eq("definition_key", f.definition_key.as_deref())
        .eq("business_key", f.business_key.as_deref())
        .after(f.after.as_deref());
    w.select(INSTANCE_COLS, "instances", "id", f.limit)
}

pub fn tasks(d: &Dialect, f: &TaskFilter) -> Listing {
    let mut w = Where::new(d);
    w.eq("assignee", f.assignee.as_deref())
        .eq("instance_id", f.instance_id.as_deref());
    if let Some(g) = &f.candidate_group {
        let p = w.next_param(Arg::Text(g.clone()));
        w.clauses.push((d.has_candidate_group)(&p));
    }
    if let Some(v) = &f.visible_to {
        let user = w.next_param(Arg::Text(v.user.clone()));
        let mut any = vec![format!("assignee = {user}"), (d.has_candidate_user)(&user)];
        for g in &v.groups {
            let p = w.next_param(Arg::Text(g.clone()));
            any.push((d.has_candidate_group)(&p));
        }
        w.clauses.push(format!("({})", any.join(" OR ")));
    }
    w.after(f.after.as_deref());
    w.select(TASK_COLS, "tasks", "id", f.limit)
}

pub fn external_tasks(d: &Dialect, f: &ExternalTaskFilter) -> Listing {
    let mut w = Where::new(d);
    w.eq("instance_id", f.instance_id.as_deref())
        .eq("topic", f.topic.as_deref())
        .after(f.after.as_deref());
    w.select(EXTERNAL_COLS, "external_tasks", "id", f.limit)
}

pub fn incidents(d: &Dialect, f: &IncidentFilter) -> Listing {
    let mut w = Where::new(d);
    w.eq("instance_id", f.instance_id.as_deref());
    match f.open {
        Some(true) => w.clauses.push("resolved_at IS NULL".into()),
        Some(false) => w.clauses.push("resolved_at IS NOT NULL".into()),
        None => {}
    }
    w.after(f.after.as_deref());
    w.select(INCIDENT_COLS, "incidents", "id", f.limit)
}

/// One page of an instance's history rows (`instance_id, events, seq`), from the row
/// of `after` on: at most `limit` rows, enough for `limit` events (a row holds one or
/// more). [`history_events_behind`] cuts the events out.
pub fn history(
    d: &Dialect,
    instance_id: &str,
    after: Option<HistoryPosition>,
    limit: usize,
) -> Listing {
    let mut w = Where::new(d);
    w.eq("instance_id", Some(instance_id));
    if let Some(a) = after {
        let p = w.next_param(Arg::Int(a.seq));
        w.clauses.push(format!("seq >= {p}"));
    }
    w.select("instance_id, events, seq", "history", "seq", Some(limit))
}

/// The events of history rows `(seq, events)` (in seq order) behind `after`, at most
/// `limit`, with their positions.
pub fn history_events_behind(
    rows: impl IntoIterator<Item = (i64, Vec<HistoryRecord>)>,
    after: Option<HistoryPosition>,
    limit: usize,
) -> Vec<(HistoryPosition, HistoryRecord)> {
    rows.into_iter()
        .flat_map(|(seq, events)| {
            (0_u32..)
                .zip(events)
                .map(move |(index, e)| (HistoryPosition { seq, index }, e))
        })
        .filter(|(p, _)| after.is_none_or(|a| *p > a))
        .take(limit)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DefinitionPosition;

    const QM: Dialect = Dialect {
        param: |n| format!("?{n}"),
        has_candidate_group: |p| format!("g({p})"),
        has_candidate_user: |p| format!("u({p})"),
    };

    #[test]
    fn filters_become_numbered_conditions() {
        let q = tasks(
            &QM,
            &TaskFilter {
                assignee: Some("ada".into()),
                candidate_group: Some("ops".into()),
                instance_id: None,
                after: Some("t7".into()),
                limit: Some(5),
                visible_to: None,
            },
        );
        assert_eq!(
            q.sql,
            format!(
                "SELECT {TASK_COLS} FROM tasks WHERE assignee = ?1 AND g(?2) AND id > ?3 \
                 ORDER BY id LIMIT ?4"
            )
        );
        assert_eq!(
            q.args,
            [
                Arg::Text("ada".into()),
                Arg::Text("ops".into()),
                Arg::Text("t7".into()),
                Arg::Int(5)
            ]
        );
        let all = incidents(&QM, &IncidentFilter::default());
        assert_eq!(
            all.sql,
            format!("SELECT {INCIDENT_COLS} FROM incidents ORDER BY id")
        );
        assert!(all.args.is_empty());
        let resolved = incidents(
            &QM,
            &IncidentFilter {
                open: Some(false),
                ..Default::default()
            },
        );
        assert!(resolved.sql.contains("WHERE resolved_at IS NOT NULL"));
    }

    #[test]
    fn definitions_continue_behind_key_and_version() {
        let q = definitions(
            &QM,
            &DefinitionFilter {
                key: None,
                after: Some(DefinitionPosition {
                    key: "order".into(),
                    version: 3,
                }),
                limit: Some(2),
            },
        );
        assert_eq!(
            q.sql,
            format!(
                "SELECT {DEFINITION_COLS} FROM definitions \
                 WHERE (key > ?1 OR (key = ?2 AND CAST(version AS BIGINT) < ?3)) \
                 ORDER BY key, version DESC LIMIT ?4"
            )
        );
        assert_eq!(
            q.args,
            [
                Arg::Text("order".into()),
                Arg::Text("order".into()),
                Arg::Int(3),
                Arg::Int(2)
            ]
        );
    }
}
