//! HTTP tests of the API over a real engine and SQLite store, one module per area
//! (one test binary: each binary costs a link on 2 cores).

mod codes;
mod definitions;
mod external;
mod http;
mod support;
mod tasks;
