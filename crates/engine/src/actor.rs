//! Who caused a command, for the audit trail: the HTTP edge runs each authenticated
//! request inside [`acting_as`] (a task-local), and every history event the request's
//! commands write carries that name in its `detail.by`. Commands the engine runs on its
//! own (timers) carry none.

use std::future::Future;
use std::sync::Arc;

use serde_json::Value;
use steadyflow_store::ChangeSet;

tokio::task_local! {
    static ACTOR: Arc<str>;
}

/// Runs `f` with `name` as the actor of every command it issues.
pub async fn acting_as<F: Future>(name: &str, f: F) -> F::Output {
    ACTOR.scope(Arc::from(name), f).await
}

/// The actor of the current task, if one was set.
pub fn current() -> Option<Arc<str>> {
    ACTOR.try_with(Arc::clone).ok()
}

/// Writes the current actor into the detail of every history event of `cs`.
pub(crate) fn stamp(cs: &mut ChangeSet) {
    let Some(actor) = current() else {
        return;
    };
    for h in &mut cs.history {
        match &mut h.detail {
            Value::Object(m) => {
                m.insert("by".into(), Value::from(&*actor));
            }
            Value::Null => {
                let mut m = serde_json::Map::new();
                m.insert("by".into(), Value::from(&*actor));
                h.detail = Value::Object(m);
            }
            // A scalar detail is left as it is (none is written today).
            _ => {}
        }
    }
}
