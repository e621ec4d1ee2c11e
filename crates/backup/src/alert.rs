//! Alerts (`backup.alerts`): a failed backup, a failed shipping round or a target that
//! refuses writes is posted as JSON to a webhook, retried with exponential backoff. One
//! alert per condition while it lasts: a condition that fails every second alerts once,
//! and again only after it recovered and failed anew.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `backup.alerts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertConfig {
    pub webhook: Option<WebhookConfig>,
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

fn default_retries() -> u32 {
    5
}

fn default_backoff_ms() -> u64 {
    500
}

/// What is posted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// `backup_failed`, `shipping_failed` or `target_failed`.
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
    active: Mutex<BTreeSet<String>>,
}

impl Alerter {
    pub fn new(cfg: &AlertConfig) -> Alerter {
        Alerter {
            webhook: cfg.webhook.clone(),
            active: Mutex::default(),
        }
    }

    /// The condition `key` failed: alerts unless it is already raised.
    pub async fn fail(&self, key: &str, alert: Alert) {
        let new = self
            .active
            .lock()
            .map(|mut a| a.insert(key.to_string()))
            .unwrap_or(true);
        tracing::error!(kind = %alert.kind, target = ?alert.target, message = %alert.message, "backup alert");
        if new && let Some(w) = &self.webhook {
            post(w, &alert).await;
        }
    }

    /// The condition `key` holds again.
    pub fn ok(&self, key: &str) {
        if let Ok(mut a) = self.active.lock() {
            a.remove(key);
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
