//! What the recovery cases write: rows of every table through the store's own writes.

use std::collections::BTreeMap;

use serde_json::json;

use crate::conformance::fixtures::*;
use crate::conformance::poll::*;
use crate::*;

use super::journal_all;

/// An instance whose variables try the JSON carriers: quotes, escapes, newlines,
/// non-ASCII text, nesting, integers past 2^53, fractions, booleans and null.
pub fn rich_instance(id: &str, key: &str) -> InstanceRecord {
    InstanceRecord {
        business_key: Some(format!("bk \"{id}\"\n\tGrüße 😀")),
        variables: vars(json!({
            "text": "quote \" backslash \\ slash / tab \t newline \n end",
            "unicode": "Grüße, 東京, 😀",
            "nested": {"list": [1, "two", {"three": [3.5, null, true]}], "empty": {}, "none": []},
            "big": 9_007_199_254_740_993_i64,
            "negative": -42,
            "fraction": 0.25,
            "flag": false,
            "nothing": null,
        })),
        ..instance(id, key)
    }
}

/// Writes rows of every table through the store's own writes: deploys (a new version
/// too), instances with tasks, external tasks, timers, incidents and history, an update
/// that removes children, an ended instance, a claim, a fetch-and-lock and a timer
/// acquisition. `tag` prefixes every id and key; returns once the journal shows the
/// last write.
///
/// History records carry their change set's time, as the engine writes them: a
/// replayed history row takes its `time` column from its first record (the journal
/// image holds no other), while the store writes the change set's.
pub async fn populate(store: &dyn Store, tag: &str) {
    let key = |k: &str| format!("{tag}{k}");
    let ship = NewDefinition {
        key: key("ship"),
        name: None,
        xml: "<definitions name=\"Ship ‘it’\">\n\t<x a='1'/></definitions>".into(),
        checksum: "c1".into(),
    };
    store
        .deploy(vec![new_def(&key("order"), "c1"), ship], at(0))
        .await
        .expect("deploy");
    store
        .deploy(vec![new_def(&key("order"), "c2")], at(10))
        .await
        .expect("redeploy");

    let i1 = rich_instance(&key("i-1"), &key("order"));
    let mut c = ChangeSet::new(i1.clone(), None, at(20));
    c.tasks_created = vec![TaskRecord {
        candidate_users: vec!["ann".into(), "bob".into()],
        candidate_groups: vec!["clerks".into()],
        ..task(&key("t-1"), &i1.id, 20)
    }];
    c.external_upserted = vec![
        external(&key("e-1"), &i1.id, "pay", 20),
        external(&key("e-2"), &i1.id, &key("ship"), 20),
    ];
    c.timers_created = vec![
        timer(&key("tm-1"), &i1.id, 1_000),
        timer(&key("tm-2"), &i1.id, 5),
    ];
    c.incidents_created = vec![incident(&key("inc-1"), &i1.id, 20)];
    c.history = vec![
        hist(&i1.id, 20, "instanceStarted", 1),
        hist(&i1.id, 20, "activityStarted", 2),
    ];
    insert(store, c).await;

    let mut c = update_of(&i1);
    c.time = at(30);
    c.instance.variables.insert("step".into(), json!(2));
    c.tasks_removed = vec![key("t-1")];
    c.tasks_created = vec![task(&key("t-2"), &i1.id, 30)];
    c.external_upserted = vec![ExternalTaskRecord {
        retries: Some(2),
        error_message: Some("boom: \"quoted\"\nsecond line".into()),
        retry_at: Some(at(500)),
        ..external(&key("e-1"), &i1.id, "pay", 20)
    }];
    c.timers_removed = vec![key("tm-1")];
    c.incidents_resolved = vec![key("inc-1")];
    c.history = vec![hist(&i1.id, 30, "activityCompleted", 3)];
    store.apply(c).await.expect("update");

    let i2 = instance(&key("i-2"), &key("order"));
    let mut c = ChangeSet::new(i2.clone(), None, at(40));
    c.tasks_created = vec![task(&key("t-3"), &i2.id, 40)];
    c.history = vec![hist(&i2.id, 40, "instanceStarted", 1)];
    insert(store, c).await;
    let mut c = update_of(&i2);
    c.time = at(50);
    c.instance.state = InstanceState::Completed;
    c.instance.ended_at = Some(at(50));
    c.tasks_removed = vec![key("t-3")];
    c.history = vec![hist(&i2.id, 50, "instanceCompleted", 2)];
    store.apply(c).await.expect("complete");

    // Writes outside `apply`, journaled all the same.
    store
        .claim_task(&key("t-2"), "ann", at(60))
        .await
        .expect("claim");
    let locked = store
        .fetch_and_lock("worker-1", 5, &topics(&[(&key("ship"), 60_000)]), at(70))
        .await
        .expect("fetch and lock");
    assert_eq!(
        locked_ids(&locked),
        [key("e-2")],
        "the one task of the topic is locked"
    );
    let due = store
        .acquire_due_timers("node-1", at(80), at(10_080), 1)
        .await
        .expect("acquire timers");
    assert_eq!(due.len(), 1, "one due timer is acquired: {due:#?}");
    assert_eq!(due[0].id, key("tm-2"));

    // Stopped at an incident; no history.
    let i3 = InstanceRecord {
        state: InstanceState::Incident,
        definition_id: format!("{}:1", key("ship")),
        ..instance(&key("i-3"), &key("ship"))
    };
    let mut c = ChangeSet::new(i3.clone(), None, at(85));
    c.incidents_created = vec![incident(&key("inc-2"), &i3.id, 85)];
    insert(store, c).await;

    // Users and tokens (plain rows).
    let user = |id: &str, role| users::UserRecord {
        id: key(id),
        role,
        groups: vec!["clerks".into()],
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
        created_at: at(86),
        updated_at: at(86),
        disabled_at: None,
    };
    let token = |id: &str, user: &str| users::TokenRecord {
        id: key(id),
        user_id: key(user),
        label: Some("ci \"quoted\"".into()),
        hash: "ab".repeat(32),
        created_at: at(87),
        expires_at: Some(at(10_000)),
        revoked_at: None,
    };
    store
        .plain_write(
            at(88),
            vec![
                users::PlainWrite::put(&user("ann", users::Role::Operator)).unwrap(),
                users::PlainWrite::put(&user("bob", users::Role::Viewer)).unwrap(),
                users::PlainWrite::put(&token("tok-1", "ann")).unwrap(),
                users::PlainWrite::put(&token("tok-2", "bob")).unwrap(),
                // The service mode (one row, whatever the prefix).
                users::PlainWrite::put(&crate::mode::SystemModeRecord::new(
                    crate::mode::Mode::ReadOnly,
                    Some("maintenance \"window\"".into()),
                    Some(at(20_000)),
                    key("ann"),
                    at(88),
                ))
                .unwrap(),
            ],
        )
        .await
        .expect("users, tokens and the mode");

    let last = format!("{}:1", key("last"));
    store
        .deploy(vec![new_def(&key("last"), "c1")], at(90))
        .await
        .expect("deploy");
    journal_until(store, 0, "the last write of populate", |rows| {
        has(rows, "definition", &last, "insert")
    })
    .await;
}

/// Changes rows [`populate`]`(tag)` wrote: updates, deletes, new rows, a new version.
pub async fn change_populated(store: &dyn Store, tag: &str) {
    let key = |k: &str| format!("{tag}{k}");
    let i1 = store.instance(&key("i-1")).await.unwrap().expect("i-1");
    let mut c = update_of(&i1);
    c.time = at(100);
    c.instance.variables.insert("approved".into(), json!(true));
    c.tasks_removed = vec![key("t-2")];
    c.external_removed = vec![key("e-2")];
    c.external_upserted = vec![external(&key("e-1"), &i1.id, "pay", 20)];
    c.timers_removed = vec![key("tm-2")];
    c.timers_created = vec![timer(&key("tm-3"), &i1.id, 2_000)];
    c.incidents_created = vec![incident(&key("inc-3"), &i1.id, 100)];
    c.history = vec![
        hist(&i1.id, 100, "activityCompleted", 4),
        hist(&i1.id, 100, "activityStarted", 5),
    ];
    store.apply(c).await.expect("change i-1");
    let i3 = store.instance(&key("i-3")).await.unwrap().expect("i-3");
    let mut c = update_of(&i3);
    c.time = at(110);
    c.instance.state = InstanceState::Active;
    c.incidents_resolved = vec![key("inc-2")];
    c.history = vec![hist(&i3.id, 110, "incidentResolved", 1)];
    store.apply(c).await.expect("change i-3");
    // A user disabled, another removed with their token, a token revoked.
    let mut ann: users::UserRecord = users::one(store, &key("ann")).await.unwrap().expect("ann");
    ann.disabled_at = Some(at(115));
    let mut tok: users::TokenRecord = users::one(store, &key("tok-1"))
        .await
        .unwrap()
        .expect("tok-1");
    tok.revoked_at = Some(at(115));
    store
        .plain_write(
            at(115),
            vec![
                users::PlainWrite::put(&ann).unwrap(),
                users::PlainWrite::put(&tok).unwrap(),
                users::PlainWrite::delete::<users::UserRecord>(&key("bob")),
                users::PlainWrite::delete::<users::TokenRecord>(&key("tok-2")),
            ],
        )
        .await
        .expect("change users");
    store
        .deploy(vec![new_def(&key("order"), "c3")], at(120))
        .await
        .expect("deploy");
}

/// An instance `{tag}bulk` with `n` tasks: a table (and a journal) past one batch.
/// Returns once the journal shows it.
pub async fn bulk(store: &dyn Store, tag: &str, n: usize) {
    let id = format!("{tag}bulk");
    let mut c = ChangeSet::new(instance(&id, "order"), None, at(0));
    c.tasks_created = (0..n)
        .map(|k| task(&format!("{id}-t-{k:05}"), &id, k as i64))
        .collect();
    insert(store, c).await;
    journal_until(store, 0, "the bulk insert", |rows| {
        has(rows, "instance", &id, "insert")
    })
    .await;
}

/// Rows per table as the store's own reads count them. History rows are one per
/// change set with history, which the store reads back merged: they are counted as
/// the journal's history appends (never pruned here).
pub async fn store_counts(store: &dyn Store) -> BTreeMap<&'static str, usize> {
    let instances = store
        .list_instances(&InstanceFilter::default())
        .await
        .unwrap();
    let mut timers = 0;
    for i in &instances {
        timers += store.list_timers(&i.id).await.unwrap().len();
    }
    let journal = journal_all(store).await;
    BTreeMap::from([
        (
            "definitions",
            store
                .list_definitions(&DefinitionFilter::default())
                .await
                .unwrap()
                .len(),
        ),
        ("instances", instances.len()),
        (
            "tasks",
            store
                .list_tasks(&TaskFilter::default())
                .await
                .unwrap()
                .len(),
        ),
        (
            "external_tasks",
            store
                .list_external_tasks(&ExternalTaskFilter::default())
                .await
                .unwrap()
                .len(),
        ),
        ("timers", timers),
        (
            "incidents",
            store
                .list_incidents(&IncidentFilter::default())
                .await
                .unwrap()
                .len(),
        ),
        ("history", count(&journal, "history", "append")),
        ("users", plain_count(store, "users").await),
        ("api_tokens", plain_count(store, "api_tokens").await),
        ("system_mode", plain_count(store, "system_mode").await),
        ("journal", journal.len()),
    ])
}

async fn plain_count(store: &dyn Store, table: &str) -> usize {
    let spec = crate::recovery::table(table).expect("a plain table");
    store.plain_rows(spec).await.unwrap().len()
}

/// Every record `a` reads, `b` reads alike.
pub async fn assert_same_records(a: &dyn Store, b: &dyn Store) {
    for table in ["users", "api_tokens", "system_mode"] {
        let spec = crate::recovery::table(table).expect("a plain table");
        assert_eq!(
            a.plain_rows(spec).await.unwrap(),
            b.plain_rows(spec).await.unwrap(),
            "{table} rows"
        );
    }
    let defs = a
        .list_definitions(&DefinitionFilter::default())
        .await
        .unwrap();
    assert_eq!(
        b.list_definitions(&DefinitionFilter::default())
            .await
            .unwrap(),
        defs,
        "definitions"
    );
    for d in &defs {
        assert_eq!(
            b.definition(&d.id).await.unwrap(),
            a.definition(&d.id).await.unwrap(),
            "definition {}",
            d.id
        );
    }
    let instances = a.list_instances(&InstanceFilter::default()).await.unwrap();
    assert_eq!(
        b.list_instances(&InstanceFilter::default()).await.unwrap(),
        instances,
        "instances"
    );
    for i in &instances {
        assert_eq!(
            b.history(&i.id).await.unwrap(),
            a.history(&i.id).await.unwrap(),
            "history of {}",
            i.id
        );
        assert_eq!(
            b.list_timers(&i.id).await.unwrap(),
            a.list_timers(&i.id).await.unwrap(),
            "timers of {}",
            i.id
        );
    }
    let tasks = TaskFilter::default();
    assert_eq!(
        b.list_tasks(&tasks).await.unwrap(),
        a.list_tasks(&tasks).await.unwrap(),
        "tasks"
    );
    let ext = ExternalTaskFilter::default();
    assert_eq!(
        b.list_external_tasks(&ext).await.unwrap(),
        a.list_external_tasks(&ext).await.unwrap(),
        "external tasks"
    );
    let inc = IncidentFilter::default();
    assert_eq!(
        b.list_incidents(&inc).await.unwrap(),
        a.list_incidents(&inc).await.unwrap(),
        "incidents"
    );
}
