//! HTTP tests of the API over a real engine and SQLite store, one module per area
//! (one test binary: each binary costs a link on 2 cores).

// A test crate: its helpers outside `#[test]` functions may unwrap too (clippy.toml
// exempts only test functions and `#[cfg(test)]` modules).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed unwrap is a failed test"
)]

mod authz;
mod backups;
mod codes;
mod definitions;
mod docs;
mod external;
mod http;
mod idempotency;
mod modes;
mod paging;
mod support;
mod tasks;
