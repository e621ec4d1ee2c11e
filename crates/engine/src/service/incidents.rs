//! Incidents: listing, and retrying the element one stopped at.

use std::collections::HashSet;

use steadyflow_store::{IncidentFilter, IncidentRecord, InstanceRecord};

use super::corrupt::CORRUPT_STATE;
use super::{Engine, Result, Scope};
use crate::error::EngineError;

impl Engine {
    pub async fn incidents(&self, filter: &IncidentFilter) -> Result<Vec<IncidentRecord>> {
        Ok(self.store.list_incidents(filter).await?)
    }

    /// Retries the element an incident stopped at (after fixing its cause). For a
    /// `corruptState` incident: re-reads the repaired state and lets the instance go on
    /// (see [`super::corrupt`]).
    pub async fn retry_incident(&self, id: &str) -> Result<InstanceRecord> {
        let filter = IncidentFilter {
            instance_id: None,
            open: Some(true),
            ..Default::default()
        };
        let inc = self
            .store
            .list_incidents(&filter)
            .await?
            .into_iter()
            .find(|i| i.id == id)
            .ok_or_else(|| EngineError::not_found("open incident", id))?;
        if inc.external_task_id.is_some() {
            return Err(EngineError::BadRequest(
                "this incident belongs to an external task: set its retries instead".into(),
            ));
        }
        let inc_id = inc.id.as_str();
        let scope = Scope {
            on_stopped: inc.incident_type == CORRUPT_STATE,
            ..Scope::at(&inc.activity_id)
        };
        if inc.incident_type == CORRUPT_STATE {
            let timers: HashSet<String> = self
                .store
                .list_timers(&inc.instance_id)
                .await?
                .into_iter()
                .map(|t| t.id)
                .collect();
            return self
                .command(&inc.instance_id, scope, |tr| {
                    tr.resolve_corrupt_state(inc_id, &timers);
                    Ok(())
                })
                .await;
        }
        self.command(&inc.instance_id, scope, |tr| Ok(tr.retry_incident(inc_id)?))
            .await
    }
}
