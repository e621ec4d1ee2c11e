//! The node takes a mode by itself when the database goes away or refuses writes, and
//! leaves it by itself when the database is back.
//!
//! Every [`PROBE_INTERVAL`] the database is pinged (a read) and, while that works,
//! written to (an idempotency-key claim and its release: a row written and removed).
//! A ping failing for longer than the outage grace puts the node `offline` (writes are
//! spooled on local disk); a ping that works while the write fails for that long puts
//! it `read-only` (a read-only replica, `default_transaction_read_only`, a full disk).
//! Short failures are what the grace absorbs: requests wait and retry meanwhile.
//!
//! Back: once ping and write work again, a node that went offline by itself replays
//! what its spool held first (still offline for new requests, which join the spool
//! behind the old ones), and only then returns to the stored mode; what was spooled
//! during that replay follows at once, through the replayer of `normal` mode.

use std::sync::Arc;
use std::time::{Duration, Instant};

use steadyflow_api::modes::Modes;
use steadyflow_api::spool::Spool;
use steadyflow_engine::Engine;
use steadyflow_store::idempotency::{IdempotencyStore, KeyClaim};
use steadyflow_store::mode::Mode;
use tokio::sync::watch;

/// How often the database is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long one probe may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Up,
    /// Reads work, writes do not.
    RefusesWrites,
    Gone,
}

async fn probe(engine: &Engine, keys: &dyn IdempotencyStore) -> Found {
    let ping = tokio::time::timeout(PROBE_TIMEOUT, engine.store().ping()).await;
    if !matches!(ping, Ok(Ok(()))) {
        return Found::Gone;
    }
    let now = engine.clock().now();
    let key = format!("probe:{}", engine.node_id());
    let claim = KeyClaim {
        key: &key,
        fingerprint: "probe",
        owner: &key,
        now,
        lease_until: now,
    };
    let write = tokio::time::timeout(PROBE_TIMEOUT, async {
        keys.claim_key(&claim).await?;
        keys.release_key(&key, &key).await
    })
    .await;
    match write {
        Ok(Ok(())) => Found::Up,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "database write probe failed");
            Found::RefusesWrites
        }
        Err(_) => Found::RefusesWrites,
    }
}

/// Watches the database until `stop`; see the module documentation.
pub async fn watch_database(
    engine: Arc<Engine>,
    keys: Arc<dyn IdempotencyStore>,
    modes: Modes,
    spool: Spool,
    app: axum::Router,
    grace: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(PROBE_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Since when the probes have found the database in a worse state than `Up`.
    let mut failing: Option<(Found, Instant)> = None;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        let found = probe(&engine, keys.as_ref()).await;
        note(found, &mut failing);
        match (found, failing) {
            (Found::Up, _) if modes.auto().is_some() => {
                if modes.auto().is_some_and(|a| a.mode == Mode::Offline)
                    && !drain(&spool, &app, &engine).await
                {
                    continue;
                }
                tracing::warn!("the database is back: leaving the mode this node took by itself");
                modes.set_auto(None);
            }
            (Found::Gone, Some((_, since))) if since.elapsed() >= grace => {
                if modes.auto().is_none_or(|a| a.mode != Mode::Offline) {
                    tracing::error!(after = ?since.elapsed(), "the database is unreachable: going offline");
                }
                modes.set_auto(Some((
                    Mode::Offline,
                    "the database is unreachable; writes are kept and carried out once it is back"
                        .to_string(),
                )));
            }
            (Found::RefusesWrites, Some((_, since))) if since.elapsed() >= grace => {
                if modes.auto().is_none_or(|a| a.mode != Mode::ReadOnly) {
                    tracing::error!(after = ?since.elapsed(), "the database refuses writes: going read-only");
                }
                modes.set_auto(Some((
                    Mode::ReadOnly,
                    "the database refuses writes (read-only or out of space)".to_string(),
                )));
            }
            _ => {}
        }
    }
}

/// Keeps the start of the current failure streak (a change of kind keeps its start:
/// gone, then refusing writes, is one outage).
fn note(found: Found, failing: &mut Option<(Found, Instant)>) {
    match (found, failing.as_mut()) {
        (Found::Up, _) => *failing = None,
        (f, Some(streak)) => streak.0 = f,
        (f, None) => *failing = Some((f, Instant::now())),
    }
}

/// Replays what the spool held when the database came back (a round ends at the
/// first 5xx); `false` when it stopped early (the database went away again). Requests
/// spooled meanwhile are left to the replayer of `normal` mode: under steady load the
/// spool never runs empty, and waiting for that would keep the node offline for good.
async fn drain(spool: &Spool, app: &axum::Router, engine: &Engine) -> bool {
    let waiting = match spool.queued() {
        Ok(q) => q.len(),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the spool");
            return false;
        }
    };
    if waiting == 0 {
        return true;
    }
    tracing::info!(waiting, "the database is back: replaying the spool first");
    let clock = engine.clock().clone();
    match spool.replay_up_to(app, waiting, || clock.now()).await {
        Ok(n) => n == waiting,
        Err(e) => {
            tracing::error!(error = %e, "spool replay failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streak_keeps_its_start_across_kinds_and_ends_when_up() {
        let mut f = None;
        note(Found::Gone, &mut f);
        let start = f.unwrap().1;
        note(Found::RefusesWrites, &mut f);
        assert_eq!(f, Some((Found::RefusesWrites, start)));
        note(Found::Up, &mut f);
        assert_eq!(f, None);
    }
}
