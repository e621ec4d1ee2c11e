//! The Redis keys under the engine's prefix: dumped to JSON Lines, restored through staging.
//!
//! **Dump** ([`dump_keys`]): `SCAN` (never `KEYS`, which blocks the server) with
//! `MATCH <prefix>*`, then every key is read with `MULTI TYPE PTTL DUMP EXEC`, so its type,
//! TTL and payload belong together (one key at a time is atomic, the server is never held
//! for a whole batch), pipelined [`BATCH_KEYS`] keys per round trip. One line per key:
//!
//! ```json
//! {"key":"sf:lock:7","type":"string","ttlMs":29500,"dump":"AAVoZWxsbwsAdY…"}
//! ```
//!
//! `ttlMs` is `PTTL` (`null` for a key without TTL); `dump` is base64 of `DUMP`, which
//! `RESTORE` turns back into exactly that key, whatever its type. A key that is not UTF-8
//! is written as `"keyBase64"` instead of `"key"`. A key `SCAN` named but that was gone when
//! it was read is skipped and counted. `SCAN` may name a key twice (while Redis rehashes);
//! such a key is written twice and the restore keeps one.
//!
//! **Restore** ([`KeyRestore`], or [`restore_keys`] for lines at hand): like the database
//! restore, nothing appears under the prefix until every line has been read, checked and
//! accepted by Redis. Lines are `RESTORE`d under staging names outside the prefix
//! (`steadyflow-restore:<run>:<p|t><key>`, or `~steadyflow-restore:…` when the prefix
//! itself starts with `s`); a bad line, a key outside the prefix or a payload Redis refuses
//! stops the restore and the staging keys are deleted. Only [`KeyRestore::promote`] renames
//! them into place. Staged keys without a TTL of their own carry [`STAGING_TTL`], so the
//! staging keys of a killed restore go away by themselves.
//!
//! Not atomic as a whole: `promote` renames batch by batch, so a reader may see the prefix
//! half restored for a moment, and a connection lost during `promote` leaves it so (the
//! command can simply be run again with `replace`). Standalone Redis only: the renames
//! assume one keyspace (on a cluster they would need hash tags).

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Value};
use serde::{Deserialize, Serialize};

use crate::error::{BackupError, Result};

/// Keys asked for per `SCAN` call (a hint: Redis may return more or fewer).
pub const SCAN_COUNT: usize = 1000;
/// Keys per pipelined round trip.
pub const BATCH_KEYS: usize = 256;
/// Dump bytes per pipelined restore round trip (whichever limit is reached first).
const BATCH_BYTES: usize = 8 << 20;
/// TTL of staged keys that have none of their own (set to none again by `promote`).
pub const STAGING_TTL: Duration = Duration::from_secs(24 * 3600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Generous: one round trip carries a batch of DUMPs or RESTOREs of possibly large values.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);

/// Staging-name marker: the key has no TTL of its own (PERSIST it when promoting).
const PERSISTENT: u8 = b'p';
/// Staging-name marker: the key's TTL is already set on the staged key.
const EXPIRING: u8 = b't';

/// What [`dump_keys`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DumpStats {
    /// Lines written, one per key.
    pub keys: u64,
    /// Keys `SCAN` named that were gone (deleted or expired) when they were read.
    pub vanished: u64,
    /// Bytes written to `out`.
    pub bytes: u64,
    /// Keys per Redis type (`string`, `hash`, `list`, `set`, `zset`, `stream`, ...).
    pub types: BTreeMap<String, u64>,
    /// Redis' own clock when the dump began. Every `ttlMs` was read after it, so TTLs
    /// counted from here end no later than they would have: keep it with the dump and pass
    /// it to [`TtlFrom::Dump`].
    pub dumped_at: DateTime<Utc>,
}

/// Where restored TTLs count from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TtlFrom {
    /// Each key gets back the TTL it had left when it was dumped, counted from the moment
    /// it is restored: the backup's age does not shorten it.
    #[default]
    Restore,
    /// TTLs kept running since the dump (its [`DumpStats::dumped_at`]): each key gets what
    /// is left of its TTL by the target's clock now, and a key whose TTL ran out since the
    /// dump is skipped (counted in [`RestoreStats::expired`]). The faithful choice for
    /// locks, leases and rate limits.
    Dump(DateTime<Utc>),
}

/// How [`restore_keys`] / [`KeyRestore`] treat the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestoreKeys {
    /// Overwrite keys that exist under the prefix. Without it, a target that holds any key
    /// under the prefix is refused ([`BackupError::TargetNotEmpty`], naming how many)
    /// before anything is written.
    pub replace: bool,
    /// With `replace`: delete every key under the prefix first (at promotion, after all
    /// lines were staged), so that afterwards the prefix holds exactly the backup. Without
    /// it, keys that the backup does not hold stay.
    pub clear_prefix: bool,
    pub ttl: TtlFrom,
}

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStats {
    /// Key lines read (blank lines aside).
    pub lines: u64,
    /// Keys put in place under the prefix.
    pub restored: u64,
    /// Keys skipped because their TTL had run out (see [`TtlFrom`]).
    pub expired: u64,
    /// Without `replace`: keys that appeared under the prefix while the restore ran; the
    /// live key was kept and the backup's dropped.
    pub kept_existing: u64,
    /// Keys deleted by `clear_prefix`.
    pub cleared: u64,
    /// Dump payload bytes handed to `RESTORE`.
    pub bytes: u64,
}

/// Keys under a prefix, as [`count_keys`] finds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeyCount {
    pub count: u64,
    /// Up to three of them, for messages.
    pub examples: Vec<String>,
}

impl KeyCount {
    /// "Redis holds 12 keys under the prefix `sf:` (e.g. sf:a, sf:b, sf:c)".
    pub fn describe(&self, prefix: &str) -> String {
        let s = if self.count == 1 { "" } else { "s" };
        format!(
            "Redis holds {} key{s} under the prefix `{prefix}` (e.g. {})",
            self.count,
            self.examples.join(", ")
        )
    }
}

/// One line of the dump file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyLine {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    ttl_ms: Option<i64>,
    dump: String,
}

/// Writes every key under `prefix` to `out`, one JSON line each (see the module docs).
/// Holds one `SCAN` page in memory at a time.
pub async fn dump_keys(url: &str, prefix: &str, out: &mut impl Write) -> Result<DumpStats> {
    let prefix_bytes = checked_prefix(prefix)?;
    let mut con = connect(url).await?;
    let mut stats = DumpStats {
        dumped_at: server_time(&mut con).await?,
        ..DumpStats::default()
    };
    let mut scan = Scan::new(prefix_bytes);
    let mut line = Vec::with_capacity(4096);
    while let Some(keys) = scan.next_page(&mut con).await? {
        for chunk in keys.chunks(BATCH_KEYS) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("MULTI").ignore();
                pipe.cmd("TYPE").arg(key).ignore();
                pipe.cmd("PTTL").arg(key).ignore();
                pipe.cmd("DUMP").arg(key).ignore();
                pipe.cmd("EXEC");
            }
            let rows: Vec<(String, i64, Option<Vec<u8>>)> = pipe
                .query_async(&mut con)
                .await
                .map_err(|e| cache_err("reading keys", e))?;
            for (key, (kind, pttl, dump)) in chunk.iter().zip(rows) {
                // PTTL -2 / TYPE none / DUMP nil: deleted or expired since SCAN named it.
                let Some(dump) = dump.filter(|_| pttl != -2 && kind != "none") else {
                    stats.vanished += 1;
                    continue;
                };
                line.clear();
                write_line(&mut line, key, &kind, pttl, &dump)?;
                out.write_all(&line)
                    .map_err(BackupError::io("cannot write the Redis keys"))?;
                stats.keys += 1;
                stats.bytes += line.len() as u64;
                *stats.types.entry(kind).or_default() += 1;
            }
        }
    }
    tracing::info!(
        prefix,
        keys = stats.keys,
        vanished = stats.vanished,
        bytes = stats.bytes,
        "dumped Redis keys"
    );
    Ok(stats)
}

fn write_line(buf: &mut Vec<u8>, key: &[u8], kind: &str, pttl: i64, dump: &[u8]) -> Result<()> {
    let (key, key_base64) = match std::str::from_utf8(key) {
        Ok(k) => (Some(k.to_owned()), None),
        Err(_) => (None, Some(B64.encode(key))),
    };
    let record = KeyLine {
        key,
        key_base64,
        kind: kind.to_owned(),
        // -1: no TTL. Anything else below zero is not a TTL either.
        ttl_ms: (pttl >= 0).then_some(pttl),
        dump: B64.encode(dump),
    };
    serde_json::to_writer(&mut *buf, &record)
        .map_err(|e| BackupError::BadInput(format!("cannot encode a Redis key: {e}")))?;
    buf.push(b'\n');
    Ok(())
}

/// Counts the keys under `prefix` (a full `SCAN`; nothing is held in memory but the count).
pub async fn count_keys(url: &str, prefix: &str) -> Result<KeyCount> {
    let prefix = checked_prefix(prefix)?;
    let mut con = connect(url).await?;
    count_under(&mut con, prefix).await
}

async fn count_under(con: &mut MultiplexedConnection, prefix: &[u8]) -> Result<KeyCount> {
    let mut found = KeyCount::default();
    let mut scan = Scan::new(prefix);
    while let Some(keys) = scan.next_page(con).await? {
        found.count += keys.len() as u64;
        let room = 3usize.saturating_sub(found.examples.len());
        found
            .examples
            .extend(keys.iter().take(room).map(|k| show(k)));
    }
    Ok(found)
}

/// Restores dump lines (see the module docs) under `prefix`: stages them all, then puts
/// them in place; on any error the staging is deleted and the target was not written.
/// `lines` may stream from a file: nothing but one batch is held in memory.
pub async fn restore_keys(
    url: &str,
    prefix: &str,
    lines: impl IntoIterator<Item = String>,
    opts: RestoreKeys,
) -> Result<RestoreStats> {
    let mut restore = KeyRestore::begin(url, prefix, opts).await?;
    for line in lines {
        if let Err(e) = restore.push(&line).await {
            restore.discard_quietly().await;
            return Err(e);
        }
    }
    restore.promote().await
}

/// A restore in steps, for lines that arrive from somewhere that is checked only at its
/// end (an archive whose checksum is known once it was read whole):
/// [`begin`](Self::begin), [`push`](Self::push) every line, then
/// [`promote`](Self::promote) if the source checked out, or [`discard`](Self::discard).
pub struct KeyRestore {
    con: MultiplexedConnection,
    prefix: Vec<u8>,
    opts: RestoreKeys,
    /// Staging names are this, a marker byte, then the key.
    staging: Vec<u8>,
    /// The target's clock at `begin` and the local monotonic clock then: "now" on the
    /// target without a round trip per batch.
    clock: (i64, Instant),
    batch: Vec<Pending>,
    batch_bytes: usize,
    line_no: u64,
    failed: bool,
    stats: RestoreStats,
}

#[derive(Debug)]
struct Pending {
    line: u64,
    key: Vec<u8>,
    ttl_ms: Option<i64>,
    dump: Vec<u8>,
}

impl KeyRestore {
    /// Connects and checks the target: with `replace` false, any key under the prefix
    /// refuses the restore here ([`BackupError::TargetNotEmpty`]), before anything is
    /// written.
    pub async fn begin(url: &str, prefix: &str, opts: RestoreKeys) -> Result<Self> {
        let prefix_bytes = checked_prefix(prefix)?.to_vec();
        if opts.clear_prefix && !opts.replace {
            return Err(BackupError::BadInput(
                "clearing the Redis prefix before a restore needs replace".into(),
            ));
        }
        let mut con = connect(url).await?;
        if !opts.replace {
            let found = count_under(&mut con, &prefix_bytes).await?;
            if found.count > 0 {
                return Err(BackupError::TargetNotEmpty(found.describe(prefix)));
            }
        }
        let now = server_time(&mut con).await?.timestamp_millis();
        let staging = staging_root(&prefix_bytes, now);
        Ok(KeyRestore {
            con,
            prefix: prefix_bytes,
            opts,
            staging,
            clock: (now, Instant::now()),
            batch: Vec::with_capacity(BATCH_KEYS),
            batch_bytes: 0,
            line_no: 0,
            failed: false,
            stats: RestoreStats::default(),
        })
    }

    /// Checks one line and stages it (in batches). A line that is not a key record, names
    /// a key outside the prefix, or whose payload Redis refuses is a
    /// [`BackupError::BadInput`] naming the line; after any error the restore can only be
    /// discarded.
    pub async fn push(&mut self, line: &str) -> Result<()> {
        if self.failed {
            return Err(BackupError::BadInput(
                "the Redis restore failed earlier; it can only be discarded".into(),
            ));
        }
        let result = self.push_line(line).await;
        self.failed = result.is_err();
        result
    }

    async fn push_line(&mut self, line: &str) -> Result<()> {
        self.line_no += 1;
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            return Ok(());
        }
        self.stats.lines += 1;
        let pending = parse_line(line, &self.prefix, self.line_no).map_err(|m| {
            BackupError::BadInput(format!("Redis keys, line {}: {m}", self.line_no))
        })?;
        self.batch_bytes += pending.dump.len();
        self.batch.push(pending);
        if self.batch.len() >= BATCH_KEYS || self.batch_bytes >= BATCH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Milliseconds since the epoch by the target's clock.
    fn now_ms(&self) -> i64 {
        self.clock.0 + self.clock.1.elapsed().as_millis() as i64
    }

    fn staged_name(&self, marker: u8, key: &[u8]) -> Vec<u8> {
        let mut name = Vec::with_capacity(self.staging.len() + 1 + key.len());
        name.extend_from_slice(&self.staging);
        name.push(marker);
        name.extend_from_slice(key);
        name
    }

    async fn flush(&mut self) -> Result<()> {
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let now = self.now_ms();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut sent = Vec::with_capacity(batch.len());
        for key in &batch {
            let (marker, ttl) = match (key.ttl_ms, self.opts.ttl) {
                (None, _) => (PERSISTENT, STAGING_TTL.as_millis() as i64),
                (Some(ttl), TtlFrom::Restore) => (EXPIRING, ttl),
                (Some(ttl), TtlFrom::Dump(at)) => {
                    // A target clock behind the dump's counts as no time passed.
                    (EXPIRING, ttl - (now - at.timestamp_millis()).max(0))
                }
            };
            // RESTORE reads TTL 0 as "no TTL": a TTL that ran out must not get there.
            if ttl <= 0 {
                self.stats.expired += 1;
                continue;
            }
            pipe.cmd("RESTORE")
                .arg(self.staged_name(marker, &key.key))
                .arg(ttl)
                .arg(&key.dump)
                // The same key twice in one dump (SCAN may name it twice): the last wins.
                .arg("REPLACE");
            sent.push(key);
        }
        if sent.is_empty() {
            return Ok(());
        }
        let replies: Vec<Value> = pipe
            .query_async(&mut self.con)
            .await
            .map_err(|e| cache_err("restoring keys", e))?;
        for (key, reply) in sent.iter().zip(replies) {
            if let Value::ServerError(e) = reply {
                return Err(refused(key, &RedisError::from(e)));
            }
            self.stats.bytes += key.dump.len() as u64;
        }
        Ok(())
    }

    /// Stages the last batch and puts every staged key in place: with `clear_prefix`, the
    /// prefix is emptied first; then each staged key is renamed to its name (`RENAME`
    /// with `replace`, else `RENAMENX`, which keeps a key that appeared meanwhile).
    pub async fn promote(mut self) -> Result<RestoreStats> {
        if self.failed {
            self.discard_quietly().await;
            return Err(BackupError::BadInput(
                "the Redis restore failed earlier; nothing was put in place".into(),
            ));
        }
        let result = self.promote_staged().await;
        if result.is_err() {
            self.discard_quietly().await;
        }
        result
    }

    async fn promote_staged(&mut self) -> Result<RestoreStats> {
        self.flush().await?;
        if self.opts.clear_prefix {
            self.stats.cleared = unlink_under(&mut self.con, &self.prefix).await?;
        }
        let mut scan = Scan::new(&self.staging);
        while let Some(staged) = scan.next_page(&mut self.con).await? {
            for chunk in staged.chunks(BATCH_KEYS) {
                self.rename_in(chunk).await?;
            }
        }
        tracing::info!(
            lines = self.stats.lines,
            restored = self.stats.restored,
            expired = self.stats.expired,
            kept_existing = self.stats.kept_existing,
            cleared = self.stats.cleared,
            "restored Redis keys"
        );
        Ok(self.stats.clone())
    }

    async fn rename_in(&mut self, staged: &[Vec<u8>]) -> Result<()> {
        let rename = if self.opts.replace {
            "RENAME"
        } else {
            "RENAMENX"
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for name in staged {
            let Some((&marker, key)) = name[self.staging.len()..].split_first() else {
                continue;
            };
            if marker == PERSISTENT {
                // PERSIST and rename together: never a restored key with the staging TTL.
                pipe.cmd("MULTI").ignore();
                pipe.cmd("PERSIST").arg(name).ignore();
                pipe.cmd(rename).arg(name).arg(key).ignore();
                pipe.cmd("EXEC");
            } else {
                pipe.cmd(rename).arg(name).arg(key);
            }
        }
        let replies: Vec<Value> = pipe
            .query_async(&mut self.con)
            .await
            .map_err(|e| cache_err("putting restored keys in place", e))?;
        let mut leftovers = Vec::new();
        for (name, reply) in staged.iter().zip(replies) {
            // EXEC answers [PERSIST, rename]: the rename's reply decides.
            let reply = match reply {
                Value::Array(mut items) if items.len() == 2 => items.pop().unwrap_or(Value::Nil),
                other => other,
            };
            match reply {
                Value::Okay | Value::Int(1) => self.stats.restored += 1,
                Value::SimpleString(s) if s == "OK" => self.stats.restored += 1,
                Value::Int(0) => {
                    self.stats.kept_existing += 1;
                    leftovers.push(name);
                }
                // Its TTL ran out between staging and now.
                Value::ServerError(e) if e.details().is_some_and(|d| d.contains("no such key")) => {
                    self.stats.expired += 1
                }
                other => {
                    return Err(BackupError::Cache(format!(
                        "Redis did not put {} in place: {other:?}",
                        show(&name[self.staging.len() + 1..])
                    )));
                }
            }
        }
        if !leftovers.is_empty() {
            redis::cmd("UNLINK")
                .arg(leftovers)
                .query_async::<u64>(&mut self.con)
                .await
                .map_err(|e| cache_err("removing staged keys", e))?;
        }
        Ok(())
    }

    /// Deletes every staged key; the target was never written. Returns how many.
    pub async fn discard(mut self) -> Result<u64> {
        self.discard_staging().await
    }

    async fn discard_quietly(&mut self) {
        if let Err(e) = self.discard_staging().await {
            // They expire by themselves (persistent ones after STAGING_TTL).
            tracing::warn!(error = %e, "could not delete the staged Redis keys");
        }
    }

    async fn discard_staging(&mut self) -> Result<u64> {
        self.batch.clear();
        unlink_under(&mut self.con, &self.staging).await
    }
}

/// Deletes every key under `prefix` (`UNLINK`: large values are freed in the background).
async fn unlink_under(con: &mut MultiplexedConnection, prefix: &[u8]) -> Result<u64> {
    let mut deleted = 0;
    let mut scan = Scan::new(prefix);
    while let Some(keys) = scan.next_page(con).await? {
        if !keys.is_empty() {
            deleted += redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<u64>(con)
                .await
                .map_err(|e| cache_err("deleting keys", e))?;
        }
    }
    Ok(deleted)
}

fn parse_line(line: &str, prefix: &[u8], line_no: u64) -> std::result::Result<Pending, String> {
    let record: KeyLine =
        serde_json::from_str(line).map_err(|e| format!("not a Redis key record ({e})"))?;
    let key = match (record.key, record.key_base64) {
        (Some(key), None) => key.into_bytes(),
        (None, Some(encoded)) => B64
            .decode(encoded)
            .map_err(|e| format!("`keyBase64` is not base64 ({e})"))?,
        _ => return Err("a record needs exactly one of `key` and `keyBase64`".into()),
    };
    if !key.starts_with(prefix) {
        return Err(format!(
            "key {} is outside the prefix `{}`; nothing was restored",
            show(&key),
            String::from_utf8_lossy(prefix)
        ));
    }
    if record.ttl_ms.is_some_and(|t| t < 0) {
        return Err(format!(
            "`ttlMs` of key {} is negative (a TTL, or null for none)",
            show(&key)
        ));
    }
    let dump = B64
        .decode(record.dump)
        .map_err(|e| format!("the dump of key {} is not base64 ({e})", show(&key)))?;
    Ok(Pending {
        line: line_no,
        key,
        ttl_ms: record.ttl_ms,
        dump,
    })
}

/// A payload Redis refused is bad input (damaged, or from a newer Redis than the target);
/// anything else (out of memory, a read-only replica ...) is the target's failure.
fn refused(key: &Pending, e: &RedisError) -> BackupError {
    let detail = e.detail().unwrap_or_default();
    let what = format!(
        "Redis keys, line {}: Redis refused the dump of key {}: {e}",
        key.line,
        show(&key.key)
    );
    if detail.contains("payload") || detail.contains("Bad data format") {
        BackupError::BadInput(format!(
            "{what} (the payload is damaged, or comes from a newer Redis than the target); nothing was restored"
        ))
    } else {
        BackupError::Cache(format!("{what}; nothing was restored"))
    }
}

fn checked_prefix(prefix: &str) -> Result<&[u8]> {
    if prefix.is_empty() {
        return Err(BackupError::BadInput(
            "the Redis key prefix is empty: that would take every key of the database".into(),
        ));
    }
    Ok(prefix.as_bytes())
}

/// `prefix*` with the prefix's glob characters taken literally.
fn match_pattern(prefix: &[u8]) -> Vec<u8> {
    let mut pattern = Vec::with_capacity(prefix.len() + 4);
    for &b in prefix {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            pattern.push(b'\\');
        }
        pattern.push(b);
    }
    pattern.push(b'*');
    pattern
}

/// A staging root that never lies under the prefix (its first byte differs from the
/// prefix's), unique per run.
fn staging_root(prefix: &[u8], now_ms: i64) -> Vec<u8> {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let lead = if prefix.starts_with(b"s") { "~" } else { "" };
    format!(
        "{lead}steadyflow-restore:{now_ms:x}-{:x}-{random:016x}:",
        std::process::id()
    )
    .into_bytes()
}

/// Walks the keys under a prefix one `SCAN` page at a time.
struct Scan {
    prefix: Vec<u8>,
    pattern: Vec<u8>,
    cursor: u64,
    done: bool,
}

impl Scan {
    fn new(prefix: &[u8]) -> Self {
        Scan {
            prefix: prefix.to_vec(),
            pattern: match_pattern(prefix),
            cursor: 0,
            done: false,
        }
    }

    async fn next_page(&mut self, con: &mut MultiplexedConnection) -> Result<Option<Vec<Vec<u8>>>> {
        if self.done {
            return Ok(None);
        }
        let (cursor, mut keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(self.cursor)
            .arg("MATCH")
            .arg(&self.pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(con)
            .await
            .map_err(|e| cache_err("scanning keys", e))?;
        self.cursor = cursor;
        self.done = cursor == 0;
        // MATCH already did this; the prefix rule must not hang on glob escaping.
        keys.retain(|k| k.starts_with(&self.prefix));
        Ok(Some(keys))
    }
}

async fn connect(url: &str) -> Result<MultiplexedConnection> {
    let client = Client::open(url).map_err(|e| {
        BackupError::BadInput(format!("`{}` is not a usable Redis URL: {e}", redact(url)))
    })?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| BackupError::Cache(format!("cannot connect to Redis at {}: {e}", redact(url))))
}

async fn server_time(con: &mut MultiplexedConnection) -> Result<DateTime<Utc>> {
    let (secs, micros): (i64, i64) = redis::cmd("TIME")
        .query_async(con)
        .await
        .map_err(|e| cache_err("reading its clock", e))?;
    DateTime::from_timestamp_micros(secs * 1_000_000 + micros)
        .ok_or_else(|| BackupError::Cache(format!("Redis' clock reads {secs} s: not a time")))
}

fn cache_err(what: &str, e: RedisError) -> BackupError {
    BackupError::Cache(format!("Redis failed while {what}: {e}"))
}

/// The URL without its credentials, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}<redacted>@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// A key for messages: quoted, escaped, shortened.
fn show(key: &[u8]) -> String {
    let text = String::from_utf8_lossy(key);
    let mut shown: String = text.chars().take(120).collect();
    if shown.len() < text.len() {
        shown.push('…');
    }
    format!("{shown:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_never_lies_under_the_prefix() {
        for prefix in [
            &b"s"[..],
            b"steadyflow-restore:",
            b"~",
            b"~steadyflow",
            b"sf:",
            b"x",
        ] {
            let root = staging_root(prefix, 1);
            assert_ne!(root.first(), prefix.first(), "{prefix:?}");
        }
        assert_ne!(staging_root(b"sf:", 1), staging_root(b"sf:", 1));
    }

    #[test]
    fn lines_round_trip_and_bad_ones_are_named() {
        let mut buf = Vec::new();
        write_line(&mut buf, b"sf:a", "string", -1, b"\x00\x01").unwrap();
        write_line(&mut buf, b"sf:\xff", "hash", 1500, b"xy").unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let first = r#"{"key":"sf:a","type":"string","ttlMs":null,"dump":"AAE="}"#;
        assert_eq!(lines[0], first);
        assert!(lines[1].contains(r#""keyBase64":"c2Y6/w==""#));
        let p = parse_line(lines[1], b"sf:", 2).unwrap();
        let parsed = (p.key, p.ttl_ms, p.dump);
        assert_eq!(parsed, (b"sf:\xff".to_vec(), Some(1500), b"xy".to_vec()));
        let outside = parse_line(first, b"other:", 1).unwrap_err();
        assert!(outside.contains("outside the prefix"), "{outside}");
        let bad = [
            "{",
            r#"{"key":"sf:a","keyBase64":"YQ==","type":"x","dump":""}"#,
            r#"{"key":"sf:a","type":"x","ttlMs":-5,"dump":""}"#,
            r#"{"key":"sf:a","type":"x","ttlMs":null,"dump":"!!"}"#,
        ];
        let errors = [
            "not a Redis key record",
            "exactly one",
            "negative",
            "not base64",
        ];
        for (line, error) in bad.into_iter().zip(errors) {
            let message = parse_line(line, b"sf:", 1).unwrap_err();
            assert!(message.contains(error), "{line}: {message}");
        }
    }
}
