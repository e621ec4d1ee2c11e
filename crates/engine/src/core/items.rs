//! Work items a token waits for: user tasks, external tasks, timers.

use serde_json::Value;
use steadyflow_expr::{Context, Expression};
use steadyflow_model::{TimerDef, UserTaskDef};
use steadyflow_store::{ExternalTaskRecord, TaskRecord, TimerRecord, Timestamp, Vars};

use super::exec::{Transition, new_id};
use super::runtime::Wait;

impl Transition<'_> {
    /// Creates the user task `ut` of element `el` for token `tid`.
    pub(super) fn create_user_task(
        &mut self,
        tid: u64,
        el: usize,
        ut: &UserTaskDef,
    ) -> Result<(), String> {
        let e = &self.def.elements[el];
        let (name, assignee, users, groups) = self.with_ctx(tid, |ctx| -> Result<_, String> {
            let name = match &ut.name {
                Some(x) => Some(x.eval_string(ctx).map_err(|e| e.to_string())?),
                None => e.name.clone(),
            };
            // An expression that yields null (or "") leaves the task unassigned.
            let assignee = match &ut.assignee {
                Some(x) => match x.eval(ctx).map_err(|e| e.to_string())? {
                    Value::Null => None,
                    Value::String(s) if s.is_empty() => None,
                    Value::String(s) => Some(s),
                    other => Some(other.to_string()),
                },
                None => None,
            };
            Ok((
                name,
                assignee,
                people(&ut.candidate_users, ctx)?,
                people(&ut.candidate_groups, ctx)?,
            ))
        })?;
        let task_id = new_id();
        self.cs.tasks_created.push(TaskRecord {
            id: task_id.clone(),
            instance_id: self.inst.id.clone(),
            definition_id: self.inst.definition_id.clone(),
            activity_id: e.id.clone(),
            name,
            assignee,
            candidate_users: users,
            candidate_groups: groups,
            created_at: self.now,
        });
        self.token_mut(tid).wait = Wait::UserTask { task_id };
        Ok(())
    }

    /// Creates the external task of element `el` (on `topic`) for token `tid`.
    pub(super) fn create_external_task(
        &mut self,
        tid: u64,
        el: usize,
        topic: &Expression,
    ) -> Result<(), String> {
        let e = &self.def.elements[el];
        let mut locals = Vars::new();
        for m in &e.inputs {
            let v = self
                .with_ctx(tid, |ctx| m.source.eval(ctx))
                .map_err(|err| err.to_string())?;
            locals.insert(m.target.clone(), v);
        }
        self.token_mut(tid).locals = locals;
        let topic = self
            .with_ctx(tid, |ctx| topic.eval_string(ctx))
            .map_err(|err| err.to_string())?;
        let task_id = new_id();
        self.cs.external_upserted.push(ExternalTaskRecord {
            id: task_id.clone(),
            instance_id: self.inst.id.clone(),
            definition_id: self.inst.definition_id.clone(),
            activity_id: e.id.clone(),
            topic,
            worker_id: None,
            lock_expires_at: None,
            // `zeebe:taskDefinition retries` sets the initial count; Camunda 7 has none.
            retries: match &e.kind {
                steadyflow_model::ElementKind::ExternalTask { retries, .. } => *retries,
                _ => None,
            },
            error_message: None,
            retry_at: None,
            created_at: self.now,
        });
        self.new_externals.push(task_id.clone());
        self.token_mut(tid).wait = Wait::ExternalTask { task_id };
        Ok(())
    }

    /// Arms the timer `td` of the catch event `el` for token `tid`.
    pub(super) fn create_timer(
        &mut self,
        tid: u64,
        el: usize,
        td: &TimerDef,
    ) -> Result<(), String> {
        let due = self.due(tid, td)?;
        let timer_id = self.add_timer(&self.def.elements[el].id, due);
        self.token_mut(tid).wait = Wait::Timer { timer_id };
        Ok(())
    }

    /// When a timer definition falls due, evaluated in token `tid`'s scope.
    pub(super) fn due(&self, tid: u64, td: &TimerDef) -> Result<Timestamp, String> {
        self.with_ctx(tid, |ctx| self.due_in(ctx, td))
    }

    /// When a timer definition falls due, evaluated in `ctx`.
    pub(super) fn due_in(&self, ctx: &dyn Context, td: &TimerDef) -> Result<Timestamp, String> {
        match td {
            TimerDef::Duration(x) => {
                let text = x.eval_string(ctx).map_err(|e| e.to_string())?;
                steadyflow_model::parse_duration(&text)
                    .and_then(|d| d.after(self.now))
                    .ok_or_else(|| format!("`{text}` is not an ISO-8601 duration"))
            }
            TimerDef::Date(x) => {
                let text = x.eval_string(ctx).map_err(|e| e.to_string())?;
                steadyflow_model::parse_date_time(&text)
                    .ok_or_else(|| format!("`{text}` is not an ISO-8601 date-time"))
            }
        }
    }

    pub(super) fn add_timer(&mut self, activity_id: &str, due: Timestamp) -> String {
        let timer_id = new_id();
        self.cs.timers_created.push(TimerRecord {
            id: timer_id.clone(),
            instance_id: self.inst.id.clone(),
            activity_id: activity_id.to_string(),
            due_at: due,
            owner: None,
            lock_until: None,
            created_at: self.now,
        });
        timer_id
    }
}

/// Candidate users/groups: each expression gives a comma separated string or a list.
fn people(exprs: &[steadyflow_expr::Expression], ctx: &dyn Context) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for x in exprs {
        match x.eval(ctx).map_err(|e| e.to_string())? {
            Value::Array(items) => out.extend(items.iter().map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })),
            Value::String(s) => out.extend(
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            ),
            Value::Null => {}
            other => out.push(other.to_string()),
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    Ok(out)
}
