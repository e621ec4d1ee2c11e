//! The shared conformance suite on the in-memory store.

use steadyflow_store::conformance::Fresh;
use steadyflow_store::memory::MemoryStore;

async fn fresh() -> Option<Fresh> {
    Some(Fresh::new(MemoryStore::new()))
}

steadyflow_store::conformance_tests!(fresh);
