//! Path and query parameters, with malformed ones answered by the API's `400 bad_request` error.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Like `axum::extract::Query`, but rejects with [`ApiError`].
#[derive(Debug, Clone, Default)]
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|r| ApiError::bad_request(r.body_text()))
    }
}

/// Like `axum::extract::Path`, but rejects with [`ApiError`].
#[derive(Debug, Clone)]
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|r| ApiError::bad_request(r.body_text()))
    }
}

// ---- paging ------------------------------------------------------------------------

/// Items a list endpoint returns when `limit` is left out.
pub const DEFAULT_LIMIT: u32 = 100;
/// The largest `limit` a list endpoint accepts; above it is a `400 bad_request`.
pub const MAX_LIMIT: u32 = 1000;

/// The page size asked for: `limit`, or [`DEFAULT_LIMIT`]; outside 1 to [`MAX_LIMIT`] is a 400.
pub(crate) fn page_limit(limit: Option<u32>) -> Result<usize, ApiError> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        n @ 1..=MAX_LIMIT => Ok(n as usize),
        n => Err(ApiError::bad_request(format!(
            "limit {n} is out of range: 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})"
        ))),
    }
}

/// The opaque cursors of the list endpoints: `nextCursor` of one page, `after` of the next.
///
/// A cursor is the position of the last item handed out (its id; a definition's key and
/// version), tagged with the list it belongs to, in URL-safe base64. Clients must not
/// build or parse one: the form may change between versions.
pub(crate) mod cursor {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use crate::error::ApiError;

    const VERSION: &str = "1";

    /// The cursor of position `position` in list `list`.
    pub(crate) fn encode(list: &str, position: &str) -> String {
        URL_SAFE_NO_PAD.encode(format!("{VERSION}|{list}|{position}"))
    }

    /// The position `after` names in list `list`; a malformed cursor, or one of another
    /// list, is a 400.
    pub(crate) fn decode(list: &str, after: Option<&str>) -> Result<Option<String>, ApiError> {
        let Some(after) = after else {
            return Ok(None);
        };
        let invalid = || {
            ApiError::bad_request(format!(
                "`after` is not a cursor of this list: pass the `nextCursor` of the previous page of {list} unchanged"
            ))
        };
        let bytes = URL_SAFE_NO_PAD.decode(after).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let mut parts = text.splitn(3, '|');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(VERSION), Some(l), Some(position)) if l == list && !position.is_empty() => {
                Ok(Some(position.to_string()))
            }
            _ => Err(invalid()),
        }
    }

    /// Cuts a page fetched with `limit + 1` rows down to `limit`; the cursor behind its
    /// last item when more rows followed, else `None` (the last page).
    pub(crate) fn next<T>(
        list: &str,
        rows: &mut Vec<T>,
        limit: usize,
        position: impl Fn(&T) -> String,
    ) -> Option<String> {
        if rows.len() <= limit {
            return None;
        }
        rows.truncate(limit);
        rows.last().map(|last| encode(list, &position(last)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_outside_the_range_are_bad_requests() {
        assert_eq!(page_limit(None).unwrap(), DEFAULT_LIMIT as usize);
        assert_eq!(page_limit(Some(1)).unwrap(), 1);
        assert_eq!(page_limit(Some(MAX_LIMIT)).unwrap(), MAX_LIMIT as usize);
        for bad in [0, MAX_LIMIT + 1, u32::MAX] {
            let e = page_limit(Some(bad)).unwrap_err();
            assert_eq!(e.code(), "bad_request");
            assert!(e.message().contains("1 to 1000"), "{}", e.message());
        }
    }

    #[test]
    fn cursors_round_trip_within_their_list_only() {
        let c = cursor::encode("tasks", "0193-abc|x");
        assert!(
            c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "URL-safe: {c}"
        );
        assert_eq!(
            cursor::decode("tasks", Some(&c)).unwrap().as_deref(),
            Some("0193-abc|x")
        );
        assert_eq!(cursor::decode("tasks", None).unwrap(), None);
        for bad in [
            cursor::encode("incidents", "0193"),
            cursor::encode("tasks", ""),
            "not base64!".to_string(),
            "".to_string(),
            URL_SAFE_NO_PAD_TEST.to_string(),
        ] {
            let e = cursor::decode("tasks", Some(&bad)).unwrap_err();
            assert_eq!(e.code(), "bad_request", "{bad}");
        }
    }

    /// `2|tasks|x`: a cursor of a later format.
    const URL_SAFE_NO_PAD_TEST: &str = "Mnx0YXNrc3x4";

    #[test]
    fn a_page_past_its_limit_names_its_last_item() {
        let mut rows = vec!["a", "b", "c"];
        let next = cursor::next("tasks", &mut rows, 2, |r| r.to_string());
        assert_eq!(rows, ["a", "b"]);
        assert_eq!(next, Some(cursor::encode("tasks", "b")));
        let mut last = vec!["a", "b"];
        assert_eq!(cursor::next("tasks", &mut last, 2, |r| r.to_string()), None);
        assert_eq!(last, ["a", "b"]);
    }
}
