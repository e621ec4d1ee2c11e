//! Catalog compaction: the incrementals of a closed chain (one a newer full backup of the
//! database has ended) are folded into one incremental, so the thousands of shipped
//! segments an hour do not stay recovery points of their own.
//!
//! Replay reads an incremental's journal rows in order and never looks at where one
//! incremental ends (the base's snapshot is all it skips), so one archive whose journal is
//! the chain's segments' rows, concatenated in chain order, restores exactly what the last
//! segment restored, and a point-in-time restore reaches every transaction it reached. The
//! folded point continues the chain's full backup (`parent`, `after_seq`) and ends where
//! its last segment ended (`resume_seq`, `created_at`); it is written, read back and
//! verified like any backup, copied to every target, and only then are the segments
//! deleted (sidecar first; a target's Object Lock keeps its copies, which are then
//! harmless duplicates of the chain). Encrypted chains are left alone.
//!
//! Nothing here holds the directory's lock: shipping goes on meanwhile. The fold's own
//! temporary files are `.fold-…` (the backups' debris cleaner leaves them alone; a killed
//! fold's are removed by the next fold).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use steadyflow_store::recovery::{ContentHasher, DataClass, SnapshotInfo};

use crate::archive::{self, FileSum, HashWriter, Member};
use crate::catalog;
use crate::error::{BackupError, Result};
use crate::keys::DecryptWith;
use crate::manifest::{FileEntry, Kind, Manifest, Sidecar};
use crate::targets::{self, Target};

/// The journal file of an incremental.
const JOURNAL: &str = "tables/journal.jsonl";

/// One chain's fold.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Folded {
    /// The full backup the chain continues.
    pub base: String,
    /// The incrementals folded (oldest first).
    pub folded: Vec<String>,
    /// The new incremental (`None` on a dry run).
    pub into: Option<String>,
    pub rows: u64,
    /// Locations that kept a folded incremental (Object Lock, an unreachable target).
    pub kept: Vec<(String, String)>,
}

/// The chains to fold in `points` (oldest first): for every full backup of the database
/// that a newer one follows, its incrementals in chain order, when there are two or more,
/// none encrypted.
pub fn plan(points: &[Sidecar]) -> Vec<(Sidecar, Vec<Sidecar>)> {
    let fulls: Vec<&Sidecar> = points
        .iter()
        .filter(|p| p.manifest.kind == Kind::Full && p.manifest.journal.is_some())
        .collect();
    let mut out = Vec::new();
    for (i, full) in fulls.iter().enumerate() {
        // Closed: a newer full backup of the database exists, so nothing continues this
        // chain any more.
        if i + 1 == fulls.len() {
            break;
        }
        let mut chain: Vec<Sidecar> = Vec::new();
        let mut tip = full.manifest.id.clone();
        loop {
            let children: Vec<&Sidecar> = points
                .iter()
                .filter(|p| p.manifest.parent.as_deref() == Some(tip.as_str()))
                .collect();
            // A fork (two children) is not a plain chain: stop there.
            let [child] = children.as_slice() else { break };
            let resume = chain
                .last()
                .unwrap_or(full)
                .manifest
                .journal
                .as_ref()
                .map(|j| j.resume_seq);
            let after = child.manifest.journal.as_ref().and_then(|j| j.after_seq);
            if child.manifest.kind != Kind::Incremental
                || child.manifest.encryption != "none"
                || after != resume
            {
                break;
            }
            tip = child.manifest.id.clone();
            chain.push((*child).clone());
        }
        if chain.len() >= 2 {
            out.push(((*full).clone(), chain));
        }
    }
    out
}

/// Folds every closed chain of `dir` (see [`plan`]) and brings the targets in step.
pub async fn fold_all(dir: &Path, targets: &[Target], dry_run: bool) -> Result<Vec<Folded>> {
    remove_leftovers(dir);
    let points = catalog::list(dir)?;
    let mut out = Vec::new();
    for (base, chain) in plan(&points) {
        let ids: Vec<String> = chain.iter().map(|s| s.manifest.id.clone()).collect();
        if dry_run {
            let rows = chain
                .iter()
                .map(|s| s.manifest.file(JOURNAL).and_then(|f| f.rows).unwrap_or(0))
                .sum();
            out.push(Folded {
                base: base.manifest.id.clone(),
                folded: ids,
                into: None,
                rows,
                kept: Vec::new(),
            });
            continue;
        }
        let (d, c) = (dir.to_path_buf(), chain.clone());
        let new = tokio::task::spawn_blocking(move || write_folded(&d, &c))
            .await
            .map_err(|e| BackupError::BadInput(format!("fold failed: {e}")))??;
        let rows = new.manifest.file(JOURNAL).and_then(|f| f.rows).unwrap_or(0);
        // The folded point on every target before any segment goes.
        let copies = targets::sync(dir, targets).await?;
        let mut kept = Vec::new();
        let failed: Vec<&str> = copies
            .iter()
            .filter(|c| c.error.is_some())
            .map(|c| c.target.as_str())
            .collect();
        for t in targets {
            if failed.contains(&t.name.as_str()) {
                kept.push((
                    t.name.clone(),
                    "the folded point could not be copied".into(),
                ));
                continue;
            }
            let there: Vec<String> = match t.list().await {
                Ok(l) => l.into_iter().map(|s| s.manifest.id).collect(),
                Err(e) => {
                    kept.push((t.name.clone(), e.to_string()));
                    continue;
                }
            };
            for s in chain.iter().filter(|s| there.contains(&s.manifest.id)) {
                if let Err(e) = t.delete(s).await {
                    kept.push((t.name.clone(), format!("{}: {e}", s.manifest.id)));
                }
            }
        }
        for s in &chain {
            catalog::delete(dir, s)?;
        }
        tracing::info!(base = %base.manifest.id, folded = ids.len(), into = %new.manifest.id, rows, "folded a closed chain's incrementals");
        out.push(Folded {
            base: base.manifest.id.clone(),
            folded: ids,
            into: Some(new.manifest.id.clone()),
            rows,
            kept,
        });
    }
    Ok(out)
}

/// Removes the temporary files of a fold that was killed.
fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(".fold-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes the folded incremental of `chain` into `dir`: its journal, archive, read-back
/// check, sidecar, then the rename that makes it a recovery point.
fn write_folded(dir: &Path, chain: &[Sidecar]) -> Result<Sidecar> {
    let (Some(first), Some(last)) = (chain.first(), chain.last()) else {
        return Err(BackupError::BadInput("nothing to fold".into()));
    };
    let id = catalog::new_id(dir, last.manifest.created_at, Kind::Incremental);
    let spooled = dir.join(format!(".fold-{id}.jsonl"));
    let result = (|| {
        let entry = concatenate(dir, chain, &spooled)?;
        let journal = folded_snapshot(chain)?;
        let manifest = Manifest {
            id: id.clone(),
            kind: Kind::Incremental,
            parent: first.manifest.parent.clone(),
            created_at: last.manifest.created_at,
            data_classes: vec![DataClass::Important],
            journal: Some(journal),
            engine_version: env!("CARGO_PKG_VERSION").to_string(),
            compression: "zstd".into(),
            encryption: "none".into(),
            files: vec![entry.clone()],
            cache: None,
            ..last.manifest.clone()
        };
        let name = catalog::archive_name(&id, true, false);
        let temp = dir.join(format!(".fold-{name}"));
        let (size, sha) = archive::write(
            &temp,
            &manifest,
            &[Member {
                entry: &entry,
                source: &spooled,
            }],
            true,
            None,
        )?;
        let sum = FileSum {
            size,
            sha256: sha.clone(),
        };
        let read = archive::read(&temp, &DecryptWith::default(), Some(&sum), |_, _, _| Ok(()))
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&temp);
            })?;
        if read != manifest {
            let _ = std::fs::remove_file(&temp);
            return Err(BackupError::Verify(
                "the folded archive read back holds another manifest than was written".into(),
            ));
        }
        let sidecar = Sidecar {
            manifest,
            archive: name.clone(),
            archive_size: size,
            archive_sha256: sha,
            verified_at: Some(chrono::Utc::now()),
        };
        catalog::write_sidecar(dir, &sidecar)?;
        std::fs::rename(&temp, dir.join(&name)).map_err(BackupError::io(format!(
            "cannot rename the folded archive to {name}"
        )))?;
        catalog::sync_dir(dir)?;
        Ok(sidecar)
    })();
    let _ = std::fs::remove_file(&spooled);
    result
}

/// The chain's journal rows, in chain order, into `out`: its manifest entry (checked
/// against each segment's own entry on the way).
fn concatenate(dir: &Path, chain: &[Sidecar], out: &PathBuf) -> Result<FileEntry> {
    let file =
        File::create(out).map_err(BackupError::io(format!("cannot create {}", out.display())))?;
    let mut w = HashWriter::new(BufWriter::with_capacity(1 << 20, file));
    let mut content = ContentHasher::new();
    let mut rows = 0u64;
    for s in chain {
        let path = dir.join(&s.archive);
        let mut seen = false;
        archive::read(
            &path,
            &DecryptWith::default(),
            Some(&FileSum::from(s)),
            |_, entry, r| {
                if entry.path != JOURNAL {
                    return Ok(());
                }
                seen = true;
                for line in BufReader::new(r).lines() {
                    let line =
                        line.map_err(BackupError::io(format!("cannot read {}", path.display())))?;
                    content.add(&line)?;
                    w.write_all(line.as_bytes())
                        .and_then(|()| w.write_all(b"\n"))
                        .map_err(BackupError::io(format!("cannot write {}", out.display())))?;
                    rows += 1;
                }
                Ok(())
            },
        )?;
        if !seen && s.manifest.file(JOURNAL).is_some() {
            return Err(BackupError::Verify(format!(
                "{} lacks its journal file",
                s.manifest.id
            )));
        }
    }
    let (buf, size, sha) = w.finish();
    buf.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .map_err(BackupError::io(format!("cannot write {}", out.display())))?;
    let digest = content.finish();
    Ok(FileEntry {
        path: JOURNAL.into(),
        size,
        sha256: sha,
        class: DataClass::Important,
        table: Some("journal".into()),
        rows: Some(rows),
        content_sha256: Some(digest.content_sha256),
    })
}

/// The journal range of the folded point: after where the first segment began, up to
/// where the last one ends.
fn folded_snapshot(chain: &[Sidecar]) -> Result<SnapshotInfo> {
    let infos: Vec<&SnapshotInfo> = chain
        .iter()
        .filter_map(|s| s.manifest.journal.as_ref())
        .collect();
    let (Some(first), Some(last)) = (infos.first(), infos.last()) else {
        return Err(BackupError::BadInput(
            "the chain holds no journal range".into(),
        ));
    };
    Ok(SnapshotInfo {
        backend: last.backend.clone(),
        schema_version: last.schema_version,
        resume_seq: last.resume_seq,
        after_seq: first.after_seq,
        pg_snapshot: None,
        journal_first_seq: infos.iter().find_map(|i| i.journal_first_seq),
        journal_last_seq: infos.iter().rev().find_map(|i| i.journal_last_seq),
        journal_first_time: infos.iter().find_map(|i| i.journal_first_time),
        journal_last_time: infos.iter().rev().find_map(|i| i.journal_last_time),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// A point `id` of `kind` at minute `min`, continuing `parent` (journal after `after`,
    /// up to `resume`).
    fn point(
        id: &str,
        kind: Kind,
        min: u32,
        parent: Option<&str>,
        after: Option<i64>,
        resume: i64,
    ) -> Sidecar {
        Sidecar {
            manifest: Manifest {
                format_version: 1,
                engine_version: "test".into(),
                id: id.into(),
                kind,
                parent: parent.map(str::to_string),
                created_at: at(&format!("2026-12-03T10:{min:02}:00Z")),
                source_backend: Some("sqlite".into()),
                schema_version: Some(1),
                data_classes: Vec::new(),
                journal: Some(SnapshotInfo {
                    backend: "sqlite".into(),
                    schema_version: 1,
                    resume_seq: resume,
                    after_seq: after,
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
            archive: format!("{id}.tar.zst"),
            archive_size: 0,
            archive_sha256: String::new(),
            verified_at: None,
        }
    }

    fn ids(plan: &[(Sidecar, Vec<Sidecar>)]) -> Vec<(String, Vec<String>)> {
        plan.iter()
            .map(|(b, c)| {
                (
                    b.manifest.id.clone(),
                    c.iter().map(|s| s.manifest.id.clone()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn only_closed_chains_of_two_or_more_plain_incrementals_fold() {
        let f1 = point("f1", Kind::Full, 0, None, None, 10);
        let s1 = point("s1", Kind::Incremental, 1, Some("f1"), Some(10), 12);
        let s2 = point("s2", Kind::Incremental, 2, Some("s1"), Some(12), 15);
        let s3 = point("s3", Kind::Incremental, 3, Some("s2"), Some(15), 16);
        let f2 = point("f2", Kind::Full, 4, None, None, 16);
        let t1 = point("t1", Kind::Incremental, 5, Some("f2"), Some(16), 18);
        let t2 = point("t2", Kind::Incremental, 6, Some("t1"), Some(18), 19);
        let all = [&f1, &s1, &s2, &s3, &f2, &t1, &t2].map(Clone::clone);
        // The open chain of f2 (shipping continues it) stays as it is.
        assert_eq!(
            ids(&plan(&all)),
            [(
                "f1".to_string(),
                vec!["s1".to_string(), "s2".into(), "s3".into()]
            )]
        );
        // Nothing closed: nothing to fold.
        assert!(plan(&[&f1, &s1, &s2].map(Clone::clone)).is_empty());
        // An encrypted incremental ends what folds (here: one left, too few).
        let mut e2 = s2.clone();
        e2.manifest.encryption = "age-passphrase".into();
        assert!(plan(&[&f1, &s1, &e2, &s3, &f2].map(Clone::clone)).is_empty());
        // A gap ends it too, and a fork (two children) is not a plain chain.
        let gap = point("s2", Kind::Incremental, 2, Some("s1"), Some(11), 15);
        assert!(plan(&[&f1, &s1, &gap, &s3, &f2].map(Clone::clone)).is_empty());
        let fork = point("x1", Kind::Incremental, 2, Some("f1"), Some(10), 11);
        assert!(plan(&[&f1, &s1, &fork, &s2, &s3, &f2].map(Clone::clone)).is_empty());
    }
}
