//! Multiplying the seed: every seed row (except the definitions) is written again `K`
//! times, each copy with its own ids, keys and times, so the dataset reaches the requested
//! size with the engine's real row shapes.
//!
//! Why in Rust rather than `INSERT … SELECT generate_series` on the server: the ids must
//! change *consistently* across tables and inside JSON (an instance id appears in its
//! row, its tasks, its history, in every journal image and in its runtime), and they must
//! look fresh to a compressor (a copy that kept 28 of 36 characters of each id would
//! compress far better than real data). A copy maps every UUID-shaped token through one
//! function of (token, copy): v7 ids keep their layout with the timestamp moved by the
//! copy's time offset, the random bits re-hashed. The same code then fills PostgreSQL
//! (COPY) and SQLite (prepared inserts), so both backends hold the same dataset.
//!
//! Journal sequences stay what the stores promise: copies are placed *before* the seed in
//! time and in sequence (PostgreSQL: transaction ids below the seed's, one per copy, so
//! `seq >> 20` still groups whole transactions; SQLite: the seed's rows move up), and
//! `tx_time` grows along `seq`.

use std::borrow::Cow;

use anyhow::{Context, Result, bail};
use steadyflow_store::recovery::{ColumnKind, TABLES, TableSpec};

use super::rng::mix;

/// Formats a 128-bit value as a lowercase UUID string.
pub fn format_uuid(v: u128) -> String {
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// A lowercase UUID at the start of `b` (exactly 36 bytes looked at).
fn parse_uuid(b: &[u8]) -> Option<u128> {
    if b.len() < 36 || b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    let mut v: u128 = 0;
    for (i, &c) in b[..36].iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        v = v << 4 | u128::from(hex_val(c)?);
    }
    Some(v)
}

/// One copy of the seed: its number and how far back in time it lies.
pub struct Copy {
    salt: u64,
    /// Milliseconds subtracted from every time of the copy (and from v7 id timestamps).
    pub offset_ms: i64,
}

impl Copy {
    /// Copy `g` of `copies` (1-based); copy 1 is the oldest.
    pub fn new(g: usize, copies: usize, span_ms: i64) -> Copy {
        Copy {
            salt: mix(g as u64 ^ 0x00c0_ffee_d00d_f00d),
            offset_ms: (copies + 1 - g) as i64 * span_ms,
        }
    }

    pub fn shift(&self, ms: i64) -> i64 {
        ms - self.offset_ms
    }

    fn map_uuid(&self, v: u128) -> u128 {
        let (hi, lo) = ((v >> 64) as u64, v as u64);
        let h1 = mix(lo ^ self.salt);
        let h2 = mix(hi ^ h1);
        let version = (v >> 76) & 0xF;
        let top = if version == 7 {
            let ts = (v >> 80) as i64;
            (ts - self.offset_ms).max(0) as u128 & 0xFFFF_FFFF_FFFF
        } else {
            u128::from(h2 >> 16)
        };
        top << 80
            | version << 76
            | u128::from(h2 & 0xFFF) << 64
            | 0x2_u128 << 62
            | u128::from(h1 >> 2)
    }

    /// `s` with every UUID-shaped token replaced by this copy's counterpart.
    pub fn remap<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let b = s.as_bytes();
        if b.len() < 36 {
            return Cow::Borrowed(s);
        }
        let mut out: Option<String> = None;
        let (mut i, mut copied) = (0, 0);
        while i + 36 <= b.len() {
            // Cheap pre-check on the dashes before parsing 32 hex digits.
            if b[i + 8] == b'-'
                && b[i + 23] == b'-'
                && (i == 0 || hex_val(b[i - 1]).is_none())
                && b.get(i + 36).is_none_or(|&c| hex_val(c).is_none())
                && let Some(v) = parse_uuid(&b[i..])
            {
                let o = out.get_or_insert_with(|| String::with_capacity(s.len()));
                o.push_str(&s[copied..i]);
                o.push_str(&format_uuid(self.map_uuid(v)));
                i += 36;
                copied = i;
            } else {
                i += 1;
            }
        }
        match out {
            Some(mut o) => {
                o.push_str(&s[copied..]);
                Cow::Owned(o)
            }
            None => Cow::Borrowed(s),
        }
    }
}

/// A seed value as read.
#[derive(Debug, Clone)]
pub enum Cell {
    Null,
    Int(i64),
    Text(String),
}

/// A value of a copy, borrowing the seed where nothing changed.
#[derive(Debug)]
pub enum Out<'a> {
    Null,
    Int(i64),
    Text(Cow<'a, str>),
}

impl rusqlite::ToSql for Out<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value, ValueRef};
        Ok(match self {
            Out::Null => ToSqlOutput::Owned(Value::Null),
            Out::Int(i) => ToSqlOutput::Owned(Value::Integer(*i)),
            Out::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

/// What a column does in a copy.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Keep,
    /// Milliseconds since the epoch: moved by the copy's offset.
    Time,
    /// Text or JSON: ids remapped.
    Remap,
    /// The journal's key: a new sequence (see [`JournalSeq`]).
    JournalSeq,
    /// History's key: left out, the database assigns it.
    Omit,
}

fn role(table: &TableSpec, column: &str, kind: ColumnKind) -> Role {
    match (table.name, column, kind) {
        ("journal", "seq", _) => Role::JournalSeq,
        ("history", "seq", _) => Role::Omit,
        (_, c, ColumnKind::Int) if c.ends_with("_at") || c == "time" || c == "tx_time" => {
            Role::Time
        }
        (_, "lock_until", _) => Role::Time,
        (_, _, ColumnKind::Int) => Role::Keep,
        _ => Role::Remap,
    }
}

/// How copies number their journal rows.
#[derive(Debug, Clone, Copy)]
pub enum JournalSeq {
    /// PostgreSQL: `xid << 20 | position`; copy `g` takes `chunks` transaction ids below
    /// the seed's lowest (`first_xid`), copy 1 the lowest.
    Pg {
        first_xid: i64,
        chunks: i64,
        copies: i64,
    },
    /// SQLite: the seed's rows were moved up by `copies * max`; copy `g` takes
    /// `(g - 1) * max + seq`.
    Sqlite { max: i64 },
}

impl JournalSeq {
    /// Sequence of the seed's journal row number `idx` (in sequence order, seq `seq`) in
    /// copy `g`.
    fn of(&self, g: usize, idx: usize, seq: i64) -> i64 {
        match *self {
            JournalSeq::Pg {
                first_xid,
                chunks,
                copies,
            } => {
                let idx = idx as i64;
                let xid = first_xid - (copies + 1 - g as i64) * chunks + (idx >> 20);
                xid << 20 | (idx & 0xF_FFFF)
            }
            JournalSeq::Sqlite { max } => (g as i64 - 1) * max + seq,
        }
    }

    /// PostgreSQL: the numbering for `rows` seed rows from `first_xid` on, if the
    /// transaction ids below the seed leave room for `copies` copies.
    pub fn pg(first_xid: i64, rows: usize, copies: usize) -> Result<JournalSeq> {
        let chunks = (rows as i64 >> 20) + 1;
        // 3 is PostgreSQL's first normal transaction id.
        if first_xid - copies as i64 * chunks < 3 {
            bail!(
                "this PostgreSQL cluster is too young for {copies} copies below transaction \
                 {first_xid}: use a smaller --size-mb or a larger --seed-instances"
            );
        }
        Ok(JournalSeq::Pg {
            first_xid,
            chunks,
            copies: copies as i64,
        })
    }
}

/// The seed rows of one table, with the role of each column.
pub struct SeedTable {
    pub spec: &'static TableSpec,
    roles: Vec<Role>,
    pub rows: Vec<Vec<Cell>>,
}

impl SeedTable {
    pub fn new(spec: &'static TableSpec, rows: Vec<Vec<Cell>>) -> Self {
        let roles = spec
            .columns
            .iter()
            .map(|c| role(spec, c.name, c.kind))
            .collect();
        SeedTable { spec, roles, rows }
    }

    /// The columns a copy writes (history's key is left to the database).
    pub fn written_columns(&self) -> Vec<&'static str> {
        self.spec
            .columns
            .iter()
            .zip(&self.roles)
            .filter(|(_, r)| **r != Role::Omit)
            .map(|(c, _)| c.name)
            .collect()
    }

    /// Row `idx` of the seed as copy `g` has it (written columns only).
    pub fn copy_row<'a>(
        &'a self,
        idx: usize,
        g: usize,
        copy: &Copy,
        seq: &JournalSeq,
        out: &mut Vec<Out<'a>>,
    ) -> Result<()> {
        out.clear();
        for (cell, role) in self.rows[idx].iter().zip(&self.roles) {
            let v = match (role, cell) {
                (Role::Omit, _) => continue,
                (_, Cell::Null) => Out::Null,
                (Role::JournalSeq, Cell::Int(s)) => Out::Int(seq.of(g, idx, *s)),
                (Role::Time, Cell::Int(t)) => Out::Int(copy.shift(*t)),
                (Role::Keep, Cell::Int(i)) => Out::Int(*i),
                (Role::Remap, Cell::Text(s)) => Out::Text(copy.remap(s)),
                (Role::Keep, Cell::Text(s)) => Out::Text(Cow::Borrowed(s)),
                (r, c) => bail!(
                    "table {}: unexpected seed value {c:?} for a {r:?} column",
                    self.spec.name
                ),
            };
            out.push(v);
        }
        Ok(())
    }
}

/// The tables a copy writes, in restore order (definitions stay as deployed).
pub fn copied_tables() -> impl Iterator<Item = &'static TableSpec> {
    TABLES.iter().filter(|t| t.name != "definitions")
}

/// Whether column `c` of `t` holds an integer.
pub fn is_int(t: &TableSpec, c: &str) -> bool {
    t.columns
        .iter()
        .any(|col| col.name == c && col.kind == ColumnKind::Int)
}

/// Appends `s` to a COPY text buffer with COPY's escapes.
pub fn copy_escape(buf: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        match b {
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            _ => buf.push(b),
        }
    }
}

/// Appends one row to a COPY text buffer.
pub fn copy_line(buf: &mut Vec<u8>, row: &[Out<'_>]) {
    use std::io::Write;
    for (i, v) in row.iter().enumerate() {
        if i > 0 {
            buf.push(b'\t');
        }
        match v {
            Out::Null => buf.extend_from_slice(b"\\N"),
            Out::Int(n) => {
                let _ = write!(buf, "{n}");
            }
            Out::Text(s) => copy_escape(buf, s),
        }
    }
    buf.push(b'\n');
}

/// Parses a seed value read as text from PostgreSQL.
pub fn pg_cell(t: &TableSpec, col: &str, v: Option<String>) -> Result<Cell> {
    Ok(match v {
        None => Cell::Null,
        Some(s) if is_int(t, col) => Cell::Int(
            s.parse()
                .with_context(|| format!("{}.{col} = {s} is not an integer", t.name))?,
        ),
        Some(s) => Cell::Text(s),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_maps_each_id_the_same_way_everywhere_and_keeps_v7_time_order() {
        let id = "01939a2b-3c4d-7e5f-8a6b-7c8d9e0f1a2b";
        let text = format!(r#"{{"id":"{id}","instanceId":"{id}","x":"node-{id}"}}"#);
        let c = Copy::new(1, 3, 60_000);
        let out = c.remap(&text);
        let new = c.remap(id).into_owned();
        assert_ne!(new, id);
        assert_eq!(out.matches(&new).count(), 3, "{out}");
        assert!(!out.contains(id));
        // The v7 timestamp moved back by the copy's offset (3 * 60 s).
        let ts = |s: &str| i64::from_str_radix(&s.replace('-', "")[..12], 16).unwrap();
        assert_eq!(ts(id) - ts(&new), 180_000);
        assert_eq!(&new[14..15], "7");
        // Another copy gives another id; text without ids is borrowed untouched.
        assert_ne!(Copy::new(2, 3, 60_000).remap(id), new);
        assert!(matches!(
            c.remap("no ids here at all, none at all, really"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn hex_runs_longer_than_a_uuid_are_left_alone() {
        let c = Copy::new(1, 1, 1);
        let s = "a01939a2b-3c4d-7e5f-8a6b-7c8d9e0f1a2b";
        assert_eq!(c.remap(s), s);
    }

    #[test]
    fn pg_journal_copies_sit_below_the_seed_in_whole_transactions() {
        let seq = JournalSeq::pg(1_000, 10, 5).unwrap();
        let first = seq.of(1, 0, 0);
        let last = seq.of(5, 9, 0);
        assert!(first < last && last >> 20 < 1_000);
        assert_eq!(seq.of(5, 3, 0) >> 20, seq.of(5, 9, 0) >> 20);
        assert!(JournalSeq::pg(10, 10, 50).is_err());
    }

    #[test]
    fn copy_text_escapes_what_copy_reads_specially() {
        let mut buf = Vec::new();
        copy_line(
            &mut buf,
            &[Out::Int(1), Out::Null, Out::Text("a\tb\\c\nd".into())],
        );
        assert_eq!(buf, b"1\t\\N\ta\\tb\\\\c\\nd\n");
    }
}
