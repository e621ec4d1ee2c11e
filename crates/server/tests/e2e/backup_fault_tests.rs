//! Backups and restores meeting faults: damage anywhere in an archive, wrong keys, unsafe
//! or foreign archives, kill -9 during backup and restore, a full disk, and the database
//! disappearing under a restore. Each refusal writes nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::e2e::backup_support::*;
use crate::e2e::services;

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
