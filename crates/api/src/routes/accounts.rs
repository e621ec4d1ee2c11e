//! Logging in, who am I, and the administration of users and their tokens.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use steadyflow_store::users::{Role, TokenRecord, UserRecord};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::accounts::{AccountError, Accounts, Checked, DEFAULT_TOKEN_TTL, UserChange};
use crate::auth::Principal;
use crate::error::{ApiError, Code, ErrorResponse};
use crate::json::{Json, JsonOrEmpty};
use crate::params::Path;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(me))
        .routes(routes!(list_users, add_user))
        .routes(routes!(get_user, change_user, remove_user))
        .routes(routes!(list_tokens, issue_token))
        .routes(routes!(revoke_token))
}

fn accounts(state: &AppState) -> Accounts {
    Accounts::new(state.engine.store().clone(), state.engine.clock().clone())
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::NoUser(_) | AccountError::NoToken(_) => {
                ApiError::not_found(e.to_string())
            }
            AccountError::Exists(_) => ApiError::new(Code::AlreadyExists, e.to_string()),
            AccountError::Invalid(m) => ApiError::bad_request(m),
            AccountError::Store(s) => s.into(),
        }
    }
}

/// A role, as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    Admin,
    Operator,
    User,
    Viewer,
}

impl From<RoleName> for Role {
    fn from(r: RoleName) -> Role {
        match r {
            RoleName::Admin => Role::Admin,
            RoleName::Operator => Role::Operator,
            RoleName::User => Role::User,
            RoleName::Viewer => Role::Viewer,
        }
    }
}

impl From<Role> for RoleName {
    fn from(r: Role) -> RoleName {
        match r {
            Role::Admin => RoleName::Admin,
            Role::Operator => RoleName::Operator,
            Role::User => RoleName::User,
            Role::Viewer => RoleName::Viewer,
        }
    }
}

/// A user or group name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(value_type = String, pattern = "^[A-Za-z0-9._@-]{1,64}$")]
pub struct Name(pub String);

/// A user as the API shows it (never the password hash).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    pub role: RoleName,
    pub groups: Vec<String>,
    /// Whether the user can log in with a password.
    pub has_password: bool,
    pub disabled: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<UserRecord> for User {
    fn from(u: UserRecord) -> Self {
        User {
            has_password: u.password_hash.is_some(),
            disabled: u.disabled_at.is_some(),
            id: u.id,
            role: u.role.into(),
            groups: u.groups,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

/// A token's public part (its secret is shown once, when it is issued).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub id: String,
    pub user_id: String,
    pub label: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<TokenRecord> for TokenInfo {
    fn from(t: TokenRecord) -> Self {
        TokenInfo {
            id: t.id,
            user_id: t.user_id,
            label: t.label,
            created_at: t.created_at,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
        }
    }
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    #[schema(min_length = 1, max_length = 64)]
    pub username: String,
    #[schema(min_length = 1, max_length = 1024)]
    pub password: String,
}

/// A token issued: `token` is shown only in this answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedToken {
    pub token: String,
    pub id: String,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<crate::accounts::IssuedToken> for IssuedToken {
    fn from(t: crate::accounts::IssuedToken) -> Self {
        IssuedToken {
            token: t.text,
            id: t.record.id,
            expires_at: t.record.expires_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    pub name: String,
    pub role: RoleName,
    pub groups: Vec<String>,
    /// The token this request carried (absent for the bootstrap token).
    pub token_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewUser {
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    pub id: String,
    pub role: RoleName,
    #[serde(default)]
    pub groups: Vec<Name>,
    /// Omit for a user who only uses tokens.
    #[schema(min_length = 8)]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserPatch {
    pub role: Option<RoleName>,
    pub groups: Option<Vec<Name>>,
    #[schema(min_length = 8)]
    pub password: Option<String>,
    /// Disabling refuses every token and password of the user at once.
    pub disabled: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewToken {
    /// Lifetime in seconds, at most ten years (default 30 days).
    #[schema(minimum = 1, maximum = 315_360_000)]
    #[serde(default, deserialize_with = "optional_integral")]
    pub ttl_seconds: Option<u64>,
    #[schema(min_length = 1, max_length = 128)]
    pub label: Option<String>,
}

/// An optional integer field (`null` or absent: none; `5.0` is an integer, as JSON
/// Schema has it).
fn optional_integral<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "crate::model::integral")] u64);
    Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
}

/// Failed log-ins allowed per user and per address in [`WINDOW`].
const MAX_FAILURES: u32 = 5;
const WINDOW: Duration = Duration::from_secs(300);

/// Failed log-ins per key (`user:<name>` or `addr:<ip>`), in this process.
fn failures() -> &'static Mutex<HashMap<String, (u32, Instant)>> {
    static F: OnceLock<Mutex<HashMap<String, (u32, Instant)>>> = OnceLock::new();
    F.get_or_init(Default::default)
}

/// Seconds until `keys` may try again, if any of them is over the limit.
fn blocked(keys: &[String]) -> Option<u32> {
    let map = failures()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    keys.iter()
        .filter_map(|k| map.get(k))
        .filter(|(n, since)| *n >= MAX_FAILURES && since.elapsed() < WINDOW)
        .map(|(_, since)| (WINDOW - since.elapsed()).as_secs() as u32 + 1)
        .max()
}

fn record_failure(keys: &[String]) {
    let mut map = failures()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if map.len() > 100_000 {
        map.retain(|_, (_, since)| since.elapsed() < WINDOW);
    }
    for k in keys {
        let entry = map.entry(k.clone()).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }
}

fn clear_failures(keys: &[String]) {
    let mut map = failures()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for k in keys {
        map.remove(k);
    }
}

/// Log in with a user name and password; answers a new token (default lifetime).
///
/// Five failures within five minutes, for one user name or from one address, answer
/// `429 too_many_requests` until the window has passed.
#[utoipa::path(
    post,
    path = "/api/v1/auth/token",
    tag = "auth",
    request_body = Login,
    security(()),
    responses(
        (status = 200, body = IssuedToken),
        (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 429, body = ErrorResponse, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
async fn login(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Json(body): Json<Login>,
) -> Result<Json<IssuedToken>, ApiError> {
    let (user_len, password_len) = (body.username.chars().count(), body.password.chars().count());
    if !(1..=64).contains(&user_len) || !(1..=1024).contains(&password_len) {
        return Err(ApiError::bad_request(
            "username has 1 to 64 characters, password 1 to 1024",
        ));
    }
    let addr: Option<IpAddr> = peer.map(|Extension(ConnectInfo(a))| a.ip());
    let mut keys = vec![format!("user:{}", body.username)];
    if let Some(a) = addr {
        keys.push(format!("addr:{a}"));
    }
    if let Some(secs) = blocked(&keys) {
        tracing::warn!(user = %body.username, addr = ?addr, "log-in refused: too many failures");
        return Err(ApiError::too_many_requests(
            "too many failed log-ins; retry later",
            secs,
        ));
    }
    let accounts = accounts(&state);
    match accounts
        .check_password(&body.username, &body.password)
        .await?
    {
        Checked::Ok(user, _) => {
            clear_failures(&keys[..1]);
            let issued = accounts
                .issue_token(&user.id, DEFAULT_TOKEN_TTL, Some("login".into()))
                .await?;
            tracing::info!(user = %user.id, addr = ?addr, token = %issued.record.id, "logged in");
            Ok(Json(issued.into()))
        }
        Checked::Refused(why) => {
            record_failure(&keys);
            // Logged without the password.
            tracing::warn!(user = %body.username, addr = ?addr, reason = %why, "log-in failed");
            Err(ApiError::invalid_token("wrong user name or password"))
        }
    }
}

/// Who the token is.
#[utoipa::path(
    get,
    path = "/api/v1/auth/me",
    tag = "auth",
    responses((status = 200, body = Me), (status = 401, body = ErrorResponse))
)]
async fn me(Extension(p): Extension<Principal>) -> Json<Me> {
    Json(Me {
        name: p.name,
        role: p.role.into(),
        groups: p.groups,
        token_id: p.token_id,
    })
}

/// Every user (admin).
#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "auth",
    responses((status = 200, body = Vec<User>), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse))
)]
async fn list_users(State(state): State<AppState>) -> Result<Json<Vec<User>>, ApiError> {
    let users = accounts(&state).users().await?;
    Ok(Json(users.into_iter().map(Into::into).collect()))
}

/// Add a user (admin).
#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "auth",
    request_body = NewUser,
    responses(
        (status = 201, body = User),
        (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse),
        (status = 409, description = "`already_exists`", body = ErrorResponse),
    )
)]
async fn add_user(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Json(body): Json<NewUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let user = accounts(&state)
        .add_user(
            &body.id,
            body.role.into(),
            body.groups.into_iter().map(|g| g.0).collect(),
            body.password,
        )
        .await?;
    tracing::info!(by = %p.name, user = %user.id, "user added through the API");
    Ok((StatusCode::CREATED, Json(user.into())))
}

/// One user (admin).
#[utoipa::path(
    get,
    path = "/api/v1/users/{id}",
    tag = "auth",
    params(("id" = String, Path, description = "User name")),
    responses((status = 200, body = User), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
async fn get_user(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(accounts(&state).user(&id).await?.into()))
}

/// Change a user's role, groups, password or disabled state (admin).
#[utoipa::path(
    patch,
    path = "/api/v1/users/{id}",
    tag = "auth",
    params(("id" = String, Path, description = "User name")),
    request_body(content = Option<UserPatch>, description = "May be left out: nothing changes"),
    responses((status = 200, body = User), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
async fn change_user(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty<UserPatch>,
) -> Result<Json<User>, ApiError> {
    let change = UserChange {
        role: body.role.map(Into::into),
        groups: body.groups.map(|g| g.into_iter().map(|n| n.0).collect()),
        password: body.password.map(Some),
        disabled: body.disabled,
    };
    let user = accounts(&state).change_user(&id, change).await?;
    tracing::info!(by = %p.name, user = %user.id, "user changed through the API");
    Ok(Json(user.into()))
}

/// Remove a user and their tokens (admin).
#[utoipa::path(
    delete,
    path = "/api/v1/users/{id}",
    tag = "auth",
    params(("id" = String, Path, description = "User name")),
    responses((status = 204), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
async fn remove_user(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    accounts(&state).remove_user(&id).await?;
    tracing::info!(by = %p.name, user = %id, "user removed through the API");
    Ok(StatusCode::NO_CONTENT)
}

/// A user's tokens (admin).
#[utoipa::path(
    get,
    path = "/api/v1/users/{id}/tokens",
    tag = "auth",
    params(("id" = String, Path, description = "User name")),
    responses((status = 200, body = Vec<TokenInfo>), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
async fn list_tokens(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    let accounts = accounts(&state);
    accounts.user(&id).await?;
    let tokens = accounts.tokens(Some(&id)).await?;
    Ok(Json(tokens.into_iter().map(Into::into).collect()))
}

/// Issue a token for a user (admin); the token is in this answer only.
#[utoipa::path(
    post,
    path = "/api/v1/users/{id}/tokens",
    tag = "auth",
    params(("id" = String, Path, description = "User name")),
    request_body(content = Option<NewToken>, description = "May be left out: default lifetime, no label"),
    responses((status = 201, body = IssuedToken), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
async fn issue_token(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty<NewToken>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    let ttl = body
        .ttl_seconds
        .map_or(DEFAULT_TOKEN_TTL, Duration::from_secs);
    let issued = accounts(&state).issue_token(&id, ttl, body.label).await?;
    tracing::info!(by = %p.name, user = %id, token = %issued.record.id, "token issued through the API");
    Ok((StatusCode::CREATED, Json(issued.into())))
}

/// Revoke a token (admin); takes effect on the next request, on every node.
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "auth",
    params(("id" = String, Path, description = "Token id")),
    responses((status = 200, body = TokenInfo), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
async fn revoke_token(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    let token = accounts(&state).revoke(&id).await?;
    tracing::info!(by = %p.name, token = %id, "token revoked through the API");
    Ok(Json(token.into()))
}
