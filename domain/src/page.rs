//! Keyset pagination by ledger position: a [`Cursor`] names the position a
//! page stopped at, so the next page starts right after it however many
//! records arrive in between.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Where the previous page stopped. Clients pass back the `next_cursor` they
/// were given; its spelling is [`Cursor::PATTERN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cursor(u64);

impl Cursor {
    /// `v1.` and a position (no leading zeros).
    pub const PATTERN: &'static str = "^v1\\.[1-9][0-9]{0,15}$";

    pub fn at(position: u64) -> Cursor {
        Cursor(position)
    }

    pub fn position(self) -> u64 {
        self.0
    }

    pub fn parse(s: &str) -> Result<Cursor, String> {
        let digits = s.strip_prefix("v1.").unwrap_or("");
        if (1..=16).contains(&digits.len())
            && !digits.starts_with('0')
            && digits.bytes().all(|b| b.is_ascii_digit())
            && let Ok(p) = digits.parse::<u64>()
        {
            return Ok(Cursor(p));
        }
        Err("not a cursor from this API".into())
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v1.{}", self.0)
    }
}

impl TryFrom<String> for Cursor {
    type Error = String;
    fn try_from(s: String) -> Result<Cursor, String> {
        Cursor::parse(&s)
    }
}

impl From<Cursor> for String {
    fn from(c: Cursor) -> String {
        c.to_string()
    }
}

impl JsonSchema for Cursor {
    fn schema_name() -> Cow<'static, str> {
        "Cursor".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": Cursor::PATTERN,
            "description": "`next_cursor` of the previous page",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_cursor_round_trips_and_nothing_else_parses() {
        for p in [1, 42, crate::request::MAX_INTEGER] {
            let c = Cursor::at(p);
            assert_eq!(Cursor::parse(&c.to_string()), Ok(c));
        }
        for bad in [
            "",
            "v1.",
            "v1.0",
            "v1.01",
            "v2.5",
            "v1.+5",
            "v1.5 ",
            "5",
            "v1.12345678901234567",
        ] {
            assert!(Cursor::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn the_pattern_accepts_exactly_what_parses(s in "(v1\\.)?[0-9+ a]{0,18}") {
            let re = regex_automata::meta::Regex::new(Cursor::PATTERN).expect("pattern");
            prop_assert_eq!(re.is_match(&s), Cursor::parse(&s).is_ok(), "{:?}", s);
        }
    }
}
