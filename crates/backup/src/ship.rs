//! Continuous journal shipping: every interval, the durable journal rows written since the
//! newest recovery point become a segment (a db-only incremental of the chain, so
//! `restore latest` replays it like any incremental) that goes to every target.
//!
//! The chain lives on the targets; the backup directory is this node's working copy. A
//! node that starts shipping (or takes over from another) first brings the newest chain of
//! the targets into its directory, so its first segment continues exactly where the last
//! shipped one ended: the chain check (`after_seq` = the parent's `resume_seq`) refuses a
//! gap, and a segment never repeats a row its parent holds.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use steadyflow_store::recovery::Exporter;

use crate::catalog;
use crate::create::{BackupOptions, Parts, create, create_segment};
use crate::error::Result;
use crate::manifest::{Kind, Sidecar};
use crate::progress::Progress;
use crate::targets::{self, Target};

/// What one round did.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// The segment (or, on the first round without any backup, the full backup) written.
    pub written: Option<Sidecar>,
    /// The newest journal sequence on every target after the round.
    pub shipped_seq: Option<i64>,
    /// Targets that failed this round (name, error); their points go up next round.
    pub failed: Vec<(String, String)>,
}

/// Ships a database's journal to its targets.
pub struct Shipper {
    exporter: Box<dyn Exporter>,
    targets: Vec<Target>,
    dir: PathBuf,
    /// Whether the newest chain of the targets is in `dir` (done once per leadership).
    caught_up: bool,
    /// Targets that failed a round: the next round lists them and uploads what they lack.
    behind: Vec<String>,
}

impl Shipper {
    pub fn new(exporter: Box<dyn Exporter>, targets: Vec<Target>, dir: PathBuf) -> Shipper {
        Shipper {
            exporter,
            targets,
            dir,
            caught_up: false,
            behind: Vec::new(),
        }
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Forgets what it knew of the targets: after a lost lease, another node may have
    /// shipped in between.
    pub fn reset(&mut self) {
        self.caught_up = false;
    }

    /// One round at `now`: catch up with the targets if needed, write a segment when the
    /// journal grew (a full db-only backup when there is none to continue from), upload it
    /// to every target, then prune the live journal below what every target holds.
    pub async fn round(&mut self, now: DateTime<Utc>) -> Result<Round> {
        if !self.caught_up {
            let fetched = targets::fetch_chain(&self.dir, &self.targets, "latest").await?;
            if !fetched.is_empty() {
                tracing::info!(fetched = ?fetched, "continuing the targets' chain");
            }
            self.caught_up = true;
            // Any target may lack points another node or an earlier run left elsewhere.
            self.behind = self.targets.iter().map(|t| t.name.clone()).collect();
        }
        let opts = BackupOptions {
            dir: self.dir.clone(),
            parts: Parts::DbOnly,
            compress: true,
            encrypt: None,
            config_files: Vec::new(),
            now,
            kind: Kind::Incremental,
            redis: None,
            prune_journal: false,
        };
        let has_base = catalog::list(&self.dir)?
            .iter()
            .any(|p| p.manifest.journal.is_some());
        let written = if has_base {
            create_segment(self.exporter.as_ref(), &opts).await?
        } else {
            let full = BackupOptions {
                kind: Kind::Full,
                ..opts.clone()
            };
            Some(create(Some(self.exporter.as_ref()), &full, &Progress::none()).await?)
        };
        let mut failed = Vec::new();
        let mut still_behind = Vec::new();
        for t in &self.targets {
            let result = if self.behind.contains(&t.name) {
                targets::sync(&self.dir, std::slice::from_ref(t))
                    .await
                    .map(|o| o.into_iter().find_map(|o| o.error))
            } else if let Some(s) = &written {
                t.upload(&self.dir, s)
                    .await
                    .map(|()| None)
                    .or_else(|e| Ok(Some(e.to_string())))
            } else {
                Ok(None)
            };
            match result {
                Ok(None) => {}
                Ok(Some(e)) | Err(crate::BackupError::Remote(e)) => {
                    failed.push((t.name.clone(), e));
                    still_behind.push(t.name.clone());
                }
                Err(e) => {
                    failed.push((t.name.clone(), e.to_string()));
                    still_behind.push(t.name.clone());
                }
            }
        }
        self.behind = still_behind;
        let newest = catalog::list(&self.dir)?
            .into_iter()
            .rev()
            .find_map(|p| p.manifest.journal.map(|j| j.resume_seq));
        let shipped_seq = if failed.is_empty() { newest } else { None };
        if let Some(seq) = shipped_seq
            && written.is_some()
        {
            // Every target holds the rows up to `seq`: the live journal no longer needs them.
            if let Err(e) = self.exporter.prune_journal(seq).await {
                tracing::warn!(error = %e, "could not prune the shipped journal");
            }
        }
        Ok(Round {
            written,
            shipped_seq,
            failed,
        })
    }
}
