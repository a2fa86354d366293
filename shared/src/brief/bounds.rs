//! Batch bounds: the typed values of the `batch_by` column (integer, date or
//! timestamp), the step between them, and the plan of half-open ranges
//! `[lo, hi)` that covers `[start, end)` with no gap and no overlap.

use chrono::{Days, Months, NaiveDate, NaiveDateTime, TimeDelta};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Most batches one run may have; more is a planning mistake (the step is too small).
pub const MAX_BATCHES: usize = 5_000_000;

/// The kind of values a `batch_by` column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoundKind {
    Integer,
    Date,
    Timestamp,
}

impl BoundKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Integer => "integer",
            Self::Date => "date",
            Self::Timestamp => "timestamp",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "integer" => Some(Self::Integer),
            "date" => Some(Self::Date),
            "timestamp" => Some(Self::Timestamp),
            _ => None,
        }
    }

    /// The PostgreSQL type bounds of this kind are bound as.
    #[must_use]
    pub fn sql_type(self) -> &'static str {
        match self {
            Self::Integer => "bigint",
            Self::Date => "date",
            Self::Timestamp => "timestamp",
        }
    }

    /// Whether a PostgreSQL column type (as `format_type` prints it) holds this kind.
    #[must_use]
    pub fn matches_sql_type(self, sql_type: &str) -> bool {
        match self {
            Self::Integer => matches!(sql_type, "smallint" | "integer" | "bigint"),
            Self::Date => sql_type == "date",
            Self::Timestamp => sql_type.starts_with("timestamp"),
        }
    }
}

/// One bound of a batch, bound to the source query as a typed parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    Integer(i64),
    Date(NaiveDate),
    Timestamp(NaiveDateTime),
}

impl Bound {
    #[must_use]
    pub fn kind(&self) -> BoundKind {
        match self {
            Self::Integer(_) => BoundKind::Integer,
            Self::Date(_) => BoundKind::Date,
            Self::Timestamp(_) => BoundKind::Timestamp,
        }
    }

    /// Parses a bound as stored in the ledger (the form [`fmt::Display`] writes).
    pub fn parse(kind: BoundKind, text: &str) -> Option<Self> {
        let text = text.trim();
        match kind {
            BoundKind::Integer => text.parse().ok().map(Self::Integer),
            BoundKind::Date => NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .map(Self::Date),
            BoundKind::Timestamp => ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
                .or_else(|| {
                    NaiveDate::parse_from_str(text, "%Y-%m-%d")
                        .ok()
                        .and_then(|d| d.and_hms_opt(0, 0, 0))
                })
                .map(Self::Timestamp),
        }
    }

    /// The next bound one step on, or `None` past the representable range (or for
    /// a step of the wrong kind, which [`BatchBy::plan`] refuses first).
    fn advance(self, step: &Step) -> Option<Self> {
        match (self, step) {
            (Self::Integer(v), Step::Integer(s)) => v.checked_add(*s).map(Self::Integer),
            (Self::Date(d), Step::Interval(i)) => i.add_to_date(d).map(Self::Date),
            (Self::Timestamp(t), Step::Interval(i)) => i.add_to_timestamp(t).map(Self::Timestamp),
            _ => None,
        }
    }
}

impl Bound {
    /// The bound as a typed SQL literal (`'1992-01-01'::date`), for the DDL
    /// that takes no parameters (a `CHECK` constraint).
    #[must_use]
    pub fn literal(&self) -> String {
        format!(
            "{}::{}",
            crate::sql::quote_literal(&self.to_string()),
            self.kind().sql_type()
        )
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Integer(v) => write!(f, "{v}"),
            Self::Date(d) => write!(f, "{}", d.format("%Y-%m-%d")),
            Self::Timestamp(t) => write!(f, "{}", t.format("%Y-%m-%d %H:%M:%S%.f")),
        }
    }
}

/// A calendar interval: months, days and microseconds add separately, as in PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interval {
    pub months: u32,
    pub days: u64,
    pub micros: i64,
}

impl Interval {
    /// Parses `"<n> <unit>"`: `n` a positive integer, unit one of year(s), month(s),
    /// week(s), day(s), hour(s), minute(s), second(s).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split_whitespace();
        let (Some(n), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "{text:?} is not an interval; write \"<n> <unit>\", e.g. \"1 month\" or \"7 days\""
            ));
        };
        let n: i64 = n
            .parse()
            .map_err(|_| format!("{n:?} in {text:?} is not a whole number"))?;
        if n <= 0 {
            return Err(format!("the step {text:?} must be positive"));
        }
        let unit = unit.trim_end_matches('s');
        let too_big = || format!("the step {text:?} is too large");
        let count = u32::try_from(n).map_err(|_| too_big())?;
        let interval = match unit {
            "year" => Self::months(count.checked_mul(12).ok_or_else(too_big)?),
            "month" => Self::months(count),
            "week" => Self::days(u64::from(count) * 7),
            "day" => Self::days(u64::from(count)),
            "hour" => Self::micros(n.checked_mul(3_600_000_000).ok_or_else(too_big)?),
            "minute" => Self::micros(n.checked_mul(60_000_000).ok_or_else(too_big)?),
            "second" => Self::micros(n.checked_mul(1_000_000).ok_or_else(too_big)?),
            _ => {
                return Err(format!(
                    "unknown unit {unit:?} in {text:?}; use year, month, week, day, hour, minute or second"
                ));
            }
        };
        Ok(interval)
    }

    fn months(months: u32) -> Self {
        Self {
            months,
            days: 0,
            micros: 0,
        }
    }

    fn days(days: u64) -> Self {
        Self {
            months: 0,
            days,
            micros: 0,
        }
    }

    fn micros(micros: i64) -> Self {
        Self {
            months: 0,
            days: 0,
            micros,
        }
    }

    fn add_to_date(&self, d: NaiveDate) -> Option<NaiveDate> {
        if self.micros != 0 {
            return None;
        }
        d.checked_add_months(Months::new(self.months))?
            .checked_add_days(Days::new(self.days))
    }

    fn add_to_timestamp(&self, t: NaiveDateTime) -> Option<NaiveDateTime> {
        t.checked_add_months(Months::new(self.months))?
            .checked_add_days(Days::new(self.days))?
            .checked_add_signed(TimeDelta::microseconds(self.micros))
    }
}

/// The distance between consecutive bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Integer(i64),
    Interval(Interval),
}

/// A validated `batch_by`: the column, `[start, end)` and the step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchBy {
    pub column: String,
    pub start: Bound,
    pub end: Bound,
    pub step: Step,
    /// Bounds no batch may straddle (where `[[scope.periods]]` end), ascending.
    #[serde(default)]
    pub cuts: Vec<Bound>,
}

/// One planned batch: its number (from 0) and its half-open range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRange {
    pub no: u32,
    pub lo: Bound,
    pub hi: Bound,
}

impl BatchBy {
    #[must_use]
    pub fn kind(&self) -> BoundKind {
        self.start.kind()
    }

    /// The batches covering `[start, end)`, each `[lo, hi)`, the last one cut at `end`.
    pub fn plan(&self) -> Result<Vec<BatchRange>, String> {
        let fits = match (self.kind(), &self.step) {
            (BoundKind::Integer, Step::Integer(s)) => *s > 0,
            (BoundKind::Date, Step::Interval(i)) => i.micros == 0 && (i.months > 0 || i.days > 0),
            (BoundKind::Timestamp, Step::Interval(i)) => i.months > 0 || i.days > 0 || i.micros > 0,
            _ => false,
        };
        if !fits {
            return Err(format!(
                "the step does not advance a {} column; use {}",
                self.kind().as_str(),
                match self.kind() {
                    BoundKind::Integer => "a positive integer",
                    BoundKind::Date => "days, weeks, months or years",
                    BoundKind::Timestamp => "a positive interval",
                }
            ));
        }
        let mut batches = Vec::new();
        let push = |batches: &mut Vec<BatchRange>, lo: Bound, hi: Bound| {
            if batches.len() >= MAX_BATCHES {
                return Err(format!(
                    "more than {MAX_BATCHES} batches; use a larger step"
                ));
            }
            let no = u32::try_from(batches.len()).map_err(|_| "too many batches".to_owned())?;
            batches.push(BatchRange { no, lo, hi });
            Ok(())
        };
        let mut lo = self.start;
        while lo < self.end {
            let hi = lo.advance(&self.step).map_or(self.end, |h| h.min(self.end));
            if hi <= lo {
                return Err(format!("the step does not advance from {lo}"));
            }
            // A batch that would straddle a cut ends there; the next one
            // starts there and keeps to the step's grid.
            let mut from = lo;
            for &cut in self.cuts.iter().filter(|c| **c > lo && **c < hi) {
                push(&mut batches, from, cut)?;
                from = cut;
            }
            push(&mut batches, from, hi)?;
            lo = hi;
        }
        Ok(batches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> Bound {
        Bound::parse(BoundKind::Date, s).unwrap()
    }

    #[test]
    fn no_batch_straddles_a_cut_and_the_grid_holds() {
        let b = BatchBy {
            column: "k".into(),
            start: Bound::Integer(1),
            end: Bound::Integer(31),
            step: Step::Integer(10),
            cuts: vec![Bound::Integer(15)],
        };
        let bounds: Vec<_> = b.plan().unwrap().iter().map(|r| (r.lo, r.hi)).collect();
        let i = Bound::Integer;
        assert_eq!(
            bounds,
            vec![
                (i(1), i(11)),
                (i(11), i(15)),
                (i(15), i(21)),
                (i(21), i(31))
            ]
        );
    }

    #[test]
    fn integer_plan_covers_range_without_gaps() {
        let b = BatchBy {
            column: "k".into(),
            start: Bound::Integer(1),
            end: Bound::Integer(26),
            step: Step::Integer(10),
            cuts: Vec::new(),
        };
        let plan = b.plan().unwrap();
        let bounds: Vec<_> = plan.iter().map(|r| (r.lo, r.hi)).collect();
        assert_eq!(
            bounds,
            vec![
                (Bound::Integer(1), Bound::Integer(11)),
                (Bound::Integer(11), Bound::Integer(21)),
                (Bound::Integer(21), Bound::Integer(26)),
            ]
        );
        assert_eq!(plan[2].no, 2);
    }

    #[test]
    fn monthly_plan_follows_the_calendar() {
        let b = BatchBy {
            column: "d".into(),
            start: date("1992-01-31"),
            end: date("1992-04-15"),
            step: Step::Interval(Interval::parse("1 month").unwrap()),
            cuts: Vec::new(),
        };
        let plan = b.plan().unwrap();
        assert_eq!(plan.len(), 3);
        assert_eq!(plan[0].hi, date("1992-02-29"));
        assert_eq!(plan[2].hi, date("1992-04-15"));
        for w in plan.windows(2) {
            assert_eq!(w[0].hi, w[1].lo);
        }
    }

    #[test]
    fn interval_parsing() {
        assert_eq!(Interval::parse("2 weeks").unwrap().days, 14);
        assert_eq!(Interval::parse("1 year").unwrap().months, 12);
        assert!(Interval::parse("0 days").is_err());
        assert!(Interval::parse("-1 day").is_err());
        assert!(Interval::parse("1 fortnight").is_err());
        assert!(Interval::parse("monthly").is_err());
    }

    #[test]
    fn hours_do_not_advance_dates() {
        let b = BatchBy {
            column: "d".into(),
            start: date("1992-01-01"),
            end: date("1992-02-01"),
            step: Step::Interval(Interval::parse("6 hours").unwrap()),
            cuts: Vec::new(),
        };
        assert!(b.plan().unwrap_err().contains("does not advance"));
    }

    #[test]
    fn bounds_round_trip_through_text() {
        for (kind, text) in [
            (BoundKind::Integer, "-42"),
            (BoundKind::Date, "1998-08-02"),
            (BoundKind::Timestamp, "1998-08-02 10:11:12"),
        ] {
            let b = Bound::parse(kind, text).unwrap();
            assert_eq!(Bound::parse(kind, &b.to_string()), Some(b));
        }
        assert!(BoundKind::Timestamp.matches_sql_type("timestamp with time zone"));
        assert!(!BoundKind::Integer.matches_sql_type("numeric"));
    }
}

/// Bounds bind as their own PostgreSQL type (`bigint`, `date`, `timestamp`), chosen
/// per value, so one statement text serves every kind of `batch_by` column.
mod sql_binding {
    use super::Bound;
    use chrono::{NaiveDate, NaiveDateTime};
    use sqlx::encode::{Encode, IsNull};
    use sqlx::error::BoxDynError;
    use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo};
    use sqlx::{Postgres, Type};

    impl Type<Postgres> for Bound {
        fn type_info() -> PgTypeInfo {
            <i64 as Type<Postgres>>::type_info()
        }

        fn compatible(ty: &PgTypeInfo) -> bool {
            <i64 as Type<Postgres>>::compatible(ty)
                || <NaiveDate as Type<Postgres>>::compatible(ty)
                || <NaiveDateTime as Type<Postgres>>::compatible(ty)
        }
    }

    impl Encode<'_, Postgres> for Bound {
        fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
            match self {
                Self::Integer(v) => <i64 as Encode<'_, Postgres>>::encode_by_ref(v, buf),
                Self::Date(d) => <NaiveDate as Encode<'_, Postgres>>::encode_by_ref(d, buf),
                Self::Timestamp(t) => {
                    <NaiveDateTime as Encode<'_, Postgres>>::encode_by_ref(t, buf)
                }
            }
        }

        fn produces(&self) -> Option<PgTypeInfo> {
            Some(match self {
                Self::Integer(_) => <i64 as Type<Postgres>>::type_info(),
                Self::Date(_) => <NaiveDate as Type<Postgres>>::type_info(),
                Self::Timestamp(_) => <NaiveDateTime as Type<Postgres>>::type_info(),
            })
        }
    }
}
