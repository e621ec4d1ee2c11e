use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::support::{App, USER_TASK_XML, id};

#[tokio::test]
async fn start_by_key_waits_at_the_user_task() {
    let app = App::new();
    app.deploy(USER_TASK_XML).await;
    let inst = app
        .start(
            "approval",
            json!({"variables": {"amount": 42}, "businessKey": "order-7"}),
        )
        .await;
    assert_eq!(inst["state"], "active");
    assert_eq!(inst["activeActivityIds"], json!(["review"]));
    assert_eq!(inst["variables"], json!({"amount": 42}));
    assert_eq!(inst["businessKey"], "order-7");
    assert_eq!(inst["definitionKey"], "approval");
    assert!(inst["endedAt"].is_null());

    // An empty body is allowed and means no variables.
    let r = app
        .call(
            Method::POST,
            "/api/v1/process-definitions/key/approval/start",
            None,
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json()["variables"], json!({}));

    let found = app
        .get(&format!("/api/v1/process-instances/{}", id(&inst)))
        .await;
    assert_eq!(found.status, StatusCode::OK);
    assert_eq!(found.json(), inst);
    let by_bk = app
        .get("/api/v1/process-instances?businessKey=order-7")
        .await
        .items();
    assert_eq!(by_bk.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_task_is_claimed_once_and_completing_it_ends_the_instance() {
    let app = App::new();
    app.deploy(USER_TASK_XML).await;
    let inst = app
        .start("approval", json!({"variables": {"amount": 42}}))
        .await;
    let other = app.start("approval", json!({})).await;
    let iid = id(&inst);

    let tasks = app
        .get(&format!("/api/v1/tasks?processInstanceId={iid}"))
        .await
        .items();
    let tasks = tasks.as_array().unwrap();
    assert_eq!(tasks.len(), 1);
    let task = &tasks[0];
    assert_eq!(task["taskDefinitionKey"], "review");
    assert_eq!(task["name"], "Review");
    assert_eq!(task["processInstanceId"], iid.as_str());
    assert_eq!(task["processDefinitionId"], "approval:1");
    assert_eq!(task["candidateGroups"], json!(["managers"]));
    assert!(task["assignee"].is_null());
    let tid = id(task);
    assert_eq!(
        app.get("/api/v1/tasks")
            .await
            .items()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        app.get("/api/v1/tasks?candidateGroup=managers")
            .await
            .items()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        app.get(&format!("/api/v1/tasks/{tid}")).await.json()["id"],
        tid.as_str()
    );

    let claim_uri = format!("/api/v1/tasks/{tid}/claim");
    let claim = |user: &'static str| app.post(&claim_uri, json!({"userId": user}));
    let r = claim("alice").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["assignee"], "alice");
    let r = claim("bob").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "task_already_claimed".into()),
        "{}",
        r.text
    );
    assert_eq!(
        claim("alice").await.status,
        StatusCode::OK,
        "re-claiming by the holder is fine"
    );
    let mine = app.get("/api/v1/tasks?assignee=alice").await.items();
    assert_eq!(mine.as_array().unwrap().len(), 1);

    let r = app
        .post(
            &format!("/api/v1/tasks/{tid}/complete"),
            json!({"variables": {"approved": true}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let done = r.json();
    assert_eq!(done["id"], iid.as_str());
    assert_eq!(done["state"], "completed");
    assert_eq!(done["variables"], json!({"amount": 42, "approved": true}));
    assert_eq!(done["activeActivityIds"], json!([]));
    assert!(done["endedAt"].is_string());

    let r = app.get(&format!("/api/v1/tasks/{tid}")).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    let r = app
        .post(&format!("/api/v1/tasks/{tid}/complete"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let history = app
        .get(&format!("/api/v1/process-instances/{iid}/history"))
        .await
        .items();
    let events: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap())
        .collect();
    assert_eq!(events.first(), Some(&"instanceStarted"), "{events:?}");
    assert_eq!(events.last(), Some(&"instanceCompleted"), "{events:?}");
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["activityId"] == "review")
    );

    let completed = app
        .get("/api/v1/process-instances?state=completed")
        .await
        .items();
    assert_eq!(
        completed
            .as_array()
            .unwrap()
            .iter()
            .map(id)
            .collect::<Vec<_>>(),
        vec![iid.clone()]
    );
    let active = app
        .get("/api/v1/process-instances?state=active&definitionKey=approval")
        .await
        .items();
    assert_eq!(
        active
            .as_array()
            .unwrap()
            .iter()
            .map(id)
            .collect::<Vec<_>>(),
        vec![id(&other)]
    );
    assert_eq!(
        app.get("/api/v1/process-instances?limit=1")
            .await
            .items()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn cancelling_twice_is_instance_ended() {
    let app = App::new();
    app.deploy(USER_TASK_XML).await;
    let inst = app.start("approval", json!({})).await;
    let uri = format!("/api/v1/process-instances/{}", id(&inst));
    let r = app.delete(&uri).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["state"], "cancelled");
    assert_eq!(r.json()["activeActivityIds"], json!([]));
    let r = app.delete(&uri).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "instance_ended".into()),
        "{}",
        r.text
    );
    let r = app.delete("/api/v1/process-instances/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let tasks = app
        .get(&format!("/api/v1/tasks?processInstanceId={}", id(&inst)))
        .await
        .items();
    assert!(
        tasks.as_array().unwrap().is_empty(),
        "cancelling removes the open task"
    );
}

#[tokio::test]
async fn variables_are_merged_into_the_instance() {
    let app = App::new();
    app.deploy(USER_TASK_XML).await;
    let inst = app
        .start("approval", json!({"variables": {"a": 1, "b": 2}}))
        .await;
    let uri = format!("/api/v1/process-instances/{}/variables", id(&inst));
    let r = app
        .post(&uri, json!({"variables": {"b": 3, "c": "x"}}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["variables"], json!({"a": 1, "b": 3, "c": "x"}));
    assert_eq!(r.json()["activeActivityIds"], json!(["review"]));
    let r = app.post(&uri, json!({"vars": {}})).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_json".into())
    );
}
