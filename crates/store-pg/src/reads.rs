//! Queries. Primary-key lookups run as they are, on a shared connection (cached generic
//! plans: index scans); the others on a pooled connection, in a one-statement
//! transaction with a custom plan. The hot path's lookups are batched (`lookups.rs`).

use steadyflow_store::listing::{self, Arg, Dialect, Listing};
use steadyflow_store::schema::*;
use steadyflow_store::*;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::PgStore;
use crate::error::db_err;
use crate::pipeline::{self, BEGIN_CUSTOM_PLANS, BEGIN_LISTING, Step};
use crate::rows;

/// PostgreSQL's spelling of the shared listing queries.
const DIALECT: Dialect = Dialect {
    param: |n| format!("${n}"),
    // JSONB containment: exact element match, never a substring.
    has_candidate_group: |p| format!("candidate_groups @> jsonb_build_array({p}::text)"),
    has_candidate_user: |p| format!("candidate_users @> jsonb_build_array({p}::text)"),
};

impl PgStore {
    /// Runs a query with a custom plan (in a one-statement transaction, pipelined into
    /// one round trip; see [`BEGIN_CUSTOM_PLANS`]). If the query fails, the `COMMIT`
    /// behind it ends the aborted transaction.
    pub(crate) async fn query_rows(
        &self,
        sql: &str,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        self.query_rows_in(BEGIN_CUSTOM_PLANS, sql, args).await
    }

    /// [`query_rows`](Self::query_rows) in a transaction started with `begin`.
    async fn query_rows_in(
        &self,
        begin: &'static str,
        sql: &str,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(db_err)?;
        let steps = [
            Step::Simple(begin),
            Step::Query(stmt, args.to_vec()),
            Step::Simple("COMMIT"),
        ];
        let mut rows = Vec::new();
        for (n, r) in pipeline::run(&client, &steps).await.into_iter().enumerate() {
            match r {
                Ok(v) if n == 1 => rows = v,
                Ok(_) => {}
                Err(e) => {
                    pipeline::rollback(&client).await;
                    return Err(db_err(e));
                }
            }
        }
        Ok(rows)
    }

    /// A lookup by primary key: one statement whose cached generic plan is an index scan.
    /// On a shared connection when there are some (see `shared.rs`).
    pub(crate) async fn query_by_key(&self, sql: &str, key: &str) -> Result<Option<Row>> {
        if let Some(client) = self.readers.client().await {
            let client = client?;
            let stmt = client.prepare_cached(sql).await.map_err(db_err)?;
            return client.query_opt(&stmt, &[&key]).await.map_err(db_err);
        }
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(db_err)?;
        client.query_opt(&stmt, &[&key]).await.map_err(db_err)
    }

    /// Runs a shared listing query (see [`query_rows`](Self::query_rows)), a page in key
    /// order without sorting ([`BEGIN_LISTING`]).
    async fn query_listing(&self, q: Listing) -> Result<Vec<Row>> {
        let args: Vec<Box<dyn ToSql + Sync + Send>> = q
            .args
            .into_iter()
            .map(|a| -> Box<dyn ToSql + Sync + Send> {
                match a {
                    Arg::Text(s) => Box::new(s),
                    Arg::Int(n) => Box::new(n),
                }
            })
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect();
        self.query_rows_in(BEGIN_LISTING, &q.sql, &refs).await
    }

    pub(crate) async fn read_definition(
        &self,
        by: &str,
        v: &str,
    ) -> Result<Option<DefinitionRecord>> {
        let sql = format!(
            "SELECT {DEFINITION_COLS}, xml FROM definitions WHERE {by} = $1 ORDER BY version DESC LIMIT 1"
        );
        let rows = self.query_rows(&sql, &[&v]).await?;
        rows.first().map(|r| rows::definition(r, true)).transpose()
    }

    pub(crate) async fn read_definitions(
        &self,
        f: &DefinitionFilter,
    ) -> Result<Vec<DefinitionRecord>> {
        self.query_listing(listing::definitions(&DIALECT, f))
            .await?
            .iter()
            .map(|r| rows::definition(r, false))
            .collect()
    }

    pub(crate) async fn read_instances(&self, f: &InstanceFilter) -> Result<Vec<InstanceRecord>> {
        self.query_listing(listing::instances(&DIALECT, f))
            .await?
            .iter()
            .map(rows::instance)
            .collect()
    }

    pub(crate) async fn read_task(&self, id: &str) -> Result<Option<TaskRecord>> {
        let sql = format!("SELECT {TASK_COLS} FROM tasks WHERE id = $1");
        self.query_by_key(&sql, id)
            .await?
            .as_ref()
            .map(rows::task)
            .transpose()
    }

    pub(crate) async fn read_tasks(&self, f: &TaskFilter) -> Result<Vec<TaskRecord>> {
        self.query_listing(listing::tasks(&DIALECT, f))
            .await?
            .iter()
            .map(rows::task)
            .collect()
    }

    pub(crate) async fn read_external_task(&self, id: &str) -> Result<Option<ExternalTaskRecord>> {
        let sql = format!("SELECT {EXTERNAL_COLS} FROM external_tasks WHERE id = $1");
        self.query_by_key(&sql, id)
            .await?
            .as_ref()
            .map(rows::external)
            .transpose()
    }

    pub(crate) async fn read_external_tasks(
        &self,
        f: &ExternalTaskFilter,
    ) -> Result<Vec<ExternalTaskRecord>> {
        self.query_listing(listing::external_tasks(&DIALECT, f))
            .await?
            .iter()
            .map(rows::external)
            .collect()
    }

    pub(crate) async fn read_timers(&self, instance_id: &str) -> Result<Vec<TimerRecord>> {
        let sql =
            format!("SELECT {TIMER_COLS} FROM timers WHERE instance_id = $1 ORDER BY due_at, id");
        self.query_rows(&sql, &[&instance_id])
            .await?
            .iter()
            .map(rows::timer)
            .collect()
    }

    pub(crate) async fn read_next_timer_due(&self) -> Result<Option<Timestamp>> {
        let rows = self
            .query_rows("SELECT MIN(due_at) FROM timers", &[])
            .await?;
        match rows.first() {
            Some(r) => rows::get::<Option<i64>>(r, 0)?.map(from_ms).transpose(),
            None => Ok(None),
        }
    }

    pub(crate) async fn read_live_counts(&self) -> Result<steadyflow_store::LiveCounts> {
        let rows = self
            .query_rows(steadyflow_store::gauges::LIVE_COUNTS_SQL, &[])
            .await?;
        let count = |i| -> Result<u64> {
            let n = rows.first().map(|r| rows::get::<i64>(r, i)).transpose()?;
            Ok(n.unwrap_or(0).max(0) as u64)
        };
        Ok(steadyflow_store::LiveCounts {
            running_instances: count(0)?,
            open_tasks: count(1)?,
            open_external_tasks: count(2)?,
        })
    }

    pub(crate) async fn read_incidents(&self, f: &IncidentFilter) -> Result<Vec<IncidentRecord>> {
        self.query_listing(listing::incidents(&DIALECT, f))
            .await?
            .iter()
            .map(rows::incident)
            .collect()
    }

    /// One row per change set; the arrays are flattened in commit (seq) order.
    pub(crate) async fn read_history(&self, instance_id: &str) -> Result<Vec<HistoryRecord>> {
        let rows = self
            .query_rows(
                "SELECT instance_id, events FROM history WHERE instance_id = $1 ORDER BY seq",
                &[&instance_id],
            )
            .await?;
        let mut out = Vec::new();
        for row in &rows {
            out.extend(rows::history_events(row)?);
        }
        Ok(out)
    }

    /// See [`Store::history_page`]: the rows from `after`'s on, then the events behind it.
    pub(crate) async fn read_history_page(
        &self,
        instance_id: &str,
        after: Option<HistoryPosition>,
        limit: usize,
    ) -> Result<Vec<(HistoryPosition, HistoryRecord)>> {
        let q = listing::history(&DIALECT, instance_id, after, limit);
        let mut batches = Vec::new();
        for row in &self.query_listing(q).await? {
            batches.push((rows::get::<i64>(row, 2)?, rows::history_events(row)?));
        }
        Ok(listing::history_events_behind(batches, after, limit))
    }

    /// Rows of transactions older than every transaction still in flight (seqs start
    /// with the transaction id, see the `journal` table): a lower seq can then no longer
    /// appear behind a reader that resumes from the last seq it saw.
    pub(crate) async fn read_journal(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<JournalRecord>> {
        let sql = format!(
            "SELECT {JOURNAL_COLS} FROM journal \
             WHERE seq > $1 AND seq < (pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20) \
             ORDER BY seq LIMIT $2"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query_rows(&sql, &[&after, &limit])
            .await?
            .iter()
            .map(rows::journal)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan of one page of tasks by candidate group, with every task in that group
    /// (as a team's inbox is): read in key order from the primary key and stopped at
    /// the page's end, never every match sorted. Statistics are as a busy table has
    /// them between autovacuum runs: none.
    #[tokio::test]
    async fn a_listing_page_walks_the_key_index_instead_of_sorting_every_match() {
        let Some(db) = crate::testing::fresh_database().await else {
            return;
        };
        let store = PgStore::connect(db.url()).await.expect("connect");
        let (client, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        let task = tokio::spawn(conn);
        client
            .batch_execute(
                "INSERT INTO tasks (id, instance_id, definition_id, activity_id, name, \
                 candidate_users, candidate_groups, created_at) \
                 SELECT lpad(g::text, 12, '0'), 'i' || g, 'd:1', 'review', 'Review', \
                 '[]', '[\"staff\"]', g FROM generate_series(1, 5000) g",
            )
            .await
            .expect("insert tasks");
        let filter = TaskFilter {
            candidate_group: Some("staff".into()),
            limit: Some(51),
            ..Default::default()
        };
        let q = listing::tasks(&DIALECT, &filter);
        let [Arg::Text(group), Arg::Int(limit)] = &q.args[..] else {
            panic!("the group and the limit: {:?}", q.args);
        };
        let plan = |begin: &'static str| {
            let (client, sql) = (&client, format!("EXPLAIN {}", q.sql));
            let (group, limit) = (group.clone(), *limit);
            async move {
                client.batch_execute(begin).await.expect("begin");
                let rows = client
                    .query(&sql, &[&group, &limit])
                    .await
                    .expect("explain");
                client.batch_execute("COMMIT").await.expect("commit");
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        };
        let listing = plan(BEGIN_LISTING).await;
        assert!(
            listing.contains("Index Scan using tasks_pkey") && !listing.contains("Sort"),
            "a page walks the primary key:\n{listing}"
        );
        // What the planner does with sorts allowed (the reason for BEGIN_LISTING).
        eprintln!("with sorts allowed:\n{}", plan(BEGIN_CUSTOM_PLANS).await);
        let page = store.read_tasks(&filter).await.expect("list");
        assert_eq!(page.len(), 51);
        assert_eq!(page[0].id, "000000000001");
        drop(client);
        let _ = task.await;
        drop(store);
        db.cleanup().await;
    }
}
