//! Configuration: defaults < configs/config.yaml (or --config) < STEADYFLOW_* environment < flags.
//!
//! Every default is declared once, in the `Default` impls of the types below (the store
//! options in their own crates). Every environment name is declared once: the top-level
//! settings that have flags read their variable through clap (`env = …`, shown in
//! `--help`); the settings of a section are read as `STEADYFLOW_<SECTION>__<KEY>`
//! (`STEADYFLOW_POSTGRES__POOL_SIZE`, `STEADYFLOW_ENGINE__TIMERS__BATCH`), named after
//! the fields themselves.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Yaml};
use serde::{Deserialize, Serialize};
use steadyflow_engine::EngineOptions;
use steadyflow_store_pg::PgOptions;
use steadyflow_store_sqlite::SqliteOptions;

/// Prefix of every environment variable of the configuration.
const ENV_PREFIX: &str = "STEADYFLOW_";

#[derive(Debug, Clone, clap::Args, Default)]
pub struct DbArgs {
    /// Database URL: sqlite://PATH or postgres://HOST/DB (without one: steadyflow.db in
    /// the data directory)
    #[arg(long, global = true, env = "STEADYFLOW_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Directory for local data (default: `data_dir` of the configuration)
    #[arg(long, global = true, env = "STEADYFLOW_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (default: `listen` of the configuration)
    #[arg(long, env = "STEADYFLOW_LISTEN")]
    pub listen: Option<String>,
    #[command(flatten)]
    pub db: DbArgs,
    /// Bootstrap token: this exact token is accepted as an administrator's, beside the
    /// users' tokens. For automation that must start a fresh deployment before any user
    /// exists; whoever reads the environment of the process holds full control, so
    /// prefer a user's token (`steadyflow user token`) and unset it once users exist
    #[arg(long, env = "STEADYFLOW_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Serve HTTPS with this certificate chain (PEM, leaf first; default: `tls.cert_file`
    /// of the configuration, else plain HTTP)
    #[arg(long, env = "STEADYFLOW_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, env = "STEADYFLOW_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// The optional Redis cache (never needed: without it, or while it is down, everything
/// is read from the database).
#[derive(Debug, Clone, clap::Args, Default)]
pub struct RedisArgs {
    /// Redis URL of the cache, e.g. redis://127.0.0.1:6379/0 (default: no cache)
    #[arg(long, global = true, env = "STEADYFLOW_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of every key the engine writes in Redis
    #[arg(
        long,
        global = true,
        env = "STEADYFLOW_REDIS_PREFIX",
        default_value = "steadyflow:"
    )]
    pub redis_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub listen: String,
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    /// Tuning of the PostgreSQL store (used when `database_url` is `postgres://…`).
    pub postgres: PgOptions,
    /// Tuning of the SQLite store (used when `database_url` is `sqlite://…`).
    pub sqlite: SqliteOptions,
    pub engine: EngineConfig,
    /// Log output.
    pub log: LogConfig,
    /// The `/metrics` endpoint.
    pub metrics: MetricsConfig,
    /// HTTPS for the listener.
    pub tls: TlsConfig,
    /// Service modes, the offline spool, database outages.
    pub modes: ModesConfig,
    /// Backup targets (the `backup` commands and `serve`).
    #[serde(default)]
    pub backup: steadyflow_backup::BackupConfig,
}

/// HTTPS: both files set, or neither (plain HTTP, e.g. behind a proxy that ends TLS).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, PEM, leaf first.
    pub cert_file: Option<PathBuf>,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

impl TlsConfig {
    /// The two files, when HTTPS is on.
    pub fn files(&self) -> Result<Option<(&Path, &Path)>> {
        match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => Ok(Some((c.as_path(), k.as_path()))),
            (None, None) => Ok(None),
            _ => anyhow::bail!("tls: set both cert_file and key_file, or neither"),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:8080".into(),
            database_url: None,
            data_dir: PathBuf::from("./data"),
            postgres: PgOptions::default(),
            sqlite: SqliteOptions::default(),
            engine: EngineConfig::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            tls: TlsConfig::default(),
            modes: ModesConfig::default(),
            backup: steadyflow_backup::BackupConfig::default(),
        }
    }
}

/// Service modes (`steadyflow mode`) and database outages: how long requests wait and
/// retry while the database is unreachable before they fail, and after which this node
/// goes `offline` (database gone) or `read-only` (database refusing writes) by itself
/// (`outage_grace_ms`; 0: neither); where writes wait while the service is offline
/// (`spool_dir`, relative paths under `data_dir`); how many may wait
/// (`spool_max_entries`; beyond, they answer 503 `offline`). In `core-only` mode the
/// engine's essential work goes on at a bounded pace: the timer driver fires at most
/// `core_only_timer_batch` timers per round, a fetch-and-lock takes at most
/// `core_only_fetch_max_tasks` tasks, and at most `core_only_fetch_concurrency` fetches
/// run at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModesConfig {
    pub outage_grace_ms: u64,
    pub spool_dir: PathBuf,
    pub spool_max_entries: usize,
    pub core_only_timer_batch: usize,
    pub core_only_fetch_max_tasks: u32,
    pub core_only_fetch_concurrency: usize,
}

impl Default for ModesConfig {
    fn default() -> Self {
        ModesConfig {
            outage_grace_ms: 10_000,
            spool_dir: PathBuf::from("spool"),
            spool_max_entries: 100_000,
            core_only_timer_batch: 10,
            core_only_fetch_max_tasks: 10,
            core_only_fetch_concurrency: 4,
        }
    }
}

impl ModesConfig {
    pub fn outage_grace(&self) -> Duration {
        Duration::from_millis(self.outage_grace_ms)
    }

    /// The spool directory: `spool_dir`, under `data_dir` unless absolute.
    pub fn spool_dir(&self, data_dir: &Path) -> PathBuf {
        data_dir.join(&self.spool_dir)
    }
}

/// Log output: `text` (human-readable lines) or `json` (one JSON object per line, with
/// the request's span fields: `request_id`, `method`, `route`). The level filter is
/// `STEADYFLOW_LOG` (e.g. `info`, `steadyflow_api=debug`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `/metrics`: open unless `token` is set (then `Authorization: Bearer <token>`), and
/// how often the database-wide gauges (running instances, open tasks and external
/// tasks) are counted: at most once per `gauge_refresh_ms`, never per scrape.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub token: Option<String>,
    pub gauge_refresh_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            token: None,
            gauge_refresh_ms: 15_000,
        }
    }
}

/// Never prints the token.
impl std::fmt::Debug for MetricsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsConfig")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("gauge_refresh_ms", &self.gauge_refresh_ms)
            .finish()
    }
}

impl MetricsConfig {
    pub fn gauge_refresh(&self) -> Duration {
        Duration::from_millis(self.gauge_refresh_ms)
    }
}

/// The engine's own knobs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    pub timers: TimerConfig,
}

/// The timer driver: how many due timers it takes at once, how long it holds them
/// while they fire (another node takes a timer over only after that), and how often it
/// looks for due timers when there were none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimerConfig {
    /// Due timers acquired per round.
    pub batch: usize,
    /// How long an acquired timer stays locked to this node, in milliseconds.
    pub lock_ms: u64,
    /// Pause between rounds that found nothing due, in milliseconds.
    pub idle_poll_ms: u64,
}

impl Default for TimerConfig {
    fn default() -> Self {
        // The lock's default is the engine's own (`EngineOptions`), declared there.
        let lock = EngineOptions::default().timer_lock;
        TimerConfig {
            batch: 100,
            lock_ms: u64::try_from(lock.as_millis()).unwrap_or(u64::MAX),
            idle_poll_ms: 200,
        }
    }
}

impl TimerConfig {
    /// Refuses values that would stop timers: a batch of 0 never fires one, and a lock
    /// of 0 lets every node take the same timer at once.
    fn check(&self) -> Result<()> {
        anyhow::ensure!(self.batch > 0, "engine.timers.batch must be at least 1");
        anyhow::ensure!(self.lock_ms > 0, "engine.timers.lock_ms must be at least 1");
        Ok(())
    }

    pub fn lock(&self) -> Duration {
        Duration::from_millis(self.lock_ms)
    }

    pub fn idle_poll(&self) -> Duration {
        Duration::from_millis(self.idle_poll_ms)
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

/// The settings of the sections from the environment: `STEADYFLOW_<SECTION>__<KEY>`
/// (a double underscore separates levels). The top-level settings come through clap.
fn section_env() -> Env {
    Env::prefixed(ENV_PREFIX)
        .filter(|key| key.as_str().contains("__"))
        .split("__")
}

/// The log format the configuration asks for (file or environment), read before
/// logging starts; anything unreadable means `text` (the full [`load`] reports it).
pub fn log_format(file: Option<&Path>) -> LogFormat {
    let default = Path::new("configs/config.yaml");
    let file = file.or(default.is_file().then_some(default));
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    if let Some(f) = file {
        fig = fig.merge(Yaml::file(f));
    }
    fig.merge(section_env())
        .extract_inner::<LogFormat>("log.format")
        .unwrap_or_default()
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
    fig = fig.merge(section_env());
    if let Some(l) = listen {
        fig = fig.merge(("listen", l));
    }
    if let Some(u) = &db.database_url {
        fig = fig.merge(("database_url", u));
    }
    if let Some(d) = &db.data_dir {
        fig = fig.merge(("data_dir", d));
    }
    let cfg: Config = fig.extract().context("invalid configuration")?;
    cfg.engine.timers.check()?;
    cfg.tls.files()?;
    Ok(cfg)
}

#[cfg(test)]
#[allow(
    clippy::result_large_err,
    reason = "figment::Jail's closures return figment::Error"
)]
mod tests {
    use super::*;

    /// Tests that call [`load`] run in a figment `Jail`: one at a time, each with only
    /// the environment it sets (the environment is the process's).
    fn jailed(test: fn()) {
        figment::Jail::expect_with(|_| {
            test();
            Ok(())
        });
    }

    #[test]
    fn flags_win_over_file_and_defaults() {
        jailed(flags_win);
    }

    fn flags_win() {
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
    fn sections_reach_the_store_and_timer_knobs() {
        jailed(sections_from_a_file);
    }

    fn sections_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "postgres:\n  pool_size: 32\n  acquire_timeout_ms: 2500\n\
             sqlite:\n  write_queue: 64\n\
             engine:\n  timers:\n    batch: 7\n    idle_poll_ms: 50\n",
        )
        .unwrap();
        let cfg = load(Some(&file), &DbArgs::default(), None).unwrap();
        let defaults = Config::default();
        assert_eq!(
            cfg.postgres,
            PgOptions {
                pool_size: 32,
                acquire_timeout: Duration::from_millis(2500),
                ..defaults.postgres.clone()
            }
        );
        assert_eq!(cfg.sqlite.write_queue, 64);
        assert_eq!(cfg.sqlite.read_queue, defaults.sqlite.read_queue);
        assert_eq!(
            cfg.engine.timers,
            TimerConfig {
                batch: 7,
                idle_poll_ms: 50,
                ..TimerConfig::default()
            }
        );
        assert_eq!(cfg.engine.timers.idle_poll(), Duration::from_millis(50));

        std::fs::write(&file, "engine:\n  timers:\n    batch: 0\n").unwrap();
        let err = load(Some(&file), &DbArgs::default(), None).unwrap_err();
        assert!(
            format!("{err:#}").contains("engine.timers.batch"),
            "{err:#}"
        );

        std::fs::write(
            &file,
            "log:\n  format: json\nmetrics:\n  token: t0k\n  gauge_refresh_ms: 500\n",
        )
        .unwrap();
        let cfg = load(Some(&file), &DbArgs::default(), None).unwrap();
        assert_eq!(cfg.log.format, LogFormat::Json);
        assert_eq!(log_format(Some(&file)), LogFormat::Json);
        assert_eq!(cfg.metrics.token.as_deref(), Some("t0k"));
        assert_eq!(cfg.metrics.gauge_refresh(), Duration::from_millis(500));
        assert!(!format!("{cfg:?}").contains("t0k"), "Debug hides the token");
        std::fs::write(&file, "log:\n  format: xml\n").unwrap();
        let err = load(Some(&file), &DbArgs::default(), None).unwrap_err();
        assert!(format!("{err:#}").contains("xml"), "{err:#}");
        assert_eq!(log_format(Some(&file)), LogFormat::Text);

        std::fs::write(&file, "postgres:\n  pool_sise: 32\n").unwrap();
        let err = load(Some(&file), &DbArgs::default(), None).unwrap_err();
        assert!(
            format!("{err:#}").contains("pool_sise"),
            "a misspelt knob is refused: {err:#}"
        );
    }

    #[test]
    fn section_settings_come_from_double_underscore_variables() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("STEADYFLOW_POSTGRES__WRITERS", 9);
            jail.set_env("STEADYFLOW_ENGINE__TIMERS__LOCK_MS", 60000);
            jail.set_env("STEADYFLOW_SQLITE__READERS", 2);
            jail.set_env("STEADYFLOW_LOG__FORMAT", "json");
            jail.set_env("STEADYFLOW_METRICS__TOKEN", "from-env");
            // Read by clap, or by others: never taken as settings here.
            jail.set_env("STEADYFLOW_LISTEN", "127.0.0.1:1");
            jail.set_env("STEADYFLOW_LOG", "debug");
            jail.create_file("none.yaml", "{}")?;
            let cfg = load(Some(Path::new("none.yaml")), &DbArgs::default(), None).expect("load");
            assert_eq!(cfg.postgres.writers, 9);
            assert_eq!(cfg.engine.timers.lock(), Duration::from_secs(60));
            assert_eq!(cfg.sqlite.readers, 2);
            assert_eq!(cfg.log.format, LogFormat::Json);
            assert_eq!(log_format(Some(Path::new("none.yaml"))), LogFormat::Json);
            assert_eq!(cfg.metrics.token.as_deref(), Some("from-env"));
            assert_eq!(cfg.listen, Config::default().listen);
            Ok(())
        });
    }

    /// configs/config.yaml lists every setting with its default, so that the file an
    /// operator copies cannot drift from the code.
    #[test]
    fn the_shipped_config_file_lists_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/config.yaml");
        let shipped = Figment::from(Yaml::file(&path));
        let cfg: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Yaml::file(&path))
            .extract()
            .expect("configs/config.yaml is valid");
        assert_eq!(
            cfg,
            Config::default(),
            "configs/config.yaml sets a value other than the default"
        );
        let defaults = serde_json::to_value(Config::default()).unwrap();
        let mut missing = Vec::new();
        leaves(&defaults, String::new(), &mut |key| {
            if shipped.find_value(&key).is_err() {
                missing.push(key);
            }
        });
        assert!(missing.is_empty(), "configs/config.yaml lacks {missing:?}");
    }

    /// configs/production.yaml and staging.yaml are valid configurations: JSON logs, backup
    /// targets and schedules, no database URL (it comes from the environment).
    #[test]
    fn the_production_config_logs_json() {
        jailed(production_config);
    }

    fn production_config() {
        for name in ["production", "staging"] {
            let path =
                Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../configs/{name}.yaml"));
            let cfg = load(Some(&path), &DbArgs::default(), None).unwrap();
            assert_eq!(cfg.log.format, LogFormat::Json, "{name}");
            assert_eq!(log_format(Some(&path)), LogFormat::Json, "{name}");
            assert!(
                !cfg.backup.targets.is_empty(),
                "{name} backs up off the node"
            );
            assert!(cfg.backup.schedules.full.is_some(), "{name}");
            assert!(cfg.backup.schedules.incremental.is_some(), "{name}");
            // The database URL (a secret) comes from the environment only.
            assert_eq!(cfg.database_url, None, "{name}");
        }
    }

    /// The dotted keys of every non-null leaf of `v`.
    fn leaves(v: &serde_json::Value, prefix: String, out: &mut dyn FnMut(String)) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(child, key, out);
                }
            }
            serde_json::Value::Null => {}
            _ => out(prefix),
        }
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
