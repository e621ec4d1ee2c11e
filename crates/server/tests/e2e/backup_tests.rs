//! Backups and restores through the `steadyflow` binary, as an operator runs them: round
//! trips on and across SQLite and PostgreSQL (every table compared, every restored
//! instance run to its end), refusals that write nothing, the stock tools opening an
//! archive, the runbook scripts, Redis keys and configuration files.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use steadyflow_store::Store;

use crate::e2e::backup_support::*;
use crate::e2e::services;

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
            "users",
            "api_tokens",
            "system_mode",
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
