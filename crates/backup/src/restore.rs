//! Restoring: rows stream from the archive into a staging target while the archive is
//! checked; then every table's row count and content checksum are compared with the
//! manifest. Only a staging that passed is handed back for promotion; on any error it is
//! discarded and the target was never written.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use steadyflow_store::recovery::{EXPORT_BATCH, Staging, TableSpec};

use crate::archive::{self, FileSum};
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

/// Reads a file of lines into batches for `send`.
fn stream_lines(
    reader: &mut dyn Read,
    what: &str,
    mut send: impl FnMut(Vec<String>) -> Result<()>,
) -> Result<()> {
    let mut batch = Vec::with_capacity(EXPORT_BATCH);
    for line in BufReader::with_capacity(1 << 20, reader).lines() {
        let line = line.map_err(|e| BackupError::Verify(format!("{what} cannot be read: {e}")))?;
        if line.is_empty() {
            continue;
        }
        batch.push(line);
        if batch.len() == EXPORT_BATCH {
            send(std::mem::take(&mut batch))?;
        }
    }
    if !batch.is_empty() {
        send(batch)?;
    }
    Ok(())
}

/// Reads the archive at `path` on a blocking thread, where `produce` turns its files into
/// items; `consume` takes them on this task (a bounded channel: the reader waits for it).
/// The archive's checks end the read, so what `consume` saw is trusted only once this
/// returns `Ok`. A consumer's error comes first: the reader then only saw the channel
/// close.
async fn pipe<T, P>(
    path: &Path,
    keys: &DecryptWith,
    file: Option<&FileSum>,
    mut produce: P,
    mut consume: impl AsyncFnMut(T) -> Result<()>,
) -> Result<Manifest>
where
    T: Send + 'static,
    P: FnMut(&Manifest, &FileEntry, &mut dyn Read, &mut dyn FnMut(T) -> Result<()>) -> Result<()>
        + Send
        + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<T>(4);
    let (p, k, sum) = (path.to_path_buf(), keys.clone(), file.cloned());
    let reader = tokio::task::spawn_blocking(move || {
        let mut send = |item: T| {
            tx.blocking_send(item)
                .map_err(|_| BackupError::BadInput("restore stopped".into()))
        };
        archive::read(&p, &k, sum.as_ref(), |m, f, r| produce(m, f, r, &mut send))
    });
    let mut failed = None;
    while let Some(item) = rx.recv().await {
        if let Err(e) = consume(item).await {
            failed = Some(e);
            break;
        }
    }
    drop(rx);
    let read = reader
        .await
        .map_err(|e| BackupError::BadInput(format!("archive reader failed: {e}")));
    match (failed, read) {
        (Some(e), _) | (None, Err(e)) => Err(e),
        (None, Ok(read)) => read,
    }
}

/// Restores the database tables of the archive at `path` into `staging` and checks
/// them. `max_schema` is the newest schema the target backend knows: an archive from a
/// newer schema is refused before anything is read. With `file` (from the sidecar), the
/// archive file's size and SHA-256 are checked in the same read.
pub async fn restore_tables(
    path: &Path,
    keys: &DecryptWith,
    file: Option<&FileSum>,
    mut staging: Box<dyn Staging>,
    max_schema: i64,
    progress: &Progress,
) -> Result<Staged> {
    let started = Instant::now();
    progress.stage("restoring tables");
    let mut checked = false;
    let read = pipe(
        path,
        keys,
        file,
        move |manifest, file, r, send| {
            if !checked {
                check_restorable(manifest, max_schema)?;
                checked = true;
            }
            match table_of(file)? {
                Some(table) if table.restored() => {
                    stream_lines(r, &file.path, |lines| send((table, Some(lines))))?;
                    // The end of the table's file (its bytes are checked right after).
                    send((table, None))
                }
                _ => Ok(()),
            }
        },
        async |(table, lines): (&'static TableSpec, Option<Vec<String>>)| -> Result<()> {
            match lines {
                Some(lines) => {
                    let n = lines.len() as u64;
                    staging.import(table, lines).await?;
                    progress.rows(n, 0);
                }
                None => staging.end_table(table).await?,
            }
            Ok(())
        },
    )
    .await;
    let manifest = match read.and_then(|m| check_restorable(&m, max_schema).map(|()| m)) {
        Ok(m) => m,
        Err(e) => {
            let _ = staging.discard().await;
            return Err(e);
        }
    };
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

/// Checks the whole archive: every file's size and SHA-256 (while reading), the manifest,
/// and each table file's row count. The content checksums are not recomputed here: they
/// are a function of bytes whose SHA-256 was just checked against the same manifest (a
/// restore recomputes them from the restored database, where they can differ).
pub fn verify(path: &Path, keys: &DecryptWith, sum: Option<&FileSum>) -> Result<Manifest> {
    let mut problems = Vec::new();
    let manifest = archive::read(path, keys, sum, |_, file, r| {
        if file.table.is_none() {
            return Ok(());
        }
        let mut rows = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        let mut last = b'\n';
        loop {
            let n = r
                .read(&mut buf)
                .map_err(|e| BackupError::Verify(format!("{}: {e}", file.path)))?;
            if n == 0 {
                break;
            }
            rows += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
            last = buf[n - 1];
        }
        if last != b'\n' {
            rows += 1;
        }
        if Some(rows) != file.rows {
            problems.push(format!(
                "{}: {rows} rows, the manifest says {:?}",
                file.path, file.rows
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
    sum: Option<&FileSum>,
    dest: &Path,
    force: bool,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dest)
        .map_err(BackupError::io(format!("cannot create {}", dest.display())))?;
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let result = archive::read(path, keys, sum, |_, file, r| {
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

/// A task that was completed, failed, locked or claimed after the recovery point: its
/// side effects outside the engine happened, and after the restore the engine hands it
/// out (or waits for it) again. The task id is the worker's idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayedWork {
    /// `externalTask` or `userTask`.
    pub kind: String,
    pub id: String,
    /// What happened after the recovery point: `completed` (or removed with its
    /// instance), `failed`, `locked`, `claimed`, `created`.
    pub what: String,
    /// Topic of an external task, name (or element id) of a user task.
    pub topic_or_name: Option<String>,
    /// The worker holding the lock, or the assignee.
    pub worker_or_assignee: Option<String>,
    pub instance_id: Option<String>,
    pub business_key: Option<String>,
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// Whether the task exists in the restored state (false: created after the recovery
    /// point; the instance will create it anew, under a new id).
    pub exists_after_restore: bool,
}

/// What replaying a chain's journal did.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplaySummary {
    pub incrementals: usize,
    pub rows_replayed: u64,
    pub transactions_replayed: u64,
    /// Rows of transactions after the recovery point, left out.
    pub rows_after_point: u64,
    /// Commit time of the last transaction replayed.
    pub restored_to: Option<chrono::DateTime<chrono::Utc>>,
    /// The range a `--to-time` may name with this chain.
    pub covered_from: Option<chrono::DateTime<chrono::Utc>>,
    pub covered_to: Option<chrono::DateTime<chrono::Utc>>,
    pub replay_report: Vec<ReplayedWork>,
}

/// Restores a chain (full backup first, then incrementals, as [`crate::catalog::chain`]
/// gives it) into `staging`: the full backup's tables, checked against its manifest, then
/// the incrementals' journal rows replayed in sequence order, whole transactions only,
/// up to `to_time` (every transaction committed at or before it) or to the end.
pub async fn restore_chain(
    archives: &[(std::path::PathBuf, crate::manifest::Sidecar)],
    keys: &DecryptWith,
    staging: Box<dyn Staging>,
    max_schema: i64,
    to_time: Option<chrono::DateTime<chrono::Utc>>,
    progress: &Progress,
) -> Result<(Staged, ReplaySummary)> {
    let (full_path, full) = archives
        .first()
        .ok_or_else(|| BackupError::BadInput("an empty backup chain".into()))?;
    let base = full.manifest.journal.clone().ok_or_else(|| {
        BackupError::BadInput(format!("backup {} holds no database", full.manifest.id))
    })?;
    let covered_from = base.journal_last_time.unwrap_or(full.manifest.created_at);
    let covered_to = archives
        .last()
        .map(|(_, s)| s.manifest.created_at)
        .unwrap_or(covered_from)
        .max(covered_from);
    if let Some(t) = to_time
        && (t < covered_from || t > covered_to)
    {
        return Err(BackupError::BadInput(format!(
            "{t} is outside the range this chain covers: {covered_from} .. {covered_to}"
        )));
    }
    let mut staged = restore_tables(
        full_path,
        keys,
        Some(&full.into()),
        staging,
        max_schema,
        progress,
    )
    .await?;
    let mut summary = ReplaySummary {
        covered_from: Some(covered_from),
        covered_to: Some(covered_to),
        restored_to: base.journal_last_time,
        ..Default::default()
    };
    let backend = base.backend.clone();
    let mut work: Replay = Replay::default();
    for (path, sidecar) in &archives[1..] {
        summary.incrementals += 1;
        progress.stage(&format!("replaying {}", sidecar.manifest.id));
        let read = pipe(
            path,
            keys,
            Some(&sidecar.into()),
            |_, file, r, send| {
                if file.table.as_deref() != Some("journal") {
                    return Ok(());
                }
                stream_lines(r, &file.path, send)
            },
            async |lines: Vec<String>| -> Result<()> {
                work.feed(&lines, &base, &backend, to_time, &mut staged, &mut summary)
                    .await?;
                progress.rows(lines.len() as u64, 0);
                Ok(())
            },
        )
        .await;
        if let Err(e) = read {
            let _ = staged.staging.discard().await;
            return Err(e);
        }
    }
    if let Err(e) = work.flush(&mut staged, &mut summary).await {
        let _ = staged.staging.discard().await;
        return Err(e);
    }
    match work.report(&mut staged).await {
        Ok(r) => summary.replay_report = r,
        Err(e) => {
            let _ = staged.staging.discard().await;
            return Err(e);
        }
    }
    Ok((staged, summary))
}

/// Replay state across the incrementals of a chain.
#[derive(Default)]
struct Replay {
    /// The transaction being collected: its id, rows and latest time.
    current: Option<(i64, Vec<steadyflow_store::recovery::JournalLine>)>,
    /// Last image of every task and external task seen, and business keys.
    images: std::collections::HashMap<String, serde_json::Value>,
    business_keys: std::collections::HashMap<String, String>,
    /// Task rows after the recovery point, in order.
    after: Vec<steadyflow_store::recovery::JournalLine>,
    to_time: Option<i64>,
}

impl Replay {
    async fn feed(
        &mut self,
        lines: &[String],
        base: &steadyflow_store::recovery::SnapshotInfo,
        backend: &str,
        to_time: Option<chrono::DateTime<chrono::Utc>>,
        staged: &mut Staged,
        summary: &mut ReplaySummary,
    ) -> Result<()> {
        self.to_time = to_time.map(|t| t.timestamp_millis());
        for line in lines {
            let j = steadyflow_store::recovery::JournalLine::parse(line)?;
            // Already inside the full backup's snapshot.
            if j.seq <= base.resume_seq || base.pg_snapshot.as_ref().is_some_and(|s| s.holds(j.seq))
            {
                continue;
            }
            let tx = j.transaction(backend);
            if self.current.as_ref().is_some_and(|(id, _)| *id != tx) {
                self.flush(staged, summary).await?;
            }
            self.current
                .get_or_insert_with(|| (tx, Vec::new()))
                .1
                .push(j);
        }
        Ok(())
    }

    /// Replays (or, past the recovery point, sets aside) the collected transaction.
    async fn flush(&mut self, staged: &mut Staged, summary: &mut ReplaySummary) -> Result<()> {
        let Some((_, rows)) = self.current.take() else {
            return Ok(());
        };
        let time = rows.iter().map(|r| r.tx_time).max().unwrap_or(0);
        let include = self.to_time.is_none_or(|t| time <= t);
        if include {
            let mut ops = Vec::with_capacity(rows.len());
            for r in &rows {
                ops.push(steadyflow_store::recovery::replay_op(r)?);
                self.remember(r)?;
            }
            staged.staging.replay(ops).await?;
            summary.rows_replayed += rows.len() as u64;
            summary.transactions_replayed += 1;
            summary.restored_to = chrono::DateTime::from_timestamp_millis(time);
        } else {
            summary.rows_after_point += rows.len() as u64;
            for r in rows {
                if r.entity == "task" || r.entity == "externalTask" {
                    self.after.push(r);
                } else if r.entity == "instance" {
                    self.remember(&r)?;
                }
            }
        }
        Ok(())
    }

    fn remember(&mut self, r: &steadyflow_store::recovery::JournalLine) -> Result<()> {
        if let Some(img) = r.image()? {
            if r.entity == "instance" {
                if let Some(bk) = img.get("businessKey").and_then(|v| v.as_str()) {
                    self.business_keys
                        .insert(r.entity_id.clone(), bk.to_string());
                }
            } else if r.entity == "task" || r.entity == "externalTask" {
                self.images.insert(r.entity_id.clone(), img);
            }
        }
        Ok(())
    }

    async fn report(&mut self, staged: &mut Staged) -> Result<Vec<ReplayedWork>> {
        let mut out = Vec::new();
        let (tasks, externals, instances) = (
            steadyflow_store::recovery::table("tasks"),
            steadyflow_store::recovery::table("external_tasks"),
            steadyflow_store::recovery::table("instances"),
        );
        let (Some(tasks), Some(externals), Some(instances)) = (tasks, externals, instances) else {
            return Ok(out);
        };
        for r in std::mem::take(&mut self.after) {
            let external = r.entity == "externalTask";
            let table = if external { externals } else { tasks };
            let at_point = staged
                .staging
                .lookup(table, &r.entity_id)
                .await?
                .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok());
            let image = r.image()?;
            let known = image
                .clone()
                .or_else(|| self.images.get(&r.entity_id).cloned());
            let field = |img: &Option<serde_json::Value>, camel: &str, snake: &str| {
                img.as_ref().and_then(|v| {
                    v.get(camel)
                        .or_else(|| v.get(snake))
                        .and_then(|x| x.as_str())
                        .map(str::to_string)
                })
            };
            let what = match (r.op.as_str(), external, &image) {
                ("delete", _, _) => "completed",
                ("insert", _, _) => "created",
                (_, true, Some(img)) if img.get("errorMessage").is_some_and(|e| !e.is_null()) => {
                    "failed"
                }
                (_, true, Some(img)) if img.get("workerId").is_some_and(|w| !w.is_null()) => {
                    "locked"
                }
                (_, false, Some(img)) if img.get("assignee").is_some_and(|a| !a.is_null()) => {
                    "claimed"
                }
                _ => "changed",
            };
            let src = known.clone().or(at_point.clone());
            let instance_id = field(&src, "instanceId", "instance_id");
            let mut business_key = instance_id
                .as_ref()
                .and_then(|i| self.business_keys.get(i).cloned());
            if business_key.is_none()
                && let Some(i) = &instance_id
                && let Some(line) = staged.staging.lookup(instances, i).await?
            {
                business_key = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| {
                        v.get("business_key")
                            .and_then(|b| b.as_str())
                            .map(str::to_string)
                    });
            }
            let who = if external {
                field(&image, "workerId", "worker_id")
                    .or_else(|| field(&src, "workerId", "worker_id"))
            } else {
                field(&image, "assignee", "assignee")
                    .or_else(|| field(&src, "assignee", "assignee"))
            };
            let name = if external {
                field(&src, "topic", "topic")
            } else {
                field(&src, "name", "name").or_else(|| field(&src, "activityId", "activity_id"))
            };
            out.push(ReplayedWork {
                kind: if external { "externalTask" } else { "userTask" }.into(),
                id: r.entity_id.clone(),
                what: what.into(),
                topic_or_name: name,
                worker_or_assignee: who,
                instance_id,
                business_key,
                at: r.time(),
                exists_after_restore: at_point.is_some(),
            });
        }
        Ok(out)
    }
}

/// Restores the archive's Redis keys under `prefix` of the Redis at `url`: staged while
/// the archive is read and checked, put in place only when it checked out. With
/// `force`, existing keys under the prefix are replaced and the prefix ends up holding
/// exactly the backup's keys; without it, a prefix holding keys is refused.
pub async fn restore_redis(
    path: &Path,
    keys: &DecryptWith,
    sum: Option<&FileSum>,
    url: &str,
    prefix: &str,
    force: bool,
) -> Result<crate::redis::RestoreStats> {
    enum Msg {
        Cache(Option<crate::manifest::CacheInfo>),
        Lines(Vec<String>),
    }
    let mut told = false;
    let mut staged: Option<crate::redis::KeyRestore> = None;
    let read = pipe(
        path,
        keys,
        sum,
        move |manifest, file, r, send| {
            if !told {
                send(Msg::Cache(manifest.cache.clone()))?;
                told = true;
            }
            if file.path != crate::manifest::REDIS_KEYS {
                return Ok(());
            }
            stream_lines(r, &file.path, |lines| send(Msg::Lines(lines)))
        },
        async |msg: Msg| -> Result<()> {
            match msg {
                Msg::Cache(None) => Err(BackupError::BadInput(
                    "this backup holds no Redis keys".into(),
                )),
                Msg::Cache(Some(cache)) => {
                    let opts = crate::redis::RestoreKeys {
                        replace: force,
                        clear_prefix: force,
                        ttl: crate::redis::TtlFrom::Dump(cache.dumped_at),
                    };
                    staged = Some(crate::redis::KeyRestore::begin(url, prefix, opts).await?);
                    Ok(())
                }
                Msg::Lines(lines) => {
                    if let Some(s) = staged.as_mut() {
                        for line in lines {
                            s.push(&line).await?;
                        }
                    }
                    Ok(())
                }
            }
        },
    )
    .await;
    match (read, staged) {
        (Ok(_), Some(s)) => s.promote().await,
        (Ok(m), None) => Err(BackupError::BadInput(format!(
            "backup {} holds no Redis keys",
            m.id
        ))),
        (Err(e), s) => {
            if let Some(s) = s {
                let _ = s.discard().await;
            }
            Err(e)
        }
    }
}

/// Deletes every key under `prefix`: after a database restore without Redis keys in
/// the archive, the cache must not serve what the restored database no longer holds.
pub async fn invalidate_redis(url: &str, prefix: &str) -> Result<u64> {
    let opts = crate::redis::RestoreKeys {
        replace: true,
        clear_prefix: true,
        ttl: crate::redis::TtlFrom::Restore,
    };
    let stats = crate::redis::restore_keys(url, prefix, std::iter::empty(), opts).await?;
    Ok(stats.cleared)
}
