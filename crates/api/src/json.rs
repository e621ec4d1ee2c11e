//! JSON bodies in and out. Unlike `axum::Json`, a bad body (syntax, wrong types, wrong
//! content type) is answered with the API's own `400 invalid_json` error.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::{ApiError, Code};

/// A JSON request body (required) or response body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

/// A JSON request body that may be left out entirely: an empty body, or `null`, yields
/// `T::default()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonOrEmpty<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (headers, bytes) = read(req, state).await?;
        if bytes.iter().all(is_json_whitespace) {
            return Err(ApiError::invalid_json(
                "the request body is empty; expected a JSON object",
            ));
        }
        parse(&headers, &bytes).map(Json)
    }
}

impl<S, T> FromRequest<S> for JsonOrEmpty<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (headers, bytes) = read(req, state).await?;
        // No body at all is "no body"; whitespace alone is not JSON (a body that was
        // sent but holds no value is refused, as the schema says).
        if bytes.is_empty() {
            return Ok(JsonOrEmpty(T::default()));
        }
        // `null` says "no body" too (the schema of such a body is nullable).
        parse::<Option<T>>(&headers, &bytes).map(|v| JsonOrEmpty(v.unwrap_or_default()))
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// The whole body as bytes, its size limit and transport errors mapped to [`ApiError`].
pub(crate) async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state)
        .await
        .map_err(bytes_rejection)
}

async fn read<S: Send + Sync>(req: Request, state: &S) -> Result<(HeaderMap, Bytes), ApiError> {
    let headers = req.headers().clone();
    let bytes = body_bytes(req, state).await?;
    Ok((headers, bytes))
}

fn bytes_rejection(r: BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(Code::PayloadTooLarge, r.body_text())
    } else {
        ApiError::bad_request(r.body_text())
    }
}

fn parse<T: DeserializeOwned>(headers: &HeaderMap, bytes: &[u8]) -> Result<T, ApiError> {
    if !is_json(headers) {
        return Err(ApiError::invalid_json(
            "expected a request with the header `Content-Type: application/json`",
        ));
    }
    // Every request body of this API is an object (or, where it may be left out,
    // `null`); serde would also read a struct from an array of its fields.
    let first = bytes.iter().find(|b| !is_json_whitespace(b));
    if !matches!(first, Some(b'{' | b'n')) {
        return Err(ApiError::invalid_json(
            "invalid JSON body: expected a JSON object",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid_json(format!("invalid JSON body: {e}"))
            .with_details(json!({ "line": e.line(), "column": e.column() }))
    })
}

/// JSON's white space (RFC 8259): space, tab, line feed, carriage return; not form feed,
/// which `u8::is_ascii_whitespace` counts too.
fn is_json_whitespace(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// `application/json` or any `application/*+json`, parameters ignored.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        h
    }

    #[test]
    fn json_content_types() {
        assert!(is_json(&headers("application/json")));
        assert!(is_json(&headers("Application/JSON; charset=utf-8")));
        assert!(is_json(&headers("application/problem+json")));
        assert!(!is_json(&headers("text/plain")));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn only_objects_are_bodies() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code, reason = "only parsed")]
        struct Body {
            a: Option<i32>,
            b: Option<i32>,
        }
        let h = headers("application/json");
        assert!(parse::<Body>(&h, br#" {"a": 1}"#).is_ok());
        let e = parse::<Body>(&h, b"[1, 2]").unwrap_err();
        assert_eq!(e.code(), "invalid_json");
        assert!(
            e.message().contains("expected a JSON object"),
            "{}",
            e.message()
        );
        assert!(parse::<Option<Body>>(&h, b"null").unwrap().is_none());
        assert_eq!(parse::<Body>(&h, b"7").unwrap_err().code(), "invalid_json");
        assert_eq!(
            parse::<Body>(&h, b"\x0c{}").unwrap_err().code(),
            "invalid_json"
        );
    }

    #[test]
    fn type_errors_name_their_position() {
        let e = parse::<std::collections::HashMap<String, i32>>(
            &headers("application/json"),
            br#"{"a": "x"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code(), "invalid_json");
        assert!(e.message().contains("invalid type"), "{}", e.message());
        assert_eq!(e.details(), Some(&json!({"line": 1, "column": 9})));
    }
}
