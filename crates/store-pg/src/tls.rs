//! TLS for connections to PostgreSQL, chosen by the connection string's `sslmode` as
//! libpq does, with rustls:
//!
//! | `sslmode`          | TLS          | server certificate checked against `sslrootcert` |
//! |--------------------|--------------|--------------------------------------------------|
//! | absent, `disable`  | no           | —                                                |
//! | `prefer`           | if offered   | no                                               |
//! | `require`          | yes          | chain only when `sslrootcert` is given            |
//! | `verify-ca`        | yes          | chain (`sslrootcert` required)                    |
//! | `verify-full`      | yes          | chain and host name (`sslrootcert` required)      |
//!
//! One difference from libpq: without `sslmode` the connection is plain (libpq would
//! try TLS first), so a URL that worked before TLS existed connects as before.
//! `tokio-postgres` knows only `disable|prefer|require` and no `sslrootcert`: both are
//! taken out of the string here before it parses the rest.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use steadyflow_store::{Result, StoreError};
use tokio_postgres::config::SslMode;

/// The TLS connector every connection of this crate uses (unused under `disable`).
pub(crate) type Tls = tokio_postgres_rustls::MakeRustlsConnect;

/// A parsed connection string with its TLS connector.
#[derive(Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    pub(crate) tls: Tls,
}

impl Deref for PgTarget {
    type Target = tokio_postgres::Config;
    fn deref(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

impl DerefMut for PgTarget {
    fn deref_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.config
    }
}

impl PgTarget {
    /// Parses a libpq-style URL (`postgres://…?sslmode=verify-full&sslrootcert=ca.pem`) or
    /// key/value string (`host=… sslmode=require`).
    pub fn parse(url: &str) -> Result<PgTarget> {
        let invalid = |e: String| {
            StoreError::Unavailable(format!("invalid PostgreSQL connection string: {e}"))
        };
        let mut rest = url.to_string();
        let mode = take_param(&mut rest, "sslmode");
        let root = take_param(&mut rest, "sslrootcert");
        let mut config: tokio_postgres::Config =
            rest.parse().map_err(|e| invalid(format!("{e}")))?;
        let roots = root.as_deref().map(load_roots).transpose()?;
        let (ssl, check) = match mode.as_deref() {
            None | Some("disable") => (SslMode::Disable, Check::Nothing),
            Some("prefer") => (SslMode::Prefer, Check::Nothing),
            Some("require") => (
                SslMode::Require,
                if roots.is_some() {
                    Check::Chain
                } else {
                    Check::Nothing
                },
            ),
            Some(m @ ("verify-ca" | "verify-full")) => {
                if roots.is_none() {
                    return Err(invalid(format!(
                        "sslmode={m} needs sslrootcert=FILE (the CA certificate(s), PEM)"
                    )));
                }
                let check = if m == "verify-ca" {
                    Check::Chain
                } else {
                    Check::Full
                };
                (SslMode::Require, check)
            }
            Some(other) => {
                return Err(invalid(format!(
                    "sslmode={other}: expected disable, prefer, require, verify-ca or verify-full"
                )));
            }
        };
        config.ssl_mode(ssl);
        let tls = connector(check, roots.unwrap_or_else(RootCertStore::empty))?;
        Ok(PgTarget { config, tls })
    }

    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// Opens one connection (not pooled).
    pub async fn connect(
        &self,
    ) -> std::result::Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<
                tokio_postgres::Socket,
                <Tls as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream,
            >,
        ),
        tokio_postgres::Error,
    > {
        self.config.connect(self.tls.clone()).await
    }
}

#[derive(Clone, Copy)]
enum Check {
    Nothing,
    Chain,
    Full,
}

/// Removes `key=value` from a URL query or a key/value string; answers the value.
fn take_param(s: &mut String, key: &str) -> Option<String> {
    let pat = format!("{key}=");
    let mut from = 0;
    let start = loop {
        let at = from + s[from..].find(&pat)?;
        let before = s[..at].chars().next_back();
        if matches!(before, None | Some('?' | '&' | ' ' | '\t')) {
            break at;
        }
        from = at + pat.len();
    };
    let value_start = start + pat.len();
    let value_end = s[value_start..]
        .find(['&', ' ', '\t'])
        .map_or(s.len(), |i| value_start + i);
    let value = s[value_start..value_end].to_string();
    // Take the separator with it: the one after, or else the one before.
    let (cut_from, cut_to) = if s[value_end..].starts_with('&') {
        (start, value_end + 1)
    } else if start > 0 && s[..start].ends_with('&') {
        (start - 1, value_end)
    } else {
        (start, value_end)
    };
    s.replace_range(cut_from..cut_to, "");
    if s.ends_with('?') {
        s.pop();
    }
    Some(value)
}

fn load_roots(path: &str) -> Result<RootCertStore> {
    let bad = |e: String| StoreError::Unavailable(format!("sslrootcert {path}: {e}"));
    let mut roots = RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    for cert in certs {
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    Ok(roots)
}

fn connector(check: Check, roots: RootCertStore) -> Result<Tls> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let err = |e: rustls::Error| StoreError::Unavailable(format!("TLS set-up: {e}"));
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(err)?;
    let config = match check {
        Check::Full => builder.with_root_certificates(roots).with_no_client_auth(),
        Check::Chain => {
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| StoreError::Unavailable(format!("TLS set-up: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                .with_no_client_auth()
        }
        Check::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not compared.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        // The chain is checked before the name: a name error means the chain held.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a root: encrypted, the server not authenticated (as
/// libpq). The handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_tls_params_out_of_urls_and_key_values() {
        let mut s = "postgres://u@h:5/db?sslmode=verify-full&sslrootcert=/x/ca.pem".to_string();
        assert_eq!(
            take_param(&mut s, "sslmode").as_deref(),
            Some("verify-full")
        );
        assert_eq!(
            take_param(&mut s, "sslrootcert").as_deref(),
            Some("/x/ca.pem")
        );
        assert_eq!(s, "postgres://u@h:5/db");

        let mut s =
            "postgres://h/db?application_name=a&sslmode=require&connect_timeout=3".to_string();
        assert_eq!(take_param(&mut s, "sslmode").as_deref(), Some("require"));
        assert_eq!(s, "postgres://h/db?application_name=a&connect_timeout=3");

        let mut s = "host=h sslmode=require dbname=d".to_string();
        assert_eq!(take_param(&mut s, "sslmode").as_deref(), Some("require"));
        assert_eq!(take_param(&mut s, "sslrootcert"), None);
        assert_eq!(s, "host=h  dbname=d");
        // A key that only ends like the one asked for is left alone.
        let mut s = "postgres://h/db?xsslmode=1".to_string();
        assert_eq!(take_param(&mut s, "sslmode"), None);
    }

    #[test]
    fn modes_map_to_tokio_postgres_and_verify_needs_a_root() {
        let mode = |url: &str| PgTarget::parse(url).map(|t| t.get_ssl_mode());
        assert!(matches!(mode("postgres://h/db"), Ok(SslMode::Disable)));
        assert!(matches!(
            mode("postgres://h/db?sslmode=prefer"),
            Ok(SslMode::Prefer)
        ));
        assert!(matches!(
            mode("host=h sslmode=require"),
            Ok(SslMode::Require)
        ));
        let err = PgTarget::parse("postgres://h/db?sslmode=verify-full")
            .err()
            .expect("verify-full without a root is refused");
        assert!(err.to_string().contains("sslrootcert"), "{err}");
        let err =
            PgTarget::parse("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent.pem")
                .err()
                .expect("a missing root file is refused");
        assert!(err.to_string().contains("/nonexistent.pem"), "{err}");
        assert!(PgTarget::parse("postgres://h/db?sslmode=sometimes").is_err());
    }
}
