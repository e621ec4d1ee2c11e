//! What a node reports as gauges about the whole database (`/metrics`), and the names of
//! the series both store backends record about their writers.
//!
//! The counts are exact but not free (an index scan each), so the API computes them at
//! most once per its refresh interval, never per scrape.

/// Rows that stand for work in progress, over the whole database (every node's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveCounts {
    /// Instances not ended: `active`, or stopped at an incident.
    pub running_instances: u64,
    /// User tasks waiting to be completed.
    pub open_tasks: u64,
    /// External tasks waiting for, or locked by, a worker.
    pub open_external_tasks: u64,
}

/// The query counting [`LiveCounts`] on both SQL backends: three index or table counts in
/// one round trip (`instances_state` serves the first).
pub const LIVE_COUNTS_SQL: &str = "SELECT \
     (SELECT count(*) FROM instances WHERE state IN ('active', 'incident')), \
     (SELECT count(*) FROM tasks), \
     (SELECT count(*) FROM external_tasks)";

/// Histogram: change sets committed per writer transaction; label `backend`.
pub const BATCH_SIZE: &str = "steadyflow_store_batch_size";
/// Histogram: seconds one writer transaction took, from its first statement to its
/// commit (retries included); label `backend`.
pub const COMMIT_SECONDS: &str = "steadyflow_store_commit_seconds";
/// Histogram: seconds the SQLite syncer took to flush the write-ahead log to disk
/// (one flush covers every batch committed since the last).
pub const WAL_SYNC_SECONDS: &str = "steadyflow_store_wal_sync_seconds";

/// Registers the help texts of the series above with the installed recorder.
pub fn describe_metrics() {
    metrics::describe_histogram!(
        BATCH_SIZE,
        "Change sets committed per writer transaction (group commit), by backend"
    );
    metrics::describe_histogram!(
        COMMIT_SECONDS,
        metrics::Unit::Seconds,
        "Duration of one writer transaction, from its first statement to its commit, by backend"
    );
    metrics::describe_histogram!(
        WAL_SYNC_SECONDS,
        metrics::Unit::Seconds,
        "Duration of one flush of the SQLite write-ahead log to disk"
    );
}

/// Records one committed batch of `size` change sets that took `elapsed`.
pub fn record_batch(backend: &'static str, size: usize, elapsed: std::time::Duration) {
    metrics::histogram!(BATCH_SIZE, "backend" => backend).record(size as f64);
    metrics::histogram!(COMMIT_SECONDS, "backend" => backend).record(elapsed.as_secs_f64());
}
