//! The Redis cache against its own `redis-server`: requests keep succeeding while Redis
//! is stopped, restarted, flushed and slowed down under load; `/health` says what Redis
//! is doing; a revoked token is refused at once although its row was cached.

use super::server::free_port;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::e2e::server::{ServerProcess, bare_agent};
use crate::e2e::services::missing;

/// A `redis-server` of this test's own, on a port of its own.
struct RedisProcess {
    child: Option<Child>,
    port: u16,
}

impl RedisProcess {
    fn start(port: u16) -> Option<RedisProcess> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut r = RedisProcess {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.cli(&["PING"]).as_deref() != Some("PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        r.child.as_mut()?;
        Some(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn redis_available() -> bool {
    let ok = |cmd: &str| {
        Command::new(cmd)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    ok("redis-server") && ok("redis-cli")
}

fn request(
    base: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let agent = bare_agent();
    let url = format!("{base}{path}");
    let auth = format!("Bearer {token}");
    let resp = match body {
        Some(b) => agent.post(&url).header("Authorization", &auth).send_json(b),
        None if method == "DELETE" => agent.delete(&url).header("Authorization", &auth).call(),
        None => agent.get(&url).header("Authorization", &auth).call(),
    };
    match resp {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let text = r.body_mut().read_to_string().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        Err(e) => (0, json!(e.to_string())),
    }
}

fn redis_component(base: &str) -> Option<String> {
    let (_, health) = request(base, "GET", "/health", "", None);
    health["components"]["redis"]["status"]
        .as_str()
        .map(str::to_string)
}

fn wait_for_redis(base: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = redis_component(base);
        if now.as_deref() == Some(status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "redis never became {status} in /health (last {now:?})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const WORK: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn" targetNamespace="t">
  <process id="cached" isExecutable="true">
    <startEvent id="s" />
    <sequenceFlow id="f1" sourceRef="s" targetRef="t1" />
    <userTask id="t1" camunda:candidateGroups="staff" />
    <sequenceFlow id="f2" sourceRef="t1" targetRef="e" />
    <endEvent id="e" />
  </process>
</definitions>"#;

fn make_token(dir: &Path, role: &str) -> String {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_steadyflow"))
            .arg("user")
            .args(args)
            .arg("--data-dir")
            .arg(dir)
            .current_dir(dir)
            .env("STEADYFLOW_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["add", "cachey", "--role", role]);
    run(&["token", "cachey"]).trim().to_string()
}

#[test]
fn requests_survive_redis_stopping_restarting_flushing_and_stalling() {
    if !redis_available() {
        missing("redis-server and redis-cli");
        return;
    }
    let port = free_port();
    let Some(mut redis) = RedisProcess::start(port) else {
        missing("a redis-server of the test's own");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let token = make_token(dir.path(), "operator");
    let url = redis.url();
    let server = ServerProcess::start(
        dir.path(),
        None,
        &[
            ("STEADYFLOW_REDIS_URL", &url),
            ("STEADYFLOW_REDIS_PREFIX", "sfcache:"),
        ],
    );
    let base = server.base.clone();
    assert!(server.deploy(WORK).0 < 300);
    wait_for_redis(&base, "up");

    // The cache is used: after one authenticated request, the token's row is in Redis.
    let (status, _) = request(&base, "GET", "/api/v1/auth/me", &token, None);
    assert_eq!(status, 200);
    let id = &token[3..19];
    let cached = redis.cli(&["EXISTS", &format!("sfcache:row:api_tokens:{id}")]);
    assert_eq!(
        cached.as_deref(),
        Some("1"),
        "the token row is cached under the prefix"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..4)
        .map(|n| {
            let (base, token, stop) = (base.clone(), token.clone(), stop.clone());
            let (sent, failed, failures) = (sent.clone(), failed.clone(), failures.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (status, body) = if n % 2 == 0 {
                        request(
                            &base,
                            "POST",
                            "/api/v1/process-definitions/key/cached/start",
                            &token,
                            Some(&json!({})),
                        )
                    } else {
                        request(&base, "GET", "/api/v1/auth/me", &token, None)
                    };
                    sent.fetch_add(1, Ordering::Relaxed);
                    if !(200..300).contains(&status) {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.lock().unwrap().push(format!("{status} {body}"));
                    }
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(500));
    // Stopped: requests go to the database; /health says so.
    redis.stop();
    wait_for_redis(&base, "down");
    std::thread::sleep(Duration::from_millis(500));
    // Restarted (empty): the node reconnects by itself.
    let mut redis = RedisProcess::start(port).expect("restart redis-server");
    wait_for_redis(&base, "up");
    std::thread::sleep(Duration::from_millis(500));
    // Flushed under load.
    assert_eq!(redis.cli(&["FLUSHALL"]).as_deref(), Some("OK"));
    std::thread::sleep(Duration::from_millis(500));
    // Slow: Redis stalls for a second (every call past its deadline goes to the database).
    let _ = redis.cli(&["DEBUG", "SLEEP", "1"]);
    std::thread::sleep(Duration::from_millis(500));
    wait_for_redis(&base, "up");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("redis faults under load: {sent} requests sent, {failed} failed");
    assert!(sent > 100, "the load ran ({sent} requests)");
    assert_eq!(
        failed,
        0,
        "no request failed: {:?}",
        failures.lock().unwrap()
    );

    // A revocation is seen at once although the row is cached again.
    let (status, _) = request(&base, "GET", "/api/v1/auth/me", &token, None);
    assert_eq!(status, 200);
    let (status, body) = server.call("DELETE", &format!("/api/v1/tokens/{id}"), None);
    assert_eq!(status, 200, "{body}");
    let (status, _) = request(&base, "GET", "/api/v1/auth/me", &token, None);
    assert_eq!(status, 401, "the cached row of a revoked token is not used");
    redis.stop();
}
