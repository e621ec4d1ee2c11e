//! The statements of a batch transaction: multi-row writes from `UNNEST` arrays, each
//! row of a child table carrying the id of its change set's instance (`owner`).

use steadyflow_store::schema::{INCIDENT_COLS, prefixed};
use tokio_postgres::Statement;

use crate::pipeline::JOURNAL_INSERT;

/// Whether the change set owning a row won its instance in this transaction: the
/// instance row was inserted or updated by it (so its `xmin` is this transaction's id).
/// Rows of change sets whose optimistic lock or lock guard failed are filtered out with
/// this, so that the rest of the batch commits.
const WON: &str = "EXISTS (SELECT 1 FROM instances AS w \
                   WHERE w.id = u.owner AND w.xmin = (SELECT pg_current_xact_id()::xid))";

/// The change set's lock guard, if any, holds: its worker still has an unexpired lock
/// on the task. The task row stays locked until commit, so a fetch cannot hand it to
/// another worker meanwhile (and a fetch in flight is waited for, then rechecked).
const GUARD: &str = "(u.guard_task IS NULL OR EXISTS (SELECT 1 FROM external_tasks AS g \
                     WHERE g.id = u.guard_task AND g.worker_id = u.guard_worker \
                     AND g.lock_expires_at > u.guard_now FOR UPDATE))";

/// The prepared statements of one batch transaction.
pub(super) struct Statements {
    pub journal: Statement,
    pub insert_instances: Statement,
    pub update_instances: Statement,
    pub children: Children,
}

/// The statements writing a batch's rows other than instances: unfiltered, or keeping
/// only the rows of change sets that won their instance ([`WON`]).
pub(super) struct Children {
    pub delete_tasks: Statement,
    pub insert_tasks: Statement,
    pub delete_external: Statement,
    pub upsert_external: Statement,
    pub delete_timers: Statement,
    pub insert_timers: Statement,
    pub insert_incidents: Statement,
    pub resolve_incidents: Statement,
    pub insert_history: Statement,
}

/// `DELETE` by id (`$1` ids, `$2` their owners) of the rows passing `filter`.
fn delete_sql(table: &str, filter: &str) -> String {
    format!(
        "DELETE FROM {table} AS t USING UNNEST($1::text[], $2::text[]) AS u(id, owner) \
         WHERE t.id = u.id AND {filter} RETURNING t.id"
    )
}

impl Statements {
    /// Prepared once per connection; later calls are cache hits without a round trip.
    pub(super) async fn prepare(
        client: &deadpool_postgres::Client,
        filtered: bool,
    ) -> Result<Self, tokio_postgres::Error> {
        Ok(Statements {
            journal: client.prepare_cached(JOURNAL_INSERT).await?,
            insert_instances: client
                .prepare_cached(&format!(
                    "INSERT INTO instances (id, definition_id, definition_key, business_key, state, variables, \
                     runtime, version, started_at, ended_at) \
                     SELECT u.id, u.definition_id, u.definition_key, u.business_key, u.state, u.variables, \
                     u.runtime, u.version, u.started_at, u.ended_at \
                     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                     $6::jsonb[], $7::json[], $8::int8[], $9::int8[], $10::int8[], \
                     $11::text[], $12::text[], $13::int8[]) AS u(id, definition_id, definition_key, business_key, \
                     state, variables, runtime, version, started_at, ended_at, guard_task, guard_worker, guard_now) \
                     WHERE {GUARD} RETURNING id"
                ))
                .await?,
            // Always writes `state`, changed or not (`ChangeSet::prior_state` is not
            // used): PostgreSQL decides whether an update can be HOT by comparing the
            // indexed columns' old and new values, not by the SET list, so leaving an
            // unchanged state out (as SQLite does) would gain nothing. The table's
            // fillfactor leaves the room on the page that HOT needs.
            update_instances: client
                .prepare_cached(&format!(
                    "UPDATE instances AS i SET business_key = u.business_key, state = u.state, \
                     variables = u.variables, runtime = u.runtime, version = u.version, ended_at = u.ended_at \
                     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::json[], $6::int8[], \
                     $7::int8[], $8::int8[], $9::text[], $10::text[], $11::int8[]) AS u(id, business_key, state, \
                     variables, runtime, version, ended_at, expected, guard_task, guard_worker, guard_now) \
                     WHERE i.id = u.id AND i.version = u.expected AND {GUARD} \
                     RETURNING i.id"
                ))
                .await?,
            children: Children::prepare(client, filtered).await?,
        })
    }
}

impl Children {
    /// `filtered`: keep only the rows of change sets that won their instance ([`WON`]).
    async fn prepare(
        client: &deadpool_postgres::Client,
        filtered: bool,
    ) -> Result<Self, tokio_postgres::Error> {
        let filter = if filtered { WON } else { "TRUE" };
        Ok(Children {
            delete_tasks: client.prepare_cached(&delete_sql("tasks", filter)).await?,
            insert_tasks: client
                .prepare_cached(&format!(
                    "INSERT INTO tasks (id, instance_id, definition_id, activity_id, name, assignee, \
                     candidate_users, candidate_groups, created_at) \
                     SELECT u.id, u.instance_id, u.definition_id, u.activity_id, u.name, u.assignee, \
                     u.candidate_users, u.candidate_groups, u.created_at \
                     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::jsonb[], $8::jsonb[], $9::int8[], $10::text[]) AS u(id, instance_id, definition_id, \
                     activity_id, name, assignee, candidate_users, candidate_groups, created_at, owner) \
                     WHERE {filter}"
                ))
                .await?,
            delete_external: client.prepare_cached(&delete_sql("external_tasks", filter)).await?,
            upsert_external: client
                .prepare_cached(&format!(
                    "INSERT INTO external_tasks (id, instance_id, definition_id, activity_id, topic, worker_id, \
                     lock_expires_at, retries, error_message, retry_at, created_at) \
                     SELECT u.id, u.instance_id, u.definition_id, u.activity_id, u.topic, u.worker_id, \
                     u.lock_expires_at, u.retries, u.error_message, u.retry_at, u.created_at \
                     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::int8[], $8::int4[], $9::text[], $10::int8[], $11::int8[], $12::text[]) \
                     AS u(id, instance_id, definition_id, activity_id, topic, worker_id, lock_expires_at, \
                     retries, error_message, retry_at, created_at, owner) \
                     WHERE {filter} \
                     ON CONFLICT (id) DO UPDATE SET instance_id = EXCLUDED.instance_id, \
                     definition_id = EXCLUDED.definition_id, activity_id = EXCLUDED.activity_id, \
                     topic = EXCLUDED.topic, worker_id = EXCLUDED.worker_id, \
                     lock_expires_at = EXCLUDED.lock_expires_at, retries = EXCLUDED.retries, \
                     error_message = EXCLUDED.error_message, retry_at = EXCLUDED.retry_at, \
                     created_at = EXCLUDED.created_at \
                     RETURNING id, (xmax = 0) AS inserted"
                ))
                .await?,
            delete_timers: client.prepare_cached(&delete_sql("timers", filter)).await?,
            insert_timers: client
                .prepare_cached(&format!(
                    "INSERT INTO timers (id, instance_id, activity_id, due_at, owner, lock_until, created_at) \
                     SELECT u.id, u.instance_id, u.activity_id, u.due_at, u.lock_owner, u.lock_until, u.created_at \
                     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], \
                     $6::int8[], $7::int8[], $8::text[]) AS u(id, instance_id, activity_id, due_at, lock_owner, \
                     lock_until, created_at, owner) \
                     WHERE {filter}"
                ))
                .await?,
            insert_incidents: client
                .prepare_cached(&format!(
                    "INSERT INTO incidents (id, instance_id, activity_id, incident_type, message, \
                     external_task_id, created_at, resolved_at) \
                     SELECT u.id, u.instance_id, u.activity_id, u.incident_type, u.message, \
                     u.external_task_id, u.created_at, u.resolved_at \
                     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                     $6::text[], $7::int8[], $8::int8[], $9::text[]) AS u(id, instance_id, activity_id, \
                     incident_type, message, external_task_id, created_at, resolved_at, owner) \
                     WHERE {filter}"
                ))
                .await?,
            resolve_incidents: client
                .prepare_cached(&format!(
                    "UPDATE incidents AS t SET resolved_at = u.at \
                     FROM UNNEST($1::text[], $2::text[], $3::int8[]) AS u(id, owner, at) \
                     WHERE t.id = u.id AND {filter} RETURNING {}",
                    prefixed("t", INCIDENT_COLS)
                ))
                .await?,
            // One row per change set; the events are the journal's `append` image too.
            insert_history: client
                .prepare_cached(&format!(
                    "INSERT INTO history (instance_id, time, events) \
                     SELECT u.owner, u.time, u.events \
                     FROM UNNEST($1::text[], $2::int8[], $3::jsonb[]) AS u(owner, time, events) \
                     WHERE {filter}"
                ))
                .await?,
        })
    }
}
