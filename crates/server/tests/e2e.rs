//! End-to-end tests across crates, in one test binary (one link on 2 cores):
//! the BPMN conformance runner over the shared corpus, the HTTP path against a started
//! `steadyflow serve`, and multi-node behaviour on PostgreSQL.

mod e2e {
    pub mod corpus;
    pub mod driver;
    pub mod runner;
    pub mod services;
}

mod conformance {
    include!("e2e/conformance_tests.rs");
}
