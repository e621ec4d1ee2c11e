//! `steadyflow serve`: store, engine, timer driver and HTTP edge.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use steadyflow_api::accounts::Accounts;
use steadyflow_api::{ApiError, AppState, Observability, ObservabilityOptions, TokenAuth};
use steadyflow_engine::{Backoff, ComponentHealth, Engine, EngineOptions, SystemClock, supervise};
use tokio::sync::watch;

use crate::config::{Config, ServeArgs, TimerConfig, redact};

pub async fn run(cfg: Config, args: ServeArgs) -> Result<()> {
    let admin_token = args.admin_token;
    // Before the store opens, so its writers' first batches are counted.
    steadyflow_api::metrics::install();
    tokio::spawn(metrics_upkeep());
    tracing::info!(database = %redact(&cfg.database_url()), "opening store");
    let store = crate::stores::open_configured(&cfg).await?;
    let (store, cache) = crate::redis_cache::wrap(store, &args.redis)?;
    let options = EngineOptions {
        timer_lock: cfg.engine.timers.lock(),
    };
    let clock = Arc::new(SystemClock);
    let accounts = Accounts::new(store.clone(), clock.clone());
    let engine = Arc::new(Engine::with_options(store, clock, options));
    let (stop_tx, stop_rx) = watch::channel(false);
    let cache_monitor = cache
        .clone()
        .map(|c| tokio::spawn(c.monitor(stop_rx.clone())));
    // Registered before it starts, so `/health` lists it from the first request on.
    let timer_health = engine.components().register(TIMER_DRIVER);
    // Continuous journal shipping to the backup targets (`backup.continuous`).
    let shipper = crate::backup_cmd::ship::spawn(&cfg, stop_rx.clone())?;
    let scheduler = crate::backup_cmd::schedule::spawn(&cfg, stop_rx.clone())?;
    let timers = tokio::spawn(timer_driver(
        engine.clone(),
        timer_health,
        cfg.engine.timers.clone(),
        stop_rx,
    ));

    let observability = Observability::new(ObservabilityOptions {
        metrics_token: cfg.metrics.token.clone(),
        gauge_refresh: cfg.metrics.gauge_refresh(),
        redis: cache.map(|c| c as Arc<dyn steadyflow_api::Probe>),
    });
    let app = steadyflow_api::router_with(
        AppState {
            engine: engine.clone(),
            auth: TokenAuth::shared(accounts, admin_token.as_deref()),
        },
        observability,
    );
    if admin_token.is_some() {
        tracing::warn!(
            "STEADYFLOW_ADMIN_TOKEN is set: that token is an administrator's; unset it once users exist"
        );
    }
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    tracing::info!(listen = %listener.local_addr()?, node = engine.node_id(), "steadyflow is serving");
    // The peer address reaches handlers (log-in attempts are limited per address).
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("HTTP server failed")?;
    let _ = stop_tx.send(true);
    let _ = timers.await;
    for task in [shipper, scheduler].into_iter().flatten() {
        let _ = task.await;
    }
    if let Some(m) = cache_monitor {
        let _ = m.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The timer driver's name among the components `/health` reports.
const TIMER_DRIVER: &str = "timerDriver";

/// Fires up to `timers.batch` due timers per iteration: the next one at once while there
/// is work, else after `timers.idle_poll_ms` (the lock they are taken with is the
/// engine's, [`EngineOptions`]). Runs supervised ([`supervise`]): a failed iteration
/// (say, the database is away) is retried with back-off, a panic is caught and the loop
/// started again, and `/health` shows the component `timerDriver` down, with the reason, while it is not running. One corrupt
/// instance does not fail an iteration: the engine stops that instance at an incident
/// and fires the other timers of the batch.
async fn timer_driver(
    engine: Arc<Engine>,
    health: Arc<ComponentHealth>,
    timers: TimerConfig,
    stop: watch::Receiver<bool>,
) {
    let (batch, idle) = (timers.batch, timers.idle_poll());
    supervise(health, Backoff::default(), stop, move || {
        let engine = engine.clone();
        async move {
            match engine.fire_due_timers(batch).await {
                Ok(0) => Ok(idle),
                Ok(_) => Ok(Duration::ZERO),
                Err(e) => {
                    tracing::warn!(error = %e, "timer driver: firing timers failed");
                    // What `/health` may show: the API's client-safe wording (a database
                    // error's driver text stays in the log).
                    Err(ApiError::from(e).message().to_string())
                }
            }
        }
    })
    .await;
}

/// Folds the histograms' recent samples in even when nobody scrapes, so memory stays
/// bounded (the exporter's own listener would do this; it is not compiled in).
async fn metrics_upkeep() {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        steadyflow_api::metrics::upkeep();
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
