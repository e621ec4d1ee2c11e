//! Backups on remote targets (issue 14): every backup goes to every configured target
//! (another directory and S3 buckets on a moto server of the test's own), `backup list`
//! says where each recovery point exists, and a restore takes the nearest intact copy:
//! from the bucket alone once the local copies are gone, from the next bucket when one
//! copy was damaged. A half-uploaded point is never listed, and the next backup uploads
//! what a target is missing.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::e2e::backup_support::*;
use crate::e2e::moto::Moto;

const PREFIX: &str = "prod";

/// A configuration file with the given targets (YAML list items).
fn config(dir: &Path, targets: &[String]) -> PathBuf {
    let path = dir.join(format!("config-{}.yaml", uuid::Uuid::now_v7()));
    let mut text = String::from("backup:\n  targets:\n");
    for t in targets {
        text.push_str(&format!("    - {t}\n"));
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn s3_target(moto: &Moto, bucket: &str) -> String {
    format!(
        "{{type: s3, endpoint: \"{}\", region: us-east-1, bucket: {bucket}, prefix: {PREFIX}/, \
         path_style: true, access_key_id: test, secret_access_key: test}}",
        moto.endpoint()
    )
}

fn local_target(path: &Path) -> String {
    format!("{{type: local, path: \"{}\"}}", path.display())
}

/// `steadyflow backup --json` with a configuration; the whole JSON answer.
fn backup_to(dir: &Path, cfg: &Path, db_url: &str, extra: &[&str]) -> Value {
    let backups = dir.join("backups");
    let mut args = vec![
        "--config",
        cfg.to_str().unwrap(),
        "backup",
        "--json",
        "--database-url",
        db_url,
        "--dir",
        backups.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = steadyflow(dir, &args, &[]);
    assert_eq!(code(&out), 0, "backup failed: {}", show(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `backup list --json`: id → locations.
fn locations(dir: &Path, cfg: &Path) -> Vec<(String, Vec<String>)> {
    let backups = dir.join("backups");
    let out = steadyflow(
        dir,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "backup",
            "list",
            "--json",
            "--dir",
            backups.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "list failed: {}", show(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["manifest"]["id"].as_str().unwrap().to_string(),
                p["locations"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

fn restore_with(dir: &Path, cfg: &Path, db_url: &str) -> std::process::Output {
    restore(
        dir,
        "latest",
        db_url,
        &["--config", cfg.to_str().unwrap()],
        &[],
    )
}

/// Flips one byte in the middle of an object, as an attacker or bit rot would.
fn damage(moto: &Moto, bucket: &str, key: &str) {
    let mut bytes = moto.get(bucket, key).expect("object to damage");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    assert_eq!(moto.put(bucket, key, &bytes), 200);
}

#[test]
fn every_backup_reaches_every_target_and_restores_from_the_bucket_alone() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("offsite", false);
    let dir = tempfile::tempdir().unwrap();
    let second = dir.path().join("second-disk");
    let cfg = config(
        dir.path(),
        &[local_target(&second), s3_target(&moto, "offsite")],
    );
    let src = sqlite_url(dir.path(), "src.db");
    runtime().block_on(async {
        let store = open(&src).await;
        populate(store.clone(), 30).await;
        let full = backup_to(dir.path(), &cfg, &src, &[]);
        assert_eq!(full["ok"], true, "{full}");
        more_work(store.clone(), "w-2", 5).await;
        let incr = backup_to(dir.path(), &cfg, &src, &["--incremental"]);
        assert_eq!(incr["ok"], true, "{incr}");
        drop(store);
        let ids = [
            full["backup"]["manifest"]["id"]
                .as_str()
                .unwrap()
                .to_string(),
            incr["backup"]["manifest"]["id"]
                .as_str()
                .unwrap()
                .to_string(),
        ];
        let everywhere = vec![
            "local".to_string(),
            format!("local:{}", second.display()),
            format!("s3://offsite/{PREFIX}"),
        ];
        assert_eq!(
            locations(dir.path(), &cfg),
            ids.iter()
                .map(|id| (id.clone(), everywhere.clone()))
                .collect::<Vec<_>>()
        );
        // The bucket holds each archive and its sidecar under the prefix.
        let mut keys = moto.keys("offsite");
        keys.sort();
        assert_eq!(keys.len(), 4, "{keys:?}");
        assert!(keys.iter().all(|k| k.starts_with("prod/")), "{keys:?}");

        // Both local copies gone: the chain comes from the bucket alone.
        std::fs::remove_dir_all(dir.path().join("backups")).unwrap();
        std::fs::remove_dir_all(&second).unwrap();
        let only_s3 = config(dir.path(), &[s3_target(&moto, "offsite")]);
        let dst = sqlite_url(dir.path(), "restored.db");
        let out = restore_with(dir.path(), &only_s3, &dst);
        assert_eq!(code(&out), 0, "restore failed: {}", show(&out));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["fetched"].as_array().unwrap().len(), 2, "{report}");
        assert_eq!(digests(&src).await, digests(&dst).await);
        assert_eq!(finish_all(open(&dst).await).await, 35);
    });
}

#[test]
fn a_damaged_copy_is_refused_and_the_next_target_restores() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("near", false);
    moto.create_bucket("far", false);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &[s3_target(&moto, "near"), s3_target(&moto, "far")],
    );
    let src = sqlite_url(dir.path(), "src.db");
    runtime().block_on(async {
        populate(open(&src).await, 20).await;
        let out = backup_to(dir.path(), &cfg, &src, &[]);
        let archive = out["backup"]["archive"].as_str().unwrap().to_string();
        std::fs::remove_dir_all(dir.path().join("backups")).unwrap();
        damage(&moto, "near", &format!("{PREFIX}/{archive}"));

        let dst = sqlite_url(dir.path(), "restored.db");
        let out = restore_with(dir.path(), &cfg, &dst);
        assert_eq!(code(&out), 0, "restore failed: {}", show(&out));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let fetched = report["fetched"].to_string();
        assert!(fetched.contains("s3://far/prod"), "{report}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("copy refused") && stderr.contains("s3://near/prod"),
            "{stderr}"
        );
        assert_eq!(digests(&src).await, digests(&dst).await);

        // Every copy damaged: verification fails and the target is not written.
        std::fs::remove_dir_all(dir.path().join("backups")).unwrap();
        damage(&moto, "far", &format!("{PREFIX}/{archive}"));
        let untouched = sqlite_url(dir.path(), "untouched.db");
        let out = restore_with(dir.path(), &cfg, &untouched);
        assert_eq!(code(&out), 3, "{}", show(&out));
        assert!(!dir.path().join("untouched.db").exists());
    });
}

#[test]
fn a_half_uploaded_point_is_never_listed_and_the_next_backup_completes_it() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("offsite", false);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[s3_target(&moto, "offsite")]);
    let src = sqlite_url(dir.path(), "src.db");
    runtime().block_on(async {
        let store = open(&src).await;
        populate(store.clone(), 10).await;
        let first = backup_to(dir.path(), &cfg, &src, &["--db-only"]);
        let id = first["backup"]["manifest"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let archive = first["backup"]["archive"].as_str().unwrap().to_string();
        // A killed upload: the archive is there, its sidecar never went up.
        assert_eq!(
            moto.delete("offsite", &format!("{PREFIX}/{id}.manifest.json")),
            204
        );
        assert_eq!(
            locations(dir.path(), &cfg),
            vec![(id.clone(), vec!["local".to_string()])]
        );
        // A truncated archive under a sidecar is not a recovery point either.
        let sidecar = serde_json::to_vec(&first["backup"]).unwrap();
        assert_eq!(
            moto.put("offsite", &format!("{PREFIX}/{id}.manifest.json"), &sidecar),
            200
        );
        let bytes = moto.get("offsite", &format!("{PREFIX}/{archive}")).unwrap();
        assert_eq!(
            moto.put(
                "offsite",
                &format!("{PREFIX}/{archive}"),
                &bytes[..bytes.len() / 2]
            ),
            200
        );
        assert_eq!(
            locations(dir.path(), &cfg),
            vec![(id.clone(), vec!["local".to_string()])]
        );
        // The next backup uploads what the bucket is missing, then its own point.
        more_work(store.clone(), "w-2", 2).await;
        let next = backup_to(dir.path(), &cfg, &src, &["--db-only", "--incremental"]);
        let uploaded = &next["targets"][0]["uploaded"];
        assert_eq!(uploaded.as_array().unwrap().len(), 2, "{next}");
        let s3 = format!("s3://offsite/{PREFIX}");
        assert!(
            locations(dir.path(), &cfg)
                .iter()
                .all(|(_, l)| l.contains(&s3)),
        );
        drop(store);
    });
}

#[test]
fn an_unreachable_target_fails_the_backup_but_keeps_the_local_copy() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = config(
        dir.path(),
        &[format!(
            "{{type: s3, endpoint: \"http://127.0.0.1:{port}\", bucket: gone, path_style: true, \
             access_key_id: test, secret_access_key: test}}"
        )],
    );
    let src = sqlite_url(dir.path(), "src.db");
    runtime().block_on(async {
        populate(open(&src).await, 5).await;
    });
    let backups = dir.path().join("backups");
    let out = steadyflow(
        dir.path(),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "backup",
            "--json",
            "--database-url",
            &src,
            "--dir",
            backups.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code(&out), 1, "{}", show(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["targets"][0]["error"].is_string(), "{v}");
    assert_eq!(
        std::fs::read_dir(&backups)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".manifest.json"))
            .count(),
        1
    );
}

/// The headers of `HEAD key`.
fn head(moto: &Moto, bucket: &str, key: &str) -> ureq::http::HeaderMap {
    let r = crate::e2e::server::bare_agent()
        .head(&format!("{}/{bucket}/{key}", moto.endpoint()))
        .header("authorization", crate::e2e::moto::AUTH)
        .call()
        .unwrap();
    assert_eq!(r.status(), 200, "HEAD {key}");
    r.headers().clone()
}

#[test]
fn locked_copies_cannot_be_deleted_and_still_restore() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("vault", true);
    let dir = tempfile::tempdir().unwrap();
    let locked = format!(
        "{{type: s3, endpoint: \"{}\", bucket: vault, prefix: {PREFIX}/, path_style: true, \
         access_key_id: test, secret_access_key: test, object_lock: {{mode: compliance, days: 2}}}}",
        moto.endpoint()
    );
    let cfg = config(dir.path(), &[locked]);
    let src = sqlite_url(dir.path(), "src.db");
    runtime().block_on(async {
        populate(open(&src).await, 10).await;
        let out = backup_to(dir.path(), &cfg, &src, &["--db-only"]);
        assert_eq!(out["ok"], true, "{out}");
        let id = out["backup"]["manifest"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let archive = out["backup"]["archive"].as_str().unwrap().to_string();
        for key in [
            format!("{PREFIX}/{archive}"),
            format!("{PREFIX}/{id}.manifest.json"),
        ] {
            // The bucket reports the retention the upload set: compliance, two days on.
            let h = head(&moto, "vault", &key);
            let header = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_string());
            assert_eq!(
                header("x-amz-object-lock-mode").as_deref(),
                Some("COMPLIANCE"),
                "{key}"
            );
            let until = header("x-amz-object-lock-retain-until-date").unwrap();
            let until = chrono::DateTime::parse_from_rfc3339(&until).unwrap();
            let hours = (until.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours();
            assert!((47..=48).contains(&hours), "retained for {hours} h");
            // Deleting the locked version is refused, whoever asks.
            let version = header("x-amz-version-id").expect("a versioned object");
            let mut r = crate::e2e::server::bare_agent()
                .delete(&format!(
                    "{}/vault/{key}?versionId={version}",
                    moto.endpoint()
                ))
                .header("authorization", crate::e2e::moto::AUTH)
                .call()
                .unwrap();
            let body = r.body_mut().read_to_string().unwrap_or_default();
            assert_eq!(r.status(), 403, "deleting locked {key}: {body}");
            assert!(body.contains("AccessDenied"), "{body}");
        }
        // The locked copy restores once the local one is gone.
        std::fs::remove_dir_all(dir.path().join("backups")).unwrap();
        let dst = sqlite_url(dir.path(), "restored.db");
        let out = restore(
            dir.path(),
            "latest",
            &dst,
            &["--config", cfg.to_str().unwrap()],
            &[],
        );
        assert_eq!(code(&out), 0, "restore failed: {}", show(&out));
        assert_eq!(digests(&src).await, digests(&dst).await);
    });
}

/// `backup prune` with a clock three days on and a one-day retention: the dry run deletes
/// nothing; the run deletes the old full backup and its incremental from the backup
/// directory and the plain bucket, keeps them on the locked bucket (Object Lock refuses),
/// and keeps the newest verified full everywhere.
#[test]
fn prune_applies_the_retention_everywhere_but_under_object_lock() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("plain", false);
    moto.create_bucket("vault", true);
    let dir = tempfile::tempdir().unwrap();
    let vault = format!(
        "{{type: s3, endpoint: \"{}\", bucket: vault, prefix: {PREFIX}/, path_style: true, \
         access_key_id: test, secret_access_key: test, object_lock: {{mode: governance, days: 7}}}}",
        moto.endpoint()
    );
    let cfg = config(dir.path(), &[s3_target(&moto, "plain"), vault]);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(
        "  retention: {critical_days: 1, important_days: 1, config_days: 1, cache_days: 1}\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let src = sqlite_url(dir.path(), "src.db");
    let ids: Vec<String> = runtime().block_on(async {
        let store = open(&src).await;
        populate(store.clone(), 5).await;
        let f1 = backup_to(dir.path(), &cfg, &src, &["--db-only"]);
        more_work(store.clone(), "w-2", 2).await;
        let i1 = backup_to(dir.path(), &cfg, &src, &["--db-only", "--incremental"]);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let f2 = backup_to(dir.path(), &cfg, &src, &["--db-only"]);
        [f1, i1, f2]
            .iter()
            .map(|v| v["backup"]["manifest"]["id"].as_str().unwrap().to_string())
            .collect()
    });
    let later = (chrono::Utc::now() + chrono::Duration::days(3)).to_rfc3339();
    let backups = dir.path().join("backups");
    let prune = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            cfg.to_str().unwrap(),
            "backup",
            "prune",
            "--json",
            "--now",
            &later,
            "--dir",
            backups.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = steadyflow(dir.path(), &args, &[]);
        assert_eq!(code(&out), 0, "prune failed: {}", show(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let everywhere = vec![
        "local".to_string(),
        format!("s3://plain/{PREFIX}"),
        format!("s3://vault/{PREFIX}"),
    ];
    let all: Vec<(String, Vec<String>)> = ids
        .iter()
        .map(|id| (id.clone(), everywhere.clone()))
        .collect();
    assert_eq!(locations(dir.path(), &cfg), all);

    let plan = prune(&["--dry-run"]);
    let delete: Vec<&str> = plan["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["delete"] == true)
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(delete, [ids[0].as_str(), ids[1].as_str()], "{plan}");
    assert_eq!(
        locations(dir.path(), &cfg),
        all,
        "a dry run deletes nothing"
    );

    let done = prune(&[]);
    for p in done["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["delete"] == true)
    {
        let refused = p["refused"].as_array().unwrap();
        assert_eq!(refused.len(), 1, "{p}");
        assert_eq!(refused[0][0], format!("s3://vault/{PREFIX}"));
        assert!(
            refused[0][1].as_str().unwrap().contains("Object Lock"),
            "{p}"
        );
    }
    let vault_only = vec![format!("s3://vault/{PREFIX}")];
    assert_eq!(
        locations(dir.path(), &cfg),
        vec![
            (ids[0].clone(), vault_only.clone()),
            (ids[1].clone(), vault_only),
            (ids[2].clone(), everywhere),
        ]
    );
}
