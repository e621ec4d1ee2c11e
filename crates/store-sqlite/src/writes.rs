//! Write operations; each runs on the writer thread inside a batch transaction and
//! appends its journal rows in that same transaction. Clean failures (`Conflict`,
//! `NotFound`, `Rejected`) are raised before the first write.

use std::borrow::Cow;

use rusqlite::{Connection, OptionalExtension, params};
use steadyflow_store::journal::{self, Effects, JournalEntry};
use steadyflow_store::schema::*;
use steadyflow_store::*;

use crate::backend_err;
use crate::rows;

type R<T> = Result<T>;

/// Appends journal rows at `tx_time` (multi-row inserts).
pub(crate) fn append_journal(c: &Connection, tx_time: i64, entries: &[JournalEntry<'_>]) -> R<()> {
    use rusqlite::types::{ToSqlOutput, ValueRef};
    fn text(s: &str) -> ToSqlOutput<'_> {
        ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))
    }
    for chunk in entries.chunks(CHUNK) {
        let mut stmt = c
            .prepare_cached(journal_insert(chunk.len()))
            .map_err(backend_err)?;
        let mut args: Vec<ToSqlOutput<'_>> = Vec::with_capacity(chunk.len() * 5);
        for e in chunk {
            args.extend([
                ToSqlOutput::Borrowed(ValueRef::Integer(tx_time)),
                text(e.entity.as_str()),
                text(&e.entity_id),
                text(e.op.as_str()),
                e.row_text()
                    .map_or(ToSqlOutput::Borrowed(ValueRef::Null), text),
            ]);
        }
        stmt.execute(rusqlite::params_from_iter(&args))
            .map_err(backend_err)?;
    }
    Ok(())
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

pub(crate) fn deploy(
    c: &Connection,
    tx: i64,
    defs: &[NewDefinition],
    now: Timestamp,
) -> R<Vec<Deployed>> {
    let mut out = Vec::with_capacity(defs.len());
    for d in defs {
        let latest = crate::reads::definition(c, "key", &d.key).map_err(backend_err)?;
        let deployed = steadyflow_store::deploy::next_version(latest, d, now);
        if deployed.created {
            let r = &deployed.definition;
            c.prepare_cached(
                "INSERT INTO definitions (id, key, version, name, checksum, xml, deployed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![r.id, r.key, r.version, r.name, r.checksum, d.xml, to_ms(now)])
            })
            .map_err(backend_err)?;
        }
        out.push(deployed);
    }
    let entries = steadyflow_store::deploy::journal(&out)?;
    append_journal(c, tx, &entries)?;
    drop(entries);
    Ok(out)
}

/// A change set's JSON, made on the caller's thread so the writer only writes: the
/// journal's row images, and the texts of SQLite's JSON columns.
pub(crate) struct Encoded {
    images: RowImages,
    vars: String,
    /// `candidate_users`, `candidate_groups` of each created task.
    candidates: Vec<(Cow<'static, str>, Cow<'static, str>)>,
}

/// A JSON array of strings; the common empty one without an allocation.
fn list_json(list: &[String]) -> R<Cow<'static, str>> {
    if list.is_empty() {
        return Ok(Cow::Borrowed("[]"));
    }
    serde_json::to_string(list)
        .map(Cow::Owned)
        .map_err(|e| StoreError::Backend(format!("serializing candidates: {e}")))
}

impl Encoded {
    pub(crate) fn of(ch: &ChangeSet) -> R<Encoded> {
        Ok(Encoded {
            images: RowImages::of(ch)?,
            vars: serde_json::to_string(&ch.instance.variables)
                .map_err(|e| StoreError::Backend(format!("serializing variables: {e}")))?,
            candidates: ch
                .tasks_created
                .iter()
                .map(|t| {
                    Ok((
                        list_json(&t.candidate_users)?,
                        list_json(&t.candidate_groups)?,
                    ))
                })
                .collect::<R<_>>()?,
        })
    }
}

/// The instance update, made once per variant: `state` is left out of the SET list
/// when the command did not change it (SQLite rewrites the index entries of every
/// indexed column it sets), and a lock guard joins the WHERE clause (one statement
/// checks both locks).
fn update_instance_sql(state_changed: bool, guarded: bool) -> &'static str {
    static SQL: std::sync::OnceLock<[String; 4]> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        [(false, false), (true, false), (false, true), (true, true)].map(|(state, guard)| {
            format!(
                "UPDATE instances SET business_key = ?8, {}variables = ?3, runtime = ?4, version = ?5, \
                 ended_at = ?6 WHERE id = ?1 AND version = ?7 AND ?2 IS NOT NULL{}",
                if state { "state = ?2, " } else { "" },
                if guard {
                    " AND EXISTS (SELECT 1 FROM external_tasks WHERE id = ?9 AND worker_id = ?10 \
                     AND lock_expires_at > ?11)"
                } else {
                    ""
                }
            )
        })
    });
    &all[usize::from(state_changed) | usize::from(guarded) << 1]
}

/// Deletes row `id` of `entity`'s table; whether there was one.
fn delete(c: &Connection, entity: JournalEntity, id: &str) -> R<bool> {
    let sql = match entity {
        JournalEntity::Task => "DELETE FROM tasks WHERE id = ?1",
        JournalEntity::ExternalTask => "DELETE FROM external_tasks WHERE id = ?1",
        JournalEntity::Timer => "DELETE FROM timers WHERE id = ?1",
        other => {
            return Err(StoreError::Backend(format!(
                "{} rows are not deleted by id",
                other.table()
            )));
        }
    };
    let n = c
        .prepare_cached(sql)
        .and_then(|mut s| s.execute([id]))
        .map_err(backend_err)?;
    Ok(n > 0)
}

pub(crate) fn apply(c: &Connection, tx: i64, ch: &ChangeSet, enc: &Encoded) -> R<()> {
    // The worker's lock is checked before anything is written: for an instance update,
    // as part of its WHERE clause (one statement checks both locks); else on its own.
    if let Some(g) = &ch.lock_guard
        && ch.expected_version.is_none()
    {
        let held = c
            .prepare_cached(
                "SELECT 1 FROM external_tasks WHERE id = ?1 AND worker_id = ?2 AND lock_expires_at > ?3",
            )
            .and_then(|mut s| s.exists(params![g.task_id, g.worker_id, to_ms(g.now)]))
            .map_err(backend_err)?;
        if !held {
            // Like a lost optimistic lock: the engine re-reads and reports the lock's state.
            return Err(StoreError::Conflict(ch.instance.id.clone()));
        }
    }
    let i = &ch.instance;
    let (vars, runtime) = (&enc.vars, i.runtime.as_str());
    match ch.expected_version {
        None => {
            c.prepare_cached(
                "INSERT INTO instances (id, definition_id, definition_key, business_key, state, variables, runtime, version, started_at, ended_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    i.id, i.definition_id, i.definition_key, i.business_key, i.state.as_str(), vars, runtime,
                    i.version, to_ms(i.started_at), i.ended_at.map(to_ms)
                ])
            })
            .map_err(backend_err)?;
        }
        Some(expected) => {
            let sql = update_instance_sql(ch.prior_state != Some(i.state), ch.lock_guard.is_some());
            let mut stmt = c.prepare_cached(sql).map_err(backend_err)?;
            let base = params![
                i.id,
                i.state.as_str(),
                vars,
                runtime,
                i.version,
                i.ended_at.map(to_ms),
                expected,
                i.business_key
            ];
            let n = match &ch.lock_guard {
                None => stmt.execute(base),
                Some(g) => {
                    let mut all: Vec<&dyn rusqlite::ToSql> = base.to_vec();
                    let now = to_ms(g.now);
                    all.extend([&g.task_id as &dyn rusqlite::ToSql, &g.worker_id, &now]);
                    stmt.execute(all.as_slice())
                }
            }
            .map_err(backend_err)?;
            if n == 0 {
                return Err(StoreError::Conflict(i.id.clone()));
            }
        }
    }
    let mut effects = Effects::default();
    for id in &ch.tasks_removed {
        if !delete(c, JournalEntity::Task, id)? {
            effects.missed.push(id);
        }
    }
    for (t, (users, groups)) in ch.tasks_created.iter().zip(&enc.candidates) {
        c.prepare_cached(
            "INSERT INTO tasks (id, instance_id, definition_id, activity_id, name, assignee, candidate_users, candidate_groups, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .and_then(|mut s| {
            s.execute(params![
                t.id, t.instance_id, t.definition_id, t.activity_id, t.name, t.assignee,
                users, groups, to_ms(t.created_at)
            ])
        })
        .map_err(backend_err)?;
    }
    for id in &ch.external_removed {
        if !delete(c, JournalEntity::ExternalTask, id)? {
            effects.missed.push(id);
        }
    }
    for e in &ch.external_upserted {
        if !upsert_external(c, e)? {
            effects.replaced.push(&e.id);
        }
    }
    for id in &ch.timers_removed {
        if !delete(c, JournalEntity::Timer, id)? {
            effects.missed.push(id);
        }
    }
    for t in &ch.timers_created {
        c.prepare_cached(
            "INSERT INTO timers (id, instance_id, activity_id, due_at, owner, lock_until, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .and_then(|mut s| {
            s.execute(params![t.id, t.instance_id, t.activity_id, to_ms(t.due_at), t.owner, t.lock_until.map(to_ms), to_ms(t.created_at)])
        })
        .map_err(backend_err)?;
    }
    for inc in &ch.incidents_created {
        c.prepare_cached(
            "INSERT INTO incidents (id, instance_id, activity_id, incident_type, message, external_task_id, created_at, resolved_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .and_then(|mut s| {
            s.execute(params![
                inc.id, inc.instance_id, inc.activity_id, inc.incident_type.as_str(), inc.message, inc.external_task_id,
                to_ms(inc.created_at), inc.resolved_at.map(to_ms)
            ])
        })
        .map_err(backend_err)?;
    }
    if !ch.incidents_resolved.is_empty() {
        let sql = format!(
            "UPDATE incidents SET resolved_at = ?2 WHERE id = ?1 RETURNING {INCIDENT_COLS}"
        );
        let mut stmt = c.prepare_cached(&sql).map_err(backend_err)?;
        for id in &ch.incidents_resolved {
            let row = stmt
                .query_row(params![id, to_ms(ch.time)], rows::incident)
                .optional()
                .map_err(backend_err)?;
            effects.resolved.extend(row);
        }
    }
    if let Some(events) = &enc.images.history {
        c.prepare_cached("INSERT INTO history (instance_id, time, events) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![i.id, to_ms(ch.time), events.get()]))
            .map_err(backend_err)?;
    }
    let mut entries = Vec::new();
    journal::entries(ch, &enc.images, &effects, &mut entries)?;
    append_journal(c, tx, &entries)
}

/// Inserts or replaces external task `e`; whether it was inserted.
fn upsert_external(c: &Connection, e: &ExternalTaskRecord) -> R<bool> {
    let p = params![
        e.id,
        e.instance_id,
        e.definition_id,
        e.activity_id,
        e.topic,
        e.worker_id,
        e.lock_expires_at.map(to_ms),
        e.retries,
        e.error_message,
        e.retry_at.map(to_ms),
        to_ms(e.created_at)
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
    Ok(inserted > 0)
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
            append_journal(c, tx, &[JournalEntry::of(JournalOp::Update, &t)?])?;
            Ok(t)
        }
        None => Err(StoreError::claim_refused(
            id,
            crate::reads::task(c, id).map_err(backend_err)?,
        )),
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
            stmt.query(params![
                t.topic,
                to_ms(now),
                i64::try_from(max).unwrap_or(i64::MAX)
            ])
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
        let Some(i) = heads
            .iter()
            .enumerate()
            .filter_map(|(i, head)| head.as_ref().map(|t| (i, t)))
            .min_by(|(_, a), (_, b)| (key(a), &a.id).cmp(&(key(b), &b.id)))
            .map(|(i, _)| i)
        else {
            break;
        };
        let chosen = std::mem::replace(&mut heads[i], next(&mut cursors[i])?);
        out.extend(chosen);
    }
    Ok(out)
}

/// Locks up to `max` fetchable tasks of `topics` for `worker`. Only task rows are read
/// and written here, on the writer; the instances' variables are read afterwards on a
/// reader ([`crate::reads::variables_of`]).
pub(crate) fn fetch_and_lock(
    c: &Connection,
    tx: i64,
    request: &TaskLocking<'_>,
) -> R<Vec<ExternalTaskRecord>> {
    let TaskLocking {
        worker,
        max,
        topics,
        now,
    } = *request;
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
    let mut stmt = c
        .prepare_cached(
            "UPDATE external_tasks SET worker_id = ?2, lock_expires_at = ?3 WHERE id = ?1",
        )
        .map_err(backend_err)?;
    for task in found.iter_mut() {
        let lock_ms = request.lock_duration_ms(&task.topic);
        task.worker_id = Some(worker.to_string());
        let until = to_ms(now).saturating_add(lock_ms);
        task.lock_expires_at = Some(from_ms(until)?);
        stmt.execute(params![task.id, worker, until])
            .map_err(backend_err)?;
    }
    journal_updates(c, tx, &found)?;
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
            s.query_map(
                params![to_ms(now), i64::try_from(limit).unwrap_or(i64::MAX)],
                rows::timer,
            )?
            .collect()
        })
        .map_err(backend_err)?;
    let mut out = Vec::with_capacity(due.len());
    for mut t in due {
        t.owner = Some(owner.to_string());
        t.lock_until = Some(lock_until);
        c.prepare_cached("UPDATE timers SET owner = ?2, lock_until = ?3 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![t.id, owner, to_ms(lock_until)]))
            .map_err(backend_err)?;
        out.push(t);
    }
    journal_updates(c, tx, &out)?;
    Ok(out)
}

/// Journals `rows` as updated.
fn journal_updates<T: journal::Journaled>(c: &Connection, tx: i64, rows: &[T]) -> R<()> {
    let entries = rows
        .iter()
        .map(|r| JournalEntry::of(JournalOp::Update, r))
        .collect::<R<Vec<_>>>()?;
    append_journal(c, tx, &entries)
}
