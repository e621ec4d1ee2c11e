//! Health of a node's background components (the timer driver today; the backup
//! scheduler and the journal shipper register here too), as `/health` reports it.
//!
//! A component registers once by name and keeps its [`ComponentHealth`] handle; whoever
//! runs it (usually [`crate::supervise`]) marks it up or down. `/health` reads a
//! [`Components::snapshot`]. What a component records here is shown to anyone who can
//! reach `/health`: reasons and errors are short summaries, never driver messages (those
//! belong in the log).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sync::lock;

/// The registry of one node's components. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Components {
    all: Arc<Mutex<Vec<Arc<ComponentHealth>>>>,
}

impl Components {
    pub fn new() -> Self {
        Self::default()
    }

    /// The handle of component `name`, registering it (as down, "not started") on first
    /// use; registering a name again returns the same handle.
    pub fn register(&self, name: &str) -> Arc<ComponentHealth> {
        let mut all = lock(&self.all);
        if let Some(c) = all.iter().find(|c| c.name == name) {
            return c.clone();
        }
        let c = Arc::new(ComponentHealth {
            name: name.to_string(),
            state: Mutex::new(ComponentReport {
                name: name.to_string(),
                up: false,
                reason: Some("not started".into()),
                last_error: None,
                restarts: 0,
                latency: None,
            }),
        });
        all.push(c.clone());
        c
    }

    /// Every registered component's state, by name.
    pub fn snapshot(&self) -> Vec<ComponentReport> {
        let mut out: Vec<ComponentReport> = lock(&self.all).iter().map(|c| c.report()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// One component's state, updated by whoever runs it.
pub struct ComponentHealth {
    name: String,
    state: Mutex<ComponentReport>,
}

/// What `/health` shows of one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentReport {
    pub name: String,
    pub up: bool,
    /// Why it is down (`None` while up).
    pub reason: Option<String>,
    /// The last failure, kept after the component is up again.
    pub last_error: Option<String>,
    /// How often it was restarted after a panic.
    pub restarts: u64,
    /// How long its last completed iteration took (`None` before the first).
    pub latency: Option<Duration>,
}

impl ComponentHealth {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn set_up(&self) {
        let mut s = lock(&self.state);
        s.up = true;
        s.reason = None;
    }

    pub fn set_down(&self, reason: impl Into<String>) {
        let mut s = lock(&self.state);
        s.up = false;
        s.reason = Some(reason.into());
    }

    /// Down because of `error`, which is also kept as the last error.
    pub fn failed(&self, error: impl Into<String>, reason: impl Into<String>) {
        let mut s = lock(&self.state);
        s.up = false;
        s.last_error = Some(error.into());
        s.reason = Some(reason.into());
    }

    /// Records that an iteration completed after `took`.
    pub fn ran(&self, took: Duration) {
        lock(&self.state).latency = Some(took);
    }

    /// Counts a restart after a panic.
    pub fn restarted(&self) {
        lock(&self.state).restarts += 1;
    }

    pub fn report(&self) -> ComponentReport {
        lock(&self.state).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_register_once_and_report_their_state() {
        let all = Components::new();
        let t = all.register("timerDriver");
        assert!(Arc::ptr_eq(&t, &all.register("timerDriver")));
        let b = all.register("backup");
        assert_eq!(t.report().reason.as_deref(), Some("not started"));
        t.set_up();
        assert_eq!(t.report().latency, None);
        t.ran(Duration::from_millis(3));
        assert_eq!(t.report().latency, Some(Duration::from_millis(3)));
        b.failed("disk full", "retrying in 1s");
        b.restarted();
        let snap = all.snapshot();
        assert_eq!(snap.len(), 2);
        assert_eq!(snap[0].name, "backup");
        assert!(!snap[0].up);
        assert_eq!(snap[0].reason.as_deref(), Some("retrying in 1s"));
        assert_eq!(snap[0].last_error.as_deref(), Some("disk full"));
        assert_eq!(snap[0].restarts, 1);
        assert!(snap[1].up && snap[1].reason.is_none());
        b.set_up();
        let b = b.report();
        assert!(b.up && b.reason.is_none());
        assert_eq!(
            b.last_error.as_deref(),
            Some("disk full"),
            "kept after recovery"
        );
    }
}
