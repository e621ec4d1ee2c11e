//! Observability of a running `steadyflow serve`: `/metrics` after real work (counters
//! moved by exactly that work, route labels are templates, the output passes
//! `promtool check metrics`), the `/metrics` token, `/health` and `/ready`, request ids,
//! and JSON logs.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::e2e::server::ServerProcess;
use crate::e2e::services;

/// Start → parallel fork: a user task and an external task → join → end.
const WORK: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn" targetNamespace="t">
  <process id="work" isExecutable="true">
    <startEvent id="s" />
    <sequenceFlow id="f1" sourceRef="s" targetRef="fork" />
    <parallelGateway id="fork" />
    <sequenceFlow id="f2" sourceRef="fork" targetRef="approve" />
    <sequenceFlow id="f3" sourceRef="fork" targetRef="charge" />
    <userTask id="approve" name="Approve" />
    <serviceTask id="charge" camunda:type="external" camunda:topic="charge" />
    <sequenceFlow id="f4" sourceRef="approve" targetRef="join" />
    <sequenceFlow id="f5" sourceRef="charge" targetRef="join" />
    <parallelGateway id="join" />
    <sequenceFlow id="f6" sourceRef="join" targetRef="e" />
    <endEvent id="e" />
  </process>
</definitions>"#;

/// Start → a short timer → end.
const TIMER: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" targetNamespace="t">
  <process id="tick" isExecutable="true">
    <startEvent id="s" />
    <sequenceFlow id="f1" sourceRef="s" targetRef="wait" />
    <intermediateCatchEvent id="wait"><timerEventDefinition><timeDuration>PT0.3S</timeDuration></timerEventDefinition></intermediateCatchEvent>
    <sequenceFlow id="f2" sourceRef="wait" targetRef="e" />
    <endEvent id="e" />
  </process>
</definitions>"#;

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of a text exposition (label values here never hold `,` or `"`).
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split(',')
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').unwrap();
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            Sample {
                name,
                labels,
                value: value.parse().unwrap(),
            }
        })
        .collect()
}

/// The sum of the samples of `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

fn scrape(server: &ServerProcess, token: Option<&str>) -> (u16, String) {
    let agent = crate::e2e::server::agent();
    let mut req = agent.get(format!("{}/metrics", server.base));
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = req.call().unwrap();
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap())
}

/// Feeds an exposition to `promtool check metrics`; skips (visibly) without promtool.
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        services::missing("promtool (Debian package `prometheus`), for the metrics lint");
        return;
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a known workload and checks that the counters moved by exactly it, that the
/// gauges agree with the API's listings, and that the output is valid for promtool.
fn metrics_follow_the_work(server: &ServerProcess, backend: &str) {
    let (status, before) = scrape(server, None);
    assert_eq!(status, 200);
    let before = parse(&before);
    assert_eq!(value(&before, "steadyflow_up", &[]), 1.0);
    assert_eq!(value(&before, "steadyflow_db_up", &[]), 1.0);
    assert_eq!(
        value(&before, "steadyflow_redis_up", &[]),
        0.0,
        "no Redis configured"
    );
    let counter = |samples: &[Sample], name: &str| value(samples, name, &[]);

    assert_eq!(server.deploy(WORK).0, 201);
    assert_eq!(server.deploy(TIMER).0, 201);
    let mut ids = Vec::new();
    for i in 0..3 {
        let (s, inst) = server.call(
            "POST",
            "/api/v1/process-definitions/key/work/start",
            Some(&json!({"businessKey": format!("b{i}")})),
        );
        assert_eq!(s, 201, "{inst}");
        ids.push(inst["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let (s, _) = server.call("GET", &format!("/api/v1/process-instances/{id}"), None);
        assert_eq!(s, 200);
    }
    assert_eq!(server.call("GET", "/no/such/route/42", None).0, 404);

    // Instance 0 completes: its external task, then its user task.
    let (s, locked) = server.call(
        "POST",
        "/api/v1/external-tasks/fetch-and-lock",
        Some(&json!({"workerId": "w", "maxTasks": 3, "topics": [{"topicName": "charge", "lockDuration": 60000}]})),
    );
    assert_eq!(s, 200, "{locked}");
    let external_of = |inst: &str| -> String {
        locked
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["processInstanceId"] == inst)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (s, body) = server.call(
        "POST",
        &format!("/api/v1/external-tasks/{}/complete", external_of(&ids[0])),
        Some(&json!({"workerId": "w"})),
    );
    assert_eq!(s, 200, "{body}");
    let (_, tasks) = server.call(
        "GET",
        &format!("/api/v1/tasks?processInstanceId={}", ids[0]),
        None,
    );
    let task = tasks["items"][0]["id"].as_str().unwrap().to_string();
    let (s, done) = server.call(
        "POST",
        &format!("/api/v1/tasks/{task}/complete"),
        Some(&json!({})),
    );
    assert_eq!(s, 200, "{done}");
    assert_eq!(done["state"], "completed");
    // Instance 1 is cancelled; instance 2's external task fails for good (an incident).
    assert_eq!(
        server
            .call(
                "DELETE",
                &format!("/api/v1/process-instances/{}", ids[1]),
                None
            )
            .0,
        200
    );
    let (s, body) = server.call(
        "POST",
        &format!("/api/v1/external-tasks/{}/failure", external_of(&ids[2])),
        Some(&json!({"workerId": "w", "errorMessage": "card declined", "retries": 0, "retryTimeout": 0})),
    );
    assert_eq!(s, 200, "{body}");
    // One timer instance, which completes once its timer fired.
    let (s, tick) = server.call(
        "POST",
        "/api/v1/process-definitions/key/tick/start",
        Some(&json!({})),
    );
    assert_eq!(s, 201, "{tick}");
    let tick = tick["id"].as_str().unwrap().to_string();
    until("the timer instance to complete", || {
        server
            .call("GET", &format!("/api/v1/process-instances/{tick}"), None)
            .1["state"]
            == "completed"
    });

    let (status, text) = scrape(server, None);
    assert_eq!(status, 200);
    let after = parse(&text);
    let moved = |name: &str| counter(&after, name) - counter(&before, name);
    assert_eq!(moved("steadyflow_instances_started_total"), 4.0);
    assert_eq!(moved("steadyflow_instances_completed_total"), 2.0);
    assert_eq!(moved("steadyflow_instances_cancelled_total"), 1.0);
    assert_eq!(
        value(
            &after,
            "steadyflow_incidents_opened_total",
            &[("type", "failedExternalTask")]
        ),
        1.0
    );
    assert!(value(&after, "steadyflow_timer_lag_seconds_count", &[]) >= 1.0);

    // Gauges agree with the API's own listings.
    let (_, tasks) = server.call("GET", "/api/v1/tasks", None);
    let (_, externals) = server.call("GET", "/api/v1/external-tasks", None);
    let (_, instances) = server.call("GET", "/api/v1/process-instances", None);
    let running = instances["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] == "active" || i["state"] == "incident")
        .count();
    assert_eq!(running, 1, "{instances}");
    assert_eq!(
        value(&after, "steadyflow_instances_active", &[]),
        running as f64
    );
    assert_eq!(
        value(&after, "steadyflow_tasks_open", &[]),
        tasks["items"].as_array().unwrap().len() as f64
    );
    assert_eq!(
        value(&after, "steadyflow_external_tasks_open", &[]),
        externals["items"].as_array().unwrap().len() as f64
    );

    // HTTP series: route templates, never raw paths; unknown routes under one label.
    let route = "/api/v1/process-instances/{id}";
    assert!(
        value(
            &after,
            "http_requests_total",
            &[("method", "GET"), ("route", route), ("status", "200")]
        ) >= 3.0,
        "{text}"
    );
    assert_eq!(
        value(
            &after,
            "http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/api/v1/process-definitions/key/{key}/start"),
                ("status", "201")
            ]
        ),
        4.0
    );
    assert_eq!(
        value(
            &after,
            "http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        1.0
    );
    assert!(
        value(
            &after,
            "http_request_duration_seconds_count",
            &[("route", route)]
        ) >= 3.0
    );
    for s in after.iter().filter(|s| s.labels.contains_key("route")) {
        let r = &s.labels["route"];
        assert!(
            r == "unmatched" || !ids.iter().any(|id| r.contains(id.as_str())),
            "raw path as a label: {r}"
        );
        assert!(!r.contains("/no/such"), "raw path as a label: {r}");
    }

    // Store writers: batches and their commit time, per backend.
    let batches = value(
        &after,
        "steadyflow_store_batch_size_count",
        &[("backend", backend)],
    );
    assert!(batches >= 1.0, "no {backend} batch recorded:\n{text}");
    let commands = value(
        &after,
        "steadyflow_store_batch_size_sum",
        &[("backend", backend)],
    );
    assert!(
        commands >= batches,
        "{commands} change sets in {batches} batches"
    );
    assert_eq!(
        value(
            &after,
            "steadyflow_store_commit_seconds_count",
            &[("backend", backend)]
        ),
        batches
    );

    promtool_check(&text);
}

#[test]
fn metrics_follow_the_work_on_sqlite_and_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("STEADYFLOW_METRICS__GAUGE_REFRESH_MS", "0"),
        ("STEADYFLOW_ENGINE__TIMERS__IDLE_POLL_MS", "20"),
    ];
    let server = ServerProcess::start(dir.path(), None, &env);
    metrics_follow_the_work(&server, "sqlite");
    let after = parse(&scrape(&server, None).1);
    assert!(value(&after, "steadyflow_store_wal_sync_seconds_count", &[]) >= 1.0);
}

#[test]
fn metrics_follow_the_work_on_postgres_and_pass_promtool() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Some(db) = rt.block_on(steadyflow_store_pg::testing::fresh_database()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("STEADYFLOW_METRICS__GAUGE_REFRESH_MS", "0"),
        ("STEADYFLOW_ENGINE__TIMERS__IDLE_POLL_MS", "20"),
    ];
    let mut server = ServerProcess::start(dir.path(), Some(db.url()), &env);
    metrics_follow_the_work(&server, "postgres");
    server.kill();
    rt.block_on(db.cleanup());
}

/// Database gauges are counted at most once per interval: with a long interval, new
/// work does not show before it runs out (the counters move at once).
#[test]
fn database_gauges_are_not_recounted_per_scrape() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("STEADYFLOW_METRICS__GAUGE_REFRESH_MS", "3600000")];
    let server = ServerProcess::start(dir.path(), None, &env);
    let first = parse(&scrape(&server, None).1);
    assert_eq!(value(&first, "steadyflow_tasks_open", &[]), 0.0);
    assert_eq!(server.deploy(WORK).0, 201);
    let (s, _) = server.call(
        "POST",
        "/api/v1/process-definitions/key/work/start",
        Some(&json!({})),
    );
    assert_eq!(s, 201);
    let second = parse(&scrape(&server, None).1);
    assert_eq!(
        value(&second, "steadyflow_instances_started_total", &[]),
        1.0
    );
    assert_eq!(
        value(&second, "steadyflow_tasks_open", &[]),
        0.0,
        "counted again within the interval"
    );
    assert_eq!(
        value(
            &second,
            "steadyflow_gauges_refreshed_timestamp_seconds",
            &[]
        ),
        value(&first, "steadyflow_gauges_refreshed_timestamp_seconds", &[])
    );
}

#[test]
fn a_metrics_token_guards_metrics_but_not_the_probes() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        None,
        &[("STEADYFLOW_METRICS__TOKEN", "scrape-me")],
    );
    let agent = crate::e2e::server::agent();
    let resp = agent
        .get(format!("{}/metrics", server.base))
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        resp.headers()
            .get("www-authenticate")
            .unwrap()
            .to_str()
            .unwrap(),
        "Bearer realm=\"metrics\""
    );
    assert_eq!(scrape(&server, Some("scrape-mE")).0, 401);
    assert_eq!(scrape(&server, Some("")).0, 401);
    let (status, text) = scrape(&server, Some("scrape-me"));
    assert_eq!(status, 200);
    assert!(text.contains("steadyflow_up 1"), "{text}");
    let (status, health) = server.call("GET", "/health", None);
    assert_eq!(status, 200, "{health}");
    assert_eq!(server.call("GET", "/ready", None).0, 200);
}

#[test]
fn probes_report_components_with_latency() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        None,
        &[("STEADYFLOW_ENGINE__TIMERS__IDLE_POLL_MS", "20")],
    );
    until("the timer driver's first iteration", || {
        server.call("GET", "/health", None).1["components"]["timerDriver"]["latencyMs"].is_number()
    });
    let (status, health) = server.call("GET", "/health", None);
    assert_eq!(status, 200);
    assert_eq!(health["status"], "up", "{health}");
    let db = &health["components"]["database"];
    assert_eq!(db["status"], "up");
    assert!(db["latencyMs"].as_f64().unwrap() >= 0.0, "{health}");
    assert!(
        health["components"].get("redis").is_none(),
        "no cache configured"
    );
    let (status, ready) = server.call("GET", "/ready", None);
    assert_eq!(status, 200);
    assert_eq!(ready["status"], "up");
    assert!(
        ready["components"]["database"]["latencyMs"].is_number(),
        "{ready}"
    );
}

fn request_id(server: &ServerProcess, path: &str, sent: Option<&str>) -> String {
    let agent = crate::e2e::server::agent();
    let mut req = agent.get(format!("{}{path}", server.base));
    if let Some(id) = sent {
        req = req.header("X-Request-Id", id);
    }
    let resp = req.call().unwrap();
    resp.headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

/// A sane `X-Request-Id` is echoed, anything else replaced by a uuid v7; with
/// `log.format: json` each log line is one JSON object carrying its request's id and
/// route template.
#[test]
fn request_ids_are_echoed_and_logged_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut server = ServerProcess::start_logging(
        dir.path(),
        None,
        &[
            ("STEADYFLOW_LOG__FORMAT", "json"),
            ("STEADYFLOW_LOG", "info,steadyflow_api=debug"),
        ],
        Stdio::from(log),
    );
    let path = "/api/v1/process-instances/not-there";
    assert_eq!(
        request_id(&server, path, Some("trace-me-42")),
        "trace-me-42"
    );
    for bad in ["has space", &"x".repeat(129)] {
        let made = request_id(&server, path, Some(bad));
        assert_ne!(made, bad);
        let uuid = uuid::Uuid::parse_str(&made).unwrap();
        assert_eq!(uuid.get_version_num(), 7, "{made}");
    }
    let a = request_id(&server, "/health", None);
    let b = request_id(&server, "/health", None);
    assert_ne!(a, b, "each request gets its own id");
    server.kill();

    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "steadyflow is serving"),
        "{text}"
    );
    let ours = lines
        .iter()
        .find(|l| l["span"]["request_id"] == "trace-me-42")
        .unwrap_or_else(|| panic!("no log line of request trace-me-42:\n{text}"));
    assert_eq!(
        ours["span"]["route"], "/api/v1/process-instances/{id}",
        "{ours}"
    );
    assert_eq!(ours["status"], 404, "{ours}");
}
