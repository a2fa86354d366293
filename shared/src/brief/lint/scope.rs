//! The lint of `[scope]`: the target, the key and columns, `batch_by` (bounds
//! of one type, a step that fits them, a plan that fits `MAX_BATCHES`), the
//! source, `where`, `volatile_ok`, `accept_empty_source` and the periods.

use super::super::reader::read_tables;
use super::super::reader::{COLUMN_NAME, Reader};
use super::super::{BatchBy, Bound, BoundKind, Interval, Period, Scope, Step};
use super::TABLE_NAME;
use crate::sql::TableName;
use toml::Value;

pub(super) fn read_scope(r: &mut Reader<'_>) -> Option<Scope> {
    let target = r.text("target", "\"schema.table\"").and_then(|t| {
        let parsed = TableName::parse(&t);
        if parsed.is_none() {
            r.problem("target", format!("{t:?} is not a table name; {TABLE_NAME}"));
        }
        parsed
    });
    let key = r.list("key", true, true).filter(|k| {
        if k.is_empty() {
            r.problem(
                "key",
                "is empty; list the column(s) that identify one target row",
            );
        }
        !k.is_empty()
    });
    let columns = r.list("columns", true, true).filter(|c| {
        if c.is_empty() {
            r.problem(
                "columns",
                "is empty; list the columns this backfill may rewrite",
            );
        }
        !c.is_empty()
    });
    if let (Some(key), Some(columns)) = (&key, &columns)
        && let Some(both) = columns.iter().find(|c| key.contains(c))
    {
        r.problem(
            "columns",
            format!("{both:?} is part of the key; a backfill rewrites values, not keys — remove it from columns"),
        );
        return None;
    }
    let batch_by = read_batch_by(r);
    let expected_rows = match r.get("expected_rows") {
        None => Some(None),
        Some(v) => r
            .check_integer("expected_rows", v, 0, i64::MAX)
            .map(|n| u64::try_from(n).ok()),
    };
    let source = r.text("source", "the SELECT that yields one batch's rows").filter(|s| {
        let ok = s.contains("$1") && s.contains("$2");
        if !ok {
            r.problem(
                "source",
                "must use $1 (batch lower bound, inclusive) and $2 (upper bound, exclusive) in its WHERE clause",
            );
        }
        ok
    });
    let filter = match r.opt_text(
        "where",
        "a predicate on target columns, e.g. \"l_shipmode = 'AIR'\"",
    ) {
        Ok(Some(w)) => match super::predicate::one_predicate(&w) {
            Ok(()) => Some(Some(w)),
            Err(why) => {
                r.problem("where", why);
                None
            }
        },
        Ok(None) => Some(None),
        Err(()) => None,
    };
    let volatile_ok = r
        .opt_text(
            "volatile_ok",
            "why the source may call a volatile or clock-reading function, e.g. \"loaded_at stamps the load time\"",
        )
        .ok();
    let periods = read_periods(r, batch_by.as_ref());
    let accept_empty_source = r
        .list("accept_empty_source", false, false)
        .and_then(|ranges| {
            let by = batch_by.as_ref()?;
            let mut parsed = Vec::with_capacity(ranges.len());
            for text in &ranges {
                match accepted_range(text, by) {
                    Ok(range) => parsed.push(range),
                    Err(message) => {
                        r.problem("accept_empty_source", message);
                        return None;
                    }
                }
            }
            Some(parsed)
        });
    let periods = periods?;
    let mut batch_by = batch_by?;
    batch_by.cuts = periods.iter().map(|p: &Period| p.until).collect();
    if let Err(e) = batch_by.plan() {
        r.problem("periods", e);
        return None;
    }
    Some(Scope {
        periods,
        accept_empty_source: accept_empty_source.unwrap_or_default(),
        volatile_ok: volatile_ok?,
        filter: filter?,
        target: target?,
        key: key?,
        columns: columns?,
        batch_by,
        expected_rows: expected_rows?,
        source: source?,
    })
}

fn read_batch_by(r: &mut Reader<'_>) -> Option<BatchBy> {
    const SHAPE: &str = "{ column = \"...\", start = ..., end = ..., step = ... }";
    let Some(v) = r.get("batch_by") else {
        r.missing("batch_by", SHAPE);
        return None;
    };
    let Value::Table(t) = v else {
        r.problem("batch_by", format!("must be a table: {SHAPE}"));
        return None;
    };
    for k in t.keys() {
        if !["column", "start", "end", "step"].contains(&k.as_str()) {
            r.problem(
                "batch_by",
                format!("unknown field {k:?}; the fields are column, start, end, step"),
            );
        }
    }
    let column = match t.get("column") {
        Some(Value::String(c)) if let Some(name) = crate::sql::parse_identifier(c) => Some(name),
        Some(_) => {
            r.problem(
                "batch_by.column",
                format!("must be the name of a column of the target; {COLUMN_NAME}"),
            );
            None
        }
        None => {
            r.problem(
                "batch_by.column",
                "missing; name the column batches split on",
            );
            None
        }
    };
    let start = bound(r, "batch_by.start", t.get("start"));
    let end = bound(r, "batch_by.end", t.get("end"));
    let (start, end) = (start?, end?);
    if start.kind() != end.kind() {
        r.problem(
            "batch_by.end",
            format!(
                "is a {} but start is a {}; use the same type for both",
                end.kind().as_str(),
                start.kind().as_str()
            ),
        );
        return None;
    }
    if start >= end {
        r.problem(
            "batch_by",
            format!("start ({start}) must be before end ({end}); end is exclusive"),
        );
        return None;
    }
    let step = match (start.kind(), t.get("step")) {
        (_, None) => {
            r.problem("batch_by.step", "missing; give the size of one batch");
            None
        }
        (BoundKind::Integer, Some(Value::Integer(s))) if *s > 0 => Some(Step::Integer(*s)),
        (BoundKind::Integer, Some(Value::Integer(s))) => {
            r.problem(
                "batch_by.step",
                format!("{s} is not positive; use a step of at least 1"),
            );
            None
        }
        (BoundKind::Integer, Some(_)) => {
            r.problem(
                "batch_by.step",
                "must be a positive integer for an integer column",
            );
            None
        }
        (_, Some(Value::String(s))) => match Interval::parse(s) {
            Ok(i) if start.kind() == BoundKind::Date && i.micros != 0 => {
                r.problem("batch_by.step", format!("{s:?} is finer than a day; a date column steps by days, weeks, months or years"));
                let _ = i;
                None
            }
            Ok(i) => Some(Step::Interval(i)),
            Err(e) => {
                r.problem("batch_by.step", e);
                None
            }
        },
        (_, Some(_)) => {
            r.problem("batch_by.step", "must be an interval such as \"1 month\" or \"7 days\" for a date or timestamp column");
            None
        }
    }?;
    let batch_by = BatchBy {
        column: column?,
        start,
        end,
        step,
        cuts: Vec::new(),
    };
    if let Err(e) = batch_by.plan() {
        r.problem("batch_by.step", e);
        return None;
    }
    Some(batch_by)
}

fn bound(r: &mut Reader<'_>, field: &str, v: Option<&Value>) -> Option<Bound> {
    let text = match v {
        None => {
            r.problem(field, "missing; give an integer, a date \"YYYY-MM-DD\" or a timestamp \"YYYY-MM-DD HH:MM:SS\"");
            return None;
        }
        Some(Value::Integer(i)) => return Some(Bound::Integer(*i)),
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Datetime(d)) => d.to_string(),
        Some(other) => {
            r.problem(
                field,
                format!(
                    "is a {}; batch_by works on integer, date or timestamp columns only",
                    other.type_str()
                ),
            );
            return None;
        }
    };
    let parsed = if text.len() == 10 {
        Bound::parse(BoundKind::Date, &text)
    } else {
        // An offset (Z, +02:00) has no meaning for a timestamp column: refuse it
        // rather than silently shifting the range.
        let has_offset =
            text.ends_with('Z') || text.get(19..).is_some_and(|rest| rest.contains(['+', '-']));
        (!has_offset)
            .then(|| Bound::parse(BoundKind::Timestamp, &text))
            .flatten()
    };
    if parsed.is_none() {
        r.problem(
            field,
            format!("{text:?} is neither a date \"YYYY-MM-DD\" nor a timestamp \"YYYY-MM-DD HH:MM:SS\" (no time zone)"),
        );
    }
    parsed
}

/// One `"lo..hi"` of `scope.accept_empty_source` or `limits.canary.pick`:
/// bounds of the `batch_by` column's type, `lo < hi` (`hi` exclusive), inside the scope.
pub(super) fn accepted_range(text: &str, by: &BatchBy) -> Result<(Bound, Bound), String> {
    let shape = || {
        format!(
            "{text:?} is not a range; write \"lo..hi\" with {} bounds (hi exclusive), e.g. \"{}..{}\"",
            by.kind().as_str(),
            by.start,
            by.end
        )
    };
    let (lo, hi) = text.split_once("..").ok_or_else(shape)?;
    let (Some(lo), Some(hi)) = (Bound::parse(by.kind(), lo), Bound::parse(by.kind(), hi)) else {
        return Err(shape());
    };
    if lo >= hi {
        return Err(format!(
            "{text:?}: the start must be before the end (the end is exclusive)"
        ));
    }
    if lo < by.start || hi > by.end {
        return Err(format!(
            "{text:?} lies outside the scope [{}, {})",
            by.start, by.end
        ));
    }
    Ok((lo, hi))
}

/// `[[scope.periods]]`: each with `until` (a bound of the `batch_by` type
/// inside the scope, above the previous period's), a `reason` and a `source`
/// that takes `$1` and `$2` like `scope.source`.
fn read_periods(r: &mut Reader<'_>, by: Option<&BatchBy>) -> Option<Vec<Period>> {
    let periods = read_tables(r, "periods", |r, t, i| {
        let field = |k: &str| format!("periods[{i}].{k}");
        for k in t.keys() {
            if !["until", "reason", "source"].contains(&k.as_str()) {
                r.problem(
                    &field(k),
                    "unknown field; the fields are until, reason, source",
                );
            }
        }
        let mut text = |k: &str, what: &str| match t.get(k) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            _ => {
                r.problem(&field(k), format!("must be a non-blank string: {what}"));
                None
            }
        };
        let reason = text("reason", "why the rules of that time differ");
        let source = text(
            "source",
            "the SELECT of the rules of that time, with $1 and $2",
        );
        let until = by.and_then(|by| match t.get("until") {
            Some(Value::Integer(v)) => Bound::parse(by.kind(), &v.to_string()),
            Some(Value::String(v)) => Bound::parse(by.kind(), v),
            Some(Value::Datetime(v)) => Bound::parse(by.kind(), &v.to_string()),
            _ => None,
        });
        if until.is_none() && by.is_some() {
            r.problem(
                &field("until"),
                format!(
                    "must be a {} bound: the period covers batch_by values below it",
                    by.map_or("", |b| b.kind().as_str())
                ),
            );
        }
        let source = source.filter(|s| {
            let ok = s.contains("$1") && s.contains("$2");
            if !ok {
                r.problem(
                    &field("source"),
                    "must use $1 (batch lower bound, inclusive) and $2 (upper bound, exclusive), like scope.source",
                );
            }
            ok
        });
        Some(Period {
            until: until?,
            reason: reason?,
            source: source?,
        })
    })?;
    let by = by?;
    let mut from = by.start;
    for (i, p) in periods.iter().enumerate() {
        if p.until <= from || p.until >= by.end {
            r.problem(
                &format!("periods[{i}].until"),
                format!(
                    "{} must lie above {from} and below the scope's end {}: periods are in order, do not overlap, and lie inside the scope",
                    p.until, by.end
                ),
            );
            return None;
        }
        from = p.until;
    }
    Some(periods)
}
