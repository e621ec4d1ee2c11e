//! `steadyflow bench-backup`: builds a realistic dataset of about `--size-mb` on
//! PostgreSQL (and, with `--sqlite`, in a SQLite file), then times on the same data our
//! backup, verify, `restore --test`, a full restore into an empty database (up to the
//! first engine command), and an incremental after 1 % of the instances changed, beside
//! `pg_dump | gzip`, `pg_dump -Fc` + `pg_restore -j2`, `psql < plain dump` and
//! `sqlite3 .backup` + `zstd`; prints one table per backend.
//!
//! A benchmark, not a test: it needs PostgreSQL, the PostgreSQL client tools, `sqlite3`,
//! `zstd` and `gzip`, and several times the dataset's size of free disk.

mod copies;
mod dataset;
mod ops;
mod profile;
mod report;
mod rng;
mod seed;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use steadyflow_backup::Kind;

use ops::{Target, q, qp, tool};
use report::Row;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchBackupArgs {
    /// Dataset size to generate, in MB (10^6 bytes) of database.
    #[arg(long, default_value_t = 1000)]
    pub size_mb: u64,
    /// PostgreSQL server for the scratch databases (dropped afterwards; with --keep the
    /// generated one stays).
    #[arg(
        long,
        env = "STEADYFLOW_BENCH_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub pg_url: String,
    /// Measure SQLite too (a database file in --work-dir).
    #[arg(long)]
    pub sqlite: bool,
    /// Leave PostgreSQL out (with --sqlite: SQLite only).
    #[arg(long)]
    pub no_postgres: bool,
    /// Instances run through the engine for the seed that is then multiplied.
    #[arg(long, default_value_t = 2_000)]
    pub seed_instances: usize,
    /// Where archives, dumps and the SQLite files go (default: a new directory in the
    /// system's temporary directory).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the generated datasets (PostgreSQL database, SQLite file) and our archives,
    /// to rerun commands on them (names printed). Restore targets and dumps are always
    /// dropped as soon as they were measured: together they would need several times the
    /// dataset's size of disk.
    #[arg(long)]
    pub keep: bool,
    /// Only our operations (no pg_dump, pg_restore, psql, sqlite3, zstd).
    #[arg(long)]
    pub no_baselines: bool,
    /// Also measure each stage of backup and restore on its own, beside alternatives
    /// (content checksum, SHA-256, zstd levels and threads, COPY against JSON).
    #[arg(long)]
    pub profile: bool,
}

pub async fn run(args: BenchBackupArgs) -> Result<()> {
    ensure!(args.size_mb > 0, "--size-mb must be positive");
    ensure!(
        args.sqlite || !args.no_postgres,
        "nothing to measure: --no-postgres needs --sqlite"
    );
    let work = args.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("steadyflow-bench-backup-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    check_disk(&work, args.size_mb * 1_000_000).await?;
    println!(
        "bench-backup: {} MB per backend, seed {} instances, work dir {}, {} cores, load {}",
        args.size_mb,
        args.seed_instances,
        work.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut result = Ok(());
    if !args.no_postgres {
        result = postgres(&args, &work).await;
    }
    if result.is_ok() && args.sqlite {
        result = sqlite(&args, &work.join("sqlite")).await;
    }
    if args.keep {
        println!("kept: {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

/// Refuses to start without room for the peak: the dataset, the backup's spool, a
/// restored copy and a plain dump at once. (Where the PostgreSQL server keeps its data is
/// not known here; on one machine it is usually the same disk.)
async fn check_disk(work: &Path, size: u64) -> Result<()> {
    let out = tokio::task::spawn_blocking({
        let work = work.to_path_buf();
        move || {
            std::process::Command::new("df")
                .arg("-Pk")
                .arg(&work)
                .output()
        }
    })
    .await?;
    let free_kib = out.ok().and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .nth(1)
            .and_then(|l| {
                l.split_whitespace()
                    .nth(3)
                    .and_then(|v| v.parse::<u64>().ok())
            })
    });
    if let Some(kib) = free_kib {
        ensure!(
            kib * 1024 >= 4 * size,
            "{} has {} MiB free; a {} MB run needs about 4 times its size at its peak: use a \
             smaller --size-mb or another --work-dir",
            work.display(),
            kib / 1024,
            size / 1_000_000
        );
    }
    Ok(())
}

/// The scratch databases of one run: restore targets are dropped once measured, the rest
/// at the end (the generated one stays with --keep).
struct PgScratch {
    admin: String,
    prefix: String,
    made: Vec<String>,
}

impl PgScratch {
    fn url(&self, name: &str) -> String {
        let base = self
            .admin
            .split_once('?')
            .map_or(self.admin.as_str(), |(b, _)| b);
        let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
        format!("{base}/{name}")
    }

    fn name(&mut self, what: &str) -> String {
        let n = format!("{}_{what}", self.prefix);
        self.made.push(n.clone());
        n
    }

    async fn create(&mut self, what: &str) -> Result<String> {
        let n = self.name(what);
        let admin = dataset::pg_connect(&self.admin).await?;
        // One statement per call: neither may run in a (multi-statement) transaction.
        for sql in [
            format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)"),
            format!("CREATE DATABASE {n}"),
        ] {
            admin.batch_execute(&sql).await?;
        }
        Ok(n)
    }

    async fn drop_db(&self, name: &str) {
        if let Ok(admin) = dataset::pg_connect(&self.admin).await {
            for n in [name.to_string(), format!("{name}_restore")] {
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)"))
                    .await;
            }
        }
    }

    async fn drop_all(&self) {
        for n in &self.made {
            self.drop_db(n).await;
        }
    }
}

async fn postgres(args: &BenchBackupArgs, work: &Path) -> Result<()> {
    let mut dbs = PgScratch {
        admin: args.pg_url.clone(),
        prefix: format!("steadyflow_benchbackup_{}", std::process::id()),
        made: Vec::new(),
    };
    let result = postgres_run(args, work, &mut dbs).await;
    if args.keep {
        let src = format!("{}_src", dbs.prefix);
        dbs.made.retain(|n| *n != src);
        println!("kept PostgreSQL database: {}", dbs.url(&src));
    }
    dbs.drop_all().await;
    result
}

async fn postgres_run(args: &BenchBackupArgs, work: &Path, dbs: &mut PgScratch) -> Result<()> {
    println!("PostgreSQL: generating the dataset");
    let src_name = dbs.create("src").await?;
    let src_url = dbs.url(&src_name);
    let built = dataset::build_pg(&src_url, args.size_mb * 1_000_000, args.seed_instances).await?;
    print_built(&built);
    let src = Target::Postgres(src_url.clone());
    let backups = work.join("pg-backups");
    let dumps = work.join("pg-dumps");
    std::fs::create_dir_all(&dumps)?;
    let mut rows: Vec<Row> = Vec::new();

    println!("PostgreSQL: measuring");
    let (full, row) = ops::backup(&src, &backups, Kind::Full).await?;
    rows.push(row);
    rows.push(ops::verify(&backups, &full).await?);
    let test_name = dbs.name("restore_test");
    rows.extend(
        ops::restore(
            &backups,
            &full,
            &Target::Postgres(dbs.url(&test_name)),
            true,
        )
        .await?,
    );
    let restored = dbs.name("restored");
    rows.extend(
        ops::restore(
            &backups,
            &full,
            &Target::Postgres(dbs.url(&restored)),
            false,
        )
        .await?,
    );
    dbs.drop_db(&restored).await;

    if !args.no_baselines {
        let gz = dumps.join("dump.sql.gz");
        rows.push(
            tool(
                "pg_dump | gzip",
                format!("pg_dump -d {} | gzip > {}", q(&src_url), qp(&gz)),
                report::Kind::Backup,
                Some(&gz),
            )
            .await?,
        );
        let fc = dumps.join("dump.fc");
        rows.push(
            tool(
                "pg_dump -Fc",
                format!("pg_dump -Fc -d {} -f {}", q(&src_url), qp(&fc)),
                report::Kind::Backup,
                Some(&fc),
            )
            .await?,
        );
        let into = dbs.create("pg_restore").await?;
        rows.push(
            tool(
                "pg_restore -j2 (empty database)",
                format!("pg_restore -j2 -d {} {}", q(&dbs.url(&into)), qp(&fc)),
                report::Kind::Restore,
                None,
            )
            .await?,
        );
        dbs.drop_db(&into).await;
        let plain = dumps.join("dump.sql");
        ops::shell(format!("gzip -dc {} > {}", qp(&gz), qp(&plain))).await?;
        let into = dbs.create("psql").await?;
        rows.push(
            tool(
                "psql < plain dump (empty database)",
                format!(
                    "psql -X -q -v ON_ERROR_STOP=1 -d {} < {} > /dev/null",
                    q(&dbs.url(&into)),
                    qp(&plain)
                ),
                report::Kind::Restore,
                None,
            )
            .await?,
        );
        dbs.drop_db(&into).await;
        let _ = std::fs::remove_file(&plain);
        if !args.keep {
            let _ = std::fs::remove_dir_all(&dumps);
        }
    }

    // Before the journal is pruned: the profile reads the same tables the backup read.
    let profiled = if args.profile {
        let mut lines = profile::archive_costs(&backups.join(&full.archive), work).await?;
        let scratch = dbs.name("profile");
        lines.extend(profile::pg_costs(&src_url, &dbs.url(&scratch)).await?);
        Some(lines)
    } else {
        None
    };
    incremental_and_prune(&src, &backups, &full, &built, &mut rows, args.keep).await?;
    print_results("PostgreSQL", &built, &rows, profiled.as_deref(), true);
    Ok(())
}

/// 1 % of the instances change through the engine, then an incremental backup and the
/// journal pruning a default backup does (not with `keep`: the kept dataset keeps its
/// journal, so that commands rerun on it see the data measured here).
/// The stages measured on their own (with `--profile`), then the table of one backend.
fn print_results(
    backend: &str,
    built: &dataset::Built,
    rows: &[Row],
    profiled: Option<&[profile::Line]>,
    server_cpu: bool,
) {
    if let Some(lines) = profiled {
        profile::print(&format!("{backend}: stages on their own"), lines);
    }
    report::print(
        &format!(
            "{backend}, {:.0} MiB database ({} instances, {} history rows, {} journal rows)",
            report::mib(built.bytes),
            built.instances,
            built.history_rows,
            built.journal_rows
        ),
        built.bytes,
        rows,
        server_cpu,
    );
}

async fn incremental_and_prune(
    src: &Target,
    backups: &Path,
    full: &steadyflow_backup::Sidecar,
    built: &dataset::Built,
    rows: &mut Vec<Row>,
    keep: bool,
) -> Result<()> {
    let want = (built.instances as usize / 100).max(1);
    let changed = ops::change(src, want).await?;
    let (incr, row) = ops::backup(src, backups, Kind::Incremental).await?;
    rows.push(row.note(format!("after {changed} instances (1 %) changed")));
    ensure!(
        incr.manifest.parent.as_deref() == Some(full.manifest.id.as_str()),
        "the incremental does not continue the full backup"
    );
    if !keep {
        rows.push(ops::prune(src, &incr).await?);
    }
    Ok(())
}

fn print_built(b: &dataset::Built) {
    println!(
        "  dataset: {:.0} MiB, {} instances, {} history rows, {} journal rows ({} copies of the seed), built in {:.0} s",
        report::mib(b.bytes),
        b.instances,
        b.history_rows,
        b.journal_rows,
        b.copies,
        b.seconds
    );
}

async fn sqlite(args: &BenchBackupArgs, work: &Path) -> Result<()> {
    std::fs::create_dir_all(work)?;
    println!("SQLite: generating the dataset");
    let db = work.join("bench.db");
    let built = dataset::build_sqlite(&db, args.size_mb * 1_000_000, args.seed_instances).await?;
    print_built(&built);
    let src = Target::Sqlite(db.clone());
    let backups = work.join("backups");
    let mut rows: Vec<Row> = Vec::new();

    println!("SQLite: measuring");
    let (full, row) = ops::backup(&src, &backups, Kind::Full).await?;
    rows.push(row);
    rows.push(ops::verify(&backups, &full).await?);
    let scratch = work.join("scratch");
    std::fs::create_dir_all(&scratch)?;
    rows.extend(
        ops::restore(
            &backups,
            &full,
            &Target::Sqlite(scratch.join("restore-test.db")),
            true,
        )
        .await?,
    );
    let restored = work.join("restored.db");
    rows.extend(ops::restore(&backups, &full, &Target::Sqlite(restored.clone()), false).await?);
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", restored.display()));
    }

    if !args.no_baselines {
        let copy = work.join("copy.db");
        let zst = work.join("copy.db.zst");
        let b = tool(
            "sqlite3 .backup",
            format!(
                "sqlite3 {} {}",
                qp(&db),
                q(&format!(".backup {}", copy.display()))
            ),
            report::Kind::Other,
            Some(&copy),
        )
        .await?;
        let z = tool(
            "zstd -3 of that copy",
            format!("zstd -q -f {} -o {}", qp(&copy), qp(&zst)),
            report::Kind::Other,
            Some(&zst),
        )
        .await?;
        let _ = std::fs::remove_file(&copy);
        let mut both = b.usage;
        both.seconds += z.usage.seconds;
        both.own_cpu += z.usage.own_cpu;
        both.load = both.load.max(z.usage.load);
        let size = std::fs::metadata(&zst)?.len();
        rows.push(b);
        rows.push(z);
        rows.push(
            Row::new(
                "= sqlite3 .backup + zstd",
                both,
                report::Kind::Backup,
                false,
            )
            .archive(size),
        );
        let back = work.join("unzstd.db");
        rows.push(
            tool(
                "zstd -d (the copy back)",
                format!("zstd -d -q -f {} -o {}", qp(&zst), qp(&back)),
                report::Kind::Restore,
                None,
            )
            .await?,
        );
        let _ = std::fs::remove_file(&back);
        if !args.keep {
            let _ = std::fs::remove_file(&zst);
        }
    }

    let profiled = if args.profile {
        let mut lines = profile::archive_costs(&backups.join(&full.archive), work).await?;
        lines.extend(profile::sqlite_costs(&db, work).await?);
        Some(lines)
    } else {
        None
    };
    incremental_and_prune(&src, &backups, &full, &built, &mut rows, args.keep).await?;
    print_results("SQLite", &built, &rows, profiled.as_deref(), false);
    Ok(())
}
