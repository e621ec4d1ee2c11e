//! A moto S3 server of the test's own (`moto_server` from PyPI's `moto[server]`, which
//! `.ci/run` installs), on a free port, stopped when dropped. Moto does not check
//! signatures (some requests only need an `Authorization` header to be there), so the
//! tests reach behind the engine's back with plain HTTP, as anyone holding the bucket's
//! credentials could: create buckets, read, damage and delete objects.

use super::server::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::e2e::server::bare_agent;

/// What moto needs to take a request as signed by some access key.
pub const AUTH: &str = "AWS4-HMAC-SHA256 Credential=test/20261203/us-east-1/s3/aws4_request, \
SignedHeaders=host, Signature=0";

pub struct Moto {
    child: Child,
    pub port: u16,
}

/// Whether `moto_server` can be run here.
pub fn available() -> bool {
    Command::new("moto_server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Moto {
    /// Starts one, or `None` (with the services notice) when moto is not installed.
    pub fn start() -> Option<Moto> {
        if !available() {
            crate::e2e::services::missing("moto_server (pip install 'moto[server]')");
            return None;
        }
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if bare_agent()
                .get(&format!("{}/", moto.endpoint()))
                .call()
                .is_ok_and(|r| r.status().is_success())
            {
                return Some(moto);
            }
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates `bucket`, with Object Lock enabled when asked (versioning comes with it).
    pub fn create_bucket(&self, bucket: &str, object_lock: bool) {
        let mut req = bare_agent()
            .put(&format!("{}/{bucket}", self.endpoint()))
            .header("authorization", AUTH);
        if object_lock {
            req = req.header("x-amz-bucket-object-lock-enabled", "true");
        }
        let r = req.send_empty().unwrap();
        assert!(r.status().is_success(), "create bucket: {}", r.status());
    }

    /// The object's bytes, or `None` when it is not there.
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let mut r = bare_agent()
            .get(&format!("{}/{bucket}/{key}", self.endpoint()))
            .header("authorization", AUTH)
            .call()
            .unwrap();
        r.status()
            .is_success()
            .then(|| r.body_mut().read_to_vec().unwrap())
    }

    /// Writes an object as anyone holding the bucket's credentials could.
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) -> u16 {
        bare_agent()
            .put(&format!("{}/{bucket}/{key}", self.endpoint()))
            .header("authorization", AUTH)
            .header("content-type", "application/octet-stream")
            .send(bytes)
            .unwrap()
            .status()
            .as_u16()
    }

    pub fn delete(&self, bucket: &str, key: &str) -> u16 {
        bare_agent()
            .delete(&format!("{}/{bucket}/{key}", self.endpoint()))
            .header("authorization", AUTH)
            .call()
            .unwrap()
            .status()
            .as_u16()
    }

    /// The keys in the bucket (first page, enough for a test).
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let mut r = bare_agent()
            .get(&format!("{}/{bucket}?list-type=2", self.endpoint()))
            .header("authorization", AUTH)
            .call()
            .unwrap();
        let body = r.body_mut().read_to_string().unwrap();
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
