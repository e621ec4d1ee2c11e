//! The runbook's quick recovery, `scripts/recover.sh BACKUP ENV` (issue 17), end to end on
//! SQLite: a scratch installation (configs/, a data dir) runs `serve` as a plain process
//! that the script stops and starts through `STEADYFLOW_STOP_CMD` / `STEADYFLOW_START_CMD`
//! (what systemd or docker compose do in production). A real backup is taken over HTTP,
//! work continues after it, and recover.sh brings the node back to the backup: the
//! instances of before are there, the one started after is not, configs/config.yaml is
//! the environment's file, and verify-recovery passed (exit 0). Then the stepwise
//! `recover-step.sh prepare|database|config|deploy|verify` does the same again.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::e2e::server::{ADMIN_TOKEN, agent, free_port};

const HOLD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" targetNamespace="t">
  <process id="hold" isExecutable="true">
    <startEvent id="s" />
    <sequenceFlow id="f1" sourceRef="s" targetRef="review" />
    <userTask id="review" />
    <sequenceFlow id="f2" sourceRef="review" targetRef="e" />
    <endEvent id="e" />
  </process>
</definitions>"#;

struct Install {
    dir: tempfile::TempDir,
    base: String,
    port: u16,
}

impl Install {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The shell commands that start and stop `serve` here (pid in serve.pid).
    fn start_cmd(&self) -> String {
        format!(
            "cd '{d}' || exit 1; STEADYFLOW_LISTEN=127.0.0.1:{p} STEADYFLOW_LOG=warn \
             STEADYFLOW_ADMIN_TOKEN={ADMIN_TOKEN} '{bin}' serve >>serve.log 2>&1 </dev/null & \
             echo $! > '{d}/serve.pid'",
            d = self.path().display(),
            p = self.port,
            bin = env!("CARGO_BIN_EXE_steadyflow"),
        )
    }

    fn stop_cmd(&self) -> String {
        format!(
            "pid=$(cat '{d}/serve.pid') && kill \"$pid\" && \
             while kill -0 \"$pid\" 2>/dev/null; do sleep 0.1; done",
            d = self.path().display()
        )
    }

    fn sh(&self, cmd: &str) {
        let st = Command::new("bash").arg("-c").arg(cmd).status().unwrap();
        assert!(st.success(), "{cmd}");
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent()
            .get(format!("{}/health", self.base))
            .call()
            .map_or(true, |r| r.status() != 200)
        {
            assert!(Instant::now() < deadline, "serve did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut resp = match (method, body) {
            ("GET", _) => agent().get(&url).call(),
            (_, Some(b)) => agent().post(&url).send_json(b),
            (_, None) => agent()
                .post(&url)
                .header("content-type", "application/xml")
                .send(HOLD),
        }
        .unwrap();
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn start_instance(&self) -> String {
        let (s, b) = self.call(
            "POST",
            "/api/v1/process-definitions/key/hold/start",
            Some(&json!({})),
        );
        assert_eq!(s, 201, "{b}");
        b["id"].as_str().unwrap().to_string()
    }

    fn instance_state(&self, id: &str) -> u16 {
        self.call("GET", &format!("/api/v1/process-instances/{id}"), None)
            .0
    }

    fn script(&self, name: &str, args: &[&str]) -> Output {
        self.script_as(name, args, ADMIN_TOKEN)
    }

    fn script_as(&self, name: &str, args: &[&str], token: &str) -> Output {
        let root = crate::e2e::services::workspace_root();
        Command::new(root.join("scripts").join(name))
            .args(args)
            .current_dir(self.path())
            .env("STEADYFLOW_BIN", env!("CARGO_BIN_EXE_steadyflow"))
            .env("STEADYFLOW_HOME", self.path())
            .env("STEADYFLOW_URL", &self.base)
            .env("STEADYFLOW_TOKEN", token)
            .env("STEADYFLOW_START_CMD", self.start_cmd())
            .env("STEADYFLOW_STOP_CMD", self.stop_cmd())
            .env("STEADYFLOW_HEALTH_TIMEOUT", "30")
            .env("STEADYFLOW_ENV", "drill")
            .env("STEADYFLOW_LOG", "warn")
            .output()
            .unwrap()
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        // Never leave the server running, whatever failed.
        let pid = self.path().join("serve.pid");
        if let Ok(pid) = std::fs::read_to_string(pid) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const BASE_CONFIG: &str = "data_dir: ./data\nbackup:\n  dir: ./backups\n  \
    targets: [{type: local, path: ./remote}]\n  continuous: {enabled: false}\n  \
    schedules: {full: null, incremental: null}\n";

#[test]
fn recover_sh_brings_a_node_back_to_its_backup() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let inst = Install {
        base: format!("http://127.0.0.1:{port}"),
        port,
        dir,
    };
    let d = inst.path();
    std::fs::create_dir_all(d.join("configs")).unwrap();
    std::fs::write(d.join("configs/config.yaml"), BASE_CONFIG).unwrap();
    // The environment's file differs from what runs now (and from the backup's copy).
    let drill = format!("{BASE_CONFIG}log:\n  format: json\n");
    std::fs::write(d.join("configs/drill.yaml"), &drill).unwrap();

    inst.sh(&inst.start_cmd());
    inst.wait_healthy();
    assert!(inst.call("POST", "/api/v1/process-definitions", None).0 < 300);
    let before: Vec<String> = (0..3).map(|_| inst.start_instance()).collect();
    let (s, run) = inst.call("POST", "/api/v1/backups", Some(&json!({"kind": "full"})));
    assert_eq!(s, 202, "{run}");
    let run_path = format!("/api/v1/backups/{}", run["id"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let backup_id = loop {
        let (_, b) = inst.call("GET", &run_path, None);
        if b["state"] == "completed" {
            break b["run"]["backupId"].as_str().unwrap().to_string();
        }
        assert_ne!(b["state"], "failed", "{b}");
        assert!(Instant::now() < deadline, "{b}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let archive = format!("backups/{backup_id}.tar.zst");
    assert!(d.join(&archive).exists(), "{archive}");
    let after = inst.start_instance();

    let t = Instant::now();
    let out = inst.script("recover.sh", &[&archive, "drill"]);
    let took = t.elapsed();
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for step in [
        "check backup: done",
        "stop: done",
        "restore: done",
        "config (drill): done",
        "start: done",
        "wait for health: done",
        "verify: done",
        "RECOVERY VERIFIED",
        &format!("recovered from {}", d.join(&archive).display()),
    ] {
        assert!(stdout.contains(step), "{step}: {}", show(&out));
    }
    eprintln!("recover.sh took {took:?}");
    assert_eq!(
        std::fs::read_to_string(d.join("configs/config.yaml")).unwrap(),
        drill
    );
    for id in &before {
        assert_eq!(inst.instance_state(id), 200, "{id} is back");
    }
    assert_eq!(
        inst.instance_state(&after),
        404,
        "started after the backup: gone"
    );

    // The same stepwise, with the backup by id from the backup directory.
    let again = inst.start_instance();
    for (step, arg) in [
        ("prepare", Some(backup_id.as_str())),
        ("database", Some(backup_id.as_str())),
        ("config", None),
        ("deploy", None),
        ("verify", None),
    ] {
        let mut args = vec![step];
        args.extend(arg);
        let out = inst.script("recover-step.sh", &args);
        assert!(out.status.success(), "{step}: {}", show(&out));
    }
    assert_eq!(inst.instance_state(&again), 404);
    for id in &before {
        assert_eq!(inst.instance_state(id), 200, "{id} is back");
    }

    // A node that cannot be verified fails the step (here: a token the node refuses, so
    // the smoke cannot run).
    let out = inst.script_as("recover-step.sh", &["verify"], "not-a-token");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("RECOVERY NOT VERIFIED: journal, instances, smoke failed"),
        "{}",
        show(&out)
    );

    // A wrong step or environment is refused before anything is stopped.
    let out = inst.script("recover.sh", &[&archive, "nowhere"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let out = inst.script("recover-step.sh", &["database"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    inst.wait_healthy();
}
