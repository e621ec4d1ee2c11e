//! The Steadyflow engine.
//!
//! * [`core`]: the pure, synchronous token state machine. A command plus the instance's
//!   current state yields the new state and a [`steadyflow_store::ChangeSet`]; no IO.
//! * [`Engine`]: the command service the REST handlers (and tests) call. It loads what a
//!   command touches from the [`steadyflow_store::Store`], runs the core, and commits the
//!   change set, retrying on a lost optimistic lock.
//! * [`EngineOptions`]: what a deployment tunes (the timer lock), given at construction.
//! * [`Clock`]: all time comes from here, so tests and drills can move it.
//! * [`health`] and [`supervise`]: background work (the timer driver, ...) runs in a
//!   supervised loop and reports its state for `/health`.

pub mod actor;
mod clock;
pub mod core;
mod error;
pub mod health;
mod hot;
pub mod metrics;
mod options;
mod service;
pub mod supervise;
mod sync;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::EngineError;
pub use health::{ComponentHealth, ComponentReport, Components};
pub use options::EngineOptions;
pub use service::{CORRUPT_STATE, DeployedDefinition, Engine, ExternalFailure, StartRequest};
pub use supervise::{Backoff, supervise};
