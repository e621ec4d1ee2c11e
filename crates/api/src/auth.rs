//! Authentication and authorization of `/api/v1`.
//!
//! Every `/api/v1` request passes [`authenticate`] before its handler: the route's rule
//! in [`access`](crate::access) says whether it is public or which roles may call it;
//! the [`Authenticator`] of the state says who the caller is (a [`Principal`], put into
//! the request extensions for the handler). A missing, malformed, unknown, expired or
//! revoked token answers 401 with `WWW-Authenticate: Bearer`; a role the rule does not
//! name answers 403.

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::{MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use steadyflow_store::users::{Role, UserRecord};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::access::{self, Rule};
use crate::accounts::{Accounts, Checked, Refused};
use crate::error::ApiError;

/// Who is calling. Handlers read it with `axum::Extension<Principal>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// The user's groups (candidate groups of user tasks).
    pub groups: Vec<String>,
    /// The token the request carried, when it was a user's token.
    pub token_id: Option<String>,
}

impl Principal {
    /// What [`AllowAll`] lets in: an administrator without a name.
    pub fn anonymous() -> Self {
        Principal {
            name: "anonymous".into(),
            role: Role::Admin,
            groups: Vec::new(),
            token_id: None,
        }
    }

    pub fn of_user(user: &UserRecord, token_id: Option<String>) -> Self {
        Principal {
            name: user.id.clone(),
            role: user.role,
            groups: user.groups.clone(),
            token_id,
        }
    }

    /// Operators and administrators act for others (claim a task for a user, say).
    pub fn acts_for_others(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Operator)
    }
}

/// Decides who a request comes from. Called for every non-public `/api/v1` request
/// before the handler; `Err` short-circuits with its error (401, or 503 when the
/// database cannot be asked).
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    async fn authenticate(&self, parts: &Parts) -> Result<Principal, ApiError>;
}

/// Lets everyone in as [`Principal::anonymous`] (an administrator): for tests and for
/// embedding behind another gate, never for a listener others can reach.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

#[async_trait]
impl Authenticator for AllowAll {
    async fn authenticate(&self, _parts: &Parts) -> Result<Principal, ApiError> {
        Ok(Principal::anonymous())
    }
}

/// Bearer tokens checked against the database ([`Accounts`]), plus an optional
/// bootstrap token from the environment (`STEADYFLOW_ADMIN_TOKEN`) that is an
/// administrator's.
pub struct TokenAuth {
    accounts: Accounts,
    /// SHA-256 of the bootstrap token (compared in constant time, whatever its length).
    admin_token: Option<[u8; 32]>,
}

/// The name the bootstrap token acts as (in logs and the audit trail).
pub const BOOTSTRAP_ADMIN: &str = "bootstrap-admin";

impl TokenAuth {
    pub fn new(accounts: Accounts, admin_token: Option<&str>) -> Self {
        TokenAuth {
            accounts,
            admin_token: admin_token
                .filter(|t| !t.is_empty())
                .map(|t| Sha256::digest(t.as_bytes()).into()),
        }
    }

    pub fn shared(accounts: Accounts, admin_token: Option<&str>) -> Arc<dyn Authenticator> {
        Arc::new(TokenAuth::new(accounts, admin_token))
    }
}

/// The token of an `Authorization: Bearer` header; `Err` says what is wrong.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized("this route needs `Authorization: Bearer <token>`")
    })?;
    let text = value
        .to_str()
        .map_err(|_| ApiError::invalid_token("the Authorization header is not text"))?;
    let (scheme, token) = text.split_once(' ').ok_or_else(|| {
        ApiError::invalid_token("the Authorization header is not `Bearer <token>`")
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::invalid_token(
            "the Authorization header is not `Bearer <token>`",
        ));
    }
    Ok(token.trim())
}

#[async_trait]
impl Authenticator for TokenAuth {
    async fn authenticate(&self, parts: &Parts) -> Result<Principal, ApiError> {
        let token = bearer(&parts.headers)?;
        if let Some(admin) = &self.admin_token {
            let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            if bool::from(presented.ct_eq(admin)) {
                return Ok(Principal {
                    name: BOOTSTRAP_ADMIN.into(),
                    role: Role::Admin,
                    groups: Vec::new(),
                    token_id: None,
                });
            }
        }
        match self.accounts.check_token(token).await? {
            Checked::Ok(user, token) => Ok(Principal::of_user(&user, token.map(|t| t.id.clone()))),
            Checked::Refused(why) => {
                tracing::info!(reason = %why, uri = %parts.uri, "token refused");
                Err(ApiError::invalid_token(match why {
                    Refused::Expired => "the token has expired",
                    Refused::Revoked => "the token was revoked",
                    Refused::Disabled => "the token's user is disabled",
                    _ => "the token is not valid",
                }))
            }
        }
    }
}

/// Middleware: the route's rule, then the [`Authenticator`] of the state.
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let rule = access::rule(&parts.method, &route);
    let principal = match rule {
        Some(Rule::Public) => None,
        _ => match state.auth.authenticate(&parts).await {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::debug!(error = %e, uri = %parts.uri, "authentication refused");
                return e.into_response();
            }
        },
    };
    if let Some(p) = &principal {
        match rule {
            Some(rule) if rule.allows(p.role) => {}
            Some(_) => {
                tracing::info!(user = %p.name, role = %p.role, method = %parts.method, route, "forbidden");
                return ApiError::forbidden(format!(
                    "role `{}` may not {} {route}",
                    p.role, parts.method
                ))
                .into_response();
            }
            None => {
                // A route without a rule is a bug: refuse rather than guess.
                tracing::error!(method = %parts.method, route, "route has no access rule");
                return ApiError::forbidden("this route has no access rule").into_response();
            }
        }
        tracing::trace!(principal = %p.name, "authenticated");
        parts.extensions.insert(p.clone());
        // The audit trail: history events of this request's commands name the caller.
        let name = p.name.clone();
        return steadyflow_engine::actor::acting_as(
            &name,
            next.run(Request::from_parts(parts, body)),
        )
        .await;
    }
    next.run(Request::from_parts(parts, body)).await
}
