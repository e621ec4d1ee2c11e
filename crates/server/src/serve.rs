//! `steadyflow serve`: store, engine, timer driver and HTTP edge.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use steadyflow_api::accounts::Accounts;
use steadyflow_api::modes::Modes;
use steadyflow_api::{
    ApiError, AppContext, Degraded, Observability, ObservabilityOptions, TokenAuth,
};
use steadyflow_engine::{Backoff, ComponentHealth, Engine, EngineOptions, SystemClock, supervise};
use tokio::sync::watch;

use crate::config::{Config, ServeArgs, TimerConfig, redact};

pub async fn run(mut cfg: Config, args: ServeArgs) -> Result<()> {
    let admin_token = args.admin_token;
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        (cfg.tls.cert_file, cfg.tls.key_file) = (Some(cert), Some(key));
    }
    // Read before anything starts: a bad certificate stops `serve` with the reason.
    let tls = match cfg.tls.files()? {
        Some((cert, key)) => Some(crate::tls::server_config(cert, key)?),
        None => None,
    };
    // Before the store opens, so its writers' first batches are counted.
    steadyflow_api::metrics::install();
    tokio::spawn(metrics_upkeep());
    tracing::info!(database = %redact(&cfg.database_url()), "opening store");
    let (store, keys) = crate::stores::open_configured_with_keys(&cfg).await?;
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
    // The service mode: read once before serving, then followed (every node agrees).
    let modes = Modes::new();
    if let Err(e) = modes
        .refresh(engine.store().as_ref(), engine.clock().now())
        .await
    {
        tracing::warn!(error = %e, "cannot read the service mode; starting as normal");
    }
    let spool_dir = cfg.modes.spool_dir(&cfg.data_dir);
    let spool = steadyflow_api::spool::Spool::open(&spool_dir, cfg.modes.spool_max_entries)
        .with_context(|| format!("cannot open the spool in {}", spool_dir.display()))?;
    let degraded = Degraded {
        modes: modes.clone(),
        keys: keys.clone(),
        spool: Some(spool.clone()),
        grace: cfg.modes.outage_grace(),
        core_only: steadyflow_api::CoreOnlyCaps::new(
            cfg.modes.core_only_fetch_max_tasks,
            cfg.modes.core_only_fetch_concurrency,
        ),
    };
    let keys_for_watch = keys.clone();
    tokio::spawn(steadyflow_api::idempotency::prune(
        keys,
        engine.clock().clone(),
    ));
    let mode_follower = tokio::spawn(steadyflow_api::modes::follow(
        modes.clone(),
        engine.store().clone(),
        engine.clock().clone(),
        stop_rx.clone(),
    ));
    // Backups by `serve` itself (when `backup.targets` are configured): continuous
    // journal shipping, scheduled backups, backups over HTTP, the limits in `/health`,
    // all reporting to one alerter and one status. A part that cannot start is logged
    // and shown down in `/health` (component `backups`); the API serves without it.
    let health_of = engine.clone();
    let failures = std::sync::Mutex::new(Vec::<String>::new());
    let backup_failed = move |what: &str, e: anyhow::Error| {
        tracing::error!(error = %format!("{e:#}"), "{what} cannot start; serving without it");
        let mut all = failures.lock().unwrap_or_else(|p| p.into_inner());
        all.push(format!("{what} cannot start: {e:#}"));
        health_of
            .components()
            .register(BACKUPS)
            .set_down(all.join("; "));
    };
    let alerter = Arc::new(steadyflow_backup::alert::Alerter::new(&cfg.backup.alerts));
    let backup_status = crate::backup_cmd::service::BackupStatus::new(&cfg)
        .map_err(|e| backup_failed("backups", e))
        .ok();
    let backups = backup_status.as_ref().and_then(|status| {
        crate::backup_cmd::service::BackupService::new(&cfg, status.clone(), alerter.clone())
            .map_err(|e| backup_failed("backups over HTTP", e))
            .ok()
            .flatten()
    });

    // The runbook's recovery priorities: database (above) → core API and authentication
    // (the router checks every token) → executor (timers) → task processing (spool
    // replay, outage watch) → monitoring (journal shipping, backup limits) →
    // notifications (scheduled backups and their alerts). Each starts after the ones
    // before it serve, and none of them can stop those.
    let observability = Observability::new(ObservabilityOptions {
        metrics_token: cfg.metrics.token.clone(),
        gauge_refresh: cfg.metrics.gauge_refresh(),
        redis: cache.map(|c| c as Arc<dyn steadyflow_api::Probe>),
    });
    let backups_configured = backups.is_some();
    let app = steadyflow_api::router_with(
        AppContext {
            engine: engine.clone(),
            auth: TokenAuth::shared(accounts, admin_token.as_deref()),
            degraded,
            backups: backups.map(|b| b as Arc<dyn steadyflow_api::backups::Backups>),
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
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(listen = %listener.local_addr()?, scheme, node = engine.node_id(), "steadyflow is serving");
    // The peer address reaches handlers (log-in attempts are limited per address).
    let service = app
        .clone()
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = match tls {
        Some(config) => {
            use axum::serve::ListenerExt;
            // `tap_io`: axum hands the peer address of any tapped listener to handlers.
            let listener = crate::tls::TlsListener::new(listener, config)?.tap_io(|_| {});
            tokio::spawn(async move {
                axum::serve(listener, service)
                    .with_graceful_shutdown(shutdown_signal())
                    .await
            })
        }
        None => tokio::spawn(async move {
            axum::serve(listener, service)
                .with_graceful_shutdown(shutdown_signal())
                .await
        }),
    };

    // Executor.
    let timers = tokio::spawn(timer_driver(
        engine.clone(),
        timer_health,
        cfg.engine.timers.clone(),
        cfg.modes.core_only_timer_batch,
        modes.clone(),
        stop_rx.clone(),
    ));
    // Task processing: what the spool holds, and the automatic modes.
    let outage_watch = (!cfg.modes.outage_grace().is_zero()).then(|| {
        tokio::spawn(crate::outage::watch_database(
            engine.clone(),
            keys_for_watch,
            modes.clone(),
            spool.clone(),
            app.clone(),
            cfg.modes.outage_grace(),
            stop_rx.clone(),
        ))
    });
    let replayer = tokio::spawn(replay_spool(
        spool,
        modes,
        app,
        engine.clone(),
        stop_rx.clone(),
    ));
    // Monitoring: journal shipping and the backup limits.
    let mut background = Vec::new();
    if let Some(status) = &backup_status {
        let shipper =
            crate::backup_cmd::ship::spawn(&cfg, stop_rx.clone(), alerter.clone(), status.clone());
        match shipper {
            Ok(task) => background.extend(task),
            Err(e) => backup_failed("journal shipping", e),
        }
        if backups_configured {
            match crate::backup_cmd::service::spawn_monitor(
                &cfg,
                status.clone(),
                alerter.clone(),
                stop_rx.clone(),
            ) {
                Ok(task) => background.push(task),
                Err(e) => backup_failed("the backup monitor", e),
            }
        }
        // Notifications: scheduled backups and their alerts.
        match crate::backup_cmd::schedule::spawn(&cfg, stop_rx.clone(), alerter, status.clone()) {
            Ok(task) => background.extend(task),
            Err(e) => backup_failed("scheduled backups", e),
        }
    }

    let served = server.await;
    let _ = stop_tx.send(true);
    let _ = timers.await;
    let _ = mode_follower.await;
    let _ = replayer.await;
    if let Some(w) = outage_watch {
        let _ = w.await;
    }
    for task in background {
        let _ = task.await;
    }
    if let Some(m) = cache_monitor {
        let _ = m.await;
    }
    served
        .context("the HTTP server task failed")?
        .context("HTTP server failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// The timer driver's name among the components `/health` reports.
const TIMER_DRIVER: &str = "timerDriver";

/// Backups by `serve` (shipping, schedules, the HTTP routes, the monitor) among the
/// components `/health` reports: down, with the reason, when one of them cannot start.
const BACKUPS: &str = "backups";

/// Fires up to `timers.batch` due timers per iteration: the next one at once while there
/// is work, else after `timers.idle_poll_ms` (the lock they are taken with is the
/// engine's, [`EngineOptions`]). Runs supervised ([`supervise`]): a failed iteration
/// (say, the database is away) is retried with back-off, a panic is caught and the loop
/// started again, and `/health` shows the component `timerDriver` down, with the reason, while it is not running. One corrupt
/// instance does not fail an iteration: the engine stops that instance at an incident
/// and fires the other timers of the batch. In `read-only` and `offline` mode it fires
/// nothing (due timers wait for the mode to allow them); in `core-only` at most
/// `core_only_batch` per round.
async fn timer_driver(
    engine: Arc<Engine>,
    health: Arc<ComponentHealth>,
    timers: TimerConfig,
    core_only_batch: usize,
    modes: Modes,
    stop: watch::Receiver<bool>,
) {
    let (batch, idle) = (timers.batch, timers.idle_poll());
    supervise(health, Backoff::default(), stop, move || {
        let engine = engine.clone();
        let modes = modes.clone();
        async move {
            // Read-only and offline: due timers wait (they fire once the mode allows).
            let mode = modes.current();
            if !mode.runs_timers() {
                return Ok(idle);
            }
            let batch = if mode.mode == steadyflow_store::mode::Mode::CoreOnly {
                batch.min(core_only_batch.max(1))
            } else {
                batch
            };
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

/// Replays the offline spool (in arrival order) whenever the mode is `normal` and
/// requests wait: at start (what a crash left), and after every return from `offline`.
async fn replay_spool(
    spool: steadyflow_api::spool::Spool,
    modes: Modes,
    app: axum::Router,
    engine: Arc<Engine>,
    mut stop: watch::Receiver<bool>,
) {
    use steadyflow_store::mode::Mode;
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut mode = modes.subscribe();
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = mode.changed() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        if modes.current().mode != Mode::Normal {
            continue;
        }
        match spool.waiting() {
            0 => continue,
            waiting => tracing::info!(waiting, "replaying the offline spool"),
        }
        let clock = engine.clock().clone();
        match spool.replay(&app, || clock.now()).await {
            Ok(n) => tracing::info!(replayed = n, "offline spool replayed"),
            Err(e) => tracing::error!(error = %e, "spool replay failed; retrying"),
        }
    }
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
