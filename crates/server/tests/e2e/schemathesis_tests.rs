//! The API contract, checked from outside: `schemathesis run --checks all` (PyPI) against
//! a started `steadyflow serve`, driven by the document the server itself serves. Every
//! schema-valid request must be accepted, every invalid one refused with a 4xx, and every
//! response must match its schema (status, content type, headers, body).
//!
//! Skips with a notice when schemathesis is not installed (`.ci/run` installs it), and
//! fails under `STEADYFLOW_REQUIRE_SERVICES=1`.

use std::process::{Command, Stdio};

use serde_json::json;

use super::server::ServerProcess;
use super::services::missing;

/// Test cases per operation and phase: bounds the run to about two minutes here.
/// `STEADYFLOW_SCHEMATHESIS_EXAMPLES` overrides it (a longer hunt).
const MAX_EXAMPLES: u32 = 40;

/// The bearer token every request carries: the test server's bootstrap administrator
/// token (`STEADYFLOW_ADMIN_TOKEN`, which the seeding client sends too).
/// `STEADYFLOW_TEST_TOKEN` overrides it.
pub fn api_token() -> String {
    std::env::var("STEADYFLOW_TEST_TOKEN")
        .unwrap_or_else(|_| crate::e2e::server::ADMIN_TOKEN.into())
}

/// The schemathesis command, if one is installed: `schemathesis`, or its short name `st`.
fn schemathesis() -> Option<&'static str> {
    ["schemathesis", "st"].into_iter().find(|cmd| {
        Command::new(cmd)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// What schemathesis is told beyond the document (`schemathesis.toml`): values it cannot
/// make up, and the few answers that depend on data rather than on the request's shape.
/// `cursors` are real `nextCursor`s of each list (`after` is opaque: a made-up one is
/// rightly a 400); a history cursor is a position in any instance's history.
fn config(cursors: &[(&str, String)]) -> String {
    let mut toml = String::from(
        r#"# Every check (as `--checks all`; given here, not on the command line, where it would
# override the exception below).
[checks]
enabled = true

# Writes take an `Idempotency-Key`; schemathesis sends the same made-up key with different
# requests, which is rightly a 422 `idempotency_key_reused` (the only 422 of the API): it
# depends on what was sent before under that key, not on the request's shape.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]

# A deployment's XML is a string in the schema; whether it is executable BPMN is not
# expressible there (a 400 names the problem). Retrying an external task's incident is a
# 400 too (its retries resolve it), which depends on the incident, not on the request.
[[operations]]
include-name = ["POST /api/v1/process-definitions", "POST /api/v1/incidents/{id}/retry"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "409", "422"]

# Starting a backup: 400 for an incremental of anything but the database (a rule between
# two fields), 409 while the previous one still runs (the fuzzer starts many).
[[operations]]
include-name = ["POST /api/v1/backups"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "409", "422"]

# DELETE cancels an instance; it stays readable (state `cancelled`, its history), as
# documented: reading it afterwards is not a use after free.
[[operations]]
include-name = ["GET /api/v1/process-instances/{id}", "GET /api/v1/process-instances/{id}/history"]
checks.use_after_free.enabled = false
"#,
    );
    for (list, cursor) in cursors {
        toml.push_str(&format!(
            "\n[[operations]]\ninclude-name = \"GET /api/v1/{list}\"\nparameters = {{ after = \"{cursor}\" }}\n"
        ));
    }
    toml
}

/// Some of everything, so that operations meet real rows: two definition versions,
/// instances waiting at user and external tasks, and incidents.
fn seed(server: &ServerProcess) -> Vec<(&'static str, String)> {
    let root = super::services::workspace_root();
    for file in ["examples/order.bpmn", "examples/camunda8/order.bpmn"] {
        let (status, body) = server.deploy(&std::fs::read_to_string(root.join(file)).unwrap());
        assert!(status == 201, "deploy {file}: {status} {body}");
    }
    for amount in [1500, 1500, 1500, 10, 10, 10, 10] {
        let (status, body) = server.call(
            "POST",
            "/api/v1/process-definitions/key/order/start",
            Some(&json!({"variables": {"amount": amount}})),
        );
        assert_eq!(status, 201, "{body}");
    }
    let (_, locked) = server.call(
        "POST",
        "/api/v1/external-tasks/fetch-and-lock",
        Some(&json!({"workerId": "seed", "maxTasks": 2,
                     "topics": [{"topicName": "charge", "lockDuration": 60000}]})),
    );
    for task in locked.as_array().unwrap() {
        let (status, body) = server.call(
            "POST",
            &format!(
                "/api/v1/external-tasks/{}/failure",
                task["id"].as_str().unwrap()
            ),
            Some(&json!({"workerId": "seed", "errorMessage": "card declined", "retries": 0})),
        );
        assert_eq!(status, 200, "{body}");
    }
    // Two recovery points, taken over HTTP (one after the other: one runs at a time).
    for kind in ["full", "incremental"] {
        let (status, body) = server.call("POST", "/api/v1/backups", Some(&json!({"kind": kind})));
        assert_eq!(status, 202, "{body}");
        let run = body["id"].as_str().unwrap().to_string();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (_, b) = server.call("GET", &format!("/api/v1/backups/{run}"), None);
            if b["state"] == "completed" {
                break;
            }
            assert!(b["state"] == "running", "{kind} backup: {b}");
            assert!(
                std::time::Instant::now() < deadline,
                "{kind} backup still running"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let (_, instances) = server.call("GET", "/api/v1/process-instances?limit=1", None);
    let instance = instances["items"][0]["id"].as_str().unwrap().to_string();
    [
        "process-definitions",
        "process-instances",
        "tasks",
        "external-tasks",
        "incidents",
        "process-instances/{id}/history",
        "backups",
    ]
    .into_iter()
    .map(|list| {
        let path = list.replace("{id}", &instance);
        let (_, page) = server.call("GET", &format!("/api/v1/{path}?limit=1"), None);
        let cursor = page["nextCursor"].as_str();
        (
            list,
            cursor
                .unwrap_or_else(|| panic!("{list}: two rows seeded: {page}"))
                .to_string(),
        )
    })
    .collect()
}

#[test]
fn schemathesis_finds_no_contract_violation() {
    let Some(cmd) = schemathesis() else {
        return missing("schemathesis (pip install schemathesis)");
    };
    let dir = tempfile::tempdir().unwrap();
    // A backup target, so that the backup routes work (and are checked).
    std::fs::create_dir_all(dir.path().join("configs")).unwrap();
    std::fs::write(
        dir.path().join("configs/config.yaml"),
        "backup:\n  targets: [{type: local, path: ./remote}]\n  continuous: {enabled: false}\n  \
         schedules: {full: null, incremental: null}\n",
    )
    .unwrap();
    let token = api_token();
    let server = ServerProcess::start(dir.path(), None, &[("STEADYFLOW_ADMIN_TOKEN", &token)]);
    let cursors = seed(&server);
    let config_file = dir.path().join("schemathesis.toml");
    std::fs::write(&config_file, config(&cursors)).unwrap();
    let examples = std::env::var("STEADYFLOW_SCHEMATHESIS_EXAMPLES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(MAX_EXAMPLES);
    let run = || {
        Command::new(cmd)
            .arg("--config-file")
            .arg(&config_file)
            .arg("run")
            .arg(format!("{}/api/v1/openapi.json", server.base))
            .args(["--max-examples", &examples.to_string()])
            .args(["--workers", "2"])
            .args(["--request-timeout", "10"])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            // Setting the service mode would make every later operation answer 503 or 202
            // (that is its point); its own tests cover it.
            .args(["--exclude-name", "PUT /api/v1/system/mode"])
            // Hypothesis keeps its example database in the working directory.
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .output()
            .expect("run schemathesis")
    };
    let mut out = run();
    // A crash inside schemathesis or hypothesis (listed under ERRORS as `Runtime Error`,
    // seen with hypothesis's lambda-source cache) is not a finding: run again once. A
    // contract violation is listed under FAILURES and fails at once.
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() && text.contains("Runtime Error") && !text.contains("FAILURES") {
        eprintln!("schemathesis crashed internally; running it again:\n{text}");
        out = run();
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stdout.lines().rev().take(30).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    eprintln!(
        "schemathesis ({examples} examples per operation):\n{}",
        tail.join("\n")
    );
    assert!(
        out.status.success(),
        "schemathesis found contract violations (exit {:?}):\n{stdout}\n{stderr}",
        out.status.code()
    );
    // Every operation it loaded was selected and tested (the count is in its summary:
    // `Selected: N/N`, `Tested: N`).
    let selected = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Selected: "))
        .and_then(|v| v.split_once('/'))
        .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()));
    let Some((selected, loaded)) = selected else {
        panic!("no `Selected:` line in the summary:\n{stdout}");
    };
    // All but the one excluded above (setting the service mode).
    let (selected, loaded): (usize, usize) = (selected.parse().unwrap(), loaded.parse().unwrap());
    assert_eq!(
        selected + 1,
        loaded,
        "every other operation selected:\n{stdout}"
    );
    assert!(loaded >= 20, "schemathesis loaded the whole API:\n{stdout}");
    assert!(
        stdout.contains(&format!("Tested: {selected}")),
        "every selected operation tested:\n{stdout}"
    );
}
