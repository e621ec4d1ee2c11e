//! Backups over HTTP and their limits (issue 14), against a real `steadyflow serve`:
//! `POST /api/v1/backups` starts one (admin), `GET /api/v1/backups[/{id}]` list and show
//! them with their verification state (operator, admin; 403 for viewers); `/health`
//! shows the last backup's age and the shipping lag and turns `degraded` past the limits,
//! which raise `backup_late` / `shipping_lag` alerts on a local webhook receiver and a
//! local SMTP sink, and in `steadyflow_backup_alerts_active{kind}`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::e2e::server::{ServerProcess, agent, bare_agent};

/// Writes `configs/config.yaml` with a `backup:` section `backup` (YAML, indented by 2).
fn config(dir: &Path, backup: &str) {
    std::fs::create_dir_all(dir.join("configs")).unwrap();
    std::fs::write(
        dir.join("configs/config.yaml"),
        format!("backup:\n{backup}"),
    )
    .unwrap();
}

/// POST `body` to `path` as the bootstrap admin: (status, Location, body).
fn post(server: &ServerProcess, path: &str, body: &Value) -> (u16, Option<String>, Value) {
    let mut resp = agent()
        .post(format!("{}{path}", server.base))
        .send_json(body)
        .unwrap();
    let location = resp
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        location,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// A request with `token` as the bearer: (status, body).
fn as_user(server: &ServerProcess, token: &str, method: &str, path: &str) -> (u16, Value) {
    let url = format!("{}{path}", server.base);
    let auth = format!("Bearer {token}");
    let a = bare_agent();
    let mut resp = match method {
        "GET" => a.get(&url).header("authorization", &auth).call(),
        _ => a
            .post(&url)
            .header("authorization", &auth)
            .send_json(json!({"kind": "full"})),
    }
    .unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A user with `role` and a token of theirs.
fn token_of(server: &ServerProcess, name: &str, role: &str) -> String {
    let (s, b) = server.call(
        "POST",
        "/api/v1/users",
        Some(&json!({"id": name, "role": role})),
    );
    assert_eq!(s, 201, "{b}");
    let (s, b) = server.call(
        "POST",
        &format!("/api/v1/users/{name}/tokens"),
        Some(&json!({})),
    );
    assert_eq!(s, 201, "{b}");
    b["token"].as_str().unwrap().to_string()
}

/// Follows a run until it is no longer `running`.
fn finished(server: &ServerProcess, location: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (s, b) = server.call("GET", location, None);
        assert_eq!(s, 200, "{b}");
        if b["state"] != "running" {
            return b;
        }
        assert!(Instant::now() < deadline, "backup still running: {b}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn backup_component(server: &ServerProcess) -> (Value, Value) {
    let (s, h) = server.call("GET", "/health", None);
    assert_eq!(s, 200, "{h}");
    (h["components"]["backup"].clone(), h)
}

#[test]
fn a_backup_started_over_http_completes_verified_and_is_listed_and_viewers_are_refused() {
    backups_over_http(None);
}

/// The same on PostgreSQL, where a run also takes the schedule's advisory lease.
#[test]
fn backups_over_http_on_postgres() {
    let rt = crate::e2e::backup_support::runtime();
    let Some(pg) = rt.block_on(steadyflow_store_pg::testing::fresh_database()) else {
        return;
    };
    backups_over_http(Some(pg.url()));
    rt.block_on(pg.cleanup());
}

fn backups_over_http(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    config(
        dir.path(),
        "  targets: [{type: local, path: ./remote}]\n  continuous: {enabled: false}\n  \
         schedules: {full: null, incremental: null}\n",
    );
    let server = ServerProcess::start(dir.path(), database_url, &[]);
    let xml =
        std::fs::read_to_string(crate::e2e::services::workspace_root().join("examples/order.bpmn"))
            .unwrap();
    assert_eq!(server.deploy(&xml).0, 201);

    // No backup yet: the component says so and is up (the limit has not passed).
    let (b, _) = backup_component(&server);
    assert_eq!(b["status"], "up", "{b}");
    assert!(b.get("lastBackupAgeSeconds").is_none(), "{b}");
    assert!(
        b.get("shippingLagSeconds").is_none(),
        "shipping is off: {b}"
    );

    // A full backup, over HTTP.
    let (s, location, started) = post(&server, "/api/v1/backups", &json!({"kind": "full"}));
    assert_eq!(s, 202, "{started}");
    let location = location.expect("a Location");
    assert_eq!(
        location,
        format!("/api/v1/backups/{}", started["id"].as_str().unwrap())
    );
    assert_eq!(started["state"], "running");
    assert_eq!(started["run"]["startedBy"], "bootstrap-admin");
    let full = finished(&server, &location);
    assert_eq!(full["state"], "completed", "{full}");
    let full_id = full["run"]["backupId"].as_str().unwrap().to_string();
    let point = &full["point"];
    assert_eq!(point["id"], full_id.as_str());
    assert_eq!(point["kind"], "full");
    assert_eq!(point["verification"]["state"], "verified", "{point}");
    assert!(point["tableRows"].as_u64().unwrap() > 0, "{point}");
    let mut locations: Vec<&str> = point["locations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    locations.sort();
    assert_eq!(locations, ["local", "local:./remote"], "on every target");
    assert!(
        dir.path()
            .join("remote")
            .join(point["archive"].as_str().unwrap())
            .is_file()
    );

    // An incremental continues it; one that is not of the database is refused.
    let (s, _, b) = post(
        &server,
        "/api/v1/backups",
        &json!({"kind": "incremental", "parts": "redis"}),
    );
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{b}"
    );
    let (s, _, b) = post(&server, "/api/v1/backups", &json!({"parts": "redis"}));
    assert_eq!(s, 400, "no Redis here: {b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("no Redis"),
        "{b}"
    );
    let (s, location, b) = post(
        &server,
        "/api/v1/backups",
        &json!({"kind": "incremental", "parts": "db"}),
    );
    assert_eq!(s, 202, "{b}");
    let incr = finished(&server, &location.unwrap());
    assert_eq!(incr["state"], "completed", "{incr}");
    assert_eq!(incr["point"]["parent"], full_id.as_str());
    let incr_id = incr["point"]["id"].as_str().unwrap().to_string();

    // The list, newest first, a page at a time.
    let (s, page) = server.call("GET", "/api/v1/backups?limit=1", None);
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["items"][0]["id"], incr_id.as_str());
    let cursor = page["nextCursor"].as_str().expect("a second page");
    let (s, page) = server.call(
        "GET",
        &format!("/api/v1/backups?limit=1&after={cursor}"),
        None,
    );
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["items"][0]["id"], full_id.as_str());
    assert_eq!(page["items"][0]["verification"]["state"], "verified");
    assert!(page["nextCursor"].is_null(), "{page}");

    // One by its own id: verified, with the run that took it.
    let (s, one) = server.call("GET", &format!("/api/v1/backups/{full_id}"), None);
    assert_eq!(s, 200, "{one}");
    assert_eq!(one["state"], "completed");
    assert_eq!(one["point"]["verification"]["state"], "verified");
    assert!(
        one["point"]["verification"]["verifiedAt"].is_string(),
        "{one}"
    );
    assert_eq!(one["run"]["backupId"], full_id.as_str());
    let (s, none) = server.call("GET", "/api/v1/backups/19700101_000000-full", None);
    assert_eq!(
        (s, none["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    // `/health`: the age of the newest backup, up.
    let (b, _) = backup_component(&server);
    assert_eq!(b["status"], "up", "{b}");
    assert!(b["lastBackupAgeSeconds"].as_f64().unwrap() < 120.0, "{b}");

    // Roles: operators read, only administrators start; users and viewers see nothing.
    let operator = token_of(&server, "olga", "operator");
    assert_eq!(as_user(&server, &operator, "GET", "/api/v1/backups").0, 200);
    assert_eq!(
        as_user(
            &server,
            &operator,
            "GET",
            &format!("/api/v1/backups/{full_id}")
        )
        .0,
        200
    );
    assert_eq!(
        as_user(&server, &operator, "POST", "/api/v1/backups").0,
        403
    );
    for (name, role) in [("vera", "viewer"), ("ulf", "user")] {
        let token = token_of(&server, name, role);
        for (method, path) in [
            ("GET", "/api/v1/backups".to_string()),
            ("GET", format!("/api/v1/backups/{full_id}")),
            ("POST", "/api/v1/backups".to_string()),
        ] {
            let (s, b) = as_user(&server, &token, method, &path);
            assert_eq!(s, 403, "{role} {method} {path}: {b}");
            assert_eq!(b["error"]["code"], "forbidden");
        }
    }
}

#[test]
fn without_backup_targets_the_routes_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), None, &[]);
    for (s, b) in [
        server.call("GET", "/api/v1/backups", None),
        server.call("GET", "/api/v1/backups/x", None),
        server.call("POST", "/api/v1/backups", Some(&json!({}))),
    ] {
        assert_eq!(s, 503, "{b}");
        assert_eq!(b["error"]["code"], "backups_not_configured", "{b}");
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap()
                .contains("backup.targets")
        );
    }
    let (_, h) = server.call("GET", "/health", None);
    assert!(h["components"].get("backup").is_none(), "{h}");
}

/// A local HTTP receiver that answers 200 and keeps every JSON body.
fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    let got = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            got.lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, bodies)
}

/// A minimal SMTP server (no TLS, no authentication) that accepts every message and
/// keeps what each DATA carried.
fn smtp_sink() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let messages: Arc<Mutex<Vec<String>>> = Arc::default();
    let got = messages.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut out) = stream else { return };
            let got = got.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(out.try_clone().unwrap());
                let _ = write!(out, "220 sink ESMTP\r\n");
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let verb = line.trim_end().to_ascii_uppercase();
                    let answer = if verb.starts_with("EHLO") || verb.starts_with("HELO") {
                        "250 sink\r\n"
                    } else if verb == "DATA" {
                        let _ = write!(out, "354 end with <CRLF>.<CRLF>\r\n");
                        let mut data = String::new();
                        loop {
                            let mut l = String::new();
                            if reader.read_line(&mut l).unwrap_or(0) == 0 {
                                return;
                            }
                            if l == ".\r\n" {
                                break;
                            }
                            data.push_str(&l);
                        }
                        got.lock().unwrap().push(data);
                        "250 queued\r\n"
                    } else if verb == "QUIT" {
                        let _ = write!(out, "221 bye\r\n");
                        return;
                    } else {
                        // MAIL FROM, RCPT TO, RSET, NOOP.
                        "250 ok\r\n"
                    };
                    let _ = out.write_all(answer.as_bytes());
                }
            });
        }
    });
    (port, messages)
}

fn metric(server: &ServerProcess, series: &str) -> Option<f64> {
    let (_, text) = {
        let mut r = agent()
            .get(format!("{}/metrics", server.base))
            .call()
            .unwrap();
        (r.status(), r.body_mut().read_to_string().unwrap())
    };
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_late_backup_degrades_health_and_alerts_once_by_webhook_and_email() {
    let (url, bodies) = receiver();
    let (smtp, mails) = smtp_sink();
    let dir = tempfile::tempdir().unwrap();
    config(
        dir.path(),
        &format!(
            "  targets: [{{type: local, path: ./remote}}]\n  continuous: {{enabled: false}}\n  \
             schedules: {{full: null, incremental: null}}\n  alerts:\n    max_backup_age: 3s\n    \
             webhook: {{url: \"{url}\", retries: 2, backoff_ms: 100}}\n    \
             email: {{host: 127.0.0.1, port: {smtp}, security: none, from: steadyflow@example.org, \
             to: [ops@example.org], retries: 2, backoff_ms: 100}}\n"
        ),
    );
    let server = ServerProcess::start(dir.path(), None, &[]);
    // Three seconds without any backup: late.
    wait_for("the backup component to degrade", || {
        backup_component(&server).0["status"] == "degraded"
    });
    let (b, h) = backup_component(&server);
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(
        b["reason"]
            .as_str()
            .unwrap()
            .contains("no backup of the database"),
        "{b}"
    );
    wait_for("the webhook and the e-mail", || {
        !bodies.lock().unwrap().is_empty() && !mails.lock().unwrap().is_empty()
    });
    assert_eq!(
        metric(
            &server,
            "steadyflow_backup_alerts_active{kind=\"backup_late\"}"
        ),
        Some(1.0)
    );
    // Still late a few checks later: still the one alert on each channel.
    std::thread::sleep(Duration::from_secs(5));
    {
        let bodies = bodies.lock().unwrap();
        assert_eq!(bodies.len(), 1, "{bodies:?}");
        assert_eq!(bodies[0]["kind"], "backup_late");
        let mails = mails.lock().unwrap();
        assert_eq!(mails.len(), 1, "{mails:?}");
        assert!(
            mails[0].contains("Subject: [steadyflow] backup_late: no backup of the database"),
            "{}",
            mails[0]
        );
        assert!(mails[0].contains("To: ops@example.org"), "{}", mails[0]);
    }
    // A backup ends the condition: the component is up with a fresh age.
    let (s, location, b) = post(&server, "/api/v1/backups", &json!({"parts": "db"}));
    assert_eq!(s, 202, "{b}");
    assert_eq!(finished(&server, &location.unwrap())["state"], "completed");
    let (b, _) = backup_component(&server);
    assert_eq!(b["status"], "up", "{b}");
    assert!(b["lastBackupAgeSeconds"].as_f64().unwrap() < 3.0, "{b}");
}

#[test]
fn shipping_lag_past_its_limit_degrades_health_and_alerts() {
    let (url, bodies) = receiver();
    // Nothing listens here: every upload fails, so changes never reach the target.
    let dead = crate::e2e::server::free_port();
    let dir = tempfile::tempdir().unwrap();
    config(
        dir.path(),
        &format!(
            "  continuous: {{interval: 500ms}}\n  schedules: {{full: null, incremental: null}}\n  \
             alerts: {{max_shipping_lag: 2s, webhook: {{url: \"{url}\", retries: 0, backoff_ms: 100}}}}\n  \
             targets:\n    - {{type: s3, endpoint: \"http://127.0.0.1:{dead}\", bucket: gone, \
             path_style: true, access_key_id: test, secret_access_key: test}}\n"
        ),
    );
    let server = ServerProcess::start(dir.path(), None, &[]);
    wait_for("the shipping lag to pass its limit", || {
        let (b, _) = backup_component(&server);
        b["status"] == "degraded"
            && b["reason"]
                .as_str()
                .is_some_and(|r| r.contains("to reach every target"))
    });
    let (b, _) = backup_component(&server);
    assert!(b["shippingLagSeconds"].as_f64().unwrap() > 2.0, "{b}");
    // The target's failure, raised as an alert, is in the reason too.
    assert!(
        b["reason"]
            .as_str()
            .unwrap()
            .contains("target_failed: journal shipping to s3://gone"),
        "{b}"
    );
    wait_for("the shipping_lag alert", || {
        bodies
            .lock()
            .unwrap()
            .iter()
            .any(|b| b["kind"] == "shipping_lag")
    });
    assert_eq!(
        metric(
            &server,
            "steadyflow_backup_alerts_active{kind=\"shipping_lag\"}"
        ),
        Some(1.0)
    );
    assert!(
        metric(
            &server,
            "steadyflow_backup_alerts_active{kind=\"target_failed\"}"
        )
        .is_some_and(|v| v >= 1.0)
    );
}

/// Catalog compaction: the shipped segments of a chain that a newer full backup closed
/// are folded into one incremental (`backup compact`), in the backup directory and on the
/// target, and restoring the folded point replays exactly what restoring the chain's last
/// segment replayed: the same rows and transactions, up to the same time, and the same
/// tables; a point-in-time restore inside the chain too.
#[test]
fn compaction_folds_a_closed_chain_of_segments_and_restores_the_same() {
    use crate::e2e::backup_support::{digests, restore, runtime, show, steadyflow};
    let dir = tempfile::tempdir().unwrap();
    config(
        dir.path(),
        "  targets: [{type: local, path: ./remote}]\n  continuous: {interval: 200ms}\n  \
         schedules: {full: null, incremental: null}\n",
    );
    let mut server = ServerProcess::start(dir.path(), None, &[]);
    let xml =
        std::fs::read_to_string(crate::e2e::services::workspace_root().join("examples/order.bpmn"))
            .unwrap();
    assert_eq!(server.deploy(&xml).0, 201);
    let incrementals = |server: &ServerProcess| {
        let (_, page) = server.call("GET", "/api/v1/backups", None);
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["kind"] == "incremental")
            .count()
    };
    for amount in [10, 20, 30, 40, 50] {
        let (s, b) = server.call(
            "POST",
            "/api/v1/process-definitions/key/order/start",
            Some(&json!({"variables": {"amount": amount}})),
        );
        assert_eq!(s, 201, "{b}");
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_for("four shipped segments", || incrementals(&server) >= 4);
    // A full backup closes the chain.
    let (s, location, b) = post(&server, "/api/v1/backups", &json!({"parts": "db"}));
    assert_eq!(s, 202, "{b}");
    assert_eq!(finished(&server, &location.unwrap())["state"], "completed");
    server.kill();

    let list = |d: &Path| -> Vec<Value> {
        let out = steadyflow(
            dir.path(),
            &["backup", "list", "--json", "--dir", d.to_str().unwrap()],
            &[],
        );
        assert!(out.status.success(), "{}", show(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let before = list(&dir.path().join("backups"));
    // The first chain: its full backup, then the segments in parent order.
    let first = before
        .iter()
        .find(|p| p["manifest"]["kind"] == "full")
        .unwrap()["manifest"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut chain = Vec::new();
    let mut tip = first.clone();
    while let Some(child) = before
        .iter()
        .find(|p| p["manifest"]["parent"].as_str() == Some(tip.as_str()))
    {
        tip = child["manifest"]["id"].as_str().unwrap().to_string();
        chain.push(tip.clone());
    }
    assert!(chain.len() >= 2, "segments after {first}: {chain:?}");
    let last = chain.last().unwrap().clone();
    let time_of = |id: &str| {
        before.iter().find(|p| p["manifest"]["id"] == id).unwrap()["manifest"]["journal"]
            ["journalLastTime"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let middle_time = time_of(&chain[chain.len() / 2 - 1]);
    let restored = |what: &str, db: &str, extra: &[&str]| -> Value {
        let url = format!("sqlite://{}", dir.path().join(db).display());
        let out = restore(dir.path(), what, &url, extra, &[]);
        assert!(out.status.success(), "{}", show(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["replay"].clone()
    };
    let whole_before = restored(&last, "before.db", &[]);
    let middle_before = restored(&last, "middle-before.db", &["--to-time", &middle_time]);

    let out = steadyflow(dir.path(), &["backup", "compact", "--json"], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let folds: Value = serde_json::from_slice(&out.stdout).unwrap();
    let folds = folds["folds"].as_array().unwrap();
    assert_eq!(folds.len(), 1, "{folds:?}");
    assert_eq!(folds[0]["base"], first.as_str());
    let folded: Vec<&str> = folds[0]["folded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(folded, chain, "the whole chain, in order");
    assert!(folds[0]["kept"].as_array().unwrap().is_empty(), "{folds:?}");
    let into = folds[0]["into"].as_str().unwrap().to_string();

    // Gone from the backup directory and the target; the folded point is on both.
    let after = list(&dir.path().join("backups"));
    let ids: Vec<&str> = after
        .iter()
        .map(|p| p["manifest"]["id"].as_str().unwrap())
        .collect();
    for id in &chain {
        assert!(!ids.contains(&id.as_str()), "{id} still listed: {ids:?}");
    }
    assert_eq!(ids.len(), before.len() - chain.len() + 1, "{ids:?}");
    let point = after
        .iter()
        .find(|p| p["manifest"]["id"] == into.as_str())
        .unwrap();
    assert_eq!(
        point["locations"],
        json!(["local", "local:./remote"]),
        "{point}"
    );
    assert_eq!(point["manifest"]["parent"], first.as_str());
    // Nothing left to fold.
    let out = steadyflow(dir.path(), &["backup", "compact", "--json"], &[]);
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["folds"], json!([]), "{again}");

    let whole_after = restored(&into, "after.db", &[]);
    let middle_after = restored(&into, "middle-after.db", &["--to-time", &middle_time]);
    for key in [
        "rowsReplayed",
        "transactionsReplayed",
        "restoredTo",
        "rowsAfterPoint",
    ] {
        assert_eq!(
            whole_after[key], whole_before[key],
            "{key}: {whole_after} vs {whole_before}"
        );
        assert_eq!(
            middle_after[key], middle_before[key],
            "{key}: {middle_after} vs {middle_before}"
        );
    }
    assert!(
        whole_before["rowsReplayed"].as_u64().unwrap() > 0,
        "{whole_before}"
    );
    assert!(
        middle_before["rowsReplayed"].as_u64() < whole_before["rowsReplayed"].as_u64(),
        "the middle is before the end: {middle_before} {whole_before}"
    );
    let rt = runtime();
    let db = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
    assert_eq!(
        rt.block_on(digests(&db("before.db"))),
        rt.block_on(digests(&db("after.db"))),
        "the same tables"
    );
    assert_eq!(
        rt.block_on(digests(&db("middle-before.db"))),
        rt.block_on(digests(&db("middle-after.db"))),
        "the same tables at the middle"
    );
}
