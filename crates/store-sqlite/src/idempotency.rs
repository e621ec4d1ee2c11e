//! Idempotency keys ([`steadyflow_store::idempotency`]) on SQLite: claims and answers
//! are written by the one writer thread (durable when they return), read in the same
//! job, so two claims of one key never both win.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use steadyflow_store::idempotency::{
    Claim, IdempotencyStore, Judgement, KeyClaim, StoredAnswer, judge,
};
use steadyflow_store::schema::{from_ms, to_ms};
use steadyflow_store::{Result, StoreError, Timestamp};

use crate::{SqliteStore, backend_err};

/// An owned [`KeyClaim`], to move onto the writer thread.
struct Owned {
    key: String,
    fingerprint: String,
    owner: String,
    now: Timestamp,
    lease_until: Timestamp,
}

fn claim(c: &Connection, o: &Owned) -> Result<Claim> {
    let inserted = c
        .prepare_cached(
            "INSERT INTO idempotency_keys (key, fingerprint, owner, lease_until, answer, created_at) \
             VALUES (?1, ?2, ?3, ?4, NULL, ?5) ON CONFLICT (key) DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(params![
                o.key,
                o.fingerprint,
                o.owner,
                to_ms(o.lease_until),
                to_ms(o.now)
            ])
        })
        .map_err(backend_err)?;
    if inserted == 1 {
        return Ok(Claim::Claimed);
    }
    let row: Option<(String, String, i64, Option<String>)> = c
        .prepare_cached(
            "SELECT fingerprint, owner, lease_until, answer FROM idempotency_keys WHERE key = ?1",
        )
        .and_then(|mut s| {
            s.query_row([&o.key], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
        })
        .map_err(backend_err)?;
    // The writer is the only one changing rows: the row is there.
    let Some((fingerprint, owner, lease, answer)) = row else {
        return Err(StoreError::Backend("idempotency key vanished".into()));
    };
    let answer = answer.map(|a| parse_answer(&a)).transpose()?;
    let view = KeyClaim {
        key: &o.key,
        fingerprint: &o.fingerprint,
        owner: &o.owner,
        now: o.now,
        lease_until: o.lease_until,
    };
    match judge(&view, &fingerprint, &owner, Some(from_ms(lease)?), answer) {
        Judgement::Answer(a) => Ok(a),
        Judgement::TakeOver => {
            c.prepare_cached(
                "UPDATE idempotency_keys SET owner = ?2, lease_until = ?3 \
                 WHERE key = ?1 AND answer IS NULL",
            )
            .and_then(|mut s| s.execute(params![o.key, o.owner, to_ms(o.lease_until)]))
            .map_err(backend_err)?;
            Ok(Claim::Claimed)
        }
    }
}

pub(crate) fn parse_answer(text: &str) -> Result<StoredAnswer> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("stored idempotent answer: {e}")))
}

#[async_trait]
impl IdempotencyStore for SqliteStore {
    async fn claim_key(&self, claim_: &KeyClaim<'_>) -> Result<Claim> {
        let owned = Owned {
            key: claim_.key.to_string(),
            fingerprint: claim_.fingerprint.to_string(),
            owner: claim_.owner.to_string(),
            now: claim_.now,
            lease_until: claim_.lease_until,
        };
        self.writer
            .run(Some(claim_.now), move |c, _| claim(c, &owned))
            .await
    }

    async fn finish_key(
        &self,
        key: &str,
        owner: &str,
        answer: &StoredAnswer,
        now: Timestamp,
    ) -> Result<bool> {
        let text = serde_json::to_string(answer)
            .map_err(|e| StoreError::Backend(format!("serializing an answer: {e}")))?;
        let (key, owner) = (key.to_string(), owner.to_string());
        self.writer
            .run(Some(now), move |c, _| {
                c.prepare_cached(
                    "UPDATE idempotency_keys SET answer = ?3 \
                     WHERE key = ?1 AND owner = ?2 AND answer IS NULL",
                )
                .and_then(|mut s| s.execute(params![key, owner, text]))
                .map(|n| n == 1)
                .map_err(backend_err)
            })
            .await
    }

    async fn release_key(&self, key: &str, owner: &str) -> Result<()> {
        let (key, owner) = (key.to_string(), owner.to_string());
        self.writer
            .run(None, move |c, _| {
                c.prepare_cached(
                    "DELETE FROM idempotency_keys WHERE key = ?1 AND owner = ?2 AND answer IS NULL",
                )
                .and_then(|mut s| s.execute(params![key, owner]))
                .map(|_| ())
                .map_err(backend_err)
            })
            .await
    }

    async fn prune_keys(&self, before: Timestamp) -> Result<u64> {
        self.writer
            .run(None, move |c, _| {
                c.prepare_cached("DELETE FROM idempotency_keys WHERE created_at < ?1")
                    .and_then(|mut s| s.execute([to_ms(before)]))
                    .map(|n| n as u64)
                    .map_err(backend_err)
            })
            .await
    }
}
