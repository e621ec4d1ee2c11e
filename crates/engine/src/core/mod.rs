//! The pure token state machine: `(definition, instance, command) -> change set`.
//!
//! Synchronous and free of IO. A [`Transition`] is opened on an instance, fed one
//! command, run to rest (every token at a wait state, an incident, or ended), and
//! closed with [`Transition::finish`], which yields the [`ChangeSet`] to commit.

mod exec;
mod flows;
mod items;
pub mod runtime;

pub(crate) use exec::new_id;
pub use exec::{CoreError, Transition};
pub use runtime::{Runtime, Token, Wait};
