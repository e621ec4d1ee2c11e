//! Alerts (`backup.alerts`): a failed backup, a failed shipping round, a target that
//! refuses writes, a late backup or shipping lag past its limit is posted as JSON to a
//! webhook and/or sent as an e-mail over SMTP, each channel retried with exponential
//! backoff. One alert per condition while it lasts: a condition that fails every second
//! alerts once, and again only after it recovered and failed anew. The conditions raised
//! now are counted in `steadyflow_backup_alerts_active{kind}`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::parse_duration;

/// Gauge: conditions alerted and not recovered yet; label `kind`.
pub const ACTIVE: &str = "steadyflow_backup_alerts_active";

/// A scheduled or API-started backup failed (its verification included).
pub const BACKUP_FAILED: &str = "backup_failed";
/// A shipping round failed as a whole.
pub const SHIPPING_FAILED: &str = "shipping_failed";
/// A target refused a write.
pub const TARGET_FAILED: &str = "target_failed";
/// No backup of the database within `max_backup_age`.
pub const BACKUP_LATE: &str = "backup_late";
/// Changes waited longer than `max_shipping_lag` to reach every target.
pub const SHIPPING_LAG: &str = "shipping_lag";

/// Every kind, for the metric's series.
pub const KINDS: [&str; 5] = [
    BACKUP_FAILED,
    SHIPPING_FAILED,
    TARGET_FAILED,
    BACKUP_LATE,
    SHIPPING_LAG,
];

/// `backup.alerts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertConfig {
    /// A backup of the database (full, incremental or shipped segment) older than this is
    /// late: `/health` warns and an alert is raised. The runbook backs up every 4 hours.
    pub max_backup_age: String,
    /// With continuous shipping, a change not on every target after this long is late.
    pub max_shipping_lag: String,
    pub webhook: Option<WebhookConfig>,
    pub email: Option<EmailConfig>,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            max_backup_age: "5h".into(),
            max_shipping_lag: "60s".into(),
            webhook: None,
            email: None,
        }
    }
}

impl AlertConfig {
    /// `max_backup_age` and `max_shipping_lag`, parsed.
    pub fn limits(&self) -> Result<(Duration, Duration), String> {
        let parse = |name: &str, text: &str| {
            parse_duration(text)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    format!(
                        "backup.alerts.{name} `{text}` is not a duration such as 90s, 30m or 5h"
                    )
                })
        };
        Ok((
            parse("max_backup_age", &self.max_backup_age)?,
            parse("max_shipping_lag", &self.max_shipping_lag)?,
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Attempts after the first one.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The first pause between attempts, doubled after each.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
}

/// `backup.alerts.email`: one message per alert to every address in `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The SMTP server.
    pub host: String,
    /// Default: 587 with `starttls`, 465 with `tls`, 25 with `none`.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub security: SmtpSecurity,
    /// Log-in, when the server wants one; the password may come from
    /// `STEADYFLOW_SMTP_PASSWORD` instead of the file.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    pub from: String,
    pub to: Vec<String>,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain, then upgraded with STARTTLS (refused when the server cannot).
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
    /// No encryption: only for a relay on the same host or network.
    None,
}

fn default_retries() -> u32 {
    5
}

fn default_backoff_ms() -> u64 {
    500
}

/// What is posted (and what the e-mail says).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// One of [`KINDS`].
    pub kind: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub at: DateTime<Utc>,
}

/// Raises alerts, once per condition while it lasts.
#[derive(Debug, Default)]
pub struct Alerter {
    webhook: Option<WebhookConfig>,
    email: Option<EmailConfig>,
    /// Raised conditions: key → (kind, message).
    active: Mutex<BTreeMap<String, (String, String)>>,
}

impl Alerter {
    pub fn new(cfg: &AlertConfig) -> Alerter {
        metrics::describe_gauge!(
            ACTIVE,
            "Backup alert conditions raised and not recovered (label kind)"
        );
        for kind in KINDS {
            metrics::gauge!(ACTIVE, "kind" => kind).set(0.0);
        }
        Alerter {
            webhook: cfg.webhook.clone(),
            email: cfg.email.clone(),
            active: Mutex::default(),
        }
    }

    /// Sets the gauge of `kind` from the raised conditions.
    fn count(active: &BTreeMap<String, (String, String)>, kind: &str) {
        let n = active.values().filter(|(k, _)| k == kind).count();
        metrics::gauge!(ACTIVE, "kind" => kind.to_string()).set(n as f64);
    }

    /// Whether the condition `key` is raised now.
    pub fn is_active(&self, key: &str) -> bool {
        self.active.lock().is_ok_and(|a| a.contains_key(key))
    }

    /// The conditions raised now: (kind, message of the alert that raised it).
    pub fn active(&self) -> Vec<(String, String)> {
        self.active
            .lock()
            .map(|a| a.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The condition `key` failed: alerts unless it is already raised.
    pub async fn fail(&self, key: &str, alert: Alert) {
        let new = self
            .active
            .lock()
            .map(|mut a| {
                let new = a
                    .insert(key.to_string(), (alert.kind.clone(), alert.message.clone()))
                    .is_none();
                Self::count(&a, &alert.kind);
                new
            })
            .unwrap_or(true);
        if !new {
            // Raised already: the log heard of it then.
            tracing::debug!(kind = %alert.kind, target = ?alert.target, message = %alert.message, "backup alert condition persists");
            return;
        }
        tracing::error!(kind = %alert.kind, target = ?alert.target, message = %alert.message, "backup alert");
        let webhook = async {
            if let Some(w) = &self.webhook {
                post(w, &alert).await;
            }
        };
        let email = async {
            if let Some(e) = &self.email {
                mail(e, &alert).await;
            }
        };
        tokio::join!(webhook, email);
    }

    /// The condition `key` holds again.
    pub fn ok(&self, key: &str) {
        if let Ok(mut a) = self.active.lock()
            && let Some((kind, _)) = a.remove(key)
        {
            Self::count(&a, &kind);
            tracing::info!(condition = key, "backup alert condition recovered");
        }
    }
}

async fn post(w: &WebhookConfig, alert: &Alert) {
    let body = match serde_json::to_vec(alert) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "alert cannot be encoded");
            return;
        }
    };
    // reqwest is built without a TLS provider of its own (a local target installs none).
    crate::targets::tls_provider();
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "alert webhook client");
            return;
        }
    };
    let mut pause = Duration::from_millis(w.backoff_ms);
    for attempt in 0..=w.retries {
        let sent = client
            .post(&w.url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => tracing::warn!(attempt, status = %r.status(), "alert webhook refused"),
            Err(e) => tracing::warn!(attempt, error = %e, "alert webhook unreachable"),
        }
        if attempt < w.retries {
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2);
        }
    }
    tracing::error!(url = %w.url, "alert not delivered after every retry");
}

/// The e-mail of `alert`: subject `[steadyflow] <kind>: <message>` (cut to one line),
/// the alert's fields as text, and its JSON.
fn message(e: &EmailConfig, alert: &Alert) -> Result<lettre::Message, String> {
    use lettre::message::header::ContentType;
    let mut b = lettre::Message::builder()
        .from(
            e.from
                .parse()
                .map_err(|x| format!("from `{}`: {x}", e.from))?,
        )
        .header(ContentType::TEXT_PLAIN);
    for to in &e.to {
        b = b.to(to.parse().map_err(|x| format!("to `{to}`: {x}"))?);
    }
    let first_line: String = alert
        .message
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(150)
        .collect();
    let json = serde_json::to_string_pretty(alert).unwrap_or_default();
    let body = format!(
        "Steadyflow backup alert\n\nkind:    {}\nat:      {}\ntarget:  {}\nmessage: {}\n\n{json}\n",
        alert.kind,
        alert.at.to_rfc3339(),
        alert.target.as_deref().unwrap_or("-"),
        alert.message
    );
    b.subject(format!("[steadyflow] {}: {first_line}", alert.kind))
        .body(body)
        .map_err(|x| x.to_string())
}

fn transport(
    e: &EmailConfig,
) -> Result<lettre::AsyncSmtpTransport<lettre::Tokio1Executor>, String> {
    use lettre::AsyncSmtpTransport;
    use lettre::transport::smtp::authentication::Credentials;
    type T = AsyncSmtpTransport<lettre::Tokio1Executor>;
    let builder = match e.security {
        SmtpSecurity::Starttls => T::starttls_relay(&e.host).map_err(|x| x.to_string())?,
        SmtpSecurity::Tls => T::relay(&e.host).map_err(|x| x.to_string())?,
        SmtpSecurity::None => T::builder_dangerous(&e.host),
    };
    let port = e.port.unwrap_or(match e.security {
        SmtpSecurity::Starttls => 587,
        SmtpSecurity::Tls => 465,
        SmtpSecurity::None => 25,
    });
    let mut builder = builder.port(port).timeout(Some(Duration::from_secs(10)));
    let password = e
        .password
        .clone()
        .or_else(|| std::env::var("STEADYFLOW_SMTP_PASSWORD").ok());
    if let (Some(user), Some(password)) = (&e.username, password) {
        builder = builder.credentials(Credentials::new(user.clone(), password));
    }
    Ok(builder.build())
}

async fn mail(e: &EmailConfig, alert: &Alert) {
    use lettre::AsyncTransport;
    let (message, transport) = match (message(e, alert), transport(e)) {
        (Ok(m), Ok(t)) => (m, t),
        (Err(x), _) | (_, Err(x)) => {
            tracing::error!(error = %x, "alert e-mail cannot be sent: check backup.alerts.email");
            return;
        }
    };
    let mut pause = Duration::from_millis(e.backoff_ms);
    for attempt in 0..=e.retries {
        match transport.send(message.clone()).await {
            Ok(_) => return,
            Err(x) => tracing::warn!(attempt, error = %x, "alert e-mail not accepted"),
        }
        if attempt < e.retries {
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2);
        }
    }
    tracing::error!(host = %e.host, "alert e-mail not delivered after every retry");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_default_to_the_runbook_and_reject_nonsense() {
        let c = AlertConfig::default();
        assert_eq!(
            c.limits(),
            Ok((Duration::from_secs(5 * 3600), Duration::from_secs(60)))
        );
        let bad = AlertConfig {
            max_backup_age: "soon".into(),
            ..AlertConfig::default()
        };
        assert!(bad.limits().unwrap_err().contains("max_backup_age"));
    }

    #[test]
    fn an_email_names_the_kind_in_its_subject_and_carries_the_alert() {
        let e = EmailConfig {
            host: "127.0.0.1".into(),
            port: Some(2525),
            security: SmtpSecurity::None,
            username: None,
            password: None,
            from: "steadyflow@example.org".into(),
            to: vec!["ops@example.org".into(), "oncall@example.org".into()],
            retries: 0,
            backoff_ms: 1,
        };
        let alert = Alert {
            kind: BACKUP_LATE.into(),
            message: "no backup for 6h\nsecond line".into(),
            target: None,
            at: Utc::now(),
        };
        let text = String::from_utf8(message(&e, &alert).unwrap().formatted()).unwrap();
        assert!(
            text.contains("Subject: [steadyflow] backup_late: no backup for 6h\r\n"),
            "{text}"
        );
        assert!(text.contains("ops@example.org"), "{text}");
        assert!(text.contains("oncall@example.org"), "{text}");
        let bad = EmailConfig {
            from: "not an address".into(),
            ..e
        };
        assert!(message(&bad, &alert).is_err());
    }
}
