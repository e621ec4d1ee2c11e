//! Batched primary-key lookups: the reads on the hot path of completing external tasks.
//!
//! Each completion reads its task with the task's instance, and every command retried
//! after a lost optimistic lock reads its instance again: a few thousand lookups per
//! second, each of which would otherwise cost a whole statement execution on the server
//! for one row. Callers queue their lookup instead; a batcher task takes whatever is
//! queued and answers it with one `= ANY($1)` query per kind, pipelined on a shared
//! connection (see `shared.rs`). With nothing else queued a lookup goes out at once;
//! under load, lookups queue up while earlier batches are in flight, like the group
//! commit of `apply/`. The query starts after the lookup was queued, so a caller sees
//! everything committed before it asked.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use deadpool_postgres::Pool;
use steadyflow_store::schema::{EXTERNAL_COL_COUNT, EXTERNAL_COLS, INSTANCE_COLS, prefixed};
use steadyflow_store::*;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_postgres::Row;

use crate::error::{db_err, pool_err};
use crate::rows;
use crate::shared::SharedReaders;

/// Most lookups answered by one batch.
const MAX_BATCH: usize = 256;
/// Batches in flight at once; more lookups wait and join the next batch.
const IN_FLIGHT: usize = 2;

static INSTANCES: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {INSTANCE_COLS} FROM instances WHERE id = ANY($1::text[])"));

/// `external_tasks` columns, then `instances` columns, of each task and its instance.
static EXTERNAL_WITH_INSTANCE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {}, {} FROM external_tasks AS e JOIN instances AS i ON i.id = e.instance_id \
         WHERE e.id = ANY($1::text[])",
        prefixed("e", EXTERNAL_COLS),
        prefixed("i", INSTANCE_COLS)
    )
});

type Reply<T> = oneshot::Sender<Result<Option<T>>>;

enum Lookup {
    Instance(String, Reply<InstanceRecord>),
    ExternalWithInstance(String, Reply<(ExternalTaskRecord, InstanceRecord)>),
}

#[derive(Clone)]
pub(crate) struct Lookups {
    tx: mpsc::UnboundedSender<Lookup>,
}

impl Lookups {
    /// Starts the batcher on the current Tokio runtime; it stops when every clone of the
    /// returned handle is dropped.
    pub fn spawn(readers: Arc<SharedReaders>, pool: Pool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(batcher(rx, readers, pool));
        Lookups { tx }
    }

    pub async fn instance(&self, id: &str) -> Result<Option<InstanceRecord>> {
        let (reply, answer) = oneshot::channel();
        self.send(Lookup::Instance(id.to_string(), reply))?;
        answer.await.map_err(|_| stopped())?
    }

    pub async fn external_with_instance(
        &self,
        id: &str,
    ) -> Result<Option<(ExternalTaskRecord, InstanceRecord)>> {
        let (reply, answer) = oneshot::channel();
        self.send(Lookup::ExternalWithInstance(id.to_string(), reply))?;
        answer.await.map_err(|_| stopped())?
    }

    fn send(&self, lookup: Lookup) -> Result<()> {
        self.tx.send(lookup).map_err(|_| stopped())
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("PostgreSQL lookup batcher stopped".into())
}

async fn batcher(mut rx: mpsc::UnboundedReceiver<Lookup>, readers: Arc<SharedReaders>, pool: Pool) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(l) => batch.push(l),
                Err(_) => break,
            }
        }
        let (readers, pool) = (readers.clone(), pool.clone());
        tokio::spawn(async move {
            answer(batch, &readers, &pool).await;
            drop(permit);
        });
    }
}

/// Runs the batch's queries and answers every lookup in it.
async fn answer(batch: Vec<Lookup>, readers: &SharedReaders, pool: &Pool) {
    let mut instances: HashMap<String, Vec<Reply<InstanceRecord>>> = HashMap::new();
    let mut externals: HashMap<String, Vec<Reply<(ExternalTaskRecord, InstanceRecord)>>> =
        HashMap::new();
    for lookup in batch {
        match lookup {
            Lookup::Instance(id, reply) => instances.entry(id).or_default().push(reply),
            Lookup::ExternalWithInstance(id, reply) => externals.entry(id).or_default().push(reply),
        }
    }
    let instance_ids: Vec<&str> = instances.keys().map(String::as_str).collect();
    let external_ids: Vec<&str> = externals.keys().map(String::as_str).collect();
    let (found_instances, found_externals) =
        match query(readers, pool, &instance_ids, &external_ids).await {
            Ok(found) => found,
            Err(e) => {
                for reply in instances.into_values().flatten() {
                    let _ = reply.send(Err(e.clone()));
                }
                for reply in externals.into_values().flatten() {
                    let _ = reply.send(Err(e.clone()));
                }
                return;
            }
        };
    let mut by_id = HashMap::new();
    for row in &found_instances {
        let record = rows::instance(row);
        by_id.insert(rows::get::<String>(row, 0).unwrap_or_default(), record);
    }
    for (id, replies) in instances {
        respond(replies, by_id.remove(&id));
    }
    let mut by_id = HashMap::new();
    for row in &found_externals {
        let record = rows::external(row).and_then(|task| {
            rows::instance_at(row, EXTERNAL_COL_COUNT).map(|instance| (task, instance))
        });
        by_id.insert(rows::get::<String>(row, 0).unwrap_or_default(), record);
    }
    for (id, replies) in externals {
        respond(replies, by_id.remove(&id));
    }
}

/// Sends each waiting caller the record found for its id (or none).
fn respond<T: Clone>(replies: Vec<Reply<T>>, found: Option<Result<T>>) {
    let found = found.transpose();
    for reply in replies {
        let _ = reply.send(found.clone());
    }
}

/// Both queries, pipelined on one connection (either may have no ids).
async fn query(
    readers: &SharedReaders,
    pool: &Pool,
    instance_ids: &[&str],
    external_ids: &[&str],
) -> Result<(Vec<Row>, Vec<Row>)> {
    let shared;
    let pooled;
    let client: &deadpool_postgres::Client = match readers.client().await {
        Some(found) => {
            shared = found?;
            &shared
        }
        None => {
            pooled = pool.get().await.map_err(pool_err)?;
            &pooled
        }
    };
    let (instances, externals) = tokio::join!(
        select_any(client, &INSTANCES, instance_ids),
        select_any(client, &EXTERNAL_WITH_INSTANCE, external_ids)
    );
    Ok((instances?, externals?))
}

async fn select_any(
    client: &deadpool_postgres::Client,
    sql: &str,
    ids: &[&str],
) -> Result<Vec<Row>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = client.prepare_cached(sql).await.map_err(db_err)?;
    client.query(&stmt, &[&ids]).await.map_err(db_err)
}
