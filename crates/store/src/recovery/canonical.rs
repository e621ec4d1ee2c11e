//! The canonical form of a table line, written without building a tree.
//!
//! The content checksum ([`ContentHasher`](super::ContentHasher)) is defined by what
//! serde_json writes for a `serde_json::Value` parsed from the line: object keys sorted
//! bytewise (its `Map` is a `BTreeMap`), no whitespace, strings escaped as serde_json
//! escapes them, numbers as serde_json prints what it parsed. Building that tree for
//! every row cost 4.4 s per GB (bench-backup --profile). [`write`] produces the same
//! bytes in one walk over the line: it copies what is already canonical (strings holding
//! only the escapes serde_json writes, plain integers, literals), drops whitespace and
//! reorders object members. A token it cannot prove canonical (a float, a `\u` escape of
//! a printable character, `\/`, a long integer) goes through serde_json on its own, and a
//! line it cannot handle at all (a key with escapes, a key given twice, invalid JSON,
//! deep nesting) through the tree, so the result is always serde_json's.

use crate::{Result, StoreError};

/// Deeper than this goes through serde_json (whose own limit is 128).
const MAX_DEPTH: usize = 100;

/// The line cannot take the fast path; serde_json decides.
struct Fallback;

type Step<T = ()> = std::result::Result<T, Fallback>;

/// Bytes a string scan stops at: the closing quote, an escape, a control character.
const STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Appends the canonical form of `line` (a JSON object) to `out`. `Corrupt` when the
/// line is not JSON or not an object.
pub(super) fn write(line: &str, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    let mut w = Walker {
        s: line.as_bytes(),
        i: 0,
        members: Vec::new(),
        scratch: Vec::new(),
    };
    match w.top(out) {
        Ok(()) => Ok(()),
        Err(Fallback) => {
            out.truncate(start);
            write_tree(line, out)
        }
    }
}

/// The definition: serde_json's tree, re-serialized.
pub(super) fn write_tree(line: &str, out: &mut Vec<u8>) -> Result<()> {
    let value: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| StoreError::Corrupt(format!("row is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(StoreError::Corrupt("row is not a JSON object".into()));
    }
    // serde_json's Map is ordered by key (no `preserve_order`), so this is canonical.
    serde_json::to_writer(out, &value)
        .map_err(|e| StoreError::Corrupt(format!("row cannot be re-serialized: {e}")))
}

/// An object member being reordered: its key (raw bytes of the line, without escapes)
/// and where its canonical value was written in `out`.
struct Member {
    key: (usize, usize),
    value: (usize, usize),
}

struct Walker<'a> {
    s: &'a [u8],
    i: usize,
    /// Members of the objects being walked (a stack: each object uses its tail).
    members: Vec<Member>,
    scratch: Vec<u8>,
}

impl Walker<'_> {
    fn top(&mut self, out: &mut Vec<u8>) -> Step {
        self.ws();
        if self.peek() != Some(b'{') {
            return Err(Fallback);
        }
        self.value(out, 0)?;
        self.ws();
        if self.i == self.s.len() {
            Ok(())
        } else {
            Err(Fallback)
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Step {
        if self.peek() == Some(b) {
            self.i += 1;
            Ok(())
        } else {
            Err(Fallback)
        }
    }

    fn value(&mut self, out: &mut Vec<u8>, depth: usize) -> Step {
        if depth > MAX_DEPTH {
            return Err(Fallback);
        }
        match self.peek().ok_or(Fallback)? {
            b'{' => self.object(out, depth),
            b'[' => self.array(out, depth),
            b'"' => self.string(out),
            b'-' | b'0'..=b'9' => self.number(out),
            b't' => self.literal(out, b"true"),
            b'f' => self.literal(out, b"false"),
            b'n' => self.literal(out, b"null"),
            _ => Err(Fallback),
        }
    }

    fn literal(&mut self, out: &mut Vec<u8>, word: &[u8]) -> Step {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            out.extend_from_slice(word);
            Ok(())
        } else {
            Err(Fallback)
        }
    }

    fn array(&mut self, out: &mut Vec<u8>, depth: usize) -> Step {
        self.i += 1;
        out.push(b'[');
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            out.push(b']');
            return Ok(());
        }
        loop {
            self.ws();
            self.value(out, depth + 1)?;
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    out.push(b',');
                }
                Some(b']') => {
                    self.i += 1;
                    out.push(b']');
                    return Ok(());
                }
                _ => return Err(Fallback),
            }
        }
    }

    /// A key: a string without escapes or control characters (its bytes are then what
    /// serde_json compares and writes).
    fn key(&mut self) -> Step<(usize, usize)> {
        self.expect(b'"')?;
        let start = self.i;
        while let Some(&b) = self.s.get(self.i) {
            if STOP[b as usize] {
                return if b == b'"' {
                    self.i += 1;
                    Ok((start, self.i - 1))
                } else {
                    Err(Fallback)
                };
            }
            self.i += 1;
        }
        Err(Fallback)
    }

    fn object(&mut self, out: &mut Vec<u8>, depth: usize) -> Step {
        self.i += 1;
        let base = self.members.len();
        let values_start = out.len();
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            out.extend_from_slice(b"{}");
            return Ok(());
        }
        loop {
            self.ws();
            let key = self.key()?;
            self.ws();
            self.expect(b':')?;
            self.ws();
            let from = out.len();
            self.value(out, depth + 1)?;
            self.members.push(Member {
                key,
                value: (from, out.len()),
            });
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(Fallback),
            }
        }
        let s = self.s;
        let members = &mut self.members[base..];
        members.sort_unstable_by(|a, b| s[a.key.0..a.key.1].cmp(&s[b.key.0..b.key.1]));
        if members
            .windows(2)
            .any(|w| s[w[0].key.0..w[0].key.1] == s[w[1].key.0..w[1].key.1])
        {
            // A key given twice: serde_json keeps the last one.
            return Err(Fallback);
        }
        // The values were written in the line's order; write the members in key order.
        self.scratch.clear();
        self.scratch.extend_from_slice(&out[values_start..]);
        out.truncate(values_start);
        out.push(b'{');
        for (n, m) in members.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(&s[m.key.0..m.key.1]);
            out.extend_from_slice(b"\":");
            out.extend_from_slice(
                &self.scratch[m.value.0 - values_start..m.value.1 - values_start],
            );
        }
        out.push(b'}');
        self.members.truncate(base);
        Ok(())
    }

    /// A string is copied when every escape in it is one serde_json writes the same way;
    /// otherwise it is decoded and re-escaped by serde_json.
    fn string(&mut self, out: &mut Vec<u8>) -> Step {
        let start = self.i;
        self.i += 1;
        let mut canonical = true;
        loop {
            while self.i < self.s.len() && !STOP[self.s[self.i] as usize] {
                self.i += 1;
            }
            match self.peek().ok_or(Fallback)? {
                b'"' => {
                    self.i += 1;
                    break;
                }
                b'\\' => {
                    let esc = *self.s.get(self.i + 1).ok_or(Fallback)?;
                    match esc {
                        b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 2,
                        b'u' => {
                            let hex = self.s.get(self.i + 2..self.i + 6).ok_or(Fallback)?;
                            canonical &= canonical_unicode_escape(hex);
                            self.i += 6;
                        }
                        _ => {
                            // `\/` (written as `/`) or an invalid escape.
                            canonical = false;
                            self.i += 2;
                        }
                    }
                }
                // A raw control character: not JSON.
                _ => return Err(Fallback),
            }
        }
        let token = &self.s[start..self.i];
        if canonical {
            out.extend_from_slice(token);
            return Ok(());
        }
        let text = std::str::from_utf8(token).map_err(|_| Fallback)?;
        let decoded: String = serde_json::from_str(text).map_err(|_| Fallback)?;
        serde_json::to_writer(out, &decoded).map_err(|_| Fallback)
    }

    /// A plain integer of up to 18 digits is copied (serde_json reads it as an `i64` or
    /// `u64` and writes it back digit for digit); anything else (fraction, exponent, `-0`,
    /// longer) is read and written by serde_json.
    fn number(&mut self, out: &mut Vec<u8>) -> Step {
        let start = self.i;
        while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        let token = &self.s[start..self.i];
        let digits = token.strip_prefix(b"-").unwrap_or(token);
        let plain = !digits.is_empty()
            && digits.len() <= 18
            && digits.iter().all(u8::is_ascii_digit)
            && (digits[0] != b'0' || (digits.len() == 1 && token.len() == 1));
        if plain {
            out.extend_from_slice(token);
            return Ok(());
        }
        let text = std::str::from_utf8(token).map_err(|_| Fallback)?;
        let n: serde_json::Number = serde_json::from_str(text).map_err(|_| Fallback)?;
        serde_json::to_writer(out, &n).map_err(|_| Fallback)
    }
}

/// `\u00XX` for a control character without a short escape, in lowercase hex: what
/// serde_json writes for it.
fn canonical_unicode_escape(hex: &[u8]) -> bool {
    let lower = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if hex.len() != 4 || hex[0] != b'0' || hex[1] != b'0' || !lower(hex[2]) || !lower(hex[3]) {
        return false;
    }
    let v = (hex_digit(hex[2]) << 4) | hex_digit(hex[3]);
    v < 0x20 && !matches!(v, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d)
}

fn hex_digit(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        _ => b - b'a' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(line: &str) -> (Result<Vec<u8>>, Result<Vec<u8>>) {
        let mut fast = Vec::new();
        let mut tree = Vec::new();
        (
            write(line, &mut fast).map(|()| fast),
            write_tree(line, &mut tree).map(|()| tree),
        )
    }

    #[track_caller]
    fn same(line: &str) {
        match both(line) {
            (Ok(a), Ok(b)) => assert_eq!(
                String::from_utf8_lossy(&a),
                String::from_utf8_lossy(&b),
                "line {line}"
            ),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("line {line}: fast {a:?}, tree {b:?}"),
        }
    }

    #[test]
    fn chosen_lines_come_out_as_serde_json_writes_them() {
        for line in [
            r#"{}"#,
            r#" { "b" : 1 , "a" : [ 1 , 2 , { } , [ ] ] } "#,
            r#"{"id":"x","variables":{"b":1,"a":[1, 2]}}"#,
            r#"{"s":"q\"b\\s\/n\n\r\t\b\f\u0001\u001F\u001f\u0041\u00e9\u20ac\ud83d\ude00 é €"}"#,
            r#"{"n":[0,-1,1,-0,01,1.0,1.5,-2.50,1e3,1E-3,123456789012345678,1234567890123456789,18446744073709551615,18446744073709551616,-9223372036854775808,-9223372036854775809,0.1,1e400]}"#,
            r#"{"t":true,"f":false,"z":null}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a\u0062":1,"ab":2}"#,
            r#"{"é":1,"e":2,"€":3,"Z":4,"a":{"y":1,"x":{"b":0,"a":0}}}"#,
            r#"{"a":1,}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":1} x"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":tru}"#,
            r#"{"a":-}"#,
            r#"{"a":1"#,
            r#"[1]"#,
            r#""text""#,
            "{\"a\":\"raw\ttab\"}",
            "{\"a\"\n:\r1}",
            "",
        ] {
            same(line);
        }
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(120), "]".repeat(120));
        same(&deep);
        let deeper = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
        same(&deeper);
    }

    /// A small deterministic generator (xorshift), so that a failure repeats.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn ws(&mut self, out: &mut String) {
            for _ in 0..self.below(4).saturating_sub(2) {
                out.push([' ', '\t', '\n', '\r'][self.below(4) as usize]);
            }
        }
        fn string(&mut self, out: &mut String, key: bool) {
            out.push('"');
            let alphabet = if key { 6 } else { 16 };
            for _ in 0..self.below(if key { 4 } else { 12 }) {
                match self.below(alphabet) {
                    0..=2 => out.push((b'a' + self.below(26) as u8) as char),
                    3 => out.push(['é', '€', 'Z', '😀', '\u{7f}'][self.below(5) as usize]),
                    4 => out.push(['_', '/', ' ', '0'][self.below(4) as usize]),
                    5 => out.push_str(["\\u0061", "\\u0062", "\\/"][self.below(3) as usize]),
                    6 => out.push_str(
                        ["\\\"", "\\\\", "\\n", "\\t", "\\r", "\\b", "\\f"][self.below(7) as usize],
                    ),
                    7 => out.push_str(&format!("\\u{:04x}", self.below(0x30))),
                    8 => out.push_str(&format!("\\u{:04X}", self.below(0x30))),
                    9 => out.push_str(
                        ["\\u00e9", "\\u20AC", "\\ud83d\\ude00", "\\u007f"][self.below(4) as usize],
                    ),
                    _ => out.push((b'a' + self.below(26) as u8) as char),
                }
            }
            out.push('"');
        }
        fn number(&mut self, out: &mut String) {
            let n = match self.below(8) {
                0 => "0".to_string(),
                1 => format!("-{}", self.below(1000)),
                2 => self.next().to_string(),
                3 => format!("-{}", self.next() >> self.below(64)),
                4 => format!("{}.{}", self.below(100), self.below(1000)),
                5 => format!("{}e{}", self.below(100), self.below(30) as i64 - 15),
                6 => format!("1{}", "0".repeat(self.below(22) as usize)),
                _ => (self.next() >> self.below(64)).to_string(),
            };
            out.push_str(&n);
        }
        fn value(&mut self, out: &mut String, depth: u32) {
            let pick = if depth > 3 {
                3 + self.below(4)
            } else {
                self.below(8)
            };
            match pick {
                0 | 1 => self.object(out, depth + 1),
                2 => {
                    out.push('[');
                    for i in 0..self.below(4) {
                        if i > 0 {
                            out.push(',');
                        }
                        self.ws(out);
                        self.value(out, depth + 1);
                        self.ws(out);
                    }
                    out.push(']');
                }
                3 | 4 => self.string(out, false),
                5 => self.number(out),
                _ => out.push_str(["true", "false", "null"][self.below(3) as usize]),
            }
        }
        fn object(&mut self, out: &mut String, depth: u32) {
            out.push('{');
            for i in 0..self.below(6) {
                if i > 0 {
                    out.push(',');
                }
                self.ws(out);
                if self.below(40) == 0 {
                    out.push_str("\"dup\"");
                } else {
                    self.string(out, true);
                }
                self.ws(out);
                out.push(':');
                self.ws(out);
                self.value(out, depth);
                self.ws(out);
            }
            out.push('}');
        }
    }

    #[test]
    fn generated_lines_come_out_as_serde_json_writes_them() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let mut fast_ok = 0;
        for _ in 0..20_000 {
            let mut line = String::new();
            g.object(&mut line, 0);
            same(&line);
            if both(&line).0.is_ok() {
                fast_ok += 1;
            }
            // Damaged copies: cut short, or one byte replaced.
            let cut = g.below(line.len() as u64 + 1) as usize;
            if line.is_char_boundary(cut) {
                same(&line[..cut]);
            }
            let at = g.below(line.len() as u64) as usize;
            if line.is_char_boundary(at) && line.is_char_boundary(at + 1) {
                let b = [b',', b'"', b'\\', b'}', b']', b'1', b'-', b' '][g.below(8) as usize];
                let mut bytes = line.clone().into_bytes();
                bytes[at] = b;
                if let Ok(changed) = String::from_utf8(bytes) {
                    same(&changed);
                }
            }
        }
        assert!(fast_ok > 10_000, "{fast_ok}");
    }
}
