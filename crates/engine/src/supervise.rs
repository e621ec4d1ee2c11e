//! Supervised background loops: a failed iteration is logged and retried with
//! back-off, a panic is caught and the loop goes on, and the component's
//! [`ComponentHealth`] says at every moment whether it is running.
//!
//! Each iteration runs as its own tokio task, so a panic inside it ends that task only:
//! the supervisor sees it as a [`tokio::task::JoinError`], and starts the next iteration
//! after the back-off. Nothing the iteration held survives it (it owns what it uses).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::health::ComponentHealth;

/// Delay before retrying after a failed or panicked iteration: doubles per failure in a
/// row, from `initial` up to `max`, and starts again at `initial` after a success.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

/// Runs `iteration` until `stop` turns true (or its sender is dropped).
///
/// An iteration answers how long to wait before the next one (`Ok`), or why it failed
/// (`Err`, a short text fit for `/health`; log the details inside the iteration).
/// While an iteration runs the component is up; while it backs off after a failure or
/// a panic it is down, with the reason. The stop signal is looked at between
/// iterations, never inside one, so a command is never cut off half-way.
pub async fn supervise<F, Fut>(
    health: Arc<ComponentHealth>,
    backoff: Backoff,
    mut stop: watch::Receiver<bool>,
    mut iteration: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Duration, String>> + Send + 'static,
{
    let name = health.name().to_string();
    let mut delay = backoff.initial;
    loop {
        if *stop.borrow() {
            break;
        }
        health.set_up();
        let began = std::time::Instant::now();
        let wait = match tokio::spawn(iteration()).await {
            Ok(Ok(wait)) => {
                health.ran(began.elapsed());
                delay = backoff.initial;
                wait
            }
            Ok(Err(error)) => {
                tracing::warn!(component = %name, %error, retry_in = ?delay, "iteration failed");
                health.failed(
                    error,
                    format!("last iteration failed; retrying in {}", secs(delay)),
                );
                next_delay(&mut delay, backoff)
            }
            Err(e) if e.is_panic() => {
                let message = panic_message(e.into_panic());
                tracing::error!(component = %name, panic = %message, restart_in = ?delay, "iteration panicked; restarting");
                health.restarted();
                // The panic text stays in the log: it may quote data `/health` must not show.
                health.failed(
                    "panicked (see the server log)",
                    format!("panicked; restarting in {}", secs(delay)),
                );
                next_delay(&mut delay, backoff)
            }
            Err(_) => {
                // Cancelled: the runtime is shutting down.
                health.set_down("stopped");
                return;
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
    }
    health.set_down("stopped");
}

fn next_delay(delay: &mut Duration, backoff: Backoff) -> Duration {
    let now = *delay;
    *delay = (now * 2).min(backoff.max);
    now
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_string(),
            Err(_) => "(no message)".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use super::*;
    use crate::health::{ComponentReport, Components};

    fn quick() -> Backoff {
        Backoff {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(20),
        }
    }

    async fn until(h: &ComponentHealth, what: &str, f: impl Fn(&ComponentReport) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f(&h.report()) {
            assert!(Instant::now() < deadline, "{what}: {:?}", h.report());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Iterations: 1 panics, 2 fails, every later one succeeds.
    #[tokio::test]
    async fn a_panic_and_a_failure_are_survived_and_reported() {
        let h = Components::new().register("timerDriver");
        let runs = Arc::new(AtomicUsize::new(0));
        let (stop_tx, stop) = watch::channel(false);
        let counter = runs.clone();
        let task = tokio::spawn(supervise(h.clone(), quick(), stop, move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                match n {
                    1 => panic!("poisoned row"),
                    2 => Err("the database is unavailable".to_string()),
                    _ => Ok(Duration::from_millis(1)),
                }
            }
        }));
        until(&h, "restarted once and running again", |r| {
            r.restarts == 1 && r.up && runs.load(Ordering::SeqCst) > 3
        })
        .await;
        let r = h.report();
        assert_eq!(
            r.last_error.as_deref(),
            Some("the database is unavailable"),
            "the last failure is kept"
        );
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(h.report().reason.as_deref(), Some("stopped"));
    }

    /// While it backs off after a panic the component is down, with the reason.
    #[tokio::test]
    async fn down_while_backing_off_after_a_panic() {
        let h = Components::new().register("timerDriver");
        let (stop_tx, stop) = watch::channel(false);
        let long = Backoff {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(60),
        };
        let task = tokio::spawn(supervise(h.clone(), long, stop, || async {
            if true {
                panic!("boom");
            }
            Ok(Duration::ZERO)
        }));
        until(&h, "down after the panic", |r| !r.up && r.restarts == 1).await;
        let r = h.report();
        assert_eq!(r.reason.as_deref(), Some("panicked; restarting in 60.0s"));
        assert_eq!(
            r.last_error.as_deref(),
            Some("panicked (see the server log)")
        );
        assert!(
            !format!("{r:?}").contains("boom"),
            "panic text stays in the log"
        );
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }
}
