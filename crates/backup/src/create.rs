//! Taking a backup: export → spool files (hashed and counted on the way) → archive under a
//! hidden temporary name → fsync → read back and verified → sidecar → rename.
//!
//! The rename of the archive is the commit point: `backup list` only shows archives with
//! their final name and a sidecar, so a backup killed at any moment leaves at most hidden
//! `.…partial` / `.…spool` debris, which the next backup removes.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use steadyflow_store::recovery::{
    ContentHasher, DataClass, ExportBatch, Exporter, SnapshotInfo, TABLES, TableDigest,
};

use crate::archive::{self, HashWriter, Member};
use crate::catalog;
use crate::error::{BackupError, Result};
use crate::keys::{DecryptWith, EncryptTo};
use crate::manifest::{FORMAT_VERSION, FileEntry, Kind, Manifest, Sidecar};
use crate::progress::Progress;

/// Which parts a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Parts {
    /// Database tables, configuration files, and the Redis keys when Redis is configured.
    #[default]
    All,
    DbOnly,
    ConfigOnly,
    RedisOnly,
}

impl Parts {
    fn db(self) -> bool {
        matches!(self, Parts::All | Parts::DbOnly)
    }
    fn config(self) -> bool {
        matches!(self, Parts::All | Parts::ConfigOnly)
    }
    fn cache(self) -> bool {
        matches!(self, Parts::All | Parts::RedisOnly)
    }
}

/// The Redis whose keys under `prefix` a backup holds.
#[derive(Debug, Clone)]
pub struct RedisSource {
    pub url: String,
    pub prefix: String,
}

/// A configuration file to include: its path on disk and its name in the archive
/// (`config/<name>`).
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub dir: PathBuf,
    pub parts: Parts,
    pub compress: bool,
    pub encrypt: Option<EncryptTo>,
    pub config_files: Vec<ConfigFile>,
    /// The backup's time (and name); the engine clock's now.
    pub now: DateTime<Utc>,
    /// Full, or incremental: the journal since the newest backup in `dir`.
    pub kind: Kind,
    /// Redis, when configured: its keys under the prefix go into full backups.
    pub redis: Option<RedisSource>,
    /// After the backup is verified and in place, delete the live journal's rows it
    /// holds (incrementals continue after them; point-in-time restores read archives).
    pub prune_journal: bool,
}

/// Takes a full backup. `exporter` is the database to read (`None` only with
/// [`Parts::ConfigOnly`]).
pub async fn create(
    exporter: Option<&dyn Exporter>,
    opts: &BackupOptions,
    progress: &Progress,
) -> Result<Sidecar> {
    create_inner(exporter, opts, progress, false)
        .await?
        .ok_or_else(|| BackupError::BadInput("the backup holds nothing".into()))
}

/// An incremental backup of the journal since the newest backup in `opts.dir`, or
/// nothing (`None`, no file written) when no durable journal row came after it: a
/// segment of continuous shipping.
pub async fn create_segment(
    exporter: &dyn Exporter,
    opts: &BackupOptions,
) -> Result<Option<Sidecar>> {
    let opts = BackupOptions {
        kind: Kind::Incremental,
        parts: Parts::DbOnly,
        ..opts.clone()
    };
    create_inner(Some(exporter), &opts, &Progress::none(), true).await
}

async fn create_inner(
    exporter: Option<&dyn Exporter>,
    opts: &BackupOptions,
    progress: &Progress,
    skip_empty: bool,
) -> Result<Option<Sidecar>> {
    std::fs::create_dir_all(&opts.dir).map_err(BackupError::io(format!(
        "cannot create {}",
        opts.dir.display()
    )))?;
    let _lock = catalog::DirLock::acquire(&opts.dir)?;
    catalog::remove_debris(&opts.dir)?;
    let id = catalog::new_id(&opts.dir, opts.now, opts.kind);
    let spool = opts.dir.join(format!(".{id}.spool"));
    std::fs::create_dir_all(&spool).map_err(BackupError::io(format!(
        "cannot create {}",
        spool.display()
    )))?;
    let result = build(exporter, opts, &id, &spool, progress, skip_empty).await;
    let _ = std::fs::remove_dir_all(&spool);
    if let (Ok(Some(sidecar)), Some(exporter), true) = (&result, exporter, opts.prune_journal)
        && let Some(j) = &sidecar.manifest.journal
    {
        progress.stage("pruning the journal");
        match exporter.prune_journal(j.resume_seq).await {
            Ok(n) => tracing::info!(
                rows = n,
                upto = j.resume_seq,
                "pruned journal rows inside the backup"
            ),
            // The backup stands; the rows are pruned by the next one.
            Err(e) => tracing::warn!(error = %e, "could not prune the journal"),
        }
    }
    if result.is_err() {
        // Never leave a partial archive behind a failed run (a killed run's debris is
        // removed by the next one).
        catalog::remove_debris(&opts.dir)?;
    }
    result
}

async fn build(
    exporter: Option<&dyn Exporter>,
    opts: &BackupOptions,
    id: &str,
    spool: &Path,
    progress: &Progress,
    skip_empty: bool,
) -> Result<Option<Sidecar>> {
    let mut files: Vec<(FileEntry, PathBuf)> = Vec::new();
    let mut classes = Vec::new();
    let mut snapshot = None;
    let mut parent = None;
    if opts.kind == Kind::Incremental {
        let exporter = exporter.ok_or_else(|| {
            BackupError::BadInput("an incremental backup needs a database to read".into())
        })?;
        let base = catalog::list(&opts.dir)?
            .into_iter()
            .rev()
            .find(|p| p.manifest.journal.is_some())
            .ok_or_else(|| {
                BackupError::BadInput(format!(
                    "no full backup of the database in {} to continue from; take a full backup first",
                    opts.dir.display()
                ))
            })?;
        let after = base.manifest.journal.as_ref().map_or(0, |j| j.resume_seq);
        let (info, journal) = export_journal(exporter, after, spool, progress).await?;
        if skip_empty && info.journal_last_seq.is_none() {
            return Ok(None);
        }
        if base.manifest.source_backend.as_deref() != Some(info.backend.as_str()) {
            return Err(BackupError::BadInput(format!(
                "the newest backup {} is of a {} database, this one is {}: take a full backup first",
                base.manifest.id,
                base.manifest.source_backend.as_deref().unwrap_or("-"),
                info.backend
            )));
        }
        files.push(journal);
        classes.push(DataClass::Important);
        snapshot = Some(info);
        parent = Some(base.manifest.id.clone());
    } else if opts.parts.db() {
        let exporter = exporter.ok_or_else(|| {
            BackupError::BadInput("a database backup needs a database to read".into())
        })?;
        let (info, tables) = export_tables(exporter, spool, progress).await?;
        files.extend(tables);
        classes.extend([DataClass::Critical, DataClass::Important]);
        snapshot = Some(info);
    }
    if opts.kind == Kind::Full && opts.parts.config() {
        for cf in &opts.config_files {
            files.push(spool_config(cf, spool, opts.encrypt.is_some())?);
        }
        classes.push(DataClass::Config);
    }
    let mut cache = None;
    if opts.kind == Kind::Full && opts.parts.cache() {
        match &opts.redis {
            Some(r) => {
                let (entry, info) = spool_redis(r, spool, progress).await?;
                files.push(entry);
                classes.push(DataClass::Cache);
                cache = Some(info);
            }
            None if opts.parts == Parts::RedisOnly => {
                return Err(BackupError::BadInput(
                    "no Redis is configured (STEADYFLOW_REDIS_URL)".into(),
                ));
            }
            None => {}
        }
    }
    let encrypted = opts.encrypt.as_ref().filter(|e| e.is_set());
    if opts.encrypt.is_some() && encrypted.is_none() {
        return Err(BackupError::BadInput(
            "--encrypt needs a key: set ENCRYPT_KEY or configure age recipients".into(),
        ));
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        engine_version: env!("CARGO_PKG_VERSION").to_string(),
        id: id.to_string(),
        kind: opts.kind,
        parent,
        created_at: opts.now,
        source_backend: snapshot.as_ref().map(|s| s.backend.clone()),
        schema_version: snapshot.as_ref().map(|s| s.schema_version),
        data_classes: classes,
        journal: snapshot,
        compression: if opts.compress { "zstd" } else { "none" }.into(),
        encryption: encrypted.map_or("none", |e| e.scheme()).into(),
        files: files.iter().map(|(e, _)| e.clone()).collect(),
        cache,
    };
    let name = catalog::archive_name(id, opts.compress, encrypted.is_some());
    let final_path = opts.dir.join(&name);
    let temp = opts.dir.join(format!(".{name}.partial"));
    progress.stage("writing archive");
    let (size, sha) = {
        let (temp, manifest) = (temp.clone(), manifest.clone());
        let owned: Vec<(FileEntry, PathBuf)> = files.clone();
        let (compress, enc) = (opts.compress, encrypted.cloned());
        tokio::task::spawn_blocking(move || {
            let members: Vec<Member<'_>> = owned
                .iter()
                .map(|(entry, source)| Member { entry, source })
                .collect();
            archive::write(&temp, &manifest, &members, compress, enc.as_ref())
        })
        .await
        .map_err(|e| BackupError::BadInput(format!("archive writer failed: {e}")))??
    };
    progress.stage("verifying archive");
    let read_back = {
        let temp = temp.clone();
        let expected = (size, sha.clone());
        let keys = encrypted
            .and_then(|e| e.passphrase.clone())
            .map(|p| DecryptWith {
                passphrase: Some(p),
                identity_files: Vec::new(),
            });
        let plain = encrypted.is_none();
        tokio::task::spawn_blocking(move || verify_after_write(&temp, plain, keys, expected))
            .await
            .map_err(|e| BackupError::BadInput(format!("archive reader failed: {e}")))?
    };
    let read_back = match read_back {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
    };
    if read_back.as_ref().is_some_and(|m| *m != manifest) {
        let _ = std::fs::remove_file(&temp);
        return Err(BackupError::Verify(
            "the archive read back holds another manifest than was written".into(),
        ));
    }
    let sidecar = Sidecar {
        manifest,
        archive: name,
        archive_size: size,
        archive_sha256: sha,
        verified_at: Some(Utc::now()),
    };
    catalog::write_sidecar(&opts.dir, &sidecar)?;
    std::fs::rename(&temp, &final_path).map_err(BackupError::io(format!(
        "cannot rename the archive to {}",
        final_path.display()
    )))?;
    catalog::sync_dir(&opts.dir)?;
    Ok(Some(sidecar))
}

/// Reads the new archive back from disk. A plain or passphrase archive is read whole
/// and checked against its manifest (returned); an archive for age recipients cannot be
/// opened without their private keys, so its bytes are re-read and compared with the
/// size and SHA-256 computed while writing (`backup verify` with an identity file checks
/// its content).
fn verify_after_write(
    path: &Path,
    plain: bool,
    keys: Option<DecryptWith>,
    expected: (u64, String),
) -> Result<Option<Manifest>> {
    if plain || keys.is_some() {
        let keys = keys.unwrap_or_default();
        let sum = archive::FileSum {
            size: expected.0,
            sha256: expected.1,
        };
        return archive::read(path, &keys, Some(&sum), |_, _, _| Ok(())).map(Some);
    }
    let f = File::open(path).map_err(BackupError::io(format!("cannot read {}", path.display())))?;
    let mut r = archive::HashReader::new(std::io::BufReader::new(f));
    std::io::copy(&mut r, &mut std::io::sink())
        .map_err(BackupError::io(format!("cannot read {}", path.display())))?;
    let (size, sha) = r.finish();
    if (size, sha) != expected {
        return Err(BackupError::Verify(format!(
            "{} changed on disk right after it was written",
            path.display()
        )));
    }
    Ok(None)
}

type Spooled = (FileEntry, PathBuf);

/// Runs `export` with a channel whose batches a writer thread spools to
/// `<spool>/<table>.jsonl`, hashing the bytes, and hands on to a second thread that
/// computes each table's content checksum: file writes and both checksums overlap the
/// database read and each other (the content checksum cost the writer as much as the
/// rest of its work). Returns the export's facts and the files, in the order the tables
/// came.
async fn spool_export<'a>(
    spool: &Path,
    progress: &Progress,
    stage: &str,
    export: impl FnOnce(
        tokio::sync::mpsc::Sender<ExportBatch>,
    )
        -> futures_util::future::BoxFuture<'a, steadyflow_store::Result<SnapshotInfo>>,
) -> Result<(SnapshotInfo, Vec<Spooled>)> {
    let (tx, rx) = tokio::sync::mpsc::channel::<ExportBatch>(8);
    let spool_dir = spool.to_path_buf();
    let progress_w = progress.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<Vec<Spooled>> {
        let (to_hasher, batches) = std::sync::mpsc::sync_channel::<ExportBatch>(8);
        std::thread::scope(|scope| {
            let hasher = scope.spawn(move || content_digests(batches));
            let written = write_spool(rx, &spool_dir, &progress_w, to_hasher);
            let digests = hasher
                .join()
                .map_err(|_| BackupError::BadInput("the content checksum thread failed".into()))?;
            // The hasher's error (a row that is not a JSON object) explains the writer's
            // (it could not hand on the rows).
            let digests = digests?;
            let mut files = written?;
            if digests.len() != files.len() {
                return Err(BackupError::BadInput(format!(
                    "{} tables spooled, {} checksummed",
                    files.len(),
                    digests.len()
                )));
            }
            for ((entry, _), (table, digest)) in files.iter_mut().zip(digests) {
                if entry.table.as_deref() != Some(table) || entry.rows != Some(digest.rows) {
                    return Err(BackupError::BadInput(format!(
                        "table {table}: {} rows checksummed, {:?} spooled",
                        digest.rows, entry.rows
                    )));
                }
                entry.content_sha256 = Some(digest.content_sha256);
            }
            Ok(files)
        })
    });
    progress.stage(stage);
    let info = export(tx).await;
    let files = writer
        .await
        .map_err(|e| BackupError::BadInput(format!("spool writer failed: {e}")))??;
    Ok((info?, files))
}

/// The writer thread: each batch into its table's spool file, then on to the hasher.
fn write_spool(
    mut rx: tokio::sync::mpsc::Receiver<ExportBatch>,
    dir: &Path,
    progress: &Progress,
    to_hasher: std::sync::mpsc::SyncSender<ExportBatch>,
) -> Result<Vec<Spooled>> {
    let mut done = Vec::new();
    let mut current: Option<TableSpool> = None;
    while let Some(batch) = rx.blocking_recv() {
        let table = match current.take() {
            Some(c) if c.table == batch.table.name => c,
            previous => {
                if let Some(c) = previous {
                    done.push(c.finish()?);
                }
                TableSpool::create(dir, batch.table)?
            }
        };
        let c = current.insert(table);
        for line in &batch.lines {
            c.add(line)?;
        }
        progress.rows(batch.lines.len() as u64, c.bytes());
        to_hasher
            .send(batch)
            .map_err(|_| BackupError::BadInput("the content checksum thread stopped".into()))?;
    }
    if let Some(c) = current.take() {
        done.push(c.finish()?);
    }
    Ok(done)
}

/// The hasher thread: every table's row count and content checksum, in the order the
/// tables came (a table is announced by at least one batch, possibly empty).
fn content_digests(
    batches: std::sync::mpsc::Receiver<ExportBatch>,
) -> Result<Vec<(&'static str, TableDigest)>> {
    let mut done = Vec::new();
    let mut current: Option<(&'static str, ContentHasher)> = None;
    for batch in batches {
        if current
            .as_ref()
            .is_some_and(|(t, _)| *t != batch.table.name)
            && let Some((t, h)) = current.take()
        {
            done.push((t, h.finish()));
        }
        let (_, hasher) = current.get_or_insert_with(|| (batch.table.name, ContentHasher::new()));
        for line in &batch.lines {
            hasher.add(line)?;
        }
    }
    if let Some((t, h)) = current {
        done.push((t, h.finish()));
    }
    Ok(done)
}

/// Spools the journal rows after `after` to `<spool>/journal.jsonl`.
async fn export_journal(
    exporter: &dyn Exporter,
    after: i64,
    spool: &Path,
    progress: &Progress,
) -> Result<(SnapshotInfo, Spooled)> {
    let (info, files) = spool_export(spool, progress, "exporting the journal", |tx| {
        exporter.export_journal(after, tx)
    })
    .await?;
    let file = files.into_iter().next().ok_or_else(|| {
        BackupError::Store(steadyflow_store::StoreError::Backend(
            "the journal export sent nothing".into(),
        ))
    })?;
    Ok((info, file))
}

/// Spools every table; an export that skipped a table is refused.
async fn export_tables(
    exporter: &dyn Exporter,
    spool: &Path,
    progress: &Progress,
) -> Result<(SnapshotInfo, Vec<Spooled>)> {
    let (info, files) = spool_export(spool, progress, "exporting tables", |tx| {
        exporter.export(tx)
    })
    .await?;
    let missing: Vec<&str> = TABLES
        .iter()
        .filter(|t| {
            !files
                .iter()
                .any(|(f, _)| f.table.as_deref() == Some(t.name))
        })
        .map(|t| t.name)
        .collect();
    if !missing.is_empty() {
        return Err(BackupError::Store(steadyflow_store::StoreError::Backend(
            format!("the export skipped tables {missing:?}"),
        )));
    }
    Ok((info, files))
}

struct TableSpool {
    table: &'static str,
    class: DataClass,
    path: PathBuf,
    out: HashWriter<BufWriter<File>>,
    rows: u64,
    bytes: u64,
}

impl TableSpool {
    fn create(dir: &Path, table: &'static steadyflow_store::recovery::TableSpec) -> Result<Self> {
        let path = dir.join(format!("{}.jsonl", table.name));
        let file = File::create(&path)
            .map_err(BackupError::io(format!("cannot create {}", path.display())))?;
        Ok(TableSpool {
            table: table.name,
            class: table.class,
            path,
            out: HashWriter::new(BufWriter::with_capacity(1 << 20, file)),
            rows: 0,
            bytes: 0,
        })
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn add(&mut self, line: &str) -> Result<()> {
        let werr = || BackupError::io(format!("cannot write {}", self.path.display()));
        self.out.write_all(line.as_bytes()).map_err(werr())?;
        self.out.write_all(b"\n").map_err(werr())?;
        self.bytes += line.len() as u64 + 1;
        self.rows += 1;
        Ok(())
    }

    fn finish(self) -> Result<(FileEntry, PathBuf)> {
        let (buf, size, sha) = self.out.finish();
        buf.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .map_err(BackupError::io(format!(
                "cannot write {}",
                self.path.display()
            )))?;
        Ok((
            FileEntry {
                path: format!("tables/{}.jsonl", self.table),
                size,
                sha256: sha,
                class: self.class,
                table: Some(self.table.to_string()),
                rows: Some(self.rows),
                // Filled in from the hasher thread (see `spool_export`).
                content_sha256: None,
            },
            self.path,
        ))
    }
}

/// Dumps the Redis keys under the prefix into the spool.
async fn spool_redis(
    r: &RedisSource,
    spool: &Path,
    progress: &Progress,
) -> Result<((FileEntry, PathBuf), crate::manifest::CacheInfo)> {
    progress.stage("dumping Redis keys");
    let path = spool.join("redis-keys.jsonl");
    let file = File::create(&path)
        .map_err(BackupError::io(format!("cannot create {}", path.display())))?;
    let mut out = HashWriter::new(BufWriter::with_capacity(1 << 20, file));
    let stats = crate::redis::dump_keys(&r.url, &r.prefix, &mut out).await?;
    let (buf, size, sha) = out.finish();
    buf.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .map_err(BackupError::io(format!("cannot write {}", path.display())))?;
    Ok((
        (
            FileEntry {
                path: crate::manifest::REDIS_KEYS.into(),
                size,
                sha256: sha,
                class: DataClass::Cache,
                table: None,
                rows: Some(stats.keys),
                content_sha256: None,
            },
            path,
        ),
        crate::manifest::CacheInfo {
            prefix: r.prefix.clone(),
            keys: stats.keys,
            dumped_at: stats.dumped_at,
        },
    ))
}

/// Keys whose values are secrets in configuration files.
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "encrypt_key",
        "access_key",
        "private_key",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// Copies a config file into the spool. Without encryption, secret values (keys named
/// like passwords, tokens, secrets; passwords inside URLs) are replaced by
/// `<redacted>`: secrets are only ever stored encrypted.
fn spool_config(cf: &ConfigFile, spool: &Path, encrypted: bool) -> Result<(FileEntry, PathBuf)> {
    let text = std::fs::read_to_string(&cf.path).map_err(BackupError::io(format!(
        "cannot read {}",
        cf.path.display()
    )))?;
    let text = if encrypted {
        text
    } else {
        redact_secrets(&text)
    };
    let name = cf.name.replace(['/', '\\'], "_");
    let dest = spool.join(format!("config-{name}"));
    std::fs::write(&dest, &text)
        .map_err(BackupError::io(format!("cannot write {}", dest.display())))?;
    let mut hw = HashWriter::new(std::io::sink());
    hw.write_all(text.as_bytes())
        .map_err(BackupError::io("hashing a config file"))?;
    let (_, size, sha) = hw.finish();
    Ok((
        FileEntry {
            path: format!("config/{name}"),
            size,
            sha256: sha,
            class: DataClass::Config,
            table: None,
            rows: None,
            content_sha256: None,
        },
        dest,
    ))
}

/// Line-based redaction for YAML-like `key: value` files and URLs with credentials.
pub fn redact_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let redacted = match line.split_once(':') {
            Some((key, value))
                if is_secret_key(key.trim().trim_start_matches('-').trim())
                    && !value.trim().is_empty() =>
            {
                format!("{key}: \"<redacted>\"")
            }
            _ => redact_url_password(line),
        };
        out.push_str(&redacted);
        out.push('\n');
    }
    out
}

/// `scheme://user:password@host` → `scheme://user:<redacted>@host`.
fn redact_url_password(line: &str) -> String {
    let Some(start) = line.find("://") else {
        return line.to_string();
    };
    let rest = &line[start + 3..];
    let end = rest.find(['/', ' ', '"', '\'']).unwrap_or(rest.len());
    let authority = &rest[..end];
    match authority.rfind('@') {
        Some(at) => match authority[..at].split_once(':') {
            Some((user, _)) => format!(
                "{}{}:<redacted>{}",
                &line[..start + 3],
                user,
                &line[start + 3 + at..]
            ),
            None => line.to_string(),
        },
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_from_plain_config() {
        let text = "listen: 0.0.0.0:8080\ndatabase_url: postgres://app:hunter2@db/steadyflow\nadmin_token: abc\n  password: x\n";
        let r = redact_secrets(text);
        assert!(
            !r.contains("hunter2") && !r.contains("abc") && !r.contains(": x"),
            "{r}"
        );
        assert!(r.contains("postgres://app:<redacted>@db/steadyflow"), "{r}");
        assert!(r.contains("listen: 0.0.0.0:8080"), "{r}");
    }
}
