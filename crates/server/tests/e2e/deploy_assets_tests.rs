//! The deploy assets at the runbook's paths, checked with the tools that read them:
//! `deployments/prometheus/` (`promtool check config|rules`, `promtool test rules`),
//! `deployments/alertmanager/alertmanager.yml` (`amtool check-config` and its routes),
//! `docker-compose.yml` (`docker-compose config`), `deployments/kubernetes/`
//! (`kubernetes-validate`), the Ansible playbook (`ansible-playbook --syntax-check`) and
//! the Grafana dashboard (valid JSON whose every metric is one a running server exposes).
//! A missing tool skips its test with a notice, or fails under
//! `STEADYFLOW_REQUIRE_SERVICES=1` (`.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::e2e::services::{self, missing};

fn root() -> PathBuf {
    services::workspace_root()
}

/// Whether `tool` runs at all (`tool --version`, or `tool version`).
fn available(tool: &str) -> bool {
    ["--version", "version"].iter().any(|arg| {
        Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Runs `tool args` in the workspace root and fails the test with its output unless it
/// succeeded; returns its output.
fn run_ok(tool: &str, args: &[&str], cwd: &Path) -> Output {
    let out = Command::new(tool)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn prometheus_config_and_alert_rules_pass_promtool_and_their_unit_tests() {
    if !available("promtool") {
        return missing("promtool (Debian package `prometheus`)");
    }
    let root = root();
    let out = run_ok(
        "promtool",
        &["check", "rules", "deployments/prometheus/alerts.yml"],
        &root,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS: 12 rules found"), "{text}");
    // The rule file the configuration loads is checked with it.
    run_ok(
        "promtool",
        &["check", "config", "deployments/prometheus/prometheus.yml"],
        &root,
    );
    let out = run_ok(
        "promtool",
        &[
            "test",
            "rules",
            "deployments/prometheus/tests/alerts_test.yml",
        ],
        &root,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS"), "{text}");

    // Every alert of the rule file is exercised by the unit tests.
    let rules = std::fs::read_to_string(root.join("deployments/prometheus/alerts.yml")).unwrap();
    let tests =
        std::fs::read_to_string(root.join("deployments/prometheus/tests/alerts_test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    for name in [
        "ServiceDown",
        "DatabaseConnectionFailed",
        "HighErrorRate",
        "BackupTooOld",
        "BackupFailed",
        "RpoOverTarget",
        "ShippingStalled",
        "DegradedModeEntered",
        "DrillFailed",
    ] {
        assert!(alerts.contains(&name), "alerts.yml lacks {name}");
    }
    for name in &alerts {
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "no unit test of {name}"
        );
    }
    // The runbook's three, verbatim.
    for expr in [
        r#"expr: up{job="workflow-engine"} == 0"#,
        "expr: pg_up == 0",
        r#"expr: rate(http_requests_total{status=~"5.."}[5m]) > 0.1"#,
    ] {
        assert!(rules.contains(expr), "alerts.yml lacks `{expr}`");
    }
}

/// A broken rule file is refused: the check above can fail.
#[test]
fn promtool_refuses_a_broken_rule_file() {
    if !available("promtool") {
        return missing("promtool (Debian package `prometheus`)");
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: up{job=\n",
    )
    .unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn alertmanager_config_passes_amtool_and_routes_critical_to_the_emergency_receiver() {
    if !available("amtool") {
        return missing("amtool (Debian package `prometheus-alertmanager`)");
    }
    let root = root();
    let config = "deployments/alertmanager/alertmanager.yml";
    let out = run_ok("amtool", &["check-config", config], &root);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS"), "{text}");
    let route = |labels: &[&str]| -> String {
        let mut args = vec!["config", "routes", "test", "--config.file", config];
        args.extend_from_slice(labels);
        let out = run_ok("amtool", &args, &root);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        route(&["alertname=ServiceDown", "severity=critical"]),
        "emergency"
    );
    assert_eq!(
        route(&["alertname=DatabaseConnectionFailed", "severity=critical"]),
        "emergency"
    );
    assert_eq!(
        route(&["alertname=HighErrorRate", "severity=warning"]),
        "team"
    );
    let conf = std::fs::read_to_string(root.join(config)).unwrap();
    assert!(conf.contains("group_by: [alertname]"));
    assert!(conf.contains("email_configs:") && conf.contains("slack_configs:"));
}

/// `docker-compose` (Debian) or the `docker compose` plugin, whichever runs.
fn compose_command() -> Option<Vec<&'static str>> {
    if available("docker-compose") {
        return Some(vec!["docker-compose"]);
    }
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    plugin.then(|| vec!["docker", "compose"])
}

#[test]
fn docker_compose_file_validates_and_holds_the_whole_stack() {
    let Some(compose) = compose_command() else {
        return missing("docker-compose (Debian package `docker-compose`)");
    };
    let root = root();
    let run = |extra: &[&str], env: &[(&str, &str)]| -> Output {
        let mut cmd = Command::new(compose[0]);
        cmd.args(&compose[1..])
            .args(["--project-directory", ".", "-f", "docker-compose.yml"])
            .args(extra)
            .current_dir(&root)
            .env_remove("POSTGRES_PASSWORD")
            .env_remove("STEADYFLOW_ADMIN_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let env = [
        ("POSTGRES_PASSWORD", "pw-for-config-check"),
        ("STEADYFLOW_ADMIN_TOKEN", "token-for-config-check"),
    ];
    let out = run(&["config", "-q"], &env);
    assert!(
        out.status.success(),
        "compose config failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["config", "--services"], &env);
    assert!(out.status.success());
    let services = String::from_utf8_lossy(&out.stdout);
    let services: Vec<&str> = services.lines().collect();
    for s in [
        "steadyflow",
        "postgres",
        "redis",
        "prometheus",
        "alertmanager",
        "minio",
        "postgres-exporter",
    ] {
        assert!(services.contains(&s), "no service {s} in {services:?}");
    }
    // The resolved file: the secrets reached the engine, Prometheus mounts the rules.
    let out = run(&["config"], &env);
    let resolved = String::from_utf8_lossy(&out.stdout);
    assert!(
        resolved.contains("postgres://steadyflow:pw-for-config-check@postgres:5432/steadyflow")
    );
    assert!(resolved.contains("deployments/prometheus/alerts.yml"));
    assert!(resolved.contains("deployments/alertmanager/alertmanager.yml"));
    // Without the required secrets the file is refused, not run with empty passwords.
    let out = run(&["config", "-q"], &[]);
    assert!(
        !out.status.success(),
        "compose config accepted a missing POSTGRES_PASSWORD"
    );

    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    assert!(
        dockerfile.matches("\nFROM ").count() >= 2,
        "not multi-stage"
    );
    assert!(dockerfile.contains("\nUSER steadyflow"));
    assert!(dockerfile.contains("\nEXPOSE 8080"));
    assert!(dockerfile.contains("/health"));
}

#[test]
fn kubernetes_manifests_validate_offline() {
    if !available("kubernetes-validate") {
        return missing("kubernetes-validate (pip install kubernetes-validate)");
    }
    let root = root();
    let mut files = Vec::new();
    for dir in [
        "deployments/kubernetes",
        "deployments/kubernetes/infrastructure",
    ] {
        let mut here: Vec<String> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
            .collect();
        here.sort();
        files.extend(here);
    }
    assert!(files.len() >= 7, "{files:?}");
    let mut args = vec!["--strict"];
    args.extend(files.iter().map(String::as_str));
    let out = run_ok("kubernetes-validate", &args, &root);
    let text = String::from_utf8_lossy(&out.stdout);
    for resource in [
        "deployment/steadyflow",
        "service/steadyflow",
        "configmap/steadyflow-config",
        "secret/steadyflow-secrets",
        "poddisruptionbudget/steadyflow",
        "statefulset/postgres",
        "statefulset/redis",
    ] {
        assert!(
            text.contains(&format!("passed for resource {resource}")),
            "{resource} not validated:\n{text}"
        );
    }
    let deployment =
        std::fs::read_to_string(root.join("deployments/kubernetes/deployment.yaml")).unwrap();
    let probe = |kind: &str| {
        let at = deployment.find(&format!("{kind}:")).unwrap();
        deployment[at..].lines().nth(2).unwrap().trim().to_string()
    };
    assert_eq!(probe("readinessProbe"), "path: /ready");
    assert_eq!(probe("livenessProbe"), "path: /health");
    assert!(deployment.contains("requests:"));

    // A wrong type is refused (the validation can fail).
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, deployment.replace("replicas: 2", "replicas: two")).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn ansible_playbook_passes_the_syntax_check() {
    if !available("ansible-playbook") {
        return missing("ansible-playbook (pip install ansible-core)");
    }
    let root = root();
    let home = tempfile::tempdir().unwrap();
    let syntax = |playbook: &Path| -> Output {
        Command::new("ansible-playbook")
            .args(["-i", "inventory/disaster-recovery", "--syntax-check"])
            .arg(playbook)
            .current_dir(&root)
            .env("ANSIBLE_HOME", home.path())
            .env("ANSIBLE_LOCAL_TEMP", home.path().join("tmp"))
            .env("ANSIBLE_NOCOLOR", "1")
            .output()
            .unwrap()
    };
    let out = syntax(Path::new("playbooks/setup-environment.yml"));
    assert!(
        out.status.success(),
        "syntax check failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The inventory names the hosts the playbook runs on.
    let out = Command::new("ansible-inventory")
        .args(["-i", "inventory/disaster-recovery", "--list"])
        .current_dir(&root)
        .env("ANSIBLE_HOME", home.path())
        .env("ANSIBLE_LOCAL_TEMP", home.path().join("tmp"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let inventory: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !inventory["steadyflow"]["hosts"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let playbook = std::fs::read_to_string(root.join("playbooks/setup-environment.yml")).unwrap();
    assert!(playbook.contains("deployments/systemd/steadyflow.service"));
    // A broken playbook is refused.
    let bad = home.path().join("bad.yml");
    std::fs::write(
        &bad,
        "- hosts: steadyflow\n  tasks:\n    - name: x\n      no.such.module_at_all: {}\n",
    )
    .unwrap();
    assert!(!syntax(&bad).status.success());
}

/// Start → external task `pay` → end, and start → a short timer → end.
const DASHBOARD_WORK: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn" targetNamespace="t">
  <process id="pay" isExecutable="true">
    <startEvent id="s" />
    <sequenceFlow id="f1" sourceRef="s" targetRef="charge" />
    <serviceTask id="charge" camunda:type="external" camunda:topic="pay" />
    <sequenceFlow id="f2" sourceRef="charge" targetRef="e" />
    <endEvent id="e" />
  </process>
  <process id="tick" isExecutable="true">
    <startEvent id="ts" />
    <sequenceFlow id="t1" sourceRef="ts" targetRef="wait" />
    <intermediateCatchEvent id="wait"><timerEventDefinition><timeDuration>PT0.2S</timeDuration></timerEventDefinition></intermediateCatchEvent>
    <sequenceFlow id="t2" sourceRef="wait" targetRef="te" />
    <endEvent id="te" />
  </process>
</definitions>"#;

/// The metric names a PromQL expression reads: identifiers right before a `{` selector,
/// and every `steadyflow_*` / `http_*` identifier (label names never start so).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    let mut in_quotes = false;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c == '"' {
            in_quotes = !in_quotes;
            i += 1;
            continue;
        }
        if in_quotes || !(c.is_ascii_alphabetic() || c == '_' || c == ':') {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len()
            && ((bytes[i] as char).is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
        {
            i += 1;
        }
        let ident = &expr[start..i];
        let selector = bytes.get(i) == Some(&b'{');
        if selector || ident.starts_with("steadyflow_") || ident.starts_with("http_") {
            names.push(ident.to_string());
        }
        // Skip a selector's label matchers.
        if selector {
            while i < bytes.len() && bytes[i] != b'}' {
                if bytes[i] == b'"' {
                    i += 1;
                    while i < bytes.len() && bytes[i] != b'"' {
                        i += 1;
                    }
                }
                i += 1;
            }
        }
    }
    names
}

#[test]
fn metric_names_are_read_from_promql() {
    assert_eq!(
        metric_names(
            r#"sum by (le, route) (rate(http_request_duration_seconds_bucket{job=~"$job", x="a{b}"}[5m]))"#
        ),
        ["http_request_duration_seconds_bucket"]
    );
    assert_eq!(
        metric_names(r#"steadyflow_rpo_seconds and on (instance) (up{job="x"} == 1)"#),
        ["steadyflow_rpo_seconds", "up"]
    );
}

/// The expressions of the alert rules in `deployments/prometheus/alerts.yml`.
fn alert_expressions(root: &Path) -> Vec<String> {
    use figment::providers::Format;
    let rules: serde_json::Value = figment::Figment::from(figment::providers::Yaml::file(
        root.join("deployments/prometheus/alerts.yml"),
    ))
    .extract()
    .unwrap();
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect()
}

/// Every series the dashboard and the alert rules read is one a running server exposes:
/// a `serve` with a local backup target (so it ships the journal) after some work
/// (instances started, completed by a timer, cancelled, an incident). Not the engine's:
/// Prometheus's `up`, postgres_exporter's `pg_up`, and the drill command's
/// `steadyflow_drill_last_success`, which is still to come.
#[test]
fn dashboard_and_alert_rules_read_only_series_the_engine_exposes() {
    let root = root();
    let text = std::fs::read_to_string(root.join("deployments/grafana/steadyflow.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(dashboard["uid"], "steadyflow");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 15, "{} expressions", exprs.len());
    let mut wanted: Vec<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    for recovery in [
        "steadyflow_rpo_seconds",
        "steadyflow_backup_last_success_timestamp_seconds",
        "steadyflow_journal_shipped_seq",
        "steadyflow_backup_alerts_active",
    ] {
        assert!(
            wanted.iter().any(|w| w == recovery),
            "dashboard lacks {recovery}"
        );
    }
    let alerts = alert_expressions(&root);
    assert_eq!(alerts.len(), 12);
    wanted.extend(alerts.iter().flat_map(|e| metric_names(e)));
    wanted.sort();
    wanted.dedup();
    assert!(wanted.iter().any(|w| w == "steadyflow_mode"));
    wanted.retain(|n| !["up", "pg_up", "steadyflow_drill_last_success"].contains(&n.as_str()));

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("configs")).unwrap();
    let target = dir.path().join("second-disk");
    std::fs::write(
        data.join("configs/config.yaml"),
        format!(
            "backup:\n  dir: ./backups\n  continuous: {{interval: 200ms}}\n  \
             schedules: {{full: null, incremental: null}}\n  targets:\n    \
             - {{type: local, path: \"{}\"}}\n",
            target.display()
        ),
    )
    .unwrap();
    let server = crate::e2e::server::ServerProcess::start(&data, None, &[]);
    assert_eq!(server.deploy(DASHBOARD_WORK).0, 201);
    let mut started = Vec::new();
    for _ in 0..2 {
        let (s, inst) = server.call(
            "POST",
            "/api/v1/process-definitions/key/pay/start",
            Some(&serde_json::json!({})),
        );
        assert_eq!(s, 201, "{inst}");
        started.push(inst["id"].as_str().unwrap().to_string());
    }
    let (s, _) = server.call(
        "POST",
        "/api/v1/process-definitions/key/tick/start",
        Some(&serde_json::json!({})),
    );
    assert_eq!(s, 201);
    let (s, locked) = server.call(
        "POST",
        "/api/v1/external-tasks/fetch-and-lock",
        Some(&serde_json::json!({"workerId": "w", "maxTasks": 1, "topics": [{"topicName": "pay", "lockDuration": 60000}]})),
    );
    assert_eq!(s, 200, "{locked}");
    let task = locked[0]["id"].as_str().unwrap().to_string();
    let failed_instance = locked[0]["processInstanceId"].as_str().unwrap().to_string();
    let (s, body) = server.call(
        "POST",
        &format!("/api/v1/external-tasks/{task}/failure"),
        Some(&serde_json::json!({"workerId": "w", "errorMessage": "declined", "retries": 0, "retryTimeout": 0})),
    );
    assert_eq!(s, 200, "{body}");
    let other = started.iter().find(|i| **i != failed_instance).unwrap();
    assert_eq!(
        server
            .call(
                "DELETE",
                &format!("/api/v1/process-instances/{other}"),
                None
            )
            .0,
        200
    );

    // Poll until the timer fired and a shipping round ran (or give up and list the gaps).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let agent = crate::e2e::server::agent();
    loop {
        let mut resp = agent
            .get(format!("{}/metrics", server.base))
            .call()
            .unwrap();
        let exposition = resp.body_mut().read_to_string().unwrap();
        let exposed: std::collections::BTreeSet<&str> = exposition
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let absent: Vec<&String> = wanted
            .iter()
            .filter(|w| !exposed.contains(w.as_str()))
            .collect();
        if absent.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dashboard or the alert rules read series /metrics does not have: {absent:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
