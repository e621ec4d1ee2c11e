//! What a deployment tunes in the engine itself (the `engine` section of the server's
//! configuration); everything else the engine does follows from the model.

use std::time::Duration;

/// Settings of an [`Engine`](crate::Engine), given at construction
/// ([`Engine::with_options`](crate::Engine::with_options)); [`Engine::new`](crate::Engine::new)
/// takes the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// How long a node holds the timers it took on: should it die while firing them,
    /// another node takes them up only after this. Longer than the slowest firing, short
    /// enough that a dead node's timers are not late by much. Capped at 30 days.
    pub timer_lock: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            timer_lock: Duration::from_secs(5 * 60),
        }
    }
}
