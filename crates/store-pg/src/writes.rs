//! Writes other than `apply`: deploy, claim, fetch-and-lock, timer acquisition. Each
//! runs in its own transaction and appends its journal rows in it.

use std::sync::LazyLock;

use steadyflow_store::journal::JournalEntry;
use steadyflow_store::schema::*;
use steadyflow_store::*;

use crate::PgStore;
use crate::error::db_err;
use crate::pipeline::{self, CUSTOM_PLANS, Finish, JOURNAL_INSERT, JournalArrays, Param, Step};
use crate::rows;

/// Fetch-and-lock in one statement (parameters: topics `$1` with their lock durations
/// `$2`, now `$3`, max `$4`, worker `$5`).
///
/// Per topic, two range scans of `external_tasks_fetch` (topic, lock_expires_at,
/// created_at, id) that never step over locked rows, each at most `$4` rows and
/// `FOR UPDATE SKIP LOCKED`: `expired` locks (`lock_expires_at <= now`) by expiry, then
/// `fresh`, never-locked rows (`IS NULL`) in creation order, only when the expired ones
/// do not already fill `$4`. `picked` merges the candidates of all topics (expired first,
/// then by creation time and id) and keeps `$4`; they are locked for the worker until
/// now + their topic's lock duration and returned in that order with their instance's
/// variables. Candidates locked but not picked are released at commit.
///
/// The never-locked scan orders by `lock_expires_at` (NULL throughout) before
/// `created_at, id`: the planner does not take `IS NULL` as fixing the column, and only
/// the index's own order lets it read the index in order and stop at `$4` instead of
/// sorting the topic's whole backlog. It runs on the connection's cached generic plan
/// (`pipeline::SESSION_OPTIONS`); the plan test below checks that plan and the custom
/// one, with and without statistics.
///
/// Exactly once between nodes: a row another transaction has locked is skipped, and one
/// it re-locked or deleted after this statement's snapshot fails the recheck of the
/// scan's conditions that `FOR UPDATE` does on the newest row version.
pub(crate) static FETCH_AND_LOCK: LazyLock<String> = LazyLock::new(|| {
    let ready = "(e.retries IS NULL OR e.retries > 0) AND (e.retry_at IS NULL OR e.retry_at <= $3)";
    format!(
        "WITH expired AS MATERIALIZED ( \
             SELECT x.id, x.created_at, t.lock_ms \
             FROM UNNEST($1::text[], $2::int8[]) AS t(topic, lock_ms) \
             CROSS JOIN LATERAL ( \
                 SELECT e.id, e.created_at FROM external_tasks AS e \
                 WHERE e.topic = t.topic AND e.lock_expires_at IS NOT NULL \
                   AND e.lock_expires_at <= $3 AND {ready} \
                 ORDER BY e.lock_expires_at LIMIT $4 \
                 FOR UPDATE SKIP LOCKED) AS x \
         ), fresh AS MATERIALIZED ( \
             SELECT y.id, y.created_at, t.lock_ms \
             FROM UNNEST($1::text[], $2::int8[]) AS t(topic, lock_ms) \
             CROSS JOIN LATERAL ( \
                 SELECT e.id, e.created_at FROM external_tasks AS e \
                 WHERE e.topic = t.topic AND e.lock_expires_at IS NULL AND {ready} \
                   AND (SELECT count(*) FROM expired) < $4 \
                 ORDER BY e.lock_expires_at, e.created_at, e.id LIMIT $4 \
                 FOR UPDATE SKIP LOCKED) AS y \
         ), picked AS MATERIALIZED ( \
             SELECT id, true AS expired, created_at, lock_ms FROM expired \
             UNION ALL \
             SELECT id, false, created_at, lock_ms FROM fresh \
             ORDER BY expired DESC, created_at, id LIMIT $4 \
         ), locked AS ( \
             UPDATE external_tasks AS e \
             SET worker_id = $5, lock_expires_at = $3 + p.lock_ms \
             FROM picked AS p WHERE e.id = p.id \
             RETURNING e.*, p.expired \
         ) \
         SELECT {}, (SELECT i.variables FROM instances AS i WHERE i.id = l.instance_id) \
         FROM locked AS l ORDER BY l.expired DESC, l.created_at, l.id",
        prefixed("l", EXTERNAL_COLS)
    )
});

impl PgStore {
    pub(crate) async fn write_deploy(
        &self,
        defs: Vec<NewDefinition>,
        now: Timestamp,
    ) -> Result<Vec<Deployed>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        tx.batch_execute(CUSTOM_PLANS).await.map_err(db_err)?;
        // One lock per key, taken in a fixed order: deploys of a key are serialised
        // across nodes, and two multi-key deploys cannot deadlock.
        let mut keys: Vec<&str> = defs.iter().map(|d| d.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        let lock = tx
            .prepare_cached("SELECT pg_advisory_xact_lock(hashtext($1))")
            .await
            .map_err(db_err)?;
        for key in &keys {
            tx.execute(&lock, &[key]).await.map_err(db_err)?;
        }
        let latest = tx
            .prepare_cached(&format!(
                "SELECT {DEFINITION_COLS}, xml FROM definitions WHERE key = $1 ORDER BY version DESC LIMIT 1"
            ))
            .await
            .map_err(db_err)?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO definitions (id, key, version, name, checksum, xml, deployed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .await
            .map_err(db_err)?;
        let mut out = Vec::with_capacity(defs.len());
        for d in &defs {
            let stored = tx.query(&latest, &[&d.key]).await.map_err(db_err)?;
            let stored = stored
                .first()
                .map(|r| rows::definition(r, true))
                .transpose()?;
            let deployed = steadyflow_store::deploy::next_version(stored, d, now);
            if deployed.created {
                let r = &deployed.definition;
                let params: [Param<'_>; 7] = [
                    &r.id,
                    &r.key,
                    &r.version,
                    &r.name,
                    &r.checksum,
                    &r.xml,
                    &r.deployed_at.timestamp_millis(),
                ];
                tx.execute(&insert, &params).await.map_err(db_err)?;
            }
            out.push(deployed);
        }
        let entries = steadyflow_store::deploy::journal(&out)?;
        if !entries.is_empty() {
            let stmt = tx.prepare_cached(JOURNAL_INSERT).await.map_err(db_err)?;
            let arrays = JournalArrays::new(&entries)?;
            tx.execute(&stmt, &arrays.params(&to_ms(now)))
                .await
                .map_err(db_err)?;
        }
        drop(entries);
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    pub(crate) async fn write_claim(
        &self,
        id: &str,
        user: &str,
        now: Timestamp,
    ) -> Result<TaskRecord> {
        let client = self.client().await?;
        let journal = client
            .prepare_cached(JOURNAL_INSERT)
            .await
            .map_err(db_err)?;
        let claim = client
            .prepare_cached(&format!(
                "UPDATE tasks SET assignee = $2 WHERE id = $1 AND (assignee IS NULL OR assignee = $2) \
                 RETURNING {TASK_COLS}"
            ))
            .await
            .map_err(db_err)?;
        let steps = vec![Step::Query(claim, vec![&id, &user])];
        let claimed = pipeline::transact(
            &client,
            pipeline::BEGIN_CUSTOM_PLANS,
            &journal,
            to_ms(now),
            steps,
            |rows| match rows[0].first().map(rows::task).transpose()? {
                Some(t) => {
                    let entry = JournalEntry::of(JournalOp::Update, &t)?.into_owned();
                    Ok(Finish::Commit(Some(t), vec![entry]))
                }
                None => Ok(Finish::Rollback(None)),
            },
        )
        .await?;
        match claimed {
            Some(t) => Ok(t),
            None => Err(StoreError::claim_refused(id, self.read_task(id).await?)),
        }
    }

    pub(crate) async fn write_fetch_and_lock(
        &self,
        request: &TaskLocking<'_>,
    ) -> Result<Vec<LockedTask>> {
        let (names, durations): (Vec<&str>, Vec<i64>) = request
            .topics
            .iter()
            .map(|t| (t.topic.as_str(), t.lock_duration_ms))
            .unzip();
        let worker = request.worker;
        let client = self.client().await?;
        let journal = client
            .prepare_cached(JOURNAL_INSERT)
            .await
            .map_err(db_err)?;
        let stmt = client
            .prepare_cached(&FETCH_AND_LOCK)
            .await
            .map_err(db_err)?;
        let now = to_ms(request.now);
        let max = i64::try_from(request.max).unwrap_or(i64::MAX);
        let steps = vec![Step::Query(
            stmt,
            vec![&names, &durations, &now, &max, &worker],
        )];
        // On the session's cached generic plan: planned once per connection, and reads
        // the index in order for expired locks too (see the plan test below).
        let locked = pipeline::transact(&client, pipeline::BEGIN, &journal, now, steps, |rows| {
            let mut out = Vec::with_capacity(rows[0].len());
            let mut entries = Vec::with_capacity(rows[0].len());
            for row in &rows[0] {
                let task = rows::external(row)?;
                let variables = rows::vars(
                    rows::get::<Option<serde_json::Value>>(row, EXTERNAL_COL_COUNT)?
                        .unwrap_or_default(),
                )?;
                entries.push(JournalEntry::of(JournalOp::Update, &task)?.into_owned());
                out.push(LockedTask { task, variables });
            }
            Ok(Finish::Commit(out, entries))
        })
        .await?;
        Ok(locked)
    }

    pub(crate) async fn write_acquire_timers(
        &self,
        request: &TimerLocking<'_>,
    ) -> Result<Vec<TimerRecord>> {
        let cols = prefixed("t", TIMER_COLS);
        let sql = format!(
            "WITH picked AS MATERIALIZED ( \
                 SELECT id FROM timers \
                 WHERE due_at <= $1 AND (lock_until IS NULL OR lock_until <= $1) \
                 ORDER BY due_at, id \
                 LIMIT $2 \
                 FOR UPDATE SKIP LOCKED \
             ) \
             UPDATE timers AS t SET owner = $3, lock_until = $4 \
             FROM picked WHERE t.id = picked.id \
             RETURNING {cols}"
        );
        let client = self.client().await?;
        let journal = client
            .prepare_cached(JOURNAL_INSERT)
            .await
            .map_err(db_err)?;
        let stmt = client.prepare_cached(&sql).await.map_err(db_err)?;
        let (now, lock_until) = (to_ms(request.now), to_ms(request.lock_until));
        let limit = i64::try_from(request.limit).unwrap_or(i64::MAX);
        let owner = request.owner;
        let steps = vec![Step::Query(stmt, vec![&now, &limit, &owner, &lock_until])];
        let timers = pipeline::transact(
            &client,
            pipeline::BEGIN_CUSTOM_PLANS,
            &journal,
            now,
            steps,
            |rows| {
                let mut timers = rows[0]
                    .iter()
                    .map(rows::timer)
                    .collect::<Result<Vec<_>>>()?;
                timers.sort_by(|a, b| (a.due_at, &a.id).cmp(&(b.due_at, &b.id)));
                let entries = timers
                    .iter()
                    .map(|t| Ok(JournalEntry::of(JournalOp::Update, t)?.into_owned()))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Finish::Commit(timers, entries))
            },
        )
        .await?;
        Ok(timers)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use tokio_postgres::NoTls;

    use super::FETCH_AND_LOCK;
    use crate::testing::fresh_database;

    /// `(node type, rows visited over all loops)` of every plan node reading
    /// `external_tasks`.
    fn scans(plan: &Value, out: &mut Vec<(String, f64)>) {
        let num = |k: &str| plan.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        if plan.get("Relation Name").and_then(Value::as_str) == Some("external_tasks") {
            let visited = (num("Actual Rows")
                + num("Rows Removed by Filter")
                + num("Rows Removed by Index Recheck"))
                * num("Actual Loops");
            let kind = plan["Node Type"].as_str().unwrap_or("?").to_string();
            out.push((kind, visited));
        }
        for child in plan
            .get("Plans")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            scans(child, out);
        }
    }

    /// Runs the fetch statement under `EXPLAIN ANALYZE` (rolled back); returns the rows
    /// it locked and the rows each `external_tasks` scan visited.
    async fn explain(
        client: &mut tokio_postgres::Client,
        topics: &[&str],
        now: i64,
        generic: bool,
    ) -> (f64, Vec<(String, f64)>) {
        let tx = client.transaction().await.unwrap();
        let row = if generic {
            // The session settings of the store's connections, and a cached generic plan.
            let options = crate::pipeline::SESSION_OPTIONS
                .split("-c ")
                .filter(|o| !o.trim().is_empty())
                .map(|o| format!("SET LOCAL {};", o.trim()))
                .collect::<String>();
            tx.batch_execute(&options).await.unwrap();
            tx.batch_execute(&format!(
                "PREPARE fetch_generic(text[], int8[], int8, int8, text) AS {}",
                *FETCH_AND_LOCK
            ))
            .await
            .unwrap();
            let topics = format!("{{{}}}", topics.join(","));
            let durations = format!("{{{}}}", vec!["60000"; topics.len()].join(","));
            let row = tx
                .query_one(
                    &format!(
                        "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE fetch_generic('{topics}', \
                         '{durations}', {now}, 64, 'w')"
                    ),
                    &[],
                )
                .await
                .unwrap();
            tx.batch_execute("DEALLOCATE fetch_generic").await.unwrap();
            row
        } else {
            let durations = vec![60_000i64; topics.len()];
            tx.query_one(
                &format!("EXPLAIN (ANALYZE, FORMAT JSON) {}", *FETCH_AND_LOCK),
                &[&topics, &durations, &now, &64i64, &"w"],
            )
            .await
            .unwrap()
        };
        tx.rollback().await.unwrap();
        let plan: Value = row.get(0);
        let top = &plan[0]["Plan"];
        let mut out = Vec::new();
        scans(top, &mut out);
        (top["Actual Rows"].as_f64().unwrap_or(0.0), out)
    }

    /// 20,000 tasks over three topics, most of them locked: the fetch must never step
    /// over the locked rows (no sequential scan, no scan visiting more rows than are
    /// unlocked); and from a backlog of 15,000 never-locked rows over three other topics
    /// it must read them in index order, stopping near max, instead of sorting them all.
    /// With and without planner statistics (autovacuum may be off).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fetch_plan_never_scans_locked_rows() {
        let Some(db) = fresh_database().await else {
            return;
        };
        drop(crate::PgStore::connect(db.url()).await.expect("migrate"));
        let (mut client, conn) = tokio_postgres::connect(db.url(), NoTls).await.unwrap();
        tokio::spawn(conn);
        // Topics reserve/ship/bill: 19,000 locked, 400 expired at now = 1000, 600 never
        // locked. Topics a/b/c: 15,000 never locked.
        client
            .batch_execute(
                "INSERT INTO instances SELECT 'i' || g, 'd:1', 'd', NULL, 'active', '{\"a\": 1}', \
                 '{}', 1, 0, NULL FROM generate_series(1, 7000) AS g; \
                 INSERT INTO external_tasks (id, instance_id, definition_id, activity_id, topic, \
                 worker_id, lock_expires_at, created_at) \
                 SELECT 'e' || lpad(g::text, 6, '0'), 'i' || (g % 7000 + 1), 'd:1', 'x', \
                 (ARRAY['reserve', 'ship', 'bill'])[g % 3 + 1], \
                 CASE WHEN g <= 19400 THEN 'w0' END, \
                 CASE WHEN g <= 19000 THEN 9000000000000 WHEN g <= 19400 THEN 500 END, g \
                 FROM generate_series(1, 20000) AS g; \
                 INSERT INTO external_tasks (id, instance_id, definition_id, activity_id, topic, \
                 created_at) \
                 SELECT 'b' || lpad(g::text, 6, '0'), 'i' || (g % 7000 + 1), 'd:1', 'x', \
                 (ARRAY['a', 'b', 'c'])[g % 3 + 1], g FROM generate_series(1, 15000) AS g",
            )
            .await
            .unwrap();
        for analyzed in [false, true] {
            if analyzed {
                client.batch_execute("ANALYZE").await.unwrap();
            }
            let cases = [
                (["reserve", "ship", "bill"], 1_000, "expired locks", 1_000.0),
                (
                    ["reserve", "ship", "bill"],
                    100,
                    "never-locked rows",
                    1_000.0,
                ),
                (["a", "b", "c"], 100, "backlog", 3.0 * 2.0 * 64.0),
            ];
            for ((topics, now, what, bound), generic) in
                cases.into_iter().flat_map(|c| [(c, false), (c, true)])
            {
                let (locked, scans) = explain(&mut client, &topics, now, generic).await;
                let case = format!("{what}, analyzed {analyzed}, generic plan {generic}");
                eprintln!("{case}: locked {locked}, scans {scans:?}");
                assert_eq!(locked, 64.0, "{case}: max locked");
                for (kind, visited) in &scans {
                    assert!(
                        kind != "Seq Scan" && *visited <= bound,
                        "{case}: {kind} visited {visited} rows: {scans:?}"
                    );
                }
            }
        }
        drop(client);
        db.cleanup().await;
    }
}
