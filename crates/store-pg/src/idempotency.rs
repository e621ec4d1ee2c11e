//! Idempotency keys ([`steadyflow_store::idempotency`]) on PostgreSQL: each step is one
//! statement. Two claims of one key never both win: the second `INSERT … ON CONFLICT DO
//! NOTHING` waits for the first to commit and then inserts nothing, and a takeover is
//! an `UPDATE` conditional on the lease it saw having run out.

use async_trait::async_trait;
use steadyflow_store::idempotency::{
    Claim, IdempotencyStore, Judgement, KeyClaim, StoredAnswer, judge,
};
use steadyflow_store::schema::{from_ms, to_ms};
use steadyflow_store::{Result, StoreError, Timestamp};

use crate::PgStore;
use crate::error::db_err;

fn parse_answer(text: &str) -> Result<StoredAnswer> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("stored idempotent answer: {e}")))
}

#[async_trait]
impl IdempotencyStore for PgStore {
    async fn claim_key(&self, claim: &KeyClaim<'_>) -> Result<Claim> {
        let client = self.client().await?;
        // A row pruned or released between the insert and the read: try once more.
        for _ in 0..2 {
            let inserted = client
                .query_opt(
                    "INSERT INTO idempotency_keys (key, fingerprint, owner, lease_until, answer, created_at) \
                     VALUES ($1, $2, $3, $4, NULL, $5) ON CONFLICT (key) DO NOTHING RETURNING 1",
                    &[
                        &claim.key,
                        &claim.fingerprint,
                        &claim.owner,
                        &to_ms(claim.lease_until),
                        &to_ms(claim.now),
                    ],
                )
                .await
                .map_err(db_err)?;
            if inserted.is_some() {
                return Ok(Claim::Claimed);
            }
            let Some(row) = client
                .query_opt(
                    "SELECT fingerprint, owner, lease_until, answer FROM idempotency_keys WHERE key = $1",
                    &[&claim.key],
                )
                .await
                .map_err(db_err)?
            else {
                continue;
            };
            let fingerprint: String = row.get(0);
            let owner: String = row.get(1);
            let lease: i64 = row.get(2);
            let answer: Option<String> = row.get(3);
            let answer = answer.map(|a| parse_answer(&a)).transpose()?;
            return match judge(claim, &fingerprint, &owner, Some(from_ms(lease)?), answer) {
                Judgement::Answer(a) => Ok(a),
                Judgement::TakeOver => {
                    let took = client
                        .execute(
                            "UPDATE idempotency_keys SET owner = $2, lease_until = $3 \
                             WHERE key = $1 AND answer IS NULL AND lease_until = $4",
                            &[&claim.key, &claim.owner, &to_ms(claim.lease_until), &lease],
                        )
                        .await
                        .map_err(db_err)?;
                    Ok(if took == 1 {
                        Claim::Claimed
                    } else {
                        Claim::Running
                    })
                }
            };
        }
        Ok(Claim::Running)
    }

    async fn finish_key(
        &self,
        key: &str,
        owner: &str,
        answer: &StoredAnswer,
        _now: Timestamp,
    ) -> Result<bool> {
        let text = serde_json::to_string(answer)
            .map_err(|e| StoreError::Backend(format!("serializing an answer: {e}")))?;
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE idempotency_keys SET answer = $3 WHERE key = $1 AND owner = $2 AND answer IS NULL",
                &[&key, &owner, &text],
            )
            .await
            .map_err(db_err)?;
        Ok(n == 1)
    }

    async fn release_key(&self, key: &str, owner: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM idempotency_keys WHERE key = $1 AND owner = $2 AND answer IS NULL",
                &[&key, &owner],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn prune_keys(&self, before: Timestamp) -> Result<u64> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM idempotency_keys WHERE created_at < $1",
                &[&to_ms(before)],
            )
            .await
            .map_err(db_err)
    }
}
