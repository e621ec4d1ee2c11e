//! Cases of the export side ([`Exporter`]): full exports, journal ranges, pruning.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::conformance::RecoveryBackend;
use crate::conformance::fixtures::*;
use crate::conformance::poll::*;
use crate::recovery::{EXPORT_BATCH, JournalLine, ReplayOp, TABLES, replay_op};
use crate::*;

use super::data::*;
use super::*;

pub async fn export_announces_every_table(b: Arc<dyn RecoveryBackend>) {
    let names: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
    let store = b.source();
    let empty = export_all(b.exporter().as_ref()).await;
    assert_eq!(
        empty.order, names,
        "an empty database's export announces every table once, in TABLES order"
    );
    for t in TABLES {
        assert!(
            empty.of(t.name).is_empty(),
            "table {} of an empty database",
            t.name
        );
    }
    let info = &empty.info;
    assert_eq!(info.backend, store.backend());
    assert!(
        info.schema_version > 0,
        "the schema version is recorded: {info:?}"
    );
    assert_eq!(
        (
            info.after_seq,
            info.journal_first_seq,
            info.journal_last_seq
        ),
        (None, None, None)
    );

    populate(store.as_ref(), "").await;
    bulk(store.as_ref(), "", EXPORT_BATCH + 100).await;
    let full = export_all(b.exporter().as_ref()).await;
    assert_eq!(full.order, names, "every table once, in TABLES order");
    assert!(
        full.biggest <= EXPORT_BATCH,
        "batches hold at most EXPORT_BATCH rows"
    );
    assert!(
        full.batches["tasks"] >= 2,
        "a table past EXPORT_BATCH rows comes in several batches"
    );
    let counts = store_counts(store.as_ref()).await;
    for t in TABLES {
        let lines = full.of(t.name);
        assert_eq!(
            lines.len(),
            counts[t.name],
            "table {}: rows exported against the store's",
            t.name
        );
        let columns: BTreeSet<&str> = t.column_names().collect();
        let mut previous: Option<Value> = None;
        for line in lines {
            let row = value(line);
            let keys: BTreeSet<&str> = row
                .as_object()
                .expect("object")
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(
                keys, columns,
                "table {}: a line holds exactly the columns: {line}",
                t.name
            );
            let key = row[t.key].clone();
            if let Some(prev) = previous {
                let ascending = match (&prev, &key) {
                    (Value::String(a), Value::String(b)) => a < b,
                    (Value::Number(a), Value::Number(b)) => a.as_i64() < b.as_i64(),
                    _ => false,
                };
                assert!(
                    ascending,
                    "table {}: rows in ascending key order, {prev} came before {key}",
                    t.name
                );
            }
            previous = Some(key);
        }
    }
    let journal: Vec<JournalLine> = full
        .of("journal")
        .iter()
        .map(|l| JournalLine::parse(l).unwrap())
        .collect();
    let (first, last) = (&journal[0], &journal[journal.len() - 1]);
    let info = &full.info;
    assert_eq!(
        (info.journal_first_seq, info.journal_last_seq),
        (Some(first.seq), Some(last.seq))
    );
    assert_eq!(
        (info.journal_first_time, info.journal_last_time),
        (first.time(), last.time()),
        "the journal's time range"
    );
    assert!(
        info.resume_seq >= last.seq,
        "with nothing in flight every exported journal row is at or below resume_seq: {info:?}"
    );
}

pub async fn export_imports_with_equal_digests(b: Arc<dyn RecoveryBackend>) {
    let store = b.source();
    populate(store.as_ref(), "").await;
    bulk(store.as_ref(), "", EXPORT_BATCH + 100).await;
    let export = export_all(b.exporter().as_ref()).await;
    let mut staging = b.stage().await.expect("stage");
    import_all(staging.as_mut(), &export).await;
    for t in TABLES {
        let got = staging.table_digest(t).await.expect("table_digest");
        if t.restored() {
            assert_eq!(
                got,
                export.digest(t.name),
                "table {}: staging against the export",
                t.name
            );
        } else {
            assert_eq!(got.rows, 0, "table {} is not restored", t.name);
        }
    }
    // Rows that are there already, or that do not fit the table, are refused and
    // change nothing.
    let instances = spec("instances");
    let again = staging
        .import(instances, export.of("instances")[..1].to_vec())
        .await;
    assert!(
        matches!(again, Err(StoreError::Corrupt(_))),
        "importing a row twice: {again:?}"
    );
    let unfit = staging
        .import(instances, vec![r#"{"id":"x-unfit"}"#.into()])
        .await;
    assert!(
        matches!(unfit, Err(StoreError::Corrupt(_))),
        "a row without its required columns: {unfit:?}"
    );
    assert_eq!(
        staging.table_digest(instances).await.unwrap(),
        export.digest("instances")
    );
    staging.discard().await.expect("discard");
}

pub async fn export_is_consistent_under_concurrent_writes(b: Arc<dyn RecoveryBackend>) {
    const N: usize = 6;
    let store = b.source();
    populate(store.as_ref(), "").await;
    let mut current = Vec::new();
    for n in 0..N {
        let id = format!("c-{n}");
        let mut c = ChangeSet::new(instance(&id, "order"), None, at(0));
        c.tasks_created = vec![task(&format!("{id}-t-1"), &id, 0)];
        c.history = vec![hist(&id, 0, "instanceStarted", 0)];
        current.push(c.instance.clone());
        insert(store.as_ref(), c).await;
    }
    let committed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (store, committed, stop) = (store.clone(), committed.clone(), stop.clone());
        async move {
            let mut k = 0;
            while !stop.load(Ordering::SeqCst) {
                let prev = &current[k % N];
                let mut c = update_of(prev);
                let v = c.instance.version;
                c.time = at(v);
                c.instance.variables.insert("step".into(), json!(v));
                c.tasks_removed = vec![format!("{}-t-{}", prev.id, prev.version)];
                c.tasks_created = vec![task(&format!("{}-t-{v}", prev.id), &prev.id, v)];
                if v % 2 == 0 {
                    c.timers_created = vec![timer(&format!("{}-tm-{v}", prev.id), &prev.id, v)];
                } else {
                    c.timers_removed = vec![format!("{}-tm-{}", prev.id, v - 1)];
                }
                c.history = vec![hist(&prev.id, v, "activityCompleted", v)];
                let next = c.instance.clone();
                store.apply(c).await.expect("concurrent update");
                current[k % N] = next;
                committed.fetch_add(1, Ordering::SeqCst);
                k += 1;
            }
            current
        }
    });
    commits_past(&committed, 0, 3, "the writer under way").await;

    // A slow reader: after the first batch (the snapshot is taken by then), the writer
    // commits at least 20 more change sets before the export is read on.
    let exporter = b.exporter();
    let (tx, mut rx) = mpsc::channel(1);
    let mut got = Batches::default();
    let (info, ()) = tokio::join!(exporter.export(tx), async {
        got.add(rx.recv().await.expect("a first batch"));
        let from = committed.load(Ordering::SeqCst);
        commits_past(&committed, from, 20, "20 commits while the export is open").await;
        while let Some(batch) = rx.recv().await {
            got.add(batch);
        }
    });
    let export = got.finish(info.expect("export during writes"));
    stop.store(true, Ordering::SeqCst);
    let last = writer.await.expect("writer");

    // The journal in the export, folded: the latest row of every entity.
    let mut latest: BTreeMap<(String, String), JournalLine> = BTreeMap::new();
    for line in export.of("journal") {
        let j = JournalLine::parse(line).unwrap();
        latest.insert((j.entity.clone(), j.entity_id.clone()), j);
    }
    for (entity, name) in [
        ("definition", "definitions"),
        ("instance", "instances"),
        ("task", "tasks"),
        ("externalTask", "external_tasks"),
        ("timer", "timers"),
        ("incident", "incidents"),
    ] {
        let alive: BTreeSet<&str> = latest
            .iter()
            .filter(|((e, _), j)| e == entity && j.op != "delete")
            .map(|((_, id), _)| id.as_str())
            .collect();
        let rows: Vec<Value> = export.of(name).iter().map(|l| value(l)).collect();
        let ids: BTreeSet<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(
            ids, alive,
            "{name}: the rows exported are the ones the exported journal leaves"
        );
    }
    let mut exported_versions = 0;
    for line in export.of("instances") {
        let row = value(line);
        let id = row["id"].as_str().unwrap().to_string();
        let ReplayOp::Upsert(_, image) =
            replay_op(&latest[&("instance".to_string(), id.clone())]).unwrap()
        else {
            panic!("the latest journal row of instance {id} is not an image");
        };
        assert_eq!(
            row,
            value(&image),
            "instance {id}: the row and its latest journal image in the same export"
        );
        if id.starts_with("c-") {
            exported_versions += row["version"].as_i64().unwrap();
        }
    }
    let history_rows = export.of("history").len();
    let history_appends = export
        .of("journal")
        .iter()
        .filter(|l| JournalLine::parse(l).unwrap().entity == "history")
        .count();
    assert_eq!(
        history_rows, history_appends,
        "one history row per exported history append"
    );
    // The one apply in flight when the count was read may have committed before the
    // snapshot; the other 19 came after it and must not show.
    let now: i64 = last.iter().map(|i| i.version).sum();
    assert!(
        now - exported_versions >= 19,
        "writes after the snapshot leaked into the export: exported versions sum {exported_versions}, now {now}"
    );
}

/// Polls until `counter` is at least `from + n`.
async fn commits_past(counter: &AtomicUsize, from: usize, n: usize, what: &str) {
    until(what, || async move {
        let done = counter.load(Ordering::SeqCst) - from;
        if done >= n { Ok(()) } else { Err(done) }
    })
    .await;
}

pub async fn export_journal_ranges_resume_without_gaps(b: Arc<dyn RecoveryBackend>) {
    let (store, exporter) = (b.source(), b.exporter());
    let (none, info) = export_journal(exporter.as_ref(), 0).await;
    assert!(
        none.is_empty(),
        "an empty journal exports nothing: {none:?}"
    );
    assert_eq!(info.after_seq, Some(0));
    assert!(info.resume_seq >= 0);

    populate(store.as_ref(), "").await;
    let all = journal_all(store.as_ref()).await;
    let mid = all[all.len() / 2].seq;
    let (lines, info) = export_journal(exporter.as_ref(), mid).await;
    let want: Vec<&JournalRecord> = all.iter().filter(|r| r.seq > mid).collect();
    assert_eq!(
        lines.iter().map(|l| l.seq).collect::<Vec<_>>(),
        want.iter().map(|r| r.seq).collect::<Vec<_>>(),
        "export_journal({mid}) returns exactly the rows after it, in seq order"
    );
    for (l, r) in lines.iter().zip(&want) {
        assert_same_row(l, r);
    }
    assert_eq!(info.after_seq, Some(mid));
    assert_eq!(
        (info.journal_first_seq, info.journal_last_seq),
        (Some(lines[0].seq), Some(want[want.len() - 1].seq))
    );
    assert!(
        info.resume_seq >= want[want.len() - 1].seq,
        "nothing in flight: resume_seq covers every row"
    );
    let (again, _) = export_journal(exporter.as_ref(), info.resume_seq).await;
    assert!(
        again.is_empty(),
        "nothing after resume_seq while nothing is written: {again:?}"
    );

    // Read on in steps from each call's resume_seq while a writer commits.
    const WRITES: usize = 120;
    let committed = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn({
        let (store, committed) = (store.clone(), committed.clone());
        async move {
            for k in 0..WRITES {
                let id = format!("w-{k:03}");
                let mut c = ChangeSet::new(instance(&id, "order"), None, at(k as i64));
                c.tasks_created = vec![task(&format!("{id}-t"), &id, 0)];
                c.history = vec![hist(&id, k as i64, "instanceStarted", 1)];
                store.apply(c).await.expect("write");
                committed.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let last_id = format!("w-{:03}", WRITES - 1);
    let (mut got, mut resume, mut calls_during) = (Vec::<JournalLine>::new(), info.resume_seq, 0);
    let deadline = std::time::Instant::now() + POLL_LIMIT * 3;
    loop {
        let (before, done) = (committed.load(Ordering::SeqCst), writer.is_finished());
        let (lines, i) = export_journal(exporter.as_ref(), resume).await;
        for l in lines {
            assert!(
                l.seq > resume,
                "row {} read after resume_seq {resume}",
                l.seq
            );
            if let Some(p) = got.last() {
                assert!(
                    l.seq > p.seq,
                    "row {} after row {}: a duplicate or out of order",
                    l.seq,
                    p.seq
                );
            }
            got.push(l);
        }
        assert_eq!(i.after_seq, Some(resume));
        assert!(
            i.resume_seq >= resume,
            "resume_seq went back from {resume} to {}",
            i.resume_seq
        );
        resume = i.resume_seq;
        if done
            && got
                .iter()
                .any(|l| l.entity == "instance" && l.entity_id == last_id)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never read the writer's last row; got {} rows",
            got.len()
        );
        if !done {
            calls_during += 1;
            until("10 more commits, or the writer's end", || {
                let (committed, finished) =
                    (committed.load(Ordering::SeqCst), writer.is_finished());
                async move {
                    if finished || committed >= before + 10 {
                        Ok(())
                    } else {
                        Err(committed)
                    }
                }
            })
            .await;
        }
    }
    writer.await.expect("writer");
    assert!(
        calls_during >= 2,
        "the journal was read while the writes went on ({calls_during} calls)"
    );
    let full = journal_until(store.as_ref(), 0, "the writer's last row", |rows| {
        has(rows, "instance", &last_id, "insert")
    })
    .await;
    let want: Vec<i64> = full
        .iter()
        .map(|r| r.seq)
        .filter(|s| *s > info.resume_seq)
        .collect();
    assert_eq!(
        got.iter().map(|l| l.seq).collect::<Vec<_>>(),
        want,
        "reading on from each resume_seq yields every row once, without a gap"
    );
}

pub async fn prune_journal_deletes_exactly_up_to(b: Arc<dyn RecoveryBackend>) {
    let (store, exporter) = (b.source(), b.exporter());
    let prune = |upto: i64| {
        let exporter = &exporter;
        async move {
            exporter
                .prune_journal(upto)
                .await
                .unwrap_or_else(|e| panic!("prune_journal({upto}): {e}"))
        }
    };
    assert_eq!(
        prune(1_000).await,
        0,
        "pruning an empty journal deletes nothing"
    );
    populate(store.as_ref(), "").await;
    let all = journal_all(store.as_ref()).await;
    assert_eq!(
        prune(all[0].seq - 1).await,
        0,
        "nothing below the first row"
    );
    let k = all.len() / 2;
    let upto = all[k - 1].seq;
    assert_eq!(
        prune(upto).await,
        k as u64,
        "prune_journal({upto}) deletes the rows at or below it"
    );
    assert_eq!(
        journal_seqs(&journal_all(store.as_ref()).await),
        journal_seqs(&all[k..]),
        "the rows above stay"
    );
    let (lines, _) = export_journal(exporter.as_ref(), 0).await;
    assert_eq!(
        lines.iter().map(|l| l.seq).collect::<Vec<_>>(),
        journal_seqs(&all[k..])
    );
    assert_eq!(prune(upto).await, 0, "pruning again finds nothing");
    assert_eq!(
        prune(all[k].seq).await,
        1,
        "a bound on a row takes that row"
    );

    // Writes after a prune are journaled and read on as before.
    populate(store.as_ref(), "b-").await;
    let now = journal_all(store.as_ref()).await;
    assert_eq!(
        journal_seqs(&now[..all.len() - k - 1]),
        journal_seqs(&all[k + 1..])
    );
    assert!(
        now[all.len() - k - 1].seq > all[all.len() - 1].seq,
        "new rows follow the old ones"
    );
    let (lines, _) = export_journal(exporter.as_ref(), upto).await;
    assert_eq!(
        lines.iter().map(|l| l.seq).collect::<Vec<_>>(),
        journal_seqs(&now)
    );

    // Pruning everything empties the journal only; sequence numbers go on.
    let before = export_all(exporter.as_ref()).await;
    let last = now[now.len() - 1].seq;
    assert_eq!(prune(last).await, now.len() as u64);
    assert!(
        journal_all(store.as_ref()).await.is_empty(),
        "the journal is empty"
    );
    let after = export_all(exporter.as_ref()).await;
    assert!(
        after.of("journal").is_empty(),
        "the export's journal is empty"
    );
    for t in TABLES.iter().filter(|t| t.name != "journal") {
        assert_eq!(
            after.digest(t.name),
            before.digest(t.name),
            "pruning changed table {}",
            t.name
        );
    }
    store
        .deploy(vec![new_def("after-prune", "c1")], at(200))
        .await
        .expect("deploy");
    let rows = journal_until(store.as_ref(), 0, "the write after pruning", |rows| {
        has(rows, "definition", "after-prune:1", "insert")
    })
    .await;
    assert!(
        rows[0].seq > last,
        "seq {} after pruning up to {last}: sequence numbers went back",
        rows[0].seq
    );
}
