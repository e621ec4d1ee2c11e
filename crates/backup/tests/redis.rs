//! The Redis keys dump and restore against the real Redis (`STEADYFLOW_TEST_REDIS_URL`,
//! default `redis://127.0.0.1:6379/`). Each test works under its own prefix
//! `sf-test-<uuid>:` and deletes its keys when it ends, failed or not. Without Redis the
//! tests are skipped with a notice, unless `STEADYFLOW_REQUIRE_SERVICES=1` (CI).

// A test crate: its helpers outside `#[test]` functions may unwrap too (clippy.toml
// exempts only test functions and `#[cfg(test)]` modules).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed unwrap is a failed test"
)]

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use redis::Value;
use redis::aio::MultiplexedConnection;
use steadyflow_backup::BackupError;
use steadyflow_backup::exit;
use steadyflow_backup::redis::{
    DumpStats, KeyRestore, RestoreKeys, TtlFrom, count_keys, dump_keys, restore_keys,
};

const URL_ENV: &str = "STEADYFLOW_TEST_REDIS_URL";
const DEFAULT_URL: &str = "redis://127.0.0.1:6379/";
/// How far a restored TTL may trail the original on a slow, shared machine.
const TTL_SLACK_MS: i64 = 30_000;

fn missing(what: &str) {
    if std::env::var("STEADYFLOW_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        panic!("{what} is required (STEADYFLOW_REQUIRE_SERVICES=1) but is not available");
    }
    eprintln!(
        "NOTICE: {what} is not available; skipping this test (set STEADYFLOW_REQUIRE_SERVICES=1 to make this a failure)"
    );
}

fn glob_escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A test's own key space: `sf-test-<uuid>:`, emptied on drop (staging keys included).
struct Space {
    url: String,
    prefix: String,
    con: MultiplexedConnection,
}

async fn space() -> Option<Space> {
    let url = std::env::var(URL_ENV).unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let reachable = async {
        let client = redis::Client::open(url.as_str()).ok()?;
        let mut con = client.get_multiplexed_async_connection().await.ok()?;
        let pong: String = redis::cmd("PING").query_async(&mut con).await.ok()?;
        (pong == "PONG").then_some(con)
    };
    match tokio::time::timeout(Duration::from_secs(5), reachable).await {
        Ok(Some(con)) => Some(Space {
            url,
            prefix: format!("sf-test-{}:", uuid::Uuid::now_v7()),
            con,
        }),
        _ => {
            missing(&format!("Redis at {url}"));
            None
        }
    }
}

impl Space {
    fn key(&self, name: &str) -> Vec<u8> {
        format!("{}{name}", self.prefix).into_bytes()
    }

    async fn cmd<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> T {
        cmd.query_async(&mut self.con).await.unwrap()
    }

    /// Every key whose name matches `pattern`.
    async fn scan(&mut self, pattern: &str) -> Vec<Vec<u8>> {
        let mut found = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.con)
                .await
                .unwrap();
            found.extend(keys);
            if next == 0 {
                return found;
            }
            cursor = next;
        }
    }

    async fn keys_under(&mut self, prefix: &str) -> Vec<Vec<u8>> {
        self.scan(&format!("{}*", glob_escape(prefix))).await
    }

    /// Staging keys of restores into this space (their names end with one of its keys).
    async fn staged(&mut self) -> Vec<Vec<u8>> {
        self.scan(&format!(
            "*steadyflow-restore:*{}*",
            glob_escape(&self.prefix)
        ))
        .await
    }

    async fn clear(&mut self) {
        let keys = self.keys_under(&self.prefix.clone()).await;
        if !keys.is_empty() {
            let _: u64 = self.cmd(redis::cmd("DEL").arg(keys)).await;
        }
    }

    /// Every key under the prefix: type, value (order-free types sorted) and TTL.
    async fn snapshot(&mut self) -> BTreeMap<Vec<u8>, Entry> {
        let mut all = BTreeMap::new();
        for key in self.keys_under(&self.prefix.clone()).await {
            let kind: String = self.cmd(redis::cmd("TYPE").arg(&key)).await;
            let value: Vec<Vec<u8>> = match kind.as_str() {
                "string" => vec![self.cmd(redis::cmd("GET").arg(&key)).await],
                "list" => {
                    self.cmd(redis::cmd("LRANGE").arg(&key).arg(0).arg(-1))
                        .await
                }
                "zset" => {
                    self.cmd(
                        redis::cmd("ZRANGE")
                            .arg(&key)
                            .arg(0)
                            .arg(-1)
                            .arg("WITHSCORES"),
                    )
                    .await
                }
                "set" => {
                    let mut v: Vec<Vec<u8>> = self.cmd(redis::cmd("SMEMBERS").arg(&key)).await;
                    v.sort();
                    v
                }
                "hash" => {
                    let mut v: Vec<(Vec<u8>, Vec<u8>)> =
                        self.cmd(redis::cmd("HGETALL").arg(&key)).await;
                    v.sort();
                    v.into_iter().flat_map(|(f, x)| [f, x]).collect()
                }
                "stream" => {
                    let v: Value = self
                        .cmd(redis::cmd("XRANGE").arg(&key).arg("-").arg("+"))
                        .await;
                    vec![format!("{v:?}").into_bytes()]
                }
                other => panic!("unexpected type {other}"),
            };
            let pttl: i64 = self.cmd(redis::cmd("PTTL").arg(&key)).await;
            let ttl = (pttl >= 0).then_some(pttl);
            all.insert(key, Entry { kind, value, ttl });
        }
        all
    }

    /// One key of every type, with and without TTL, binary values and a binary key, and
    /// `bulk` small keys (more than one pipelined batch). Returns how many keys.
    async fn populate(&mut self, bulk: usize) -> u64 {
        let binary: Vec<u8> = (0..=255u8).collect();
        let k = |name: &str| self.key(name);
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(k("str")).arg("hello").ignore();
        pipe.cmd("SET").arg(k("bin")).arg(&binary).ignore();
        pipe.cmd("HSET")
            .arg(k("hash"))
            .arg("f1")
            .arg("v1")
            .arg(b"f\xff\x00")
            .arg(&binary)
            .ignore();
        pipe.cmd("RPUSH")
            .arg(k("list"))
            .arg("a")
            .arg("b")
            .arg("a")
            .arg(b"\x00\x01")
            .ignore();
        pipe.cmd("SADD")
            .arg(k("set"))
            .arg("x")
            .arg("y")
            .arg(b"\xfe")
            .ignore();
        pipe.cmd("ZADD")
            .arg(k("zset"))
            .arg(1.5)
            .arg("a")
            .arg(-2)
            .arg("b")
            .arg(3e10)
            .arg("c")
            .ignore();
        pipe.cmd("XADD")
            .arg(k("stream"))
            .arg("*")
            .arg("f")
            .arg("v1")
            .ignore();
        pipe.cmd("XADD")
            .arg(k("stream"))
            .arg("*")
            .arg("f")
            .arg(&binary)
            .ignore();
        pipe.cmd("SET")
            .arg(k("ttl"))
            .arg("soon")
            .arg("PX")
            .arg(3_600_000)
            .ignore();
        pipe.cmd("HSET")
            .arg(k("hash-ttl"))
            .arg("a")
            .arg("b")
            .ignore();
        pipe.cmd("PEXPIRE")
            .arg(k("hash-ttl"))
            .arg(1_800_000)
            .ignore();
        let mut binary_key = k("");
        binary_key.extend_from_slice(b"\xff\xfe\x00key");
        pipe.cmd("SET").arg(binary_key).arg("binary key").ignore();
        for i in 0..bulk {
            pipe.cmd("SET").arg(k(&format!("n:{i}"))).arg(i).ignore();
        }
        pipe.query_async::<()>(&mut self.con).await.unwrap();
        10 + bulk as u64
    }
}

impl Drop for Space {
    fn drop(&mut self) {
        // Synchronous, so that it also runs when a test panics.
        let Ok(mut con) = redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection())
        else {
            return;
        };
        for pattern in [
            format!("{}*", glob_escape(&self.prefix)),
            format!("*steadyflow-restore:*{}*", glob_escape(&self.prefix)),
        ] {
            // SCAN, as the code under test: KEYS would block the shared server.
            let mut cursor = 0u64;
            loop {
                let page: redis::RedisResult<(u64, Vec<Vec<u8>>)> = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(&mut con);
                let Ok((next, keys)) = page else { break };
                if !keys.is_empty() {
                    let _: redis::RedisResult<u64> = redis::cmd("DEL").arg(keys).query(&mut con);
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    kind: String,
    value: Vec<Vec<u8>>,
    ttl: Option<i64>,
}

/// Same keys, types and values; TTLs both absent, or the restored one at most the
/// original and no more than [`TTL_SLACK_MS`] below it.
fn assert_same(before: &BTreeMap<Vec<u8>, Entry>, after: &BTreeMap<Vec<u8>, Entry>) {
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "the same keys"
    );
    for (key, b) in before {
        let a = &after[key];
        let name = String::from_utf8_lossy(key);
        assert_eq!((&a.kind, &a.value), (&b.kind, &b.value), "{name}");
        match (b.ttl, a.ttl) {
            (None, None) => {}
            (Some(o), Some(r)) => assert!(r <= o && r > o - TTL_SLACK_MS, "{name}: TTL {o} → {r}"),
            other => panic!("{name}: TTL {other:?}"),
        }
    }
}

async fn dump(s: &Space) -> (DumpStats, Vec<String>) {
    let mut out = Vec::new();
    let stats = dump_keys(&s.url, &s.prefix, &mut out).await.unwrap();
    let text = String::from_utf8(out).expect("the dump is UTF-8 JSON Lines");
    assert_eq!(stats.bytes, text.len() as u64);
    (stats, text.lines().map(str::to_owned).collect())
}

#[tokio::test]
async fn every_type_round_trips_with_its_ttl() {
    let Some(mut s) = space().await else { return };
    let n = s.populate(600).await;
    let before = s.snapshot().await;
    assert_eq!(before.len() as u64, n);

    let (stats, lines) = dump(&s).await;
    assert_eq!((stats.keys, stats.vanished, lines.len() as u64), (n, 0, n));
    let expected_types: BTreeMap<String, u64> = [
        ("hash", 2),
        ("list", 1),
        ("set", 1),
        ("stream", 1),
        ("string", 4 + 600),
        ("zset", 1),
    ]
    .into_iter()
    .map(|(t, c)| (t.to_owned(), c))
    .collect();
    assert_eq!(stats.types, expected_types);
    // The line format: key (or keyBase64), type, ttlMs (null without TTL), dump.
    let records: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_key = |name: &str| {
        let key = format!("{}{name}", s.prefix);
        records
            .iter()
            .find(|r| r["key"] == key.as_str())
            .unwrap()
            .clone()
    };
    let ttl = by_key("ttl");
    assert_eq!(ttl["type"], "string");
    let ms = ttl["ttlMs"].as_i64().unwrap();
    assert!(ms > 3_600_000 - TTL_SLACK_MS && ms <= 3_600_000, "{ms}");
    assert_eq!(by_key("str")["ttlMs"], serde_json::Value::Null);
    assert_eq!(by_key("zset")["type"], "zset");
    assert!(
        !B64.decode(by_key("bin")["dump"].as_str().unwrap())
            .unwrap()
            .is_empty()
    );
    let binary_key = records
        .iter()
        .find(|r| r.get("keyBase64").is_some())
        .unwrap();
    assert!(
        B64.decode(binary_key["keyBase64"].as_str().unwrap())
            .unwrap()
            .ends_with(b"\xff\xfe\x00key")
    );
    assert!(binary_key.get("key").is_none());

    s.clear().await;
    let restored = restore_keys(&s.url, &s.prefix, lines, RestoreKeys::default())
        .await
        .unwrap();
    assert_eq!(
        (
            restored.lines,
            restored.restored,
            restored.expired,
            restored.kept_existing
        ),
        (n, n, 0, 0)
    );
    assert_same(&before, &s.snapshot().await);
    assert!(s.staged().await.is_empty(), "no staging keys are left");
}

#[tokio::test]
async fn ttls_count_from_the_dump_or_from_the_restore() {
    let Some(mut s) = space().await else { return };
    let (short, long, forever) = (s.key("short"), s.key("long"), s.key("forever"));
    let _: () = s
        .cmd(redis::cmd("SET").arg(&short).arg(1).arg("PX").arg(5_000))
        .await;
    let _: () = s
        .cmd(redis::cmd("SET").arg(&long).arg(2).arg("PX").arg(3_600_000))
        .await;
    let _: () = s.cmd(redis::cmd("SET").arg(&forever).arg(3)).await;
    let (stats, lines) = dump(&s).await;
    assert_eq!(stats.keys, 3);

    // A backup a minute old: the 5-second key has run out, the hour lost a minute.
    s.clear().await;
    let dumped_at = stats.dumped_at - chrono::Duration::seconds(60);
    let opts = RestoreKeys {
        ttl: TtlFrom::Dump(dumped_at),
        ..RestoreKeys::default()
    };
    let r = restore_keys(&s.url, &s.prefix, lines.clone(), opts)
        .await
        .unwrap();
    assert_eq!((r.restored, r.expired), (2, 1));
    let exists: u64 = s.cmd(redis::cmd("EXISTS").arg(&short)).await;
    assert_eq!(exists, 0);
    let pttl: i64 = s.cmd(redis::cmd("PTTL").arg(&long)).await;
    assert!(
        pttl <= 3_540_000 && pttl > 3_540_000 - TTL_SLACK_MS,
        "{pttl}"
    );
    let pttl: i64 = s.cmd(redis::cmd("PTTL").arg(&forever)).await;
    assert_eq!(
        pttl, -1,
        "a key without TTL stays without (no staging TTL left on it)"
    );

    // Counted from the restore: every key is back with the TTL it had left.
    s.clear().await;
    let r = restore_keys(&s.url, &s.prefix, lines, RestoreKeys::default())
        .await
        .unwrap();
    assert_eq!((r.restored, r.expired), (3, 0));
    let pttl: i64 = s.cmd(redis::cmd("PTTL").arg(&short)).await;
    assert!(pttl > 0 && pttl <= 5_000, "{pttl}");
    assert!(s.staged().await.is_empty());
}

#[tokio::test]
async fn a_target_with_keys_is_refused_unless_replacing() {
    let Some(mut s) = space().await else { return };
    let n = s.populate(0).await;
    let before = s.snapshot().await;
    let (_, lines) = dump(&s).await;
    let _: () = s
        .cmd(redis::cmd("SET").arg(s.key("str")).arg("changed"))
        .await;
    let _: () = s.cmd(redis::cmd("SET").arg(s.key("extra")).arg("x")).await;

    let err = restore_keys(&s.url, &s.prefix, lines.clone(), RestoreKeys::default())
        .await
        .unwrap_err();
    assert!(matches!(err, BackupError::TargetNotEmpty(_)), "{err:?}");
    assert_eq!(err.exit_code(), exit::TARGET_NOT_EMPTY);
    let message = err.to_string();
    assert!(
        message.contains(&format!("{} keys under the prefix `{}`", n + 1, s.prefix)),
        "{message}"
    );
    let found = count_keys(&s.url, &s.prefix).await.unwrap();
    assert_eq!(found.count, n + 1);
    let value: String = s.cmd(redis::cmd("GET").arg(s.key("str"))).await;
    assert_eq!(value, "changed", "nothing was written");
    assert!(s.staged().await.is_empty());

    // Replacing: the backup's keys win, a key it does not hold stays.
    let replace = RestoreKeys {
        replace: true,
        ..RestoreKeys::default()
    };
    let r = restore_keys(&s.url, &s.prefix, lines.clone(), replace)
        .await
        .unwrap();
    assert_eq!((r.restored, r.cleared), (n, 0));
    let value: String = s.cmd(redis::cmd("GET").arg(s.key("str"))).await;
    assert_eq!(value, "hello");
    let exists: u64 = s.cmd(redis::cmd("EXISTS").arg(s.key("extra"))).await;
    assert_eq!(exists, 1);

    // Replacing after clearing the prefix: exactly the backup.
    let exact = RestoreKeys {
        replace: true,
        clear_prefix: true,
        ..RestoreKeys::default()
    };
    let r = restore_keys(&s.url, &s.prefix, lines.clone(), exact)
        .await
        .unwrap();
    assert_eq!((r.restored, r.cleared), (n, n + 1));
    assert_same(&before, &s.snapshot().await);

    let err = restore_keys(
        &s.url,
        &s.prefix,
        lines,
        RestoreKeys {
            clear_prefix: true,
            ..RestoreKeys::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BackupError::BadInput(_)), "{err:?}");
}

#[tokio::test]
async fn a_line_outside_the_prefix_is_refused_with_nothing_written() {
    let Some(mut s) = space().await else { return };
    s.populate(600).await;
    let (_, mut lines) = dump(&s).await;
    s.clear().await;
    // After 500 good lines (two batches already staged) comes a key of someone else.
    let foreign = format!("sf-other-{}:x", uuid::Uuid::now_v7());
    let mut record: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    record["key"] = foreign.clone().into();
    record.as_object_mut().unwrap().remove("keyBase64");
    lines.insert(500, record.to_string());

    let err = restore_keys(&s.url, &s.prefix, lines, RestoreKeys::default())
        .await
        .unwrap_err();
    assert!(matches!(err, BackupError::BadInput(_)), "{err:?}");
    assert_eq!(err.exit_code(), exit::BAD_INPUT);
    let message = err.to_string();
    assert!(
        message.contains("line 501") && message.contains("outside the prefix"),
        "{message}"
    );
    assert!(message.contains(&foreign), "{message}");
    assert!(
        s.keys_under(&s.prefix.clone()).await.is_empty(),
        "nothing under the prefix"
    );
    let exists: u64 = s.cmd(redis::cmd("EXISTS").arg(&foreign)).await;
    assert_eq!(exists, 0, "the foreign key was not written");
    assert!(s.staged().await.is_empty(), "the staged keys were deleted");
}

#[tokio::test]
async fn a_damaged_payload_or_line_is_refused_with_nothing_written() {
    let Some(mut s) = space().await else { return };
    s.populate(600).await;
    let (_, lines) = dump(&s).await;
    s.clear().await;

    // One flipped byte inside a payload: RESTORE's checksum catches it.
    let mut damaged = lines.clone();
    let mut record: serde_json::Value = serde_json::from_str(&damaged[399]).unwrap();
    let mut payload = B64.decode(record["dump"].as_str().unwrap()).unwrap();
    payload[1] ^= 0x40;
    record["dump"] = B64.encode(&payload).into();
    damaged[399] = record.to_string();
    let err = restore_keys(&s.url, &s.prefix, damaged, RestoreKeys::default())
        .await
        .unwrap_err();
    assert!(matches!(err, BackupError::BadInput(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("line 400") && message.contains("refused the dump"),
        "{message}"
    );
    assert!(s.keys_under(&s.prefix.clone()).await.is_empty());
    assert!(s.staged().await.is_empty());

    // A line cut short.
    let mut cut = lines.clone();
    let half = cut[9].len() / 2;
    cut[9].truncate(half);
    let err = restore_keys(&s.url, &s.prefix, cut, RestoreKeys::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("line 10: not a Redis key record"),
        "{err}"
    );
    assert!(s.keys_under(&s.prefix.clone()).await.is_empty());
    assert!(s.staged().await.is_empty());
}

#[tokio::test]
async fn a_staged_restore_is_discarded_or_promoted() {
    let Some(mut s) = space().await else { return };
    let n = s.populate(300).await;
    let before = s.snapshot().await;
    let (_, lines) = dump(&s).await;
    s.clear().await;

    // Staged (as while an archive is still being checked), then dropped.
    let mut restore = KeyRestore::begin(&s.url, &s.prefix, RestoreKeys::default())
        .await
        .unwrap();
    for line in &lines {
        restore.push(line).await.unwrap();
    }
    assert!(
        s.keys_under(&s.prefix.clone()).await.is_empty(),
        "staged keys are outside the prefix"
    );
    assert!(!s.staged().await.is_empty());
    let discarded = restore.discard().await.unwrap();
    // Every full batch was sent; the tail was still waiting in memory.
    assert_eq!(discarded, lines.len() as u64 / BATCH * BATCH);
    assert!(s.staged().await.is_empty());
    assert!(s.keys_under(&s.prefix.clone()).await.is_empty());

    // The same key twice (SCAN can name one twice) and blank lines are fine.
    let mut restore = KeyRestore::begin(&s.url, &s.prefix, RestoreKeys::default())
        .await
        .unwrap();
    for line in lines.iter().chain([&lines[0], &String::new()]) {
        restore.push(line).await.unwrap();
    }
    let r = restore.promote().await.unwrap();
    assert_eq!((r.lines, r.restored), (n + 1, n));
    assert_same(&before, &s.snapshot().await);
    assert!(s.staged().await.is_empty());
}

const BATCH: u64 = steadyflow_backup::redis::BATCH_KEYS as u64;

#[tokio::test]
async fn glob_characters_in_the_prefix_are_taken_literally() {
    let Some(mut s) = space().await else { return };
    let literal = format!("{}[a]*?:", s.prefix);
    let _: () = s
        .cmd(redis::cmd("SET").arg(format!("{literal}k")).arg(1))
        .await;
    // Matches the prefix read as a glob pattern, but is not under it.
    let _: () = s
        .cmd(redis::cmd("SET").arg(format!("{}aXY:z", s.prefix)).arg(2))
        .await;
    let mut out = Vec::new();
    let stats = dump_keys(&s.url, &literal, &mut out).await.unwrap();
    assert_eq!(stats.keys, 1);
    assert!(
        String::from_utf8(out)
            .unwrap()
            .contains(&format!("\"{literal}k\""))
    );
}

#[tokio::test]
async fn unreachable_redis_and_bad_prefixes_are_clear_errors() {
    let err = dump_keys("redis://user:s3cret@127.0.0.1:1/", "sf:", &mut Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, BackupError::Cache(_)), "{err:?}");
    assert_eq!(err.exit_code(), exit::FAILED);
    let message = err.to_string();
    assert!(
        message.contains("cannot connect to Redis") && !message.contains("s3cret"),
        "{message}"
    );

    let err = dump_keys(DEFAULT_URL, "", &mut Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, BackupError::BadInput(_)), "{err:?}");
    let err = restore_keys(
        DEFAULT_URL,
        "",
        Vec::<String>::new(),
        RestoreKeys::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BackupError::BadInput(_)), "{err:?}");
}
