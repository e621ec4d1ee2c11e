//! Database outages against a PostgreSQL cluster of the test's own (`initdb` + `pg_ctl`
//! on a free port in a temporary directory; never the shared one): a restart and a
//! `pg_terminate_backend` of every connection under load cost no request; a longer stop
//! puts the node offline by itself, its writes are spooled, and once the database is
//! back it replays them and returns to normal, nothing lost or doubled.

use super::server::free_port;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::e2e::server::{ServerProcess, agent, user_task_process};
use crate::e2e::services::missing;

const START: &str = "/api/v1/process-definitions/key/outage/start";

/// A PostgreSQL cluster of this test's own, run as the `postgres` OS user (PostgreSQL
/// refuses root), stopped and removed on drop.
struct OwnPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(program);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

impl OwnPostgres {
    fn start() -> Option<OwnPostgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("initdb").exists())
            .max()?;
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
        let pg = OwnPostgres {
            bin,
            dir,
            port: free_port(),
        };
        let init = as_postgres(&pg.bin.join("initdb"))
            .args(["-U", "postgres", "--auth=trust", "-D"])
            .arg(pg.data())
            .status()
            .ok()?;
        if !init.success() {
            return None;
        }
        pg.up();
        let created = Command::new(pg.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-c", "CREATE DATABASE steadyflow"])
            .stdout(Stdio::null())
            .status()
            .ok()?
            .success();
        created.then_some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/steadyflow", self.port)
    }

    fn up(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let ok = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-w", "-t", "60", "-D"])
            .arg(self.data())
            .args(["-o", &options, "start"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "pg_ctl start failed");
    }

    fn down(&self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-w", "-m", "fast", "-D"])
            .arg(self.data())
            .arg("stop")
            .status();
    }

    /// `pg_terminate_backend` of every other connection to the database.
    fn terminate_all(&self) {
        let ok = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args([
                "-c",
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = 'steadyflow' AND pid <> pg_backend_pid()",
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "pg_terminate_backend failed");
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.down();
    }
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    sent: AtomicUsize,
    ok: AtomicUsize,
    accepted: AtomicUsize,
    failed: Mutex<Vec<String>>,
    /// Business keys of starts answered 201, with the instance id.
    started: Mutex<Vec<(String, String)>>,
    /// Business keys of starts answered 202, with the spool id.
    spooled: Mutex<Vec<(String, String)>>,
}

/// Stops the load when dropped: also when an assertion of the test fails, so the
/// scope's load threads end and the failure is reported instead of hanging.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// `threads` clients starting instances (unique business keys) until `stop`, each
/// pausing `pause` after every answer.
fn load(base: &str, threads: usize, pause: Duration, stop: &AtomicBool, tally: &Tally) {
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let client = agent();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("t{t}-{n}");
                    if n > 1 && !pause.is_zero() {
                        std::thread::sleep(pause);
                    }
                    tally.sent.fetch_add(1, Ordering::Relaxed);
                    let r = client
                        .post(format!("{base}{START}"))
                        .send_json(json!({"businessKey": key}));
                    let (status, body) = match r {
                        Ok(mut r) => {
                            let status = r.status().as_u16();
                            let text = r.body_mut().read_to_string().unwrap_or_default();
                            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
                        }
                        Err(e) => {
                            tally.failed.lock().unwrap().push(format!("{key}: {e}"));
                            continue;
                        }
                    };
                    match status {
                        201 => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            let id = body["id"].as_str().unwrap_or_default().to_string();
                            tally.started.lock().unwrap().push((key, id));
                        }
                        202 => {
                            tally.accepted.fetch_add(1, Ordering::Relaxed);
                            let id = body["spoolId"].as_str().unwrap_or_default().to_string();
                            tally.spooled.lock().unwrap().push((key, id));
                        }
                        other => tally
                            .failed
                            .lock()
                            .unwrap()
                            .push(format!("{key}: {other} {body}")),
                    }
                }
            });
        }
    });
}

fn report(what: &str, t: &Tally) {
    eprintln!(
        "FIGURE: {what}: {} sent, {} answered 2xx (201), {} answered 202, {} failed",
        t.sent.load(Ordering::Relaxed),
        t.ok.load(Ordering::Relaxed),
        t.accepted.load(Ordering::Relaxed),
        t.failed.lock().unwrap().len()
    );
}

/// Every key once, and every acknowledged start among them.
fn assert_nothing_lost_or_doubled(server: &ServerProcess, t: &Tally) {
    let keys = server.business_keys();
    let unique: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "no start was done twice");
    for (key, _) in t
        .started
        .lock()
        .unwrap()
        .iter()
        .chain(t.spooled.lock().unwrap().iter())
    {
        assert!(unique.contains(key), "acknowledged start {key} exists");
    }
}

/// PostgreSQL stopped and started again (`pg_ctl stop -m fast`, a second's pause,
/// `start`), then every connection terminated, under 8 clients starting instances:
/// every request is answered 201 (the server waits and retries inside the outage
/// grace), and every acknowledged start exists afterwards.
#[test]
fn postgres_restarts_under_load_cost_no_request() {
    let Some(pg) = OwnPostgres::start() else {
        missing("a PostgreSQL cluster of the test's own (initdb, pg_ctl, runuser)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), Some(&pg.url()), &[]);
    assert!(server.deploy(&user_task_process("outage")).0 < 300);
    let stop = AtomicBool::new(false);
    let tally = Tally::default();
    std::thread::scope(|s| {
        s.spawn(|| load(&server.base, 8, Duration::ZERO, &stop, &tally));
        let _stop = StopOnDrop(&stop);
        std::thread::sleep(Duration::from_millis(1500));
        let before = tally.ok.load(Ordering::Relaxed);
        pg.down();
        std::thread::sleep(Duration::from_secs(1));
        pg.up();
        // Load goes on after the restart.
        let deadline = Instant::now() + Duration::from_secs(30);
        while tally.ok.load(Ordering::Relaxed) < before + 100 {
            assert!(Instant::now() < deadline, "no starts after the restart");
            std::thread::sleep(Duration::from_millis(50));
        }
        let before = tally.ok.load(Ordering::Relaxed);
        pg.terminate_all();
        let deadline = Instant::now() + Duration::from_secs(30);
        while tally.ok.load(Ordering::Relaxed) < before + 100 {
            assert!(
                Instant::now() < deadline,
                "no starts after the terminations"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
    });
    report(
        "PostgreSQL restart + pg_terminate_backend under load",
        &tally,
    );
    let failed = tally.failed.lock().unwrap();
    assert!(
        failed.is_empty(),
        "failed answers: {:?}",
        &failed[..failed.len().min(10)]
    );
    drop(failed);
    assert_eq!(
        tally.accepted.load(Ordering::Relaxed),
        0,
        "nothing was spooled"
    );
    assert_nothing_lost_or_doubled(&server, &tally);
    let (_, health) = server.call("GET", "/health", None);
    assert_eq!(health["mode"]["mode"], "normal", "{health}");
}

/// PostgreSQL stopped for 30 s (the grace is 2 s here) under 4 clients each sending a
/// start every 100 ms or so: the node goes offline by itself (`/health` says so,
/// `setBy: auto`), writes answer 202 from the spool; PostgreSQL back, the node replays
/// the spool, returns to normal, and every acknowledged start (201 or 202) exists once.
#[test]
fn a_long_postgres_stop_goes_offline_spools_and_comes_back() {
    let Some(pg) = OwnPostgres::start() else {
        missing("a PostgreSQL cluster of the test's own (initdb, pg_ctl, runuser)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("STEADYFLOW_MODES__OUTAGE_GRACE_MS", "2000"),
        ("STEADYFLOW_LOG", "error,steadyflow::outage=info"),
    ];
    let server = ServerProcess::start(dir.path(), Some(&pg.url()), &env);
    assert!(server.deploy(&user_task_process("outage")).0 < 300);
    let stop = AtomicBool::new(false);
    let tally = Tally::default();
    std::thread::scope(|s| {
        s.spawn(|| load(&server.base, 4, Duration::from_millis(100), &stop, &tally));
        let _stop = StopOnDrop(&stop);
        std::thread::sleep(Duration::from_millis(1000));
        pg.down();
        let stopped = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, health) = server.call("GET", "/health", None);
            if health["mode"]["mode"] == "offline" {
                assert_eq!(health["mode"]["setBy"], "auto", "{health}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the node did not go offline: {health}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while tally.accepted.load(Ordering::Relaxed) < 50 {
            assert!(Instant::now() < deadline, "no writes were spooled");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed()));
        pg.up();
        let outage = stopped.elapsed();
        // The spool replays one request at a time, in order, while the clients go on.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (_, health) = server.call("GET", "/health", None);
            if health["mode"]["mode"] == "normal" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the node did not come back: {health}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "FIGURE: PostgreSQL down {:.1} s; back to normal {:.1} s after it was up",
            outage.as_secs_f64(),
            (stopped.elapsed() - outage).as_secs_f64()
        );
        let before = tally.ok.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(30);
        while tally.ok.load(Ordering::Relaxed) < before + 50 {
            assert!(Instant::now() < deadline, "no starts after the return");
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
    });
    report(
        "PostgreSQL stopped for 30 s (offline, spool, replay)",
        &tally,
    );
    let failed = tally.failed.lock().unwrap();
    assert!(
        failed.is_empty(),
        "failed answers: {:?}",
        &failed[..failed.len().min(10)]
    );
    drop(failed);
    // Every spooled request was replayed with 201.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (key, id) in tally.spooled.lock().unwrap().iter() {
        loop {
            let (status, st) = server.call("GET", &format!("/api/v1/spool/{id}"), None);
            assert_eq!(status, 200, "{st}");
            if st["state"] == "replayed" {
                assert_eq!(st["status"], 201, "{key}: {st}");
                break;
            }
            assert!(Instant::now() < deadline, "{key} was not replayed: {st}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_nothing_lost_or_doubled(&server, &tally);
}
