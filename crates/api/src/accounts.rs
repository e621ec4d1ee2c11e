//! Users, their passwords and API tokens: the rules, for the HTTP routes and the
//! `steadyflow user` commands alike.
//!
//! * A password is kept as an argon2id hash (PHC string, the crate's default cost:
//!   19 MiB, 2 passes), computed off the async threads.
//! * A token reads `sf_<id>_<secret>`: `id` is 16 hex digits (public: listed, revoked by
//!   it), `secret` 32 random bytes in base64url (256 bits). Only the SHA-256 of the
//!   secret is stored; a fast hash suffices for a secret that cannot be guessed, and a
//!   look-up is one primary-key read (`id`) plus a constant-time compare.
//! * A token that checked out is kept in memory with its user while the store's
//!   plain-row epoch ([`steadyflow_store::users::PlainWatch`]) stays the same, so a busy
//!   client costs no database read per request. Every user or token write bumps that
//!   epoch: on this node at commit, on other nodes when PostgreSQL delivers the write's
//!   `NOTIFY` (milliseconds), on SQLite when another process's write is polled (50 ms).
//!   Disabling a user or revoking a token therefore takes effect on the next request on
//!   this node and within that delay everywhere else. A store that cannot tell (its
//!   listener is down) serves no cached token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use steadyflow_engine::Clock;
use steadyflow_store::users::{self, PlainWrite, Role, TokenRecord, UserRecord};
use steadyflow_store::{Store, StoreError, Timestamp};
use subtle::ConstantTimeEq;

/// Why an account operation did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AccountError {
    #[error("no user `{0}`")]
    NoUser(String),
    #[error("no token `{0}`")]
    NoToken(String),
    #[error("user `{0}` exists already")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a credential was refused. The reason is logged; clients only learn that it was
/// refused (and, for a token, that it is invalid).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("malformed token")]
    Malformed,
    #[error("unknown token")]
    Unknown,
    #[error("token expired")]
    Expired,
    #[error("token revoked")]
    Revoked,
    #[error("user disabled")]
    Disabled,
    #[error("wrong user name or password")]
    BadPassword,
}

/// What a credential check yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    Ok(Box<UserRecord>, Option<Box<TokenRecord>>),
    Refused(Refused),
}

/// Longest user or group name.
pub const MAX_NAME: usize = 64;
/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 8;
/// Default token lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(30 * 86_400);

/// A token as handed out once: its text and its stored record.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub text: String,
    pub record: TokenRecord,
}

/// A change to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    pub role: Option<Role>,
    pub groups: Option<Vec<String>>,
    /// `Some(None)` removes the password (tokens only).
    pub password: Option<Option<String>>,
    pub disabled: Option<bool>,
}

/// The account rules over a store and a clock.
#[derive(Clone)]
pub struct Accounts {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    tokens: Arc<TokenCache>,
}

/// Tokens that checked out, by id, with their user, as read at `epoch`.
#[derive(Default)]
struct TokenCache {
    entries: Mutex<HashMap<String, CachedToken>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

struct CachedToken {
    epoch: u64,
    token: TokenRecord,
    user: Option<UserRecord>,
}

/// Most tokens kept; past it the cache starts over (only tokens with a right secret get
/// in, so this is the number of live clients, not of guesses).
const MAX_CACHED_TOKENS: usize = 10_000;

impl TokenCache {
    fn get(&self, id: &str, epoch: u64) -> Option<(TokenRecord, Option<UserRecord>)> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(id)
            .filter(|c| c.epoch == epoch)
            .map(|c| (c.token.clone(), c.user.clone()))
    }

    fn count(&self, hit: bool) {
        let (counter, source) = if hit {
            (&self.hits, "cache")
        } else {
            (&self.misses, "database")
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("steadyflow_token_checks_total", "source" => source).increment(1);
    }

    fn put(&self, epoch: u64, token: &TokenRecord, user: &Option<UserRecord>) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_CACHED_TOKENS {
            entries.retain(|_, c| c.epoch == epoch);
            if entries.len() >= MAX_CACHED_TOKENS {
                entries.clear();
            }
        }
        entries.insert(
            token.id.clone(),
            CachedToken {
                epoch,
                token: token.clone(),
                user: user.clone(),
            },
        );
    }
}

impl Accounts {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Accounts {
            store,
            clock,
            tokens: Arc::default(),
        }
    }

    /// Token checks answered from memory and from the database, since this `Accounts`
    /// was made (clones share them).
    pub fn token_checks(&self) -> (u64, u64) {
        (
            self.tokens.hits.load(Ordering::Relaxed),
            self.tokens.misses.load(Ordering::Relaxed),
        )
    }

    /// A token and its user as the database holds them now, from the cache when the
    /// store vouches that nothing changed since they were read.
    async fn token_and_user(
        &self,
        id: &str,
        hash: &str,
    ) -> Result<Option<(TokenRecord, Option<UserRecord>)>, StoreError> {
        let watch = self.store.plain_watch();
        let epoch = watch.as_ref().and_then(|w| w.epoch());
        let hit = epoch.and_then(|e| self.tokens.get(id, e));
        self.tokens.count(hit.is_some());
        if hit.is_some() {
            return Ok(hit);
        }
        let Some(token) = users::one::<TokenRecord>(self.store.as_ref(), id).await? else {
            return Ok(None);
        };
        // A wrong secret is answered without reading the user or filling the cache.
        if !bool::from(hash.as_bytes().ct_eq(token.hash.as_bytes())) {
            return Ok(Some((token, None)));
        }
        let user = users::one::<UserRecord>(self.store.as_ref(), &token.user_id).await?;
        // Kept only if nothing changed while reading: a write in between bumped the epoch.
        if let (Some(e), Some(w)) = (epoch, &watch)
            && w.epoch() == Some(e)
        {
            self.tokens.put(e, &token, &user);
        }
        Ok(Some((token, user)))
    }

    fn now(&self) -> Timestamp {
        // Milliseconds, as stored: what is returned equals what reads back.
        let t = self.clock.now();
        chrono::DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
    }

    pub async fn user(&self, name: &str) -> Result<UserRecord, AccountError> {
        users::one(self.store.as_ref(), name)
            .await?
            .ok_or_else(|| AccountError::NoUser(name.to_string()))
    }

    pub async fn users(&self) -> Result<Vec<UserRecord>, AccountError> {
        Ok(users::all(self.store.as_ref()).await?)
    }

    /// Adds a user; `password` is hashed here.
    pub async fn add_user(
        &self,
        name: &str,
        role: Role,
        groups: Vec<String>,
        password: Option<String>,
    ) -> Result<UserRecord, AccountError> {
        check_name("user name", name)?;
        let groups = check_groups(groups)?;
        if users::one::<UserRecord>(self.store.as_ref(), name)
            .await?
            .is_some()
        {
            return Err(AccountError::Exists(name.to_string()));
        }
        let password_hash = match password {
            Some(p) => Some(hash_password(p).await?),
            None => None,
        };
        let now = self.now();
        let user = UserRecord {
            id: name.to_string(),
            role,
            groups,
            password_hash,
            created_at: now,
            updated_at: now,
            disabled_at: None,
        };
        self.store
            .plain_write(now, vec![PlainWrite::put(&user)?])
            .await?;
        tracing::info!(user = name, role = %role, "user added");
        Ok(user)
    }

    pub async fn change_user(
        &self,
        name: &str,
        change: UserChange,
    ) -> Result<UserRecord, AccountError> {
        let mut user = self.user(name).await?;
        let now = self.now();
        if let Some(role) = change.role {
            user.role = role;
        }
        if let Some(groups) = change.groups {
            user.groups = check_groups(groups)?;
        }
        if let Some(password) = change.password {
            user.password_hash = match password {
                Some(p) => Some(hash_password(p).await?),
                None => None,
            };
        }
        if let Some(disabled) = change.disabled {
            user.disabled_at = match (disabled, user.disabled_at) {
                (true, None) => Some(now),
                (true, since) => since,
                (false, _) => None,
            };
        }
        user.updated_at = now;
        self.store
            .plain_write(now, vec![PlainWrite::put(&user)?])
            .await?;
        tracing::info!(user = name, role = %user.role, disabled = user.disabled_at.is_some(), "user changed");
        Ok(user)
    }

    /// Removes a user and every token of theirs.
    pub async fn remove_user(&self, name: &str) -> Result<(), AccountError> {
        self.user(name).await?;
        let mut writes = vec![PlainWrite::delete::<UserRecord>(name)];
        for t in self.tokens(Some(name)).await? {
            writes.push(PlainWrite::delete::<TokenRecord>(&t.id));
        }
        self.store.plain_write(self.now(), writes).await?;
        tracing::info!(user = name, "user removed");
        Ok(())
    }

    /// The tokens of `user` (every token for `None`), oldest first.
    pub async fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenRecord>, AccountError> {
        let mut all: Vec<TokenRecord> = users::all(self.store.as_ref()).await?;
        all.retain(|t| user.is_none_or(|u| t.user_id == u));
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(all)
    }

    /// Makes a token for `user`, valid for `ttl` (at most [`MAX_TOKEN_TTL`]). The text
    /// is returned once.
    pub async fn issue_token(
        &self,
        user: &str,
        ttl: Duration,
        label: Option<String>,
    ) -> Result<IssuedToken, AccountError> {
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(AccountError::Invalid(
                "a token lives between 1 s and 3650 days".into(),
            ));
        }
        self.user(user).await?;
        if let Some(l) = &label
            && (l.is_empty() || l.chars().count() > 128)
        {
            return Err(AccountError::Invalid(
                "a token label has 1 to 128 characters".into(),
            ));
        }
        let now = self.now();
        let expires_at = Some(
            chrono::Duration::from_std(ttl)
                .ok()
                .and_then(|d| now.checked_add_signed(d))
                .ok_or_else(|| AccountError::Invalid("token lifetime too long".into()))?,
        );
        let (id, secret) = (random_hex(8)?, random_secret()?);
        let record = TokenRecord {
            id: id.clone(),
            user_id: user.to_string(),
            label,
            hash: secret_hash(&secret),
            created_at: now,
            expires_at,
            revoked_at: None,
        };
        self.store
            .plain_write(now, vec![PlainWrite::put(&record)?])
            .await?;
        tracing::info!(user, token = %id, "token issued");
        Ok(IssuedToken {
            text: format!("sf_{id}_{secret}"),
            record,
        })
    }

    /// Revokes a token (kept, marked revoked, so that the audit trail can name it).
    pub async fn revoke(&self, id: &str) -> Result<TokenRecord, AccountError> {
        let mut token: TokenRecord = users::one(self.store.as_ref(), id)
            .await?
            .ok_or_else(|| AccountError::NoToken(id.to_string()))?;
        let now = self.now();
        if token.revoked_at.is_none() {
            token.revoked_at = Some(now);
            self.store
                .plain_write(now, vec![PlainWrite::put(&token)?])
                .await?;
            tracing::info!(token = id, user = %token.user_id, "token revoked");
        }
        Ok(token)
    }

    /// Checks a token's text against the database.
    pub async fn check_token(&self, text: &str) -> Result<Checked, StoreError> {
        let Some((id, secret)) = parse_token(text) else {
            return Ok(Checked::Refused(Refused::Malformed));
        };
        let hash = secret_hash(secret);
        let Some((token, user)) = self.token_and_user(id, &hash).await? else {
            return Ok(Checked::Refused(Refused::Unknown));
        };
        if !bool::from(hash.as_bytes().ct_eq(token.hash.as_bytes())) {
            return Ok(Checked::Refused(Refused::Unknown));
        }
        if token.revoked_at.is_some() {
            return Ok(Checked::Refused(Refused::Revoked));
        }
        if !token.usable(self.clock.now()) {
            return Ok(Checked::Refused(Refused::Expired));
        }
        let Some(user) = user else {
            return Ok(Checked::Refused(Refused::Unknown));
        };
        if user.disabled_at.is_some() {
            return Ok(Checked::Refused(Refused::Disabled));
        }
        Ok(Checked::Ok(Box::new(user), Some(Box::new(token))))
    }

    /// Checks a user name and password.
    pub async fn check_password(&self, name: &str, password: &str) -> Result<Checked, StoreError> {
        let user = users::one::<UserRecord>(self.store.as_ref(), name).await?;
        // Verify against a fixed hash when the user is unknown or has no password, so
        // that the answer takes as long either way (no user enumeration by timing).
        let hash = user
            .as_ref()
            .and_then(|u| u.password_hash.clone())
            .unwrap_or_else(|| DUMMY_HASH.to_string());
        let ok = verify_password(password.to_string(), hash).await;
        match user {
            Some(u) if ok && u.password_hash.is_some() => {
                if u.disabled_at.is_some() {
                    Ok(Checked::Refused(Refused::Disabled))
                } else {
                    Ok(Checked::Ok(Box::new(u), None))
                }
            }
            _ => Ok(Checked::Refused(Refused::BadPassword)),
        }
    }
}

/// A valid argon2id hash of a random password nobody knows.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c3RlYWR5Zmxvd2R1bW15$9vF1dNf1PuLzN3I6I9u6yTzJ0a4Yb1Fz1m5b2e7yq3Q";

/// `sf_<16 hex>_<43 base64url>` → (id, secret).
pub fn parse_token(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix("sf_")?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    let b64 = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (id.len() == 16 && hex(id) && secret.len() == 43 && b64(secret)).then_some((id, secret))
}

/// Hex SHA-256 of a token secret (what is stored).
pub fn secret_hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_bytes<const N: usize>() -> Result<[u8; N], AccountError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf)
        .map_err(|e| AccountError::Invalid(format!("no randomness from the system: {e}")))?;
    Ok(buf)
}

fn random_hex(bytes: usize) -> Result<String, AccountError> {
    let buf = random_bytes::<32>()?;
    Ok(buf[..bytes.min(32)]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn random_secret() -> Result<String, AccountError> {
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))
}

async fn hash_password(password: String) -> Result<String, AccountError> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(AccountError::Invalid(format!(
            "a password has at least {MIN_PASSWORD} characters"
        )));
    }
    let salt = SaltString::encode_b64(&random_bytes::<16>()?)
        .map_err(|e| AccountError::Invalid(format!("salt: {e}")))?;
    tokio::task::spawn_blocking(move || {
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AccountError::Invalid(format!("cannot hash the password: {e}")))
    })
    .await
    .map_err(|e| AccountError::Invalid(format!("password hashing failed: {e}")))?
}

async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|parsed| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

fn check_name(what: &str, name: &str) -> Result<(), AccountError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(AccountError::Invalid(format!(
            "a {what} has 1 to {MAX_NAME} characters of A-Z, a-z, 0-9, `.`, `_`, `-`, `@`; `{name}` does not"
        )))
    }
}

fn check_groups(mut groups: Vec<String>) -> Result<Vec<String>, AccountError> {
    for g in &groups {
        check_name("group name", g)?;
    }
    groups.sort();
    groups.dedup();
    Ok(groups)
}

/// Longest token lifetime: every token carries an expiry (only the bootstrap token,
/// which is configuration, has none).
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(3_650 * 86_400);

/// Parses a token lifetime: `30d`, `12h`, `90m`, `3600s`, at most ten years.
pub fn parse_ttl(text: &str) -> Result<Duration, AccountError> {
    let bad = || {
        AccountError::Invalid(format!(
            "`{text}` is not a lifetime: write a positive number with s, m, h or d (e.g. 30d), at most 3650d"
        ))
    };
    // The unit is the last character (any text may arrive here: split on a char
    // boundary, never a byte position).
    let unit = text.chars().last().ok_or_else(bad)?;
    let n = &text[..text.len() - unit.len_utf8()];
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    match n.checked_mul(secs).map(Duration::from_secs) {
        Some(d) if !d.is_zero() && d <= MAX_TOKEN_TTL => Ok(d),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use steadyflow_engine::ManualClock;
    use steadyflow_store::memory::MemoryStore;

    fn accounts() -> (Accounts, Accounts, Arc<ManualClock>) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::new(
            chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        ));
        // Two handles on one store, as two parts of a node (or the routes and the
        // authenticator): each has its own cache.
        (
            Accounts::new(store.clone(), clock.clone()),
            Accounts::new(store, clock.clone()),
            clock,
        )
    }

    fn ok(c: Checked) -> (String, Option<String>) {
        match c {
            Checked::Ok(u, t) => (u.id, t.map(|t| t.id)),
            Checked::Refused(r) => panic!("refused: {r}"),
        }
    }

    #[tokio::test]
    async fn a_checked_token_is_served_from_memory_until_anything_changes() {
        let (a, b, clock) = accounts();
        a.add_user("ann", Role::User, vec![], None).await.unwrap();
        let t = a
            .issue_token("ann", Duration::from_secs(3600), None)
            .await
            .unwrap();
        for _ in 0..3 {
            assert_eq!(ok(a.check_token(&t.text).await.unwrap()).0, "ann");
        }
        assert_eq!(a.token_checks(), (2, 1), "one database read, then memory");

        // A wrong secret for a cached id is refused and fills nothing.
        let wrong = format!("{}{}", &t.text[..20], "B".repeat(43));
        assert_eq!(
            a.check_token(&wrong).await.unwrap(),
            Checked::Refused(Refused::Unknown)
        );

        // Any write through any handle moves the store's epoch: the next check reads.
        b.change_user(
            "ann",
            UserChange {
                disabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            a.check_token(&t.text).await.unwrap(),
            Checked::Refused(Refused::Disabled)
        );
        b.change_user(
            "ann",
            UserChange {
                disabled: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(ok(a.check_token(&t.text).await.unwrap()).0, "ann");
        b.revoke(&t.record.id).await.unwrap();
        assert_eq!(
            a.check_token(&t.text).await.unwrap(),
            Checked::Refused(Refused::Revoked)
        );

        // Expiry is judged at every check, cached or not.
        let t2 = a
            .issue_token("ann", Duration::from_secs(60), None)
            .await
            .unwrap();
        ok(a.check_token(&t2.text).await.unwrap());
        ok(a.check_token(&t2.text).await.unwrap());
        let (hits, _) = a.token_checks();
        clock.advance(chrono::Duration::seconds(61));
        assert_eq!(
            a.check_token(&t2.text).await.unwrap(),
            Checked::Refused(Refused::Expired)
        );
        assert_eq!(
            a.token_checks().0,
            hits + 1,
            "the expired token came from memory"
        );
    }

    #[test]
    fn tokens_parse_only_in_their_form() {
        let secret = "a".repeat(43);
        let text = format!("sf_0123456789abcdef_{secret}");
        assert_eq!(
            parse_token(&text),
            Some(("0123456789abcdef", secret.as_str()))
        );
        assert_eq!(parse_token("sf_0123456789abcdef_short"), None);
        assert_eq!(parse_token(&format!("sf_0123456789ABCDEF_{secret}")), None);
        assert_eq!(parse_token(&format!("xx_0123456789abcdef_{secret}")), None);
        assert_eq!(parse_token(""), None);
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("30d").unwrap(), Duration::from_secs(2_592_000));
        assert_eq!(parse_ttl("90m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse_ttl("3650d").unwrap(), MAX_TOKEN_TTL);
        for bad in [
            "",
            "vù",
            "1ù",
            "ù",
            "d",
            "0h",
            "12",
            "-1d",
            "1w",
            "never",
            "3651d",
            "99999999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(check_name("user name", "ann.lee@corp").is_ok());
        for bad in ["", "a b", "ann/../x", &"x".repeat(65)] {
            assert!(check_name("user name", bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn passwords_hash_and_verify() {
        let h = hash_password("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse".into(), h.clone()).await);
        assert!(!verify_password("wrong horse".into(), h).await);
        assert!(hash_password("short".into()).await.is_err());
        // The dummy hash parses (so an unknown user costs a full verification).
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }
}
