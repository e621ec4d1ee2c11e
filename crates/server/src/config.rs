//! Configuration: defaults < configs/config.yaml (or --config) < STEADYFLOW_* environment < flags.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Yaml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, clap::Args, Default)]
pub struct DbArgs {
    /// Database URL: sqlite://PATH or postgres://HOST/DB [env: STEADYFLOW_DATABASE_URL]
    /// (default: sqlite://<data dir>/steadyflow.db)
    #[arg(long)]
    pub database_url: Option<String>,
    /// Directory for local data [env: STEADYFLOW_DATA_DIR] (default: ./data)
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on [env: STEADYFLOW_LISTEN] (default: 0.0.0.0:8080)
    #[arg(long)]
    pub listen: Option<String>,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub listen: String,
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    /// How often the timer driver looks for due timers when idle, in milliseconds.
    pub timer_poll_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:8080".into(),
            database_url: None,
            data_dir: PathBuf::from("./data"),
            timer_poll_ms: 200,
        }
    }
}

impl Config {
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!("sqlite://{}", self.data_dir.join("steadyflow.db").display())
        })
    }
}

/// Hides a password in a database URL for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

pub fn load(file: Option<&Path>, db: &DbArgs, listen: Option<&str>) -> Result<Config> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    match file {
        Some(f) => {
            anyhow::ensure!(
                f.is_file(),
                "configuration file {} does not exist",
                f.display()
            );
            fig = fig.merge(Yaml::file(f));
        }
        None => {
            let default = Path::new("configs/config.yaml");
            if default.is_file() {
                fig = fig.merge(Yaml::file(default));
            }
        }
    }
    fig = fig.merge(Env::prefixed("STEADYFLOW_").only(&[
        "listen",
        "database_url",
        "data_dir",
        "timer_poll_ms",
    ]));
    if let Some(l) = listen {
        fig = fig.merge(("listen", l));
    }
    if let Some(u) = &db.database_url {
        fig = fig.merge(("database_url", u));
    }
    if let Some(d) = &db.data_dir {
        fig = fig.merge(("data_dir", d));
    }
    fig.extract().context("invalid configuration")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "listen: 127.0.0.1:9000\ndata_dir: /var/lib/sf\n").unwrap();
        let cfg = load(Some(&file), &DbArgs::default(), None).unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:9000");
        assert_eq!(cfg.database_url(), "sqlite:///var/lib/sf/steadyflow.db");
        let db = DbArgs {
            database_url: Some("postgres://h/db".into()),
            data_dir: None,
        };
        let cfg = load(Some(&file), &db, Some("127.0.0.1:1")).unwrap();
        assert_eq!(
            (cfg.listen.as_str(), cfg.database_url().as_str()),
            ("127.0.0.1:1", "postgres://h/db")
        );
        assert!(
            load(
                Some(&dir.path().join("missing.yaml")),
                &DbArgs::default(),
                None
            )
            .is_err()
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
