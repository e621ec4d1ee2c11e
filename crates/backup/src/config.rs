//! The `backup` section of the configuration.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::alert::AlertConfig;
use crate::prune::Retention;
use crate::schedule::Schedules;
use crate::targets::TargetSpec;

/// `backup:` in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// Where every backup is copied besides the backup directory (`--dir`): local
    /// directories and S3-compatible buckets, nearest first (restores try them in this
    /// order).
    pub targets: Vec<TargetSpec>,
    /// The working copy of `serve`'s shipper (the `backup` commands take `--dir`).
    pub dir: PathBuf,
    /// Continuous journal shipping by `serve` (needs at least one target).
    pub continuous: ContinuousConfig,
    /// Scheduled backups by `serve` (needs at least one target).
    pub schedules: Schedules,
    /// How long each data class is kept (`backup prune`, and after scheduled backups).
    pub retention: Retention,
    /// Where failures of `serve`'s backups are reported.
    pub alerts: AlertConfig,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            targets: Vec::new(),
            dir: PathBuf::from("./backups"),
            continuous: ContinuousConfig::default(),
            schedules: Schedules::default(),
            retention: Retention::default(),
            alerts: AlertConfig::default(),
        }
    }
}

/// `backup.continuous`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContinuousConfig {
    pub enabled: bool,
    /// How often the journal is shipped: `500ms`, `1s`, `1m` ...
    pub interval: String,
}

impl Default for ContinuousConfig {
    fn default() -> Self {
        ContinuousConfig {
            enabled: true,
            interval: "1s".into(),
        }
    }
}

impl ContinuousConfig {
    pub fn interval(&self) -> Result<Duration, String> {
        parse_duration(&self.interval)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                format!(
                    "backup.continuous.interval `{}` is not a duration such as 500ms, 1s or 1m",
                    self.interval
                )
            })
    }
}

/// `250ms`, `1s`, `2m`, `1h` (a plain number is seconds).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_with_their_units() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("1 week"), None);
        assert!(
            ContinuousConfig {
                enabled: true,
                interval: "0s".into()
            }
            .interval()
            .is_err()
        );
    }

    #[test]
    fn targets_and_interval_deserialize() {
        let c: BackupConfig = serde_json::from_value(serde_json::json!({
            "targets": [
                {"type": "local", "path": "./backups2"},
                {"type": "s3", "endpoint": "http://127.0.0.1:9000", "region": "us-east-1",
                 "bucket": "steadyflow", "prefix": "prod/", "path_style": true,
                 "object_lock": {"mode": "compliance", "days": 90}}
            ],
            "continuous": {"interval": "1s"}
        }))
        .unwrap();
        assert_eq!(c.targets.len(), 2);
        assert_eq!(c.targets[0].name(), "local:./backups2");
        assert_eq!(c.targets[1].name(), "s3://steadyflow/prod");
        assert_eq!(c.continuous.interval(), Ok(Duration::from_secs(1)));
        assert!(
            serde_json::from_value::<BackupConfig>(serde_json::json!({
                "targets": [{"type": "ftp", "path": "x"}]
            }))
            .is_err()
        );
    }
}
