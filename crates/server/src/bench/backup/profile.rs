//! `--profile`: what each stage of our backup and restore costs on its own, measured on
//! the benchmark's own data, beside the alternatives a faster version could use. These
//! figures rank the suggestions in the README; they replay the work of
//! crates/backup and the stores' recovery modules without changing them.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt, pin_mut};
use sha2::{Digest, Sha256};
use steadyflow_store::recovery::{ColumnKind, ContentHasher, TABLES, TableSpec};

use super::ops::{qp, shell};
use super::report::mib;

/// One measured step.
pub struct Line {
    pub name: String,
    pub seconds: f64,
    /// Bytes the step went through (for MiB/s).
    pub bytes: u64,
    pub note: String,
}

fn line(name: &str, seconds: f64, bytes: u64, note: impl Into<String>) -> Line {
    Line {
        name: name.to_string(),
        seconds,
        bytes,
        note: note.into(),
    }
}

pub fn print(title: &str, lines: &[Line]) {
    println!();
    println!("{title}");
    println!("| step | seconds | MiB/s | note |");
    println!("|---|---:|---:|---|");
    for l in lines {
        println!(
            "| {} | {:.2} | {:.0} | {} |",
            l.name.replace('|', "\\|"),
            l.seconds,
            mib(l.bytes) / l.seconds.max(1e-9),
            l.note
        );
    }
}

/// Costs of the archive side: hashing, checking, compressing the table files of
/// `archive` (extracted into `work`).
pub async fn archive_costs(archive: &Path, work: &Path) -> Result<Vec<Line>> {
    let dir = work.join("profile-extract");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let t = Instant::now();
    shell(format!("zstd -dc {} | tar -x -C {}", qp(archive), qp(&dir))).await?;
    let extract = t.elapsed().as_secs_f64();
    let dir2 = dir.clone();
    let mut lines = tokio::task::spawn_blocking(move || blocking_archive_costs(&dir2)).await??;
    let total: u64 = lines.first().map_or(0, |l| l.bytes);
    lines.insert(
        0,
        line(
            "zstd -dc | tar x of the archive (CLI, for scale)",
            extract,
            total,
            "",
        ),
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(lines)
}

fn blocking_archive_costs(dir: &Path) -> Result<Vec<Line>> {
    let mut tables: Vec<(String, Vec<u8>)> = Vec::new();
    for t in TABLES {
        let p = dir.join("tables").join(format!("{}.jsonl", t.name));
        let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        tables.push((t.name.to_string(), bytes));
    }
    let total: u64 = tables.iter().map(|(_, b)| b.len() as u64).sum();
    let rows: usize = tables
        .iter()
        .map(|(_, b)| b.split(|&c| c == b'\n').filter(|l| !l.is_empty()).count())
        .sum();
    let mut out = Vec::new();
    let each_line = |f: &mut dyn FnMut(&str) -> Result<()>| -> Result<f64> {
        let t = Instant::now();
        for (_, bytes) in &tables {
            let text = std::str::from_utf8(bytes)?;
            for l in text.lines().filter(|l| !l.is_empty()) {
                f(l)?;
            }
        }
        Ok(t.elapsed().as_secs_f64())
    };
    // Content checksum as backup, verify and restore compute it.
    let mut h = ContentHasher::new();
    let s = each_line(&mut |l| Ok(h.add(l)?))?;
    std::hint::black_box(h.finish());
    out.push(line(
        "content checksum (ContentHasher: one walk to serde_json's canonical bytes + SHA-256)",
        s,
        total,
        format!("{rows} rows; on its own thread when spooling, again by the restore's check"),
    ));
    let s = proposed_content_hash(&tables)?;
    out.push(line(
        "  proposed: typed columns, only JSON columns canonicalized",
        s,
        total,
        "borrowed parse; text unescaped, numbers as written",
    ));
    let s = each_line(&mut |l| {
        let v: serde_json::Value = serde_json::from_str(l)?;
        std::hint::black_box(serde_json::to_vec(&v)?);
        Ok(())
    })?;
    out.push(line(
        "  the same bytes through a serde_json Value (before)",
        s,
        total,
        "parse + sorted re-serialize, no SHA-256",
    ));
    let s = each_line(&mut |l| {
        let _: serde::de::IgnoredAny = serde_json::from_str(l)?;
        Ok(())
    })?;
    out.push(line(
        "  JSON validation alone (IgnoredAny, no tree)",
        s,
        total,
        "",
    ));
    let t = Instant::now();
    let mut sha = Sha256::new();
    for (_, b) in &tables {
        sha.update(b);
    }
    let _ = sha.finalize();
    out.push(line(
        "SHA-256 of the table bytes",
        t.elapsed().as_secs_f64(),
        total,
        "file checksums: once when spooling, again on every read",
    ));
    // archive::TailReader counts zero bytes one by one over the whole stream.
    let t = Instant::now();
    let mut zero_run = 0u64;
    for (_, b) in &tables {
        for &c in b.iter() {
            zero_run = if c == 0 { zero_run + 1 } else { 0 };
        }
    }
    std::hint::black_box(zero_run);
    out.push(line(
        "per-byte zero-run scan (archive::TailReader)",
        t.elapsed().as_secs_f64(),
        total,
        "on every archive read",
    ));
    let all: Vec<u8> = tables.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    drop(tables);
    for (level, workers) in [(3, 1), (3, 0), (3, 2), (1, 1), (1, 2), (6, 2)] {
        let t = Instant::now();
        let size = compress(&all, level, workers)?;
        out.push(line(
            &format!(
                "zstd level {level}, {} worker(s){}",
                workers,
                if (level, workers) == (3, 1) {
                    " (as now)"
                } else {
                    ""
                }
            ),
            t.elapsed().as_secs_f64(),
            total,
            format!("{:.1} MiB", mib(size)),
        ));
    }
    let packed = {
        let mut e = zstd::Encoder::new(Vec::new(), 3)?;
        e.include_checksum(true)?;
        e.write_all(&all)?;
        e.finish()?
    };
    let t = Instant::now();
    let mut d = zstd::Decoder::new(&packed[..])?;
    let n = std::io::copy(&mut d, &mut std::io::sink())?;
    out.push(line(
        "zstd decompress (level 3 frame)",
        t.elapsed().as_secs_f64(),
        n,
        "",
    ));
    Ok(out)
}

/// A cheaper canonical content checksum, measured as a suggestion: each line is parsed
/// into borrowed fields (no tree), keys come out sorted, text is unescaped only where it
/// has escapes, and only the JSON-kind columns (which PostgreSQL's jsonb re-orders and
/// re-spaces) are parsed into a tree and re-serialized.
fn proposed_content_hash(tables: &[(String, Vec<u8>)]) -> Result<f64> {
    use std::borrow::Cow;
    use std::collections::BTreeMap;

    use serde_json::value::RawValue;
    let t = Instant::now();
    let mut buf = Vec::new();
    for (name, bytes) in tables {
        let spec = steadyflow_store::recovery::table(name).context("unknown table")?;
        let kind = |c: &str| spec.columns.iter().find(|k| k.name == c).map(|k| k.kind);
        let mut sha = Sha256::new();
        for l in std::str::from_utf8(bytes)?
            .lines()
            .filter(|l| !l.is_empty())
        {
            let row: BTreeMap<&str, &RawValue> = serde_json::from_str(l)?;
            for (k, v) in row {
                sha.update(k.as_bytes());
                sha.update(b"=");
                match kind(k) {
                    Some(ColumnKind::Json) if v.get() != "null" => {
                        let tree: serde_json::Value = serde_json::from_str(v.get())?;
                        buf.clear();
                        serde_json::to_writer(&mut buf, &tree)?;
                        sha.update(&buf);
                    }
                    Some(ColumnKind::Text) if v.get().starts_with('"') => {
                        // Unescape only what has escapes (the journal's row images).
                        let raw = v.get();
                        let text: Cow<'_, str> = if raw.contains('\\') {
                            Cow::Owned(serde_json::from_str::<String>(raw)?)
                        } else {
                            Cow::Borrowed(&raw[1..raw.len() - 1])
                        };
                        sha.update(text.as_bytes());
                    }
                    _ => sha.update(v.get().as_bytes()),
                }
                sha.update(b"\x1f");
            }
            sha.update(b"\n");
        }
        std::hint::black_box(sha.finalize());
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Compressed size of `data` at `level` with `workers` zstd worker threads.
fn compress(data: &[u8], level: i32, workers: u32) -> Result<u64> {
    struct Count(u64);
    impl Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len() as u64;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut e = zstd::Encoder::new(Count(0), level)?;
    if workers > 0 {
        e.multithread(workers)?;
    }
    e.include_checksum(true)?;
    for chunk in data.chunks(1 << 20) {
        e.write_all(chunk)?;
    }
    Ok(e.finish()?.0)
}

fn cols(t: &TableSpec) -> String {
    t.column_names().collect::<Vec<_>>().join(", ")
}

/// PostgreSQL read and write paths on the benchmark database `src` (writes go to a new
/// staging database beside `scratch`, dropped afterwards).
pub async fn pg_costs(src: &str, scratch: &str) -> Result<Vec<Line>> {
    let client = super::dataset::pg_connect(src).await?;
    let mut out = Vec::new();
    // What the export runs: row_to_json per row, one DataRow message each.
    let t = Instant::now();
    let mut bytes = 0u64;
    for table in TABLES {
        let sql = format!(
            "SELECT row_to_json(r)::text FROM (SELECT {} FROM {} ORDER BY {}) r",
            cols(table),
            table.name,
            table.key
        );
        let rows = client
            .query_raw(sql.as_str(), std::iter::empty::<&str>())
            .await?;
        pin_mut!(rows);
        while let Some(r) = rows.next().await {
            bytes += r?.get::<_, &str>(0).len() as u64 + 1;
        }
    }
    out.push(line(
        "SELECT row_to_json ORDER BY key (the export, as now)",
        t.elapsed().as_secs_f64(),
        bytes,
        "",
    ));
    let copy_out = |sql: String| {
        let client = &client;
        async move {
            let stream = client.copy_out(sql.as_str()).await?;
            pin_mut!(stream);
            let mut data = Vec::new();
            while let Some(chunk) = stream.next().await {
                data.push(chunk?);
            }
            anyhow::Ok(data)
        }
    };
    let t = Instant::now();
    let mut bytes = 0u64;
    for table in TABLES {
        let data = copy_out(format!(
            "COPY (SELECT row_to_json(r) FROM (SELECT {} FROM {} ORDER BY {}) r) TO STDOUT",
            cols(table),
            table.name,
            table.key
        ))
        .await?;
        bytes += data.iter().map(|c| c.len() as u64).sum::<u64>();
    }
    out.push(line(
        "COPY (SELECT row_to_json …) TO STDOUT",
        t.elapsed().as_secs_f64(),
        bytes,
        "same JSON, COPY protocol",
    ));
    let t = Instant::now();
    let mut copied = Vec::new();
    let mut bytes = 0u64;
    for table in TABLES {
        let data = copy_out(format!(
            "COPY (SELECT {} FROM {} ORDER BY {}) TO STDOUT",
            cols(table),
            table.name,
            table.key
        ))
        .await?;
        bytes += data.iter().map(|c| c.len() as u64).sum::<u64>();
        copied.push((table, data));
    }
    out.push(line(
        "COPY (SELECT cols ORDER BY key) TO STDOUT (text)",
        t.elapsed().as_secs_f64(),
        bytes,
        "no JSON built per row",
    ));
    let t = Instant::now();
    let mut bytes = 0u64;
    for table in TABLES {
        let data = copy_out(format!("COPY {} TO STDOUT", table.name)).await?;
        bytes += data.iter().map(|c| c.len() as u64).sum::<u64>();
    }
    out.push(line(
        "COPY table TO STDOUT (text, heap order)",
        t.elapsed().as_secs_f64(),
        bytes,
        "what pg_dump reads",
    ));
    // Writes: COPY FROM into a migrated staging database, as the restore's import could.
    let staging = steadyflow_store_pg::recovery::stage(scratch).await?;
    let staging_url = {
        let mut cfg: tokio_postgres::Config = scratch.parse()?;
        let name = format!("{}_restore", cfg.get_dbname().unwrap_or("postgres"));
        cfg.dbname(&name);
        let (base, _) = scratch.rsplit_once('/').unwrap_or((scratch, ""));
        format!("{base}/{name}")
    };
    let target = super::dataset::pg_connect(&staging_url).await?;
    target.batch_execute("SET synchronous_commit = off").await?;
    let t = Instant::now();
    let mut bytes = 0u64;
    for (table, data) in copied.into_iter().filter(|(t, _)| t.restored()) {
        let sink = target
            .copy_in(format!("COPY {} ({}) FROM STDIN", table.name, cols(table)).as_str())
            .await?;
        pin_mut!(sink);
        for chunk in data {
            bytes += chunk.len() as u64;
            sink.send(chunk).await?;
        }
        sink.finish().await?;
    }
    out.push(line(
        "COPY FROM STDIN (text) into a migrated staging database",
        t.elapsed().as_secs_f64(),
        bytes,
        "as the import does (restore stage 'restoring tables')",
    ));
    // What the promotion does before its renames, split.
    for (name, sql) in [
        (
            "promote: CHECKPOINT (no longer run)",
            "SET synchronous_commit = on; CHECKPOINT",
        ),
        ("promote: ANALYZE (as now)", "ANALYZE"),
    ] {
        let t = Instant::now();
        target.batch_execute(sql).await?;
        out.push(line(name, t.elapsed().as_secs_f64(), 0, ""));
    }
    drop(target);
    use steadyflow_store::recovery::Staging;
    Box::new(staging).discard().await?;
    Ok(out)
}

/// SQLite read and write paths on the benchmark file `src` (writes go to a new file in
/// `work`, removed afterwards).
pub async fn sqlite_costs(src: &Path, work: &Path) -> Result<Vec<Line>> {
    let (src, work) = (src.to_path_buf(), work.to_path_buf());
    tokio::task::spawn_blocking(move || blocking_sqlite_costs(&src, &work)).await?
}

fn blocking_sqlite_costs(src: &Path, work: &Path) -> Result<Vec<Line>> {
    let conn = rusqlite::Connection::open_with_flags(
        src,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let mut out = Vec::new();
    let t = Instant::now();
    let mut bytes = 0u64;
    for table in TABLES {
        let fields: Vec<String> = table
            .columns
            .iter()
            .map(|c| match c.kind {
                ColumnKind::Json => format!("'{0}', json({0})", c.name),
                _ => format!("'{0}', {0}", c.name),
            })
            .collect();
        let mut stmt = conn.prepare(&format!(
            "SELECT json_object({}) FROM {} ORDER BY {}",
            fields.join(", "),
            table.name,
            table.key
        ))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            bytes += r.get_ref(0)?.as_bytes()?.len() as u64 + 1;
        }
    }
    out.push(line(
        "SELECT json_object(…, json(col)) ORDER BY key (the export, as now)",
        t.elapsed().as_secs_f64(),
        bytes,
        "",
    ));
    let t = Instant::now();
    let mut bytes = 0u64;
    for table in TABLES {
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM {} ORDER BY {}",
            cols(table),
            table.name,
            table.key
        ))?;
        let n = table.columns.len();
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            for i in 0..n {
                bytes += match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Text(s) | rusqlite::types::ValueRef::Blob(s) => {
                        s.len() as u64
                    }
                    _ => 8,
                };
            }
        }
    }
    out.push(line(
        "SELECT cols ORDER BY key (values only, no JSON)",
        t.elapsed().as_secs_f64(),
        bytes,
        "",
    ));
    // Writes: prepared inserts of bound values into a migrated file, as staging is
    // configured (journal off, no syncs).
    let dest = work.join("profile-insert.db");
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", dest.display()));
    }
    drop(steadyflow_store_sqlite::SqliteStore::open(&dest)?);
    let w = rusqlite::Connection::open(&dest)?;
    w.busy_timeout(std::time::Duration::from_secs(30))?;
    super::dataset::when_alone(&w, "PRAGMA journal_mode=OFF")?;
    w.execute_batch("PRAGMA synchronous=OFF; PRAGMA cache_size=-65536; BEGIN")?;
    let t = Instant::now();
    let mut bytes = 0u64;
    for table in TABLES.iter().filter(|t| t.restored()) {
        let n = table.columns.len();
        let marks: Vec<String> = (1..=n).map(|i| format!("?{i}")).collect();
        let mut ins = w.prepare(&format!(
            "INSERT INTO {} ({}) VALUES ({})",
            table.name,
            cols(table),
            marks.join(", ")
        ))?;
        let mut stmt = conn.prepare(&format!("SELECT {} FROM {}", cols(table), table.name))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let vals: Vec<rusqlite::types::ValueRef<'_>> = (0..n)
                .map(|i| r.get_ref(i))
                .collect::<rusqlite::Result<_>>()?;
            for v in &vals {
                if let rusqlite::types::ValueRef::Text(s) = v {
                    bytes += s.len() as u64;
                }
            }
            ins.execute(rusqlite::params_from_iter(
                vals.iter()
                    .map(|v| rusqlite::types::ToSqlOutput::Borrowed(*v)),
            ))?;
        }
    }
    w.execute_batch("COMMIT")?;
    out.push(line(
        "prepared INSERT of bound values (read + write, streamed)",
        t.elapsed().as_secs_f64(),
        bytes,
        "vs json_each batches (restore stage 'restoring tables')",
    ));
    drop(w);
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", dest.display()));
    }
    let mut f = std::fs::File::open(src)?;
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    out.push(line(
        "reading the database file (page cache)",
        t.elapsed().as_secs_f64(),
        n,
        "the floor for any export",
    ));
    Ok(out)
}
