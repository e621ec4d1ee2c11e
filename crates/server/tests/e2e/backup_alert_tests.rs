//! Alerts of `serve`'s backups (issue 14): a target that refuses writes is posted to the
//! webhook as JSON, retried with backoff when the receiver fails, and raised once while
//! the condition lasts (shipping retries it every interval).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::e2e::server::ServerProcess;

/// A local HTTP receiver: answers 500 to the first request, 200 to the others, and
/// keeps every body.
fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    let got = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let n = {
                let mut b = got.lock().unwrap();
                b.push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                b.len()
            };
            let status = if n == 1 {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, bodies)
}

#[test]
fn a_target_that_refuses_writes_raises_one_alert_delivered_despite_a_failing_receiver() {
    let (url, bodies) = receiver();
    // Nothing listens here: every upload fails.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("configs")).unwrap();
    std::fs::write(
        dir.path().join("configs/config.yaml"),
        format!(
            "backup:\n  continuous: {{interval: 500ms}}\n  schedules: {{full: null, incremental: null}}\n  \
             alerts: {{webhook: {{url: \"{url}\", retries: 3, backoff_ms: 100}}}}\n  targets:\n    \
             - {{type: s3, endpoint: \"http://127.0.0.1:{dead}\", bucket: gone, path_style: true, \
             access_key_id: test, secret_access_key: test}}\n"
        ),
    )
    .unwrap();
    let server = ServerProcess::start(dir.path(), None, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while bodies.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "no alert delivered");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Several more failing rounds: still the one alert (its first attempt and the retry).
    std::thread::sleep(Duration::from_secs(3));
    drop(server);
    let bodies = bodies.lock().unwrap();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert_eq!(bodies[0], bodies[1], "the retry posts the same alert");
    assert_eq!(bodies[0]["kind"], "target_failed");
    assert_eq!(bodies[0]["target"], "s3://gone");
    assert!(
        bodies[0]["message"].as_str().unwrap().contains("s3://gone"),
        "{:?}",
        bodies[0]
    );
}
