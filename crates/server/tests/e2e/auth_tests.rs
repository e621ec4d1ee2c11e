//! Users and tokens against the real binary: the `steadyflow user` commands, log-in
//! over HTTP, and a change on one node taking effect at once on another node sharing
//! the PostgreSQL database.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

use crate::e2e::server::{ServerProcess, bare_agent};

/// Runs `steadyflow user ARGS` on the database, feeding `stdin`.
fn user_cmd(dir: &Path, database_url: Option<&str>, args: &[&str], stdin: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_steadyflow"));
    cmd.arg("user")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .current_dir(dir)
        .env("STEADYFLOW_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(url) = database_url {
        cmd.arg("--database-url").arg(url);
    }
    let mut child = cmd.spawn().expect("run steadyflow user");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "steadyflow user failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `(status, body)` of a request with `token` (or none).
fn call(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let agent = bare_agent();
    let url = format!("{base}{path}");
    let auth = token.map(|t| format!("Bearer {t}"));
    let resp = match (method, body) {
        ("GET", _) => {
            let mut r = agent.get(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        ("POST", Some(b)) => {
            let mut r = agent.post(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send_json(b)
        }
        ("DELETE", _) => {
            let mut r = agent.delete(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        other => panic!("unsupported {other:?}"),
    };
    let mut resp = resp.unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[test]
fn users_and_tokens_from_the_command_line_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(user_cmd(
        d,
        None,
        &[
            "add",
            "ann",
            "--role",
            "operator",
            "--group",
            "ops",
            "--password-stdin",
        ],
        "a long password\n",
    ));
    let refused = user_cmd(d, None, &["add", "ann", "--role", "viewer"], "");
    assert!(!refused.status.success(), "a second ann is refused");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("exists already"));
    let token = ok(user_cmd(
        d,
        None,
        &["token", "ann", "--ttl", "1h", "--name", "ci"],
        "",
    ))
    .trim()
    .to_string();
    assert!(token.starts_with("sf_"), "{token}");
    let listing = ok(user_cmd(d, None, &["list"], ""));
    assert!(
        listing.contains("ann") && listing.contains("operator") && listing.contains("ops"),
        "{listing}"
    );
    let tokens = ok(user_cmd(d, None, &["list", "--tokens", "ann"], ""));
    assert!(
        tokens.contains("valid") && tokens.contains("ci"),
        "{tokens}"
    );

    let mut server = ServerProcess::start(d, None, &[]);
    let base = server.base.clone();
    let (status, me) = call(&base, "GET", "/api/v1/auth/me", Some(&token), None);
    assert_eq!(
        (status, me["name"].as_str(), me["role"].as_str()),
        (200, Some("ann"), Some("operator"))
    );
    let (status, _) = call(&base, "GET", "/api/v1/auth/me", None, None);
    assert_eq!(status, 401);
    let (status, login) = call(
        &base,
        "POST",
        "/api/v1/auth/token",
        None,
        Some(json!({"username": "ann", "password": "a long password"})),
    );
    assert_eq!(status, 200, "{login}");
    // The server holds the SQLite database: the command says so instead of writing.
    let busy = user_cmd(d, None, &["add", "bob", "--role", "viewer"], "");
    assert!(!busy.status.success());
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("stop the server"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    server.kill();

    ok(user_cmd(d, None, &["disable", "ann"], ""));
    let server = ServerProcess::start(d, None, &[]);
    let (status, _) = call(&server.base, "GET", "/api/v1/auth/me", Some(&token), None);
    assert_eq!(status, 401, "a disabled user's token is refused");
    drop(server);

    ok(user_cmd(d, None, &["enable", "ann"], ""));
    let id = &token[3..19];
    ok(user_cmd(d, None, &["revoke", id], ""));
    let server = ServerProcess::start(d, None, &[]);
    let (status, body) = call(&server.base, "GET", "/api/v1/auth/me", Some(&token), None);
    assert_eq!(status, 401, "a revoked token is refused: {body}");
    let fresh = login_token(&server.base, "ann", "a long password");
    let (status, _) = call(&server.base, "GET", "/api/v1/auth/me", Some(&fresh), None);
    assert_eq!(status, 200, "the enabled user logs in again");
}

fn login_token(base: &str, user: &str, password: &str) -> String {
    let (status, body) = call(
        base,
        "POST",
        "/api/v1/auth/token",
        None,
        Some(json!({"username": user, "password": password})),
    );
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_string()
}

/// Two nodes on one PostgreSQL database: a user added by the command line while both
/// run is known to both; a token revoked through one node is refused by that node at
/// once and by the other as soon as the revocation's notification arrives (bounded
/// here at 2 s; the delay is printed).
#[test]
fn a_revocation_on_one_node_reaches_the_other() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Some(db) = rt.block_on(steadyflow_store_pg::testing::fresh_database()) else {
        return;
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = ServerProcess::start(dir_a.path(), Some(db.url()), &[]);
    let b = ServerProcess::start(dir_b.path(), Some(db.url()), &[]);
    ok(user_cmd(
        dir_a.path(),
        Some(db.url()),
        &["add", "wendy", "--role", "user", "--password-stdin"],
        "wendy's password\n",
    ));
    let token = login_token(&a.base, "wendy", "wendy's password");
    for node in [&a, &b] {
        let (status, me) = call(&node.base, "GET", "/api/v1/auth/me", Some(&token), None);
        assert_eq!((status, me["role"].as_str()), (200, Some("user")));
    }
    // A `user` may not deploy (403 on both nodes).
    let (status, _) = call(
        &b.base,
        "POST",
        "/api/v1/process-definitions",
        Some(&token),
        Some(json!({})),
    );
    assert_eq!(status, 403);

    let id = &token[3..19];
    let (status, body) = a.call("DELETE", &format!("/api/v1/tokens/{id}"), None);
    assert_eq!(
        status, 200,
        "revoked through node A with the admin token: {body}"
    );
    // Node B served the token from memory; it drops it when PostgreSQL delivers the
    // revocation's NOTIFY to B's listener: within milliseconds.
    let revoked = std::time::Instant::now();
    let mut accepted_after = 0;
    loop {
        let (status, _) = call(&b.base, "GET", "/api/v1/auth/me", Some(&token), None);
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        accepted_after += 1;
        assert!(
            revoked.elapsed() < std::time::Duration::from_secs(2),
            "node B still accepts the revoked token after {:?} ({accepted_after} requests)",
            revoked.elapsed()
        );
    }
    eprintln!(
        "revocation reached node B after {:?} ({accepted_after} request(s) accepted in between)",
        revoked.elapsed()
    );
    // And through node A itself, at once (its own write moved its epoch).
    let (status, _) = call(&a.base, "GET", "/api/v1/auth/me", Some(&token), None);
    assert_eq!(status, 401, "node A refuses the token it revoked");

    drop((a, b));
    rt.block_on(db.cleanup());
}
