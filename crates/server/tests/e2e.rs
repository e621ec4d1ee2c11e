//! End-to-end tests across crates, in one test binary (one link on 2 cores):
//! the BPMN conformance runner over the shared corpus (in process on SQLite and
//! PostgreSQL, and over HTTP against a started `steadyflow serve`), crash consistency,
//! two engine nodes sharing one PostgreSQL database, two engines whose hot caches go
//! stale under each other, one poisoned row that must not stop a node, and the deploy
//! assets (alert rules, compose file, manifests, playbook, dashboard) checked by their tools.

// A test crate: its helpers outside `#[test]` functions may unwrap too (clippy.toml
// exempts only test functions and `#[cfg(test)]` modules).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed unwrap is a failed test"
)]

mod e2e {
    pub mod backup_support;
    pub mod consistency;
    pub mod corpus;
    pub mod driver;
    pub mod http_driver;
    pub mod moto;
    pub mod runner;
    pub mod server;
    pub mod services;

    mod auth_tests;
    mod backup_alert_tests;
    mod backup_api_tests;
    mod backup_chain_tests;
    mod backup_fault_tests;
    mod backup_remote_tests;
    mod backup_schedule_tests;
    mod backup_ship_tests;
    mod backup_tests;
    mod cluster_tests;
    mod conformance_tests;
    mod corrupt_state_tests;
    mod crash_tests;
    mod deploy_assets_tests;
    mod hot_cache_tests;
    mod metrics_tests;
    mod modes_tests;
    mod openapi_tests;
    mod outage_tests;
    mod recover_script_tests;
    mod redis_cache_tests;
    mod schemathesis_tests;
    mod storage_full_tests;
    mod tls_tests;
    mod tour_tests;
    mod verify_recovery_tests;
}
