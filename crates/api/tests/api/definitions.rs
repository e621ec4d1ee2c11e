use axum::http::{Method, StatusCode, header};
use serde_json::json;

use crate::support::{App, EXTERNAL_XML, USER_TASK_XML, id};

#[tokio::test]
async fn redeploying_the_same_xml_keeps_the_version_and_a_change_adds_one() {
    let app = App::new();
    let r = app
        .post_xml("/api/v1/process-definitions", USER_TASK_XML)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let first = r.json();
    assert_eq!(first["id"], "approval:1");
    assert_eq!(first["key"], "approval");
    assert_eq!(first["version"], 1);
    assert_eq!(first["name"], "Approval");
    assert_eq!(first["created"], true);
    assert!(
        first["deployedAt"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .is_ok()
    );
    assert_eq!(first["definitions"].as_array().unwrap().len(), 1);

    let r = app
        .post_xml("/api/v1/process-definitions", USER_TASK_XML)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let again = r.json();
    assert_eq!(
        (again["id"].clone(), again["created"].clone()),
        (json!("approval:1"), json!(false))
    );
    assert_eq!(again["definitions"][0]["created"], false);

    let changed = USER_TASK_XML.replace("name=\"Review\"", "name=\"Review it\"");
    let r = app.post_xml("/api/v1/process-definitions", &changed).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json()["version"], 2);
    assert_eq!(r.json()["id"], "approval:2");

    let list = app
        .get("/api/v1/process-definitions?key=approval")
        .await
        .items();
    let versions: Vec<i64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, vec![2, 1]);
    app.deploy(EXTERNAL_XML).await;
    assert_eq!(
        app.get("/api/v1/process-definitions")
            .await
            .items()
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        app.get("/api/v1/process-definitions?key=work")
            .await
            .items()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let one = app.get("/api/v1/process-definitions/approval:1").await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json()["key"], "approval");
    assert!(
        one.json().get("xml").is_none(),
        "the XML has its own endpoint"
    );

    let xml = app.get("/api/v1/process-definitions/approval:2/xml").await;
    assert_eq!(xml.status, StatusCode::OK);
    assert!(
        xml.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/xml")
    );
    assert_eq!(xml.text, changed);

    let missing = app.get("/api/v1/process-definitions/approval:9").await;
    assert_eq!(
        (missing.status, missing.code()),
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    assert_eq!(
        app.get("/api/v1/process-definitions/approval:9/xml")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_file_with_two_pools_deploys_both() {
    let app = App::new();
    let second = r#"<process id="other" name="Other" isExecutable="true">
    <startEvent id="s2"/><sequenceFlow id="g1" sourceRef="s2" targetRef="e2"/><endEvent id="e2"/>
  </process>
</definitions>"#;
    let xml = USER_TASK_XML.replace("</definitions>", second);
    let r = app.post_xml("/api/v1/process-definitions", &xml).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let body = r.json();
    assert_eq!(body["key"], "approval");
    let keys: Vec<&str> = body["definitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["approval", "other"]);
}

#[tokio::test]
async fn malformed_xml_is_400_with_its_position() {
    let app = App::new();
    let broken = USER_TASK_XML.replace("<endEvent id=\"end\"/>", "<endEvent id=\"end\">");
    let r = app.post_xml("/api/v1/process-definitions", &broken).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let e = r.json();
    assert_eq!(e["error"]["code"], "bpmn_malformed");
    assert!(e["error"]["details"]["line"].as_u64().unwrap() > 1, "{e}");
    assert!(e["error"]["details"]["column"].as_u64().is_some(), "{e}");
    assert!(
        app.get("/api/v1/process-definitions")
            .await
            .items()
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_script_task_is_refused_naming_its_id() {
    let app = App::new();
    let xml = USER_TASK_XML.replace(
        r#"<userTask id="review" name="Review" camunda:candidateGroups="managers"/>"#,
        r#"<scriptTask id="theScriptTask" scriptFormat="groovy"><script>x = 1</script></scriptTask>"#,
    )
    .replace("targetRef=\"review\"", "targetRef=\"theScriptTask\"")
    .replace("sourceRef=\"review\"", "sourceRef=\"theScriptTask\"");
    let r = app.post_xml("/api/v1/process-definitions", &xml).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let e = &r.json()["error"];
    assert_eq!(e["code"], "bpmn_unsupported");
    assert_eq!(
        e["details"],
        json!({"element": "scriptTask", "id": "theScriptTask"})
    );
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("`scriptTask`") && msg.contains("`theScriptTask`"),
        "{msg}"
    );
}

#[tokio::test]
async fn an_invalid_model_is_bpmn_invalid() {
    let app = App::new();
    let xml = USER_TASK_XML.replace("targetRef=\"end\"", "targetRef=\"nowhere\"");
    let r = app.post_xml("/api/v1/process-definitions", &xml).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "bpmn_invalid".into()),
        "{}",
        r.text
    );
    assert!(r.json()["error"]["details"]["id"].is_string());
}

#[tokio::test]
async fn empty_or_non_utf8_deploy_bodies_are_400() {
    let app = App::new();
    let r = app.post_xml("/api/v1/process-definitions", "").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "bad_request".into())
    );
    let r = app
        .call(
            Method::POST,
            "/api/v1/process-definitions",
            Some("text/xml"),
            vec![0x3c, 0xff, 0xfe],
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "bad_request".into())
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("UTF-8")
    );
}

#[tokio::test]
async fn any_content_type_is_accepted_for_the_xml() {
    let app = App::new();
    let r = app
        .call(
            Method::POST,
            "/api/v1/process-definitions",
            None,
            USER_TASK_XML,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

#[tokio::test]
async fn start_by_id_pins_the_version_and_by_key_takes_the_latest() {
    let app = App::new();
    app.deploy(USER_TASK_XML).await;
    app.deploy(&USER_TASK_XML.replace("name=\"Approval\"", "name=\"Approval v2\""))
        .await;
    let r = app
        .post("/api/v1/process-definitions/approval:1/start", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json()["definitionId"], "approval:1");
    let latest = app.start("approval", json!({})).await;
    assert_eq!(latest["definitionId"], "approval:2");

    let r = app
        .post("/api/v1/process-definitions/key/nope/start", json!({}))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    let r = app
        .post("/api/v1/process-definitions/nope:1/start", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_ne!(id(&latest), "");
}
