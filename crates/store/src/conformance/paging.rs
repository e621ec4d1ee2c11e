//! Cases: keyset pages of every listing. Walking the pages with a small `limit` lists
//! each row that exists throughout exactly once, in key order, while rows are inserted
//! (before and behind the cursor) and removed between pages; `after` and `limit`
//! combine with the filters.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::*;

use super::fixtures::*;

/// The pages of one walk, and where the next page starts.
#[derive(Default)]
struct Walk {
    after: Option<String>,
    pages: Vec<Vec<String>>,
}

impl Walk {
    /// Takes the page listed behind `self.after` with `limit`: `Some(its last id)` when
    /// it is full (another page may follow), `None` when the walk is over.
    fn take(&mut self, what: &str, rows: Vec<String>, limit: usize) -> Option<String> {
        assert!(
            rows.len() <= limit,
            "{what}: a page holds at most `limit` rows"
        );
        if let (Some(a), Some(first)) = (&self.after, rows.first()) {
            assert!(first > a, "{what}: a page starts behind its cursor");
        }
        assert!(self.pages.len() < 100, "{what}: paging does not end");
        let full = rows.len() == limit;
        let last = rows.last().cloned();
        self.pages.push(rows);
        if full {
            self.after = last.clone();
            last
        } else {
            None
        }
    }
}

/// Checks the walk: no row twice, key order, every row of `throughout` seen, nothing
/// outside `maybe` (rows that existed at some point).
fn check_walk(
    what: &str,
    pages: &[Vec<String>],
    throughout: &BTreeSet<String>,
    maybe: &BTreeSet<String>,
) {
    let seen: Vec<String> = pages.concat();
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "{what}: a row listed twice: {pages:?}"
    );
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "{what}: pages follow the key order");
    let missing: Vec<&String> = throughout.difference(&unique).collect();
    assert!(
        missing.is_empty(),
        "{what}: skipped {missing:?} in {pages:?}"
    );
    let foreign: Vec<&String> = unique.difference(maybe).collect();
    assert!(
        foreign.is_empty(),
        "{what}: listed unknown rows {foreign:?}"
    );
}

fn set<S: AsRef<str>>(it: impl IntoIterator<Item = S>) -> BTreeSet<String> {
    it.into_iter().map(|s| s.as_ref().to_string()).collect()
}

pub async fn paging_instances_while_rows_are_inserted(store: Arc<dyn Store>) {
    // Ids with gaps, so that rows inserted later land before and behind the cursor.
    let initial: Vec<String> = (0..20).map(|n| format!("i{:03}", n * 10)).collect();
    for id in &initial {
        let key = if id.as_str() < "i100" {
            "order"
        } else {
            "invoice"
        };
        insert(
            store.as_ref(),
            ChangeSet::new(instance(id, key), None, at(0)),
        )
        .await;
    }
    let mut inserted = BTreeSet::new();
    let mut behind_cursor = BTreeSet::new();
    let mut walk = Walk::default();
    loop {
        let f = InstanceFilter {
            after: walk.after.clone(),
            limit: Some(3),
            ..Default::default()
        };
        let rows = store.list_instances(&f).await.expect("list_instances");
        let rows = rows.into_iter().map(|i| i.id).collect();
        let Some(last) = walk.take("instances", rows, 3) else {
            break;
        };
        // One row before the cursor (never listed any more), one just behind it (must
        // be listed), one at the very end (must be listed).
        let n = walk.pages.len();
        for id in [format!("i{n:03}a"), format!("{last}a"), format!("z{n:03}")] {
            let change = ChangeSet::new(instance(&id, "order"), None, at(n as i64));
            insert(store.as_ref(), change).await;
            if id > last {
                behind_cursor.insert(id.clone());
            }
            inserted.insert(id);
        }
    }
    let pages = walk.pages;
    let initial = set(&initial);
    check_walk(
        "instances",
        &pages,
        &initial,
        &initial.union(&inserted).cloned().collect(),
    );
    let seen = set(pages.concat());
    let missed: Vec<&String> = behind_cursor.difference(&seen).collect();
    assert!(
        missed.is_empty(),
        "rows inserted behind the cursor are listed: {missed:?}"
    );
    assert!(pages.len() > 5, "the walk spans many pages: {pages:?}");

    // `after` and `limit` combine with a filter.
    let f = InstanceFilter {
        definition_key: Some("invoice".into()),
        after: Some("i120".into()),
        limit: Some(2),
        ..Default::default()
    };
    let rows = store.list_instances(&f).await.unwrap();
    assert_eq!(
        rows.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["i130", "i140"],
        "the filter, then the rows behind `after`, then `limit`"
    );
}

pub async fn paging_tasks_externals_and_incidents(store: Arc<dyn Store>) {
    let mut change = ChangeSet::new(instance("A", "order"), None, at(0));
    for n in 0..12 {
        change
            .tasks_created
            .push(task(&format!("t{:02}", n * 2), "A", n));
        change
            .external_upserted
            .push(external(&format!("x{:02}", n * 2), "A", "work", n));
        change
            .incidents_created
            .push(incident(&format!("n{:02}", n * 2), "A", n));
    }
    let a = change.instance.clone();
    insert(store.as_ref(), change).await;
    let version = std::sync::atomic::AtomicI64::new(a.version);
    let next_change = || {
        let v = version.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut prev = a.clone();
        prev.version = v;
        update_of(&prev)
    };

    // Tasks: between pages, one new task behind the cursor and one unseen task removed.
    let mut removed = BTreeSet::new();
    let mut inserted = BTreeSet::new();
    let mut walk = Walk::default();
    loop {
        let f = TaskFilter {
            instance_id: Some("A".into()),
            after: walk.after.clone(),
            limit: Some(4),
            ..Default::default()
        };
        let rows = store.list_tasks(&f).await.expect("list_tasks");
        let rows = rows.into_iter().map(|t| t.id).collect();
        let Some(last) = walk.take("tasks", rows, 4) else {
            break;
        };
        let n = walk.pages.len();
        let mut c = next_change();
        let new = format!("{last}b");
        c.tasks_created.push(task(&new, "A", 100));
        inserted.insert(new);
        let doomed = format!("t{:02}", 22 - 2 * n);
        if doomed > last {
            c.tasks_removed.push(doomed.clone());
            removed.insert(doomed);
        }
        store.apply(c).await.expect("changing tasks between pages");
    }
    let pages = walk.pages;
    let initial = set((0..12).map(|n| format!("t{:02}", n * 2)));
    let throughout: BTreeSet<String> = initial.difference(&removed).cloned().collect();
    check_walk(
        "tasks",
        &pages,
        &throughout,
        &initial.union(&inserted).cloned().collect(),
    );
    let seen = set(pages.concat());
    assert!(
        removed.is_disjoint(&seen),
        "a task removed before its page is not listed"
    );
    assert!(
        !removed.is_empty(),
        "the case removed tasks ahead of the cursor"
    );
    assert!(
        inserted.is_subset(&seen),
        "tasks inserted behind the cursor are listed"
    );

    // External tasks: new ones between pages.
    let mut inserted = BTreeSet::new();
    let mut walk = Walk::default();
    loop {
        let f = ExternalTaskFilter {
            topic: Some("work".into()),
            after: walk.after.clone(),
            limit: Some(5),
            ..Default::default()
        };
        let rows = store
            .list_external_tasks(&f)
            .await
            .expect("list_external_tasks");
        let rows = rows.into_iter().map(|t| t.id).collect();
        let Some(last) = walk.take("external tasks", rows, 5) else {
            break;
        };
        let mut c = next_change();
        let new = format!("{last}b");
        c.external_upserted.push(external(&new, "A", "work", 100));
        inserted.insert(new);
        store
            .apply(c)
            .await
            .expect("adding an external task between pages");
    }
    let pages = walk.pages;
    let initial = set((0..12).map(|n| format!("x{:02}", n * 2)));
    check_walk(
        "external tasks",
        &pages,
        &initial,
        &initial.union(&inserted).cloned().collect(),
    );
    assert!(inserted.is_subset(&set(pages.concat())));

    // Incidents: resolving some between pages; `open` combines with paging.
    let mut resolve = next_change();
    resolve.incidents_resolved = (0..6).map(|n| format!("n{:02}", n * 4)).collect();
    store.apply(resolve).await.expect("resolving incidents");
    for (open, expected) in [
        (
            Some(true),
            (0..6)
                .map(|n| format!("n{:02}", n * 4 + 2))
                .collect::<Vec<_>>(),
        ),
        (
            Some(false),
            (0..6).map(|n| format!("n{:02}", n * 4)).collect(),
        ),
        (None, (0..12).map(|n| format!("n{:02}", n * 2)).collect()),
    ] {
        let mut walk = Walk::default();
        loop {
            let f = IncidentFilter {
                open,
                after: walk.after.clone(),
                limit: Some(4),
                ..Default::default()
            };
            let rows = store.list_incidents(&f).await.expect("list_incidents");
            let rows = rows.into_iter().map(|i| i.id).collect();
            if walk.take("incidents", rows, 4).is_none() {
                break;
            }
        }
        assert_eq!(
            walk.pages.concat(),
            expected,
            "incidents with open = {open:?}"
        );
    }
}

pub async fn paging_definitions_by_key_and_version(store: Arc<dyn Store>) {
    for (key, versions) in [("b", 3), ("a", 2), ("c", 1)] {
        for v in 0..versions {
            store
                .deploy(vec![new_def(key, &format!("{key}-{v}"))], at(v))
                .await
                .expect("deploy");
        }
    }
    let position = |d: &DefinitionRecord| DefinitionPosition {
        key: d.key.clone(),
        version: d.version,
    };
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let f = DefinitionFilter {
            key: None,
            after: after.clone(),
            limit: Some(2),
        };
        let rows = store.list_definitions(&f).await.expect("list_definitions");
        assert!(
            rows.iter().all(|d| d.xml.is_none()),
            "listings carry no XML"
        );
        seen.extend(rows.iter().map(|d| d.id.clone()));
        if rows.len() < 2 {
            break;
        }
        after = rows.last().map(position);
        if seen.len() == 2 {
            // Meanwhile a new version of `a` (`a:3`, ordered before the cursor `a:1`:
            // not listed) and a new key `d` (behind the cursor: listed).
            store
                .deploy(vec![new_def("a", "a-new")], at(9))
                .await
                .unwrap();
            store
                .deploy(vec![new_def("d", "d-0")], at(9))
                .await
                .unwrap();
        }
    }
    assert_eq!(
        seen,
        ["a:2", "a:1", "b:3", "b:2", "b:1", "c:1", "d:1"],
        "by key, newest version first; a version deployed before the cursor is not listed"
    );
    let f = DefinitionFilter {
        key: Some("b".into()),
        after: Some(DefinitionPosition {
            key: "b".into(),
            version: 3,
        }),
        limit: Some(1),
    };
    let rows = store.list_definitions(&f).await.unwrap();
    assert_eq!(
        rows.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["b:2"],
        "`after` within one key"
    );
}

pub async fn paging_history_while_it_grows(store: Arc<dyn Store>) {
    // Commands of 1, 3 and 2 events: pages cut through a command's events.
    let a = instance("A", "order");
    let mut first = ChangeSet::new(a.clone(), None, at(0));
    first.history = vec![hist("A", 0, "instanceStarted", 0)];
    insert(store.as_ref(), first).await;
    let mut current = a;
    let mut n = 1;
    let mut append = async |count: i64| {
        let mut c = update_of(&current);
        c.history = (0..count)
            .map(|k| hist("A", n + k, "activityStarted", n + k))
            .collect();
        n += count;
        current = c.instance.clone();
        store.apply(c).await.expect("appending history");
    };
    append(3).await;
    append(2).await;
    let mut other = ChangeSet::new(instance("B", "order"), None, at(0));
    other.history = vec![hist("B", 0, "instanceStarted", 99)];
    insert(store.as_ref(), other).await;

    let mut seen: Vec<i64> = Vec::new();
    let mut after: Option<HistoryPosition> = None;
    let mut pages = 0;
    loop {
        let page = store
            .history_page("A", after, 2)
            .await
            .expect("history_page");
        pages += 1;
        assert!(page.len() <= 2, "at most `limit` events");
        assert!(
            page.windows(2).all(|w| w[0].0 < w[1].0),
            "positions ascend within a page"
        );
        if let (Some(a), Some(first)) = (after, page.first()) {
            assert!(first.0 > a, "a page starts behind its position");
        }
        assert!(
            page.iter().all(|(_, e)| e.instance_id == "A"),
            "only A's events"
        );
        seen.extend(page.iter().map(|(_, e)| e.detail["n"].as_i64().unwrap()));
        if page.len() < 2 {
            break;
        }
        after = page.last().map(|(p, _)| *p);
        if pages == 2 {
            // The history grows behind the reader: those events follow.
            append(3).await;
        }
        assert!(pages < 50, "paging does not end");
    }
    assert_eq!(
        seen,
        (0..9).collect::<Vec<_>>(),
        "every event once, in order"
    );
    let whole = store.history("A").await.unwrap();
    let paged: Vec<HistoryRecord> = store
        .history_page("A", None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert_eq!(paged, whole, "one big page is the whole history");
    assert!(
        store
            .history_page("nope", None, 10)
            .await
            .unwrap()
            .is_empty(),
        "an unknown instance has no history"
    );
}
