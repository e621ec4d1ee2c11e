//! Backup targets against a moto S3 server of the test's own (`moto_server`, PyPI's
//! `moto[server]`): Steadyflow's own deletions refuse a point under Object Lock, and
//! delete an unlocked one (sidecar first, so it stops being listed at once). Without
//! moto the tests are skipped with a notice, unless `STEADYFLOW_REQUIRE_SERVICES=1` (CI).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed unwrap is a failed test"
)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use steadyflow_backup::targets::{LockMode, ObjectLock, Target, TargetSpec, UploadReport};
use steadyflow_backup::{BackupError, BackupOptions, ConfigFile, Kind, Parts, Progress, create};

/// Moto does not check signatures; some requests only need the header.
const AUTH: &str = "AWS4-HMAC-SHA256 Credential=test/20261203/us-east-1/s3/aws4_request, \
SignedHeaders=host, Signature=0";

struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn moto() -> Option<Moto> {
    // reqwest's rustls needs a process-wide provider (the library installs ring too).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let installed = Command::new("moto_server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        if std::env::var("STEADYFLOW_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
            panic!("moto_server is required (STEADYFLOW_REQUIRE_SERVICES=1) but is not available");
        }
        eprintln!("NOTICE: moto_server is not available; skipping this test");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let m = Moto { child, port };
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "moto_server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some(m)
}

async fn bucket(m: &Moto, name: &str, lock: bool) {
    let mut req = reqwest::Client::new()
        .put(format!("http://127.0.0.1:{}/{name}", m.port))
        .header("authorization", AUTH);
    if lock {
        req = req.header("x-amz-bucket-object-lock-enabled", "true");
    }
    assert!(req.send().await.unwrap().status().is_success());
}

fn spec(m: &Moto, bucket: &str, lock: Option<ObjectLock>) -> TargetSpec {
    TargetSpec::S3 {
        endpoint: Some(format!("http://127.0.0.1:{}", m.port)),
        region: "us-east-1".into(),
        bucket: bucket.into(),
        prefix: "t/".into(),
        path_style: true,
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        object_lock: lock,
    }
}

#[tokio::test]
async fn deleting_a_locked_point_is_refused_and_an_unlocked_one_goes() {
    let Some(m) = moto().await else { return };
    bucket(&m, "locked", true).await;
    bucket(&m, "plain", false).await;
    // A configuration-only backup needs no database.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, "listen: 127.0.0.1:1\n").unwrap();
    let opts = BackupOptions {
        dir: dir.path().join("backups"),
        parts: Parts::ConfigOnly,
        compress: true,
        encrypt: None,
        config_files: vec![ConfigFile {
            path: cfg,
            name: "config.yaml".into(),
        }],
        now: chrono::Utc::now(),
        kind: Kind::Full,
        redis: None,
        prune_journal: false,
    };
    let point = create(None, &opts, &Progress::none()).await.unwrap();
    let locked = Target::open(&spec(
        &m,
        "locked",
        Some(ObjectLock {
            mode: LockMode::Governance,
            days: 1,
        }),
    ))
    .unwrap();
    let plain = Target::open(&spec(&m, "plain", None)).unwrap();
    for t in [&locked, &plain] {
        t.upload(&opts.dir, &point).await.unwrap();
        assert_eq!(t.list().await.unwrap(), vec![point.clone()]);
    }
    let r = locked.retention(&point).await.unwrap().expect("retention");
    assert_eq!(r.mode, LockMode::Governance);
    assert!(r.until > chrono::Utc::now() + chrono::Duration::hours(23));
    match locked.delete(&point).await {
        Err(BackupError::Locked(msg)) => assert!(msg.contains("until"), "{msg}"),
        other => panic!("a locked point was not refused: {other:?}"),
    }
    assert_eq!(locked.list().await.unwrap().len(), 1);
    assert_eq!(plain.retention(&point).await.unwrap(), None);
    plain.delete(&point).await.unwrap();
    assert!(plain.list().await.unwrap().is_empty());
}

/// An upload to S3 cut off after its first part goes on from the second on the next try:
/// the part already in the bucket is not sent again, the object is whole and verified,
/// and the point is listed once; while it was cut off it was no recovery point.
#[tokio::test]
async fn a_cut_off_upload_resumes_from_its_last_part() {
    let Some(m) = moto().await else { return };
    bucket(&m, "resume", false).await;
    let dir = tempfile::tempdir().unwrap();
    // 20 MiB of pseudo-random text (configuration files are text), stored uncompressed:
    // three parts of 8 MiB.
    let blob = dir.path().join("blob.txt");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = String::with_capacity(20 << 20);
    while data.len() < 20 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.push_str(&format!("{x:016x}\n"));
    }
    std::fs::write(&blob, &data).unwrap();
    let opts = BackupOptions {
        dir: dir.path().join("backups"),
        parts: Parts::ConfigOnly,
        compress: false,
        encrypt: None,
        config_files: vec![ConfigFile {
            path: blob,
            name: "blob.txt".into(),
        }],
        now: chrono::Utc::now(),
        kind: Kind::Full,
        redis: None,
        prune_journal: false,
    };
    let point = create(None, &opts, &Progress::none()).await.unwrap();
    assert!(point.archive_size > 16 << 20, "{}", point.archive_size);
    let t = Target::open(&spec(&m, "resume", None)).unwrap();

    let cut = t.upload_parts(&opts.dir, &point, Some(1)).await.unwrap();
    assert_eq!(cut, UploadReport::default());
    assert!(
        t.list().await.unwrap().is_empty(),
        "a cut-off upload is no recovery point"
    );

    let resumed = t.upload_parts(&opts.dir, &point, None).await.unwrap();
    assert_eq!(
        resumed,
        UploadReport {
            parts_sent: 2,
            parts_resumed: 1
        }
    );
    assert_eq!(t.list().await.unwrap(), vec![point.clone()]);

    // The state of the finished upload is gone: the next upload starts anew.
    let again = t.upload_parts(&opts.dir, &point, None).await.unwrap();
    assert_eq!(
        again,
        UploadReport {
            parts_sent: 3,
            parts_resumed: 0
        }
    );
    assert_eq!(t.list().await.unwrap(), vec![point]);
}
