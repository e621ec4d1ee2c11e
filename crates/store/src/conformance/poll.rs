//! Bounded polling, and lookups in journal rows.
//!
//! A store may hold journal rows back while an older transaction is still in flight
//! (PostgreSQL), but must show them once nothing older is pending: readers poll for a
//! bounded time instead of sleeping a fixed one.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::*;

/// How long a poll waits for its condition before it fails the test.
pub const POLL_LIMIT: Duration = Duration::from_secs(10);
/// Pause between two probes.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Calls `probe` until it returns `Some` (then returns that), for [`POLL_LIMIT`] at
/// most; then panics saying what never happened and what the last probe saw.
pub async fn until<T, S, F, Fut>(what: &str, mut probe: F) -> T
where
    S: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, S>>,
{
    let deadline = Instant::now() + POLL_LIMIT;
    loop {
        let last = match probe().await {
            Ok(done) => return done,
            Err(last) => last,
        };
        if Instant::now() > deadline {
            panic!("never saw {what} within {POLL_LIMIT:?}; last probe: {last:#?}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Polls `journal_since(after, 10_000)` until `done` holds of the rows read, and
/// returns them (10 s at most).
pub async fn journal_until(
    store: &dyn Store,
    after: i64,
    what: &str,
    done: impl Fn(&[JournalRecord]) -> bool,
) -> Vec<JournalRecord> {
    until(&format!("{what} in journal_since({after})"), || async {
        let rows = store
            .journal_since(after, 10_000)
            .await
            .expect("journal_since failed");
        if done(&rows) { Ok(rows) } else { Err(rows) }
    })
    .await
}

/// Whether `rows` hold a row `entity`/`id`/`op`.
pub fn has(rows: &[JournalRecord], entity: &str, id: &str, op: &str) -> bool {
    rows.iter().any(|r| is(r, entity, id, op))
}

/// The number of rows of `entity` with operation `op`.
pub fn count(rows: &[JournalRecord], entity: &str, op: &str) -> usize {
    rows.iter()
        .filter(|r| r.entity.as_str() == entity && r.op.as_str() == op)
        .count()
}

/// The one row `entity`/`id`/`op`; panics when there is none or more than one.
pub fn one<'a>(rows: &'a [JournalRecord], entity: &str, id: &str, op: &str) -> &'a JournalRecord {
    let found: Vec<_> = rows.iter().filter(|r| is(r, entity, id, op)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one journal row {entity}/{id}/{op}, got {found:#?}"
    );
    found[0]
}

// `as_str()` on both sides: the same text whether entity and op are strings or enums.
fn is(r: &JournalRecord, entity: &str, id: &str, op: &str) -> bool {
    r.entity.as_str() == entity && r.entity_id == id && r.op.as_str() == op
}
