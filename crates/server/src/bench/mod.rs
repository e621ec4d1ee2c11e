//! `steadyflow bench`: the reference process through the engine with persistence.
//!
//! start -> external task `reserve` -> exclusive gateway (`amount > 1000`) -> parallel
//! fork of external tasks `ship` and `bill` -> join -> end. Starters and workers run at
//! the same time, as in production: instances are started with bounded concurrency while
//! workers fetch-and-lock in batches and complete what they got concurrently.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::json;
use steadyflow_engine::{Engine, StartRequest, SystemClock};
use steadyflow_store::{InstanceFilter, InstanceState, Store, TopicLock};
use tokio::task::JoinSet;

pub mod backup;

pub const REFERENCE_BPMN: &str = include_str!("reference.bpmn");

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Number of process instances to run to completion.
    #[arg(long, short = 'n', default_value_t = 20_000)]
    pub instances: usize,
    /// Backends to measure: sqlite, postgres, or both (comma separated).
    #[arg(long, default_value = "sqlite,postgres")]
    pub backends: String,
    /// PostgreSQL server to create a scratch benchmark database on (dropped afterwards).
    #[arg(
        long,
        env = "STEADYFLOW_BENCH_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub pg_url: String,
    /// Start commands in flight at once.
    #[arg(long, default_value_t = 256)]
    pub starters: usize,
    /// Concurrent workers, each fetching up to --batch tasks at a time.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Keep the SQLite benchmark database in this directory (for inspection) instead of
    /// a temporary one.
    #[arg(long)]
    pub sqlite_dir: Option<std::path::PathBuf>,
}

pub async fn run(args: BenchArgs) -> Result<()> {
    ensure!(args.instances > 0, "--instances must be positive");
    for backend in args
        .backends
        .split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
    {
        match backend {
            "sqlite" => {
                let tmp = tempfile::tempdir()?;
                let path = match &args.sqlite_dir {
                    Some(dir) => {
                        let path = dir.join("bench.db");
                        for suffix in ["", "-wal", "-shm"] {
                            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                        }
                        path
                    }
                    None => tmp.path().join("bench.db"),
                };
                let store = steadyflow_store_sqlite::SqliteStore::open(&path)?;
                measure("sqlite", Arc::new(store), &args).await?;
            }
            "postgres" => {
                let db = scratch_pg(&args.pg_url).await?;
                let result = async {
                    let store = steadyflow_store_pg::PgStore::connect(&db.url).await?;
                    measure("postgres", Arc::new(store), &args).await
                }
                .await;
                db.drop_db().await;
                result?;
            }
            other => anyhow::bail!("unknown backend `{other}`: use sqlite or postgres"),
        }
    }
    Ok(())
}

async fn measure(backend: &str, store: Arc<dyn Store>, args: &BenchArgs) -> Result<()> {
    let engine = Arc::new(Engine::new(store.clone(), Arc::new(SystemClock)));
    engine.deploy(REFERENCE_BPMN).await?;
    let n = args.instances;
    let completed_tasks = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();

    let starter = {
        let engine = engine.clone();
        let in_flight = args.starters.max(1);
        tokio::spawn(async move {
            let mut set = JoinSet::new();
            for i in 0..n {
                if set.len() >= in_flight {
                    #[allow(
                        clippy::expect_used,
                        reason = "the set holds `in_flight` (at least 1) starts here"
                    )]
                    let done = set.join_next().await.expect("a start in flight");
                    done??;
                }
                let engine = engine.clone();
                set.spawn(async move {
                    let mut variables = serde_json::Map::new();
                    variables.insert("amount".into(), json!(1500));
                    variables.insert("order".into(), json!(i));
                    engine
                        .start(
                            "benchOrder",
                            StartRequest {
                                variables,
                                business_key: None,
                            },
                        )
                        .await
                });
            }
            while let Some(r) = set.join_next().await {
                r??;
            }
            anyhow::Ok(())
        })
    };

    let mut workers = JoinSet::new();
    for w in 0..args.workers.max(1) {
        let (engine, done, batch) = (engine.clone(), completed_tasks.clone(), args.batch.max(1));
        workers.spawn(async move {
            let worker = format!("bench-worker-{w}");
            let topics: Vec<TopicLock> = ["reserve", "ship", "bill"]
                .iter()
                .map(|t| TopicLock {
                    topic: t.to_string(),
                    lock_duration_ms: 60_000,
                })
                .collect();
            while done.load(Ordering::Relaxed) < 3 * n {
                let locked = engine.fetch_and_lock(&worker, batch, &topics).await?;
                if locked.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let mut set = JoinSet::new();
                for l in locked {
                    let (engine, worker) = (engine.clone(), worker.clone());
                    set.spawn(async move {
                        engine
                            .complete_external_task(&l.task.id, &worker, serde_json::Map::new())
                            .await
                    });
                }
                while let Some(r) = set.join_next().await {
                    r??;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        });
    }
    starter.await??;
    while let Some(r) = workers.join_next().await {
        r??;
    }
    let elapsed = began.elapsed();

    let filter = InstanceFilter {
        state: Some(InstanceState::Completed),
        ..Default::default()
    };
    let finished = store.list_instances(&filter).await?.len();
    ensure!(
        finished == n,
        "{backend}: only {finished} of {n} instances completed"
    );
    let secs = elapsed.as_secs_f64();
    println!(
        "{backend}: {n} instances in {secs:.2} s = {:.0} instances/s ({:.0} engine commands/s: start + 3 external-task completions each)",
        n as f64 / secs,
        4.0 * n as f64 / secs
    );
    Ok(())
}

struct ScratchDb {
    admin: String,
    name: String,
    url: String,
}

impl ScratchDb {
    async fn drop_db(&self) {
        if let Ok((client, conn)) =
            tokio_postgres::connect(&self.admin, tokio_postgres::NoTls).await
        {
            tokio::spawn(conn);
            let _ = client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .await;
        }
    }
}

async fn scratch_pg(admin: &str) -> Result<ScratchDb> {
    let (client, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls)
        .await
        .with_context(|| {
            format!(
                "cannot reach PostgreSQL at {}",
                crate::config::redact(admin)
            )
        })?;
    tokio::spawn(conn);
    let name = format!("steadyflow_bench_{}", std::process::id());
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
    Ok(ScratchDb {
        admin: admin.to_string(),
        url: format!("{base}/{name}"),
        name,
    })
}
