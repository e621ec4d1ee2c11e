//! The authentication seam: every `/api/v1` request passes an [`Authenticator`] before
//! its handler; the resulting [`Principal`] is put into the request extensions.

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::ApiError;

/// Who is calling. Handlers read it with `axum::Extension<Principal>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub roles: Vec<String>,
}

impl Principal {
    pub fn anonymous() -> Self {
        Principal {
            name: "anonymous".into(),
            roles: Vec::new(),
        }
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Decides who a request comes from. Called for every `/api/v1` request before the
/// handler; `Err` short-circuits with its error (usually 401 or 403).
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, parts: &Parts) -> Result<Principal, ApiError>;
}

/// Lets everyone in as [`Principal::anonymous`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate(&self, _parts: &Parts) -> Result<Principal, ApiError> {
        Ok(Principal::anonymous())
    }
}

/// Middleware running the [`Authenticator`] of the state.
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = req.into_parts();
    match state.auth.authenticate(&parts) {
        Ok(principal) => {
            tracing::trace!(principal = %principal.name, "authenticated");
            parts.extensions.insert(principal);
            next.run(Request::from_parts(parts, body)).await
        }
        Err(e) => {
            tracing::debug!(error = %e, uri = %parts.uri, "authentication refused");
            e.into_response()
        }
    }
}
