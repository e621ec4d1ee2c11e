//! Counters of the writer tasks, for metrics and benchmarks.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub transactions: AtomicU64,
    pub committed: AtomicU64,
    pub conflicts: AtomicU64,
    pub retried_alone: AtomicU64,
}

/// Snapshot of the `apply` writer's counters since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions attempted (committed or not).
    pub transactions: u64,
    /// Change sets committed.
    pub committed: u64,
    /// Change sets answered with `Conflict`.
    pub conflicts: u64,
    /// Change sets retried alone after their batch was rejected.
    pub retried_alone: u64,
}

impl Counters {
    pub fn snapshot(&self) -> WriterStats {
        WriterStats {
            transactions: self.transactions.load(Ordering::Relaxed),
            committed: self.committed.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
            retried_alone: self.retried_alone.load(Ordering::Relaxed),
        }
    }
}
