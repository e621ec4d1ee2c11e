//! Copies of the recovery points beyond the backup directory: other local directories and
//! S3-compatible buckets (`backup.targets` in the configuration), through `object_store`.
//!
//! The backup directory stays the working copy: a backup is written and verified there
//! first, then every target receives it. On a target, the archive goes up first (a
//! multipart upload), is read back whole and checked against the size and SHA-256 of its
//! sidecar, and only then is the sidecar (`<id>.manifest.json`) written. A target lists
//! only sidecars whose archive is there with the recorded size, so a half-uploaded or
//! unverified archive is never a recovery point. An upload killed half-way leaves an
//! archive without its sidecar (or an unfinished multipart upload); the next backup sees
//! the point missing on that target and uploads it again ([`sync`]). On S3 that upload
//! resumes: each part's ETag is recorded (`.uploads/` in the backup directory) before the
//! next part goes, so only the parts the bucket lacks are sent.
//!
//! Restores take each archive of the chain from the nearest intact copy: the backup
//! directory, then the targets in configuration order. A copy that does not match its
//! sidecar is refused with a warning, and the next is tried ([`fetch_chain`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::catalog;
use crate::error::{BackupError, Result};
use crate::manifest::Sidecar;
use crate::s3lock::{Retention, S3Access};

/// Multipart chunk size: S3's minimum part (5 MiB) is the floor; 8 MiB keeps two parts in
/// flight within a few tens of MiB of memory. Resumable (S3) uploads send one part at a
/// time and record it before the next.
const PART_SIZE: usize = 8 << 20;
/// Parts uploaded concurrently (local targets).
const PARTS_IN_FLIGHT: usize = 2;

/// One target in `backup.targets`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum TargetSpec {
    /// A directory (another disk, a mounted share).
    Local { path: PathBuf },
    /// An S3-compatible bucket. Credentials come from the config or, when absent, from
    /// the standard `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` environment.
    S3 {
        #[serde(default)]
        endpoint: Option<String>,
        #[serde(default = "default_region")]
        region: String,
        bucket: String,
        #[serde(default)]
        prefix: String,
        /// `http://host/bucket/key` instead of `http://bucket.host/key` (MinIO, moto).
        #[serde(default)]
        path_style: bool,
        #[serde(default)]
        access_key_id: Option<String>,
        #[serde(default)]
        secret_access_key: Option<String>,
        /// S3 Object Lock retention set on every uploaded object.
        #[serde(default)]
        object_lock: Option<ObjectLock>,
    },
}

fn default_region() -> String {
    "us-east-1".into()
}

/// Never prints a secret key.
impl std::fmt::Debug for TargetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetSpec::Local { path } => f.debug_struct("Local").field("path", path).finish(),
            TargetSpec::S3 {
                endpoint,
                region,
                bucket,
                prefix,
                path_style,
                access_key_id,
                secret_access_key,
                object_lock,
            } => f
                .debug_struct("S3")
                .field("endpoint", endpoint)
                .field("region", region)
                .field("bucket", bucket)
                .field("prefix", prefix)
                .field("path_style", path_style)
                .field("access_key_id", access_key_id)
                .field(
                    "secret_access_key",
                    &secret_access_key.as_ref().map(|_| "***"),
                )
                .field("object_lock", object_lock)
                .finish(),
        }
    }
}

/// S3 Object Lock retention for uploaded objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLock {
    pub mode: LockMode,
    pub days: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    Compliance,
    Governance,
}

impl TargetSpec {
    /// How `backup list` names the target: `local:PATH` or `s3://bucket/prefix`.
    pub fn name(&self) -> String {
        match self {
            TargetSpec::Local { path } => format!("local:{}", path.display()),
            TargetSpec::S3 { bucket, prefix, .. } => {
                format!("s3://{bucket}/{}", prefix.trim_matches('/'))
                    .trim_end_matches('/')
                    .to_string()
            }
        }
    }
}

/// An opened target.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub spec: TargetSpec,
    store: Arc<dyn ObjectStore>,
    /// The same bucket's multipart calls, for uploads that resume after a crash (S3
    /// targets; a local target copies in one go).
    parts: Option<Multipart>,
    prefix: String,
    /// S3 Object Lock: the signed retention requests and the retention to set.
    lock: Option<(S3Access, ObjectLock)>,
}

/// A bucket's multipart calls.
#[derive(Clone)]
struct Multipart(Arc<dyn MultipartStore>);

impl std::fmt::Debug for Multipart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Multipart")
    }
}

/// Where an upload to an S3 target stands, kept beside the archive in the backup
/// directory (`.uploads/<target>/<archive>.json`) after every part, so that a crashed
/// upload goes on from its last part instead of from the start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UploadState {
    /// The archive's SHA-256: an upload of another archive of that name starts anew.
    archive_sha256: String,
    part_size: usize,
    upload_id: String,
    /// The ids (ETags) of the parts uploaded so far, in order.
    parts: Vec<String>,
}

/// How an upload went: parts sent now, and parts found already uploaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadReport {
    pub parts_sent: usize,
    pub parts_resumed: usize,
}

fn remote(target: &str, what: &str, e: impl std::fmt::Display) -> BackupError {
    BackupError::Remote(format!("{target}: {what}: {e}"))
}

/// Installs the process-wide TLS provider (ring) that the S3 client's HTTPS needs.
pub(crate) fn tls_provider() {
    // Err means one is installed already, which is all that matters.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Target {
    pub fn open(spec: &TargetSpec) -> Result<Target> {
        let name = spec.name();
        let mut lock = None;
        let mut parts: Option<Multipart> = None;
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match spec {
            TargetSpec::Local { path } => {
                std::fs::create_dir_all(path)
                    .map_err(BackupError::io(format!("cannot create {}", path.display())))?;
                let fs = LocalFileSystem::new_with_prefix(path)
                    .map_err(|e| remote(&name, "cannot open", e))?;
                (Arc::new(fs), String::new())
            }
            TargetSpec::S3 {
                endpoint,
                region,
                bucket,
                prefix,
                path_style,
                access_key_id,
                secret_access_key,
                object_lock,
            } => {
                tls_provider();
                if let Some(l) = object_lock {
                    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
                    let access = S3Access {
                        endpoint: endpoint
                            .clone()
                            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"))
                            .trim_end_matches('/')
                            .to_string(),
                        region: region.clone(),
                        bucket: bucket.clone(),
                        path_style: *path_style,
                        access_key_id: access_key_id
                            .clone()
                            .or_else(|| env("AWS_ACCESS_KEY_ID"))
                            .ok_or_else(|| {
                                BackupError::BadInput(format!(
                                    "{name}: object_lock needs credentials (access_key_id or AWS_ACCESS_KEY_ID)"
                                ))
                            })?,
                        secret_access_key: secret_access_key
                            .clone()
                            .or_else(|| env("AWS_SECRET_ACCESS_KEY"))
                            .ok_or_else(|| {
                                BackupError::BadInput(format!(
                                    "{name}: object_lock needs credentials (secret_access_key or AWS_SECRET_ACCESS_KEY)"
                                ))
                            })?,
                        session_token: env("AWS_SESSION_TOKEN"),
                    };
                    lock = Some((access, l.clone()));
                }
                // A dead target fails the backup in seconds, not after the client's
                // default three minutes of retries; transient errors are still retried.
                let retry = object_store::RetryConfig {
                    max_retries: 3,
                    retry_timeout: std::time::Duration::from_secs(30),
                    ..Default::default()
                };
                let mut b = AmazonS3Builder::from_env()
                    .with_retry(retry)
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_virtual_hosted_style_request(!path_style);
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
                }
                if let Some(k) = access_key_id {
                    b = b.with_access_key_id(k);
                }
                if let Some(k) = secret_access_key {
                    b = b.with_secret_access_key(k);
                }
                let s3 = Arc::new(b.build().map_err(|e| remote(&name, "cannot open", e))?);
                parts = Some(Multipart(s3.clone()));
                (s3, prefix.trim_matches('/').to_string())
            }
        };
        Ok(Target {
            name,
            spec: spec.clone(),
            store,
            parts,
            prefix,
            lock,
        })
    }

    /// Puts the object `file` under the configured Object Lock retention.
    async fn lock(&self, file: &str) -> Result<()> {
        if let Some((access, l)) = &self.lock {
            let retention = Retention {
                mode: l.mode,
                until: chrono::Utc::now() + chrono::Duration::days(i64::from(l.days)),
            };
            access
                .put_retention(self.key(file).as_ref(), &retention)
                .await?;
        }
        Ok(())
    }

    /// The Object Lock retention of a recovery point's archive (`None` without a lock).
    pub async fn retention(&self, sidecar: &Sidecar) -> Result<Option<Retention>> {
        match &self.lock {
            Some((access, _)) => access.retention(self.key(&sidecar.archive).as_ref()).await,
            None => Ok(None),
        }
    }

    fn key(&self, file: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(file)
        } else {
            ObjPath::from(format!("{}/{file}", self.prefix))
        }
    }

    /// The recovery points on this target, oldest first: sidecars whose archive is
    /// present with the size the sidecar recorded.
    pub async fn list(&self) -> Result<Vec<Sidecar>> {
        let prefix = (!self.prefix.is_empty()).then(|| ObjPath::from(self.prefix.as_str()));
        let mut sizes = BTreeMap::new();
        let mut sidecars = Vec::new();
        let mut stream = self.store.list(prefix.as_ref());
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| remote(&self.name, "cannot list", e))?;
            let Some(file) = meta.location.filename().map(str::to_string) else {
                continue;
            };
            // Only objects directly under the prefix belong to this catalog.
            if meta.location != self.key(&file) || file.starts_with('.') {
                continue;
            }
            if file.ends_with(".manifest.json") {
                sidecars.push(meta.location.clone());
            }
            sizes.insert(file, meta.size);
        }
        let mut out = Vec::new();
        for location in sidecars {
            let bytes = match self.store.get(&location).await {
                Ok(r) => r
                    .bytes()
                    .await
                    .map_err(|e| remote(&self.name, "cannot read", e))?,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(remote(&self.name, "cannot read", e)),
            };
            let Ok(sidecar) = serde_json::from_slice::<Sidecar>(&bytes) else {
                tracing::warn!(target = %self.name, object = %location, "unreadable sidecar skipped");
                continue;
            };
            if sizes.get(&sidecar.archive) == Some(&sidecar.archive_size) {
                out.push(sidecar);
            }
        }
        out.sort_by(|a, b| {
            (a.manifest.created_at, &a.manifest.id).cmp(&(b.manifest.created_at, &b.manifest.id))
        });
        Ok(out)
    }

    /// Uploads the recovery point `sidecar` from the backup directory `dir`: the archive
    /// (multipart; on S3 resumed from its last part when an earlier upload was cut off),
    /// read back and checked, then the sidecar.
    pub async fn upload(&self, dir: &Path, sidecar: &Sidecar) -> Result<()> {
        self.upload_parts(dir, sidecar, None).await.map(|_| ())
    }

    /// [`upload`](Self::upload), stopping after `stop_after` parts of the archive have
    /// gone up on an S3 target, as a crash would (tests of the resumption).
    #[doc(hidden)]
    pub async fn upload_parts(
        &self,
        dir: &Path,
        sidecar: &Sidecar,
        stop_after: Option<usize>,
    ) -> Result<UploadReport> {
        let key = self.key(&sidecar.archive);
        let report = match &self.parts {
            Some(parts) => {
                match self
                    .resumable_upload(parts.0.as_ref(), dir, sidecar, &key, stop_after)
                    .await?
                {
                    Some(report) => report,
                    None => return Ok(UploadReport::default()),
                }
            }
            None => {
                self.whole_upload(dir, sidecar, &key).await?;
                UploadReport::default()
            }
        };
        self.finish_upload(sidecar, &key).await?;
        Ok(report)
    }

    /// The archive in parts, each recorded in its [`UploadState`] before the next; a
    /// state left by a cut-off upload of the same archive is continued. `None` when it
    /// stopped early (`stop_after`).
    async fn resumable_upload(
        &self,
        parts: &dyn MultipartStore,
        dir: &Path,
        sidecar: &Sidecar,
        key: &ObjPath,
        stop_after: Option<usize>,
    ) -> Result<Option<UploadReport>> {
        let state_path = dir
            .join(".uploads")
            .join(sanitize(&self.name))
            .join(format!("{}.json", sidecar.archive));
        let mut state = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice::<UploadState>(&bytes)
                .ok()
                .filter(|s| s.archive_sha256 == sidecar.archive_sha256 && s.part_size == PART_SIZE),
            Err(_) => None,
        };
        let resumed = state.as_ref().map_or(0, |s| s.parts.len());
        if resumed > 0 {
            tracing::info!(target = %self.name, archive = %sidecar.archive, parts = resumed, "resuming a cut-off upload");
        }
        let state = match &mut state {
            Some(s) => s,
            None => {
                let id = parts
                    .create_multipart(key)
                    .await
                    .map_err(|e| remote(&self.name, "cannot start the upload", e))?;
                state.insert(UploadState {
                    archive_sha256: sidecar.archive_sha256.clone(),
                    part_size: PART_SIZE,
                    upload_id: id,
                    parts: Vec::new(),
                })
            }
        };
        write_state(&state_path, state)?;
        let path = dir.join(&sidecar.archive);
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(BackupError::io(format!("cannot open {}", path.display())))?;
        let total = (sidecar.archive_size as usize).div_ceil(PART_SIZE).max(1);
        // The parts already up are skipped once; the rest are read in order.
        use tokio::io::AsyncSeekExt;
        file.seek(std::io::SeekFrom::Start(
            (state.parts.len() * PART_SIZE) as u64,
        ))
        .await
        .map_err(BackupError::io(format!("cannot read {}", path.display())))?;
        let mut sent = 0;
        let mut buf = vec![0u8; PART_SIZE];
        for idx in state.parts.len()..total {
            if stop_after.is_some_and(|n| sent >= n) {
                return Ok(None);
            }
            let mut len = 0;
            while len < PART_SIZE {
                let n = file
                    .read(&mut buf[len..])
                    .await
                    .map_err(BackupError::io(format!("cannot read {}", path.display())))?;
                if n == 0 {
                    break;
                }
                len += n;
            }
            let part = parts
                .put_part(
                    key,
                    &state.upload_id,
                    idx,
                    PutPayload::from(buf[..len].to_vec()),
                )
                .await
                .map_err(|e| remote(&self.name, "upload failed", e))?;
            state.parts.push(part.content_id);
            write_state(&state_path, state)?;
            sent += 1;
        }
        let ids = state
            .parts
            .iter()
            .map(|id| PartId {
                content_id: id.clone(),
            })
            .collect();
        let done = parts.complete_multipart(key, &state.upload_id, ids).await;
        // Whatever the answer, this upload is over: a failed one starts anew next time.
        let _ = std::fs::remove_file(&state_path);
        done.map_err(|e| remote(&self.name, "upload failed", e))?;
        Ok(Some(UploadReport {
            parts_sent: sent,
            parts_resumed: resumed,
        }))
    }

    /// The archive in one multipart upload (local targets).
    async fn whole_upload(&self, dir: &Path, sidecar: &Sidecar, key: &ObjPath) -> Result<()> {
        let path = dir.join(&sidecar.archive);
        let upload = self
            .store
            .put_multipart(key)
            .await
            .map_err(|e| remote(&self.name, "cannot start the upload", e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(BackupError::io(format!("cannot open {}", path.display())))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file
                .read(&mut buf)
                .await
                .map_err(BackupError::io(format!("cannot read {}", path.display())))?;
            if n == 0 {
                break;
            }
            if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                return Err(remote(&self.name, "upload failed", e));
            }
            writer.write(&buf[..n]);
        }
        writer
            .finish()
            .await
            .map_err(|e| remote(&self.name, "upload failed", e))?;
        Ok(())
    }

    /// After the archive went up: read it back and check it, lock it, then the sidecar.
    async fn finish_upload(&self, sidecar: &Sidecar, key: &ObjPath) -> Result<()> {
        // Read back whole: the bucket holds what the sidecar promises, or no sidecar goes up.
        let (size, sha) = self.digest(key).await?;
        if size != sidecar.archive_size || sha != sidecar.archive_sha256 {
            return Err(BackupError::Verify(format!(
                "{}: {} read back as {size} bytes with SHA-256 {sha}; it was uploaded as {} \
                 bytes with {}",
                self.name, sidecar.archive, sidecar.archive_size, sidecar.archive_sha256
            )));
        }
        // Locked before the sidecar makes it a recovery point: a listed point is immutable.
        self.lock(&sidecar.archive).await?;
        let sidecar_file = format!("{}.manifest.json", sidecar.manifest.id);
        let text = serde_json::to_vec_pretty(sidecar)
            .map_err(|e| BackupError::BadInput(format!("sidecar cannot be written: {e}")))?;
        self.store
            .put(&self.key(&sidecar_file), PutPayload::from(text))
            .await
            .map_err(|e| remote(&self.name, "cannot write the sidecar", e))?;
        self.lock(&sidecar_file).await?;
        tracing::info!(target = %self.name, backup = %sidecar.manifest.id, bytes = size, "backup uploaded and verified");
        Ok(())
    }

    /// Size and SHA-256 of an object, read whole.
    async fn digest(&self, key: &ObjPath) -> Result<(u64, String)> {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let got = self
            .store
            .get(key)
            .await
            .map_err(|e| remote(&self.name, "cannot read back", e))?;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| remote(&self.name, "cannot read back", e))?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
        }
        Ok((size, hex(&hasher.finalize())))
    }

    /// Downloads the archive of `sidecar` into `dir` (under a hidden name, renamed once it
    /// matches the sidecar's size and SHA-256) and writes the sidecar beside it. A copy
    /// that does not match is refused ([`BackupError::Verify`]) and nothing is left.
    pub async fn download(&self, sidecar: &Sidecar, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir)
            .map_err(BackupError::io(format!("cannot create {}", dir.display())))?;
        let dest = dir.join(&sidecar.archive);
        let temp = dir.join(format!(".{}.download.partial", sidecar.archive));
        let got = self
            .store
            .get(&self.key(&sidecar.archive))
            .await
            .map_err(|e| remote(&self.name, "cannot download", e))?;
        let file = std::fs::File::create(&temp)
            .map_err(BackupError::io(format!("cannot write {}", temp.display())))?;
        let mut w = crate::archive::HashWriter::new(std::io::BufWriter::new(file));
        let mut stream = got.into_stream();
        let result = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| remote(&self.name, "cannot download", e))?;
                w.write_all(&chunk)
                    .map_err(BackupError::io(format!("cannot write {}", temp.display())))?;
            }
            Ok::<(), BackupError>(())
        }
        .await;
        let (inner, size, sha) = w.finish();
        let written = result.and_then(|()| {
            inner
                .into_inner()
                .map_err(|e| {
                    BackupError::io(format!("cannot write {}", temp.display()))(e.into_error())
                })?
                .sync_all()
                .map_err(BackupError::io(format!("cannot flush {}", temp.display())))
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        if size != sidecar.archive_size || sha != sidecar.archive_sha256 {
            let _ = std::fs::remove_file(&temp);
            return Err(BackupError::Verify(format!(
                "the copy of {} on {} is {size} bytes with SHA-256 {sha}; when written it was {} \
                 bytes with {}",
                sidecar.archive, self.name, sidecar.archive_size, sidecar.archive_sha256
            )));
        }
        std::fs::rename(&temp, &dest)
            .map_err(BackupError::io(format!("cannot write {}", dest.display())))?;
        catalog::write_sidecar(dir, sidecar)?;
        catalog::sync_dir(dir)?;
        Ok(dest)
    }

    /// Deletes a recovery point from this target: the sidecar first (so it stops being
    /// listed), then the archive.
    pub async fn delete(&self, sidecar: &Sidecar) -> Result<()> {
        if let Some(r) = self.retention(sidecar).await?
            && r.until > chrono::Utc::now()
        {
            return Err(BackupError::Locked(format!(
                "{} on {} is under Object Lock ({:?}) until {}",
                sidecar.manifest.id, self.name, r.mode, r.until
            )));
        }
        for file in [
            format!("{}.manifest.json", sidecar.manifest.id),
            sidecar.archive.clone(),
        ] {
            match self.store.delete(&self.key(&file)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(remote(&self.name, &format!("cannot delete {file}"), e)),
            }
        }
        Ok(())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Opens every configured target.
pub fn open_all(specs: &[TargetSpec]) -> Result<Vec<Target>> {
    specs.iter().map(Target::open).collect()
}

/// What happened on one target.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncOutcome {
    pub target: String,
    /// Recovery points uploaded now (the new one, and any the target was missing).
    pub uploaded: Vec<String>,
    /// Why the target failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Uploads to every target each recovery point of `dir` that it does not hold yet, oldest
/// first (so parents go up before their incrementals). A target that fails does not stop
/// the others; its error is in its outcome.
pub async fn sync(dir: &Path, targets: &[Target]) -> Result<Vec<SyncOutcome>> {
    let local = catalog::list(dir)?;
    remove_stale_upload_states(dir);
    let mut out = Vec::new();
    for t in targets {
        let mut outcome = SyncOutcome {
            target: t.name.clone(),
            uploaded: Vec::new(),
            error: None,
        };
        let result = async {
            let there: Vec<String> = t.list().await?.into_iter().map(|s| s.manifest.id).collect();
            for s in local.iter().filter(|s| !there.contains(&s.manifest.id)) {
                t.upload(dir, s).await?;
                outcome.uploaded.push(s.manifest.id.clone());
            }
            Ok::<(), BackupError>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(target = %t.name, error = %e, "backup target failed");
            outcome.error = Some(e.to_string());
        }
        out.push(outcome);
    }
    Ok(out)
}

/// A recovery point and every place that holds it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Located {
    #[serde(flatten)]
    pub sidecar: Sidecar,
    /// `local` (the backup directory) and the names of the targets, nearest first.
    pub locations: Vec<String>,
}

/// The name of the backup directory among the locations.
pub const LOCAL: &str = "local";

/// Every recovery point in the backup directory or on a target, oldest first, with where
/// each one exists. A target that cannot be listed is reported in the second value and
/// left out.
pub async fn list_all(dir: &Path, targets: &[Target]) -> Result<(Vec<Located>, Vec<String>)> {
    let mut by_id: BTreeMap<String, Located> = BTreeMap::new();
    for s in catalog::list(dir)? {
        by_id.insert(
            s.manifest.id.clone(),
            Located {
                sidecar: s,
                locations: vec![LOCAL.into()],
            },
        );
    }
    let mut failed = Vec::new();
    for t in targets {
        match t.list().await {
            Ok(points) => {
                for s in points {
                    by_id
                        .entry(s.manifest.id.clone())
                        .or_insert_with(|| Located {
                            sidecar: s,
                            locations: Vec::new(),
                        })
                        .locations
                        .push(t.name.clone());
                }
            }
            Err(e) => {
                tracing::warn!(target = %t.name, error = %e, "backup target cannot be listed");
                failed.push(format!("{}: {e}", t.name));
            }
        }
    }
    let mut out: Vec<Located> = by_id.into_values().collect();
    out.sort_by(|a, b| {
        (a.sidecar.manifest.created_at, &a.sidecar.manifest.id)
            .cmp(&(b.sidecar.manifest.created_at, &b.sidecar.manifest.id))
    });
    Ok((out, failed))
}

/// Makes `what` (`latest` or an id) restorable from `dir`: every archive of its chain is
/// put into `dir` from the nearest intact copy, the backup directory's own first, then
/// the targets in order; a copy that does not match its sidecar is refused and the next
/// one used. Returns what was fetched from where (empty when `dir` had it all). Names
/// that are neither `latest` nor a known id are left to [`catalog::resolve`].
pub async fn fetch_chain(dir: &Path, targets: &[Target], what: &str) -> Result<Vec<String>> {
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let (points, _) = list_all(dir, targets).await?;
    let point = if what == "latest" {
        points.last()
    } else {
        points
            .iter()
            .find(|p| p.sidecar.manifest.id == what || p.sidecar.archive == what)
    };
    let Some(point) = point else {
        return Ok(Vec::new());
    };
    let sidecars: Vec<Sidecar> = points.iter().map(|p| p.sidecar.clone()).collect();
    let chain = catalog::chain_in(
        &sidecars,
        &point.sidecar,
        "the backup directory or any target",
    )?;
    let mut fetched = Vec::new();
    for link in chain {
        let located = points
            .iter()
            .find(|p| p.sidecar.manifest.id == link.manifest.id)
            .map(|p| p.locations.clone())
            .unwrap_or_default();
        let local_path = dir.join(&link.archive);
        if located.iter().any(|l| l == LOCAL) {
            let (p, s) = (local_path.clone(), link.clone());
            let ok = tokio::task::spawn_blocking(move || catalog::check_file(&p, Some(&s)))
                .await
                .map_err(|e| BackupError::BadInput(format!("check failed: {e}")))?;
            match ok {
                Ok(()) => continue,
                Err(e) => tracing::warn!(backup = %link.manifest.id, error = %e,
                    "the backup directory's copy is damaged; trying the targets"),
            }
        }
        let mut refused = Vec::new();
        let mut got = false;
        for t in targets.iter().filter(|t| located.contains(&t.name)) {
            match t.download(&link, dir).await {
                Ok(_) => {
                    fetched.push(format!("{} from {}", link.manifest.id, t.name));
                    got = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(backup = %link.manifest.id, target = %t.name, error = %e,
                        "copy refused; trying the next target");
                    refused.push(e.to_string());
                }
            }
        }
        if !got {
            return Err(BackupError::Verify(format!(
                "no intact copy of {} in {}: {}",
                link.manifest.id,
                located.join(", "),
                refused.join("; ")
            )));
        }
    }
    Ok(fetched)
}

/// Removes the states of cut-off uploads whose archive is no longer in `dir` (pruned or
/// folded since): nothing will resume them.
fn remove_stale_upload_states(dir: &Path) {
    let Ok(targets) = std::fs::read_dir(dir.join(".uploads")) else {
        return;
    };
    for target in targets.flatten() {
        let Ok(states) = std::fs::read_dir(target.path()) else {
            continue;
        };
        for state in states.flatten() {
            let name = state.file_name().to_string_lossy().to_string();
            let archive = name
                .strip_suffix(".json.tmp")
                .or_else(|| name.strip_suffix(".json"));
            if archive.is_some_and(|a| !dir.join(a).exists()) {
                tracing::debug!(state = %state.path().display(), "removing the state of an upload that will not resume");
                let _ = std::fs::remove_file(state.path());
            }
        }
    }
}

/// A target's name as a file name.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes an upload's state atomically (a new file renamed over the old one).
fn write_state(path: &Path, state: &UploadState) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(BackupError::io(format!("cannot create {}", dir.display())))?;
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec(state)
        .map_err(|e| BackupError::BadInput(format!("upload state cannot be written: {e}")))?;
    std::fs::write(&tmp, text)
        .map_err(BackupError::io(format!("cannot write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(BackupError::io(format!("cannot write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_states_of_archives_gone_are_removed_and_the_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kept.tar.zst"), b"archive").unwrap();
        let states = dir.path().join(".uploads").join("s3_bucket");
        std::fs::create_dir_all(&states).unwrap();
        for name in [
            "kept.tar.zst.json",
            "gone.tar.zst.json",
            "gone.tar.zst.json.tmp",
        ] {
            std::fs::write(states.join(name), b"{}").unwrap();
        }
        remove_stale_upload_states(dir.path());
        let mut left: Vec<String> = std::fs::read_dir(&states)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        left.sort();
        assert_eq!(left, vec!["kept.tar.zst.json".to_string()]);
    }
}
