//! Deploy versioning: per key, a definition whose checksum equals the latest stored
//! version's is that version again; any other is stored as the next version.

use crate::journal::JournalEntry;
use crate::{DefinitionRecord, Deployed, JournalOp, NewDefinition, Result, Timestamp};

/// What deploying `new` comes to, given the latest stored version of its key. When
/// `created`, the backend inserts the returned record (id `"{key}:{version}"`) and
/// journals it.
pub fn next_version(
    latest: Option<DefinitionRecord>,
    new: &NewDefinition,
    now: Timestamp,
) -> Deployed {
    let version = match latest {
        Some(l) if l.checksum == new.checksum => {
            return Deployed {
                definition: l,
                created: false,
            };
        }
        Some(l) => l.version + 1,
        None => 1,
    };
    Deployed {
        definition: DefinitionRecord {
            id: format!("{}:{version}", new.key),
            key: new.key.clone(),
            version,
            name: new.name.clone(),
            checksum: new.checksum.clone(),
            xml: Some(new.xml.clone()),
            deployed_at: now,
        },
        created: true,
    }
}

/// The journal entries of a deploy: one insert per created definition.
pub fn journal(deployed: &[Deployed]) -> Result<Vec<JournalEntry<'_>>> {
    deployed
        .iter()
        .filter(|d| d.created)
        .map(|d| JournalEntry::of(JournalOp::Insert, &d.definition))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(checksum: &str) -> NewDefinition {
        NewDefinition {
            key: "order".into(),
            name: Some("Order".into()),
            xml: format!("<x c='{checksum}'/>"),
            checksum: checksum.into(),
        }
    }

    #[test]
    fn first_same_and_changed() {
        let now = Timestamp::from_timestamp_millis(5).unwrap();
        let first = next_version(None, &def("a"), now);
        assert!(first.created);
        assert_eq!(
            (first.definition.id.as_str(), first.definition.version),
            ("order:1", 1)
        );
        let same = next_version(Some(first.definition.clone()), &def("a"), now);
        assert!(!same.created);
        assert_eq!(same.definition, first.definition);
        let changed = next_version(Some(first.definition), &def("b"), now);
        assert!(changed.created);
        assert_eq!(changed.definition.id, "order:2");
        assert_eq!(changed.definition.xml.as_deref(), Some("<x c='b'/>"));
        assert_eq!(changed.definition.deployed_at, now);
        let all = [same, changed];
        let entries = journal(&all).unwrap();
        assert_eq!(entries.len(), 1, "only what was created is journaled");
        assert_eq!(&*entries[0].entity_id, "order:2");
    }
}
