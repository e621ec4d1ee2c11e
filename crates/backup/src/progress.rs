//! Progress reporting seam: the CLI draws bars (indicatif) on a terminal; tests and
//! automation pass nothing.

use std::sync::Arc;

pub trait ProgressSink: Send + Sync {
    /// A new step began ("exporting tables", "writing archive", ...).
    fn stage(&self, name: &str);
    /// `rows` more rows passed; `bytes` is the running byte count of the current file.
    fn rows(&self, rows: u64, bytes: u64);
}

/// Cheap to clone; does nothing without a sink.
#[derive(Clone, Default)]
pub struct Progress {
    sink: Option<Arc<dyn ProgressSink>>,
}

impl Progress {
    pub fn new(sink: Arc<dyn ProgressSink>) -> Self {
        Progress { sink: Some(sink) }
    }

    pub fn none() -> Self {
        Progress::default()
    }

    pub fn stage(&self, name: &str) {
        if let Some(s) = &self.sink {
            s.stage(name);
        }
    }

    pub fn rows(&self, rows: u64, bytes: u64) {
        if let Some(s) = &self.sink {
            s.rows(rows, bytes);
        }
    }
}
