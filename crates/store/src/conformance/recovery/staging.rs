//! Cases of the restore side ([`Staging`]): replay, lookup, discard, promote.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::conformance::RecoveryBackend;
use crate::conformance::fixtures::*;
use crate::conformance::poll::*;
use crate::recovery::{ReplayOp, TABLES, replay_op};

use super::data::*;
use super::*;

pub async fn replay_reproduces_the_later_export(b: Arc<dyn RecoveryBackend>) {
    let (store, exporter) = (b.source(), b.exporter());
    populate(store.as_ref(), "a-").await;
    let earlier = export_all(exporter.as_ref()).await;
    change_populated(store.as_ref(), "a-").await;
    populate(store.as_ref(), "b-").await;
    let (journal, _) = export_journal(exporter.as_ref(), earlier.info.resume_seq).await;
    let later = export_all(exporter.as_ref()).await;
    let base = &earlier.info;
    let held = |seq: i64| {
        seq <= base.resume_seq || base.pg_snapshot.as_ref().is_some_and(|s| s.holds(seq))
    };
    let past: Vec<Value> = later
        .of("journal")
        .iter()
        .map(|l| value(l))
        .filter(|v| !held(v["seq"].as_i64().unwrap()))
        .collect();
    let fresh: Vec<&JournalLine> = journal.iter().filter(|j| !held(j.seq)).collect();
    assert_eq!(
        fresh.iter().map(|j| j.seq).collect::<Vec<_>>(),
        past.iter()
            .map(|v| v["seq"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        "the incremental holds every journal row of the later export that the earlier one lacks"
    );

    let mut staging = b.stage().await.expect("stage");
    import_all(staging.as_mut(), &earlier).await;
    // Whole transactions, in order, as a restore replays them.
    let mut transactions: Vec<(i64, Vec<ReplayOp>)> = Vec::new();
    for j in fresh {
        let tx = j.transaction(store.backend());
        let op = replay_op(j).unwrap_or_else(|e| panic!("journal row {}: {e}", j.seq));
        match transactions.last_mut() {
            Some((id, ops)) if *id == tx => ops.push(op),
            _ => transactions.push((tx, vec![op])),
        }
    }
    let rows: usize = transactions.iter().map(|(_, ops)| ops.len()).sum();
    assert!(rows >= 30, "a journal worth replaying: {rows} rows");
    for (_, ops) in transactions {
        staging.replay(ops).await.expect("replay");
    }
    for t in TABLES.iter().filter(|t| t.restored()) {
        let got = staging.table_digest(t).await.expect("table_digest");
        if t.name == "history" {
            assert_eq!(
                got.rows as usize,
                later.of("history").len(),
                "history rows after the replay"
            );
        } else {
            assert_eq!(
                got,
                later.digest(t.name),
                "table {}: the earlier export plus the journal against the later export",
                t.name
            );
        }
    }
    staging.promote().await.expect("promote");
    let restored = export_all(b.target_exporter().as_ref()).await;
    for t in TABLES
        .iter()
        .filter(|t| t.restored() && t.name != "history")
    {
        assert_eq!(
            restored.digest(t.name),
            later.digest(t.name),
            "table {} once promoted",
            t.name
        );
    }
    // In order, seq aside: replayed appends take new ones.
    let (got, want) = (
        without_seq(restored.of("history")),
        without_seq(later.of("history")),
    );
    assert_eq!(got.len(), want.len(), "history rows once promoted");
    for (n, (got, want)) in got.iter().zip(&want).enumerate() {
        assert_eq!(got, want, "history row {n} (in seq order) once promoted");
    }
    assert!(
        restored.of("journal").is_empty(),
        "a restored database starts its own journal"
    );
}

pub async fn lookup_finds_rows_by_key(b: Arc<dyn RecoveryBackend>) {
    populate(b.source().as_ref(), "").await;
    let export = export_all(b.exporter().as_ref()).await;
    let mut staging = b.stage().await.expect("stage");
    import_all(staging.as_mut(), &export).await;
    for t in TABLES.iter().filter(|t| t.restored()) {
        let lines = export.of(t.name);
        assert!(!lines.is_empty(), "populate writes table {}", t.name);
        for line in [&lines[0], &lines[lines.len() - 1]] {
            let row = value(line);
            let key = key_text(&row[t.key]);
            let found = staging
                .lookup(t, &key)
                .await
                .unwrap_or_else(|e| panic!("lookup({}, {key}): {e}", t.name))
                .unwrap_or_else(|| panic!("lookup({}, {key}) found nothing", t.name));
            assert_eq!(
                value(&found),
                row,
                "lookup({}, {key}) returns the row's line",
                t.name
            );
        }
        // Keys no row has, a number and a text (which no integer key can be).
        for missing in ["987654321", "no-such-key"] {
            let none = staging
                .lookup(t, missing)
                .await
                .unwrap_or_else(|e| panic!("lookup({}, {missing}): {e}", t.name));
            assert_eq!(none, None, "lookup({}, {missing})", t.name);
        }
    }
    // Lookups see what a replay changed.
    let tasks = spec("tasks");
    let mut row = value(&export.of("tasks")[0]);
    let key = key_text(&row["id"]);
    row["assignee"] = json!("zed");
    staging
        .replay(vec![ReplayOp::Upsert(tasks, row.to_string())])
        .await
        .expect("replay upsert");
    let found = staging
        .lookup(tasks, &key)
        .await
        .unwrap()
        .expect("the replaced row");
    assert_eq!(value(&found), row, "lookup after an upsert");
    staging
        .replay(vec![ReplayOp::Delete(tasks, key.clone())])
        .await
        .expect("replay delete");
    assert_eq!(
        staging.lookup(tasks, &key).await.unwrap(),
        None,
        "lookup after a delete"
    );
    staging.discard().await.expect("discard");
}

pub async fn discard_leaves_the_target_untouched(b: Arc<dyn RecoveryBackend>) {
    let target = b.open_target().await;
    populate(target.as_ref(), "old-").await;
    b.close_target(target).await;
    let before = export_all(b.target_exporter().as_ref()).await;
    populate(b.source().as_ref(), "new-").await;
    let export = export_all(b.exporter().as_ref()).await;

    let mut staging = b.stage().await.expect("stage");
    import_all(staging.as_mut(), &export).await;
    assert!(
        b.staging_exists().await,
        "{} holds the staged rows",
        staging.describe()
    );
    staging.discard().await.expect("discard");
    assert!(
        !b.staging_exists().await,
        "discard removes the staging data"
    );
    let after = export_all(b.target_exporter().as_ref()).await;
    for t in TABLES {
        assert_eq!(
            after.digest(t.name),
            before.digest(t.name),
            "a discarded restore changed table {}",
            t.name
        );
    }

    // A staging dropped half-filled (an error on the way) restores nothing either, and
    // the next one starts empty.
    let mut staging = b.stage().await.expect("stage");
    let instances = spec("instances");
    staging
        .import(instances, export.of("instances").to_vec())
        .await
        .expect("import");
    drop(staging);
    let mut staging = b.stage().await.expect("stage after a dropped one");
    for t in TABLES {
        assert_eq!(
            staging.table_digest(t).await.unwrap().rows,
            0,
            "a new staging starts empty ({})",
            t.name
        );
    }
    staging.discard().await.expect("discard");
    let after = export_all(b.target_exporter().as_ref()).await;
    for t in TABLES {
        assert_eq!(
            after.digest(t.name),
            before.digest(t.name),
            "a dropped staging changed table {}",
            t.name
        );
    }
    let target = b.open_target().await;
    assert!(
        target.instance("old-i-1").await.unwrap().is_some(),
        "the target keeps its own rows"
    );
    assert!(
        target.instance("new-i-1").await.unwrap().is_none(),
        "and has none of the discarded ones"
    );
    b.close_target(target).await;
}

pub async fn promote_makes_the_data_readable(b: Arc<dyn RecoveryBackend>) {
    // The target holds older data, which the restore replaces.
    let target = b.open_target().await;
    populate(target.as_ref(), "old-").await;
    b.close_target(target).await;
    let source = b.source();
    populate(source.as_ref(), "").await;
    let export = export_all(b.exporter().as_ref()).await;
    let mut staging = b.stage().await.expect("stage");
    import_all(staging.as_mut(), &export).await;
    staging.promote().await.expect("promote");
    assert!(
        !b.staging_exists().await,
        "nothing of the staging is left once promoted"
    );

    let target = b.open_target().await;
    assert!(
        target.instance("old-i-1").await.unwrap().is_none(),
        "the old data is gone"
    );
    assert_same_records(source.as_ref(), target.as_ref()).await;
    assert!(
        target.journal_since(0, 10).await.unwrap().is_empty(),
        "a restored database starts its own journal"
    );

    // The restored database takes the engine's next writes.
    let i1 = target.instance("i-1").await.unwrap().expect("i-1");
    let mut c = update_of(&i1);
    c.time = at(300);
    c.tasks_created = vec![task("t-next", "i-1", 300)];
    c.history = vec![hist("i-1", 300, "activityStarted", 9)];
    target
        .apply(c.clone())
        .await
        .expect("the restored instance takes its next change");
    let mut history = source.history("i-1").await.unwrap();
    history.extend(c.history);
    assert_eq!(
        target.history("i-1").await.unwrap(),
        history,
        "history goes on after the restored rows"
    );
    let again = target
        .deploy(vec![new_def("order", "c2")], at(310))
        .await
        .unwrap();
    assert_eq!(
        (again[0].created, again[0].definition.version),
        (false, 2),
        "restored definitions count for versioning"
    );
    journal_until(
        target.as_ref(),
        0,
        "the first write after the restore",
        |rows| has(rows, "instance", "i-1", "update"),
    )
    .await;
    b.close_target(target).await;
}
