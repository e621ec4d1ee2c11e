//! The journal entries of a write, built the same way on every backend: which rows, in
//! which order, with which operation and image. A backend runs its statements, records
//! in [`Effects`] what they actually did, and binds the entries [`entries`] yields.

use std::borrow::Cow;

use serde_json::value::RawValue;

use crate::images::image;
use crate::{
    ChangeSet, DefinitionRecord, ExternalTaskRecord, IncidentRecord, InstanceRecord, JournalEntity,
    JournalOp, Result, RowImages, TaskRecord, TimerRecord,
};

/// A journal row to append in the current transaction; borrows what it can.
#[derive(Debug, Clone)]
pub struct JournalEntry<'a> {
    pub entity: JournalEntity,
    pub entity_id: Cow<'a, str>,
    pub op: JournalOp,
    /// Row image as JSON text; `None` for deletes.
    pub row: Option<Cow<'a, RawValue>>,
}

/// A record with a journal entity and an id.
pub trait Journaled: serde::Serialize {
    const ENTITY: JournalEntity;
    fn id(&self) -> &str;
}

macro_rules! journaled {
    ($($record:ty => $entity:ident),+ $(,)?) => {
        $(impl Journaled for $record {
            const ENTITY: JournalEntity = JournalEntity::$entity;
            fn id(&self) -> &str {
                &self.id
            }
        })+
    };
}

journaled! {
    DefinitionRecord => Definition,
    InstanceRecord => Instance,
    TaskRecord => Task,
    ExternalTaskRecord => ExternalTask,
    TimerRecord => Timer,
    IncidentRecord => Incident,
}

impl<'a> JournalEntry<'a> {
    /// `row` after `op`, serialized now.
    pub fn of<T: Journaled>(op: JournalOp, row: &'a T) -> Result<Self> {
        Ok(JournalEntry {
            entity: T::ENTITY,
            entity_id: Cow::Borrowed(row.id()),
            op,
            row: Some(Cow::Owned(image(T::ENTITY.as_str(), row)?)),
        })
    }

    /// With an image serialized already.
    pub fn image(entity: JournalEntity, id: &'a str, op: JournalOp, row: &'a RawValue) -> Self {
        JournalEntry {
            entity,
            entity_id: Cow::Borrowed(id),
            op,
            row: Some(Cow::Borrowed(row)),
        }
    }

    pub fn delete(entity: JournalEntity, id: &'a str) -> Self {
        JournalEntry {
            entity,
            entity_id: Cow::Borrowed(id),
            op: JournalOp::Delete,
            row: None,
        }
    }

    /// A copy that borrows nothing (for an entry that outlives the row it images).
    pub fn into_owned(self) -> JournalEntry<'static> {
        JournalEntry {
            entity: self.entity,
            entity_id: Cow::Owned(self.entity_id.into_owned()),
            op: self.op,
            row: self.row.map(|r| Cow::Owned(r.into_owned())),
        }
    }

    /// The image's JSON text, `None` for deletes.
    pub fn row_text(&self) -> Option<&str> {
        self.row.as_deref().map(RawValue::get)
    }
}

/// What a change set's statements actually did, where the journal depends on it. Only
/// the exceptions are recorded, so the usual outcome (every delete removes its row,
/// every upserted external task is new, nothing resolved) costs nothing. A backend
/// writing several change sets in one statement may record all of theirs in one
/// `Effects` (row ids are unique).
#[derive(Debug, Default)]
pub struct Effects<'r> {
    /// Rows a delete did not find (another command removed them first): not journaled.
    pub missed: Vec<&'r str>,
    /// External tasks whose upsert replaced a stored row: journaled as updates, the
    /// others as inserts.
    pub replaced: Vec<&'r str>,
    /// Incidents resolved, as stored now; one that was not found is not journaled.
    pub resolved: Vec<IncidentRecord>,
}

impl Effects<'_> {
    fn deleted(&self, id: &str) -> bool {
        !self.missed.contains(&id)
    }

    fn upsert_op(&self, id: &str) -> JournalOp {
        if self.replaced.contains(&id) {
            JournalOp::Update
        } else {
            JournalOp::Insert
        }
    }
}

/// Appends the journal entries of `change` (whose rows were written, with these
/// `effects`) to `out`, in the order every backend writes them: instance, tasks
/// removed and created, external tasks removed and upserted, timers removed and
/// created, incidents created and resolved, history.
pub fn entries<'a>(
    change: &'a ChangeSet,
    images: &'a RowImages,
    effects: &Effects<'_>,
    out: &mut Vec<JournalEntry<'a>>,
) -> Result<()> {
    use JournalEntity as E;
    use JournalOp as Op;
    let id = change.instance.id.as_str();
    let op = if change.expected_version.is_some() {
        Op::Update
    } else {
        Op::Insert
    };
    out.push(JournalEntry::image(E::Instance, id, op, &images.instance));
    let deletes = |entity, ids: &'a [String], out: &mut Vec<JournalEntry<'a>>| {
        for id in ids.iter().filter(|id| effects.deleted(id)) {
            out.push(JournalEntry::delete(entity, id));
        }
    };
    deletes(E::Task, &change.tasks_removed, out);
    for (t, image) in change.tasks_created.iter().zip(&images.tasks) {
        out.push(JournalEntry::image(E::Task, &t.id, Op::Insert, image));
    }
    deletes(E::ExternalTask, &change.external_removed, out);
    for (e, image) in change.external_upserted.iter().zip(&images.external) {
        let op = effects.upsert_op(&e.id);
        out.push(JournalEntry::image(E::ExternalTask, &e.id, op, image));
    }
    deletes(E::Timer, &change.timers_removed, out);
    for (t, image) in change.timers_created.iter().zip(&images.timers) {
        out.push(JournalEntry::image(E::Timer, &t.id, Op::Insert, image));
    }
    for (i, image) in change.incidents_created.iter().zip(&images.incidents) {
        out.push(JournalEntry::image(E::Incident, &i.id, Op::Insert, image));
    }
    for id in &change.incidents_resolved {
        if let Some(row) = effects.resolved.iter().find(|r| r.id == *id) {
            out.push(JournalEntry {
                entity: E::Incident,
                entity_id: Cow::Borrowed(id),
                op: Op::Update,
                row: Some(Cow::Owned(image("incident", row)?)),
            });
        }
    }
    if let Some(events) = &images.history {
        out.push(JournalEntry::image(E::History, id, Op::Append, events));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{HistoryEvent, HistoryRecord, IncidentType, InstanceState, Timestamp};

    fn t0() -> Timestamp {
        Timestamp::from_timestamp_millis(1_000).unwrap()
    }

    fn change(expected: Option<i64>) -> ChangeSet {
        let inst = InstanceRecord {
            id: "i".into(),
            definition_id: "p:1".into(),
            definition_key: "p".into(),
            business_key: None,
            state: InstanceState::Active,
            variables: Default::default(),
            runtime: json!({}).into(),
            version: 2,
            started_at: t0(),
            ended_at: None,
        };
        let mut c = ChangeSet::new(inst, expected, t0());
        c.tasks_removed = vec!["t-gone".into(), "t-missing".into()];
        c.tasks_created = vec![TaskRecord {
            id: "t-new".into(),
            instance_id: "i".into(),
            definition_id: "p:1".into(),
            activity_id: "a".into(),
            name: None,
            assignee: None,
            candidate_users: vec![],
            candidate_groups: vec![],
            created_at: t0(),
        }];
        let external = |id: &str| ExternalTaskRecord {
            id: id.into(),
            instance_id: "i".into(),
            definition_id: "p:1".into(),
            activity_id: "b".into(),
            topic: "pay".into(),
            worker_id: None,
            lock_expires_at: None,
            retries: None,
            error_message: None,
            retry_at: None,
            created_at: t0(),
        };
        c.external_upserted = vec![external("e-new"), external("e-old")];
        c.timers_removed = vec!["tm".into()];
        c.incidents_resolved = vec!["inc-1".into(), "inc-unknown".into()];
        c.history = vec![HistoryRecord {
            instance_id: "i".into(),
            time: t0(),
            event: HistoryEvent::ActivityCompleted,
            activity_id: Some("a".into()),
            detail: serde_json::Value::Null,
        }];
        c
    }

    fn resolved() -> IncidentRecord {
        IncidentRecord {
            id: "inc-1".into(),
            instance_id: "i".into(),
            activity_id: "g".into(),
            incident_type: IncidentType::NoMatchingFlow,
            message: "m".into(),
            external_task_id: None,
            created_at: t0(),
            resolved_at: Some(t0()),
        }
    }

    #[test]
    fn entries_follow_the_change_set_and_what_happened() {
        let c = change(Some(1));
        let images = RowImages::of(&c).unwrap();
        let effects = Effects {
            missed: vec!["t-missing"],
            replaced: vec!["e-old"],
            resolved: vec![resolved()],
        };
        let mut out = Vec::new();
        entries(&c, &images, &effects, &mut out).unwrap();
        let got: Vec<(&str, &str, &str)> = out
            .iter()
            .map(|e| (e.entity.as_str(), &*e.entity_id, e.op.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("instance", "i", "update"),
                ("task", "t-gone", "delete"),
                ("task", "t-new", "insert"),
                ("externalTask", "e-new", "insert"),
                ("externalTask", "e-old", "update"),
                ("timer", "tm", "delete"),
                ("incident", "inc-1", "update"),
                ("history", "i", "append"),
            ]
        );
        assert!(out[1].row.is_none(), "a delete has no image");
        assert_eq!(out[0].row_text(), Some(images.instance.get()));
        let resolved_image: serde_json::Value =
            serde_json::from_str(out[6].row_text().unwrap()).unwrap();
        assert_eq!(resolved_image["resolvedAt"], json!("1970-01-01T00:00:01Z"));
    }

    #[test]
    fn a_new_instance_is_an_insert() {
        let mut c = change(None);
        c.tasks_removed.clear();
        let images = RowImages::of(&c).unwrap();
        let mut out = Vec::new();
        entries(&c, &images, &Effects::default(), &mut out).unwrap();
        assert_eq!(
            (out[0].entity, out[0].op),
            (JournalEntity::Instance, JournalOp::Insert)
        );
        assert!(
            out.iter().all(|e| e.entity != JournalEntity::Incident),
            "nothing resolved, nothing journaled: {out:?}"
        );
    }

    #[test]
    fn single_rows_are_journaled_with_their_entity() {
        let inc = resolved();
        let e = JournalEntry::of(JournalOp::Update, &inc).unwrap();
        assert_eq!(
            (e.entity, &*e.entity_id, e.op),
            (JournalEntity::Incident, "inc-1", JournalOp::Update)
        );
        assert_eq!(e.clone().into_owned().row_text(), e.row_text());
        assert!(
            e.row_text()
                .unwrap()
                .contains("\"incidentType\":\"noMatchingFlow\"")
        );
    }
}
