//! The tables both stores share, as Rust sees them: column lists in the order the row
//! mappers read them, the table behind each journal entity, and how times are stored
//! (whole milliseconds since the Unix epoch, a plain integer on every backend).

use crate::{JournalEntity, Result, StoreError, Timestamp};

pub const DEFINITION_COLS: &str = "id, key, version, name, checksum, deployed_at";
pub const INSTANCE_COLS: &str = "id, definition_id, definition_key, business_key, state, variables, runtime, version, started_at, ended_at";
/// Number of [`INSTANCE_COLS`]: the index of the first column after them.
pub const INSTANCE_COL_COUNT: usize = 10;
pub const TASK_COLS: &str = "id, instance_id, definition_id, activity_id, name, assignee, candidate_users, candidate_groups, created_at";
pub const EXTERNAL_COLS: &str = "id, instance_id, definition_id, activity_id, topic, worker_id, lock_expires_at, retries, error_message, retry_at, created_at";
/// Number of [`EXTERNAL_COLS`]: the index of the first column after them.
pub const EXTERNAL_COL_COUNT: usize = 11;
pub const TIMER_COLS: &str = "id, instance_id, activity_id, due_at, owner, lock_until, created_at";
pub const INCIDENT_COLS: &str = "id, instance_id, activity_id, incident_type, message, external_task_id, created_at, resolved_at";
pub const JOURNAL_COLS: &str = "seq, tx_time, entity, entity_id, op, row";

/// A stored time.
pub fn to_ms(t: Timestamp) -> i64 {
    t.timestamp_millis()
}

/// A time read back; a value no timestamp has is a corrupt row (never a stand-in date).
pub fn from_ms(ms: i64) -> Result<Timestamp> {
    Timestamp::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {ms} ms is out of range")))
}

/// [`from_ms`] of a nullable column.
pub fn from_opt_ms(ms: Option<i64>) -> Result<Option<Timestamp>> {
    ms.map(from_ms).transpose()
}

/// `cols` (a `", "`-separated column list) qualified with a table alias.
pub fn prefixed(alias: &str, cols: &str) -> String {
    cols.split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl JournalEntity {
    /// The table holding this entity's rows.
    pub fn table(self) -> &'static str {
        match self {
            JournalEntity::Definition => "definitions",
            JournalEntity::Instance => "instances",
            JournalEntity::Task => "tasks",
            JournalEntity::ExternalTask => "external_tasks",
            JournalEntity::Timer => "timers",
            JournalEntity::Incident => "incidents",
            JournalEntity::History => "history",
            JournalEntity::User => "users",
            JournalEntity::ApiToken => "api_tokens",
            JournalEntity::SystemMode => "system_mode",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_counts_match_their_lists() {
        assert_eq!(INSTANCE_COLS.split(", ").count(), INSTANCE_COL_COUNT);
        assert_eq!(EXTERNAL_COLS.split(", ").count(), EXTERNAL_COL_COUNT);
        assert_eq!(prefixed("e", "id, topic"), "e.id, e.topic");
    }

    #[test]
    fn times_round_trip_and_a_bad_value_is_corrupt() {
        let t = from_ms(1_700_000_000_123).unwrap();
        assert_eq!(to_ms(t), 1_700_000_000_123);
        assert_eq!(from_opt_ms(None).unwrap(), None);
        match from_ms(i64::MAX) {
            Err(StoreError::Corrupt(m)) => assert!(m.contains("out of range"), "{m}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
}
