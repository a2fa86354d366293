//! Property tests of every parser of outside input: the brief (TOML, then the
//! lint), batch bounds and steps, and the messages workers and the coordinator
//! decode. Any input gives `Ok` or an error naming the field, never a panic;
//! whatever the lint accepts can be stored by PostgreSQL (no NUL in any text).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_shared::brief::{Bound, BoundKind, Brief, Interval};
use backfill_shared::message;
use proptest::prelude::*;

const BRIEF: &str = r#"
[brief]
name = "fix-dates"
reason = "Late events were dated by arrival."
owner = "alice"
reviewer = "bob"
risk = "low-risk-enrichment"

[scope]
target = "events"
key = ["id"]
columns = ["day"]
batch_by = { column = "created", start = "2025-01-01 00:00:00", end = "2025-03-01 00:00:00", step = "1 month" }
source = "SELECT id, created, created::date AS day FROM raw WHERE created >= $1 AND created < $2"

[write]
strategy = "merge"
on_missing = "keep"
snapshot = true

[dependencies]
downstream = []
stakeholders = ["ops"]

[validation]
max_duplicate_keys = 0

[limits]
max_in_flight = 2

[rollback]
plan = "restore before-images"
retain_days = 7
"#;

/// The values of the brief a property replaces, each a quoted TOML string.
const FIELDS: &[&str] = &[
    "\"fix-dates\"",
    "\"Late events were dated by arrival.\"",
    "\"alice\"",
    "\"events\"",
    "\"2025-01-01 00:00:00\"",
    "\"2025-03-01 00:00:00\"",
    "\"1 month\"",
    "\"merge\"",
    "\"keep\"",
    "\"restore before-images\"",
];

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn stores_in_postgres(brief: &Brief) {
    let text = serde_json::to_string(brief).unwrap();
    assert!(!text.contains("\\u0000"), "a NUL passed the lint");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_text_parses_or_names_a_field(text in ".{0,400}") {
        match Brief::parse(&text) {
            Ok(brief) => stores_in_postgres(&brief),
            Err(e) => prop_assert!(e.problems.iter().all(|p| !p.field.is_empty())),
        }
    }

    #[test]
    fn any_value_of_a_field_parses_or_names_it(field in 0..FIELDS.len(), value in any::<String>()) {
        let text = BRIEF.replacen(FIELDS[field], &toml_string(&value), 1);
        match Brief::parse(&text) {
            Ok(brief) => stores_in_postgres(&brief),
            Err(e) => prop_assert!(!e.problems.is_empty() && e.problems.iter().all(|p| !p.field.is_empty())),
        }
    }

    #[test]
    fn bounds_and_steps_parse_or_refuse(text in any::<String>()) {
        for kind in [BoundKind::Integer, BoundKind::Date, BoundKind::Timestamp] {
            if let Some(bound) = Bound::parse(kind, &text) {
                prop_assert_eq!(Bound::parse(kind, &bound.to_string()), Some(bound));
            }
        }
        let _ = Interval::parse(&text);
    }

    #[test]
    fn messages_decode_or_refuse(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = message::decode_batch(&bytes);
        let _ = message::decode_event(&bytes);
    }
}

#[test]
fn the_brief_of_these_properties_parses() {
    Brief::parse(BRIEF).unwrap();
    for field in FIELDS {
        assert!(BRIEF.contains(field), "{field}");
    }
}

#[test]
fn found_by_reading_the_lint() {
    // A multi-byte character where a time zone could start used to panic.
    let text = BRIEF.replacen("\"2025-01-01 00:00:00\"", "\"2013-01-01 00:00:0\u{e9}\"", 1);
    let fields: Vec<String> = Brief::parse(&text)
        .unwrap_err()
        .problems
        .into_iter()
        .map(|p| p.field)
        .collect();
    assert_eq!(fields, ["scope.batch_by.start"]);
    // A NUL in free text passed the lint, then failed the run as a lost connection.
    let text = BRIEF.replacen("arrival.", "arrival.\\u0000", 1);
    let problems = Brief::parse(&text).unwrap_err().problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].field, "brief.reason");
    assert!(problems[0].message.contains("NUL"));
}
