//! Acquisitions as backends get them: the trait's `fetch_and_lock` and
//! `acquire_due_timers` normalise a request once, for every backend.

use crate::{Timestamp, TopicLock};

/// A fetch-and-lock as backends get it ([`Store::lock_tasks`]): at least one topic,
/// each once, and `max > 0`.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskLocking<'a> {
    pub worker: &'a str,
    pub max: usize,
    pub topics: &'a [TopicLock],
    pub now: Timestamp,
}

impl TaskLocking<'_> {
    /// The lock duration of `topic` (one of the request's).
    pub fn lock_duration_ms(&self, topic: &str) -> i64 {
        self.topics
            .iter()
            .find(|t| t.topic == topic)
            .map_or(0, |t| t.lock_duration_ms)
    }
}

/// A timer acquisition as backends get it ([`Store::lock_due_timers`]): `limit > 0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimerLocking<'a> {
    pub owner: &'a str,
    pub now: Timestamp,
    pub lock_until: Timestamp,
    pub limit: usize,
}

/// `topics` with each topic once (its first lock duration wins); borrowed when they
/// are distinct already, as the engine sends them.
pub(crate) fn distinct_topics(topics: &[TopicLock]) -> std::borrow::Cow<'_, [TopicLock]> {
    let seen_before = |i: usize| topics[..i].iter().any(|t| t.topic == topics[i].topic);
    if !(0..topics.len()).any(seen_before) {
        return std::borrow::Cow::Borrowed(topics);
    }
    let mut out: Vec<TopicLock> = Vec::with_capacity(topics.len());
    for t in topics {
        if !out.iter().any(|o| o.topic == t.topic) {
            out.push(t.clone());
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(topic: &str, ms: i64) -> TopicLock {
        TopicLock {
            topic: topic.into(),
            lock_duration_ms: ms,
        }
    }

    #[test]
    fn a_topic_listed_twice_counts_once_with_its_first_duration() {
        let distinct = [lock("a", 1), lock("b", 2)];
        assert!(matches!(
            distinct_topics(&distinct),
            std::borrow::Cow::Borrowed(_)
        ));
        let twice = [lock("a", 1), lock("b", 2), lock("a", 3)];
        assert_eq!(&*distinct_topics(&twice), &distinct[..]);
        let request = TaskLocking {
            worker: "w",
            max: 1,
            topics: &distinct,
            now: Timestamp::from_timestamp_millis(0).unwrap(),
        };
        assert_eq!(request.lock_duration_ms("b"), 2);
    }
}
