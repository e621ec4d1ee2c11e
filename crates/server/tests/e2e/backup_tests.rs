//! Backups and restores through the `steadyflow` binary, as an operator runs them: round
//! trips on and across SQLite and PostgreSQL (every table compared, every restored
//! instance run to its end), refusals that write nothing, damage anywhere in an archive,
//! kill -9 during backup and restore, a full disk, and the stock tools opening an archive.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use steadyflow_store::Store;

use crate::e2e::backup_support::*;
use crate::e2e::services;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn open(url: &str) -> Arc<dyn Store> {
    match url.strip_prefix("sqlite://") {
        Some(p) => Arc::new(steadyflow_store_sqlite::SqliteStore::open(p).unwrap()),
        None => Arc::new(steadyflow_store_pg::PgStore::connect(url).await.unwrap()),
    }
}

fn sqlite_url(dir: &Path, name: &str) -> String {
    format!("sqlite://{}", dir.join(name).display())
}

/// Drops what a PostgreSQL restore may leave besides the test database itself.
async fn drop_side_databases(db: &steadyflow_store_pg::testing::TestDatabase) {
    let admin = steadyflow_store_pg::testing::with_dbname(db.url(), "postgres");
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for suffix in ["_restore", "_restore_old"] {
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {}{suffix} WITH (FORCE)",
                db.name()
            ))
            .await
            .unwrap();
    }
}

/// Backs up a database that an engine keeps open, restores it into another, compares
/// every table, and runs every restored instance to its end.
async fn round_trip(dir: &Path, src: &str, dst: &str) {
    const N: usize = 40;
    std::fs::create_dir_all(dir).unwrap();
    let source = open(src).await;
    populate(source.clone(), N).await;
    let before = digests(src).await;
    assert_eq!(before["instances"].rows, N as u64);
    // The engine still holds the source open: the backup reads beside it.
    let sidecar = backup(dir, src, &[], &[]);
    drop(source);
    let m = &sidecar["manifest"];
    assert_eq!(m["kind"], "full");
    let tables: Vec<&str> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["table"].as_str())
        .collect();
    assert_eq!(
        tables,
        [
            "definitions",
            "instances",
            "tasks",
            "external_tasks",
            "timers",
            "incidents",
            "history",
            "journal"
        ]
    );
    let out = restore(dir, "latest", dst, &[], &[]);
    assert_eq!(code(&out), 0, "restore failed: {}", show(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);
    let after = digests(dst).await;
    assert_eq!(before, after, "restored tables differ from the source");
    let restored = open(dst).await;
    assert_eq!(finish_all(restored).await, N);
}

#[test]
fn sqlite_backup_restores_into_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (
        sqlite_url(dir.path(), "a.db"),
        sqlite_url(dir.path(), "b.db"),
    );
    runtime().block_on(round_trip(dir.path(), &src, &dst));
}

#[test]
fn postgres_backup_restores_into_postgres_and_across_backends() {
    let rt = runtime();
    rt.block_on(async {
        let Some(a) = steadyflow_store_pg::testing::fresh_database().await else {
            return;
        };
        let b = steadyflow_store_pg::testing::fresh_database()
            .await
            .unwrap();
        let c = steadyflow_store_pg::testing::fresh_database()
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        // PostgreSQL -> PostgreSQL.
        round_trip(&dir.path().join("pg"), a.url(), b.url()).await;
        // PostgreSQL -> SQLite: the same archive, into the other backend.
        let lite = sqlite_url(dir.path(), "from-pg.db");
        let out = restore(&dir.path().join("pg"), "latest", &lite, &[], &[]);
        assert_eq!(code(&out), 0, "{}", show(&out));
        assert_eq!(digests(&lite).await, digests(a.url()).await);
        // SQLite -> PostgreSQL.
        let src = sqlite_url(dir.path(), "src.db");
        round_trip(&dir.path().join("lite"), &src, c.url()).await;
        for db in [&a, &b, &c] {
            drop_side_databases(db).await;
        }
        for db in [a, b, c] {
            db.cleanup().await;
        }
    });
}

#[test]
fn restore_refuses_a_target_with_data_or_in_use_and_test_restores_touch_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (src, dst) = (sqlite_url(d, "a.db"), sqlite_url(d, "b.db"));
    let rt = runtime();
    rt.block_on(async {
        populate(open(&src).await, 10).await;
        // The target holds other data.
        let other = open(&dst).await;
        other.deploy_probe().await;
        drop(other);
    });
    backup(d, &src, &[], &[]);
    let before = rt.block_on(digests(&dst));
    let out = restore(d, "latest", &dst, &[], &[]);
    assert_eq!(code(&out), 4, "{}", show(&out));
    let msg = String::from_utf8_lossy(&out.stdout);
    assert!(
        msg.contains("definitions: 1 rows") && msg.contains("--force"),
        "{msg}"
    );
    // A server uses the target: refused even with --force, naming how to stop it.
    let held = rt.block_on(open(&dst));
    let out = restore(d, "latest", &dst, &["--force"], &[]);
    assert_eq!(code(&out), 5, "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stop"),
        "{}",
        show(&out)
    );
    drop(held);
    // --test never touches the target and leaves no scratch behind.
    let out = restore(d, "latest", &dst, &["--test"], &[]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["test"], true);
    assert!(report["rows"].as_u64().unwrap() > 0);
    assert_eq!(rt.block_on(digests(&dst)), before);
    assert!(!d.join("b.db.restore").exists());
    // With --force the target is replaced.
    let out = restore(d, "latest", &dst, &["--force"], &[]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert_eq!(rt.block_on(digests(&dst)), rt.block_on(digests(&src)));
}

#[test]
fn postgres_restore_refuses_a_database_in_use() {
    let rt = runtime();
    rt.block_on(async {
        let Some(a) = steadyflow_store_pg::testing::fresh_database().await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let store = open(a.url()).await;
        populate(store.clone(), 5).await;
        backup(dir.path(), a.url(), &[], &[]);
        let out = restore(dir.path(), "latest", a.url(), &["--force"], &[]);
        assert_eq!(code(&out), 5, "{}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("in use"),
            "{}",
            show(&out)
        );
        drop(store);
        drop_side_databases(&a).await;
        a.cleanup().await;
    });
}

/// A small helper on any store: one deployed definition.
trait Probe {
    async fn deploy_probe(&self);
}

impl Probe for Arc<dyn Store> {
    async fn deploy_probe(&self) {
        self.deploy(
            vec![steadyflow_store::NewDefinition {
                key: "probe".into(),
                name: None,
                xml: "<x/>".into(),
                checksum: "c".into(),
            }],
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    }
}

fn flip(path: &Path, at: usize) -> Vec<u8> {
    let original = std::fs::read(path).unwrap();
    let mut damaged = original.clone();
    damaged[at] ^= 0x20;
    std::fs::write(path, &damaged).unwrap();
    original
}

/// Every refusal: non-zero exit, a message, and the target database never created.
fn assert_refused(d: &Path, what: &str, env: &[(&str, &str)], label: &str) {
    let target = d.join("never.db");
    let out = restore(d, what, &format!("sqlite://{}", target.display()), &[], env);
    assert!(
        matches!(code(&out), 2 | 3),
        "{label}: restore must be refused: {}",
        show(&out)
    );
    assert!(!target.exists(), "{label}: the target was written");
    assert!(
        !d.join("never.db.restore").exists(),
        "{label}: staging left behind"
    );
}

#[test]
fn damaged_or_truncated_archives_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = sqlite_url(d, "a.db");
    runtime().block_on(async { populate(open(&src).await, 20).await });
    let identity = age::x25519::Identity::generate();
    let id_file = d.join("id.txt");
    {
        use age::secrecy::ExposeSecret;
        std::fs::write(&id_file, identity.to_string().expose_secret()).unwrap();
    }
    let recipient = identity.to_public().to_string();
    let id_env = [("STEADYFLOW_AGE_IDENTITY", id_file.to_str().unwrap())];
    type Variant<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let variants: Vec<Variant> = vec![
        ("zstd", vec![], vec![]),
        ("plain tar", vec!["--no-compress"], vec![]),
        (
            "age",
            vec!["--encrypt"],
            vec![("STEADYFLOW_AGE_RECIPIENTS", recipient.as_str())],
        ),
    ];
    for (label, flags, env) in variants {
        let sidecar = backup(d, &src, &flags, &env);
        let id = sidecar["manifest"]["id"].as_str().unwrap().to_string();
        let archive = archive_path(d, &sidecar);
        let len = std::fs::metadata(&archive).unwrap().len() as usize;
        // Bytes spread over the whole file: headers, manifest, table data, trailer.
        let mut positions: Vec<usize> = (0..16).map(|k| k * len / 16).collect();
        positions.extend([1, 30, 200, 600, len - 1]);
        positions.retain(|p| *p < len);
        for at in positions {
            let original = flip(&archive, at);
            let verify = steadyflow(
                d,
                &[
                    "backup",
                    "verify",
                    &id,
                    "--dir",
                    d.join("backups").to_str().unwrap(),
                ],
                &id_env,
            );
            assert_eq!(code(&verify), 3, "{label} byte {at}: {}", show(&verify));
            assert_refused(d, &id, &id_env, &format!("{label} byte {at}"));
            // Without its sidecar (a copy elsewhere), the content checks still catch
            // damage in compressed and encrypted archives.
            if label != "plain tar" {
                let copy = d.join("loose.tar.bin");
                std::fs::copy(&archive, &copy).unwrap();
                assert_refused(
                    d,
                    copy.to_str().unwrap(),
                    &id_env,
                    &format!("{label} loose byte {at}"),
                );
            }
            std::fs::write(&archive, original).unwrap();
        }
        for keep in [0, 1, 100, len / 2, len - 1] {
            let original = std::fs::read(&archive).unwrap();
            std::fs::write(&archive, &original[..keep]).unwrap();
            assert_refused(d, &id, &id_env, &format!("{label} truncated to {keep}"));
            let copy = d.join("loose.tar.bin");
            std::fs::copy(&archive, &copy).unwrap();
            assert_refused(
                d,
                copy.to_str().unwrap(),
                &id_env,
                &format!("{label} loose truncated to {keep}"),
            );
            std::fs::write(&archive, original).unwrap();
        }
        // Intact again: restores.
        let ok = restore(
            d,
            &id,
            &sqlite_url(d, &format!("ok-{}.db", label.replace(' ', "-"))),
            &[],
            &id_env,
        );
        assert_eq!(code(&ok), 0, "{label}: {}", show(&ok));
    }
}

#[test]
fn wrong_or_missing_key_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = sqlite_url(d, "a.db");
    runtime().block_on(async { populate(open(&src).await, 5).await });
    let sidecar = backup(d, &src, &["--encrypt"], &[("ENCRYPT_KEY", "correct horse")]);
    assert_eq!(sidecar["manifest"]["encryption"], "age-scrypt");
    let target = d.join("t.db");
    let url = format!("sqlite://{}", target.display());
    let out = restore(d, "latest", &url, &[], &[]);
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ENCRYPT_KEY"),
        "{}",
        show(&out)
    );
    let out = restore(d, "latest", &url, &[], &[("ENCRYPT_KEY", "battery staple")]);
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("wrong key"),
        "{}",
        show(&out)
    );
    assert!(!target.exists());
    // Asked to encrypt without any key: refused before anything is written.
    let out = steadyflow(
        d,
        &[
            "backup",
            "--encrypt",
            "--database-url",
            &src,
            "--dir",
            d.join("b2").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code(&out), 2, "{}", show(&out));
    let out = restore(d, "latest", &url, &[], &[("ENCRYPT_KEY", "correct horse")]);
    assert_eq!(code(&out), 0, "{}", show(&out));
}

/// Writes a tar.zst whose manifest lists `entries` (path, bytes) and holds them as given.
fn craft(path: &Path, manifest: &Value, entries: &[(&str, &[u8], tar::EntryType)]) {
    let file = std::fs::File::create(path).unwrap();
    let z = zstd::Encoder::new(file, 3).unwrap();
    let mut b = tar::Builder::new(z);
    let m = serde_json::to_vec(manifest).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(m.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "manifest.json", &m[..]).unwrap();
    for (name, data, kind) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(*kind);
        if *kind == tar::EntryType::Symlink {
            h.set_link_name("/etc/passwd").unwrap();
            h.set_size(0);
        }
        // Raw name bytes: the builder's own path checks would refuse these names.
        let raw = &mut h.as_old_mut().name;
        raw.fill(0);
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(
            &h,
            if *kind == tar::EntryType::Symlink {
                &[][..]
            } else {
                *data
            },
        )
        .unwrap();
    }
    b.into_inner().unwrap().finish().unwrap();
}

#[test]
fn unsafe_foreign_or_newer_archives_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = sqlite_url(d, "a.db");
    runtime().block_on(async { populate(open(&src).await, 3).await });
    let sidecar = backup(d, &src, &[], &[]);
    let good = sidecar["manifest"].clone();
    let row = br#"{"id":"x"}
"#;
    let entry = |path: &str| serde_json::json!({"path": path, "size": row.len(), "sha256": "00", "class": "config"});
    let with_files = |files: Vec<Value>| {
        let mut m = good.clone();
        m["files"] = Value::Array(files);
        m
    };
    type Entry<'a> = (&'a str, &'a [u8], tar::EntryType);
    type Case<'a> = (&'a str, Value, Vec<Entry<'a>>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "absolute",
            with_files(vec![entry("/tmp/evil")]),
            vec![("/tmp/evil", row, tar::EntryType::Regular)],
            "unsafe path",
        ),
        (
            "dotdot",
            with_files(vec![entry("../evil")]),
            vec![("../evil", row, tar::EntryType::Regular)],
            "unsafe path",
        ),
        (
            "symlink",
            with_files(vec![entry("config/x")]),
            vec![("config/x", row, tar::EntryType::Symlink)],
            "link",
        ),
    ];
    for (label, manifest, entries, expect) in cases {
        let file = d.join(format!("{label}.tar.zst"));
        craft(&file, &manifest, &entries);
        let out = restore(d, file.to_str().unwrap(), &sqlite_url(d, "t.db"), &[], &[]);
        assert_eq!(code(&out), 2, "{label}: {}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(expect),
            "{label}: {}",
            show(&out)
        );
        assert!(
            !d.join("t.db").exists()
                && !Path::new("/tmp/evil").exists()
                && !d.join("../evil").exists()
        );
    }
    // A newer archive format, and a newer database schema.
    let mut newer = good.clone();
    newer["formatVersion"] = Value::from(99);
    craft(&d.join("newer.tar.zst"), &newer, &[]);
    let out = restore(
        d,
        d.join("newer.tar.zst").to_str().unwrap(),
        &sqlite_url(d, "t.db"),
        &[],
        &[],
    );
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("newer"),
        "{}",
        show(&out)
    );
    // Same archive, manifest claiming schema 99: rebuild with real table files.
    let mut schema = good.clone();
    schema["schemaVersion"] = Value::from(99);
    schema["files"] = Value::Array(vec![]);
    schema["files"].as_array_mut().unwrap().push(
        serde_json::json!({"path": "tables/definitions.jsonl", "size": 0,
            "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "class": "critical", "table": "definitions", "rows": 0, "contentSha256": "x"}),
    );
    craft(
        &d.join("schema.tar.zst"),
        &schema,
        &[("tables/definitions.jsonl", b"", tar::EntryType::Regular)],
    );
    let out = restore(
        d,
        d.join("schema.tar.zst").to_str().unwrap(),
        &sqlite_url(d, "t.db"),
        &[],
        &[],
    );
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("schema 99"),
        "{}",
        show(&out)
    );
    // Not an archive at all.
    std::fs::write(d.join("notes.txt"), "hello").unwrap();
    let out = restore(
        d,
        d.join("notes.txt").to_str().unwrap(),
        &sqlite_url(d, "t.db"),
        &[],
        &[],
    );
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(!d.join("t.db").exists());
}

/// A pseudo-random sequence from the test's own seed (no extra crate).
fn delays(seed: u64, n: usize, max_ms: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % max_ms.max(1)
        })
        .collect()
}

fn spawn_and_kill(cwd: &Path, args: &[&str], after_ms: u64) -> bool {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_steadyflow"))
        .current_dir(cwd)
        .args(args)
        .env("STEADYFLOW_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(after_ms));
    let finished = child.try_wait().unwrap().is_some();
    let _ = child.kill();
    let _ = child.wait();
    finished
}

#[test]
fn killed_backups_are_never_listed_and_the_next_backup_works() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = sqlite_url(d, "a.db");
    runtime().block_on(async { populate(open(&src).await, 600).await });
    let started = Instant::now();
    backup(d, &src, &[], &[]);
    let full_ms = started.elapsed().as_millis() as u64;
    let backups = d.join("backups");
    let args = [
        "backup",
        "--database-url",
        &src,
        "--dir",
        backups.to_str().unwrap(),
    ];
    for (k, ms) in delays(0x5eed, 12, full_ms + 20).into_iter().enumerate() {
        spawn_and_kill(d, &args, ms);
        let list = steadyflow(
            d,
            &[
                "backup",
                "list",
                "--json",
                "--dir",
                backups.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(code(&list), 0, "{}", show(&list));
        let points: Vec<Value> = serde_json::from_slice(&list.stdout).unwrap();
        assert!(!points.is_empty());
        let verify = steadyflow(
            d,
            &[
                "backup",
                "verify",
                "--all",
                "--dir",
                backups.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(
            code(&verify),
            0,
            "kill {k} after {ms} ms left a listed backup that does not verify: {}",
            show(&verify)
        );
    }
    backup(d, &src, &[], &[]);
    let debris: Vec<String> = std::fs::read_dir(&backups)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".partial") || n.ends_with(".spool"))
        .collect();
    assert!(
        debris.is_empty(),
        "left behind after a successful backup: {debris:?}"
    );
}

#[test]
fn killed_restore_leaves_the_old_data_usable_and_a_rerun_completes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b, target) = (
        sqlite_url(d, "a.db"),
        sqlite_url(d, "b.db"),
        sqlite_url(d, "t.db"),
    );
    let rt = runtime();
    rt.block_on(async {
        populate(open(&a).await, 30).await;
        populate(open(&b).await, 500).await;
    });
    let da = d.join("da");
    let db = d.join("db");
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    backup(&da, &a, &[], &[]);
    backup(&db, &b, &[], &[]);
    let out = restore(&da, "latest", &target, &[], &[]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let (want_a, want_b) = (rt.block_on(digests(&a)), rt.block_on(digests(&b)));
    let started = Instant::now();
    let out = restore(&db, "latest", &sqlite_url(d, "probe.db"), &[], &[]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let full_ms = started.elapsed().as_millis() as u64;
    let backups = db.join("backups");
    let args = [
        "restore",
        "latest",
        "--force",
        "--database-url",
        &target,
        "--dir",
        backups.to_str().unwrap(),
    ];
    for (k, ms) in delays(0xbeef, 10, full_ms + 20).into_iter().enumerate() {
        spawn_and_kill(d, &args, ms);
        let now = rt.block_on(digests(&target));
        assert!(
            now == want_a || now == want_b,
            "kill {k} after {ms} ms left the target neither old nor new"
        );
    }
    let out = restore(&db, "latest", &target, &["--force"], &[]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert_eq!(rt.block_on(digests(&target)), want_b);
}

#[test]
fn a_full_disk_fails_the_backup_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let small = d.join("small");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=96k",
            "tmpfs",
            small.to_str().unwrap(),
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        services::missing("a small tmpfs (mount needs root)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&small);
    let src = sqlite_url(d, "a.db");
    runtime().block_on(async { populate(open(&src).await, 300).await });
    let out = steadyflow(
        d,
        &[
            "backup",
            "--no-compress",
            "--database-url",
            &src,
            "--dir",
            small.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No space left"),
        "{}",
        show(&out)
    );
    let left: Vec<String> = std::fs::read_dir(&small)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n != ".lock")
        .collect();
    assert!(left.is_empty(), "a failed backup left {left:?}");
    let list = steadyflow(
        d,
        &["backup", "list", "--json", "--dir", small.to_str().unwrap()],
        &[],
    );
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]");
    // With room again, the next backup works.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=16m", small.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(grown.success());
    let out = steadyflow(
        d,
        &[
            "backup",
            "--db-only",
            "--database-url",
            &src,
            "--dir",
            small.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", show(&out));
}

fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn stock_age_zstd_and_tar_open_an_archive() {
    if !(have("age") && have("zstd") && have("tar") && have("sha256sum")) {
        services::missing("the age, zstd, tar and sha256sum commands");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = sqlite_url(d, "a.db");
    runtime().block_on(async { populate(open(&src).await, 10).await });
    let identity = age::x25519::Identity::generate();
    {
        use age::secrecy::ExposeSecret;
        std::fs::write(d.join("id.txt"), identity.to_string().expose_secret()).unwrap();
    }
    let recipient = identity.to_public().to_string();
    let sidecar = backup(
        d,
        &src,
        &["--encrypt"],
        &[("STEADYFLOW_AGE_RECIPIENTS", &recipient)],
    );
    let archive = archive_path(d, &sidecar);
    let out_dir = d.join("opened");
    std::fs::create_dir_all(&out_dir).unwrap();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "age -d -i {} {} | zstd -d | tar x -C {}",
            d.join("id.txt").display(),
            archive.display(),
            out_dir.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest, sidecar["manifest"]);
    for f in manifest["files"].as_array().unwrap() {
        let path = out_dir.join(f["path"].as_str().unwrap());
        let sum = std::process::Command::new("sha256sum")
            .arg(&path)
            .output()
            .unwrap();
        let sum = String::from_utf8_lossy(&sum.stdout);
        assert_eq!(
            sum.split_whitespace().next(),
            f["sha256"].as_str(),
            "{}",
            path.display()
        );
    }
    let instances = std::fs::read_to_string(out_dir.join("tables/instances.jsonl")).unwrap();
    assert_eq!(instances.lines().count(), 10);
}

#[test]
fn runbook_scripts_back_up_and_test_restore() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = sqlite_url(d, "a.db");
    runtime().block_on(async { populate(open(&src).await, 5).await });
    let root = services::workspace_root();
    let run = |script: &str, args: &[&str]| {
        std::process::Command::new("bash")
            .arg(root.join("scripts").join(script))
            .args(args)
            .current_dir(d)
            .env("STEADYFLOW_BIN", env!("CARGO_BIN_EXE_steadyflow"))
            .env("STEADYFLOW_DATABASE_URL", &src)
            .env("STEADYFLOW_BACKUP_DIR", d.join("backups"))
            .env("ENCRYPT_KEY", "k")
            .env("STEADYFLOW_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = run("backup.sh", &["--compress", "--encrypt", "--verify"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let file = std::fs::read_dir(d.join("backups"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.zst.age"))
        .expect("an encrypted archive");
    let out = run("restore.sh", &[file.to_str().unwrap(), "--test"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("test restore"),
        "{}",
        show(&out)
    );
    let out = run("backup.sh", &["--bogus"]);
    assert_eq!(code(&out), 2);
}

/// Work after a backup, through an engine on the wall clock: some user tasks and external
/// tasks completed (by `worker`), and `starts` new instances. Returns the ids of the
/// external tasks completed.
async fn more_work(store: Arc<dyn Store>, worker: &str, starts: usize) -> Vec<String> {
    use steadyflow_engine::{Engine, StartRequest, SystemClock};
    use steadyflow_store::{TaskFilter, TopicLock, Vars};
    let engine = Engine::new(store, Arc::new(SystemClock));
    let tasks = engine
        .tasks(&TaskFilter {
            limit: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    for t in tasks {
        engine.complete_task(&t.id, Vars::new()).await.unwrap();
    }
    // Locks taken at populate time (June 2026) have long expired on the wall clock.
    let topics = [TopicLock {
        topic: "charge".into(),
        lock_duration_ms: 600_000,
    }];
    let mut done = Vec::new();
    for t in engine.fetch_and_lock(worker, 3, &topics).await.unwrap() {
        engine
            .complete_external_task(&t.task.id, worker, Vars::new())
            .await
            .unwrap();
        done.push(t.task.id);
    }
    for k in 0..starts {
        engine
            .start(
                "order",
                StartRequest {
                    business_key: Some(format!("{worker}-{k}")),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    done
}

/// full → work → incremental → work → incremental: `latest` restores the newest state,
/// `--to-time` the state between the two, naming the work done after it; a missing
/// parent and a time outside the chain are refused.
async fn incremental_chain(dir: &Path, src: &str, dst: &str, dst_pit: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let store = open(src).await;
    populate(store.clone(), 20).await;
    assert!(journal_rows(src).await > 100);
    backup(dir, src, &[], &[]);
    // The rows the verified backup holds are pruned from the live journal.
    assert_eq!(journal_rows(src).await, 0);
    more_work(store.clone(), "w-mid", 4).await;
    assert!(journal_rows(src).await > 0);
    let mid = state_digests(src).await;
    let first = backup(dir, src, &["--incremental"], &[]);
    assert_eq!(first["manifest"]["kind"], "incremental");
    assert!(first["manifest"]["parent"].is_string());
    tokio::time::sleep(Duration::from_millis(30)).await;
    let point = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let late = more_work(store.clone(), "w-late", 2).await;
    assert!(!late.is_empty());
    let end = state_digests(src).await;
    let second = backup(dir, src, &["--incremental"], &[]);
    assert_eq!(second["manifest"]["parent"], first["manifest"]["id"]);
    drop(store);

    let out = restore(dir, "latest", dst, &[], &[]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert_eq!(
        state_digests(dst).await,
        end,
        "latest restore differs from the source"
    );
    assert_eq!(finish_all(open(dst).await).await, 26);

    let at = point.to_rfc3339();
    let out = restore(dir, "latest", dst_pit, &["--to-time", &at], &[]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert_eq!(
        state_digests(dst_pit).await,
        mid,
        "point-in-time restore differs"
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let replayed: Vec<&Value> = report["replay"]["replayReport"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    for id in &late {
        let hit = replayed
            .iter()
            .find(|w| w["id"] == id.as_str() && w["kind"] == "externalTask")
            .unwrap_or_else(|| {
                panic!("external task {id} done after the point is not reported: {replayed:?}")
            });
        assert_eq!(hit["topicOrName"], "charge");
        assert!(
            hit["businessKey"].as_str().unwrap().starts_with("order-"),
            "{hit}"
        );
        assert_eq!(hit["existsAfterRestore"], true);
    }
    assert!(report["replayReportFile"].is_string());

    // Before the chain's full backup: refused.
    let out = restore(
        dir,
        "latest",
        &sqlite_url(dir, "never.db"),
        &["--to-time", "2020-01-01T00:00:00Z"],
        &[],
    );
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("outside"),
        "{}",
        show(&out)
    );
    // A missing parent: refused, and verify says so too.
    let middle = archive_path(dir, &first);
    std::fs::rename(&middle, dir.join("moved-away")).unwrap();
    let out = restore(
        dir,
        second["manifest"]["id"].as_str().unwrap(),
        &sqlite_url(dir, "never.db"),
        &[],
        &[],
    );
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("parent"),
        "{}",
        show(&out)
    );
    assert!(!dir.join("never.db").exists());
}

#[test]
fn sqlite_incremental_chain_and_point_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    runtime().block_on(incremental_chain(
        &d.join("w"),
        &sqlite_url(d, "a.db"),
        &sqlite_url(d, "latest.db"),
        &sqlite_url(d, "pit.db"),
    ));
}

#[test]
fn postgres_incremental_chain_and_point_in_time() {
    runtime().block_on(async {
        let Some(a) = steadyflow_store_pg::testing::fresh_database().await else {
            return;
        };
        let b = steadyflow_store_pg::testing::fresh_database()
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Latest into PostgreSQL, the point in time into SQLite.
        incremental_chain(&d.join("w"), a.url(), b.url(), &sqlite_url(d, "pit.db")).await;
        for db in [&a, &b] {
            drop_side_databases(db).await;
        }
        a.cleanup().await;
        b.cleanup().await;
    });
}

#[test]
fn a_gap_in_the_chain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = sqlite_url(d, "a.db");
    let rt = runtime();
    let store = rt.block_on(open(&src));
    rt.block_on(populate(store.clone(), 5));
    let full = backup(d, &src, &[], &[]);
    rt.block_on(more_work(store.clone(), "w1", 1));
    backup(d, &src, &["--incremental"], &[]);
    rt.block_on(more_work(store.clone(), "w2", 1));
    let second = backup(d, &src, &["--incremental"], &[]);
    drop(store);
    // The second incremental's sidecar re-pointed past the first: its journal no longer
    // begins where its parent's ends.
    let id = second["manifest"]["id"].as_str().unwrap();
    let sidecar = d.join("backups").join(format!("{id}.manifest.json"));
    let mut v: Value = serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap();
    v["manifest"]["parent"] = full["manifest"]["id"].clone();
    std::fs::write(&sidecar, serde_json::to_vec(&v).unwrap()).unwrap();
    let out = restore(d, id, &sqlite_url(d, "t.db"), &[], &[]);
    assert_eq!(code(&out), 3, "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("gap"),
        "{}",
        show(&out)
    );
    assert!(!d.join("t.db").exists());
    let verify = steadyflow(
        d,
        &[
            "backup",
            "verify",
            id,
            "--dir",
            d.join("backups").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code(&verify), 3, "{}", show(&verify));
}

#[test]
fn postgres_target_disappearing_mid_restore_fails_cleanly() {
    let rt = runtime();
    rt.block_on(async {
        let Some(a) = steadyflow_store_pg::testing::fresh_database().await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let src = sqlite_url(&d, "big.db");
        populate(open(&src).await, 1500).await;
        backup(&d, &src, &[], &[]);
        let admin = steadyflow_store_pg::testing::with_dbname(a.url(), "postgres");
        let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let staging = format!("{}_restore", a.name());
        let (url, dd) = (a.url().to_string(), d.clone());
        let restore_run =
            tokio::task::spawn_blocking(move || restore(&dd, "latest", &url, &[], &[]));
        // Drop the staging database under the restore as soon as it exists.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut dropped = false;
        while Instant::now() < deadline && !restore_run.is_finished() {
            let exists: bool = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
                    &[&staging],
                )
                .await
                .unwrap()
                .get(0);
            if exists {
                tokio::time::sleep(Duration::from_millis(150)).await;
                dropped = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {staging} WITH (FORCE)"))
                    .await
                    .is_ok();
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let out = restore_run.await.unwrap();
        eprintln!(
            "staging dropped under the restore: {dropped}; restore exit {}",
            code(&out)
        );
        if dropped && code(&out) != 0 {
            assert_eq!(code(&out), 1, "{}", show(&out));
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("database"), "{}", show(&out));
            // The target was never replaced: still the empty database it was.
            let state = steadyflow_store_pg::recovery::target_state(a.url())
                .await
                .unwrap();
            assert!(state.tables.is_empty(), "{:?}", state.tables);
        } else {
            // The restore won the race: then it must be complete.
            assert_eq!(code(&out), 0, "{}", show(&out));
            assert_eq!(digests(a.url()).await, digests(&src).await);
        }
        drop_side_databases(&a).await;
        a.cleanup().await;
    });
}

fn redis_cli(args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379"])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn redis_keys_are_backed_up_restored_and_invalidated_with_the_database() {
    if !have("redis-cli") || redis_cli(&["ping"]) != "PONG" {
        services::missing("Redis at 127.0.0.1:6379 (with redis-cli)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let prefix = format!("sf-test-{}:", std::process::id());
    let key = |k: &str| format!("{prefix}{k}");
    let env = [
        ("STEADYFLOW_REDIS_URL", "redis://127.0.0.1:6379"),
        ("STEADYFLOW_REDIS_PREFIX", prefix.as_str()),
    ];
    redis_cli(&["set", &key("def:order"), "cached definition"]);
    redis_cli(&["hset", &key("token:abc"), "user", "kermit", "role", "admin"]);
    redis_cli(&["set", &key("lease"), "node-1", "px", "3600000"]);
    let elsewhere = format!("sf-other-{}:untouched", std::process::id());
    redis_cli(&["set", &elsewhere, "x"]);
    let src = sqlite_url(d, "a.db");
    runtime().block_on(async { populate(open(&src).await, 3).await });

    // --redis-only: just the keys under the prefix.
    let only = backup(d, &src, &["--redis-only"], &env);
    assert_eq!(only["manifest"]["cache"]["keys"], 3, "{only}");
    let id = only["manifest"]["id"].as_str().unwrap().to_string();
    redis_cli(&["del", &key("def:order"), &key("token:abc"), &key("lease")]);
    redis_cli(&["set", &key("stale"), "not in the backup"]);
    // A prefix holding keys is refused without --force, nothing written.
    let out = restore(d, &id, &src, &["--redis-only"], &env);
    assert_eq!(code(&out), 4, "{}", show(&out));
    assert_eq!(redis_cli(&["exists", &key("def:order")]), "0");
    let out = restore(d, &id, &src, &["--redis-only", "--force"], &env);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert_eq!(redis_cli(&["get", &key("def:order")]), "cached definition");
    assert_eq!(redis_cli(&["hget", &key("token:abc"), "role"]), "admin");
    let ttl: i64 = redis_cli(&["pttl", &key("lease")]).parse().unwrap();
    assert!(ttl > 3_000_000 && ttl <= 3_600_000, "lease TTL {ttl}");
    assert_eq!(
        redis_cli(&["exists", &key("stale")]),
        "0",
        "the prefix holds exactly the backup"
    );
    assert_eq!(redis_cli(&["get", &elsewhere]), "x");

    // A full backup holds the keys with the database; a restore brings both back.
    let full = backup(d, &src, &[], &env);
    assert!(
        full["manifest"]["dataClasses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "cache")
    );
    redis_cli(&["set", &key("def:order"), "changed after the backup"]);
    let out = restore(
        d,
        full["manifest"]["id"].as_str().unwrap(),
        &sqlite_url(d, "b.db"),
        &[],
        &env,
    );
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert_eq!(redis_cli(&["get", &key("def:order")]), "cached definition");

    // A backup without Redis keys restored while Redis is configured: the cache is
    // invalidated, never left serving what the restored database does not hold.
    let plain = backup(d, &src, &["--db-only"], &[]);
    let out = restore(
        d,
        plain["manifest"]["id"].as_str().unwrap(),
        &sqlite_url(d, "c.db"),
        &[],
        &env,
    );
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert_eq!(
        redis_cli(&[
            "exists",
            &key("def:order"),
            &key("token:abc"),
            &key("lease")
        ]),
        "0"
    );
    assert_eq!(redis_cli(&["get", &elsewhere]), "x");
    redis_cli(&["del", &elsewhere]);
}

#[test]
fn config_files_come_back_alone_and_existing_ones_need_force() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("configs")).unwrap();
    std::fs::write(d.join("configs/config.yaml"), "listen: 127.0.0.1:9999\n").unwrap();
    std::fs::write(
        d.join("configs/production.yaml"),
        "database_url: postgres://app:hunter2@db/prod\n",
    )
    .unwrap();
    let backups = d.join("backups");
    let out = steadyflow(
        d,
        &[
            "backup",
            "--config-only",
            "--json",
            "--dir",
            backups.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", show(&out));
    let sidecar: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        sidecar["backup"]["manifest"]["dataClasses"],
        serde_json::json!(["config"])
    );
    std::fs::remove_file(d.join("configs/config.yaml")).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "latest",
            "--config-only",
            "--json",
            "--dir",
            backups.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        steadyflow(d, &args, &[])
    };
    // production.yaml is still there: refused, and config.yaml not written either.
    let out = run(&[]);
    assert_eq!(code(&out), 4, "{}", show(&out));
    assert!(!d.join("configs/config.yaml").exists());
    let out = run(&["--force"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert_eq!(
        std::fs::read_to_string(d.join("configs/config.yaml")).unwrap(),
        "listen: 127.0.0.1:9999\n"
    );
    // Stored without encryption: the password never reached the archive.
    let prod = std::fs::read_to_string(d.join("configs/production.yaml")).unwrap();
    assert!(
        !prod.contains("hunter2") && prod.contains("<redacted>"),
        "{prod}"
    );
}
