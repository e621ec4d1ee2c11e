//! Cases: the store answers, and deploys version definitions by checksum.

use std::sync::Arc;

use crate::*;

use super::fixtures::*;

pub async fn ping(store: Arc<dyn Store>) {
    store.ping().await.expect("ping failed");
    assert!(
        matches!(store.backend(), "sqlite" | "postgres" | "memory"),
        "backend() must name the backend, got {:?}",
        store.backend()
    );
}

pub async fn deploy_versions(store: Arc<dyn Store>) {
    let first = store
        .deploy(vec![new_def("order", "c1")], at(0))
        .await
        .expect("first deploy");
    assert_eq!(first.len(), 1, "one definition deployed, one result");
    let v1 = &first[0];
    assert!(v1.created, "first deploy of a key must create it");
    assert_eq!(
        v1.definition.id, "order:1",
        "definition id is <key>:<version>"
    );
    assert_eq!(v1.definition.key, "order");
    assert_eq!(v1.definition.version, 1);
    assert_eq!(v1.definition.checksum, "c1");
    assert_eq!(v1.definition.name.as_deref(), Some("order process"));
    assert_eq!(v1.definition.deployed_at, at(0));

    let again = store
        .deploy(vec![new_def("order", "c1")], at(1_000))
        .await
        .expect("redeploy");
    assert_eq!(again.len(), 1);
    assert!(
        !again[0].created,
        "an unchanged checksum must not create a version"
    );
    assert_eq!(
        again[0].definition.id, "order:1",
        "unchanged checksum returns the existing version"
    );
    assert_eq!(again[0].definition.version, 1);
    assert_eq!(
        again[0].definition.deployed_at,
        at(0),
        "the existing record is returned, not a new one"
    );

    let changed = store
        .deploy(vec![new_def("order", "c2")], at(2_000))
        .await
        .expect("changed deploy");
    assert!(changed[0].created, "a changed checksum creates a version");
    assert_eq!(changed[0].definition.id, "order:2");
    assert_eq!(changed[0].definition.version, 2);
    assert_eq!(changed[0].definition.deployed_at, at(2_000));

    let two = store
        .deploy(
            vec![new_def("invoice", "i1"), new_def("shipping", "s1")],
            at(3_000),
        )
        .await
        .expect("two-key deploy");
    assert_eq!(two.len(), 2, "two keys in one call, two results");
    assert_eq!(
        two[0].definition.id, "invoice:1",
        "results follow the input order"
    );
    assert_eq!(
        two[1].definition.id, "shipping:1",
        "results follow the input order"
    );
    assert!(two.iter().all(|d| d.created));

    let latest = store
        .latest_definition("order")
        .await
        .unwrap()
        .expect("latest of order");
    assert_eq!(
        latest.version, 2,
        "latest_definition returns the highest version"
    );
    assert_eq!(latest.checksum, "c2");
    assert_eq!(
        latest.xml.as_deref(),
        Some(new_def("order", "c2").xml.as_str()),
        "latest carries its XML"
    );
    assert!(
        store.latest_definition("nope").await.unwrap().is_none(),
        "unknown key has no latest"
    );

    let listed = store
        .list_definitions(&DefinitionFilter {
            key: Some("order".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let versions: Vec<i32> = listed.iter().map(|d| d.version).collect();
    assert_eq!(versions, vec![2, 1], "list_definitions(key): newest first");
    assert!(
        listed.iter().all(|d| d.xml.is_none()),
        "listings carry no XML"
    );
    assert!(
        listed.iter().all(|d| d.key == "order"),
        "key filter respected"
    );

    let all = store
        .list_definitions(&DefinitionFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 4, "all definitions listed: {all:#?}");
    assert!(all.iter().all(|d| d.xml.is_none()), "listings carry no XML");
    let order_versions: Vec<i32> = all
        .iter()
        .filter(|d| d.key == "order")
        .map(|d| d.version)
        .collect();
    assert_eq!(order_versions, vec![2, 1], "newest first per key");

    let one = store
        .definition("order:1")
        .await
        .unwrap()
        .expect("definition order:1");
    assert_eq!(one.version, 1);
    assert_eq!(one.checksum, "c1");
    assert_eq!(
        one.xml.as_deref(),
        Some(new_def("order", "c1").xml.as_str()),
        "definition(id) carries XML"
    );
    assert!(
        store.definition("order:9").await.unwrap().is_none(),
        "unknown id is None"
    );
}
