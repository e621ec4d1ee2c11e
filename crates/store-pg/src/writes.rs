//! Writes other than `apply`: deploy, claim, fetch-and-lock, timer acquisition. Each
//! runs in its own transaction and appends its journal rows in it.

use std::collections::HashSet;

use steadyflow_store::*;

use crate::PgStore;
use crate::error::db_err;
use crate::pipeline::{self, Finish, JOURNAL_INSERT, JournalArrays, JournalEntry, Step};
use crate::rows::{self, *};

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl PgStore {
    pub(crate) async fn write_deploy(
        &self,
        defs: Vec<NewDefinition>,
        now: Timestamp,
    ) -> Result<Vec<Deployed>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
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
        let mut journal = Vec::new();
        for d in defs {
            let current = tx.query(&latest, &[&d.key]).await.map_err(db_err)?;
            let current = current
                .first()
                .map(|r| rows::definition(r, true))
                .transpose()?;
            if let Some(l) = current.as_ref().filter(|l| l.checksum == d.checksum) {
                out.push(Deployed {
                    definition: l.clone(),
                    created: false,
                });
                continue;
            }
            let version = current.map(|l| l.version + 1).unwrap_or(1);
            let record = DefinitionRecord {
                id: format!("{}:{}", d.key, version),
                key: d.key,
                version,
                name: d.name,
                checksum: d.checksum,
                xml: Some(d.xml),
                deployed_at: now,
            };
            tx.execute(
                &insert,
                &[
                    &record.id,
                    &record.key,
                    &version,
                    &record.name,
                    &record.checksum,
                    &record.xml,
                    &ms(now),
                ],
            )
            .await
            .map_err(db_err)?;
            journal.push(JournalEntry::new(
                "definition",
                &record.id,
                "insert",
                &record,
            )?);
            out.push(Deployed {
                definition: record,
                created: true,
            });
        }
        if !journal.is_empty() {
            let stmt = tx.prepare_cached(JOURNAL_INSERT).await.map_err(db_err)?;
            let arrays = JournalArrays::new(&journal);
            let tx_time = now_ms();
            tx.execute(&stmt, &arrays.params(&tx_time))
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    pub(crate) async fn write_claim(&self, id: &str, user: &str) -> Result<TaskRecord> {
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
        let claimed = pipeline::transact(&client, &journal, now_ms(), steps, |rows| {
            match rows[0].first().map(rows::task).transpose()? {
                Some(t) => {
                    let entry = JournalEntry::new("task", &t.id, "update", &t)?;
                    Ok(Finish::Commit(Some(t), vec![entry]))
                }
                None => Ok(Finish::Rollback(None)),
            }
        })
        .await?;
        if let Some(t) = claimed {
            return Ok(t);
        }
        match self.read_task(id).await? {
            Some(t) => Err(StoreError::Rejected(format!(
                "task {id} is already claimed by {}",
                t.assignee.unwrap_or_default()
            ))),
            None => Err(StoreError::NotFound {
                what: "task",
                id: id.to_string(),
            }),
        }
    }

    pub(crate) async fn write_fetch_and_lock(
        &self,
        worker: &str,
        max: usize,
        topics: &[TopicLock],
        now: Timestamp,
    ) -> Result<Vec<LockedTask>> {
        if topics.is_empty() || max == 0 {
            return Ok(Vec::new());
        }
        // First lock duration of a topic wins; duplicates would make the join ambiguous.
        let mut seen = HashSet::new();
        let (names, durations): (Vec<&str>, Vec<i64>) = topics
            .iter()
            .filter(|t| seen.insert(t.topic.as_str()))
            .map(|t| (t.topic.as_str(), t.lock_duration_ms))
            .unzip();
        let cols = EXTERNAL_COLS
            .split(", ")
            .map(|c| format!("l.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "WITH picked AS MATERIALIZED ( \
                 SELECT id FROM external_tasks \
                 WHERE topic = ANY($1::text[]) \
                   AND (lock_expires_at IS NULL OR lock_expires_at <= $3) \
                   AND (retries IS NULL OR retries > 0) \
                   AND (retry_at IS NULL OR retry_at <= $3) \
                 ORDER BY created_at, id \
                 LIMIT $4 \
                 FOR UPDATE SKIP LOCKED \
             ), locked AS ( \
                 UPDATE external_tasks AS e \
                 SET worker_id = $5, lock_expires_at = $3 + d.lock_ms \
                 FROM picked, UNNEST($1::text[], $2::int8[]) AS d(topic, lock_ms) \
                 WHERE e.id = picked.id AND e.topic = d.topic \
                 RETURNING e.* \
             ) \
             SELECT {cols}, i.variables FROM locked AS l LEFT JOIN instances AS i ON i.id = l.instance_id \
             ORDER BY l.created_at, l.id"
        );
        let client = self.client().await?;
        let journal = client
            .prepare_cached(JOURNAL_INSERT)
            .await
            .map_err(db_err)?;
        let stmt = client.prepare_cached(&sql).await.map_err(db_err)?;
        let now = ms(now);
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let steps = vec![Step::Query(
            stmt,
            vec![&names, &durations, &now, &max, &worker],
        )];
        let locked = pipeline::transact(&client, &journal, now_ms(), steps, |rows| {
            let mut out = Vec::with_capacity(rows[0].len());
            let mut entries = Vec::with_capacity(rows[0].len());
            for row in &rows[0] {
                let task = rows::external(row)?;
                let variables = rows::vars(
                    rows::get::<Option<serde_json::Value>>(row, 11)?.unwrap_or_default(),
                )?;
                entries.push(JournalEntry::new(
                    "externalTask",
                    &task.id,
                    "update",
                    &task,
                )?);
                out.push(LockedTask { task, variables });
            }
            Ok(Finish::Commit(out, entries))
        })
        .await?;
        Ok(locked)
    }

    pub(crate) async fn write_acquire_timers(
        &self,
        owner: &str,
        now: Timestamp,
        lock_until: Timestamp,
        limit: usize,
    ) -> Result<Vec<TimerRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let cols = TIMER_COLS
            .split(", ")
            .map(|c| format!("t.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
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
        let (now, lock_until) = (ms(now), ms(lock_until));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let steps = vec![Step::Query(stmt, vec![&now, &limit, &owner, &lock_until])];
        let timers = pipeline::transact(&client, &journal, now_ms(), steps, |rows| {
            let mut timers = rows[0]
                .iter()
                .map(rows::timer)
                .collect::<Result<Vec<_>>>()?;
            timers.sort_by(|a, b| (a.due_at, &a.id).cmp(&(b.due_at, &b.id)));
            let entries = timers
                .iter()
                .map(|t| JournalEntry::new("timer", &t.id, "update", t))
                .collect::<Result<Vec<_>>>()?;
            Ok(Finish::Commit(timers, entries))
        })
        .await?;
        Ok(timers)
    }
}
