//! Idempotency keys: a write sent again with the same `Idempotency-Key` gets the answer
//! of the first one, and its work is done once.
//!
//! A key is first *claimed* (a row in `idempotency_keys` owned by one request, with a
//! lease), then *finished* with the answer to replay. A second request with the key
//! finds the row: finished, it gets the stored answer; still running, it waits (or is
//! told so); claimed for another request (`fingerprint` differs), it is refused. A
//! claim whose owner died (its lease ran out) may be taken over.
//!
//! Keys are kept in the database (so every node sees them), not journaled and not in
//! backups: they guard retries of the last hours, not history. Rows are pruned after
//! the retention (24 h by default).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Result, Timestamp};

/// The answer stored for a finished key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredAnswer {
    pub status: u16,
    /// `Content-Type` and `Location`, when the answer had them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The body as sent (UTF-8: the API answers JSON).
    pub body: String,
}

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller owns the key now: do the work, then [`IdempotencyStore::finish`].
    Claimed,
    /// Another request with this key is running (its lease holds).
    Running,
    /// Done before: this is its answer.
    Done(StoredAnswer),
    /// The key was used for a different request (method, path or body).
    Mismatch,
}

/// One claim: the key (already scoped to its caller), what the request was, who runs it.
#[derive(Debug, Clone)]
pub struct KeyClaim<'a> {
    pub key: &'a str,
    /// A digest of method, path and body.
    pub fingerprint: &'a str,
    /// Unique per request (a takeover changes it, so a late finish of the old owner
    /// does not overwrite).
    pub owner: &'a str,
    pub now: Timestamp,
    pub lease_until: Timestamp,
}

/// Where keys are kept: the SQLite and PostgreSQL stores, and the memory store.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims the key: a new row, or a running one whose lease ran out (same
    /// fingerprint). Else what the row says.
    async fn claim_key(&self, claim: &KeyClaim<'_>) -> Result<Claim>;
    /// Stores the answer of a claimed key; `false` when `owner` no longer holds it.
    async fn finish_key(
        &self,
        key: &str,
        owner: &str,
        answer: &StoredAnswer,
        now: Timestamp,
    ) -> Result<bool>;
    /// Drops a claim whose work failed in a way worth retrying (nothing was done).
    async fn release_key(&self, key: &str, owner: &str) -> Result<()>;
    /// Removes keys created before `before`; how many.
    async fn prune_keys(&self, before: Timestamp) -> Result<u64>;
}

/// What a row (its fingerprint, owner, lease and answer) says to a claim that did not
/// insert it.
pub fn judge(
    claim: &KeyClaim<'_>,
    fingerprint: &str,
    owner: &str,
    lease_until: Option<Timestamp>,
    answer: Option<StoredAnswer>,
) -> Judgement {
    if fingerprint != claim.fingerprint {
        return Judgement::Answer(Claim::Mismatch);
    }
    match answer {
        Some(a) => Judgement::Answer(Claim::Done(a)),
        // The same request again (a retry of its own): it holds the key already.
        None if owner == claim.owner => Judgement::TakeOver,
        None if lease_until.is_some_and(|l| l > claim.now) => Judgement::Answer(Claim::Running),
        None => Judgement::TakeOver,
    }
}

/// The outcome of [`judge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    Answer(Claim),
    /// The owner's lease ran out: take the row over (conditionally on its lease).
    TakeOver,
}

/// Keys in memory (tests, and embedding without a database).
#[derive(Default)]
pub struct MemoryKeys {
    rows: std::sync::Mutex<std::collections::BTreeMap<String, MemoryRow>>,
}

struct MemoryRow {
    fingerprint: String,
    owner: String,
    lease_until: Timestamp,
    answer: Option<StoredAnswer>,
    created_at: Timestamp,
}

impl MemoryKeys {
    fn rows(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, MemoryRow>> {
        self.rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl IdempotencyStore for MemoryKeys {
    async fn claim_key(&self, claim: &KeyClaim<'_>) -> Result<Claim> {
        let mut rows = self.rows();
        let Some(row) = rows.get_mut(claim.key) else {
            rows.insert(
                claim.key.to_string(),
                MemoryRow {
                    fingerprint: claim.fingerprint.to_string(),
                    owner: claim.owner.to_string(),
                    lease_until: claim.lease_until,
                    answer: None,
                    created_at: claim.now,
                },
            );
            return Ok(Claim::Claimed);
        };
        match judge(
            claim,
            &row.fingerprint,
            &row.owner,
            Some(row.lease_until),
            row.answer.clone(),
        ) {
            Judgement::Answer(a) => Ok(a),
            Judgement::TakeOver => {
                row.owner = claim.owner.to_string();
                row.lease_until = claim.lease_until;
                Ok(Claim::Claimed)
            }
        }
    }

    async fn finish_key(
        &self,
        key: &str,
        owner: &str,
        answer: &StoredAnswer,
        _now: Timestamp,
    ) -> Result<bool> {
        let mut rows = self.rows();
        match rows.get_mut(key) {
            Some(r) if r.owner == owner && r.answer.is_none() => {
                r.answer = Some(answer.clone());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_key(&self, key: &str, owner: &str) -> Result<()> {
        let mut rows = self.rows();
        if rows
            .get(key)
            .is_some_and(|r| r.owner == owner && r.answer.is_none())
        {
            rows.remove(key);
        }
        Ok(())
    }

    async fn prune_keys(&self, before: Timestamp) -> Result<u64> {
        let mut rows = self.rows();
        let n = rows.len();
        rows.retain(|_, r| r.created_at >= before);
        Ok((n - rows.len()) as u64)
    }
}
