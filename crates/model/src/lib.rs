//! BPMN 2.0 XML (as Camunda Modeler and bpmn.io save it) -> validated process graphs.
//!
//! No IO, no async. [`parse_definitions`] turns one XML document into one
//! [`ProcessDefinition`] per executable `<process>`. Anything the engine cannot run yet is
//! refused here with [`ModelError::Unsupported`], naming the element and its id, so a
//! model is never deployed and then run wrongly.

mod error;
mod graph;
mod parse;
mod timer;

pub use error::ModelError;
pub use graph::{
    Element, ElementKind, Flow, IoMapping, ProcessDefinition, Thrown, TimerDef, UserTaskDef,
};
pub use parse::parse_definitions;
pub use steadyflow_expr as expr;
pub use timer::{IsoDuration, parse_date_time, parse_duration};
