/// `docs/openapi.json` is the document the running API serves; regenerate it with
/// `cargo run -- openapi > docs/openapi.json` (or `STEADYFLOW_UPDATE_OPENAPI=1 cargo test`).
#[test]
fn checked_in_openapi_document_is_current() {
    let path = crate::e2e::services::workspace_root().join("docs/openapi.json");
    let current = steadyflow_api::openapi().to_pretty_json().unwrap() + "\n";
    if std::env::var_os("STEADYFLOW_UPDATE_OPENAPI").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &current).unwrap();
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        stored == current,
        "docs/openapi.json is stale: run `cargo run -- openapi > docs/openapi.json` and commit it"
    );
    for route in [
        "/api/v1/process-definitions",
        "/api/v1/tasks/{id}/complete",
        "/api/v1/external-tasks/fetch-and-lock",
    ] {
        assert!(current.contains(route), "the document lacks {route}");
    }
}
