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

use crate::{HistoryRecord, Timestamp};

#[derive(Serialize, Deserialize)]
struct Batch {
    time: Timestamp,
    events: Vec<Event>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    activity_id: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    detail: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instance_id: Option<String>,
}

/// The stored form of `records` (all of one change set on instance `owner`); `None`
/// when there are none.
pub fn encode_history(owner: &str, records: &[HistoryRecord]) -> Option<String> {
    let time = records.first()?.time;
    let batch = Batch {
        time,
        events: records
            .iter()
            .map(|r| Event {
                event: r.event.clone(),
                activity_id: r.activity_id.clone(),
                detail: r.detail.clone(),
                time: (r.time != time).then_some(r.time),
                instance_id: (r.instance_id != owner).then(|| r.instance_id.clone()),
            })
            .collect(),
    };
    Some(serde_json::to_string(&batch).expect("history serializes"))
}

/// The records of a stored history document of instance `owner`. Also reads the
/// earlier form, a plain array of whole records.
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
        event: &str,
        activity: Option<&str>,
        detail: Value,
    ) -> HistoryRecord {
        HistoryRecord {
            instance_id: instance.into(),
            time: chrono::Utc.timestamp_millis_opt(ms).unwrap(),
            event: event.into(),
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
                "instanceStarted",
                None,
                json!({"definitionId": "p:1"}),
            ),
            rec("i1", 1000, "activityStarted", Some("start"), Value::Null),
            rec("i1", 2000, "activityCompleted", Some("start"), Value::Null),
            rec("other", 1000, "odd", None, json!([1, 2])),
        ];
        let text = encode_history("i1", &records).unwrap();
        assert_eq!(text.matches("\"time\"").count(), 2, "{text}");
        assert_eq!(text.matches("i1").count(), 0, "{text}");
        assert_eq!(decode_history("i1", &text).unwrap(), records);
        assert_eq!(encode_history("i1", &[]), None);
    }

    #[test]
    fn reads_the_earlier_array_form() {
        let records = vec![rec("i1", 5, "instanceCompleted", None, Value::Null)];
        let text = serde_json::to_string(&records).unwrap();
        assert_eq!(decode_history("i1", &text).unwrap(), records);
        assert!(decode_history("i1", "{\"time\": 3}").is_err());
    }
}
