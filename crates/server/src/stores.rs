//! Opening a store from a database URL, with the configuration's tuning.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use steadyflow_store::Store;
use steadyflow_store::idempotency::IdempotencyStore;
use steadyflow_store_pg::PgOptions;
use steadyflow_store_sqlite::SqliteOptions;

use crate::config::Config;

/// Opens the configured database (`database_url`) with the configured store options
/// (`postgres`, `sqlite`).
pub async fn open_configured(cfg: &Config) -> Result<Arc<dyn Store>> {
    open_with(&cfg.database_url(), &cfg.postgres, &cfg.sqlite).await
}

/// [`open_configured`], and the same database as the keeper of idempotency keys.
pub async fn open_configured_with_keys(
    cfg: &Config,
) -> Result<(Arc<dyn Store>, Arc<dyn IdempotencyStore>)> {
    open_both(&cfg.database_url(), &cfg.postgres, &cfg.sqlite).await
}

/// Opens `url` with the options of its backend.
pub async fn open_with(
    url: &str,
    postgres: &PgOptions,
    sqlite: &SqliteOptions,
) -> Result<Arc<dyn Store>> {
    Ok(open_both(url, postgres, sqlite).await?.0)
}

async fn open_both(
    url: &str,
    postgres: &PgOptions,
    sqlite: &SqliteOptions,
) -> Result<(Arc<dyn Store>, Arc<dyn IdempotencyStore>)> {
    if url.starts_with("sqlite:") {
        let (url, options) = (url.to_string(), sqlite.clone());
        let store = tokio::task::spawn_blocking(move || {
            steadyflow_store_sqlite::SqliteStore::open_url_with(&url, options)
        })
        .await?
        .context("cannot open the SQLite database")?;
        let store = Arc::new(store);
        Ok((store.clone(), store))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = steadyflow_store_pg::PgStore::connect_with(url, postgres.clone())
            .await
            .context("cannot open the PostgreSQL database")?;
        let store = Arc::new(store);
        Ok((store.clone(), store))
    } else {
        bail!("unsupported database URL `{url}`: use sqlite://PATH or postgres://HOST/DB")
    }
}
