//! Keeps a [`PlainWatch`] up to date with plain-row writes committed by other nodes: a
//! dedicated connection `LISTEN`s on [`plain::CHANNEL`], which every plain write
//! notifies at commit (see `plain.rs`). The connection is pinged every second; while it
//! is down or silent the watch is not live, so nothing is served from a cache that could
//! have missed a change. It reconnects by itself.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::poll_fn;
use steadyflow_store::users::PlainWatch;
use tokio_postgres::AsyncMessage;

use crate::plain;
use crate::tls::PgTarget;

/// How often the connection is pinged, and the wait before reconnecting.
const TICK: Duration = Duration::from_secs(1);
/// A ping answered later than this counts as a lost connection.
const PING_DEADLINE: Duration = Duration::from_secs(2);

/// Dropped with the last clone of the store: the listener then closes its connection at
/// once (a restore refuses a database that still has sessions).
pub(crate) type Alive = Arc<tokio::sync::watch::Sender<()>>;

/// Starts the listener; it runs until the returned handle is dropped.
pub(crate) fn spawn(target: PgTarget, watch: Arc<PlainWatch>) -> Alive {
    // Nothing is ever sent: `changed` resolves (with an error) when the sender drops.
    let (alive, mut gone) = tokio::sync::watch::channel(());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = listen(&target, &watch) => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "plain-row listener lost; token cache off until it is back");
                    }
                }
                _ = gone.changed() => return,
            }
            watch.set_live(false);
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = gone.changed() => return,
            }
        }
    });
    Arc::new(alive)
}

/// Listens until the connection fails (answers why).
async fn listen(target: &PgTarget, watch: &Arc<PlainWatch>) -> Result<(), String> {
    let (client, mut conn) = target.connect().await.map_err(|e| e.to_string())?;
    let (closed_tx, mut closed) = tokio::sync::oneshot::channel::<()>();
    let notified = watch.clone();
    tokio::spawn(async move {
        loop {
            match poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => notified.bump(),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "plain-row listener connection failed");
                    break;
                }
                None => break,
            }
        }
        let _ = closed_tx.send(());
    });
    client
        .batch_execute(&format!("LISTEN {}", plain::CHANNEL))
        .await
        .map_err(|e| e.to_string())?;
    // Listening from here on: anything cached before is dropped by the bump this makes.
    watch.set_live(true);
    loop {
        tokio::select! {
            _ = &mut closed => return Err("connection closed".into()),
            _ = tokio::time::sleep(TICK) => {}
        }
        match tokio::time::timeout(PING_DEADLINE, client.simple_query("SELECT 1")).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer to a ping within {PING_DEADLINE:?}")),
        }
    }
}
