//! Property tests of every parser of outside input: the brief (TOML, then the
//! lint), batch bounds and steps, and the messages workers and the coordinator
//! decode. Any input gives `Ok` or an error naming the field, never a panic;
//! whatever the lint accepts can be stored by PostgreSQL (no NUL in any text);
//! a value past its limit is refused by name; free text keeps its control
//! characters and is shown with them escaped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_shared::brief::{Bound, BoundKind, Brief, Interval, limits};
use backfill_shared::message;
use backfill_shared::sql::TableName;
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

/// The field each of [`FIELDS`] is the value of.
const PATHS: &[&str] = &[
    "brief.name",
    "brief.reason",
    "brief.owner",
    "scope.target",
    "scope.batch_by.start",
    "scope.batch_by.end",
    "scope.batch_by.step",
    "write.strategy",
    "write.on_missing",
    "rollback.plan",
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

    /// Past its field's limit (or the brief's), a value is refused, naming
    /// the field (or the brief).
    #[test]
    fn an_oversize_value_is_refused_naming_its_field(
        field in 0..FIELDS.len(),
        c in any::<char>(),
        len in prop_oneof![0usize..5000, 200_000usize..1_200_000],
    ) {
        let value: String = std::iter::repeat_n(c, len).collect();
        let text = BRIEF.replacen(FIELDS[field], &toml_string(&value), 1);
        let fields: Vec<String> = match Brief::parse(&text) {
            Ok(brief) => {
                stores_in_postgres(&brief);
                Vec::new()
            }
            Err(e) => e.problems.into_iter().map(|p| p.field).collect(),
        };
        let named = if text.len() > limits::BRIEF_BYTES { "brief" } else { PATHS[field] };
        if text.len() > limits::BRIEF_BYTES || len > limits::chars(PATHS[field]) {
            prop_assert!(fields.iter().any(|f| f == named), "{named} not named: {fields:?}");
        }
    }

    /// Control characters and bidirectional overrides in free text are kept
    /// as given, and shown escaped.
    #[test]
    fn control_characters_are_kept_and_shown_escaped(
        value in "[\\x00-\\x1f\\x7f\u{202a}-\u{202e}\u{2066}-\u{2069}a-z <@!&|]{0,64}",
    ) {
        let text = BRIEF.replacen(FIELDS[1], &toml_string(&value), 1);
        match Brief::parse(&text) {
            Ok(brief) => {
                // Kept as given, but for the whitespace around it.
                prop_assert_eq!(brief.meta.reason.as_str(), value.trim());
                let shown = backfill_shared::text::shown(&brief.meta.reason);
                prop_assert!(
                    !shown.chars().any(|c| (c.is_control() && c != '\n' && c != '\t')
                        || ('\u{202a}'..='\u{202e}').contains(&c)
                        || ('\u{2066}'..='\u{2069}').contains(&c)),
                    "{shown:?}"
                );
            }
            Err(e) => prop_assert!(e.problems.iter().all(|p| p.field == "brief.reason"), "{:?}", e.problems),
        }
    }

    /// A table name as shown reads back as the same name, whatever it holds.
    #[test]
    fn table_names_read_back_as_shown(schema in "[^\\x00]{1,20}", table in "[^\\x00]{1,20}") {
        let name = TableName { schema, table };
        prop_assume!(name.schema.len() <= 63 && name.table.len() <= 63);
        prop_assert_eq!(TableName::parse(&name.to_string()), Some(name));
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
    assert_eq!(FIELDS.len(), PATHS.len());
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
