//! Row images: the JSON a change set's rows are journaled as, serialized once by the
//! caller before the change set is queued, so a store's writer only writes.

use serde_json::value::RawValue;

use crate::{ChangeSet, Result, StoreError, encode_history};

/// JSON text of a change set's row images, one per row it writes, in the change set's
/// order.
#[derive(Debug)]
pub struct RowImages {
    pub instance: Box<RawValue>,
    pub tasks: Vec<Box<RawValue>>,
    pub external: Vec<Box<RawValue>>,
    pub timers: Vec<Box<RawValue>>,
    pub incidents: Vec<Box<RawValue>>,
    /// The change set's history records ([`encode_history`]): the content of its
    /// history row, and the image of its journal `append` row.
    pub history: Option<Box<RawValue>>,
}

impl RowImages {
    pub fn of(change: &ChangeSet) -> Result<RowImages> {
        Ok(RowImages {
            instance: image("instance", &change.instance)?,
            tasks: all("task", &change.tasks_created)?,
            external: all("externalTask", &change.external_upserted)?,
            timers: all("timer", &change.timers_created)?,
            incidents: all("incident", &change.incidents_created)?,
            history: encode_history(&change.instance.id, &change.history)
                .map_err(|e| serialize_err("history", e))?,
        })
    }
}

/// Serializes a row straight to JSON text (no intermediate `Value` tree).
pub fn image<T: serde::Serialize + ?Sized>(what: &str, row: &T) -> Result<Box<RawValue>> {
    serde_json::value::to_raw_value(row).map_err(|e| serialize_err(what, e))
}

fn all<T: serde::Serialize>(what: &str, rows: &[T]) -> Result<Vec<Box<RawValue>>> {
    rows.iter().map(|r| image(what, r)).collect()
}

fn serialize_err(what: &str, e: serde_json::Error) -> StoreError {
    StoreError::Backend(format!("serializing {what}: {e}"))
}
