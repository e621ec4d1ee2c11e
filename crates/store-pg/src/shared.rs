//! Shared connections for primary-key lookups.
//!
//! tokio-postgres pipelines the queries of concurrent callers on one connection: their
//! requests go out together and the server answers them in order. The hot path's reads
//! (an external task with its instance, an instance) therefore go to a few shared
//! connections instead of taking a pooled connection each: fewer system calls and
//! wake-ups on both sides, fewer busy server processes competing for the CPU. Only
//! single autocommit statements run there, never a transaction.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::{Object, Pool};
use steadyflow_store::Result;

use crate::error::pool_err;

pub(crate) struct SharedReaders {
    /// Where the shared connections come from; a broken one is replaced from here.
    pool: Pool,
    slots: Vec<Mutex<Option<Arc<Object>>>>,
    next: AtomicUsize,
}

impl SharedReaders {
    /// `pool` should allow twice `n` connections: a replaced connection goes back only
    /// once its last in-flight query ends.
    pub fn new(pool: Pool, n: usize) -> Self {
        SharedReaders {
            pool,
            slots: (0..n).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next shared connection, round robin; `None` when there are none.
    pub async fn client(&self) -> Option<Result<Arc<Object>>> {
        if self.slots.is_empty() {
            return None;
        }
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        if let Some(c) = Self::live(slot) {
            return Some(Ok(c));
        }
        let fresh = match self.pool.get().await {
            Ok(c) => Arc::new(c),
            Err(e) => return Some(Err(pool_err(e))),
        };
        // Another caller may have reconnected meanwhile; then `fresh` goes back.
        if let Some(c) = Self::live(slot) {
            return Some(Ok(c));
        }
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh.clone());
        Some(Ok(fresh))
    }

    fn live(slot: &Mutex<Option<Arc<Object>>>) -> Option<Arc<Object>> {
        slot.lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|c| !c.is_closed())
            .cloned()
    }
}
