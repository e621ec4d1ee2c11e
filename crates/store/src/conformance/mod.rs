//! The one conformance suite every [`Store`] must pass.
//!
//! Each case takes a fresh, empty, migrated store and panics with a message naming the
//! broken rule. A backend's test file expands the suite into one `#[tokio::test]` per
//! case with [`conformance_tests!`](crate::conformance_tests), giving it a constructor
//! of fresh stores:
//!
//! ```ignore
//! use steadyflow_store::conformance::Fresh;
//!
//! /// `None` skips the case (a service that is not there; say so on stderr).
//! async fn fresh() -> Option<Fresh> {
//!     let dir = tempfile::tempdir().unwrap();
//!     let store = MyStore::open(dir.path().join("db")).unwrap();
//!     // The cleanup runs after the case passed; it is dropped (so `dir` too) if it failed.
//!     Some(Fresh::new(store).cleanup(async move { drop(dir) }))
//! }
//!
//! steadyflow_store::conformance_tests!(fresh);
//! ```
//!
//! The tests land in a module `conformance` of the test file, one per case, named after
//! it: `cargo test -p steadyflow-store-sqlite conformance::journal_rows` runs one, and a
//! failing case no longer hides the others. The macro needs `tokio` (with `macros` and
//! `rt-multi-thread`) among the test crate's dependencies.
//!
//! Cases spawn Tokio tasks (concurrent workers), so they run on a multi-threaded
//! runtime. Journal reads poll for a bounded time ([`poll`]): a store may hold rows back
//! while some older transaction is still in flight (PostgreSQL), but must show them
//! once nothing older is pending.
//!
//! The cases live by area: [`definitions`], [`apply`], [`listing`], [`paging`], [`external_tasks`],
//! [`timers`], [`incidents_history`], [`journal`]; their builders in [`fixtures`].
//!
//! A second list, [`recovery`], checks what backup and restore need of a backend
//! ([`crate::recovery`]): exports, journal ranges, pruning and the restore staging. Its
//! cases run on a [`RecoveryBackend`] (a source database and a restore target) from
//! [`recovery_conformance_tests!`](crate::recovery_conformance_tests):
//!
//! ```ignore
//! async fn fresh_recovery() -> Option<Fresh<Arc<dyn RecoveryBackend>>> {
//!     let dir = tempfile::tempdir().unwrap();
//!     let backend = MyRecovery::new(dir.path()); // implements RecoveryBackend
//!     Some(Fresh::recovery(backend).cleanup(async move { drop(dir) }))
//! }
//!
//! steadyflow_store::recovery_conformance_tests!(fresh_recovery);
//! ```
//!
//! Those tests land in a module `recovery`: `cargo test -p steadyflow-store-pg recovery::`.
//!
//! Only compiled with the `conformance` feature, which test crates enable in their
//! dev-dependencies.

// Test support, compiled only for tests (the `conformance` feature), where clippy.toml's
// test exemption does not reach: a failed `expect` is a failed case, with its message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a failed expect is a failed case"
)]

pub mod apply;
pub mod definitions;
pub mod external_tasks;
pub mod fixtures;
pub mod gauges;
pub mod idempotency;
pub mod incidents_history;
pub mod journal;
pub mod listing;
pub mod paging;
pub mod poll;
pub mod recovery;
pub mod timers;
pub mod users;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::recovery::{Exporter, Staging};
use crate::{Result, Store};

pub type CaseFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
/// One case: runs on a fresh store, panics when the store breaks a rule.
pub type Case = fn(Arc<dyn Store>) -> CaseFuture;

/// What one recovery case works on: a source database, written through its [`Store`]
/// and read by an [`Exporter`], and a restore target on the same backend that starts
/// out empty (never written; a PostgreSQL target may exist without tables).
#[async_trait::async_trait]
pub trait RecoveryBackend: Send + Sync {
    /// The store on the source database (the same one on every call).
    fn source(&self) -> Arc<dyn Store>;
    /// An exporter of the source database.
    fn exporter(&self) -> Box<dyn Exporter>;
    /// A new restore staging for the target (replacing one left behind).
    async fn stage(&self) -> Result<Box<dyn Staging>>;
    /// Whether staging data for the target exists (a side file or database).
    async fn staging_exists(&self) -> bool;
    /// An exporter of the target database, to read back what a restore put there.
    fn target_exporter(&self) -> Box<dyn Exporter>;
    /// Opens a store on the target (migrating it when it has no tables yet).
    async fn open_target(&self) -> Arc<dyn Store>;
    /// Closes a store from [`open_target`](Self::open_target) (given its last handle)
    /// and returns once nothing of it uses the target any more: a promote refuses a
    /// target in use.
    async fn close_target(&self, store: Arc<dyn Store>);
}

/// What a case runs on (a fresh store, or a [`RecoveryBackend`]), and what to do once
/// the case passed.
pub struct Fresh<H = Arc<dyn Store>> {
    handle: H,
    cleanup: Option<CaseFuture>,
}

impl Fresh {
    pub fn new(store: impl Store) -> Self {
        Fresh::shared(Arc::new(store))
    }

    pub fn shared(store: Arc<dyn Store>) -> Self {
        Fresh {
            handle: store,
            cleanup: None,
        }
    }
}

impl Fresh<Arc<dyn RecoveryBackend>> {
    pub fn recovery(backend: impl RecoveryBackend + 'static) -> Self {
        Fresh {
            handle: Arc::new(backend),
            cleanup: None,
        }
    }
}

impl<H> Fresh<H> {
    /// Runs `cleanup` after the case passed, once the store is dropped (dropping a
    /// test database, say). If the case panics, `cleanup` is dropped unpolled while
    /// unwinding: whatever it owns must clean up in its `Drop` too.
    pub fn cleanup(mut self, cleanup: impl Future<Output = ()> + Send + 'static) -> Self {
        self.cleanup = Some(Box::pin(cleanup));
        self
    }
}

/// Runs `case` on what `fresh` makes; nothing when it makes nothing (skipped).
pub async fn run<H>(fresh: impl Future<Output = Option<Fresh<H>>>, case: fn(H) -> CaseFuture) {
    let Some(Fresh { handle, cleanup }) = fresh.await else {
        return;
    };
    case(handle).await;
    if let Some(cleanup) = cleanup {
        cleanup.await;
    }
}

crate::conformance_tests!(@list [table]);

/// Expands to one `#[tokio::test]` per conformance case, in a module `conformance`,
/// each running its case on a store from `$fresh` (an `async fn() -> Option<Fresh>` in
/// scope of the invoking file; `None` skips). See [`conformance`](crate::conformance).
#[macro_export]
macro_rules! conformance_tests {
    ($fresh:path) => {
        $crate::conformance_tests!(@list [tests $fresh]);
    };

    // The one list of cases, handed to one of the arms below.
    (@list [$($how:tt)*]) => {
        $crate::conformance_tests!(@$($how)*;
            definitions::ping,
            definitions::deploy_versions,
            apply::apply_insert_reads_back,
            apply::apply_update_replaces_and_removes,
            apply::apply_stale_version_changes_nothing,
            apply::apply_external_upsert_replaces,
            apply::apply_lock_guard,
            apply::apply_duplicate_id_changes_nothing,
            listing::list_instances_filters,
            listing::list_tasks_filters,
            listing::claim_task_rules,
            paging::paging_instances_while_rows_are_inserted,
            paging::paging_tasks_externals_and_incidents,
            paging::paging_definitions_by_key_and_version,
            paging::paging_history_while_it_grows,
            external_tasks::fetch_and_lock_selection,
            external_tasks::fetch_and_lock_lock_expiry,
            external_tasks::fetch_and_lock_retries_and_backoff,
            external_tasks::fetch_and_lock_concurrent_workers,
            timers::timers_acquire_and_next_due,
            incidents_history::incidents_created_and_resolved,
            incidents_history::history_insertion_order,
            journal::journal_rows,
            journal::journal_limit_and_failed_apply,
            users::plain_rows_round_trip,
            users::plain_watch_moves_with_every_write,
            users::system_mode_round_trip,
            gauges::live_counts_count_work_in_progress,
        );
    };

    (@tests $fresh:path; $($area:ident :: $case:ident),+ $(,)?) => {
        mod conformance {
            #[allow(
                unused_imports,
                reason = "`$fresh` may be a full path, which leaves the glob unused"
            )]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    $crate::conformance::run($fresh(), |store| {
                        ::std::boxed::Box::pin($crate::conformance::$area::$case(store))
                    })
                    .await;
                }
            )+
        }
    };

    (@table; $($area:ident :: $case:ident),+ $(,)?) => {
        /// `(name, case)` of every case, for runners that loop over them.
        pub const CASES: &[(&str, Case)] = &[
            $((stringify!($case), |store| ::std::boxed::Box::pin($area::$case(store)))),+
        ];
    };
}

/// Expands to one `#[tokio::test]` per [`recovery`](crate::conformance::recovery) case, in a module `recovery`, each
/// running its case on a backend from `$fresh` (an `async fn() -> Option<Fresh<Arc<dyn
/// RecoveryBackend>>>` in scope of the invoking file; `None` skips). See
/// [`RecoveryBackend`](crate::conformance::RecoveryBackend).
#[macro_export]
macro_rules! recovery_conformance_tests {
    ($fresh:path) => {
        $crate::recovery_conformance_tests!(@tests $fresh;
            exports::export_announces_every_table,
            exports::export_imports_with_equal_digests,
            exports::export_is_consistent_under_concurrent_writes,
            exports::export_journal_ranges_resume_without_gaps,
            exports::prune_journal_deletes_exactly_up_to,
            staging::replay_reproduces_the_later_export,
            staging::lookup_finds_rows_by_key,
            staging::discard_leaves_the_target_untouched,
            staging::promote_makes_the_data_readable,
        );
    };

    (@tests $fresh:path; $($area:ident :: $case:ident),+ $(,)?) => {
        mod recovery {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    $crate::conformance::run($fresh(), |backend| {
                        ::std::boxed::Box::pin($crate::conformance::recovery::$area::$case(backend))
                    })
                    .await;
                }
            )+
        }
    };
}
