//! `/api/docs`: the browsable API page and every asset it references, served from the
//! binary (no CDN), open without authentication.

use std::sync::Arc;

use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use steadyflow_api::{ApiError, Authenticator, Principal};
use steadyflow_engine::SystemClock;

use crate::support::{App, Reply};

/// Refuses every request: what passes anyway is open.
struct DenyAll;

#[async_trait::async_trait]
impl Authenticator for DenyAll {
    async fn authenticate(&self, _: &Parts) -> Result<Principal, ApiError> {
        Err(ApiError::unauthorized("no"))
    }
}

/// The values of `attr="..."` in `html`.
fn attribute_values<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let needle = format!("{attr}=\"");
    html.match_indices(&needle)
        .filter_map(|(i, _)| {
            let rest = &html[i + needle.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect()
}

fn content_type(r: &Reply) -> &str {
    r.headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_docs_page_and_its_assets_are_served_without_auth() {
    let app = App::build(Arc::new(SystemClock), Arc::new(DenyAll));
    assert_eq!(
        app.get("/api/v1/process-definitions").await.status,
        StatusCode::UNAUTHORIZED,
        "the API itself is closed here"
    );
    let page = app.get("/api/docs").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert_eq!(content_type(&page), "text/html; charset=utf-8");
    assert!(page.text.contains("id=\"swagger-ui\""), "{}", page.text);

    let scripts = attribute_values(&page.text, "src");
    let styles = attribute_values(&page.text, "href");
    assert_eq!(scripts.len(), 2, "{scripts:?}");
    assert_eq!(styles.len(), 1, "{styles:?}");
    let mut js = String::new();
    for (refs, expected_type) in [
        (&scripts, "text/javascript; charset=utf-8"),
        (&styles, "text/css; charset=utf-8"),
    ] {
        for r in refs.iter() {
            assert!(!r.contains("//"), "{r}: served by the binary, not a CDN");
            // Relative to the page at /api/docs.
            let url = format!("/api/{r}");
            let asset = app.get(&url).await;
            assert_eq!(asset.status, StatusCode::OK, "{url}");
            assert_eq!(content_type(&asset), expected_type, "{url}");
            assert!(asset.text.len() > 100, "{url} has content");
            if expected_type.starts_with("text/javascript") {
                js.push_str(&asset.text);
            }
        }
    }
    let bundle = app.get("/api/docs/swagger-ui-bundle.js").await;
    let vendored = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../web/vendor/swagger-ui/swagger-ui-bundle.js"
    ))
    .unwrap();
    assert!(bundle.text == vendored, "the vendored bundle, unchanged");
    assert!(
        js.contains("SwaggerUIBundle({"),
        "the page starts Swagger UI"
    );
    let init = app.get("/api/docs/init.js").await.text;
    assert!(init.contains("url: \"v1/openapi.json\""), "{init}");
    assert!(
        init.contains("validatorUrl: null"),
        "no call to the public validator"
    );

    let r = app.get("/api/docs/").await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.headers[header::LOCATION], "../docs");
}

#[tokio::test]
async fn the_page_points_at_the_served_document() {
    let app = App::new();
    let doc = app.get("/api/v1/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.json()["paths"]["/api/v1/process-instances"].is_object());
    // `/api/docs` is not API: it is not in the document.
    assert!(doc.json()["paths"].get("/api/docs").is_none());
}
