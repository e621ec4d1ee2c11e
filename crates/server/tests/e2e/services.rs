//! Service availability rules shared by the tests.

use std::path::PathBuf;

/// `STEADYFLOW_REQUIRE_SERVICES=1` (as `.ci/run` sets it): a missing service or corpus fails.
pub fn services_required() -> bool {
    std::env::var("STEADYFLOW_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Skips (visibly) or fails, per the rules above.
pub fn missing(what: &str) {
    if services_required() {
        panic!("{what} is required (STEADYFLOW_REQUIRE_SERVICES=1) but is not available");
    }
    eprintln!(
        "NOTICE: {what} is not available; skipping this test (set STEADYFLOW_REQUIRE_SERVICES=1 to make this a failure)"
    );
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}
