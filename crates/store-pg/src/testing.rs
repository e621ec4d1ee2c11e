//! Throwaway PostgreSQL databases for tests, in this crate and in others.
//!
//! ```no_run
//! # async fn t() {
//! let Some(db) = steadyflow_store_pg::testing::fresh_database().await else { return };
//! let store = steadyflow_store_pg::PgStore::connect(db.url()).await.unwrap();
//! // ... test ...
//! drop(store);
//! db.cleanup().await; // or just let `db` drop
//! # }
//! ```
//!
//! The server comes from `STEADYFLOW_TEST_PG_URL` (default [`DEFAULT_URL`]). When it
//! cannot be reached, tests are skipped with a notice on stderr, unless
//! `STEADYFLOW_REQUIRE_SERVICES=1`, which turns that into a panic (CI).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a failed set-up is a failed test"
)]

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

pub const URL_ENV: &str = "STEADYFLOW_TEST_PG_URL";
pub const REQUIRE_ENV: &str = "STEADYFLOW_REQUIRE_SERVICES";
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Every test database's name starts with this, followed by a UUIDv7 (which carries
/// its creation time, so leftovers of killed test runs can be recognised and swept).
pub const PREFIX: &str = "sf_test_";
/// Leftover test databases older than this are dropped by the next test run.
const STALE_AFTER: Duration = Duration::from_secs(2 * 3600);

/// A database that exists until this guard is dropped or [`cleanup`](Self::cleanup)ed.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    admin_url: String,
    url: String,
    dropped: bool,
}

impl TestDatabase {
    /// Connection string of the new database.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database now (terminating its connections). Preferred over the drop
    /// guard inside async tests: no extra thread and runtime.
    pub async fn cleanup(mut self) {
        drop_database(&self.admin_url, &self.name).await;
        self.dropped = true;
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        self.dropped = true;
        // Drop may run inside a runtime (where blocking on another runtime panics) or
        // during a panic: use a private runtime on a private thread, and never panic.
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        let worker =
            std::thread::spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(drop_database(&admin, &name)),
                    Err(e) => {
                        eprintln!("WARNING: cannot drop test database {name}: no runtime: {e}")
                    }
                }
            });
        let _ = worker.join();
    }
}

/// Creates a uniquely named, empty database; `None` (with a notice) when PostgreSQL is
/// not reachable and services are not required.
pub async fn fresh_database() -> Option<TestDatabase> {
    let admin_url = std::env::var(URL_ENV).unwrap_or_else(|_| DEFAULT_URL.to_string());
    let client = match admin_connect(&admin_url).await {
        Ok(c) => c,
        Err(e) => {
            let shown = redact(&admin_url);
            if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
                panic!("{REQUIRE_ENV}=1 but PostgreSQL is not reachable at {shown}: {e}");
            }
            // Straight to the stderr handle: libtest captures `eprintln!` of passing
            // tests, and a skip must be visible.
            let _ = writeln!(
                std::io::stderr(),
                "NOTICE: PostgreSQL not reachable at {shown} ({e}); skipping PostgreSQL tests"
            );
            return None;
        }
    };
    sweep_stale(&client).await;
    let name = format!("{PREFIX}{}", uuid::Uuid::now_v7().simple());
    if let Err(e) = client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
    {
        panic!(
            "cannot create test database {name} at {}: {}",
            redact(&admin_url),
            describe(&e)
        );
    }
    let url = with_dbname(&admin_url, &name);
    Some(TestDatabase {
        name,
        admin_url,
        url,
        dropped: false,
    })
}

async fn admin_connect(url: &str) -> Result<Client, String> {
    let mut config: tokio_postgres::Config =
        url.parse().map_err(|e| format!("invalid URL: {e}"))?;
    config.connect_timeout(Duration::from_secs(5));
    let (client, connection) = config.connect(NoTls).await.map_err(|e| describe(&e))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn drop_database(admin_url: &str, name: &str) {
    let result = match admin_connect(admin_url).await {
        Ok(client) => client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .map_err(|e| describe(&e)),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        let _ = writeln!(
            std::io::stderr(),
            "WARNING: could not drop test database {name}: {e}"
        );
    }
}

/// Once per process: drops test databases left behind by killed runs.
async fn sweep_stale(client: &Client) {
    static SWEPT: AtomicBool = AtomicBool::new(false);
    if SWEPT.swap(true, Ordering::SeqCst) {
        return;
    }
    let Ok(rows) = client
        .query(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
            &[&PREFIX],
        )
        .await
    else {
        return;
    };
    let now = std::time::SystemTime::now();
    for row in rows {
        let name: String = row.get(0);
        let created = uuid::Uuid::parse_str(&name[PREFIX.len()..])
            .ok()
            .and_then(|u| u.get_timestamp())
            .map(|t| {
                let (secs, nanos) = t.to_unix();
                std::time::UNIX_EPOCH + Duration::new(secs, nanos)
            });
        let stale =
            created.is_some_and(|c| now.duration_since(c).is_ok_and(|age| age > STALE_AFTER));
        if stale && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => match std::error::Error::source(e) {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    }
}

/// The same server with another database name, for URL and key/value strings.
pub fn with_dbname(url: &str, name: &str) -> String {
    for scheme in ["postgres://", "postgresql://"] {
        if let Some(rest) = url.strip_prefix(scheme) {
            let (main, query) = match rest.split_once('?') {
                Some((m, q)) => (m, Some(q)),
                None => (rest, None),
            };
            let authority = main.split_once('/').map_or(main, |(a, _)| a);
            let mut out = format!("{scheme}{authority}/{name}");
            if let Some(q) = query {
                out.push('?');
                out.push_str(q);
            }
            return out;
        }
    }
    format!("{url} dbname={name}")
}

/// Hides a password in a URL or key/value string, for messages.
fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            return format!("{scheme}://{}:***{}", &rest[..colon], &rest[at..]);
        }
        return url.to_string();
    }
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dbname_is_replaced() {
        assert_eq!(
            with_dbname("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_dbname("postgresql://u:p@h/db?sslmode=disable", "x"),
            "postgresql://u:p@h/x?sslmode=disable"
        );
        assert_eq!(with_dbname("postgres://h:5432", "x"), "postgres://h:5432/x");
        assert_eq!(with_dbname("host=h user=u", "x"), "host=h user=u dbname=x");
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("host=h password=secret"), "host=h password=***");
    }
}

/// A PostgreSQL server of a test's own (for faults and settings the shared server must
/// not get: TLS, restarts): `initdb` into a temporary directory, started on a free port
/// of 127.0.0.1 with `trust` authentication, stopped and deleted on drop. Run as the
/// `postgres` OS user when the test runs as root (PostgreSQL refuses root).
#[derive(Debug)]
pub struct OwnServer {
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
    port: u16,
    as_postgres: bool,
}

impl OwnServer {
    /// Starts one with `settings` (`name = value` lines for `postgresql.conf`) and
    /// `hba` (the whole `pg_hba.conf`); files the settings name can be put in
    /// [`OwnServer::dir`] by `prepare` before the server starts. `None` (with a notice)
    /// when no PostgreSQL server binaries are installed and services are not required.
    pub fn start(
        settings: &str,
        hba: &str,
        prepare: impl FnOnce(&std::path::Path),
    ) -> Option<OwnServer> {
        let Some(bin) = server_binaries() else {
            if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
                panic!("{REQUIRE_ENV}=1 but no PostgreSQL server binaries (initdb) are installed");
            }
            let _ = writeln!(
                std::io::stderr(),
                "NOTICE: no PostgreSQL server binaries (initdb); skipping own-server tests"
            );
            return None;
        };
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!("sf-own-pg-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        let port = free_port();
        let server = OwnServer {
            dir,
            bin,
            port,
            as_postgres,
        };
        server.chown();
        server.run(
            "initdb",
            &[
                "-D",
                &server.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nfsync = off\n{settings}\n",
            server.dir.display()
        );
        let data = std::path::Path::new(&server.data()).to_path_buf();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        f.write_all(conf.as_bytes()).expect("write postgresql.conf");
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        prepare(&server.dir);
        server.chown();
        let log = server.dir.join("server.log").display().to_string();
        server.run(
            "pg_ctl",
            &["-D", &server.data(), "-l", &log, "-w", "-t", "60", "start"],
        );
        Some(server)
    }

    /// The directory the server and `prepare`'s files live in.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres` with `query` appended.
    pub fn url(&self, query: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres{query}",
            self.port
        )
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn chown(&self) {
        if self.as_postgres {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&self.dir)
                .status()
                .expect("chown");
            assert!(status.success(), "chown of {} failed", self.dir.display());
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let exe = self.bin.join("pg_ctl");
        let data = self.data();
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let _ = if self.as_postgres {
            std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .output()
        } else {
            std::process::Command::new(&exe).args(args).output()
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb`.
fn server_binaries() -> Option<std::path::PathBuf> {
    let mut found: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (Debian package openssl) runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes into `dir`, with the `openssl` command: a CA (`ca.pem`, `ca.key`), a server
/// certificate it signed for the name `localhost` only (`server.pem`, `server.key`),
/// and an unrelated CA (`other-ca.pem`).
pub fn test_certificates(dir: &std::path::Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let (key, pem, subj) = (
            format!("{ca}.key"),
            format!("{ca}.pem"),
            format!("/CN={ca}"),
        );
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
        openssl(dir, &args);
    }
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &args);
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
}
