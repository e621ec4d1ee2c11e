//! The listing queries both stores run: a filter becomes the same `SELECT … WHERE …
//! ORDER BY … LIMIT` on every backend, in the backend's [`Dialect`]; the backend binds
//! the [`Arg`]s and maps the rows.

use crate::schema::{DEFINITION_COLS, EXTERNAL_COLS, INCIDENT_COLS, INSTANCE_COLS, TASK_COLS};
use crate::{ExternalTaskFilter, IncidentFilter, InstanceFilter, TaskFilter};

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

/// Without XML bodies, newest first per key.
pub fn definitions(d: &Dialect, key: Option<&str>) -> Listing {
    let mut w = Where::new(d);
    w.eq("key", key);
    w.select(DEFINITION_COLS, "definitions", "key, version DESC", None)
}

pub fn instances(d: &Dialect, f: &InstanceFilter) -> Listing {
    let mut w = Where::new(d);
    w.eq("state", f.state.map(|s| s.as_str()))
        .eq("definition_key", f.definition_key.as_deref())
        .eq("business_key", f.business_key.as_deref());
    w.select(INSTANCE_COLS, "instances", "started_at, id", f.limit)
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
    w.select(TASK_COLS, "tasks", "created_at, id", f.limit)
}

pub fn external_tasks(d: &Dialect, f: &ExternalTaskFilter) -> Listing {
    let mut w = Where::new(d);
    w.eq("instance_id", f.instance_id.as_deref())
        .eq("topic", f.topic.as_deref());
    w.select(EXTERNAL_COLS, "external_tasks", "created_at, id", f.limit)
}

pub fn incidents(d: &Dialect, f: &IncidentFilter) -> Listing {
    let mut w = Where::new(d);
    w.eq("instance_id", f.instance_id.as_deref());
    if f.open_only {
        w.clauses.push("resolved_at IS NULL".into());
    }
    w.select(INCIDENT_COLS, "incidents", "created_at, id", None)
}

#[cfg(test)]
mod tests {
    use super::*;

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
                limit: Some(5),
                visible_to: None,
            },
        );
        assert_eq!(
            q.sql,
            format!(
                "SELECT {TASK_COLS} FROM tasks WHERE assignee = ?1 AND g(?2) \
                 ORDER BY created_at, id LIMIT ?3"
            )
        );
        assert_eq!(
            q.args,
            [
                Arg::Text("ada".into()),
                Arg::Text("ops".into()),
                Arg::Int(5)
            ]
        );
        let all = incidents(&QM, &IncidentFilter::default());
        assert_eq!(
            all.sql,
            format!("SELECT {INCIDENT_COLS} FROM incidents ORDER BY created_at, id")
        );
        assert!(all.args.is_empty());
    }
}
