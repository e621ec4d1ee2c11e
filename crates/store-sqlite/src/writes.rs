//! Write operations; each runs on the writer thread inside a batch transaction and
//! appends its journal rows in that same transaction. Clean failures (`Conflict`,
//! `NotFound`, `Rejected`) are raised before the first write.

use std::borrow::Cow;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use steadyflow_store::*;

use crate::backend_err;
use crate::rows::{self, *};

type R<T> = Result<T>;

/// Journal rows of one command, written together by [`Journal::flush`] (multi-row
/// inserts). Ids and images are borrowed from the change set where they exist already.
struct Journal<'a> {
    tx: i64,
    rows: Vec<JournalRow<'a>>,
}

/// Entity, entity id, operation, row image.
type JournalRow<'a> = (
    &'static str,
    Cow<'a, str>,
    &'static str,
    Option<Cow<'a, str>>,
);

impl<'a> Journal<'a> {
    fn new(tx: i64) -> Self {
        Journal {
            tx,
            rows: Vec::new(),
        }
    }

    fn add<T: Serialize>(
        &mut self,
        entity: &'static str,
        id: impl Into<Cow<'a, str>>,
        op: &'static str,
        row: Option<&T>,
    ) -> R<()> {
        let image = match row {
            Some(r) => Some(Cow::Owned(to_json(r)?)),
            None => None,
        };
        self.rows.push((entity, id.into(), op, image));
        Ok(())
    }

    fn raw(&mut self, entity: &'static str, id: &'a str, op: &'static str, image: &'a str) {
        self.rows
            .push((entity, Cow::Borrowed(id), op, Some(Cow::Borrowed(image))));
    }

    fn flush(self, c: &Connection) -> R<()> {
        for chunk in self.rows.chunks(CHUNK) {
            let mut stmt = c
                .prepare_cached(journal_insert(chunk.len()))
                .map_err(backend_err)?;
            let mut args: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(chunk.len() * 5);
            for (entity, id, op, row) in chunk {
                args.extend([&self.tx as &dyn rusqlite::ToSql, entity, id, op, row]);
            }
            stmt.execute(args.as_slice()).map_err(backend_err)?;
        }
        Ok(())
    }
}

/// Rows per multi-row insert statement.
const CHUNK: usize = 32;

/// The journal insert of `rows` rows (1..=CHUNK), made once.
fn journal_insert(rows: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        (0..=CHUNK)
            .map(|n| {
                format!(
                    "INSERT INTO journal (tx_time, entity, entity_id, op, row) VALUES {}",
                    vec!["(?, ?, ?, ?, ?)"; n].join(", ")
                )
            })
            .collect()
    });
    &all[rows]
}

fn to_json<T: Serialize>(v: &T) -> R<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(e.to_string()))
}

pub(crate) fn deploy(
    c: &Connection,
    tx: i64,
    defs: &[NewDefinition],
    now: Timestamp,
) -> R<Vec<Deployed>> {
    let mut j = Journal::new(tx);
    let mut out = Vec::with_capacity(defs.len());
    for d in defs {
        let latest = crate::reads::definition(c, "key", &d.key).map_err(backend_err)?;
        if let Some(l) = latest.as_ref().filter(|l| l.checksum == d.checksum) {
            out.push(Deployed {
                definition: l.clone(),
                created: false,
            });
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
        j.add("definition", record.id.clone(), "insert", Some(&record))?;
        out.push(Deployed {
            definition: record,
            created: true,
        });
    }
    j.flush(c)?;
    Ok(out)
}

/// JSON of a change set, made on the caller's thread so the writer only writes.
pub(crate) struct Images {
    vars: String,
    instance: String,
    tasks: Vec<(String, String, String)>,
    externals: Vec<String>,
    timers: Vec<String>,
    incidents: Vec<String>,
    history: Option<String>,
}

impl Images {
    pub(crate) fn of(ch: &ChangeSet) -> R<Images> {
        let all = |v: Vec<R<String>>| v.into_iter().collect::<R<Vec<String>>>();
        Ok(Images {
            vars: to_json(&ch.instance.variables)?,
            instance: to_json(&ch.instance)?,
            tasks: ch
                .tasks_created
                .iter()
                .map(|t| {
                    Ok((
                        to_json(t)?,
                        to_json(&t.candidate_users)?,
                        to_json(&t.candidate_groups)?,
                    ))
                })
                .collect::<R<_>>()?,
            externals: all(ch.external_upserted.iter().map(to_json).collect())?,
            timers: all(ch.timers_created.iter().map(to_json).collect())?,
            incidents: all(ch.incidents_created.iter().map(to_json).collect())?,
            history: encode_history(&ch.instance.id, &ch.history),
        })
    }
}

pub(crate) fn apply(c: &Connection, tx: i64, ch: &ChangeSet, img: &Images) -> R<()> {
    // The worker's lock is checked before anything is written: for an instance update,
    // as part of its WHERE clause (one statement checks both locks); else on its own.
    if let Some(g) = &ch.lock_guard
        && ch.expected_version.is_none()
    {
        let held = c
            .prepare_cached(
                "SELECT 1 FROM external_tasks WHERE id = ?1 AND worker_id = ?2 AND lock_expires_at > ?3",
            )
            .and_then(|mut s| s.exists(params![g.task_id, g.worker_id, ms(g.now)]))
            .map_err(backend_err)?;
        if !held {
            // Like a lost optimistic lock: the engine re-reads and reports the lock's state.
            return Err(StoreError::Conflict(ch.instance.id.clone()));
        }
    }
    let mut j = Journal::new(tx);
    let i = &ch.instance;
    let (vars, runtime) = (&img.vars, i.runtime.as_str());
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
            j.raw("instance", &i.id, "insert", &img.instance);
        }
        Some(expected) => {
            // SQLite rewrites the index entries of every indexed column in the SET list:
            // leave `state` out when the command did not change it.
            let set = if ch.prior_state == Some(i.state) {
                "business_key = ?8, variables = ?3, runtime = ?4, version = ?5, ended_at = ?6"
            } else {
                "business_key = ?8, state = ?2, variables = ?3, runtime = ?4, version = ?5, ended_at = ?6"
            };
            let guard = if ch.lock_guard.is_some() {
                " AND EXISTS (SELECT 1 FROM external_tasks WHERE id = ?9 AND worker_id = ?10 AND lock_expires_at > ?11)"
            } else {
                ""
            };
            let sql = format!(
                "UPDATE instances SET {set} WHERE id = ?1 AND version = ?7 AND ?2 IS NOT NULL{guard}"
            );
            let mut stmt = c.prepare_cached(&sql).map_err(backend_err)?;
            let base = params![
                i.id,
                i.state.as_str(),
                vars,
                runtime,
                i.version,
                i.ended_at.map(ms),
                expected,
                i.business_key
            ];
            let n = match &ch.lock_guard {
                None => stmt.execute(base),
                Some(g) => {
                    let mut all: Vec<&dyn rusqlite::ToSql> = base.to_vec();
                    let now = ms(g.now);
                    all.extend([&g.task_id as &dyn rusqlite::ToSql, &g.worker_id, &now]);
                    stmt.execute(all.as_slice())
                }
            }
            .map_err(backend_err)?;
            if n == 0 {
                return Err(StoreError::Conflict(i.id.clone()));
            }
            j.raw("instance", &i.id, "update", &img.instance);
        }
    }
    for id in &ch.tasks_removed {
        delete(c, &mut j, "tasks", "task", id)?;
    }
    for (t, (image, users, groups)) in ch.tasks_created.iter().zip(&img.tasks) {
        c.prepare_cached(
            "INSERT INTO tasks (id, instance_id, definition_id, activity_id, name, assignee, candidate_users, candidate_groups, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .and_then(|mut s| {
            s.execute(params![
                t.id, t.instance_id, t.definition_id, t.activity_id, t.name, t.assignee,
                users, groups, ms(t.created_at)
            ])
        })
        .map_err(backend_err)?;
        j.raw("task", &t.id, "insert", image);
    }
    for id in &ch.external_removed {
        delete(c, &mut j, "external_tasks", "externalTask", id)?;
    }
    for (e, image) in ch.external_upserted.iter().zip(&img.externals) {
        upsert_external(c, &mut j, e, image)?;
    }
    for id in &ch.timers_removed {
        delete(c, &mut j, "timers", "timer", id)?;
    }
    for (t, image) in ch.timers_created.iter().zip(&img.timers) {
        c.prepare_cached(
            "INSERT INTO timers (id, instance_id, activity_id, due_at, owner, lock_until, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .and_then(|mut s| {
            s.execute(params![t.id, t.instance_id, t.activity_id, ms(t.due_at), t.owner, t.lock_until.map(ms), ms(t.created_at)])
        })
        .map_err(backend_err)?;
        j.raw("timer", &t.id, "insert", image);
    }
    for (inc, image) in ch.incidents_created.iter().zip(&img.incidents) {
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
        j.raw("incident", &inc.id, "insert", image);
    }
    for id in &ch.incidents_resolved {
        let sql = format!(
            "UPDATE incidents SET resolved_at = ?2 WHERE id = ?1 RETURNING {INCIDENT_COLS}"
        );
        let row = c
            .prepare_cached(&sql)
            .and_then(|mut s| s.query_row(params![id, tx], rows::incident).optional())
            .map_err(backend_err)?;
        if let Some(row) = row {
            j.add("incident", id, "update", Some(&row))?;
        }
    }
    if let Some(events) = &img.history {
        c.prepare_cached("INSERT INTO history (instance_id, time, events) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![i.id, tx, events]))
            .map_err(backend_err)?;
        j.raw("history", &i.id, "append", events);
    }
    j.flush(c)
}

fn delete<'a>(
    c: &Connection,
    j: &mut Journal<'a>,
    table: &str,
    entity: &'static str,
    id: &'a str,
) -> R<()> {
    let n = c
        .prepare_cached(&format!("DELETE FROM {table} WHERE id = ?1"))
        .and_then(|mut s| s.execute([id]))
        .map_err(backend_err)?;
    if n > 0 {
        j.add::<()>(entity, id, "delete", None)?;
    }
    Ok(())
}

fn upsert_external<'a>(
    c: &Connection,
    j: &mut Journal<'a>,
    e: &'a ExternalTaskRecord,
    image: &'a str,
) -> R<()> {
    let p = params![
        e.id,
        e.instance_id,
        e.definition_id,
        e.activity_id,
        e.topic,
        e.worker_id,
        e.lock_expires_at.map(ms),
        e.retries,
        e.error_message,
        e.retry_at.map(ms),
        ms(e.created_at)
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
    j.raw(
        "externalTask",
        &e.id,
        if inserted == 0 { "update" } else { "insert" },
        image,
    );
    Ok(())
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
            let mut j = Journal::new(tx);
            j.add("task", id, "update", Some(&t))?;
            j.flush(c)?;
            Ok(t)
        }
        None => match crate::reads::task(c, id).map_err(backend_err)? {
            Some(t) => Err(StoreError::Rejected(format!(
                "task {id} is already claimed by {}",
                t.assignee.unwrap_or_default()
            ))),
            None => Err(StoreError::NotFound {
                what: "task",
                id: id.to_string(),
            }),
        },
    }
}

/// The first `max` rows of `sql` over all `topics`, in `key` order (then id): one
/// cursor per topic, each in that order already, merged while stepping, so no more rows
/// are read than are taken.
fn merge_topics<K: Ord>(
    c: &Connection,
    sql: &str,
    topics: &[TopicLock],
    now: Timestamp,
    max: usize,
    key: impl Fn(&ExternalTaskRecord) -> K,
) -> R<Vec<ExternalTaskRecord>> {
    // One cached statement per cursor: the same text again would re-prepare while the
    // first is in use, so each slot's text is made distinct.
    let mut stmts = (0..topics.len())
        .map(|slot| c.prepare_cached(&format!("{sql} -- cursor {slot}")))
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend_err)?;
    let mut cursors = Vec::with_capacity(stmts.len());
    for (stmt, t) in stmts.iter_mut().zip(topics) {
        cursors.push(
            stmt.query(params![t.topic, ms(now), max as i64])
                .map_err(backend_err)?,
        );
    }
    fn next(rows: &mut rusqlite::Rows<'_>) -> R<Option<ExternalTaskRecord>> {
        match rows.next().map_err(backend_err)? {
            Some(row) => Ok(Some(rows::external(row).map_err(backend_err)?)),
            None => Ok(None),
        }
    }
    let mut heads = Vec::with_capacity(cursors.len());
    for rows in cursors.iter_mut() {
        heads.push(next(rows)?);
    }
    let mut out = Vec::new();
    while out.len() < max {
        let Some(i) = (0..heads.len())
            .filter(|&i| heads[i].is_some())
            .min_by(|&a, &b| {
                let (a, b) = (heads[a].as_ref().unwrap(), heads[b].as_ref().unwrap());
                (key(a), &a.id).cmp(&(key(b), &b.id))
            })
        else {
            break;
        };
        out.push(heads[i].take().expect("a head was chosen"));
        heads[i] = next(&mut cursors[i])?;
    }
    Ok(out)
}

/// Locks up to `max` fetchable tasks of `topics` for `worker`. Only task rows are read
/// and written here, on the writer; the instances' variables are read afterwards on a
/// reader ([`crate::reads::variables_of`]).
pub(crate) fn fetch_and_lock(
    c: &Connection,
    tx: i64,
    worker: &str,
    max: usize,
    topics: &[TopicLock],
    now: Timestamp,
) -> R<Vec<ExternalTaskRecord>> {
    if topics.is_empty() || max == 0 {
        return Ok(Vec::new());
    }
    let from = format!("SELECT {EXTERNAL_COLS} FROM external_tasks WHERE topic = ?1");
    let ready = "(retries IS NULL OR retries > 0) AND (retry_at IS NULL OR retry_at <= ?2)";
    // Per topic, two index range scans that never step over locked rows: expired locks
    // first (a crashed worker's tasks are the oldest), then never-locked tasks in creation
    // order. The candidates of all topics are then merged by creation time.
    let expired = format!(
        "{from} AND lock_expires_at IS NOT NULL AND lock_expires_at <= ?2 AND {ready} \
         ORDER BY lock_expires_at, created_at, id LIMIT ?3"
    );
    let fresh =
        format!("{from} AND lock_expires_at IS NULL AND {ready} ORDER BY created_at, id LIMIT ?3");
    let mut found: Vec<ExternalTaskRecord> = Vec::new();
    found.extend(merge_topics(c, &expired, topics, now, max, |t| {
        (t.lock_expires_at, t.created_at)
    })?);
    if found.len() < max {
        let more = merge_topics(c, &fresh, topics, now, max - found.len(), |t| {
            (None::<Timestamp>, t.created_at)
        })?;
        found.extend(more);
    }
    let mut j = Journal::new(tx);
    let mut stmt = c
        .prepare_cached(
            "UPDATE external_tasks SET worker_id = ?2, lock_expires_at = ?3 WHERE id = ?1",
        )
        .map_err(backend_err)?;
    for task in found.iter_mut() {
        let lock_ms = topics
            .iter()
            .find(|t| t.topic == task.topic)
            .map(|t| t.lock_duration_ms)
            .unwrap_or(0);
        task.worker_id = Some(worker.to_string());
        task.lock_expires_at = Some(rows::from_ms(ms(now) + lock_ms));
        stmt.execute(params![task.id, worker, task.lock_expires_at.map(ms)])
            .map_err(backend_err)?;
        j.add("externalTask", &task.id, "update", Some(&*task))?;
    }
    j.flush(c)?;
    Ok(found)
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
        .and_then(|mut s| {
            s.query_map(params![ms(now), limit as i64], rows::timer)?
                .collect()
        })
        .map_err(backend_err)?;
    let mut j = Journal::new(tx);
    let mut out = Vec::with_capacity(due.len());
    for mut t in due {
        t.owner = Some(owner.to_string());
        t.lock_until = Some(lock_until);
        c.prepare_cached("UPDATE timers SET owner = ?2, lock_until = ?3 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![t.id, owner, ms(lock_until)]))
            .map_err(backend_err)?;
        j.add("timer", t.id.clone(), "update", Some(&t))?;
        out.push(t);
    }
    j.flush(c)?;
    Ok(out)
}
