//! Authentication and authorization: the matrix of every route × every role × every
//! kind of bad credential, generated from the OpenAPI document (so a new route cannot be
//! forgotten), and the behaviour of log-in, disabling, revoking and the bootstrap token.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use steadyflow_api::access::{self, Rule};
use steadyflow_api::accounts::Accounts;
use steadyflow_api::{AppContext, TokenAuth};
use steadyflow_engine::{Engine, ManualClock};
use steadyflow_store::users::Role;
use steadyflow_store_sqlite::SqliteStore;
use tempfile::TempDir;
use tower::ServiceExt;

const BOOTSTRAP: &str = "bootstrap-secret-for-tests-0123456789";

struct Secured {
    router: Router,
    accounts: Accounts,
    clock: Arc<ManualClock>,
    _dir: TempDir,
}

struct Answer {
    status: StatusCode,
    challenge: Option<String>,
    retry_after: Option<String>,
    body: Value,
}

impl Secured {
    fn new() -> Secured {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn steadyflow_store::Store> =
            Arc::new(SqliteStore::open(dir.path().join("t.db")).unwrap());
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let accounts = Accounts::new(store.clone(), clock.clone());
        let engine = Arc::new(Engine::new(store, clock.clone()));
        let router = steadyflow_api::router(AppContext {
            engine,
            auth: TokenAuth::shared(accounts.clone(), Some(BOOTSTRAP)),
            degraded: Default::default(),
            backups: None,
        });
        Secured {
            router,
            accounts,
            clock,
            _dir: dir,
        }
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut b = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(uri);
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        let body = match body {
            Some(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let resp = self
            .router
            .clone()
            .oneshot(b.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let header_text = |name| {
            resp.headers()
                .get(name)
                .map(|v: &axum::http::HeaderValue| v.to_str().unwrap().to_string())
        };
        let challenge = header_text(header::WWW_AUTHENTICATE);
        let retry_after = header_text(header::RETRY_AFTER);
        let bytes = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            challenge,
            retry_after,
            body,
        }
    }

    async fn token_for(&self, name: &str, role: Role) -> String {
        self.accounts
            .add_user(
                name,
                role,
                vec!["staff".into()],
                Some("password-of-".to_string() + name),
            )
            .await
            .unwrap();
        self.accounts
            .issue_token(name, Duration::from_secs(3600), None)
            .await
            .unwrap()
            .text
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Every `/api/v1` operation of the OpenAPI document, with its path template.
fn operations() -> Vec<(String, String)> {
    let doc = serde_json::to_value(steadyflow_api::openapi()).unwrap();
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/api/v1/") {
            continue;
        }
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                out.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    assert!(out.len() > 20, "the document lists the API: {out:?}");
    out
}

/// The template with every `{param}` filled in (an id that names nothing).
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => in_param = true,
            '}' => {
                in_param = false;
                out.push_str("nothing-here");
            }
            _ if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

fn body_for(method: &str) -> Option<Value> {
    matches!(method, "POST" | "PUT" | "PATCH").then(|| json!({}))
}

#[test]
fn every_route_has_an_access_rule() {
    let missing: Vec<_> = operations()
        .into_iter()
        .filter(|(m, p)| access::rule(&Method::from_bytes(m.as_bytes()).unwrap(), p).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "routes without an access rule: {missing:?}"
    );
}

#[tokio::test]
async fn the_authorization_matrix() {
    let app = Secured::new();
    let mut role_tokens = Vec::new();
    for role in Role::ALL {
        let token = app.token_for(&format!("{role}-one"), *role).await;
        role_tokens.push((*role, token));
    }
    // Bad credentials of every kind.
    let expired = {
        app.accounts
            .add_user("late", Role::Admin, vec![], None)
            .await
            .unwrap();
        let t = app
            .accounts
            .issue_token("late", Duration::from_secs(60), None)
            .await
            .unwrap();
        t.text
    };
    let revoked = {
        app.accounts
            .add_user("gone", Role::Admin, vec![], None)
            .await
            .unwrap();
        let t = app
            .accounts
            .issue_token("gone", Duration::from_secs(3600), None)
            .await
            .unwrap();
        app.accounts.revoke(&t.record.id).await.unwrap();
        t.text
    };
    let disabled = {
        let t = app.token_for("off", Role::Admin).await;
        app.accounts
            .change_user(
                "off",
                steadyflow_api::accounts::UserChange {
                    disabled: Some(true),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        t
    };
    // A well-formed token that was never issued, and one whose secret is wrong.
    let unknown = format!("sf_0123456789abcdef_{}", "A".repeat(43));
    let forged = {
        let real = &role_tokens[0].1;
        let (head, _) = real.rsplit_once('_').unwrap();
        format!("{head}_{}", "B".repeat(43))
    };
    app.clock.advance(chrono::Duration::minutes(2));

    let bad: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("empty bearer", Some("Bearer ".into())),
        ("basic scheme", Some("Basic YWRtaW46YWRtaW4=".into())),
        ("malformed", Some(bearer("not-a-token"))),
        ("unknown", Some(bearer(&unknown))),
        ("forged secret", Some(bearer(&forged))),
        ("expired", Some(bearer(&expired))),
        ("revoked", Some(bearer(&revoked))),
        ("disabled user", Some(bearer(&disabled))),
    ];

    let mut checked = 0;
    for (method, path) in operations() {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let rule = access::rule(&m, &path).unwrap();
        let uri = concrete(&path);
        if rule == Rule::Public {
            let a = app.call(&method, &uri, None, body_for(&method)).await;
            assert!(
                a.status != StatusCode::FORBIDDEN && a.status != StatusCode::UNAUTHORIZED,
                "public {method} {path} answered {} {}",
                a.status,
                a.body
            );
            continue;
        }
        for (what, auth) in &bad {
            let a = app
                .call(&method, &uri, auth.as_deref(), body_for(&method))
                .await;
            assert_eq!(
                a.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {what}: {}",
                a.body
            );
            assert_eq!(
                a.body["error"]["code"], "unauthorized",
                "{method} {path} with {what}"
            );
            let challenge = a.challenge.unwrap_or_default();
            assert!(
                challenge.starts_with("Bearer"),
                "{method} {path} with {what}: WWW-Authenticate `{challenge}`"
            );
            checked += 1;
        }
        for (role, token) in &role_tokens {
            let a = app
                .call(&method, &uri, Some(&bearer(token)), body_for(&method))
                .await;
            if rule.allows(*role) {
                assert!(
                    a.status != StatusCode::UNAUTHORIZED && a.status != StatusCode::FORBIDDEN,
                    "{role} may {method} {path}, got {} {}",
                    a.status,
                    a.body
                );
            } else {
                assert_eq!(
                    (a.status, a.body["error"]["code"].as_str()),
                    (StatusCode::FORBIDDEN, Some("forbidden")),
                    "{role} may not {method} {path}: {}",
                    a.body
                );
            }
            checked += 1;
        }
        // The bootstrap token is an administrator's.
        let a = app
            .call(&method, &uri, Some(&bearer(BOOTSTRAP)), body_for(&method))
            .await;
        assert!(
            a.status != StatusCode::UNAUTHORIZED && a.status != StatusCode::FORBIDDEN,
            "bootstrap admin on {method} {path}: {} {}",
            a.status,
            a.body
        );
    }
    assert!(checked > 300, "the matrix ran ({checked} requests)");
}

#[tokio::test]
async fn health_and_metrics_stay_open() {
    let app = Secured::new();
    let a = app.call("GET", "/health", None, None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
}

#[tokio::test]
async fn log_in_with_a_password_then_use_the_token() {
    let app = Secured::new();
    app.accounts
        .add_user(
            "ann",
            Role::User,
            vec!["sales".into()],
            Some("correct horse".into()),
        )
        .await
        .unwrap();
    let a = app
        .call(
            "POST",
            "/api/v1/auth/token",
            None,
            Some(json!({"username": "ann", "password": "correct horse"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let token = a.body["token"].as_str().unwrap().to_string();
    assert!(a.body["expiresAt"].is_string(), "{}", a.body);
    let me = app
        .call("GET", "/api/v1/auth/me", Some(&bearer(&token)), None)
        .await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["name"], "ann");
    assert_eq!(me.body["role"], "user");
    assert_eq!(me.body["groups"], json!(["sales"]));
    assert_eq!(me.body["tokenId"], a.body["id"]);

    // A wrong password and an unknown user look the same.
    for (user, pw) in [("ann", "wrong horse"), ("nobody", "correct horse")] {
        let a = app
            .call(
                "POST",
                "/api/v1/auth/token",
                None,
                Some(json!({"username": user, "password": pw})),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
        assert_eq!(a.body["error"]["message"], "wrong user name or password");
    }
}

#[tokio::test]
async fn failed_log_ins_are_limited_per_user() {
    let app = Secured::new();
    app.accounts
        .add_user(
            "limited",
            Role::Viewer,
            vec![],
            Some("the right one".into()),
        )
        .await
        .unwrap();
    let try_login = |pw: &'static str| {
        app.call(
            "POST",
            "/api/v1/auth/token",
            None,
            Some(json!({"username": "limited", "password": pw})),
        )
    };
    for _ in 0..5 {
        assert_eq!(
            try_login("wrong guess").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    // Over the limit: refused even with the right password, with a time to wait.
    let a = try_login("the right one").await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "too_many_requests");
    let wait: u64 = a.retry_after.unwrap().parse().unwrap();
    assert!((1..=300).contains(&wait), "Retry-After {wait}");
}

#[tokio::test]
async fn disabling_and_revoking_take_effect_at_once() {
    let owned = Secured::new();
    let app = &owned;
    let token = app.token_for("dora", Role::Operator).await;
    let me = |t: String| async move {
        app.call("GET", "/api/v1/auth/me", Some(&bearer(&t)), None)
            .await
    };
    assert_eq!(me(token.clone()).await.status, StatusCode::OK);

    let admin = bearer(BOOTSTRAP);
    let a = app
        .call(
            "PATCH",
            "/api/v1/users/dora",
            Some(&admin),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["disabled"], true);
    let refused = me(token.clone()).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.challenge.unwrap().contains("invalid_token"));

    let a = app
        .call(
            "PATCH",
            "/api/v1/users/dora",
            Some(&admin),
            Some(json!({"disabled": false})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(me(token.clone()).await.status, StatusCode::OK);

    // Revoke through the API, by the id the token listing shows.
    let list = app
        .call("GET", "/api/v1/users/dora/tokens", Some(&admin), None)
        .await;
    let id = list.body[0]["id"].as_str().unwrap().to_string();
    assert!(token.contains(&id), "the listed id is the token's");
    let a = app
        .call(
            "DELETE",
            &format!("/api/v1/tokens/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body["revokedAt"].is_string());
    assert_eq!(me(token).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn users_are_administered_through_the_api() {
    let app = Secured::new();
    let admin = bearer(BOOTSTRAP);
    let a = app
        .call(
            "POST",
            "/api/v1/users",
            Some(&admin),
            Some(json!({"id": "eve", "role": "viewer", "groups": ["b", "a", "a"]})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["groups"], json!(["a", "b"]));
    assert_eq!(a.body["hasPassword"], false);
    assert!(
        a.body.get("passwordHash").is_none(),
        "never the hash: {}",
        a.body
    );
    let again = app
        .call(
            "POST",
            "/api/v1/users",
            Some(&admin),
            Some(json!({"id": "eve", "role": "viewer"})),
        )
        .await;
    assert_eq!(
        (again.status, again.body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("already_exists"))
    );
    let bad = app
        .call(
            "POST",
            "/api/v1/users",
            Some(&admin),
            Some(json!({"id": "a b", "role": "viewer"})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    let bad_role = app
        .call(
            "POST",
            "/api/v1/users",
            Some(&admin),
            Some(json!({"id": "zed", "role": "root"})),
        )
        .await;
    assert_eq!(
        bad_role.status,
        StatusCode::BAD_REQUEST,
        "{}",
        bad_role.body
    );

    let issued = app
        .call(
            "POST",
            "/api/v1/users/eve/tokens",
            Some(&admin),
            Some(json!({"ttlSeconds": 3600, "label": "ci"})),
        )
        .await;
    assert_eq!(issued.status, StatusCode::CREATED, "{}", issued.body);
    let token = issued.body["token"].as_str().unwrap().to_string();
    let me = app
        .call("GET", "/api/v1/auth/me", Some(&bearer(&token)), None)
        .await;
    assert_eq!(me.body["role"], "viewer");
    // A viewer reads but does not write.
    let deploy = app
        .call(
            "POST",
            "/api/v1/process-definitions",
            Some(&bearer(&token)),
            Some(json!({})),
        )
        .await;
    assert_eq!(deploy.status, StatusCode::FORBIDDEN);

    let gone = app
        .call("DELETE", "/api/v1/users/eve", Some(&admin), None)
        .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    let me = app
        .call("GET", "/api/v1/auth/me", Some(&bearer(&token)), None)
        .await;
    assert_eq!(
        me.status,
        StatusCode::UNAUTHORIZED,
        "a removed user's tokens are gone too"
    );
    let users = app.call("GET", "/api/v1/users", Some(&admin), None).await;
    assert_eq!(users.body, json!([]), "the only user is gone");
}

#[tokio::test]
async fn history_names_who_did_what() {
    let app = Secured::new();
    let xml = crate::support::USER_TASK_XML;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/process-definitions")
        .header(header::AUTHORIZATION, bearer(BOOTSTRAP))
        .header(header::CONTENT_TYPE, "application/xml")
        .body(Body::from(xml))
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let ann = app.token_for("ann", Role::User).await;
    let started = app
        .call(
            "POST",
            "/api/v1/process-definitions/key/approval/start",
            Some(&bearer(&ann)),
            Some(json!({})),
        )
        .await;
    assert!(started.status.is_success(), "{}", started.body);
    let id = started.body["id"].as_str().unwrap();
    let cancelled = app
        .call(
            "DELETE",
            &format!("/api/v1/process-instances/{id}"),
            Some(&bearer(BOOTSTRAP)),
            None,
        )
        .await;
    assert!(cancelled.status.is_success(), "{}", cancelled.body);
    let history = app
        .call(
            "GET",
            &format!("/api/v1/process-instances/{id}/history"),
            Some(&bearer(&ann)),
            None,
        )
        .await;
    let events = history.body["items"].as_array().unwrap();
    let by = |event: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["event"] == event)
            .map(|e| &e["detail"]["by"])
            .collect()
    };
    assert_eq!(by("instanceStarted"), vec![&json!("ann")], "{events:?}");
    assert_eq!(
        by("instanceCancelled"),
        vec![&json!("bootstrap-admin")],
        "{events:?}"
    );
}

#[tokio::test]
async fn a_user_sees_and_works_only_on_their_tasks() {
    let owned = Secured::new();
    let app = &owned;
    let admin = bearer(BOOTSTRAP);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/process-definitions")
        .header(header::AUTHORIZATION, &admin)
        .header(header::CONTENT_TYPE, "application/xml")
        .body(Body::from(crate::support::USER_TASK_XML))
        .unwrap();
    assert!(
        app.router
            .clone()
            .oneshot(req)
            .await
            .unwrap()
            .status()
            .is_success()
    );
    // The model's task names candidate group `managers`.
    app.accounts
        .add_user("mia", Role::User, vec!["managers".into()], None)
        .await
        .unwrap();
    let mia = bearer(
        &app.accounts
            .issue_token("mia", Duration::from_secs(3600), None)
            .await
            .unwrap()
            .text,
    );
    let outsider = bearer(&app.token_for("otto", Role::User).await);
    let start = |who: String| async move {
        app.call(
            "POST",
            "/api/v1/process-definitions/key/approval/start",
            Some(&who),
            Some(json!({})),
        )
        .await
    };
    assert!(start(mia.clone()).await.status.is_success());
    assert!(start(outsider.clone()).await.status.is_success());

    let listed = |who: String| async move {
        app.call("GET", "/api/v1/tasks", Some(&who), None)
            .await
            .body["items"]
            .clone()
    };
    let all = listed(admin.clone()).await;
    assert_eq!(
        all.as_array().unwrap().len(),
        2,
        "the admin sees both tasks"
    );
    assert_eq!(
        listed(mia.clone()).await.as_array().unwrap().len(),
        2,
        "mia is a manager"
    );
    assert_eq!(listed(outsider.clone()).await, json!([]), "otto sees none");
    let (first, second) = (
        all[0]["id"].as_str().unwrap().to_string(),
        all[1]["id"].as_str().unwrap().to_string(),
    );
    let a = app
        .call(
            "GET",
            &format!("/api/v1/tasks/{first}"),
            Some(&outsider),
            None,
        )
        .await;
    assert_eq!(
        a.status,
        StatusCode::NOT_FOUND,
        "a task otto may not see does not exist for him"
    );

    // Claiming is done as the caller; only operators name someone else.
    let claim = |who: String, task: String, user: &'static str| async move {
        app.call(
            "POST",
            &format!("/api/v1/tasks/{task}/claim"),
            Some(&who),
            Some(json!({"userId": user})),
        )
        .await
    };
    assert_eq!(
        claim(mia.clone(), first.clone(), "otto").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        claim(outsider.clone(), first.clone(), "otto").await.status,
        StatusCode::NOT_FOUND
    );
    let a = claim(mia.clone(), first.clone(), "mia").await;
    assert_eq!(
        (a.status, a.body["assignee"].as_str()),
        (StatusCode::OK, Some("mia"))
    );
    let a = claim(admin.clone(), second.clone(), "someone").await;
    assert_eq!(
        (a.status, a.body["assignee"].as_str()),
        (StatusCode::OK, Some("someone"))
    );

    // Completing a task held by someone else is refused to a user.
    let complete = |who: String, task: String| async move {
        app.call(
            "POST",
            &format!("/api/v1/tasks/{task}/complete"),
            Some(&who),
            Some(json!({})),
        )
        .await
    };
    assert_eq!(
        complete(mia.clone(), second.clone()).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        complete(mia.clone(), first.clone()).await.status,
        StatusCode::OK
    );
}
