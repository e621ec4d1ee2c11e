//! Timers: firing those that fell due.

use super::{Engine, Result, Scope};
use crate::error::EngineError;

impl Engine {
    /// Fires up to `limit` due timers, earliest first; returns how many it took on
    /// (fired, or found no longer awaited). Each timer is its own command: one that
    /// fails is logged and the others still fire. Taken timers stay locked to this node
    /// for [`EngineOptions::timer_lock`](crate::EngineOptions::timer_lock): a failed
    /// timer (or one of a node that died) is taken up again once that runs out; but one
    /// whose instance turns out corrupt is removed as the instance is stopped at an
    /// incident (see [`super::corrupt`]), so it is not fired again.
    pub async fn fire_due_timers(&self, limit: usize) -> Result<usize> {
        let now = self.now();
        let lock_until = now + self.timer_lock;
        let due = self
            .store
            .acquire_due_timers(&self.node_id, now, lock_until, limit)
            .await?;
        let taken = due.len();
        for t in &due {
            crate::metrics::timer_lag(t.due_at, now);
        }
        for t in due {
            let scope = Scope {
                timer: Some(&t.id),
                ..Scope::at(&t.activity_id)
            };
            let fired = self
                .command(&t.instance_id, scope, |tr| Ok(tr.fire_timer(&t.id)?))
                .await;
            match fired {
                Ok(_) => {}
                Err(EngineError::NotFound { .. } | EngineError::InstanceEnded { .. }) => {
                    tracing::debug!(timer = %t.id, "timer no longer awaited");
                }
                Err(EngineError::Corrupt { instance, reason }) => tracing::warn!(
                    timer = %t.id,
                    %instance,
                    %reason,
                    "timer not fired: its instance has corrupt state and stands at an incident"
                ),
                Err(e) => tracing::warn!(timer = %t.id, error = %e, "firing a timer failed"),
            }
        }
        Ok(taken)
    }

    /// Fires every due timer one at a time, strictly earliest first, including those that
    /// firing makes due (tests and drills that move the clock).
    pub async fn run_due_timers(&self) -> Result<usize> {
        let mut total = 0;
        while self.fire_due_timers(1).await? > 0 {
            total += 1;
        }
        Ok(total)
    }
}
