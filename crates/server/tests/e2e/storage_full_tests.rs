//! A database that refuses writes while it still answers reads: SQLite on a full disk
//! (a small tmpfs of the test's own), and a PostgreSQL database switched to
//! `default_transaction_read_only`. The node goes `read-only` by itself, writes get a
//! clear 503, reads go on, nothing acknowledged is lost or corrupted, and the node
//! returns to normal by itself once the database takes writes again.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::e2e::server::{ServerProcess, user_task_process};
use crate::e2e::services::missing;

const START: &str = "/api/v1/process-definitions/key/full/start";

/// A tmpfs of `size` mounted on a temporary directory, unmounted on drop. `None` where
/// this process may not mount (not root).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes `path` until the file system has no room left; the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut written = 0_u64;
    loop {
        match file.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    // The last partial blocks.
    for size in [4096_usize, 512, 1] {
        while file.write(&chunk[..size]).is_ok_and(|n| n > 0) {
            written += size as u64;
        }
    }
    let _ = file.sync_all();
    written
}

/// Starts an instance with `key`: (status, body).
fn start(server: &ServerProcess, key: &str) -> (u16, Value) {
    server.call("POST", START, Some(&json!({"businessKey": key})))
}

fn start_twenty(server: &ServerProcess, prefix: &str, acknowledged: &mut Vec<String>) {
    for n in 0..20 {
        let key = format!("{prefix}-{n}");
        let (status, body) = start(server, &key);
        assert_eq!(status, 201, "{prefix}: {body}");
        acknowledged.push(key);
    }
}

/// The mode is `read-only` by the node's own doing, writes are refused and reads served.
fn assert_auto_read_only(server: &ServerProcess) {
    let (health, _) = server.until_mode("read-only", Duration::from_secs(20));
    assert_eq!(health["mode"]["setBy"], "auto", "{health}");
    assert_refuses_writes_serves_reads(server);
}

fn assert_all_there_once(server: &ServerProcess, acknowledged: &[String]) {
    let keys = server.business_keys();
    let unique: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "no start was done twice");
    for key in acknowledged {
        assert!(unique.contains(key), "acknowledged start {key} exists");
    }
}

/// While the database refuses writes: a write answers 503 `read_only` with the
/// reason and `Retry-After`, and a read answers 200.
fn assert_refuses_writes_serves_reads(server: &ServerProcess) {
    let url = format!("{}{START}", server.base);
    let mut r = crate::e2e::server::agent()
        .post(&url)
        .send_json(json!({"businessKey": "refused"}))
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(
        r.headers().contains_key("retry-after"),
        "Retry-After is set"
    );
    let body: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "read_only", "{body}");
    let (status, page) = server.call("GET", "/api/v1/process-instances?limit=5", None);
    assert_eq!(status, 200, "reads go on: {page}");
    let (status, _) = server.call("GET", "/api/v1/tasks?limit=5", None);
    assert_eq!(status, 200, "reads go on");
}

/// SQLite on a 24 MiB tmpfs: the disk is filled, the clients keep starting instances
/// until SQLite can no longer grow its files; the node goes `read-only` by itself
/// (`setBy: auto`), refuses writes with 503 `read_only`, serves reads; the space freed,
/// it returns to normal and takes writes. Every acknowledged start exists once, also
/// after a `kill -9` and a restart, and `PRAGMA integrity_check` finds the file intact.
#[test]
fn sqlite_on_a_full_disk_goes_read_only_and_comes_back() {
    let Some(disk) = SmallDisk::mount("24m") else {
        missing("a tmpfs of the test's own (mount, as root)");
        return;
    };
    let data = disk.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let env = [
        ("STEADYFLOW_MODES__OUTAGE_GRACE_MS", "1000"),
        ("STEADYFLOW_LOG", "error,steadyflow::outage=info"),
    ];
    let mut server = ServerProcess::start(&data, None, &env);
    assert!(server.deploy(&user_task_process("full")).0 < 300);
    let mut acknowledged = Vec::new();
    start_twenty(&server, "before", &mut acknowledged);

    let filler: PathBuf = disk.path().join("filler");
    let filled = fill(&filler);
    assert!(
        filled > 1024 * 1024,
        "the filler took the space ({filled} bytes)"
    );
    // Writes go on while SQLite still finds room in its files; they stop with 503 once
    // it cannot grow them. Every answer is 201 or 503, never another failure.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut n = 0;
    let refused = loop {
        n += 1;
        let key = format!("during-{n}");
        let (status, body) = start(&server, &key);
        match status {
            201 => acknowledged.push(key),
            503 => break body,
            other => panic!("a write on a full disk answered {other}: {body}"),
        }
        assert!(
            Instant::now() < deadline,
            "{n} writes on a full disk all succeeded"
        );
    };
    eprintln!("FIGURE: full disk: {n} starts until the first 503 ({refused})");
    let code = refused["error"]["code"].as_str().unwrap_or_default();
    assert!(
        code == "read_only" || code == "unavailable",
        "a clear 503: {refused}"
    );
    assert_auto_read_only(&server);

    std::fs::remove_file(&filler).unwrap();
    server.until_mode("normal", Duration::from_secs(30));
    start_twenty(&server, "after", &mut acknowledged);
    assert_all_there_once(&server, &acknowledged);

    server.kill();
    let db = data.join("steadyflow.db");
    match Command::new("sqlite3")
        .arg(&db)
        .arg("PRAGMA integrity_check;")
        .output()
    {
        Ok(out) => assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "ok",
            "integrity_check: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => missing("sqlite3 (Debian package sqlite3)"),
    }
    let server = ServerProcess::start(&data, None, &env);
    assert_all_there_once(&server, &acknowledged);
}

/// A PostgreSQL database switched to `default_transaction_read_only` (as a standby
/// promoted the wrong way round, or an operator's fence): the node goes `read-only` by
/// itself, refuses writes with 503 `read_only`, serves reads, and returns to normal
/// once the setting is reset; nothing acknowledged is lost.
#[test]
fn postgres_refusing_writes_puts_the_node_read_only_and_back() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Some(db) = rt.block_on(steadyflow_store_pg::testing::fresh_database()) else {
        missing("PostgreSQL");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("STEADYFLOW_MODES__OUTAGE_GRACE_MS", "1000"),
        ("STEADYFLOW_LOG", "error,steadyflow::outage=info"),
    ];
    let server = ServerProcess::start(dir.path(), Some(db.url()), &env);
    assert!(server.deploy(&user_task_process("full")).0 < 300);
    let mut acknowledged = Vec::new();
    start_twenty(&server, "before", &mut acknowledged);

    // The setting applies to new sessions: every session of the database is ended.
    let fence = |on: bool| {
        let sql = if on {
            format!(
                "ALTER DATABASE \"{0}\" SET default_transaction_read_only = on",
                db.name()
            )
        } else {
            format!(
                "ALTER DATABASE \"{0}\" RESET default_transaction_read_only",
                db.name()
            )
        };
        rt.block_on(admin_sql(db.url(), &sql, db.name()));
    };
    fence(true);
    assert_auto_read_only(&server);

    fence(false);
    server.until_mode("normal", Duration::from_secs(30));
    start_twenty(&server, "after", &mut acknowledged);
    assert_all_there_once(&server, &acknowledged);
    drop(server);
    rt.block_on(db.cleanup());
}

/// Runs `sql` on the server of `url` (through the `postgres` database), then ends every
/// other session of database `name`, so that its connections come back with the new
/// settings.
async fn admin_sql(url: &str, sql: &str, name: &str) {
    let admin = steadyflow_store_pg::testing::with_dbname(url, "postgres");
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    client.batch_execute(sql).await.unwrap();
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&name],
        )
        .await
        .unwrap();
    drop(client);
    let _ = task.await;
}
