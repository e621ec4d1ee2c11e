//! Scheduled backups (`backup.schedules`): cron expressions, and when a run is due.
//!
//! Whether a schedule is due is read from the recovery points themselves (in the backup
//! directory and on every target), not from a node's memory: a run is due when the newest
//! point of its kind is older than the schedule's latest slot. So a node that was down at
//! 02:00 runs the missed backup once when it starts (not once per missed slot), and a
//! second node that checks after the first one ran finds nothing due.

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::{Deserialize, Serialize};

use crate::manifest::{Kind, Sidecar};

/// `backup.schedules`: cron expressions (5 fields, or 6 with seconds first), UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Schedules {
    /// Full backups (tables, configuration files, Redis keys). `null` turns them off.
    pub full: Option<String>,
    /// Db-only incrementals (the journal since the newest backup). `null` turns them off.
    pub incremental: Option<String>,
}

impl Default for Schedules {
    /// The runbook's: a full backup at 02:00 every day, an incremental every 4 hours.
    fn default() -> Self {
        Schedules {
            full: Some("0 2 * * *".into()),
            incremental: Some("0 */4 * * *".into()),
        }
    }
}

/// One parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub kind: Kind,
    pub expr: String,
    cron: Cron,
}

pub fn parse(kind: Kind, expr: &str) -> Result<Schedule, String> {
    let cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| format!("backup schedule `{expr}` ({}): {e}", kind.as_str()))?;
    Ok(Schedule {
        kind,
        expr: expr.to_string(),
        cron,
    })
}

/// Whether a schedule's text turns it off: YAML's `null` arrives as no value, but the
/// environment (`STEADYFLOW_BACKUP__SCHEDULES__FULL=off`) can only give text.
fn is_off(expr: &str) -> bool {
    matches!(
        expr.trim().to_ascii_lowercase().as_str(),
        "" | "null" | "none" | "off"
    )
}

impl Schedules {
    /// The schedules that are on (`null`, or the text `off`, `none`, `null` or an empty
    /// one, turn one off).
    pub fn parse(&self) -> Result<Vec<Schedule>, String> {
        let mut out = Vec::new();
        for (kind, expr) in [
            (Kind::Full, &self.full),
            (Kind::Incremental, &self.incremental),
        ] {
            if let Some(e) = expr.as_deref().filter(|e| !is_off(e)) {
                out.push(parse(kind, e)?);
            }
        }
        Ok(out)
    }
}

impl Schedule {
    /// The schedule's latest slot at or before `now`.
    pub fn last_slot(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_previous_occurrence(&now, true).ok()
    }

    /// The next slot after `now`.
    pub fn next_slot(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&now, false).ok()
    }

    /// The newest point that satisfies this schedule: a full backup of the database for
    /// `full`; any backup of the database (full, incremental or shipped segment) for
    /// `incremental`, since each one holds the journal up to its time.
    pub fn newest<'a>(
        &self,
        points: impl IntoIterator<Item = &'a Sidecar>,
    ) -> Option<DateTime<Utc>> {
        points
            .into_iter()
            .filter(|p| p.manifest.journal.is_some())
            .filter(|p| self.kind == Kind::Incremental || p.manifest.kind == Kind::Full)
            .map(|p| p.manifest.created_at)
            .max()
    }

    /// Whether a run is due at `now` given the recovery points: the newest that satisfies
    /// this schedule is older than its latest slot. Missed slots add up to one run.
    pub fn due<'a>(
        &self,
        points: impl IntoIterator<Item = &'a Sidecar>,
        now: DateTime<Utc>,
    ) -> bool {
        match self.last_slot(now) {
            Some(slot) => self.newest(points).is_none_or(|t| t < slot),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;
    use steadyflow_store::recovery::SnapshotInfo;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn point(kind: Kind, created: &str) -> Sidecar {
        Sidecar {
            manifest: Manifest {
                format_version: 1,
                engine_version: "test".into(),
                id: created.into(),
                kind,
                parent: None,
                created_at: at(created),
                source_backend: Some("sqlite".into()),
                schema_version: Some(1),
                data_classes: Vec::new(),
                journal: Some(SnapshotInfo {
                    backend: "sqlite".into(),
                    schema_version: 1,
                    resume_seq: 0,
                    after_seq: None,
                    pg_snapshot: None,
                    journal_first_seq: None,
                    journal_last_seq: None,
                    journal_first_time: None,
                    journal_last_time: None,
                }),
                compression: "zstd".into(),
                encryption: "none".into(),
                files: Vec::new(),
                cache: None,
            },
            archive: "a".into(),
            archive_size: 0,
            archive_sha256: String::new(),
            verified_at: None,
        }
    }

    #[test]
    fn the_runbook_defaults_are_daily_at_two_and_every_four_hours() {
        let s = Schedules::default().parse().unwrap();
        let now = at("2026-12-03T13:30:00Z");
        assert_eq!(s[0].last_slot(now), Some(at("2026-12-03T02:00:00Z")));
        assert_eq!(s[0].next_slot(now), Some(at("2026-12-04T02:00:00Z")));
        assert_eq!(s[1].last_slot(now), Some(at("2026-12-03T12:00:00Z")));
        assert_eq!(s[1].next_slot(now), Some(at("2026-12-03T16:00:00Z")));
    }

    #[test]
    fn a_missed_slot_is_due_once_and_a_taken_one_is_not() {
        let full = parse(Kind::Full, "0 2 * * *").unwrap();
        // Down from Monday evening to Thursday noon: three slots missed, one run due.
        let monday = point(Kind::Full, "2026-11-30T02:00:05Z");
        let thursday = at("2026-12-03T12:00:00Z");
        assert!(full.due([&monday], thursday));
        // The run at start-up satisfies every missed slot.
        let ran = point(Kind::Full, "2026-12-03T12:00:01Z");
        assert!(!full.due([&monday, &ran], thursday));
        assert!(!full.due([&monday, &ran], at("2026-12-04T01:59:59Z")));
        assert!(full.due([&monday, &ran], at("2026-12-04T02:00:00Z")));
        // An incremental is not a full backup.
        let incr = point(Kind::Incremental, "2026-12-03T12:00:01Z");
        assert!(full.due([&monday, &incr], thursday));
        // Nothing at all: due.
        assert!(full.due([], thursday));
    }

    #[test]
    fn any_database_backup_satisfies_the_incremental_schedule() {
        let incr = parse(Kind::Incremental, "0 */4 * * *").unwrap();
        let now = at("2026-12-03T13:00:00Z");
        assert!(incr.due([&point(Kind::Full, "2026-12-03T11:59:00Z")], now));
        assert!(!incr.due([&point(Kind::Full, "2026-12-03T12:00:00Z")], now));
        assert!(!incr.due([&point(Kind::Incremental, "2026-12-03T12:30:00Z")], now));
    }

    #[test]
    fn seconds_are_optional_and_bad_expressions_are_named() {
        let s = parse(Kind::Full, "*/3 * * * * *").unwrap();
        assert_eq!(
            s.next_slot(at("2026-12-03T13:00:01Z")),
            Some(at("2026-12-03T13:00:03Z"))
        );
        let e = parse(Kind::Full, "every night").unwrap_err();
        assert!(e.contains("every night"), "{e}");
    }

    #[test]
    fn off_in_text_turns_a_schedule_off() {
        for off in ["off", "null", "None", "", " "] {
            let s = Schedules {
                full: Some(off.into()),
                ..Schedules::default()
            }
            .parse()
            .unwrap();
            assert_eq!(s.len(), 1, "{off:?} turns the full backups off");
            assert_eq!(s[0].kind, Kind::Incremental);
        }
    }
}
