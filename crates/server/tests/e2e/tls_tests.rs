//! HTTPS on the listener (`--tls-cert`/`--tls-key`): a client that trusts the CA gets
//! the API over TLS, including the routes that read the peer address; plain HTTP and a
//! client trusting another CA get nothing; a key that does not fit the certificate
//! stops `serve` with the reason.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use steadyflow_store_pg::testing::test_certificates;

use super::server::{ADMIN_TOKEN, free_port};

fn serve(dir: &Path, port: u16, cert: &str, key: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_steadyflow"));
    cmd.arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir)
        .current_dir(dir)
        .env("STEADYFLOW_LOG", "warn")
        .env("STEADYFLOW_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("STEADYFLOW_TLS_CERT", dir.join(cert))
        .env("STEADYFLOW_TLS_KEY", dir.join(key));
    cmd
}

fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// One HTTP/1.1 request over TLS; the status and the body, or the I/O or TLS error.
fn https(
    port: u16,
    config: &Arc<rustls::ClientConfig>,
    request: &str,
) -> std::io::Result<(u16, String)> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    tls.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

fn get(path: &str, token: Option<&str>) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_api_is_served_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    test_certificates(d);
    let port = free_port();
    let _server = Killed(
        serve(d, port, "server.pem", "server.key")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let trusted = client_config(&d.join("ca.pem"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match https(port, &trusted, &get("/health", None)) {
            Ok((200, body)) => {
                assert!(body.contains("\"status\""), "{body}");
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "no healthy answer over TLS: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = https(port, &trusted, &get("/api/v1/auth/me", Some(ADMIN_TOKEN))).unwrap();
    assert_eq!(status, 200, "{body}");
    // Log-in reads the peer's address (attempts are limited per address): it works
    // behind TLS too, answering 401 for a wrong password rather than failing.
    let login = r#"{"username":"nobody","password":"not the password"}"#;
    let post = format!(
        "POST /api/v1/auth/token HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{login}",
        login.len()
    );
    let (status, body) = https(port, &trusted, &post).unwrap();
    assert_eq!(status, 401, "{body}");

    // A client that trusts another CA refuses the server.
    let other = client_config(&d.join("other-ca.pem"));
    let err = https(port, &other, &get("/health", None)).expect_err("untrusted server");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // Plain HTTP gets no HTTP answer.
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(get("/health", None).as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).starts_with("HTTP/"),
        "plain HTTP must not be answered"
    );
}

#[test]
fn a_key_that_does_not_fit_stops_serve_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    test_certificates(d);
    let out = serve(d, free_port(), "server.pem", "ca.key")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not fit"), "{err}");
}
