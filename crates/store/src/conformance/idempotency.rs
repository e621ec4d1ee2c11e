//! Cases for an [`IdempotencyStore`]: a key is claimed once, answered from its stored
//! answer afterwards, refused for another request, taken over when its owner's lease ran
//! out, released, pruned; concurrent claims of one key have one winner.
//!
//! Not in the `conformance_tests!` list (that one runs on a [`crate::Store`]): a
//! backend's test file calls [`keys_claim_answer_and_takeover`] and
//! [`concurrent_claims_have_one_winner`] itself.

use std::sync::Arc;

use crate::idempotency::{Claim, IdempotencyStore, KeyClaim, StoredAnswer};

use super::fixtures::at;

fn claim<'a>(key: &'a str, fingerprint: &'a str, owner: &'a str, now: i64) -> KeyClaim<'a> {
    KeyClaim {
        key,
        fingerprint,
        owner,
        now: at(now),
        lease_until: at(now + 30_000),
    }
}

fn answer(body: &str) -> StoredAnswer {
    StoredAnswer {
        status: 201,
        content_type: Some("application/json".into()),
        location: Some("/api/v1/process-instances/i-1".into()),
        body: body.into(),
    }
}

pub async fn keys_claim_answer_and_takeover(s: Arc<dyn IdempotencyStore>) {
    let s = s.as_ref();
    assert_eq!(
        s.claim_key(&claim("ann:k1", "fp", "r1", 1_000))
            .await
            .unwrap(),
        Claim::Claimed,
        "a new key is claimed"
    );
    assert_eq!(
        s.claim_key(&claim("ann:k1", "fp", "r2", 2_000))
            .await
            .unwrap(),
        Claim::Running,
        "while its owner's lease holds, the key is running"
    );
    assert_eq!(
        s.claim_key(&claim("ann:k1", "other", "r2", 2_000))
            .await
            .unwrap(),
        Claim::Mismatch,
        "another request with the key is refused"
    );
    assert_eq!(
        s.claim_key(&claim("ann:k1", "fp", "r1", 2_000))
            .await
            .unwrap(),
        Claim::Claimed,
        "its owner claims it again (a retry of the same request)"
    );
    assert!(
        !s.finish_key("ann:k1", "r2", &answer("{}"), at(2_500))
            .await
            .unwrap(),
        "only the owner finishes"
    );
    assert!(
        s.finish_key("ann:k1", "r1", &answer(r#"{"id":"i-1"}"#), at(3_000))
            .await
            .unwrap()
    );
    assert_eq!(
        s.claim_key(&claim("ann:k1", "fp", "r3", 100_000))
            .await
            .unwrap(),
        Claim::Done(answer(r#"{"id":"i-1"}"#)),
        "a finished key answers with its stored answer, lease or not"
    );

    // An owner that died: its lease runs out and another request takes over.
    s.claim_key(&claim("ann:k2", "fp", "r1", 1_000))
        .await
        .unwrap();
    assert_eq!(
        s.claim_key(&claim("ann:k2", "fp", "r2", 31_001))
            .await
            .unwrap(),
        Claim::Claimed,
        "an expired lease is taken over"
    );
    assert!(
        !s.finish_key("ann:k2", "r1", &answer("late"), at(31_002))
            .await
            .unwrap(),
        "the old owner's late finish does not land"
    );
    assert!(
        s.finish_key("ann:k2", "r2", &answer("new"), at(31_003))
            .await
            .unwrap()
    );

    // Released: the key is free again.
    s.claim_key(&claim("ann:k3", "fp", "r1", 1_000))
        .await
        .unwrap();
    s.release_key("ann:k3", "r1").await.unwrap();
    assert_eq!(
        s.claim_key(&claim("ann:k3", "fp2", "r2", 1_001))
            .await
            .unwrap(),
        Claim::Claimed
    );

    // Pruned by creation time.
    let pruned = s.prune_keys(at(1_001)).await.unwrap();
    assert_eq!(pruned, 2, "k1 and k2 were created at 1000; k3 at 1001");
    assert_eq!(
        s.claim_key(&claim("ann:k1", "fp", "r9", 200_000))
            .await
            .unwrap(),
        Claim::Claimed,
        "a pruned key is new again"
    );
}

pub async fn concurrent_claims_have_one_winner(s: Arc<dyn IdempotencyStore>) {
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("r{i}");
            s.claim_key(&claim("bob:same", "fp", &owner, 5_000))
                .await
                .unwrap()
        }));
    }
    let mut claimed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Claim::Claimed => claimed += 1,
            Claim::Running => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(claimed, 1, "one of 16 concurrent claims wins");
}
