//! Instances whose stored state is corrupt: one bad row never stops the node.
//!
//! Restores, imports and manual edits write rows the engine did not write itself. When a
//! command meets an instance whose runtime does not parse, contradicts its definition
//! ([`crate::core::Runtime::check`]), or whose definition cannot be loaded, the engine
//! stops that instance instead of failing (or panicking) on it again and again:
//!
//! * its state becomes `incident`, with an open incident of type [`CORRUPT_STATE`]
//!   naming the reason, and an `incidentCreated` history event. The stored runtime and
//!   variables are left exactly as found, so an operator can repair them;
//! * when the command was firing a timer, that timer's row is removed in the same
//!   change set, so the timer driver does not take it up again (every 5 minutes, once its
//!   lock runs out) while the instance is stopped;
//! * the command fails with [`EngineError::Corrupt`]; every other instance goes on.
//!
//! A stopped instance refuses every command but cancel and the retry of its incident
//! (the next command on it finds the incident and leaves it at that; a timer it fires
//! is removed). Retrying the incident after the repair re-reads the runtime: if it now
//! reads and checks, the incident is resolved and the timers whose rows were removed
//! are armed again, due at once ([`crate::core::Transition::resolve_corrupt_state`]).
//!
//! Not covered: a row the store itself cannot read (`StoreError::Corrupt` from the read)
//! has no instance record to write back; the command fails with that error and a timer
//! of it is taken up again when its lock runs out.

use serde_json::json;
use steadyflow_store::{
    ChangeSet, HistoryEvent, HistoryRecord, IncidentFilter, IncidentRecord, IncidentType,
    InstanceState, StoreError,
};

use super::{Attempt, Engine, Result, Scope};
use crate::core::CoreError;
use crate::error::EngineError;

/// The incident type of an instance stopped for corrupt state.
pub const CORRUPT_STATE: IncidentType = IncidentType::CorruptState;

/// The refusal of a command on an instance that is already stopped.
pub(super) fn still_stopped(instance: &str) -> CoreError {
    CoreError::corrupt(
        instance,
        format!("stopped at a {CORRUPT_STATE} incident: repair its state, then retry the incident"),
    )
}

impl Engine {
    /// Stops instance `instance_id` at a [`CORRUPT_STATE`] incident naming `reason` (once:
    /// an instance already stopped gets no second incident), removing the timer `scope`
    /// was firing. `Err(Corrupt)` once written; `Ok(Lost)` when the instance changed
    /// meanwhile, so the command runs again on fresh state.
    pub(super) async fn stop_corrupt(
        &self,
        instance_id: &str,
        reason: String,
        scope: Scope<'_>,
    ) -> Result<Attempt> {
        self.hot.forget(instance_id);
        // The failed attempt consumed its record: read it again (a rare path).
        let inst = self
            .store
            .instance(instance_id)
            .await?
            .ok_or_else(|| EngineError::not_found("process instance", instance_id))?;
        if inst.state.is_ended() {
            return Err(EngineError::InstanceEnded { instance: inst.id });
        }
        let filter = IncidentFilter {
            instance_id: Some(instance_id.to_string()),
            open: Some(true),
            ..Default::default()
        };
        let stopped = self
            .store
            .list_incidents(&filter)
            .await?
            .iter()
            .any(|i| i.incident_type == CORRUPT_STATE);
        let corrupt = EngineError::Corrupt {
            instance: instance_id.to_string(),
            reason: reason.clone(),
        };
        if stopped && scope.timer.is_none() {
            tracing::debug!(instance = %instance_id, %reason, "command on a stopped instance refused");
            return Err(corrupt);
        }

        let now = self.now();
        let mut next = inst.clone();
        next.state = InstanceState::Incident;
        next.version += 1;
        let mut cs = ChangeSet::new(next, Some(inst.version), now);
        cs.prior_state = Some(inst.state);
        if !stopped {
            tracing::error!(instance = %instance_id, %reason, "corrupt instance state: stopping the instance at an incident");
            let activity = scope.activity.unwrap_or_default();
            let message = format!("corrupt state: {reason}");
            let incident_id = crate::core::new_id();
            cs.history.push(HistoryRecord {
                instance_id: inst.id.clone(),
                time: now,
                event: HistoryEvent::IncidentCreated,
                activity_id: scope.activity.map(str::to_string),
                detail: json!({ "incidentId": incident_id, "type": CORRUPT_STATE.as_str(), "message": message }),
            });
            cs.incidents_created.push(IncidentRecord {
                id: incident_id,
                instance_id: inst.id.clone(),
                activity_id: activity.to_string(),
                incident_type: CORRUPT_STATE,
                message,
                external_task_id: None,
                created_at: now,
                resolved_at: None,
            });
        }
        if let Some(timer) = scope.timer {
            cs.timers_removed.push(timer.to_string());
        }
        crate::actor::stamp(&mut cs);
        match self.commit(cs).await {
            Ok(()) => Err(corrupt),
            Err(StoreError::Conflict(_)) => Ok(Attempt::Lost),
            Err(e) => Err(e.into()),
        }
    }
}
