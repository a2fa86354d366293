//! Unit tests of the lint: one brief that passes, and each rule's refusal.

use super::super::{Bound, Brief, OnMissing, Strategy};

pub(super) const GOOD: &str = r#"
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
batch_by = { column = "created", start = 2025-01-01, end = "2025-03-01", step = "1 month" }
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

pub(super) fn fields(text: &str) -> Vec<String> {
    Brief::parse(text)
        .unwrap_err()
        .problems
        .into_iter()
        .map(|p| p.field)
        .collect()
}

#[test]
fn a_complete_brief_parses() {
    let b = Brief::parse(GOOD).unwrap();
    assert_eq!(b.scope.target.to_string(), "public.events");
    assert_eq!(b.write.strategy, Strategy::Merge);
    assert_eq!(b.write.on_missing, OnMissing::Keep);
    assert!(matches!(b.scope.batch_by.start, Bound::Date(_)));
    assert_eq!(b.scope.batch_by.plan().unwrap().len(), 2);
    assert_eq!(b.scope.written_columns(), ["id", "created", "day"]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let bad = GOOD
        .replace("reviewer = \"bob\"", "reviewer = \"Alice\"")
        .replace("strategy = \"merge\"", "strategy = \"append\"")
        .replace("max_in_flight = 2", "max_in_flight = 0\nmax_inflight = 3")
        .replace(
            "[rollback]\nplan = \"restore before-images\"\nretain_days = 7\n",
            "[rollback]\n",
        );
    let f = fields(&bad);
    for expected in [
        "brief.reviewer",
        "write.strategy",
        "limits.max_in_flight",
        "limits.max_inflight",
        "[rollback]",
    ] {
        assert!(
            f.iter().any(|x| x == expected),
            "{expected} missing from {f:?}"
        );
    }
}

#[test]
fn batch_by_is_checked() {
    let swap = |from: &str, to: &str| fields(&GOOD.replace(from, to));
    assert!(
        swap("end = \"2025-03-01\"", "end = \"2024-03-01\"").contains(&"scope.batch_by".to_owned())
    );
    assert!(
        swap("start = 2025-01-01", "start = true").contains(&"scope.batch_by.start".to_owned())
    );
    assert!(swap("end = \"2025-03-01\"", "end = 7").contains(&"scope.batch_by.end".to_owned()));
    assert!(swap("\"1 month\"", "\"1 hour\"").contains(&"scope.batch_by.step".to_owned()));
    assert!(swap("\"1 month\"", "\"-1 month\"").contains(&"scope.batch_by.step".to_owned()));
    assert!(
        swap("start = 2025-01-01", "start = \"2025-01-01T00:00:00Z\"")
            .contains(&"scope.batch_by.start".to_owned())
    );
}

#[test]
fn windows_wrap_midnight() {
    let limits = |w: &str| {
        Brief::parse(&GOOD.replace(
            "max_in_flight = 2",
            &format!("max_in_flight = 2\nwindow = \"{w}\""),
        ))
    };
    let w = limits("22:00-06:00").unwrap().limits.window.unwrap();
    let t = |s: &str| chrono::NaiveTime::parse_from_str(s, "%H:%M").unwrap();
    assert!(
        w.contains(t("23:30"))
            && w.contains(t("05:59"))
            && !w.contains(t("06:00"))
            && !w.contains(t("12:00"))
    );
    let day = limits("09:00-17:00").unwrap().limits.window.unwrap();
    assert!(day.contains(t("09:00")) && !day.contains(t("17:00")));
    for bad in ["9-17", "25:00-01:00", "10:00-10:00", "22:00"] {
        assert!(
            fields(&GOOD.replace(
                "max_in_flight = 2",
                &format!("max_in_flight = 2\nwindow = \"{bad}\"")
            ))
            .contains(&"limits.window".to_owned()),
            "{bad}"
        );
    }
}

#[test]
fn scope_rules() {
    assert!(
        fields(&GOOD.replace("columns = [\"day\"]", "columns = [\"id\"]"))
            .contains(&"scope.columns".to_owned())
    );
    assert!(fields(&GOOD.replace("key = [\"id\"]", "key = []")).contains(&"scope.key".to_owned()));
    assert!(fields(&GOOD.replace("$2", "$9")).contains(&"scope.source".to_owned()));
    assert!(
        fields(&GOOD.replace("target = \"events\"", "target = \"a.b.c\""))
            .contains(&"scope.target".to_owned())
    );
    assert!(fields(&GOOD.replace("[limits]", "[limit]")).contains(&"limit".to_owned()));
}

#[test]
fn a_live_write_of_history_that_matters_keeps_a_way_back() {
    let critical = GOOD
        .replace("low-risk-enrichment", "production-critical")
        .replace("snapshot = true", "snapshot = false");
    assert_eq!(fields(&critical), ["write.snapshot", "rollback.plan"]);
    let stated = critical.replace(
        "plan = \"restore before-images\"",
        "plan = \"restore last night's snapshot\"\nwithout_images = \"nightly snapshot s3://b/events\"",
    );
    let b = Brief::parse(&stated).unwrap();
    assert_eq!(
        b.rollback.without_images.as_deref(),
        Some("nightly snapshot s3://b/events")
    );
    // A low-risk enrichment may go without images, but not promise them.
    let low = GOOD.replace("snapshot = true", "snapshot = false");
    assert_eq!(fields(&low), ["rollback.plan"]);
    // A table built beside the target needs no images to be undone.
    assert!(Brief::parse(&critical.replace("\"merge\"", "\"staging-swap\"")).is_ok());
    // A stated way back while images are kept is a setting that does nothing.
    assert_eq!(
        fields(&stated.replace("snapshot = false", "snapshot = true")),
        ["rollback.without_images"]
    );
    // The keys that must never come back: one query (a trailing ';' is dropped).
    let erased = GOOD.replace(
        "plan = \"restore before-images\"",
        "plan = \"restore before-images\"\nerased = \"SELECT id FROM privacy.erasures;\"",
    );
    assert_eq!(
        Brief::parse(&erased).unwrap().rollback.erased.as_deref(),
        Some("SELECT id FROM privacy.erasures")
    );
    assert_eq!(
        fields(&erased.replace("erasures;", "erasures; DELETE FROM t")),
        ["rollback.erased"]
    );
}

#[test]
fn a_metric_is_measured_by_one_statement() {
    let m = super::super::Metric {
        name: "total".into(),
        expr: "sum(v)".into(),
        by: Some("date_trunc('year', d)".into()),
        max_change_pct: None,
    };
    assert_eq!(
        m.query("s.t", "t.d >= $1"),
        "SELECT (date_trunc('year', d))::text, (sum(v))::float8 FROM s.t t WHERE t.d >= $1 GROUP BY 1 ORDER BY 1"
    );
    let all = super::super::Metric { by: None, ..m };
    assert!(all.query("x", "false").starts_with("SELECT ('all')::text"));
    assert_eq!(super::super::Metric::group_name(None), "(null)");
}

#[test]
fn max_duplicate_keys_can_only_be_zero() {
    for bad in ["1", "-1", "\"0\""] {
        assert_eq!(
            fields(&GOOD.replace(
                "max_duplicate_keys = 0",
                &format!("max_duplicate_keys = {bad}")
            )),
            ["validation.max_duplicate_keys"],
            "{bad}"
        );
    }
    let problems = Brief::parse(&GOOD.replace("max_duplicate_keys = 0", "max_duplicate_keys = 5"))
        .unwrap_err()
        .problems;
    assert!(
        problems[0].message.contains("duplicate grain"),
        "{problems:?}"
    );
}

#[test]
fn scope_where_is_one_predicate() {
    let with = |w: &str| GOOD.replace("[write]", &format!("where = {w}\n\n[write]"));
    let b = Brief::parse(&with("\"day > '2025-01-01'\"")).unwrap();
    assert_eq!(b.scope.filter.as_deref(), Some("day > '2025-01-01'"));
    assert_eq!(
        b.scope.owned_range("t"),
        "t.\"created\" >= $1 AND t.\"created\" < $2 AND (day > '2025-01-01')"
    );
    assert_eq!(Brief::parse(GOOD).unwrap().scope.owned(), "");
    for bad in ["\"true; DROP TABLE x\"", "\" \"", "7"] {
        assert_eq!(fields(&with(bad)), ["scope.where"], "{bad}");
    }
}

#[test]
fn max_unmatched_pct_is_a_percent() {
    let with = |v: &str| {
        GOOD.replace(
            "max_duplicate_keys = 0",
            &format!("max_duplicate_keys = 0\nmax_unmatched_pct = {v}"),
        )
    };
    assert_eq!(
        Brief::parse(GOOD).unwrap().validation.max_unmatched_pct,
        super::super::DEFAULT_MAX_UNMATCHED_PCT
    );
    assert_eq!(
        Brief::parse(&with("0"))
            .unwrap()
            .validation
            .max_unmatched_pct,
        0.0
    );
    assert_eq!(
        Brief::parse(&with("12.5"))
            .unwrap()
            .validation
            .max_unmatched_pct,
        12.5
    );
    for bad in ["-1", "101", "\"5%\"", "nan"] {
        assert_eq!(
            fields(&with(bad)),
            ["validation.max_unmatched_pct"],
            "{bad}"
        );
    }
}

#[test]
fn a_budget_takes_any_of_its_caps_and_refuses_the_rest() {
    let with = |budget: &str| {
        GOOD.replace(
            "max_in_flight = 2",
            &format!("max_in_flight = 2\nbudget = {budget}"),
        )
    };
    let brief = Brief::parse(&with("{ duration = \"6h\", rows = 20000000 }")).unwrap();
    assert_eq!(brief.limits.budget.duration_seconds, Some(6 * 3600));
    assert_eq!(brief.limits.budget.rows, Some(20_000_000));
    assert_eq!(brief.limits.budget.batch_seconds, None);
    assert_eq!(
        crate::brief::Budget::parse_duration("90 minutes"),
        Some(5400)
    );
    assert_eq!(crate::brief::Budget::parse_duration("2d"), Some(172_800));
    for (bad, field) in [
        ("{ duration = \"soon\" }", "limits.budget.duration"),
        ("{ rows = -1 }", "limits.budget.rows"),
        ("{ dollars = 5 }", "limits.budget.dollars"),
        ("{ }", "limits.budget"),
    ] {
        assert!(
            fields(&with(bad)).contains(&field.to_owned()),
            "{bad}: {:?}",
            fields(&with(bad))
        );
    }
}

#[test]
fn a_canary_takes_a_count_and_a_pick_and_refuses_the_rest() {
    let with = |canary: &str| {
        GOOD.replace(
            "max_in_flight = 2",
            &format!("max_in_flight = 2\ncanary = {canary}"),
        )
    };
    let brief = Brief::parse(&with("{ batches = 5, auto = true }")).unwrap();
    let canary = brief.limits.canary.unwrap();
    assert_eq!(
        (canary.batches, canary.pick, canary.auto),
        (5, crate::brief::CanaryPick::Spread, true)
    );
    assert_eq!(
        Brief::parse(&with("{}"))
            .unwrap()
            .limits
            .canary
            .unwrap()
            .batches,
        3
    );
    for (bad, field) in [
        ("{ batches = 0 }", "limits.canary.batches"),
        ("{ batches = 1000 }", "limits.canary.batches"),
        ("{ pick = \"random\" }", "limits.canary.pick"),
        ("{ pick = [] }", "limits.canary.pick"),
        ("{ pick = [\"x..y\"] }", "limits.canary.pick"),
        ("{ auto = \"yes\" }", "limits.canary.auto"),
        ("{ when = 1 }", "limits.canary.when"),
        ("3", "limits.canary"),
        // Without edge cases to hold, edge_cases picks nothing.
        ("{ pick = \"edge_cases\" }", "limits.canary.pick"),
    ] {
        assert!(
            fields(&with(bad)).contains(&field.to_owned()),
            "{bad}: {:?}",
            fields(&with(bad))
        );
    }
}

#[test]
fn refresh_takes_statements_and_commands_and_a_dbt_manifest_a_path() {
    use super::super::Refresh;
    let with = |deps: &str| GOOD.replace("[dependencies]\n", &format!("[dependencies]\n{deps}\n"));
    let b = Brief::parse(&with(
        r#"refresh = ["REFRESH MATERIALIZED VIEW m", { run = ["dbt", "build", "--select", "events+"], dir = "analytics" }, { run = ["true"] }]
dbt_manifest = "analytics/target/manifest.json""#,
    ))
    .unwrap();
    assert_eq!(
        b.dependencies.refresh,
        [
            Refresh::Sql("REFRESH MATERIALIZED VIEW m".into()),
            Refresh::Command {
                run: vec![
                    "dbt".into(),
                    "build".into(),
                    "--select".into(),
                    "events+".into()
                ],
                dir: Some("analytics".into()),
            },
            Refresh::Command {
                run: vec!["true".into()],
                dir: None
            },
        ]
    );
    assert_eq!(
        b.dependencies.refresh[1].to_string(),
        "(in analytics) dbt build --select events+"
    );
    assert_eq!(
        b.dependencies.dbt_manifest.as_deref(),
        Some("analytics/target/manifest.json")
    );
    // A recorded brief reads back the same.
    let json = serde_json::to_value(&b.dependencies).unwrap();
    assert_eq!(
        serde_json::from_value::<super::super::Dependencies>(json).unwrap(),
        b.dependencies
    );

    let messages = |deps: &str| -> String {
        Brief::parse(&with(deps))
            .unwrap_err()
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (deps, expected) in [
        (
            "refresh = \"dbt build\"",
            "must be a list whose items are SQL statements",
        ),
        (
            "refresh = [{ run = [] }]",
            "step 1: `run` must be a non-empty list",
        ),
        (
            "refresh = [\"x\", { run = \"dbt build\" }]",
            "step 2: `run` must be a non-empty list",
        ),
        (
            "refresh = [{ run = [\"dbt\"], dir = 3 }]",
            "step 1: `dir` must be a directory",
        ),
        (
            "refresh = [{ run = [\"dbt\"], shell = true }]",
            "unknown key(s) [\"shell\"]",
        ),
        (
            "refresh = [7]",
            "step 1 must be a SQL statement or a command",
        ),
        ("dbt_manifest = \" \"", "dbt_manifest: is blank"),
        ("dbt_manifest = [\"a\"]", "dbt_manifest: must be a string"),
    ] {
        let got = messages(deps);
        assert!(got.contains(expected), "{deps}: {expected:?} not in {got}");
    }
}

/// [`GOOD`] with `field`'s list holding `n` items.
fn with_items(field: &str, n: usize) -> String {
    let list = |item: &dyn Fn(usize) -> String| (0..n).map(item).collect::<Vec<_>>().join(", ");
    let add = |before: &str, line: String| GOOD.replacen(before, &format!("{line}\n{before}"), 1);
    match field {
        "scope.key" => GOOD.replacen(
            "key = [\"id\"]",
            &format!("key = [{}]", list(&|i| format!("\"k{i}\""))),
            1,
        ),
        "scope.columns" => GOOD.replacen(
            "columns = [\"day\"]",
            &format!("columns = [{}]", list(&|i| format!("\"c{i}\""))),
            1,
        ),
        "scope.periods" => add(
            "\n[write]",
            format!(
                "periods = [{}]",
                list(&|i| format!(
                    "{{ until = \"2025-01-01 {:02}:{:02}:00\", reason = \"r\", source = \"SELECT 1\" }}",
                    i / 60,
                    i % 60
                ))
            ),
        ),
        "scope.accept_empty_source" => add(
            "\n[write]",
            format!(
                "accept_empty_source = [{}]",
                list(&|_| "\"2025-01-01..2025-01-02\"".into())
            ),
        ),
        "dependencies.downstream" => GOOD.replacen(
            "downstream = []",
            &format!("downstream = [{}]", list(&|i| format!("\"public.v{i}\""))),
            1,
        ),
        "dependencies.refresh" => add(
            "stakeholders = ",
            format!("refresh = [{}]", list(&|_| "\"SELECT 1\"".into())),
        ),
        "dependencies.stakeholders" => GOOD.replacen(
            "stakeholders = [\"ops\"]",
            &format!("stakeholders = [{}]", list(&|i| format!("\"t{i}\""))),
            1,
        ),
        "validation.metrics" => add(
            "\n[limits]",
            format!(
                "metrics = [{}]",
                list(&|i| format!("{{ name = \"m{i}\", expr = \"count(*)\" }}"))
            ),
        ),
        "validation.references" => add(
            "\n[limits]",
            format!(
                "references = [{}]",
                list(&|_| "{ column = \"day\", references = \"public.days(day)\" }".into())
            ),
        ),
        "validation.downstream" => add(
            "\n[limits]",
            format!(
                "downstream = [{}]",
                list(&|i| format!(
                    "{{ name = \"d{i}\", relation = \"public.v\", expr = \"count(*)\", unchanged = true }}"
                ))
            ),
        ),
        "validation.queries" => add(
            "\n[limits]",
            format!(
                "queries = [{}]",
                list(&|i| format!(
                    "{{ name = \"q{i}\", sql = \"SELECT 1\", max_slowdown_pct = 50 }}"
                ))
            ),
        ),
        "validation.edge_cases" => add(
            "\n[limits]",
            format!("edge_cases = [{}]", list(&|i| i.to_string())),
        ),
        _ => panic!("no test builds a brief with {n} items of {field}: add one"),
    }
}

/// [`GOOD`] with `text` as the value of `field`.
fn with_text(field: &str, text: &str) -> String {
    let value = toml::Value::String(text.to_owned()).to_string();
    let set = |old: &str| GOOD.replacen(old, &value, 1);
    let add = |before: &str, line: String| GOOD.replacen(before, &format!("{line}\n{before}"), 1);
    match field {
        "brief.owner" => set("\"alice\""),
        "brief.reviewer" => set("\"bob\""),
        "brief.reason" => set("\"Late events were dated by arrival.\""),
        "scope.source" => set(
            "\"SELECT id, created, created::date AS day FROM raw WHERE created >= $1 AND created < $2\"",
        ),
        "scope.periods[].reason" => add(
            "\n[write]",
            format!(
                "periods = [{{ until = \"2025-02-01 00:00:00\", reason = {value}, source = \"SELECT 1\" }}]"
            ),
        ),
        "scope.volatile_ok" => add("\n[write]", format!("volatile_ok = {value}")),
        "validation.metrics[].name" => add(
            "\n[limits]",
            format!("metrics = [{{ name = {value}, expr = \"count(*)\" }}]"),
        ),
        "validation.downstream[].name" => add(
            "\n[limits]",
            format!(
                "downstream = [{{ name = {value}, relation = \"public.v\", expr = \"count(*)\", unchanged = true }}]"
            ),
        ),
        "validation.queries[].name" => add(
            "\n[limits]",
            format!("queries = [{{ name = {value}, sql = \"SELECT 1\", max_slowdown_pct = 50 }}]"),
        ),
        "rollback.plan" => set("\"restore before-images\""),
        "rollback.without_images" => add("retain_days", format!("without_images = {value}")),
        _ => panic!("no test sets {field}: add one"),
    }
}

/// The problems that name `field` and a limit.
fn over_limit(text: &str, field: &str) -> Vec<String> {
    Brief::parse(text)
        .err()
        .map(|e| e.problems)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| {
            p.field == field
                && (p.message.contains("fit here") || p.message.contains("a brief lists at most"))
        })
        .map(|p| p.message)
        .collect()
}

#[test]
fn every_limit_holds_at_its_value_and_refuses_one_past() {
    use super::limits;
    for (field, most) in limits::ITEMS {
        assert_eq!(
            over_limit(&with_items(field, *most), field),
            Vec::<String>::new(),
            "{field} at {most}"
        );
        let past = over_limit(&with_items(field, most + 1), field);
        assert_eq!(past.len(), 1, "{field} at {}: {past:?}", most + 1);
        assert!(past[0].contains(&format!("at most {most}")), "{past:?}");
    }
    let texts = limits::CHARS
        .iter()
        .copied()
        .chain([("scope.source", limits::TEXT_CHARS)]);
    for (field, most) in texts {
        // Characters, not bytes: an accented letter counts once.
        let at = "é".repeat(most);
        let named = field.replace("[]", "[0]");
        assert_eq!(
            over_limit(&with_text(field, &at), &named),
            Vec::<String>::new(),
            "{field} at {most}"
        );
        let past = over_limit(&with_text(field, &format!("{at}x")), &named);
        assert_eq!(past.len(), 1, "{field} at {}: {past:?}", most + 1);
    }
    // The whole brief, in bytes: a comment pads it to the limit, then past it.
    let padded = |bytes: usize| format!("{GOOD}#{}\n", "x".repeat(bytes - GOOD.len() - 2));
    let at = padded(limits::BRIEF_BYTES);
    assert_eq!(at.len(), limits::BRIEF_BYTES);
    Brief::parse(&at).unwrap();
    let past = Brief::parse(&padded(limits::BRIEF_BYTES + 1))
        .unwrap_err()
        .problems;
    assert_eq!(past.len(), 1, "{past:?}");
    assert_eq!(past[0].field, "brief");
    assert!(
        past[0].message.contains("at most 1048576 bytes"),
        "{past:?}"
    );
}

/// README states every limit the lint enforces.
#[test]
fn readme_states_every_limit() {
    use super::limits;
    let readme = include_str!("../../../../README.md");
    let rows = limits::ITEMS
        .iter()
        .map(|(f, n)| format!("| `{f}` | {n} items |"))
        .chain(
            limits::CHARS
                .iter()
                .map(|(f, n)| format!("| `{f}` | {n} characters |")),
        )
        .chain([
            format!("| any other text | {} characters |", limits::TEXT_CHARS),
            format!("| the brief | {} bytes |", limits::BRIEF_BYTES),
        ]);
    for row in rows {
        assert!(readme.contains(&row), "README lacks the row {row}");
    }
}

#[test]
fn size_growth_and_correlation_limits_are_numbers_in_range() {
    let with = |v: &str| {
        GOOD.replace(
            "max_duplicate_keys = 0",
            &format!("max_duplicate_keys = 0\n{v}"),
        )
    };
    let v = Brief::parse(GOOD).unwrap().validation;
    assert_eq!((v.max_size_growth_pct, v.min_correlation), (None, None));
    let v = Brief::parse(&with("max_size_growth_pct = 40\nmin_correlation = 0.5"))
        .unwrap()
        .validation;
    assert_eq!(
        (v.max_size_growth_pct, v.min_correlation),
        (Some(40.0), Some(0.5))
    );
    for bad in ["-1", "\"40%\"", "nan", "20000"] {
        assert_eq!(
            fields(&with(&format!("max_size_growth_pct = {bad}"))),
            ["validation.max_size_growth_pct"],
            "{bad}"
        );
    }
    for bad in ["1.5", "-2", "\"high\""] {
        assert_eq!(
            fields(&with(&format!("min_correlation = {bad}"))),
            ["validation.min_correlation"],
            "{bad}"
        );
    }
}
