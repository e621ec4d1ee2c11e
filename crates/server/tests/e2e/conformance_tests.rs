use std::sync::Arc;

use crate::e2e::corpus::{corpus_dir, load, parse_cases};
use crate::e2e::driver::{Driver, EngineDriver};
use crate::e2e::runner::{assert_conformance, report, run_case};
use crate::e2e::services::missing;

fn runtime() -> Arc<tokio::runtime::Runtime> {
    Arc::new(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap())
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
        let store = steadyflow_store_sqlite::SqliteStore::open(tmp.path().join(format!("s{n}.db"))).unwrap();
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
fn malformed_cases_are_refused_naming_the_case() {
    let err = parse_cases(r#"[{"file":"a.bpmn","deploy":"ok","scope":"core","processKey":"p","scenarios":[]},
                              {"file":"b.bpmn","deploy":"maybe","scope":"core","processKey":"p","scenarios":[]}]"#)
        .unwrap_err();
    assert!(err.contains("case #1 (b.bpmn)") && err.contains("deploy"), "{err}");
    let err = parse_cases(r#"[{"file":"c.bpmn","deploy":"ok","scope":"core","scenarios":[]}]"#).unwrap_err();
    assert!(err.contains("case #0 (c.bpmn)") && err.contains("processKey"), "{err}");
    let err = parse_cases(r#"[{"file":"d.bpmn","deploy":"ok","scope":"core","processKey":"p","scenarios":[{"name":"x"}]}]"#).unwrap_err();
    assert!(err.contains("case #0 (d.bpmn)") && err.contains("steps"), "{err}");
}
