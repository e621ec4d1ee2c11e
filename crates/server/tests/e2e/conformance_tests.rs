use std::sync::Arc;

use crate::e2e::corpus::{Case, corpus_dir, load, parse_cases};
use crate::e2e::driver::{Driver, EngineDriver};
use crate::e2e::http_driver::HttpDriver;
use crate::e2e::runner::{assert_conformance, report, run_case};
use crate::e2e::services::missing;

fn runtime() -> Arc<tokio::runtime::Runtime> {
    Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    )
}

#[test]
fn corpus_on_sqlite() {
    let Some(dir) = corpus_dir() else {
        return missing("the BPMN corpus at ../shared/bpmn");
    };
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    let mut fresh = || -> Box<dyn Driver> {
        n += 1;
        let store = steadyflow_store_sqlite::SqliteStore::open(tmp.path().join(format!("s{n}.db")))
            .unwrap();
        Box::new(EngineDriver::new(rt.clone(), Arc::new(store)))
    };
    let mut results = Vec::new();
    for case in load(&dir) {
        results.extend(run_case(&dir, &case, &mut fresh));
    }
    report("SQLite", &results);
    assert_conformance("SQLite", &results);
}

#[test]
fn corpus_on_postgres() {
    let Some(dir) = corpus_dir() else {
        return missing("the BPMN corpus at ../shared/bpmn");
    };
    let rt = runtime();
    // Probe once: skips visibly (or fails under STEADYFLOW_REQUIRE_SERVICES=1) without PostgreSQL.
    let Some(probe) = rt.block_on(steadyflow_store_pg::testing::fresh_database()) else {
        return;
    };
    rt.block_on(probe.cleanup());
    let mut results = Vec::new();
    for case in load(&dir) {
        let mut dbs = Vec::new();
        let mut fresh = || -> Box<dyn Driver> {
            let db = rt
                .block_on(steadyflow_store_pg::testing::fresh_database())
                .expect("PostgreSQL went away");
            let store = rt
                .block_on(steadyflow_store_pg::PgStore::connect(db.url()))
                .expect("connect");
            dbs.push(db);
            Box::new(EngineDriver::new(rt.clone(), Arc::new(store)))
        };
        results.extend(run_case(&dir, &case, &mut fresh));
        for db in dbs {
            rt.block_on(db.cleanup());
        }
    }
    report("PostgreSQL", &results);
    assert_conformance("PostgreSQL", &results);
}

/// The `core` scope once more, end to end over HTTP against a started `steadyflow serve`
/// (scenarios that move the clock excepted: a server's clock is the wall clock).
#[test]
fn core_corpus_over_http() {
    let Some(dir) = corpus_dir() else {
        return missing("the BPMN corpus at ../shared/bpmn");
    };
    let moves_clock = |s: &crate::e2e::corpus::Scenario| {
        s.steps
            .iter()
            .any(|st| st.get("advanceClock").is_some() || st.get("expectPendingTimers").is_some())
    };
    let mut results = Vec::new();
    for case in load(&dir).into_iter().filter(|c| c.scope == "core") {
        let case = Case {
            scenarios: case
                .scenarios
                .iter()
                .filter(|s| !moves_clock(s))
                .cloned()
                .collect(),
            ..case
        };
        if case.scenarios.is_empty() {
            continue;
        }
        let mut fresh = || -> Box<dyn Driver> { Box::new(HttpDriver::start()) };
        results.extend(run_case(&dir, &case, &mut fresh));
    }
    report("HTTP (steadyflow serve, SQLite)", &results);
    assert!(
        results.len() >= 40,
        "expected the core scope to have at least 40 HTTP scenarios, ran {}",
        results.len()
    );
    assert_conformance("HTTP", &results);
}

#[test]
fn malformed_cases_are_refused_naming_the_case() {
    let err = parse_cases(r#"[{"file":"a.bpmn","deploy":"ok","scope":"core","processKey":"p","scenarios":[]},
                              {"file":"b.bpmn","deploy":"maybe","scope":"core","processKey":"p","scenarios":[]}]"#)
        .unwrap_err();
    assert!(
        err.contains("case #1 (b.bpmn)") && err.contains("deploy"),
        "{err}"
    );
    let err = parse_cases(r#"[{"file":"c.bpmn","deploy":"ok","scope":"core","scenarios":[]}]"#)
        .unwrap_err();
    assert!(
        err.contains("case #0 (c.bpmn)") && err.contains("processKey"),
        "{err}"
    );
    let err = parse_cases(r#"[{"file":"d.bpmn","deploy":"ok","scope":"core","processKey":"p","scenarios":[{"name":"x"}]}]"#).unwrap_err();
    assert!(
        err.contains("case #0 (d.bpmn)") && err.contains("steps"),
        "{err}"
    );
}
