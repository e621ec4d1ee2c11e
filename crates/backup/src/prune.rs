//! Retention by data class (`backup.retention`) and the plan of `steadyflow backup prune`.
//!
//! A recovery point is kept as long as the longest retention among the data classes it
//! holds (a point with critical data lives 90 days by default, one with configuration
//! files only forever). Whatever the ages, a plan never deletes the newest verified full
//! backup of the database, nor any point that a kept incremental needs (its chain back to
//! its full backup). Objects under S3 Object Lock are refused by the target itself when the
//! plan is carried out ([`crate::targets::Target::delete`]).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use steadyflow_store::recovery::DataClass;

use crate::manifest::{Kind, Sidecar};

/// Days each data class is kept; `null` keeps it forever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    pub critical_days: Option<u32>,
    pub important_days: Option<u32>,
    pub config_days: Option<u32>,
    pub cache_days: Option<u32>,
}

impl Default for Retention {
    /// The runbook's: critical 90 days, important 30 days, configuration forever; the
    /// cache is worth no more than the important data.
    fn default() -> Self {
        Retention {
            critical_days: Some(90),
            important_days: Some(30),
            config_days: None,
            cache_days: Some(30),
        }
    }
}

impl Retention {
    fn days(&self, class: DataClass) -> Option<u32> {
        match class {
            DataClass::Critical => self.critical_days,
            DataClass::Important => self.important_days,
            DataClass::Config => self.config_days,
            DataClass::Cache => self.cache_days,
        }
    }

    /// Until when `point` is kept for its data (`None`: forever).
    pub fn keep_until(&self, point: &Sidecar) -> Option<DateTime<Utc>> {
        let mut longest = Some(0u32);
        for c in &point.manifest.data_classes {
            longest = match (longest, self.days(*c)) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
        longest.map(|d| point.manifest.created_at + Duration::days(i64::from(d)))
    }
}

/// What the plan does with one point, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub id: String,
    pub delete: bool,
    pub reason: String,
}

/// The plan at `now` for `points` (every recovery point, all locations together).
pub fn plan(points: &[Sidecar], retention: &Retention, now: DateTime<Utc>) -> Vec<Decision> {
    let by_id: BTreeMap<&str, &Sidecar> =
        points.iter().map(|p| (p.manifest.id.as_str(), p)).collect();
    let mut reason: BTreeMap<&str, String> = BTreeMap::new();
    for p in points {
        match retention.keep_until(p) {
            None => {
                reason.insert(&p.manifest.id, "kept forever (its data classes)".into());
            }
            Some(t) if t > now => {
                reason.insert(&p.manifest.id, format!("kept until {}", t.to_rfc3339()));
            }
            Some(_) => {}
        }
    }
    let newest_full = points
        .iter()
        .filter(|p| {
            p.manifest.kind == Kind::Full && p.manifest.journal.is_some() && p.verified_at.is_some()
        })
        .max_by_key(|p| (p.manifest.created_at, p.manifest.id.clone()));
    if let Some(f) = newest_full {
        reason
            .entry(&f.manifest.id)
            .or_insert_with(|| "the newest verified full backup".into());
    }
    // Every kept incremental keeps its chain back to its full backup.
    let kept: Vec<&str> = reason.keys().copied().collect();
    let mut needed: BTreeSet<&str> = BTreeSet::new();
    for id in kept {
        let mut at = by_id.get(id).and_then(|p| p.manifest.parent.as_deref());
        while let Some(parent) = at {
            if !needed.insert(parent) {
                break;
            }
            at = by_id.get(parent).and_then(|p| p.manifest.parent.as_deref());
        }
    }
    for parent in needed {
        if by_id.contains_key(parent) {
            reason
                .entry(parent)
                .or_insert_with(|| "needed by a kept incremental".into());
        }
    }
    let mut out: Vec<Decision> = points
        .iter()
        .map(|p| match reason.get(p.manifest.id.as_str()) {
            Some(r) => Decision {
                id: p.manifest.id.clone(),
                delete: false,
                reason: r.clone(),
            },
            None => Decision {
                id: p.manifest.id.clone(),
                delete: true,
                reason: "past the retention of its data classes".into(),
            },
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;
    use steadyflow_store::recovery::SnapshotInfo;

    fn point(
        id: &str,
        kind: Kind,
        parent: Option<&str>,
        at: DateTime<Utc>,
        classes: &[DataClass],
    ) -> Sidecar {
        Sidecar {
            manifest: Manifest {
                format_version: 1,
                engine_version: "test".into(),
                id: id.into(),
                kind,
                parent: parent.map(str::to_string),
                created_at: at,
                source_backend: Some("sqlite".into()),
                schema_version: Some(1),
                data_classes: classes.to_vec(),
                journal: (!classes.is_empty() && classes != [DataClass::Config]).then(|| {
                    SnapshotInfo {
                        backend: "sqlite".into(),
                        schema_version: 1,
                        resume_seq: 0,
                        after_seq: None,
                        pg_snapshot: None,
                        journal_first_seq: None,
                        journal_last_seq: None,
                        journal_first_time: None,
                        journal_last_time: None,
                    }
                }),
                compression: "zstd".into(),
                encryption: "none".into(),
                files: Vec::new(),
                cache: None,
            },
            archive: format!("{id}.tar.zst"),
            archive_size: 0,
            archive_sha256: String::new(),
            verified_at: Some(at),
        }
    }

    fn deleted(plan: &[Decision]) -> Vec<&str> {
        plan.iter()
            .filter(|d| d.delete)
            .map(|d| d.id.as_str())
            .collect()
    }

    /// A year of backups, the clock driven month by month: a full with every class on the
    /// first of each month, a db-only incremental on the 15th, a configuration-only backup
    /// in January.
    #[test]
    fn a_year_of_backups_under_the_default_retention() {
        use DataClass::*;
        let start = DateTime::parse_from_rfc3339("2026-01-01T02:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut points = vec![point("cfg-01", Kind::Full, None, start, &[Config])];
        for m in 0..12i64 {
            let full_at = start + Duration::days(30 * m);
            let full = format!("full-{m:02}");
            points.push(point(
                &full,
                Kind::Full,
                None,
                full_at,
                &[Critical, Important, Config],
            ));
            points.push(point(
                &format!("incr-{m:02}"),
                Kind::Incremental,
                Some(&full),
                full_at + Duration::days(14),
                &[Important],
            ));
        }
        let r = Retention::default();
        // Month by month, nothing younger than its retention ever goes.
        for month in 0..15i64 {
            let now = start + Duration::days(30 * month + 20);
            let p = plan(&points, &r, now);
            for d in &p {
                let pt = points.iter().find(|x| x.manifest.id == d.id).unwrap();
                if d.delete {
                    let until = r.keep_until(pt).expect("a point kept forever was deleted");
                    assert!(until <= now, "{} deleted before {until}", d.id);
                }
            }
            // The newest verified full is always kept, and the configuration forever.
            let newest = format!("full-{:02}", month.min(11));
            assert!(
                !deleted(&p).contains(&newest.as_str()),
                "month {month}: {newest}"
            );
            assert!(!deleted(&p).contains(&"cfg-01"));
        }
        // Fulls hold configuration files (kept forever); incrementals hold only
        // important data: gone after 30 days.
        let now = start + Duration::days(200);
        let p = plan(&points, &r, now);
        assert!(deleted(&p).contains(&"incr-00"));
        assert!(
            !deleted(&p).contains(&"full-00"),
            "configuration is kept forever"
        );
        // Without the configuration class's forever, fulls expire after 90 days.
        let r = Retention {
            config_days: Some(90),
            ..Retention::default()
        };
        let p = plan(&points, &r, now);
        let gone = deleted(&p);
        assert!(
            gone.contains(&"full-00") && gone.contains(&"full-02"),
            "{gone:?}"
        );
        assert!(!gone.contains(&"full-04"), "89 days old: {gone:?}");
    }

    #[test]
    fn a_kept_incremental_keeps_its_chain_and_the_newest_full_is_never_deleted() {
        use DataClass::*;
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let r = Retention {
            critical_days: Some(10),
            important_days: Some(40),
            config_days: Some(10),
            cache_days: Some(10),
        };
        let points = vec![
            point("a-full", Kind::Full, None, t0, &[Critical, Config]),
            point(
                "b-incr",
                Kind::Incremental,
                Some("a-full"),
                t0 + Duration::days(1),
                &[Critical],
            ),
            point(
                "c-incr",
                Kind::Incremental,
                Some("b-incr"),
                t0 + Duration::days(2),
                &[Important],
            ),
        ];
        // Day 20: the full and the first incremental are past their 10 days, but the
        // second incremental (40 days) needs both.
        let p = plan(&points, &r, t0 + Duration::days(20));
        assert!(deleted(&p).is_empty(), "{p:?}");
        assert!(
            p.iter()
                .any(|d| d.id == "b-incr" && d.reason.contains("needed"))
        );
        // Day 50: everything is past its retention, but the newest verified full stays;
        // the incrementals go.
        let p = plan(&points, &r, t0 + Duration::days(50));
        assert_eq!(deleted(&p), ["b-incr", "c-incr"]);
        assert!(
            p.iter()
                .any(|d| d.id == "a-full" && d.reason.contains("newest verified"))
        );
    }
}

/// What pruning did with one point.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pruned {
    #[serde(flatten)]
    pub decision: Decision,
    /// Where the point exists (`local`, target names).
    pub locations: Vec<String>,
    /// Where it was deleted.
    pub deleted: Vec<String>,
    /// Where deleting it was refused (Object Lock) or failed, with why.
    pub refused: Vec<(String, String)>,
}

/// Plans at `now` over every point of the backup directory and the targets, and (unless
/// `dry_run`) deletes what the plan lets go, everywhere it exists: the sidecar first, so
/// a point stops being listed before its archive goes. A target that cannot be listed
/// stops the run (its points' chains are unknown).
pub async fn prune_all(
    dir: &std::path::Path,
    targets: &[crate::targets::Target],
    retention: &Retention,
    now: DateTime<Utc>,
    dry_run: bool,
) -> crate::Result<Vec<Pruned>> {
    let (points, unreachable) = crate::targets::list_all(dir, targets).await?;
    if !unreachable.is_empty() {
        return Err(crate::BackupError::Remote(format!(
            "not pruning while a target cannot be listed: {}",
            unreachable.join("; ")
        )));
    }
    let sidecars: Vec<Sidecar> = points.iter().map(|p| p.sidecar.clone()).collect();
    let mut out = Vec::new();
    for decision in plan(&sidecars, retention, now) {
        let Some(located) = points.iter().find(|p| p.sidecar.manifest.id == decision.id) else {
            continue;
        };
        let mut pruned = Pruned {
            decision,
            locations: located.locations.clone(),
            deleted: Vec::new(),
            refused: Vec::new(),
        };
        if pruned.decision.delete && !dry_run {
            for loc in &located.locations {
                let result = if loc == crate::targets::LOCAL {
                    crate::catalog::delete(dir, &located.sidecar)
                } else if let Some(t) = targets.iter().find(|t| &t.name == loc) {
                    t.delete(&located.sidecar).await
                } else {
                    continue;
                };
                match result {
                    Ok(()) => pruned.deleted.push(loc.clone()),
                    Err(e) => {
                        tracing::warn!(backup = %pruned.decision.id, location = %loc, error = %e, "not pruned");
                        pruned.refused.push((loc.clone(), e.to_string()));
                    }
                }
            }
        }
        out.push(pruned);
    }
    Ok(out)
}
