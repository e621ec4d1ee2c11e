//! How a change set's history records are stored: one compact JSON document per change
//! set (the `events` of its history row and the image of its journal `append` row).
//!
//! `{"time": T, "events": [{"event": "activityStarted", "activityId": "a", "detail": …}]}`
//!
//! The instance id is the row's own (history `instance_id`, journal `entity_id`), and the
//! time is written once: every record of one command shares it. A record that differs
//! (not made by the engine) keeps its own `time` / `instanceId`, so encoding loses
//! nothing. Repeating both in every record had made history half of all bytes written.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::{HistoryEvent, HistoryRecord, Timestamp};

#[derive(Deserialize)]
struct Batch {
    time: Timestamp,
    events: Vec<Event>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    event: HistoryEvent,
    #[serde(default)]
    activity_id: Option<String>,
    #[serde(default)]
    detail: Value,
    #[serde(default)]
    time: Option<Timestamp>,
    #[serde(default)]
    instance_id: Option<String>,
}

/// The written form of [`Batch`], borrowing from the records (nothing is copied).
#[derive(Serialize)]
struct BatchRef<'a> {
    time: Timestamp,
    events: EventsRef<'a>,
}

struct EventsRef<'a> {
    owner: &'a str,
    time: Timestamp,
    records: &'a [HistoryRecord],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventRef<'a> {
    event: HistoryEvent,
    #[serde(skip_serializing_if = "Option::is_none")]
    activity_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Value::is_null")]
    detail: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_id: Option<&'a str>,
}

impl Serialize for EventsRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.records.iter().map(|r| EventRef {
            event: r.event,
            activity_id: r.activity_id.as_deref(),
            detail: &r.detail,
            time: (r.time != self.time).then_some(r.time),
            instance_id: (r.instance_id != self.owner).then_some(r.instance_id.as_str()),
        }))
    }
}

/// The stored form of `records` (all of one change set on instance `owner`); `None`
/// when there are none.
pub fn encode_history(
    owner: &str,
    records: &[HistoryRecord],
) -> Result<Option<Box<RawValue>>, serde_json::Error> {
    let Some(first) = records.first() else {
        return Ok(None);
    };
    let batch = BatchRef {
        time: first.time,
        events: EventsRef {
            owner,
            time: first.time,
            records,
        },
    };
    serde_json::value::to_raw_value(&batch).map(Some)
}

/// The records of a stored history document of instance `owner`. Also reads the
/// earlier form, a plain array of whole records. An event name this binary does not
/// know is an error (the stores report the row as corrupt).
pub fn decode_history(owner: &str, text: &str) -> Result<Vec<HistoryRecord>, serde_json::Error> {
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(text);
    }
    let batch: Batch = serde_json::from_str(text)?;
    Ok(batch
        .events
        .into_iter()
        .map(|e| HistoryRecord {
            instance_id: e.instance_id.unwrap_or_else(|| owner.to_string()),
            time: e.time.unwrap_or(batch.time),
            event: e.event,
            activity_id: e.activity_id,
            detail: e.detail,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn rec(
        instance: &str,
        ms: i64,
        event: HistoryEvent,
        activity: Option<&str>,
        detail: Value,
    ) -> HistoryRecord {
        HistoryRecord {
            instance_id: instance.into(),
            time: chrono::Utc.timestamp_millis_opt(ms).unwrap(),
            event,
            activity_id: activity.map(Into::into),
            detail,
        }
    }

    #[test]
    fn round_trips_and_writes_shared_fields_once() {
        let records = vec![
            rec(
                "i1",
                1000,
                HistoryEvent::InstanceStarted,
                None,
                json!({"definitionId": "p:1"}),
            ),
            rec(
                "i1",
                1000,
                HistoryEvent::ActivityStarted,
                Some("start"),
                Value::Null,
            ),
            rec(
                "i1",
                2000,
                HistoryEvent::ActivityCompleted,
                Some("start"),
                Value::Null,
            ),
            rec(
                "other",
                1000,
                HistoryEvent::VariablesChanged,
                None,
                json!([1, 2]),
            ),
        ];
        let text = encode_history("i1", &records).unwrap().unwrap();
        let text = text.get();
        assert_eq!(text.matches("\"time\"").count(), 2, "{text}");
        assert_eq!(text.matches("i1").count(), 0, "{text}");
        assert_eq!(decode_history("i1", text).unwrap(), records);
        assert!(encode_history("i1", &[]).unwrap().is_none());
    }

    #[test]
    fn reads_the_earlier_array_form() {
        let records = vec![rec(
            "i1",
            5,
            HistoryEvent::InstanceCompleted,
            None,
            Value::Null,
        )];
        let text = serde_json::to_string(&records).unwrap();
        assert_eq!(decode_history("i1", &text).unwrap(), records);
        assert!(decode_history("i1", "{\"time\": 3}").is_err());
    }

    #[test]
    fn an_unknown_event_is_an_error_not_a_guess() {
        let text = r#"{"time": "2024-01-01T00:00:00Z", "events": [{"event": "teleported"}]}"#;
        let err = decode_history("i1", text).unwrap_err();
        assert!(err.to_string().contains("teleported"), "{err}");
    }
}
