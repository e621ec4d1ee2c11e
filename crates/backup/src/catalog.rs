//! The backup directory: names, the list of recovery points, locks and debris.
//!
//! A recovery point is an archive under its final name *and* its sidecar
//! (`<id>.manifest.json`). Temporary files are hidden (`.<name>.partial`,
//! `.<id>.spool/`) and never listed.

use std::fs::File;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::error::{BackupError, Result};
use crate::manifest::{Kind, Sidecar};

/// `YYYYMMDD_HHMMSS-<kind>` (with `-2`, `-3` … when that second is taken).
pub fn new_id(dir: &Path, now: DateTime<Utc>, kind: Kind) -> String {
    let base = format!("{}-{}", now.format("%Y%m%d_%H%M%S"), kind.as_str());
    let taken = |id: &str| dir.join(format!("{id}.manifest.json")).exists();
    if !taken(&base) {
        return base;
    }
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|id| !taken(id))
        .unwrap_or(base)
}

pub fn archive_name(id: &str, compressed: bool, encrypted: bool) -> String {
    format!(
        "{id}.tar{}{}",
        if compressed { ".zst" } else { "" },
        if encrypted { ".age" } else { "" }
    )
}

fn sidecar_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.manifest.json"))
}

pub(crate) fn write_sidecar(dir: &Path, sidecar: &Sidecar) -> Result<()> {
    let path = sidecar_path(dir, &sidecar.manifest.id);
    let temp = dir.join(format!(".{}.manifest.json.partial", sidecar.manifest.id));
    let text = serde_json::to_vec_pretty(sidecar)
        .map_err(|e| BackupError::BadInput(format!("sidecar cannot be written: {e}")))?;
    std::fs::write(&temp, text)
        .and_then(|_| File::open(&temp)?.sync_all())
        .and_then(|_| std::fs::rename(&temp, &path))
        .map_err(BackupError::io(format!("cannot write {}", path.display())))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(BackupError::io(format!("cannot flush {}", dir.display())))
}

/// Every recovery point in `dir`, oldest first. Sidecars without their archive (a
/// backup killed between the two renames) are not recovery points.
pub fn list(dir: &Path) -> Result<Vec<Sidecar>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(BackupError::Io {
                what: format!("cannot list {}", dir.display()),
                source: e,
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(BackupError::io(format!("cannot list {}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || !name.ends_with(".manifest.json") {
            continue;
        }
        let Ok(text) = std::fs::read(entry.path()) else {
            continue;
        };
        let Ok(sidecar) = serde_json::from_slice::<Sidecar>(&text) else {
            tracing::warn!(file = %name, "unreadable sidecar skipped");
            continue;
        };
        if dir.join(&sidecar.archive).is_file() {
            out.push(sidecar);
        }
    }
    out.sort_by(|a, b| {
        (a.manifest.created_at, &a.manifest.id).cmp(&(b.manifest.created_at, &b.manifest.id))
    });
    Ok(out)
}

/// Resolves `latest`, an id, or a file path to an archive path and its sidecar (if
/// the archive is in a backup directory).
pub fn resolve(dir: &Path, what: &str) -> Result<(PathBuf, Option<Sidecar>)> {
    let points = list(dir)?;
    if what == "latest" {
        let last = points
            .into_iter()
            .next_back()
            .ok_or_else(|| BackupError::BadInput(format!("no backups in {}", dir.display())))?;
        return Ok((dir.join(&last.archive), Some(last)));
    }
    if let Some(p) = points
        .iter()
        .find(|p| p.manifest.id == what || p.archive == what)
    {
        return Ok((dir.join(&p.archive), Some(p.clone())));
    }
    let path = PathBuf::from(what);
    if path.is_file() {
        let sidecar = sidecar_beside(&path);
        return Ok((path, sidecar));
    }
    Err(BackupError::BadInput(format!(
        "no backup `{what}`: neither a backup id in {} nor a file",
        dir.display()
    )))
}

/// The sidecar of an archive given by path, when it lies beside it.
fn sidecar_beside(archive: &Path) -> Option<Sidecar> {
    let dir = archive.parent()?;
    let name = archive.file_name()?.to_str()?;
    let id = name.split(".tar").next()?;
    let text = std::fs::read(sidecar_path(dir, id)).ok()?;
    let s: Sidecar = serde_json::from_slice(&text).ok()?;
    (s.archive == name).then_some(s)
}

/// The chain that restores `point`: its full backup first, then every incremental up to
/// and including `point`. A missing parent is bad input; a parent whose journal does not
/// end where the child's begins is a gap (verification failed).
pub fn chain(dir: &Path, point: &Sidecar) -> Result<Vec<Sidecar>> {
    chain_in(&list(dir)?, point, &dir.display().to_string())
}

/// [`chain`] over the recovery points `points` (found in `place`, for messages).
pub fn chain_in(points: &[Sidecar], point: &Sidecar, place: &str) -> Result<Vec<Sidecar>> {
    let mut out = vec![point.clone()];
    while let Some(parent_id) = out.last().and_then(|p| p.manifest.parent.clone()) {
        let child = out
            .last()
            .map(|c| c.manifest.id.clone())
            .unwrap_or_default();
        let parent = points
            .iter()
            .find(|p| p.manifest.id == parent_id)
            .ok_or_else(|| {
                BackupError::BadInput(format!(
                    "backup {child} needs its parent {parent_id}, which is not in {place}"
                ))
            })?;
        let after = out
            .last()
            .and_then(|c| c.manifest.journal.as_ref())
            .and_then(|j| j.after_seq);
        let resume = parent.manifest.journal.as_ref().map(|j| j.resume_seq);
        if after != resume {
            return Err(BackupError::Verify(format!(
                "gap in the chain: {child} starts after journal sequence {after:?}, its parent \
                 {parent_id} ends at {resume:?}"
            )));
        }
        if out.len() > 100_000 {
            return Err(BackupError::Verify("the backup chain loops".into()));
        }
        out.push(parent.clone());
    }
    out.reverse();
    if out.first().is_some_and(|f| f.manifest.kind != Kind::Full) {
        return Err(BackupError::BadInput(format!(
            "the chain of {} does not begin with a full backup",
            point.manifest.id
        )));
    }
    Ok(out)
}

/// Checks the archive file against the size and SHA-256 its sidecar recorded when it was
/// written (catches damage the content checks cannot see, such as tar padding).
pub fn check_file(path: &Path, sidecar: Option<&Sidecar>) -> Result<()> {
    let Some(s) = sidecar else {
        return Ok(());
    };
    let (size, sha) = crate::archive::file_digest(path)?;
    if size != s.archive_size || sha != s.archive_sha256 {
        return Err(BackupError::Verify(format!(
            "{} is {size} bytes with SHA-256 {sha}; when written it was {} bytes with {}",
            path.display(),
            s.archive_size,
            s.archive_sha256
        )));
    }
    Ok(())
}

/// Deletes a recovery point from `dir`: its sidecar first (it stops being listed), then
/// its archive.
pub fn delete(dir: &Path, sidecar: &Sidecar) -> Result<()> {
    for path in [
        sidecar_path(dir, &sidecar.manifest.id),
        dir.join(&sidecar.archive),
    ] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(BackupError::Io {
                    what: format!("cannot delete {}", path.display()),
                    source: e,
                });
            }
        }
    }
    sync_dir(dir)
}

/// Records a successful verification in the sidecar.
pub fn mark_verified(dir: &Path, sidecar: &mut Sidecar, at: DateTime<Utc>) -> Result<()> {
    sidecar.verified_at = Some(at);
    write_sidecar(dir, sidecar)
}

/// Removes what killed backups left: hidden partial archives and spool folders.
pub(crate) fn remove_debris(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .map_err(BackupError::io(format!("cannot list {}", dir.display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let path = entry.path();
        if name.starts_with('.') && name.ends_with(".partial") {
            tracing::info!(file = %name, "removing a partial backup left by an interrupted run");
            let _ = std::fs::remove_file(&path);
        } else if name.starts_with('.') && name.ends_with(".spool") {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
    Ok(())
}

/// One backup at a time per directory (`flock` on `.lock`, released when the process
/// ends, however it ends).
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(BackupError::io(format!("cannot open {}", path.display())))?;
        file.try_lock().map_err(|_| {
            BackupError::TargetInUse(format!(
                "another backup is running in {} (lock {} is held)",
                dir.display(),
                path.display()
            ))
        })?;
        Ok(DirLock { _file: file })
    }
}
