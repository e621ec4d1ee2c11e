//! Building the benchmark dataset on each backend: the seed through the engine, then the
//! copies (see [`super::copies`]) until the database reaches about the requested size.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, pin_mut};
use steadyflow_engine::{Engine, SystemClock};
use tokio_postgres::Client;

use super::copies::{self, Cell, Copy, JournalSeq, Out, SeedTable};
use super::seed;

const MIB: f64 = 1024.0 * 1024.0;

/// What was built.
#[derive(Debug, Clone)]
pub struct Built {
    /// Database size: `pg_database_size`, or the SQLite file.
    pub bytes: u64,
    pub instances: i64,
    pub journal_rows: i64,
    pub history_rows: i64,
    pub copies: usize,
    pub seconds: f64,
}

/// Copies needed to grow `seeded` bytes (of which `empty` is the empty schema) to
/// `target` bytes.
fn copies_for(target: u64, empty: u64, seeded: u64) -> usize {
    let per_copy = seeded.saturating_sub(empty).max(1);
    (target.saturating_sub(seeded) as f64 / per_copy as f64).ceil() as usize
}

/// Spreads copies over about a day (at least the seed's own duration apart).
fn span_ms(seed_ms: i64, copies: usize) -> i64 {
    (seed_ms + 1_000).max(86_400_000 / copies.max(1) as i64)
}

pub async fn pg_connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("cannot reach PostgreSQL at {}", crate::config::redact(url)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "benchmark connection closed");
        }
    });
    Ok(client)
}

async fn pg_size(client: &Client) -> Result<u64> {
    let n: i64 = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await?
        .get(0);
    Ok(n as u64)
}

async fn pg_count(client: &Client, table: &str) -> Result<i64> {
    Ok(client
        .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
        .await?
        .get(0))
}

/// Fills the (new, empty) database at `url` with about `target` bytes.
pub async fn build_pg(url: &str, target: u64, seed_instances: usize) -> Result<Built> {
    let began = Instant::now();
    let store = steadyflow_store_pg::PgStore::connect(url).await?;
    let client = pg_connect(url).await?;
    let empty = pg_size(&client).await?;
    let engine = Arc::new(Engine::new(Arc::new(store), Arc::new(SystemClock)));
    let s = seed::run(engine.clone(), seed_instances).await?;
    drop(engine);
    // The seed's tables hold the dead versions of every update the engine made; the
    // copies do not. Compact them first, or the size of a copy is overestimated.
    client.batch_execute("VACUUM FULL").await?;
    let seeded = pg_size(&client).await?;
    let copies = copies_for(target, empty, seeded);
    eprintln!(
        "  seed: {} orders + {} approvals through the engine in {:.1} s ({:.1} MiB); {copies} copies to reach {:.0} MiB",
        s.orders,
        s.approvals,
        began.elapsed().as_secs_f64(),
        (seeded - empty) as f64 / MIB,
        target as f64 / MIB
    );
    let mut tables = Vec::new();
    for spec in copies::copied_tables() {
        let cols: Vec<String> = spec.column_names().map(|c| format!("{c}::text")).collect();
        let rows = client
            .query(
                &format!(
                    "SELECT {} FROM {} ORDER BY {}",
                    cols.join(", "),
                    spec.name,
                    spec.key
                ),
                &[],
            )
            .await?;
        let mut seed_rows = Vec::with_capacity(rows.len());
        for r in rows {
            let mut cells = Vec::with_capacity(spec.columns.len());
            for (i, c) in spec.columns.iter().enumerate() {
                cells.push(copies::pg_cell(
                    spec,
                    c.name,
                    r.get::<_, Option<String>>(i),
                )?);
            }
            seed_rows.push(cells);
        }
        tables.push(SeedTable::new(spec, seed_rows));
    }
    let (seed_ms, first_xid, journal_rows) = seed_facts(&tables);
    let seq = JournalSeq::pg(first_xid >> 20, journal_rows, copies)?;
    let span = span_ms(seed_ms, copies);
    let gen_began = Instant::now();
    for t in &tables {
        copy_pg(&client, t, copies, span, &seq).await?;
    }
    let gen_secs = gen_began.elapsed().as_secs_f64();
    // What autovacuum would have done on a live database (hint bits, visibility map,
    // statistics): the first reader measured must not pay for the bulk load.
    client.batch_execute("VACUUM (FREEZE, ANALYZE)").await?;
    client.batch_execute("CHECKPOINT").await?;
    let bytes = pg_size(&client).await?;
    eprintln!(
        "  copies written in {gen_secs:.1} s; after VACUUM (FREEZE, ANALYZE): {:.0} MiB",
        bytes as f64 / MIB
    );
    Ok(Built {
        bytes,
        instances: pg_count(&client, "instances").await?,
        journal_rows: pg_count(&client, "journal").await?,
        history_rows: pg_count(&client, "history").await?,
        copies,
        seconds: began.elapsed().as_secs_f64(),
    })
}

/// The seed's duration (ms), its first journal sequence and its journal row count.
fn seed_facts(tables: &[SeedTable]) -> (i64, i64, usize) {
    let ints = |table: &str, col: &str| -> Vec<i64> {
        let Some(t) = tables.iter().find(|t| t.spec.name == table) else {
            return Vec::new();
        };
        let Some(i) = t.spec.columns.iter().position(|c| c.name == col) else {
            return Vec::new();
        };
        t.rows
            .iter()
            .filter_map(|r| match r[i] {
                Cell::Int(v) => Some(v),
                _ => None,
            })
            .collect()
    };
    let times = ints("journal", "tx_time");
    let dur = match (times.iter().min(), times.iter().max()) {
        (Some(a), Some(b)) => b - a,
        _ => 0,
    };
    let seqs = ints("journal", "seq");
    (dur, seqs.iter().copied().min().unwrap_or(0), seqs.len())
}

async fn copy_pg(
    client: &Client,
    t: &SeedTable,
    copies: usize,
    span: i64,
    seq: &JournalSeq,
) -> Result<()> {
    if t.rows.is_empty() || copies == 0 {
        return Ok(());
    }
    let sql = format!(
        "COPY {} ({}) FROM STDIN",
        t.spec.name,
        t.written_columns().join(", ")
    );
    let sink = client.copy_in(sql.as_str()).await?;
    pin_mut!(sink);
    let mut buf: Vec<u8> = Vec::with_capacity(2 << 20);
    let mut row: Vec<Out<'_>> = Vec::new();
    for g in 1..=copies {
        let copy = Copy::new(g, copies, span);
        for idx in 0..t.rows.len() {
            t.copy_row(idx, g, &copy, seq, &mut row)?;
            copies::copy_line(&mut buf, &row);
            if buf.len() >= 1 << 20 {
                sink.send(Bytes::from(std::mem::take(&mut buf))).await?;
                buf.reserve(2 << 20);
            }
        }
    }
    if !buf.is_empty() {
        sink.send(Bytes::from(buf)).await?;
    }
    let n = sink.finish().await?;
    eprintln!("  {}: {n} rows copied", t.spec.name);
    Ok(())
}

fn sqlite_size(conn: &rusqlite::Connection) -> Result<u64> {
    let n: i64 = conn.query_row(
        "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
        [],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}

fn sqlite_value(v: rusqlite::types::ValueRef<'_>) -> Cell {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Cell::Null,
        ValueRef::Integer(i) => Cell::Int(i),
        ValueRef::Real(f) => Cell::Text(f.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Cell::Text(String::from_utf8_lossy(t).into()),
    }
}

/// Creates the SQLite database at `path` (replacing one there) with about `target`
/// bytes.
pub async fn build_sqlite(path: &Path, target: u64, seed_instances: usize) -> Result<Built> {
    let began = Instant::now();
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let store = {
        let p = path.to_path_buf();
        tokio::task::spawn_blocking(move || steadyflow_store_sqlite::SqliteStore::open(&p))
            .await??
    };
    let empty = std::fs::metadata(path)?.len();
    let engine = Arc::new(Engine::new(Arc::new(store), Arc::new(SystemClock)));
    let s = seed::run(engine.clone(), seed_instances).await?;
    drop(engine);
    let (path, target) = (path.to_path_buf(), target);
    tokio::task::spawn_blocking(move || {
        let conn = rusqlite::Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let seeded = sqlite_size(&conn)?;
        let copies = copies_for(target, empty, seeded);
        eprintln!(
            "  seed: {} orders + {} approvals through the engine in {:.1} s ({:.1} MiB); {copies} copies to reach {:.0} MiB",
            s.orders,
            s.approvals,
            began.elapsed().as_secs_f64(),
            (seeded - empty) as f64 / MIB,
            target as f64 / MIB
        );
        fill_sqlite(&conn, copies)?;
        let bytes = sqlite_size(&conn)?;
        let count = |t: &str| -> Result<i64> {
            Ok(conn.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))?)
        };
        Ok(Built {
            bytes,
            instances: count("instances")?,
            journal_rows: count("journal")?,
            history_rows: count("history")?,
            copies,
            seconds: began.elapsed().as_secs_f64(),
        })
    })
    .await?
}

/// Runs `sql` (a journal-mode change) once the closed store's threads have let go of
/// the file: dropping a `SqliteStore` does not wait for its reader and writer threads,
/// and a journal-mode change needs the database to itself (no busy handler applies).
pub fn when_alone(conn: &rusqlite::Connection, sql: &str) -> Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match conn.execute_batch(sql) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return Ok(other?),
        }
    }
}

fn fill_sqlite(conn: &rusqlite::Connection, copies: usize) -> Result<()> {
    let gen_began = Instant::now();
    let mut tables = Vec::new();
    for spec in copies::copied_tables() {
        let cols: Vec<&str> = spec.column_names().collect();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM {} ORDER BY {}",
            cols.join(", "),
            spec.name,
            spec.key
        ))?;
        let mut rows = stmt.query([])?;
        let mut seed_rows = Vec::new();
        while let Some(r) = rows.next()? {
            let mut cells = Vec::with_capacity(cols.len());
            for i in 0..cols.len() {
                cells.push(sqlite_value(r.get_ref(i)?));
            }
            seed_rows.push(cells);
        }
        tables.push(SeedTable::new(spec, seed_rows));
    }
    let (seed_ms, _, _) = seed_facts(&tables);
    let max: i64 = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM journal", [], |r| {
        r.get(0)
    })?;
    let seq = JournalSeq::Sqlite { max };
    let span = span_ms(seed_ms, copies);
    // Bulk load: nobody else has the file open; WAL comes back at the end.
    when_alone(conn, "PRAGMA journal_mode=MEMORY")?;
    conn.execute_batch("PRAGMA synchronous=OFF; PRAGMA cache_size=-262144; BEGIN")?;
    // The seed's journal moves above its copies (they are older).
    conn.execute("UPDATE journal SET seq = seq + ?1", [copies as i64 * max])?;
    for t in &tables {
        let cols = t.written_columns();
        let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
        let mut stmt = conn.prepare(&format!(
            "INSERT INTO {} ({}) VALUES ({})",
            t.spec.name,
            cols.join(", "),
            marks.join(", ")
        ))?;
        let mut row: Vec<Out<'_>> = Vec::new();
        let mut n = 0u64;
        for g in 1..=copies {
            let copy = Copy::new(g, copies, span);
            for idx in 0..t.rows.len() {
                t.copy_row(idx, g, &copy, &seq, &mut row)?;
                stmt.execute(rusqlite::params_from_iter(row.iter()))?;
                n += 1;
            }
        }
        eprintln!("  {}: {n} rows copied", t.spec.name);
    }
    conn.execute_batch("COMMIT; PRAGMA journal_mode=WAL;")?;
    eprintln!(
        "  copies written in {:.1} s",
        gen_began.elapsed().as_secs_f64()
    );
    Ok(())
}
