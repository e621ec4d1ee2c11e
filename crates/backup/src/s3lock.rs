//! S3 Object Lock retention, which `object_store` does not speak: `PutObjectRetention` and
//! `GetObjectRetention` as SigV4-signed requests (sha2 + hmac, no AWS SDK).
//!
//! Setting retention after the upload (rather than with headers on the upload) works on
//! every S3 implementation, multipart uploads included. In a bucket with Object Lock
//! (hence versioning), a locked version cannot be deleted or overwritten by anyone,
//! the engine's own credentials included, until its retention ends (compliance mode) or
//! without the bypass permission (governance mode).

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::error::{BackupError, Result};
use crate::targets::{LockMode, hex};

type HmacSha256 = Hmac<Sha256>;

/// Where and as whom the retention requests go.
#[derive(Clone)]
pub struct S3Access {
    /// `http(s)://host[:port]` without a trailing slash.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Access")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

/// The retention an object is under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    pub mode: LockMode,
    pub until: DateTime<Utc>,
}

fn mode_str(m: LockMode) -> &'static str {
    match m {
        LockMode::Compliance => "COMPLIANCE",
        LockMode::Governance => "GOVERNANCE",
    }
}

/// RFC 3986 encoding of a key's path segments (S3's canonical URI).
fn encode_path(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[allow(clippy::expect_used, reason = "HMAC takes keys of every length")]
fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC key");
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

impl S3Access {
    fn host_and_path(&self, key: &str) -> Result<(String, String, String)> {
        let (scheme, host) = self.endpoint.split_once("://").ok_or_else(|| {
            BackupError::BadInput(format!("S3 endpoint `{}` has no scheme", self.endpoint))
        })?;
        let host = host.trim_end_matches('/');
        Ok(if self.path_style {
            (
                scheme.to_string(),
                host.to_string(),
                format!("/{}/{}", self.bucket, encode_path(key)),
            )
        } else {
            (
                scheme.to_string(),
                format!("{}.{host}", self.bucket),
                format!("/{}", encode_path(key)),
            )
        })
    }

    /// A signed request to `key` (`key?retention` with `retention`): status, response
    /// headers, body.
    async fn request(
        &self,
        method: reqwest::Method,
        key: &str,
        retention: bool,
        body: Vec<u8>,
        now: DateTime<Utc>,
    ) -> Result<(u16, reqwest::header::HeaderMap, String)> {
        let (scheme, host, path) = self.host_and_path(key)?;
        let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
        let date = now.format("%Y%m%d").to_string();
        let payload = hex(&Sha256::digest(&body));
        let md5 = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .encode(<md5::Md5 as md5::Digest>::digest(&body))
        };
        let mut headers = vec![
            ("content-md5".to_string(), md5),
            ("host".to_string(), host.clone()),
            ("x-amz-content-sha256".to_string(), payload.clone()),
            ("x-amz-date".to_string(), amz_date.clone()),
        ];
        if let Some(t) = &self.session_token {
            headers.push(("x-amz-security-token".to_string(), t.clone()));
        }
        let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        let signed = signed.join(";");
        let canonical = format!(
            "{}\n{path}\n{}\n{canonical_headers}\n{signed}\n{payload}",
            method.as_str(),
            if retention { "retention=" } else { "" }
        );
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let k = hmac(format!("AWS4{}", self.secret_access_key).as_bytes(), &date);
        let k = hmac(&k, &self.region);
        let k = hmac(&k, "s3");
        let k = hmac(&k, "aws4_request");
        let signature = hex(&hmac(&k, &to_sign));
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
            self.access_key_id
        );
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| BackupError::Remote(format!("S3 client: {e}")))?;
        let mut req = client
            .request(
                method,
                format!(
                    "{scheme}://{host}{path}{}",
                    if retention { "?retention" } else { "" }
                ),
            )
            .header("authorization", auth)
            .header("content-type", "application/xml");
        for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| BackupError::Remote(format!("s3://{}/{key}: {e}", self.bucket)))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        Ok((status, headers, text))
    }

    /// Puts `key` under retention until `until`.
    pub async fn put_retention(&self, key: &str, retention: &Retention) -> Result<()> {
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode>\
             <RetainUntilDate>{}</RetainUntilDate></Retention>",
            mode_str(retention.mode),
            retention.until.format("%Y-%m-%dT%H:%M:%S%.3fZ")
        );
        let (status, _, text) = self
            .request(
                reqwest::Method::PUT,
                key,
                true,
                body.into_bytes(),
                Utc::now(),
            )
            .await?;
        if !(200..300).contains(&status) {
            return Err(BackupError::Remote(format!(
                "s3://{}/{key}: setting Object Lock retention failed ({status}): {}",
                self.bucket,
                text.chars().take(300).collect::<String>()
            )));
        }
        Ok(())
    }

    /// The retention `key` is under, if any (from `HeadObject`, which every S3 answers
    /// with the object's lock mode and retain-until date).
    pub async fn retention(&self, key: &str) -> Result<Option<Retention>> {
        let (status, headers, _) = self
            .request(reqwest::Method::HEAD, key, false, Vec::new(), Utc::now())
            .await?;
        if status == 404 {
            return Ok(None);
        }
        if !(200..300).contains(&status) {
            return Err(BackupError::Remote(format!(
                "s3://{}/{key}: reading Object Lock retention failed ({status})",
                self.bucket
            )));
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let mode = match header("x-amz-object-lock-mode") {
            Some("COMPLIANCE") => LockMode::Compliance,
            Some("GOVERNANCE") => LockMode::Governance,
            _ => return Ok(None),
        };
        let until = header("x-amz-object-lock-retain-until-date")
            .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
            .map(|d| d.with_timezone(&Utc));
        Ok(until.map(|until| Retention { mode, until }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signing-key derivation example of AWS's SigV4 documentation ("Deriving the
    /// signing key": 20120215, us-east-1, iam).
    #[test]
    fn the_signing_key_chain_matches_the_aws_example() {
        let k = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215");
        let k = hmac(&k, "us-east-1");
        let k = hmac(&k, "iam");
        let k = hmac(&k, "aws4_request");
        assert_eq!(
            hex(&k),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    #[test]
    fn keys_are_encoded_as_s3_canonical_uris() {
        assert_eq!(encode_path("prod/a b+c.tar"), "prod/a%20b%2Bc.tar");
    }
}
