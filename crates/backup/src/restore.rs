//! Restoring: rows stream from the archive into a staging target while the archive is
//! checked; then every table's row count and content checksum are compared with the
//! manifest. Only a staging that passed is handed back for promotion; on any error it is
//! discarded and the target was never written.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use steadyflow_store::recovery::{ContentHasher, EXPORT_BATCH, Staging, TableSpec};

use crate::archive;
use crate::error::{BackupError, Result};
use crate::keys::DecryptWith;
use crate::manifest::{FileEntry, Manifest};
use crate::progress::Progress;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TableCheck {
    pub table: String,
    pub rows: u64,
    pub content_sha256: String,
    /// Restored into the target (false: kept in the archive only, e.g. the journal).
    pub restored: bool,
}

/// Outcome of [`restore_tables`]: the checked staging, ready to promote or drop.
pub struct Staged {
    pub manifest: Manifest,
    pub tables: Vec<TableCheck>,
    pub staging: Box<dyn Staging>,
    pub seconds: f64,
}

enum Item {
    Rows(&'static TableSpec, Vec<String>),
}

fn table_of(file: &FileEntry) -> Result<Option<&'static TableSpec>> {
    let Some(name) = &file.table else {
        return Ok(None);
    };
    steadyflow_store::recovery::table(name)
        .map(Some)
        .ok_or_else(|| {
            BackupError::BadInput(format!("the archive holds an unknown table `{name}`"))
        })
}

/// Reads lines of a table file into batches for `send`.
fn stream_lines(
    reader: &mut dyn Read,
    table: &'static TableSpec,
    mut send: impl FnMut(Item) -> Result<()>,
) -> Result<()> {
    let mut lines = BufReader::with_capacity(1 << 20, reader).lines();
    let mut batch = Vec::with_capacity(EXPORT_BATCH);
    for line in lines.by_ref() {
        let line = line.map_err(|e| {
            BackupError::Verify(format!("table {} cannot be read: {e}", table.name))
        })?;
        if line.is_empty() {
            continue;
        }
        batch.push(line);
        if batch.len() == EXPORT_BATCH {
            send(Item::Rows(table, std::mem::take(&mut batch)))?;
        }
    }
    if !batch.is_empty() {
        send(Item::Rows(table, batch))?;
    }
    Ok(())
}

/// Restores the database tables of the archive at `path` into `staging` and checks
/// them. `max_schema` is the newest schema the target backend knows: an archive from a
/// newer schema is refused before anything is read.
pub async fn restore_tables(
    path: &Path,
    keys: &DecryptWith,
    mut staging: Box<dyn Staging>,
    max_schema: i64,
    progress: &Progress,
) -> Result<Staged> {
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Item>(4);
    let (path_owned, keys_owned) = (path.to_path_buf(), keys.clone());
    let reader = tokio::task::spawn_blocking(move || {
        let mut checked = false;
        archive::read(&path_owned, &keys_owned, |manifest, file, r| {
            if !checked {
                check_restorable(manifest, max_schema)?;
                checked = true;
            }
            match table_of(file)? {
                Some(table) if table.restored() => stream_lines(r, table, |item| {
                    tx.blocking_send(item)
                        .map_err(|_| BackupError::BadInput("restore stopped".into()))
                }),
                _ => Ok(()),
            }
        })
    });
    progress.stage("restoring tables");
    let mut import_err = None;
    while let Some(Item::Rows(table, lines)) = rx.recv().await {
        let n = lines.len() as u64;
        if let Err(e) = staging.import(table, lines).await {
            import_err = Some(e);
            break;
        }
        progress.rows(n, 0);
    }
    drop(rx);
    let read = reader
        .await
        .map_err(|e| BackupError::BadInput(format!("archive reader failed: {e}")));
    let manifest = match (read, import_err) {
        (Ok(Ok(m)), None) => m,
        (Ok(Err(e)), _) | (Err(e), _) => {
            let _ = staging.discard().await;
            return Err(e);
        }
        (Ok(Ok(_)), Some(e)) => {
            let _ = staging.discard().await;
            return Err(e.into());
        }
    };
    if let Err(e) = check_restorable(&manifest, max_schema) {
        let _ = staging.discard().await;
        return Err(e);
    }
    progress.stage("checking restored tables");
    let mut tables = Vec::new();
    for file in &manifest.files {
        let Some(table) = table_of(file)? else {
            continue;
        };
        let (rows, content) = (
            file.rows.unwrap_or(0),
            file.content_sha256.clone().unwrap_or_default(),
        );
        if table.restored() {
            let got = match staging.table_digest(table).await {
                Ok(d) => d,
                Err(e) => {
                    let _ = staging.discard().await;
                    return Err(e.into());
                }
            };
            if got.rows != rows || got.content_sha256 != content {
                let _ = staging.discard().await;
                return Err(BackupError::Verify(format!(
                    "table {} restored as {} rows (content {}), the manifest says {rows} rows ({content})",
                    table.name, got.rows, got.content_sha256
                )));
            }
        }
        tables.push(TableCheck {
            table: table.name.to_string(),
            rows,
            content_sha256: content,
            restored: table.restored(),
        });
    }
    Ok(Staged {
        manifest,
        tables,
        staging,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn check_restorable(manifest: &Manifest, max_schema: i64) -> Result<()> {
    if !manifest.files.iter().any(|f| f.table.is_some()) {
        return Err(BackupError::BadInput(format!(
            "backup {} holds no database tables (data classes: {})",
            manifest.id,
            manifest
                .data_classes
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if let Some(v) = manifest.schema_version
        && v > max_schema
    {
        return Err(BackupError::BadInput(format!(
            "backup {} has database schema {v}, newer than this steadyflow knows ({max_schema}); \
             restore it with a newer steadyflow",
            manifest.id
        )));
    }
    Ok(())
}

/// Checks the whole archive: every file's size and SHA-256 (while reading), then each
/// table's rows and content checksum recomputed from its lines.
pub fn verify(path: &Path, keys: &DecryptWith) -> Result<Manifest> {
    let mut problems = Vec::new();
    let manifest = archive::read(path, keys, |_, file, r| {
        if file.table.is_none() {
            return Ok(());
        }
        let mut hasher = ContentHasher::new();
        for line in BufReader::with_capacity(1 << 20, r).lines() {
            let line = line.map_err(|e| BackupError::Verify(format!("{}: {e}", file.path)))?;
            if !line.is_empty() {
                hasher
                    .add(&line)
                    .map_err(|e| BackupError::Verify(format!("{}: {e}", file.path)))?;
            }
        }
        let d = hasher.finish();
        if Some(d.rows) != file.rows || Some(&d.content_sha256) != file.content_sha256.as_ref() {
            problems.push(format!(
                "{}: {} rows (content {}), the manifest says {:?} rows ({:?})",
                file.path, d.rows, d.content_sha256, file.rows, file.content_sha256
            ));
        }
        Ok(())
    })?;
    if !problems.is_empty() {
        return Err(BackupError::Verify(problems.join("; ")));
    }
    Ok(manifest)
}

/// Writes the configuration files of the archive into `dest` (each as
/// `dest/<name>`), only after the whole archive checked out. Existing files are
/// refused unless `force`.
pub fn restore_config(
    path: &Path,
    keys: &DecryptWith,
    dest: &Path,
    force: bool,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dest)
        .map_err(BackupError::io(format!("cannot create {}", dest.display())))?;
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let result = archive::read(path, keys, |_, file, r| {
        let Some(name) = file.path.strip_prefix("config/") else {
            return Ok(());
        };
        let target = dest.join(name);
        if target.exists() && !force {
            return Err(BackupError::TargetNotEmpty(format!(
                "{} exists; use --force to replace it",
                target.display()
            )));
        }
        let temp = dest.join(format!(".{name}.restore"));
        let mut out = std::fs::File::create(&temp)
            .map_err(BackupError::io(format!("cannot create {}", temp.display())))?;
        std::io::copy(r, &mut out)
            .map_err(BackupError::io(format!("cannot write {}", temp.display())))?;
        out.sync_all()
            .map_err(BackupError::io(format!("cannot flush {}", temp.display())))?;
        staged.push((temp, target));
        Ok(())
    });
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            for (temp, _) in &staged {
                let _ = std::fs::remove_file(temp);
            }
            return Err(e);
        }
    };
    if !manifest.files.iter().any(|f| f.path.starts_with("config/")) {
        return Err(BackupError::BadInput(format!(
            "backup {} holds no configuration files",
            manifest.id
        )));
    }
    let mut written = Vec::new();
    for (temp, target) in staged {
        std::fs::rename(&temp, &target).map_err(BackupError::io(format!(
            "cannot write {}",
            target.display()
        )))?;
        written.push(target);
    }
    Ok(written)
}
