//! The README's tour, step by step, against a started `steadyflow serve`, with the
//! files of `examples/` in both dialects: deploy, start, user task (list by candidate
//! group, claim, complete), external task (fetch-and-lock, complete), history, health.

use serde_json::{Value, json};

use super::server::ServerProcess;
use super::services::workspace_root;

/// The tour's files: Camunda 7 (`camunda:`) and Camunda 8 (`zeebe:`) dialects.
const EXAMPLES: [&str; 2] = ["examples/order.bpmn", "examples/camunda8/order.bpmn"];

fn ok(server: &ServerProcess, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = server.call(method, path, body.as_ref());
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {v}"
    );
    v
}

fn items(page: &Value) -> Vec<Value> {
    assert!(page.get("nextCursor").is_some(), "a page: {page}");
    page["items"].as_array().cloned().unwrap_or_default()
}

fn events(server: &ServerProcess, instance: &str) -> Vec<(String, Option<String>)> {
    let h = ok(
        server,
        "GET",
        &format!("/api/v1/process-instances/{instance}/history"),
        None,
    );
    items(&h)
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["activityId"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn tour(file: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), None, &[]);
    let xml = std::fs::read_to_string(workspace_root().join(file)).unwrap();

    // deploy: 201, then the same XML again: 200 with the same version
    let (status, d) = server.deploy(&xml);
    assert_eq!(status, 201, "{file}: {d}");
    assert_eq!(
        (d["key"].as_str(), d["version"].as_i64()),
        (Some("order"), Some(1))
    );
    let (status, again) = server.deploy(&xml);
    assert_eq!(
        (status, again["version"].as_i64()),
        (200, Some(1)),
        "{file}"
    );

    // start: runs to the first wait state in the same request
    let (status, inst) = server.call(
        "POST",
        "/api/v1/process-definitions/key/order/start",
        Some(&json!({"variables": {"amount": 1500}, "businessKey": "order-17"})),
    );
    assert_eq!(status, 201, "{file}: {inst}");
    let instance = inst["id"].as_str().unwrap().to_string();
    assert_eq!(inst["activeActivityIds"], json!(["approve"]), "{file}");
    assert_eq!(inst["businessKey"], "order-17");

    // user tasks: by candidate group, claim, complete
    let tasks = items(&ok(
        &server,
        "GET",
        "/api/v1/tasks?candidateGroup=accounting",
        None,
    ));
    assert_eq!(tasks.len(), 1, "{file}: {tasks:?}");
    assert_eq!(tasks[0]["processInstanceId"], instance.as_str());
    assert_eq!(tasks[0]["name"], "Approve order");
    let task = tasks[0]["id"].as_str().unwrap().to_string();
    let claimed = ok(
        &server,
        "POST",
        &format!("/api/v1/tasks/{task}/claim"),
        Some(json!({"userId": "kermit"})),
    );
    assert_eq!(claimed["assignee"], "kermit");
    let after_task = ok(
        &server,
        "POST",
        &format!("/api/v1/tasks/{task}/complete"),
        Some(json!({"variables": {"approved": true}})),
    );
    assert_eq!(after_task["activeActivityIds"], json!(["charge"]), "{file}");

    // external tasks: a worker fetches, locks and completes
    let locked = ok(
        &server,
        "POST",
        "/api/v1/external-tasks/fetch-and-lock",
        Some(json!({"workerId": "w1", "maxTasks": 10,
                    "topics": [{"topicName": "charge", "lockDuration": 60000}]})),
    );
    let locked = locked.as_array().unwrap();
    assert_eq!(locked.len(), 1, "{file}: {locked:?}");
    assert_eq!(locked[0]["variables"]["amount"], 1500);
    assert_eq!(locked[0]["variables"]["approved"], true);
    let id = locked[0]["id"].as_str().unwrap();
    let done = ok(
        &server,
        "POST",
        &format!("/api/v1/external-tasks/{id}/complete"),
        Some(json!({"workerId": "w1", "variables": {"charged": true}})),
    );
    assert_eq!(done["state"], "completed", "{file}: {done}");
    assert_eq!(done["variables"]["charged"], true);

    // history: what happened, oldest first
    let history = events(&server, &instance);
    assert_eq!(
        history.first().map(|e| e.0.as_str()),
        Some("instanceStarted")
    );
    assert_eq!(
        history.last().map(|e| e.0.as_str()),
        Some("instanceCompleted")
    );
    for activity in ["approve", "charge"] {
        assert!(
            history
                .iter()
                .any(|(e, a)| e == "activityCompleted" && a.as_deref() == Some(activity)),
            "{file}: {activity} completed in {history:?}"
        );
    }
    assert!(
        history.iter().any(|(_, a)| a.as_deref() == Some("done")),
        "{file}: ends at `done`: {history:?}"
    );
    assert!(
        !history
            .iter()
            .any(|(_, a)| a.as_deref() == Some("rejected"))
    );

    // the other paths of the same file: small orders skip the approval, rejected ones
    // are not charged
    let small = ok(
        &server,
        "POST",
        "/api/v1/process-definitions/key/order/start",
        Some(json!({"variables": {"amount": 10}})),
    );
    assert_eq!(small["activeActivityIds"], json!(["charge"]), "{file}");
    let big = ok(
        &server,
        "POST",
        "/api/v1/process-definitions/key/order/start",
        Some(json!({"variables": {"amount": 5000}})),
    );
    let big_id = big["id"].as_str().unwrap();
    let task = items(&ok(
        &server,
        "GET",
        &format!("/api/v1/tasks?processInstanceId={big_id}"),
        None,
    ));
    let rejected = ok(
        &server,
        "POST",
        &format!("/api/v1/tasks/{}/complete", task[0]["id"].as_str().unwrap()),
        Some(json!({"variables": {"approved": false}})),
    );
    assert_eq!(rejected["state"], "completed", "{file}: {rejected}");
    assert!(
        events(&server, big_id)
            .iter()
            .any(|(_, a)| a.as_deref() == Some("rejected")),
        "{file}: ends at `rejected`"
    );

    let (status, health) = server.call("GET", "/health", None);
    assert_eq!((status, health["status"].as_str()), (200, Some("up")));
}

#[test]
fn readme_tour_with_the_camunda7_example() {
    tour(EXAMPLES[0]);
}

#[test]
fn readme_tour_with_the_camunda8_example() {
    tour(EXAMPLES[1]);
}

#[test]
fn the_readme_tour_uses_the_example_files() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    for file in EXAMPLES {
        assert!(readme.contains(file), "README names {file}");
        assert!(workspace_root().join(file).is_file(), "{file} exists");
    }
    for step in [
        "--data-binary @examples/order.bpmn",
        "/api/v1/process-definitions/key/order/start",
        "/api/v1/tasks?candidateGroup=accounting",
        "/api/v1/external-tasks/fetch-and-lock",
        "\"topicName\":\"charge\"",
        "/history",
    ] {
        assert!(readme.contains(step), "the tour shows `{step}`");
    }
}
