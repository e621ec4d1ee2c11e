//! The shared conformance suite on the in-memory store.

// A test crate: its helpers outside `#[test]` functions may unwrap too (clippy.toml
// exempts only test functions and `#[cfg(test)]` modules).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed unwrap is a failed test"
)]

use steadyflow_store::conformance::Fresh;
use steadyflow_store::memory::MemoryStore;

async fn fresh() -> Option<Fresh> {
    Some(Fresh::new(MemoryStore::new()))
}

steadyflow_store::conformance_tests!(fresh);

mod idempotency {
    use std::sync::Arc;

    use steadyflow_store::conformance::idempotency as case;
    use steadyflow_store::idempotency::MemoryKeys;

    #[tokio::test(flavor = "multi_thread")]
    async fn keys_claim_answer_and_takeover() {
        case::keys_claim_answer_and_takeover(Arc::new(MemoryKeys::default())).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_claims_have_one_winner() {
        case::concurrent_claims_have_one_winner(Arc::new(MemoryKeys::default())).await;
    }
}
