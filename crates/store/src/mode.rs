//! The service mode: one plain row ([`crate::users::PlainRecord`]) that every node
//! sharing the database follows. Written whole and journaled like users and tokens, so
//! backups and point-in-time restores carry it and the journal says who changed it.

use serde::{Deserialize, Serialize};

use crate::records::closed_set;
use crate::users::PlainRecord;
use crate::{JournalEntity, Timestamp};

closed_set! {
    /// What a node serves (see the API's mode gate for what each one refuses).
    pub enum Mode {
        /// Everything.
        Normal = "normal",
        /// Reads only; writes answer 503 `read_only`, timers and workers wait.
        ReadOnly = "read-only",
        /// The engine's essential work only: deployments, bulk listings, reports and
        /// notifications answer 503 `core_only`.
        CoreOnly = "core-only",
        /// A status page; reads answer 503 `offline`.
        Offline = "offline",
    }
}

/// The key of the one row of `system_mode`.
pub const SYSTEM_MODE_KEY: &str = "current";

/// The mode as stored (table `system_mode`, one row keyed [`SYSTEM_MODE_KEY`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemModeRecord {
    pub id: String,
    pub mode: Mode,
    /// Why, as shown to clients (the message of a refused request, the status page).
    pub reason: Option<String>,
    /// When the mode ends by itself (back to `normal`); `None`: until changed.
    #[serde(with = "chrono::serde::ts_milliseconds_option")]
    pub until: Option<Timestamp>,
    /// Who set it: a user's name, `cli:<os user>`, or `auto` (the node itself).
    pub set_by: String,
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub set_at: Timestamp,
}

impl SystemModeRecord {
    /// A record of `mode` set by `set_by` at `set_at`.
    pub fn new(
        mode: Mode,
        reason: Option<String>,
        until: Option<Timestamp>,
        set_by: impl Into<String>,
        set_at: Timestamp,
    ) -> Self {
        SystemModeRecord {
            id: SYSTEM_MODE_KEY.to_string(),
            mode,
            reason,
            until,
            set_by: set_by.into(),
            set_at,
        }
    }

    /// What holds at `now`: this record, or `normal` once its `until` has passed (then
    /// `expired` is true; the record keeps who set the mode that ran out).
    pub fn effective(&self, now: Timestamp) -> (Mode, bool) {
        match self.until {
            Some(until) if until <= now && self.mode != Mode::Normal => (Mode::Normal, true),
            _ => (self.mode, false),
        }
    }
}

impl PlainRecord for SystemModeRecord {
    const ENTITY: JournalEntity = JournalEntity::SystemMode;
    fn key(&self) -> &str {
        &self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mode_with_until_returns_to_normal_by_itself() {
        let t = |ms| chrono::DateTime::from_timestamp_millis(ms).unwrap();
        let r = SystemModeRecord::new(Mode::ReadOnly, None, Some(t(2_000)), "ann", t(1_000));
        assert_eq!(r.effective(t(1_999)), (Mode::ReadOnly, false));
        assert_eq!(r.effective(t(2_000)), (Mode::Normal, true));
        let forever = SystemModeRecord::new(Mode::Offline, None, None, "ann", t(1_000));
        assert_eq!(
            forever.effective(t(i64::from(u32::MAX))),
            (Mode::Offline, false)
        );
    }

    #[test]
    fn modes_read_as_operators_write_them() {
        assert_eq!(Mode::parse("read-only"), Some(Mode::ReadOnly));
        assert_eq!(Mode::parse("core-only"), Some(Mode::CoreOnly));
        assert_eq!(Mode::parse("readonly"), None);
    }
}
