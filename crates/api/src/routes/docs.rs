//! `/api/docs`: a browsable page of this API (Swagger UI) that works offline.
//!
//! Swagger UI's files come from the npm registry's `swagger-ui-dist` package, kept in
//! `web/vendor/swagger-ui/` with its licence (see the README there) and compiled into
//! the binary: the page needs no CDN and no network. It reads the document at
//! `/api/v1/openapi.json`. Open to everyone, like `/health`; not part of the OpenAPI
//! document (it is not API).

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use utoipa_axum::router::OpenApiRouter;

use crate::AppState;

const BUNDLE_JS: &[u8] = include_bytes!("../../../../web/vendor/swagger-ui/swagger-ui-bundle.js");
const CSS: &[u8] = include_bytes!("../../../../web/vendor/swagger-ui/swagger-ui.css");

/// The page. Asset and document URLs are relative (to `/api/`), so it also works behind
/// a reverse proxy that mounts the service under a path prefix.
const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Steadyflow API</title>
  <link rel="stylesheet" href="docs/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/swagger-ui-bundle.js"></script>
  <script src="docs/init.js"></script>
</body>
</html>
"#;

/// Starts Swagger UI on the document; `validatorUrl: null` keeps it from calling the
/// public validator (offline, and nothing leaves the browser).
const INIT_JS: &str = r##"window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "v1/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    validatorUrl: null,
    persistAuthorization: true
  });
});
"##;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .route("/api/docs", get(page))
        .route(
            "/api/docs/",
            get(|| async { Redirect::permanent("../docs") }),
        )
        .route("/api/docs/init.js", get(init_js))
        .route("/api/docs/swagger-ui-bundle.js", get(bundle_js))
        .route("/api/docs/swagger-ui.css", get(css))
}

/// A static asset; cached for an hour (the files change only with the binary).
fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE.as_bytes())
}

async fn init_js() -> Response {
    asset("text/javascript; charset=utf-8", INIT_JS.as_bytes())
}

async fn bundle_js() -> Response {
    asset("text/javascript; charset=utf-8", BUNDLE_JS)
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}
