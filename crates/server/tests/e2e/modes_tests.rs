//! Service modes end to end: a mode set on one node (or with `steadyflow mode set`)
//! reaches a second node sharing the PostgreSQL database; the offline spool survives
//! `kill -9` at random moments and replays every acknowledged request once.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::e2e::server::{ServerProcess, agent, user_task_process};

const START: &str = "/api/v1/process-definitions/key/modes/start";

fn steadyflow(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_steadyflow"))
        .args(args)
        .current_dir(dir)
        .env("STEADYFLOW_LOG", "warn")
        .output()
        .expect("run steadyflow")
}

/// A mode set through one node's API, and one set with `steadyflow mode set`, reach the
/// other node within 2 s (each node reads the mode row every second); both nodes then
/// refuse writes with the reason, and `--until` ends the mode by itself.
#[test]
fn a_mode_reaches_every_node_sharing_the_database() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Some(db) = rt.block_on(steadyflow_store_pg::testing::fresh_database()) else {
        return;
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = ServerProcess::start(dir_a.path(), Some(db.url()), &[]);
    let b = ServerProcess::start(dir_b.path(), Some(db.url()), &[]);
    assert!(a.deploy(&user_task_process("modes")).0 < 300);

    let (status, view) = a.call(
        "PUT",
        "/api/v1/system/mode",
        Some(&json!({"mode": "read-only", "reason": "failover drill"})),
    );
    assert_eq!(status, 200, "{view}");
    let took = b.until_mode("read-only", Duration::from_secs(2)).1;
    eprintln!("FIGURE: read-only set on node A reached node B after {took:?}");
    let (status, body) = b.call("POST", START, Some(&json!({})));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "read_only");
    assert_eq!(body["error"]["message"], "failover drill");
    let (_, health) = b.call("GET", "/health", None);
    assert_eq!(health["mode"]["setBy"], "bootstrap-admin", "{health}");

    // The command line, beside the running nodes.
    let until = (chrono::Utc::now() + chrono::Duration::seconds(4)).to_rfc3339();
    let out = steadyflow(
        &[
            "mode",
            "set",
            "offline",
            "--reason",
            "network maintenance",
            "--until",
            &until,
            "--database-url",
            db.url(),
        ],
        dir_a.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t_a = a.until_mode("offline", Duration::from_secs(2)).1;
    let t_b = b.until_mode("offline", Duration::from_secs(2)).1;
    eprintln!("FIGURE: offline set by the CLI reached node A after {t_a:?}, node B after {t_b:?}");
    let out = steadyflow(&["mode", "get", "--database-url", db.url()], dir_a.path());
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["mode"], "offline");
    assert_eq!(got["reason"], "network maintenance");
    assert!(got["setBy"].as_str().unwrap().starts_with("cli:"), "{got}");

    // `until` passes: both nodes return to normal by themselves.
    a.until_mode("normal", Duration::from_secs(10));
    b.until_mode("normal", Duration::from_secs(3));
    let (status, body) = b.call("POST", START, Some(&json!({})));
    assert_eq!(status, 201, "{body}");
    drop((a, b));
    rt.block_on(db.cleanup());
}

/// Sends one start with a unique business key; `Some(spool id)` when it was answered
/// 202, `None` when the connection failed (the server was killed).
fn spool_one(base: &str, n: usize) -> Option<String> {
    let body = json!({"businessKey": format!("order-{n}")});
    let r = agent().post(format!("{base}{START}")).send_json(&body);
    let mut r = r.ok()?;
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().ok()?;
    assert_eq!(status, 202, "offline writes are spooled: {text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let location = r
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string());
    let id = v["spoolId"].as_str().unwrap().to_string();
    assert_eq!(location, Some(format!("/api/v1/spool/{id}")));
    Some(id)
}

/// Offline: writes are spooled (fsync before 202) while the server is killed (`kill -9`)
/// at random moments and started again; back to normal, every acknowledged request is
/// replayed once, in arrival order, and its outcome can be asked for by its spool id.
#[test]
fn the_spool_survives_kill_9_and_replays_every_acknowledged_request_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), None, &[]);
    assert!(server.deploy(&user_task_process("modes")).0 < 300);
    let (status, _) = server.call(
        "PUT",
        "/api/v1/system/mode",
        Some(&json!({"mode": "offline", "reason": "database upgrade"})),
    );
    assert_eq!(status, 200);

    let mut acknowledged: Vec<(usize, String)> = Vec::new();
    let mut sent = 0;
    let mut failed = 0;
    let seed = std::process::id() as u64 ^ chrono::Utc::now().timestamp_micros() as u64;
    let mut rng = seed;
    let mut next = || {
        // xorshift: a random moment for each kill, reproducible from the printed seed.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..4 {
        let base = server.base.clone();
        let kill_after = Duration::from_millis(20 + next() % 200);
        let pid = server.pid();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(kill_after);
            // SIGKILL while requests are in flight.
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let n = sent;
            sent += 1;
            match spool_one(&base, n) {
                Some(id) => acknowledged.push((n, id)),
                None => {
                    failed += 1;
                    break;
                }
            }
        }
        killer.join().unwrap();
        server.kill();
        eprintln!("round {round}: killed after {kill_after:?} (seed {seed})");
        server = ServerProcess::start(dir.path(), None, &[]);
        // Still offline after the restart (the mode is in the database).
        let (status, body) = server.call("GET", "/api/v1/process-instances", None);
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (503, json!("offline"))
        );
    }
    eprintln!(
        "FIGURE: spool under kill -9: {sent} sent, {} answered 202, {failed} cut off by a kill",
        acknowledged.len()
    );
    assert!(acknowledged.len() > 10, "enough requests were spooled");

    let (status, _) = server.call(
        "PUT",
        "/api/v1/system/mode",
        Some(&json!({"mode": "normal"})),
    );
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    for (n, id) in &acknowledged {
        loop {
            let (status, st) = server.call("GET", &format!("/api/v1/spool/{id}"), None);
            assert_eq!(status, 200, "{st}");
            if st["state"] == "replayed" {
                assert_eq!(st["status"], 201, "{st}");
                assert_eq!(st["answer"]["businessKey"], format!("order-{n}"), "{st}");
                break;
            }
            assert!(Instant::now() < deadline, "{id} was not replayed: {st}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Requests cut off by a kill may have been kept too (after the fsync, before the
    // answer): they are replayed as well, and the spool runs empty.
    let spool = dir.path().join("spool");
    let waiting = || {
        std::fs::read_dir(&spool)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".req")
            })
            .count()
    };
    while waiting() > 0 {
        assert!(Instant::now() < deadline, "the spool did not run empty");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Once each: one instance per acknowledged key, none twice, in arrival order.
    let mut started: Vec<(String, String)> = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = server.call(
            "GET",
            &format!("/api/v1/process-instances?limit=1000{after}"),
            None,
        );
        assert_eq!(status, 200, "{page}");
        for i in page["items"].as_array().unwrap() {
            started.push((
                i["startedAt"].as_str().unwrap_or_default().to_string(),
                i["businessKey"].as_str().unwrap_or_default().to_string(),
            ));
        }
        match page["nextCursor"].as_str() {
            Some(c) => after = format!("&after={c}"),
            None => break,
        }
    }
    let mut keys: Vec<&str> = started.iter().map(|(_, k)| k.as_str()).collect();
    keys.sort();
    let total = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), total, "no request was replayed twice");
    for (n, _) in &acknowledged {
        assert!(
            keys.binary_search(&format!("order-{n}").as_str()).is_ok(),
            "acknowledged order-{n} was replayed"
        );
    }
    // In arrival order: the acknowledged requests started in the order they came.
    let started_at: std::collections::HashMap<&str, &str> = started
        .iter()
        .map(|(t, k)| (k.as_str(), t.as_str()))
        .collect();
    let times: Vec<chrono::DateTime<chrono::Utc>> = acknowledged
        .iter()
        .map(|(n, _)| started_at[format!("order-{n}").as_str()].parse().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "replayed in arrival order"
    );
    // Requests cut off by a kill were never acknowledged: spooled or not, at most once.
    assert!(total <= sent, "{total} instances for {sent} requests");
}

/// Chromium (headless) renders the status page of an offline node in English and, with
/// a Chinese `Accept-Language`, in Simplified Chinese; a browser asking for an API page
/// while offline gets the same page.
#[test]
fn the_status_page_renders_in_chromium_in_both_languages() {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(chromium) = chromium else {
        crate::e2e::services::missing("chromium (Debian package `chromium`)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), None, &[]);
    let until = "2031-05-04T03:02:00Z";
    let (status, _) = server.call(
        "PUT",
        "/api/v1/system/mode",
        Some(&json!({"mode": "offline", "reason": "Umzug <des> Rechenzentrums", "until": until})),
    );
    assert_eq!(status, 200);
    let profile = tempfile::tempdir().unwrap();
    let render = |lang: &str, path: &str| -> String {
        let out = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                &format!("--user-data-dir={}", profile.path().display()),
                &format!("--accept-lang={lang}"),
                "--dump-dom",
                &format!("{}{path}", server.base),
            ])
            .output()
            .expect("run chromium");
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let en = render("en-US,en", "/status");
    assert!(en.contains("Steadyflow is offline"), "{en}");
    assert!(
        en.contains("Umzug &lt;des&gt; Rechenzentrums"),
        "the reason, escaped: {en}"
    );
    assert!(
        en.contains("2031-05-04 03:02 UTC"),
        "the expected return: {en}"
    );
    let zh = render("zh-CN,zh", "/status");
    assert!(zh.contains("Steadyflow 暂时离线"), "{zh}");
    assert!(zh.contains("预计恢复时间"), "{zh}");
    assert!(zh.contains("lang=\"zh-Hans\""), "{zh}");
    // An API page asked for by a browser while offline: the same page.
    let api = render("zh-CN", "/api/v1/process-instances");
    assert!(api.contains("Steadyflow 暂时离线"), "{api}");
}

const EXTERNAL_TASK: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn" targetNamespace="t">
  <process id="capped" isExecutable="true">
    <startEvent id="s" />
    <sequenceFlow id="f1" sourceRef="s" targetRef="work" />
    <serviceTask id="work" camunda:type="external" camunda:topic="capped" />
    <sequenceFlow id="f2" sourceRef="work" targetRef="e" />
    <endEvent id="e" />
  </process>
</definitions>"#;

/// `core-only` bounds what a worker takes: a fetch-and-lock asking for 10 tasks gets
/// `modes.core_only_fetch_max_tasks` (3 here) while the mode holds, and the rest once
/// the mode is `normal` again.
#[test]
fn core_only_caps_what_one_fetch_takes() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("STEADYFLOW_MODES__CORE_ONLY_FETCH_MAX_TASKS", "3")];
    let server = ServerProcess::start(dir.path(), None, &env);
    assert!(server.deploy(EXTERNAL_TASK).0 < 300);
    for n in 0..10 {
        let (status, body) = server.call(
            "POST",
            "/api/v1/process-definitions/key/capped/start",
            Some(&json!({"businessKey": format!("c{n}")})),
        );
        assert_eq!(status, 201, "{body}");
    }
    let fetch = json!({
        "workerId": "w",
        "maxTasks": 10,
        "topics": [{"topicName": "capped", "lockDuration": 60000}],
    });
    let set = |mode: &str| {
        let (status, body) = server.call(
            "PUT",
            "/api/v1/system/mode",
            Some(&json!({"mode": mode, "reason": "test"})),
        );
        assert_eq!(status, 200, "{body}");
    };
    set("core-only");
    let (status, locked) = server.call(
        "POST",
        "/api/v1/external-tasks/fetch-and-lock",
        Some(&fetch),
    );
    assert_eq!(status, 200, "{locked}");
    assert_eq!(locked.as_array().unwrap().len(), 3, "{locked}");
    set("normal");
    let (status, locked) = server.call(
        "POST",
        "/api/v1/external-tasks/fetch-and-lock",
        Some(&fetch),
    );
    assert_eq!(status, 200, "{locked}");
    assert_eq!(locked.as_array().unwrap().len(), 7, "{locked}");
}

/// The start-up order follows the runbook's recovery priorities, and a part that cannot
/// start does not stop those before it: with a scheduled backup whose cron expression
/// is wrong, `serve` still serves the API (instances start), `/health` says `degraded`
/// with component `backups` down and the reason, and the timer driver runs.
#[test]
fn a_part_that_cannot_start_leaves_the_api_serving() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broken-schedule.yaml");
    std::fs::write(
        &config,
        format!(
            "backup:\n  targets:\n    - {{type: local, path: {}}}\n  schedules:\n    full: \"not a cron\"\n",
            dir.path().join("remote").display()
        ),
    )
    .unwrap();
    let server = ServerProcess::start(
        dir.path(),
        None,
        &[("STEADYFLOW_CONFIG", config.to_str().unwrap())],
    );
    // The API serves before the timer driver's first round: wait for that round.
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let (status, health) = server.call("GET", "/health", None);
        assert_eq!(status, 200, "{health}");
        if health["components"]["timerDriver"]["status"] == "up" {
            break health;
        }
        assert!(
            Instant::now() < deadline,
            "the timer driver did not run: {health}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(health["status"], "degraded", "{health}");
    let backups = &health["components"]["backups"];
    assert_eq!(backups["status"], "down", "{health}");
    let reason = backups["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("scheduled backups") && reason.contains("not a cron"),
        "{health}"
    );
    assert_eq!(
        health["components"]["timerDriver"]["status"], "up",
        "{health}"
    );
    assert!(server.deploy(&user_task_process("modes")).0 < 300);
    let (status, body) = server.call("POST", START, Some(&json!({"businessKey": "b"})));
    assert_eq!(status, 201, "{body}");
}
