use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{Value, json};
use steadyflow_api::AllowAll;
use steadyflow_engine::ManualClock;

use crate::support::{App, EXTERNAL_XML, id};

fn fetch(worker: &str, lock_ms: i64) -> Value {
    json!({"workerId": worker, "maxTasks": 10, "topics": [{"topicName": "work", "lockDuration": lock_ms}]})
}

#[tokio::test]
async fn only_the_worker_holding_the_lock_may_complete() {
    let app = App::new();
    app.deploy(EXTERNAL_XML).await;
    let inst = app.start("work", json!({"variables": {"n": 1}})).await;
    assert_eq!(inst["activeActivityIds"], json!(["doWork"]));
    let iid = id(&inst);

    let listed = app
        .get(&format!("/api/v1/external-tasks?processInstanceId={iid}"))
        .await
        .items();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(listed[0]["workerId"].is_null());
    assert!(listed[0]["variables"].is_null());

    let r = app
        .post("/api/v1/external-tasks/fetch-and-lock", fetch("w1", 60_000))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let locked = r.json();
    let locked = locked.as_array().unwrap();
    assert_eq!(locked.len(), 1);
    let task = &locked[0];
    assert_eq!(task["topicName"], "work");
    assert_eq!(task["activityId"], "doWork");
    assert_eq!(task["processInstanceId"], iid.as_str());
    assert_eq!(task["processDefinitionId"], "work:1");
    assert_eq!(task["workerId"], "w1");
    assert!(task["lockExpirationTime"].is_string());
    assert_eq!(task["variables"], json!({"n": 1}));
    let tid = id(task);

    let again = app
        .post("/api/v1/external-tasks/fetch-and-lock", fetch("w2", 60_000))
        .await
        .json();
    assert!(
        again.as_array().unwrap().is_empty(),
        "a locked task is not handed out twice"
    );

    let complete_uri = format!("/api/v1/external-tasks/{tid}/complete");
    let complete = |worker: &'static str| {
        app.post(
            &complete_uri,
            json!({"workerId": worker, "variables": {"result": "ok"}}),
        )
    };
    let r = complete("w2").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "locked_by_other_worker".into()),
        "{}",
        r.text
    );
    let r = complete("w1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["state"], "completed");
    assert_eq!(r.json()["variables"], json!({"n": 1, "result": "ok"}));
    let r = complete("w1").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
}

#[tokio::test]
async fn an_expired_lock_cannot_complete() {
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let app = App::build(clock.clone(), Arc::new(AllowAll));
    app.deploy(EXTERNAL_XML).await;
    app.start("work", json!({})).await;
    let locked = app
        .post("/api/v1/external-tasks/fetch-and-lock", fetch("w1", 1_000))
        .await
        .json();
    let tid = id(&locked[0]);
    clock.advance(chrono::Duration::seconds(2));
    let r = app
        .post(
            &format!("/api/v1/external-tasks/{tid}/complete"),
            json!({"workerId": "w1"}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "lock_expired".into()),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn failing_without_retries_raises_an_incident_that_new_retries_resolve() {
    let app = App::new();
    app.deploy(EXTERNAL_XML).await;
    let inst = app.start("work", json!({})).await;
    let iid = id(&inst);
    let locked = app
        .post("/api/v1/external-tasks/fetch-and-lock", fetch("w1", 60_000))
        .await
        .json();
    let tid = id(&locked[0]);

    let failure =
        json!({"workerId": "w1", "errorMessage": "boom", "retries": 0, "retryTimeout": 0});
    let r = app
        .post(&format!("/api/v1/external-tasks/{tid}/failure"), failure)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let failed = r.json();
    assert_eq!(failed["retries"], 0);
    assert_eq!(failed["errorMessage"], "boom");
    assert!(failed["workerId"].is_null());

    let inst = app
        .get(&format!("/api/v1/process-instances/{iid}"))
        .await
        .json();
    assert_eq!(inst["state"], "incident");
    assert_eq!(
        app.get("/api/v1/process-instances?state=incident")
            .await
            .items()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let incidents = app
        .get(&format!("/api/v1/incidents?processInstanceId={iid}"))
        .await
        .items();
    let incidents = incidents.as_array().unwrap();
    assert_eq!(incidents.len(), 1);
    let inc = &incidents[0];
    assert_eq!(inc["incidentType"], "failedExternalTask");
    assert_eq!(inc["activityId"], "doWork");
    assert_eq!(inc["externalTaskId"], tid.as_str());
    assert!(inc["message"].as_str().unwrap().contains("boom"), "{inc}");
    assert!(inc["resolved"].is_null());
    let inc_id = id(inc);

    // An external task's incident is resolved through its retries, not /retry.
    let r = app
        .post(&format!("/api/v1/incidents/{inc_id}/retry"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let none = app
        .post("/api/v1/external-tasks/fetch-and-lock", fetch("w1", 60_000))
        .await
        .json();
    assert!(
        none.as_array().unwrap().is_empty(),
        "a task without retries is not fetchable"
    );

    let r = app
        .put(
            &format!("/api/v1/external-tasks/{tid}/retries"),
            json!({"retries": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["retries"], 1);
    assert_eq!(
        app.get(&format!("/api/v1/process-instances/{iid}"))
            .await
            .json()["state"],
        "active"
    );
    assert!(
        app.get("/api/v1/incidents?open=true")
            .await
            .items()
            .as_array()
            .unwrap()
            .is_empty()
    );
    let resolved = app.get("/api/v1/incidents?open=false").await.items();
    assert_eq!(resolved.as_array().unwrap().len(), 1);
    assert!(resolved[0]["resolved"].is_string());

    let again = app
        .post("/api/v1/external-tasks/fetch-and-lock", fetch("w1", 60_000))
        .await
        .json();
    assert_eq!(
        again.as_array().unwrap().len(),
        1,
        "fetchable again after new retries"
    );
}

#[tokio::test]
async fn worker_protocol_input_is_validated() {
    let app = App::new();
    let r = app
        .post("/api/v1/external-tasks/fetch-and-lock", fetch("", 1_000))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "bad_request".into())
    );
    let r = app
        .post("/api/v1/external-tasks/fetch-and-lock", fetch("w1", 0))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "bad_request".into())
    );
    let r = app
        .post(
            "/api/v1/external-tasks/fetch-and-lock",
            json!({"workerId": "w", "maxTasks": -1, "topics": []}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_json".into())
    );
    let r = app
        .put("/api/v1/external-tasks/nope/retries", json!({"retries": 1}))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    let r = app.get("/api/v1/external-tasks/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

const ERROR_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL"
             xmlns:camunda="http://camunda.org/schema/1.0/bpmn"
             id="defs" targetNamespace="http://example.com/pay">
  <error id="declined" errorCode="CARD_DECLINED"/>
  <process id="pay" isExecutable="true">
    <startEvent id="start"/>
    <sequenceFlow id="f1" sourceRef="start" targetRef="charge"/>
    <serviceTask id="charge" camunda:type="external" camunda:topic="work"/>
    <sequenceFlow id="f2" sourceRef="charge" targetRef="end"/>
    <endEvent id="end"/>
    <boundaryEvent id="onDeclined" attachedToRef="charge">
      <errorEventDefinition errorRef="declined"/>
    </boundaryEvent>
    <sequenceFlow id="f3" sourceRef="onDeclined" targetRef="askCustomer"/>
    <userTask id="askCustomer" name="Ask customer"/>
    <sequenceFlow id="f4" sourceRef="askCustomer" targetRef="end"/>
  </process>
</definitions>
"#;

#[tokio::test]
async fn a_bpmn_error_from_the_lock_holder_is_caught_by_its_boundary_event() {
    let app = App::new();
    app.deploy(ERROR_XML).await;
    let iid = id(&app.start("pay", json!({})).await);
    let locked = app
        .post("/api/v1/external-tasks/fetch-and-lock", fetch("w1", 60_000))
        .await
        .json();
    let tid = id(&locked[0]);
    let uri = format!("/api/v1/external-tasks/{tid}/bpmnError");
    let error = |worker: &str, code: &str| json!({"workerId": worker, "errorCode": code, "errorMessage": "no funds", "variables": {"reason": "funds"}});

    let r = app.post(&uri, error("w1", " ")).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "bad_request".into()),
        "{}",
        r.text
    );
    let r = app.post(&uri, error("w2", "CARD_DECLINED")).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "locked_by_other_worker".into()),
        "{}",
        r.text
    );
    let r = app
        .post("/api/v1/external-tasks/nope/bpmnError", error("w1", "X"))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let inst = app
        .get(&format!("/api/v1/process-instances/{iid}"))
        .await
        .json();
    assert_eq!(
        inst["activeActivityIds"],
        json!(["charge"]),
        "nothing changed"
    );

    let r = app.post(&uri, error("w1", "CARD_DECLINED")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let inst = r.json();
    assert_eq!(inst["state"], "active");
    assert_eq!(inst["activeActivityIds"], json!(["askCustomer"]));
    assert_eq!(inst["variables"], json!({"reason": "funds"}));
    let r = app.post(&uri, error("w1", "CARD_DECLINED")).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "the task ended: {}",
        r.text
    );
}

#[tokio::test]
async fn an_uncaught_bpmn_error_is_an_incident_naming_the_task() {
    let app = App::new();
    app.deploy(ERROR_XML).await;
    let iid = id(&app.start("pay", json!({})).await);
    let locked = app
        .post("/api/v1/external-tasks/fetch-and-lock", fetch("w1", 60_000))
        .await
        .json();
    let tid = id(&locked[0]);
    let r = app
        .post(
            &format!("/api/v1/external-tasks/{tid}/bpmnError"),
            json!({"workerId": "w1", "errorCode": "OTHER"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["state"], "incident");
    let incidents = app
        .get(&format!("/api/v1/incidents?processInstanceId={iid}"))
        .await
        .items();
    assert_eq!(incidents[0]["incidentType"], "unhandledError");
    assert_eq!(incidents[0]["activityId"], "charge");
    let msg = incidents[0]["message"].as_str().unwrap();
    assert!(msg.contains("`charge`") && msg.contains("`OTHER`"), "{msg}");
}
