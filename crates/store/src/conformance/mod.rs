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
//! The cases live by area: [`definitions`], [`apply`], [`listing`], [`external_tasks`],
//! [`timers`], [`incidents_history`], [`journal`]; their builders in [`fixtures`].
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
pub mod incidents_history;
pub mod journal;
pub mod listing;
pub mod poll;
pub mod timers;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::Store;

pub type CaseFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
/// One case: runs on a fresh store, panics when the store breaks a rule.
pub type Case = fn(Arc<dyn Store>) -> CaseFuture;

/// A fresh store for one case, and what to do once the case passed.
pub struct Fresh {
    store: Arc<dyn Store>,
    cleanup: Option<CaseFuture>,
}

impl Fresh {
    pub fn new(store: impl Store) -> Self {
        Fresh::shared(Arc::new(store))
    }

    pub fn shared(store: Arc<dyn Store>) -> Self {
        Fresh {
            store,
            cleanup: None,
        }
    }

    /// Runs `cleanup` after the case passed, once the store is dropped (dropping a
    /// test database, say). If the case panics, `cleanup` is dropped unpolled while
    /// unwinding: whatever it owns must clean up in its `Drop` too.
    pub fn cleanup(mut self, cleanup: impl Future<Output = ()> + Send + 'static) -> Self {
        self.cleanup = Some(Box::pin(cleanup));
        self
    }
}

/// Runs `case` on the store `fresh` makes; nothing when it makes none (skipped).
pub async fn run(fresh: impl Future<Output = Option<Fresh>>, case: Case) {
    let Some(Fresh { store, cleanup }) = fresh.await else {
        return;
    };
    case(store).await;
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
            external_tasks::fetch_and_lock_selection,
            external_tasks::fetch_and_lock_lock_expiry,
            external_tasks::fetch_and_lock_retries_and_backoff,
            external_tasks::fetch_and_lock_concurrent_workers,
            timers::timers_acquire_and_next_due,
            incidents_history::incidents_created_and_resolved,
            incidents_history::history_insertion_order,
            journal::journal_rows,
            journal::journal_limit_and_failed_apply,
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
