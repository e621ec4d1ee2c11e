//! A real `steadyflow serve` process for end-to-end tests.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct ServerProcess {
    child: Child,
    pub base: String,
    agent: ureq::Agent,
}

/// A port nothing listens on now (for a server a test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A process `id`: start, one user task, end (the tests of modes and outages).
pub fn user_task_process(id: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" targetNamespace="t">
  <process id="{id}" isExecutable="true">
    <startEvent id="s" />
    <sequenceFlow id="f1" sourceRef="s" targetRef="t" />
    <userTask id="t" />
    <sequenceFlow id="f2" sourceRef="t" targetRef="e" />
    <endEvent id="e" />
  </process>
</definitions>"#
    )
}

/// The bootstrap administrator token every test server accepts
/// (`STEADYFLOW_ADMIN_TOKEN`), unless a test starts it with another.
pub const ADMIN_TOKEN: &str = "e2e-bootstrap-admin-token-7f3a9c";

/// An HTTP client that sends `Authorization: Bearer` [`ADMIN_TOKEN`] with every request
/// that carries no `Authorization` of its own.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .middleware(
            |mut req: ureq::http::Request<ureq::SendBody>,
             next: ureq::middleware::MiddlewareNext| {
                if !req.headers().contains_key("authorization") {
                    let value = format!("Bearer {ADMIN_TOKEN}");
                    if let Ok(v) = ureq::http::HeaderValue::from_str(&value) {
                        req.headers_mut().insert("authorization", v);
                    }
                }
                next.handle(req)
            },
        )
        .build()
        .into()
}

/// A client that sends no credentials of its own.
pub fn bare_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

impl ServerProcess {
    /// Starts `steadyflow serve` with its data in `data_dir` (SQLite by default, or the
    /// given database URL) and waits until `/health` answers.
    pub fn start(
        data_dir: &Path,
        database_url: Option<&str>,
        extra_env: &[(&str, &str)],
    ) -> ServerProcess {
        Self::start_logging(data_dir, database_url, extra_env, Stdio::inherit())
    }

    /// [`Self::start`], with the server's log (stderr) going to `log`.
    pub fn start_logging(
        data_dir: &Path,
        database_url: Option<&str>,
        extra_env: &[(&str, &str)],
        log: Stdio,
    ) -> ServerProcess {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_steadyflow"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .current_dir(data_dir)
            .env("STEADYFLOW_LOG", "warn")
            .env("STEADYFLOW_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(url) = database_url {
            cmd.arg("--database-url").arg(url);
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start steadyflow serve");
        let server = ServerProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            agent: agent(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = server.agent.get(format!("{}/health", server.base)).call()
                && r.status() == 200
            {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "steadyflow serve did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a request; returns (status, JSON body or Null).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            ("POST", Some(b)) => self.agent.post(&url).send_json(b),
            ("POST", None) => self.agent.post(&url).send_empty(),
            ("PUT", Some(b)) => self.agent.put(&url).send_json(b),
            _ => panic!("unsupported request {method} {path}"),
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn deploy(&self, xml: &str) -> (u16, Value) {
        let mut resp = self
            .agent
            .post(format!("{}/api/v1/process-definitions", self.base))
            .header("Content-Type", "application/xml")
            .send(xml)
            .expect("deploy request");
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Polls `/health` until the mode is `mode`: the last answer and how long it took.
    pub fn until_mode(&self, mode: &str, within: Duration) -> (Value, Duration) {
        let started = Instant::now();
        loop {
            let (_, health) = self.call("GET", "/health", None);
            if health["mode"]["mode"] == mode {
                return (health, started.elapsed());
            }
            assert!(
                started.elapsed() < within,
                "{} did not reach mode {mode} within {within:?}: {health}",
                self.base
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every instance's business key, through the API (all pages).
    pub fn business_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        let mut after = String::new();
        loop {
            let (status, page) = self.call(
                "GET",
                &format!("/api/v1/process-instances?limit=1000{after}"),
                None,
            );
            assert_eq!(status, 200, "{page}");
            for i in page["items"].as_array().unwrap() {
                keys.push(i["businessKey"].as_str().unwrap_or_default().to_string());
            }
            match page["nextCursor"].as_str() {
                Some(c) => after = format!("&after={c}"),
                None => return keys,
            }
        }
    }

    /// The process id (to signal it from another thread).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
