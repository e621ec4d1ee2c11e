//! `steadyflow serve`: store, engine, timer driver and HTTP edge.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use steadyflow_api::{AllowAll, AppState};
use steadyflow_engine::{Engine, SystemClock};
use tokio::sync::watch;

use crate::config::{Config, redact};

pub async fn run(cfg: Config) -> Result<()> {
    let url = cfg.database_url();
    tracing::info!(database = %redact(&url), "opening store");
    let store = crate::stores::open(&url).await?;
    let engine = Arc::new(Engine::new(store, Arc::new(SystemClock)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let timers = tokio::spawn(timer_driver(
        engine.clone(),
        Duration::from_millis(cfg.timer_poll_ms),
        stop_rx,
    ));

    let app = steadyflow_api::router(AppState {
        engine: engine.clone(),
        auth: Arc::new(AllowAll),
    });
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    tracing::info!(listen = %listener.local_addr()?, node = engine.node_id(), "steadyflow is serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("HTTP server failed")?;
    let _ = stop_tx.send(true);
    let _ = timers.await;
    tracing::info!("stopped");
    Ok(())
}

/// Fires due timers: at once while there is work, else every `idle` interval.
async fn timer_driver(engine: Arc<Engine>, idle: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        let wait = match engine.fire_due_timers(100).await {
            Ok(0) => idle,
            Ok(_) => Duration::ZERO,
            Err(e) => {
                tracing::warn!(error = %e, "timer driver: firing timers failed");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
