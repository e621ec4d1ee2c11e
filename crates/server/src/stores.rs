//! Opening a store from a database URL.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use steadyflow_store::Store;

pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        let url = url.to_string();
        let store = tokio::task::spawn_blocking(move || {
            steadyflow_store_sqlite::SqliteStore::open_url(&url)
        })
        .await?
        .context("cannot open the SQLite database")?;
        Ok(Arc::new(store))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = steadyflow_store_pg::PgStore::connect(url)
            .await
            .context("cannot open the PostgreSQL database")?;
        Ok(Arc::new(store))
    } else {
        bail!("unsupported database URL `{url}`: use sqlite://PATH or postgres://HOST/DB")
    }
}
