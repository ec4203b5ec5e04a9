//! RFC 8785 JSON Canonicalization Scheme (JCS).
//!
//! The ledger hashes the *canonical bytes* of each record, so two independent
//! implementations (ours and an auditor's) must produce byte-identical output for
//! the same JSON value. JCS fixes that: object members sorted by their names'
//! UTF-16 code units, no insignificant whitespace, ECMAScript string escaping and
//! ECMAScript `Number.prototype.toString` for numbers.
//!
//! This module is a general JCS implementation (it formats floats the way the RFC
//! requires, so the RFC's own examples pass); the ledger itself is stricter and
//! refuses floats in event data (see [`crate::record::check_data`]).

use serde_json::Value;
use std::cmp::Ordering;

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// NaN and the infinities have no JSON representation.
    #[error("canonicalize: number {0} is not finite")]
    NonFiniteNumber(String),
    /// The input bytes were not JSON at all.
    #[error("canonicalize: input is not valid JSON: {0}")]
    Parse(String),
}

/// Canonical bytes of a JSON value.
pub fn to_canonical_bytes(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(256);
    write_value(value, &mut out)?;
    Ok(out)
}

/// Canonical string of a JSON value.
pub fn to_canonical_string(value: &Value) -> Result<String, CanonicalError> {
    let bytes = to_canonical_bytes(value)?;
    // Only ASCII punctuation and the UTF-8 of Rust strings are ever written.
    String::from_utf8(bytes).map_err(|e| CanonicalError::Parse(e.to_string()))
}

/// Parses JSON text and returns its canonical bytes.
pub fn canonicalize_json(text: &[u8]) -> Result<Vec<u8>, CanonicalError> {
    let value: Value =
        serde_json::from_slice(text).map_err(|e| CanonicalError::Parse(e.to_string()))?;
    to_canonical_bytes(&value)
}

/// Orders two member names by their UTF-16 code units, as RFC 8785 §3.2.3 requires
/// (this differs from UTF-8 byte order for characters above U+FFFF).
pub fn cmp_utf16(a: &str, b: &str) -> Ordering {
    // UTF-8 byte order is code point order, which equals UTF-16 order unless a
    // supplementary character meets one in U+E000..=U+FFFF; ASCII is the fast path.
    if a.is_ascii() || b.is_ascii() {
        return a.as_bytes().cmp(b.as_bytes());
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out)?,
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| cmp_utf16(a.0, b.0));
            out.push(b'{');
            for (i, (name, member)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(name, out);
                out.push(b':');
                write_value(member, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// Largest integer magnitude that an IEEE-754 double holds exactly (2^53 - 1).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

fn write_number(n: &serde_json::Number, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    if let Some(i) = n.as_i64().filter(|i| i.unsigned_abs() <= MAX_SAFE_INTEGER) {
        out.extend_from_slice(i.to_string().as_bytes());
        return Ok(());
    }
    if let Some(u) = n.as_u64().filter(|u| *u <= MAX_SAFE_INTEGER) {
        out.extend_from_slice(u.to_string().as_bytes());
        return Ok(());
    }
    // Everything else is an IEEE-754 double in ECMAScript's eyes.
    let f = n
        .as_f64()
        .ok_or_else(|| CanonicalError::NonFiniteNumber(n.to_string()))?;
    out.extend_from_slice(format_es_number(f)?.as_bytes());
    Ok(())
}

/// ECMAScript `Number.prototype.toString(10)` for a double (ECMA-262 §6.1.6.1.20),
/// which RFC 8785 §3.2.2.3 adopts.
pub fn format_es_number(f: f64) -> Result<String, CanonicalError> {
    if !f.is_finite() {
        return Err(CanonicalError::NonFiniteNumber(f.to_string()));
    }
    if f == 0.0 {
        return Ok("0".to_owned());
    }
    if f < 0.0 {
        return Ok(format!("-{}", format_es_number(-f)?));
    }
    // Rust's `{:e}` prints the shortest digit string that round-trips, which is
    // exactly the `k` digits ECMAScript asks for.
    let sci = format!("{f:e}");
    let (mantissa, exponent) = sci
        .split_once('e')
        .ok_or_else(|| CanonicalError::NonFiniteNumber(sci.clone()))?;
    let exponent: i32 = exponent
        .parse()
        .map_err(|_| CanonicalError::NonFiniteNumber(sci.clone()))?;
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let digits = break_tie_to_even(digits, exponent, f);
    let k = digits.len() as i32;
    let n = exponent + 1;
    let s = if k <= n && n <= 21 {
        let mut s = digits;
        s.extend(std::iter::repeat_n('0', (n - k) as usize));
        s
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{}", "0".repeat((-n) as usize), digits)
    } else {
        let sign = if n - 1 < 0 { '-' } else { '+' };
        let e = (n - 1).abs();
        if k == 1 {
            format!("{digits}e{sign}{e}")
        } else {
            format!("{}.{}e{sign}{e}", &digits[..1], &digits[1..])
        }
    };
    Ok(s)
}

/// ECMAScript picks, among equally close shortest digit strings, the even one;
/// Rust's shortest formatting rounds such exact ties up. Ties are rare (the
/// double's exact decimal expansion must end in 5 right after the k-th digit), so
/// they are detected from the exact expansion and mended here.
fn break_tie_to_even(digits: String, exponent: i32, f: f64) -> String {
    let k = digits.len();
    let exact = format!("{:.*e}", 800, f);
    let Some((m, e)) = exact.split_once('e') else {
        return digits;
    };
    if e.parse::<i32>().ok() != Some(exponent) {
        return digits;
    }
    let all: String = m.chars().filter(|c| *c != '.').collect();
    if all.len() <= k {
        return digits;
    }
    let (head, rest) = all.split_at(k);
    let mut tail = rest.chars();
    if tail.next() != Some('5') || !tail.all(|c| c == '0') {
        return digits;
    }
    let last = head.as_bytes()[k - 1] - b'0';
    let candidate = if last.is_multiple_of(2) {
        head.to_owned()
    } else {
        // head + 1 in the last digit; an odd last digit never carries.
        let mut b = head.as_bytes().to_vec();
        b[k - 1] += 1;
        String::from_utf8(b).unwrap_or_else(|_| head.to_owned())
    };
    let text = format!("{}.{}e{}", &candidate[..1], &candidate[1..], exponent);
    if text.parse::<f64>().ok() == Some(f) {
        candidate.trim_end_matches('0').to_owned()
    } else {
        digits
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            0x08 => Some(b"\\b"),
            0x09 => Some(b"\\t"),
            0x0a => Some(b"\\n"),
            0x0c => Some(b"\\f"),
            0x0d => Some(b"\\r"),
            0x00..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        match escape {
            Some(e) => out.extend_from_slice(e),
            None => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(text: &str) -> String {
        String::from_utf8(canonicalize_json(text.as_bytes()).expect("canonicalize")).expect("utf8")
    }

    /// RFC 8785 §3.2.2 — the "sample" input and its canonical output.
    #[test]
    fn rfc8785_sample_structure() {
        let input = r#"{
  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}"#;
        let expected = "{\"literals\":[null,true,false],\"numbers\":[333333333.3333333,1e+30,4.5,0.002,0.000001],\"string\":\"\u{20ac}$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}";
        assert_eq!(canon(input), expected);
    }

    /// RFC 8785 §3.2.3 — sorting by UTF-16 code units, including a surrogate pair
    /// (U+1F600) that sorts *before* U+FB33 although its UTF-8 bytes sort after.
    #[test]
    fn rfc8785_sorting_by_utf16() {
        let input = r#"{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}"#;
        let value: Value = serde_json::from_str(input).expect("parse");
        let out = to_canonical_string(&value).expect("canon");
        let order: Vec<&str> = [
            "Carriage Return",
            "One",
            "Control",
            "Latin Small Letter O With Diaeresis",
            "Euro Sign",
            "Emoji: Grinning Face",
            "Hebrew Letter Dalet With Dagesh",
        ]
        .to_vec();
        let mut last = 0;
        for name in order {
            let at = out.find(name).expect("member present");
            assert!(at > last, "{name} out of order in {out}");
            last = at;
        }
        // Non-ASCII stays literal UTF-8, never \u-escaped.
        assert!(out.contains("\"\u{20ac}\":\"Euro Sign\""));
        assert!(out.contains("\"\u{1F600}\":"));
        assert!(out.starts_with("{\"\\r\":\"Carriage Return\""));
    }

    /// RFC 8785 Appendix B — number serialization samples (IEEE-754 bit patterns).
    #[test]
    fn rfc8785_appendix_b_numbers() {
        let cases: &[(u64, &str)] = &[
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        for (bits, expected) in cases {
            let f = f64::from_bits(*bits);
            assert_eq!(
                format_es_number(f).expect("finite"),
                *expected,
                "bits {bits:#x}"
            );
        }
        assert!(format_es_number(f64::NAN).is_err());
        assert!(format_es_number(f64::INFINITY).is_err());
    }

    #[test]
    fn control_characters_are_escaped_lowercase() {
        let v = json!({"k": "\u{0001}\u{001f}\u{007f}\t\u{2028}"});
        assert_eq!(
            to_canonical_string(&v).expect("canon"),
            "{\"k\":\"\\u0001\\u001f\u{007f}\\t\u{2028}\"}"
        );
    }

    #[test]
    fn nested_objects_and_integers() {
        let v = json!({"b": [1, -2, {"z": 0, "a": 9007199254740991_i64}], "a": {}});
        assert_eq!(
            to_canonical_string(&v).expect("canon"),
            "{\"a\":{},\"b\":[1,-2,{\"a\":9007199254740991,\"z\":0}]}"
        );
    }

    #[test]
    fn invalid_json_is_an_error() {
        assert!(matches!(
            canonicalize_json(b"{\"a\":"),
            Err(CanonicalError::Parse(_))
        ));
    }
}

/// Why bytes are not canonical (see [`check_canonical_integers`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not canonical JSON at byte {at}: {what}")]
pub struct NotCanonical {
    pub at: usize,
    pub what: &'static str,
}

/// Checks in one pass, without allocating, that `bytes` are exactly the RFC 8785
/// serialization of some JSON value whose numbers are all integers with
/// |n| ≤ 2^53 − 1 (the only numbers ledger records may hold). Equivalent to
/// "parse, canonicalize, compare" for such values, and much cheaper — the
/// verifier runs it on every record.
pub fn check_canonical_integers(bytes: &[u8]) -> Result<(), NotCanonical> {
    // UTF-8 is checked once for the whole text; strings need no further check.
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(NotCanonical {
            at: e.valid_up_to(),
            what: "invalid UTF-8",
        });
    }
    let mut c = Checker { b: bytes, i: 0 };
    c.value(0)?;
    if c.i != bytes.len() {
        return Err(c.err("trailing bytes"));
    }
    Ok(())
}

struct Checker<'a> {
    b: &'a [u8],
    i: usize,
}

const MAX_DEPTH: usize = 128;

impl<'a> Checker<'a> {
    fn err(&self, what: &'static str) -> NotCanonical {
        NotCanonical { at: self.i, what }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), NotCanonical> {
        if self.peek() == Some(byte) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    fn literal(&mut self, lit: &'static [u8]) -> Result<(), NotCanonical> {
        if self.b[self.i..].starts_with(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<(), NotCanonical> {
        if depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(|_| ()),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.integer(),
            _ => Err(self.err("expected a value (no whitespace allowed)")),
        }
    }

    fn integer(&mut self) -> Result<(), NotCanonical> {
        let start = self.i;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let digits_start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        let digits = &self.b[digits_start..self.i];
        if digits.is_empty() {
            return Err(self.err("expected digits"));
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return Err(self.err("numbers must be integers"));
        }
        if digits.len() > 1 && digits[0] == b'0' {
            return Err(self.err("leading zero"));
        }
        if negative && digits == b"0" {
            return Err(NotCanonical {
                at: start,
                what: "-0 is not canonical",
            });
        }
        if digits.len() > 16 {
            return Err(NotCanonical {
                at: start,
                what: "integer beyond 2^53 - 1",
            });
        }
        let n: u64 = digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0'));
        if n > MAX_SAFE_INTEGER {
            return Err(NotCanonical {
                at: start,
                what: "integer beyond 2^53 - 1",
            });
        }
        Ok(())
    }

    /// Checks a string and returns its raw content (between the quotes).
    fn string(&mut self) -> Result<&'a [u8], NotCanonical> {
        self.expect(b'"', "expected a string")?;
        let start = self.i;
        loop {
            let Some(b) = self.peek() else {
                return Err(self.err("unterminated string"));
            };
            match b {
                b'"' => {
                    let raw = &self.b[start..self.i];
                    self.i += 1;
                    return Ok(raw);
                }
                b'\\' => {
                    let esc = self.b.get(self.i + 1).copied();
                    match esc {
                        Some(b'"' | b'\\' | b'b' | b't' | b'n' | b'f' | b'r') => self.i += 2,
                        Some(b'u') => {
                            let hex = self
                                .b
                                .get(self.i + 2..self.i + 6)
                                .ok_or(self.err("short \\u escape"))?;
                            // Only control characters without a short form are \u-escaped,
                            // always as \u00xx in lowercase.
                            let lower_hex =
                                |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
                            if hex[0] != b'0'
                                || hex[1] != b'0'
                                || !lower_hex(hex[2])
                                || !lower_hex(hex[3])
                            {
                                return Err(self.err("\\u escape not canonical"));
                            }
                            let v = u8::from_str_radix(
                                std::str::from_utf8(&hex[2..]).unwrap_or("zz"),
                                16,
                            )
                            .map_err(|_| self.err("bad \\u escape"))?;
                            if v >= 0x20 || matches!(v, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                                return Err(self.err("\\u escape not canonical"));
                            }
                            self.i += 6;
                        }
                        _ => return Err(self.err("escape not canonical")),
                    }
                }
                0x00..=0x1f => return Err(self.err("unescaped control character")),
                _ => self.i += 1,
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), NotCanonical> {
        self.expect(b'{', "expected an object")?;
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        let mut prev: Option<&'a [u8]> = None;
        loop {
            let at = self.i;
            let key = self.string()?;
            if let Some(p) = prev {
                // Keys hold no escapes in practice; compare decoded forms when they do.
                let ord = if p.contains(&b'\\') || key.contains(&b'\\') {
                    let dec = |raw: &[u8]| -> String {
                        let mut quoted = Vec::with_capacity(raw.len() + 2);
                        quoted.push(b'"');
                        quoted.extend_from_slice(raw);
                        quoted.push(b'"');
                        serde_json::from_slice(&quoted).unwrap_or_default()
                    };
                    cmp_utf16(&dec(p), &dec(key))
                } else if p.is_ascii() || key.is_ascii() {
                    p.cmp(key)
                } else {
                    cmp_utf16(
                        std::str::from_utf8(p).unwrap_or_default(),
                        std::str::from_utf8(key).unwrap_or_default(),
                    )
                };
                if ord != Ordering::Less {
                    return Err(NotCanonical {
                        at,
                        what: "object keys not in canonical order (or duplicated)",
                    });
                }
            }
            prev = Some(key);
            self.expect(b':', "expected ':'")?;
            self.value(depth + 1)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), NotCanonical> {
        self.expect(b'[', "expected an array")?;
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.value(depth + 1)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }
}

#[cfg(test)]
mod checker_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_exactly_what_the_serializer_produces() {
        let values = [
            json!({"b": [1, -2, {"z": 0, "a": 9007199254740991_i64}], "a": {}, "s": "é\u{1F600}\u{fb33}\"\\\n\u{1}"}),
            json!({"\u{20ac}": 1, "\r": 2, "\u{fb33}": 3, "1": 4, "\u{1F600}": 5, "\u{80}": 6, "\u{f6}": 7}),
            json!([]),
            json!("x"),
            json!(null),
            json!({"nested": [[[]], {}, true, false, null, 0, -9007199254740991_i64]}),
        ];
        for v in values {
            let bytes = to_canonical_bytes(&v).expect("canonical");
            assert_eq!(
                check_canonical_integers(&bytes),
                Ok(()),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    #[test]
    fn refuses_every_non_canonical_variation() {
        for bad in [
            &b"{\"a\": 1}"[..],
            b"{\"b\":1,\"a\":2}",
            b"{\"a\":1,\"a\":1}",
            b"[1.0]",
            b"[1e3]",
            b"[01]",
            b"[-0]",
            b"[9007199254740992]",
            b"[\"\\u0041\"]",
            b"[\"\\u000A\"]",
            b"[\"\\u000a\"]",
            b"[\"\\/\"]",
            b"[\"\x01\"]",
            b"[true ]",
            b"{}x",
            b"[\"\xff\"]",
            b"{\"\xef\xac\xb3\":1,\"\xf0\x9f\x98\x80\":2}",
        ] {
            assert!(
                check_canonical_integers(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(check_canonical_integers(b"[\"\\u001f\",\"\\n\"]"), Ok(()));
    }
}
