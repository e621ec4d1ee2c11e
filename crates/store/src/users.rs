//! Users and API tokens: who may call the HTTP API, and as what.
//!
//! Both are "plain" rows ([`PlainWrite`]): written whole, journaled like every other
//! table (so backups, incrementals and point-in-time restores carry them), and read by
//! key. Their JSON form is the journal image: camelCase fields, times in milliseconds
//! since the epoch, so that the image and the table line (snake_case columns) hold the
//! same values and a restore's replay needs no conversion.
//!
//! Secrets are never stored: a user's password is an argon2id hash (PHC string) made by
//! the API layer, a token is stored as the SHA-256 of its secret part (a token is 256
//! random bits, so a fast hash is enough; see `steadyflow_api::tokens`).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::records::closed_set;
use crate::recovery::{TableSpec, camel_case};
use crate::{JournalEntity, Result, StoreError, Timestamp};

closed_set! {
    /// What a user may do (see the API's authorization table).
    pub enum Role {
        /// Everything, including users, backups, restores and the service mode.
        Admin = "admin",
        /// Deploy, manage instances, incidents and external tasks, read backups.
        Operator = "operator",
        /// Start instances, see and work on the tasks they may.
        User = "user",
        /// Read only.
        Viewer = "viewer",
    }
}

/// A user of the API. `id` is the login name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserRecord {
    pub id: String,
    pub role: Role,
    /// Groups, matched against user tasks' candidate groups.
    pub groups: Vec<String>,
    /// argon2id PHC string; `None`: the user logs in with tokens only.
    pub password_hash: Option<String>,
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub created_at: Timestamp,
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub updated_at: Timestamp,
    /// Set while the user is disabled: nothing they hold is accepted.
    #[serde(with = "chrono::serde::ts_milliseconds_option")]
    pub disabled_at: Option<Timestamp>,
}

/// An API token. The secret is not here: only `hash`, the hex SHA-256 of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    /// Public id (part of the token text; what `user revoke` names).
    pub id: String,
    pub user_id: String,
    /// What the token is for ("ci", "worker-3"), chosen by who made it.
    pub label: Option<String>,
    pub hash: String,
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub created_at: Timestamp,
    #[serde(with = "chrono::serde::ts_milliseconds_option")]
    pub expires_at: Option<Timestamp>,
    #[serde(with = "chrono::serde::ts_milliseconds_option")]
    pub revoked_at: Option<Timestamp>,
}

impl TokenRecord {
    /// Whether the token may be used at `now`.
    pub fn usable(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|t| t > now)
    }
}

/// One row written whole (or removed) by [`Store::plain_write`](crate::Store::plain_write),
/// with its journal entry.
#[derive(Debug, Clone, PartialEq)]
pub struct PlainWrite {
    pub entity: JournalEntity,
    pub id: String,
    /// The row's image (camelCase JSON); `None` removes the row.
    pub image: Option<Value>,
}

impl JournalEntity {
    /// The table of a plain row's entity.
    pub fn plain_table(self) -> Result<&'static TableSpec> {
        crate::recovery::table(self.table())
            .ok_or_else(|| StoreError::Backend(format!("no table spec for {self}")))
    }
}

/// A record kept as a plain row.
pub trait PlainRecord: Serialize + DeserializeOwned {
    const ENTITY: JournalEntity;
    fn key(&self) -> &str;
    fn table() -> Result<&'static TableSpec> {
        Self::ENTITY.plain_table()
    }
}

impl PlainRecord for UserRecord {
    const ENTITY: JournalEntity = JournalEntity::User;
    fn key(&self) -> &str {
        &self.id
    }
}

impl PlainRecord for TokenRecord {
    const ENTITY: JournalEntity = JournalEntity::ApiToken;
    fn key(&self) -> &str {
        &self.id
    }
}

impl PlainWrite {
    /// Writes `record` (insert or replace).
    pub fn put<T: PlainRecord>(record: &T) -> Result<PlainWrite> {
        let image = serde_json::to_value(record)
            .map_err(|e| StoreError::Backend(format!("serializing {}: {e}", T::ENTITY)))?;
        Ok(PlainWrite {
            entity: T::ENTITY,
            id: record.key().to_string(),
            image: Some(image),
        })
    }

    /// Removes the row of `T` with key `id`.
    pub fn delete<T: PlainRecord>(id: &str) -> PlainWrite {
        PlainWrite {
            entity: T::ENTITY,
            id: id.to_string(),
            image: None,
        }
    }
}

/// A table line: column name → value, in column order.
pub type Line = Vec<(&'static str, Value)>;

/// What a backend writes for `w`: its table and, unless it removes the row, the table
/// line taken from the image.
pub fn plain_line(w: &PlainWrite) -> Result<(&'static TableSpec, Option<Line>)> {
    let table = w.entity.plain_table()?;
    let Some(image) = &w.image else {
        return Ok((table, None));
    };
    let line = table
        .columns
        .iter()
        .map(|c| {
            let v = image
                .get(camel_case(c.name))
                .cloned()
                .unwrap_or(Value::Null);
            (c.name, v)
        })
        .collect();
    Ok((table, Some(line)))
}

/// The journal image of `w` as JSON text (`None` for a removal).
pub fn plain_image(w: &PlainWrite) -> Result<Option<Box<serde_json::value::RawValue>>> {
    w.image
        .as_ref()
        .map(|i| {
            serde_json::value::to_raw_value(i)
                .map_err(|e| StoreError::Backend(format!("serializing {}: {e}", w.entity)))
        })
        .transpose()
}

/// A table line (snake_case columns, as [`Store::plain_row`](crate::Store::plain_row)
/// returns it) as a record.
pub fn from_line<T: PlainRecord>(line: Value) -> Result<T> {
    let Value::Object(map) = line else {
        return Err(StoreError::Corrupt(format!(
            "{} row is not an object",
            T::ENTITY
        )));
    };
    let image: serde_json::Map<String, Value> =
        map.into_iter().map(|(k, v)| (camel_case(&k), v)).collect();
    serde_json::from_value(Value::Object(image))
        .map_err(|e| StoreError::Corrupt(format!("{} row cannot be read: {e}", T::ENTITY)))
}

/// Every record of `T` (small tables only: users, tokens).
pub async fn all<T: PlainRecord>(store: &(impl crate::Store + ?Sized)) -> Result<Vec<T>> {
    store
        .plain_rows(T::table()?)
        .await?
        .into_iter()
        .map(from_line)
        .collect()
}

/// The record of `T` with key `id`.
pub async fn one<T: PlainRecord>(
    store: &(impl crate::Store + ?Sized),
    id: &str,
) -> Result<Option<T>> {
    store
        .plain_row(T::table()?, id)
        .await?
        .map(from_line)
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entity_has_its_table() {
        for e in JournalEntity::ALL {
            assert_eq!(e.plain_table().unwrap().name, e.table(), "{e}");
        }
    }

    #[test]
    fn a_line_reads_back_as_its_record() {
        let t = chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let user = UserRecord {
            id: "ann".into(),
            role: Role::Operator,
            groups: vec!["sales".into()],
            password_hash: None,
            created_at: t,
            updated_at: t,
            disabled_at: Some(t),
        };
        let write = PlainWrite::put(&user).unwrap();
        let image = write.image.unwrap();
        assert_eq!(image["createdAt"], 1_700_000_000_123_i64);
        // The table line: snake_case columns, same values.
        let line = serde_json::json!({
            "id": "ann", "role": "operator", "groups": ["sales"], "password_hash": null,
            "created_at": 1_700_000_000_123_i64, "updated_at": 1_700_000_000_123_i64,
            "disabled_at": 1_700_000_000_123_i64,
        });
        assert_eq!(from_line::<UserRecord>(line).unwrap(), user);
        let bad = serde_json::json!({"id": "ann", "role": "root"});
        assert!(matches!(
            from_line::<UserRecord>(bad),
            Err(StoreError::Corrupt(_))
        ));
    }
}

/// Tells readers that cache plain rows (the API's token check) whether what they hold may
/// be out of date. A store bumps `epoch` after every plain write it commits, and when it
/// learns that another process or node committed one (SQLite: a counter polled by a
/// thread; PostgreSQL: `LISTEN`/`NOTIFY`). While the store cannot tell (its listener is
/// down), [`PlainWatch::epoch`] is `None` and nothing may be served from a cache.
#[derive(Debug, Default)]
pub struct PlainWatch {
    epoch: std::sync::atomic::AtomicU64,
    live: std::sync::atomic::AtomicBool,
}

impl PlainWatch {
    /// A watch that is live from the start (for stores whose writers all live in this
    /// process).
    pub fn live() -> Self {
        let w = PlainWatch::default();
        w.set_live(true);
        w
    }

    /// The current epoch, or `None` when changes by others could go unnoticed.
    pub fn epoch(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        // Read `live` after the epoch: a change that turns the watch off and bumps it is
        // seen as either a new epoch or not live.
        let e = self.epoch.load(Ordering::Acquire);
        self.live.load(Ordering::Acquire).then_some(e)
    }

    /// Something may have changed: cached rows are stale.
    pub fn bump(&self) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Whether changes by others are being noticed. Turning it on bumps the epoch, so
    /// that nothing cached before the gap is served after it.
    pub fn set_live(&self, live: bool) {
        use std::sync::atomic::Ordering;
        if live {
            self.bump();
        }
        self.live.store(live, Ordering::Release);
        if !live {
            self.bump();
        }
    }
}
