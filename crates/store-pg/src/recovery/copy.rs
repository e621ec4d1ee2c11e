//! Table lines in COPY's text format: what the restore streams through
//! `COPY … FROM STDIN`, built from [`TableSpec`] columns alone (any table of
//! [`TABLES`](steadyflow_store::recovery::TABLES), any column kind).

use std::collections::HashMap;

use serde_json::value::RawValue;
use steadyflow_store::recovery::{ColumnKind, TableSpec};
use steadyflow_store::{Result, StoreError};

/// `COPY table (every column) FROM STDIN`, text format.
pub(super) fn copy_in_sql(table: &TableSpec) -> String {
    let cols: Vec<&str> = table.column_names().collect();
    format!("COPY {} ({}) FROM STDIN", table.name, cols.join(", "))
}

/// Appends `text` to `out` escaped for COPY's text format (backslash, and the
/// delimiter and line ends, as backslash sequences).
fn copy_escape(text: &str, out: &mut Vec<u8>) {
    let bytes = text.as_bytes();
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.extend_from_slice(&bytes[from..i]);
        out.extend_from_slice(esc);
        from = i + 1;
    }
    out.extend_from_slice(&bytes[from..]);
}

/// Appends one table line to `out` as a row of COPY's text format, columns in
/// [`TableSpec`] order: a missing key or JSON `null` is SQL NULL, a JSON string is its
/// text (Text and Int columns), anything else its JSON text (JSON columns always), as
/// `json_populate_recordset` takes them.
pub(super) fn copy_row(table: &TableSpec, n: usize, line: &str, out: &mut Vec<u8>) -> Result<()> {
    let bad = |why: String| {
        StoreError::Corrupt(format!(
            "row {n} of table {} cannot be imported: {why}",
            table.name
        ))
    };
    let row: HashMap<&str, &RawValue> =
        serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
    for (i, c) in table.columns.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        let raw = row.get(c.name).map_or("null", |r| r.get());
        if raw == "null" {
            out.extend_from_slice(b"\\N");
        } else if c.kind != ColumnKind::Json && raw.starts_with('"') {
            if raw.contains('\\') {
                let text: String = serde_json::from_str(raw)
                    .map_err(|e| bad(format!("column {}: {e}", c.name)))?;
                copy_escape(&text, out);
            } else {
                copy_escape(&raw[1..raw.len() - 1], out);
            }
        } else {
            copy_escape(raw, out);
        }
    }
    out.push(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use steadyflow_store::recovery::{TABLES, table};

    fn row(table: &TableSpec, line: &str) -> Result<String> {
        let mut out = Vec::new();
        copy_row(table, 0, line, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn every_kind_of_column_becomes_copy_text() {
        let t = table("instances").unwrap();
        let line = r#"{"id":"i\"1\\x","definition_id":"d\ttab\nline","definition_key":"k","business_key":null,"state":"active","variables":{"a":"b\\c","n":[1, 2]},"runtime":{"x":1},"version":3,"started_at":-5,"extra":true}"#;
        assert_eq!(
            row(t, line).unwrap(),
            "i\"1\\\\x\td\\ttab\\nline\tk\t\\N\tactive\t{\"a\":\"b\\\\\\\\c\",\"n\":[1, 2]}\t{\"x\":1}\t3\t-5\t\\N\n"
        );
    }

    #[test]
    fn statements_name_every_column_of_every_table() {
        for t in TABLES {
            let sql = copy_in_sql(t);
            assert!(sql.starts_with(&format!("COPY {} (", t.name)), "{sql}");
            assert_eq!(sql.matches(", ").count(), t.columns.len() - 1, "{sql}");
        }
    }

    #[test]
    fn a_line_that_is_not_an_object_is_corrupt() {
        let t = table("timers").unwrap();
        for bad in ["[1]", "{oops", r#"{"id":"\x"}"#] {
            assert!(matches!(row(t, bad), Err(StoreError::Corrupt(_))), "{bad}");
        }
    }
}
