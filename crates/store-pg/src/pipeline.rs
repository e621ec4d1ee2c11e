//! Pipelined transactions.
//!
//! tokio-postgres sends a request when its future is first polled and matches responses
//! in order, so polling several prepared-statement futures together puts them on the
//! wire back to back. A write transaction here costs two round trips whatever its size:
//! `BEGIN` + every statement, then the journal insert + `COMMIT`.
//!
//! If a statement fails, the server answers every later one of the transaction with
//! "current transaction is aborted", and a `COMMIT` of an aborted transaction rolls it
//! back; the first error is the one reported.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use steadyflow_store::journal::JournalEntry;
use steadyflow_store::{Result, StoreError};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use crate::error::db_err;

pub(crate) type Param<'a> = &'a (dyn ToSql + Sync);

/// Planner settings of every connection (startup options): the hot path (primary-key
/// lookups, the group commit's statements, which join `UNNEST` arrays to tables by
/// primary key, and fetch-and-lock) runs on generic plans cached per connection, planned
/// once instead of at every execution; and those plans are nested loops and index scans
/// whatever the table sizes were when they were made (a generic plan made while a table
/// was small would otherwise stay a sequential scan: without autovacuum's ANALYZE nothing
/// invalidates it).
pub(crate) const SESSION_OPTIONS: &str = "-c plan_cache_mode=force_generic_plan \
     -c enable_seqscan=off -c enable_hashjoin=off -c enable_mergejoin=off";

macro_rules! custom_plans {
    () => {
        "SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL enable_seqscan = on; \
         SET LOCAL enable_hashjoin = on; SET LOCAL enable_mergejoin = on"
    };
}

/// Switches the current transaction to the usual planner: custom plans for the actual
/// parameters, all plan types. For everything off the hot path (listings with filters,
/// claims, timers, deploys) whose best plan may depend on the parameters.
pub(crate) const CUSTOM_PLANS: &str = custom_plans!();

/// Starts a transaction with [`CUSTOM_PLANS`].
pub(crate) const BEGIN_CUSTOM_PLANS: &str = concat!("BEGIN; ", custom_plans!());

/// Starts a listing's transaction: [`CUSTOM_PLANS`] without sorts. A page of a listing
/// (`WHERE … ORDER BY key LIMIT n`) is read by walking the key's index and stopping at
/// the page's end. With sorts allowed, a filter whose selectivity the planner cannot
/// estimate (JSONB containment on candidate groups: 0.6 % assumed, every task matched)
/// made it scan and sort the whole table for every page: 30 ms a page at 4,000 tasks,
/// against 0.1 ms for the walk. A filter that matches little walks much of the index,
/// as a scan would have read the whole table.
pub(crate) const BEGIN_LISTING: &str =
    concat!("BEGIN; ", custom_plans!(), "; SET LOCAL enable_sort = off");

/// Starts a transaction with the session's planner settings ([`SESSION_OPTIONS`]).
pub(crate) const BEGIN: &str = "BEGIN";

/// One request of a pipeline.
pub(crate) enum Step<'a> {
    /// Simple-protocol command without rows (`BEGIN`, `COMMIT`, `ROLLBACK`).
    Simple(&'static str),
    /// Prepared statement with its parameters.
    Query(Statement, Vec<Param<'a>>),
}

type StepFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a>>;

/// Sends all steps back to back and waits for all answers, in order.
pub(crate) async fn run<'a>(
    client: &'a Client,
    steps: &'a [Step<'a>],
) -> Vec<Result<Vec<Row>, tokio_postgres::Error>> {
    let futures: Vec<StepFuture<'a>> = steps
        .iter()
        .map(|step| -> StepFuture<'a> {
            match step {
                Step::Simple(sql) => {
                    Box::pin(async move { client.batch_execute(sql).await.map(|()| Vec::new()) })
                }
                Step::Query(stmt, params) => Box::pin(client.query(stmt, params)),
            }
        })
        .collect();
    join_in_order(futures).await
}

/// Polls every future, always in list order, until all are done. The first poll of each
/// happens in order, which is what keeps the pipeline's requests in order.
#[allow(
    clippy::expect_used,
    reason = "the `poll_fn` is ready only once no future is pending, so every slot is filled"
)]
async fn join_in_order<T>(
    mut futures: Vec<Pin<Box<dyn Future<Output = T> + Send + '_>>>,
) -> Vec<T> {
    let mut out: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, fut) in out.iter_mut().zip(futures.iter_mut()) {
            if slot.is_none() {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|v| v.expect("every future completed"))
        .collect()
}

/// Appends a transaction's journal rows; at most once per transaction, with fewer than
/// [`MAX_JOURNAL_ROWS`] rows (see the `journal` table for the seqs).
pub(crate) const JOURNAL_INSERT: &str = "INSERT INTO journal (seq, tx_time, entity, entity_id, op, row) \
     SELECT (SELECT pg_current_xact_id()::text::bigint << 20) + u.n, $1, u.entity, u.entity_id, u.op, u.row \
     FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS u(entity, entity_id, op, row, n)";

/// Journal rows one transaction may write: the low 20 bits of a seq number its rows.
pub(crate) const MAX_JOURNAL_ROWS: usize = (1 << 20) - 1;

/// Column arrays of journal entries, borrowed by the insert's parameters.
pub(crate) struct JournalArrays<'a> {
    entity: Vec<&'static str>,
    entity_id: Vec<&'a str>,
    op: Vec<&'static str>,
    row: Vec<Option<&'a str>>,
}

impl<'a> JournalArrays<'a> {
    /// Refuses more rows than one transaction may journal.
    pub fn new(entries: &'a [JournalEntry<'_>]) -> Result<Self> {
        if entries.len() > MAX_JOURNAL_ROWS {
            return Err(StoreError::Backend(format!(
                "{} journal rows in one transaction (at most {MAX_JOURNAL_ROWS})",
                entries.len()
            )));
        }
        Ok(JournalArrays {
            entity: entries.iter().map(|e| e.entity.as_str()).collect(),
            entity_id: entries.iter().map(|e| &*e.entity_id).collect(),
            op: entries.iter().map(|e| e.op.as_str()).collect(),
            row: entries.iter().map(JournalEntry::row_text).collect(),
        })
    }

    pub fn params(&'a self, tx_time: &'a i64) -> Vec<Param<'a>> {
        vec![tx_time, &self.entity, &self.entity_id, &self.op, &self.row]
    }
}

/// How a transaction body ends after its statements ran.
pub(crate) enum Finish<'j, T> {
    Commit(T, Vec<JournalEntry<'j>>),
    Rollback(T),
}

/// Why a transaction did not commit.
pub(crate) enum TxError {
    /// The driver failed: the server rejected a statement (rolled back) or the
    /// connection broke (a commit's outcome may be unknown).
    Db(tokio_postgres::Error),
    /// The body refused the results (rolled back).
    Store(StoreError),
}

impl From<TxError> for StoreError {
    fn from(e: TxError) -> Self {
        match e {
            TxError::Db(e) => db_err(e),
            TxError::Store(e) => e,
        }
    }
}

/// Runs `steps` in one transaction: round trip one sends `begin` ([`BEGIN`] or
/// [`BEGIN_CUSTOM_PLANS`]) and the steps, `finish` turns their rows into a result and
/// journal rows, round trip two appends the journal and commits (or rolls back).
///
/// `journal_stmt` must be the prepared [`JOURNAL_INSERT`].
pub(crate) async fn transact<'j, T>(
    client: &Client,
    begin: &'static str,
    journal_stmt: &Statement,
    tx_time: i64,
    steps: Vec<Step<'_>>,
    finish: impl FnOnce(Vec<Vec<Row>>) -> Result<Finish<'j, T>>,
) -> Result<T, TxError> {
    let mut all = Vec::with_capacity(steps.len() + 1);
    all.push(Step::Simple(begin));
    all.extend(steps);
    let mut rows = Vec::with_capacity(all.len());
    for r in run(client, &all).await {
        match r {
            Ok(v) => rows.push(v),
            Err(e) => {
                rollback(client).await;
                return Err(TxError::Db(e));
            }
        }
    }
    rows.remove(0); // BEGIN
    drop(all);
    match finish(rows) {
        Err(e) => {
            rollback(client).await;
            Err(TxError::Store(e))
        }
        Ok(Finish::Rollback(value)) => {
            rollback(client).await;
            Ok(value)
        }
        Ok(Finish::Commit(value, entries)) => {
            let arrays = match JournalArrays::new(&entries) {
                Ok(arrays) => arrays,
                Err(e) => {
                    rollback(client).await;
                    return Err(TxError::Store(e));
                }
            };
            let mut tail = Vec::with_capacity(2);
            if !entries.is_empty() {
                tail.push(Step::Query(journal_stmt.clone(), arrays.params(&tx_time)));
            }
            tail.push(Step::Simple("COMMIT"));
            for r in run(client, &tail).await {
                if let Err(e) = r {
                    // A failed journal insert aborts the transaction; the COMMIT behind
                    // it then rolls back. Make sure nothing stays open either way.
                    rollback(client).await;
                    return Err(TxError::Db(e));
                }
            }
            Ok(value)
        }
    }
}

/// Best effort: a broken connection is discarded by the pool anyway.
pub(crate) async fn rollback(client: &Client) {
    if !client.is_closed() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
}
