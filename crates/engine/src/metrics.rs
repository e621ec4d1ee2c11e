//! The engine's Prometheus series, recorded through the `metrics` facade (whatever
//! recorder the binary installs renders them; without one they cost next to nothing).
//!
//! Counters move only once a change set is committed, so a command that lost its
//! optimistic lock and ran again counts once.

use steadyflow_store::{ChangeSet, IncidentType, InstanceState, Timestamp};

/// Counter: instances started on this node.
pub const INSTANCES_STARTED: &str = "steadyflow_instances_started_total";
/// Counter: instances that reached an end event on this node.
pub const INSTANCES_COMPLETED: &str = "steadyflow_instances_completed_total";
/// Counter: instances cancelled on this node.
pub const INSTANCES_CANCELLED: &str = "steadyflow_instances_cancelled_total";
/// Counter: incidents opened on this node; label `type` (the incident type).
pub const INCIDENTS_OPENED: &str = "steadyflow_incidents_opened_total";
/// Histogram: seconds between a timer's due time and the moment this node took it to fire.
pub const TIMER_LAG_SECONDS: &str = "steadyflow_timer_lag_seconds";

/// Registers the help texts of the series above with the installed recorder, and makes
/// the counters appear at 0 before anything happened (so `rate()` has a start).
pub fn describe_metrics() {
    metrics::describe_counter!(INSTANCES_STARTED, "Process instances started on this node");
    metrics::describe_counter!(
        INSTANCES_COMPLETED,
        "Process instances that completed (reached their end) on this node"
    );
    metrics::describe_counter!(
        INSTANCES_CANCELLED,
        "Process instances cancelled on this node"
    );
    metrics::describe_counter!(
        INCIDENTS_OPENED,
        "Incidents opened on this node, by incident type"
    );
    metrics::describe_histogram!(
        TIMER_LAG_SECONDS,
        metrics::Unit::Seconds,
        "How late timers fire: seconds from a timer's due time until this node took it"
    );
    for name in [INSTANCES_STARTED, INSTANCES_COMPLETED, INSTANCES_CANCELLED] {
        metrics::counter!(name).absolute(0);
    }
    for kind in IncidentType::ALL {
        metrics::counter!(INCIDENTS_OPENED, "type" => kind.as_str()).absolute(0);
    }
}

/// What a change set will count once it is committed.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    started: bool,
    completed: bool,
    cancelled: bool,
    incidents: Vec<&'static str>,
}

impl Outcome {
    pub fn of(cs: &ChangeSet) -> Outcome {
        // Every update carries the state it was made from (a new instance has none).
        let reached = |s: InstanceState| cs.instance.state == s && cs.prior_state != Some(s);
        Outcome {
            started: cs.expected_version.is_none(),
            completed: reached(InstanceState::Completed),
            cancelled: reached(InstanceState::Cancelled),
            incidents: cs
                .incidents_created
                .iter()
                .map(|i| i.incident_type.as_str())
                .collect(),
        }
    }

    /// Counts the committed change set.
    pub fn record(self) {
        if self.started {
            metrics::counter!(INSTANCES_STARTED).increment(1);
        }
        if self.completed {
            metrics::counter!(INSTANCES_COMPLETED).increment(1);
        }
        if self.cancelled {
            metrics::counter!(INSTANCES_CANCELLED).increment(1);
        }
        for kind in self.incidents {
            metrics::counter!(INCIDENTS_OPENED, "type" => kind).increment(1);
        }
    }
}

/// Records how late a timer due at `due` is taken at `now` (0 when early).
pub(crate) fn timer_lag(due: Timestamp, now: Timestamp) {
    let lag = (now - due).num_milliseconds().max(0) as f64 / 1000.0;
    metrics::histogram!(TIMER_LAG_SECONDS).record(lag);
}
