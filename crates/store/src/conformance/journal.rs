//! Cases: one journal row per change, with the row image, in increasing `seq`; paging;
//! a failed apply writes none.

use std::sync::Arc;

use serde_json::Value;

use crate::*;

use super::fixtures::*;
use super::poll::*;

pub async fn journal_rows(store: Arc<dyn Store>) {
    let inst = InstanceRecord {
        business_key: Some("bk".into()),
        ..instance("i-1", "order")
    };
    let t1 = task("t-1", "i-1", 1);
    let e1 = external("e-1", "i-1", "pay", 1);
    let tm1 = timer("tm-1", "i-1", 1_000);
    let inc1 = incident("inc-1", "i-1", 1);
    let history = vec![
        hist("i-1", 1, "instanceStarted", 1),
        hist("i-1", 2, "activityStarted", 2),
    ];
    let mut create = ChangeSet::new(inst.clone(), None, at(0));
    create.tasks_created = vec![t1.clone()];
    create.external_upserted = vec![e1.clone()];
    create.timers_created = vec![tm1.clone()];
    create.incidents_created = vec![inc1.clone()];
    create.history = history.clone();
    insert(store.as_ref(), create).await;

    let mut change = update_of(&inst);
    change.tasks_removed = vec!["t-1".into()];
    change.tasks_created = vec![task("t-2", "i-1", 2)];
    let e1_failed = ExternalTaskRecord {
        retries: Some(1),
        error_message: Some("boom".into()),
        ..e1.clone()
    };
    change.external_upserted = vec![e1_failed.clone()];
    change.timers_removed = vec!["tm-1".into()];
    change.incidents_resolved = vec!["inc-1".into()];
    change.history = vec![hist("i-1", 3, "activityCompleted", 3)];
    let v2 = change.instance.clone();
    store.apply(change).await.expect("update");
    store.claim_task("t-2", "ann", at(5)).await.expect("claim");

    let rows = journal_until(store.as_ref(), 0, "the claim's task update", |rows| {
        has(rows, "task", "t-2", "update")
    })
    .await;
    for pair in rows.windows(2) {
        assert!(
            pair[0].seq < pair[1].seq,
            "journal seq must strictly increase: {} then {}",
            pair[0].seq,
            pair[1].seq
        );
    }

    let ins = one(&rows, "instance", "i-1", "insert");
    let image: InstanceRecord =
        serde_json::from_value(ins.row.clone()).expect("instance row image deserializes");
    assert_eq!(image, inst, "instance insert row image is the record");
    let upd = one(&rows, "instance", "i-1", "update");
    let image: InstanceRecord =
        serde_json::from_value(upd.row.clone()).expect("instance row image deserializes");
    assert_eq!(image, v2, "instance update row image is the new record");
    assert!(ins.seq < upd.seq, "a later commit has a later seq");

    let t_ins = one(&rows, "task", "t-1", "insert");
    assert_eq!(
        serde_json::from_value::<TaskRecord>(t_ins.row.clone()).expect("task image"),
        t1
    );
    let t_del = one(&rows, "task", "t-1", "delete");
    assert_eq!(t_del.row, Value::Null, "a delete row's image is null");
    assert!(t_ins.seq < t_del.seq);
    one(&rows, "task", "t-2", "insert");
    let claim = one(&rows, "task", "t-2", "update");
    let claimed: TaskRecord = serde_json::from_value(claim.row.clone()).expect("task image");
    assert_eq!(
        claimed.assignee.as_deref(),
        Some("ann"),
        "claim journals the claimed row"
    );

    let e_ins = one(&rows, "externalTask", "e-1", "insert");
    assert_eq!(
        serde_json::from_value::<ExternalTaskRecord>(e_ins.row.clone()).expect("image"),
        e1
    );
    let e_upd = one(&rows, "externalTask", "e-1", "update");
    assert_eq!(
        serde_json::from_value::<ExternalTaskRecord>(e_upd.row.clone()).expect("image"),
        e1_failed,
        "an upsert of an existing external task is an update"
    );
    let tm_ins = one(&rows, "timer", "tm-1", "insert");
    assert_eq!(
        serde_json::from_value::<TimerRecord>(tm_ins.row.clone()).expect("image"),
        tm1
    );
    assert_eq!(one(&rows, "timer", "tm-1", "delete").row, Value::Null);
    let inc_ins = one(&rows, "incident", "inc-1", "insert");
    assert_eq!(
        serde_json::from_value::<IncidentRecord>(inc_ins.row.clone()).expect("image"),
        inc1
    );
    let inc_upd = one(&rows, "incident", "inc-1", "update");
    let resolved: IncidentRecord = serde_json::from_value(inc_upd.row.clone()).expect("image");
    assert!(
        resolved.resolved_at.is_some(),
        "the resolve row image carries resolved_at"
    );

    let appends: Vec<_> = rows
        .iter()
        .filter(|r| r.entity.as_str() == "history")
        .collect();
    assert_eq!(
        appends.len(),
        2,
        "one history append row per change set with history: {appends:#?}"
    );
    assert!(
        appends
            .iter()
            .all(|r| r.op.as_str() == "append" && r.entity_id == "i-1"),
        "history rows: append per instance"
    );
    let first: Vec<HistoryRecord> =
        decode_history("i-1", &appends[0].row.to_string()).expect("history image");
    assert_eq!(
        first, history,
        "history append row holds the change set's history records"
    );

    let last = rows.last().expect("rows").seq;
    let after = store.journal_since(last, 100).await.unwrap();
    assert!(after.is_empty(), "nothing after the last seq: {after:#?}");
}

pub async fn journal_limit_and_failed_apply(store: Arc<dyn Store>) {
    let mut insts = Vec::new();
    for n in 0..3 {
        let id = format!("i-{n}");
        let mut c = ChangeSet::new(instance(&id, "order"), None, at(0));
        c.history = vec![hist(&id, n, "instanceStarted", n)];
        insts.push(c.instance.clone());
        insert(store.as_ref(), c).await;
    }
    let all = journal_until(store.as_ref(), 0, "three instance inserts", |rows| {
        (0..3).all(|n| has(rows, "instance", &format!("i-{n}"), "insert"))
    })
    .await;
    assert!(
        all.len() >= 6,
        "an instance row and a history row per apply: {all:#?}"
    );

    let page = store.journal_since(0, 2).await.unwrap();
    assert_eq!(page.len(), 2, "limit respected");
    assert_eq!(
        page[..],
        all[..2],
        "the first page is the start of the journal"
    );
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = store.journal_since(after, 2).await.unwrap();
        assert!(page.len() <= 2, "limit respected while paging");
        let Some(last) = page.last() else { break };
        after = last.seq;
        paged.extend(page);
    }
    assert_eq!(
        paged, all,
        "paging by the last seq seen reads the whole journal once"
    );

    let last = all.last().expect("rows").seq;
    let mut stale = ChangeSet::new(
        InstanceRecord {
            version: 7,
            ..insts[0].clone()
        },
        Some(5),
        at(0),
    );
    stale.tasks_created = vec![task("t-failed", "i-0", 1)];
    stale.history = vec![hist("i-0", 9, "activityCancelled", 9)];
    assert!(
        matches!(store.apply(stale).await, Err(StoreError::Conflict(_))),
        "stale expected_version must be Conflict"
    );
    // A successful apply after the failed one: once it is visible, the failed one would be.
    let marker = update_of(&insts[1]);
    store.apply(marker).await.expect("marker update");
    let rows = journal_until(store.as_ref(), last, "the marker update", |rows| {
        has(rows, "instance", "i-1", "update")
    })
    .await;
    assert!(
        rows.iter().all(|r| r.entity_id == "i-1"),
        "a failed apply must add no journal rows; after seq {last} found {rows:#?}"
    );
}
