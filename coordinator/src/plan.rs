//! `backfill plan BRIEF`: what a run would do, without doing it — batches, bounds,
//! estimated rows, the write strategy, and the blast radius.

use crate::error::{CliError, Result};
use crate::preflight::{self, Dependent, Preflight};
use backfill_shared::brief::{BatchRange, Brief};
use backfill_shared::checks::Unmatched;
use serde::Serialize;
use sqlx::PgPool;

#[derive(Debug, Serialize)]
pub struct Plan {
    pub name: String,
    pub target: String,
    pub strategy: String,
    pub on_missing: String,
    pub snapshot: bool,
    pub batch_by: String,
    pub batches: usize,
    pub first: (String, String),
    pub last: (String, String),
    pub estimated_rows_per_batch: Option<i64>,
    pub estimated_rows_total: Option<i64>,
    pub target_rows: i64,
    pub max_in_flight: u32,
    /// The source run on sampled batches: target rows it would leave unmatched.
    pub unmatched: UnmatchedEstimate,
    pub dependents: Vec<Dependent>,
    /// Declared in the brief but not found in the catalog (dashboards, exports...).
    pub declared_outside_catalog: Vec<String>,
    pub stakeholders: Vec<String>,
}

/// Target rows the source would not reproduce, from the sampled batches and
/// extrapolated to the scope.
#[derive(Debug, Serialize)]
pub struct UnmatchedEstimate {
    pub sampled_batches: usize,
    /// Unmatched rows and the rows of the sampled ranges.
    pub rows: i64,
    pub range_rows: i64,
    pub pct: f64,
    /// Extrapolated to every batch: unmatched rows and rows in scope.
    pub estimated_rows: i64,
    pub estimated_scope_rows: i64,
    /// "removed", or "left stale" under `on_missing = "keep"`.
    pub fate: &'static str,
    pub limit_pct: f64,
}

impl UnmatchedEstimate {
    /// Sums the sampled batches and refuses, naming them, those past the limit.
    fn from_samples(
        brief: &Brief,
        batches: usize,
        sampled: &[(BatchRange, Unmatched)],
    ) -> Result<Self> {
        let limit = brief.validation.max_unmatched_pct;
        let fate = Unmatched::fate(brief);
        let over: Vec<String> = sampled
            .iter()
            .filter(|(_, u)| u.rows > 0 && u.pct() > limit)
            .map(|(b, u)| {
                format!(
                    "  [{}, {}): {}",
                    b.lo,
                    b.hi,
                    u.describe_as(brief, "would be")
                )
            })
            .collect();
        if !over.is_empty() {
            return Err(CliError::BadInput(format!(
                "the source leaves more than validation.max_unmatched_pct = {limit}% of a batch's target rows without a counterpart ({fate}), in {} of {} sampled batches:\n{}\n\
                 Fix the source, narrow the backfill with scope.where, or raise validation.max_unmatched_pct if losing these rows is the point.",
                over.len(),
                sampled.len(),
                over.join("\n")
            )));
        }
        let rows: i64 = sampled.iter().map(|(_, u)| u.rows).sum();
        let range_rows: i64 = sampled.iter().map(|(_, u)| u.range_rows).sum();
        let share = |v: i64| {
            let n = sampled.len().max(1) as f64;
            (v as f64 / n * batches as f64).round() as i64
        };
        Ok(Self {
            sampled_batches: sampled.len(),
            rows,
            range_rows,
            pct: if range_rows > 0 {
                rows as f64 / range_rows as f64 * 100.0
            } else {
                0.0
            },
            estimated_rows: share(rows),
            estimated_scope_rows: share(range_rows),
            fate,
            limit_pct: limit,
        })
    }
}

/// Lints the brief against the warehouse and plans its batches.
pub async fn plan(pool: &PgPool, brief: &Brief) -> Result<(Plan, Vec<BatchRange>, Preflight)> {
    let preflight = preflight::check(pool, brief).await?;
    let batches = brief.scope.batch_by.plan().map_err(CliError::BadInput)?;
    let (Some(first), Some(last)) = (batches.first(), batches.last()) else {
        return Err(CliError::BadInput(
            "scope.batch_by: the plan has no batches".into(),
        ));
    };
    let per_batch = preflight.first_batch_rows.or_else(|| {
        i64::try_from(batches.len())
            .ok()
            .map(|n| preflight.target_rows / n.max(1))
    });
    let n = i64::try_from(batches.len()).unwrap_or(i64::MAX);
    let total = brief
        .scope
        .expected_rows
        .and_then(|r| i64::try_from(r).ok())
        .or_else(|| per_batch.map(|p| p.saturating_mul(n)));
    let sampled = crate::sample::sampled_batches(pool, brief, &batches).await?;
    let unmatched = UnmatchedEstimate::from_samples(brief, batches.len(), &sampled)?;
    let found: Vec<String> = preflight
        .dependents
        .iter()
        .map(|d| d.name.clone())
        .collect();
    let declared_outside_catalog = brief
        .dependencies
        .downstream
        .iter()
        .filter(|d| {
            let normalized = backfill_shared::sql::TableName::parse(d).map(|t| t.to_string());
            !normalized.is_some_and(|n| found.contains(&n))
        })
        .cloned()
        .collect();
    let plan = Plan {
        name: brief.meta.name.clone(),
        target: brief.scope.target.to_string(),
        strategy: brief.write.strategy.to_string(),
        on_missing: brief.write.on_missing.to_string(),
        snapshot: brief.write.snapshot,
        batch_by: brief.scope.batch_by.column.clone(),
        batches: batches.len(),
        first: (first.lo.to_string(), first.hi.to_string()),
        last: (last.lo.to_string(), last.hi.to_string()),
        estimated_rows_per_batch: per_batch,
        estimated_rows_total: total,
        target_rows: preflight.target_rows,
        max_in_flight: brief.limits.max_in_flight,
        unmatched,
        dependents: preflight.dependents.clone(),
        declared_outside_catalog,
        stakeholders: brief.dependencies.stakeholders.clone(),
    };
    Ok((plan, batches, preflight))
}

impl Plan {
    /// The human-readable form printed by `backfill plan`.
    #[must_use]
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let est = |v: Option<i64>| v.map_or_else(|| "unknown".to_owned(), |v| format!("~{v}"));
        let _ = writeln!(s, "Backfill {} on {}", self.name, self.target);
        let _ = writeln!(
            s,
            "  write:    {} (on_missing = {}, before-images {})",
            self.strategy,
            self.on_missing,
            if self.snapshot {
                "on"
            } else {
                "OFF: no rollback"
            }
        );
        let _ = writeln!(
            s,
            "  batches:  {} by {}, at most {} in flight",
            self.batches, self.batch_by, self.max_in_flight
        );
        let _ = writeln!(s, "  first:    [{}, {})", self.first.0, self.first.1);
        let _ = writeln!(s, "  last:     [{}, {})", self.last.0, self.last.1);
        let _ = writeln!(
            s,
            "  rows:     {} per batch, {} in total (target holds ~{})",
            est(self.estimated_rows_per_batch),
            est(self.estimated_rows_total),
            self.target_rows
        );
        let u = &self.unmatched;
        let _ = writeln!(
            s,
            "  unmatched: {} of {} target rows ({:.2}%) in {} sampled batches have no counterpart in the source; \
             ~{} of ~{} rows in scope would be {} (limit {}% per batch)",
            u.rows,
            u.range_rows,
            u.pct,
            u.sampled_batches,
            u.estimated_rows,
            u.estimated_scope_rows,
            u.fate,
            u.limit_pct
        );
        let _ = writeln!(s, "Blast radius:");
        if self.dependents.is_empty() {
            let _ = writeln!(
                s,
                "  nothing in the catalog reads or references {}",
                self.target
            );
        }
        for d in &self.dependents {
            let _ = writeln!(
                s,
                "  {:<40} {:<28} {}{}",
                d.name,
                d.kind,
                if d.depth > 1 {
                    format!("via {} hops, ", d.depth)
                } else {
                    String::new()
                },
                if d.declared {
                    "declared"
                } else {
                    "NOT DECLARED in dependencies.downstream"
                }
            );
        }
        for d in &self.declared_outside_catalog {
            let _ = writeln!(s, "  {d:<40} {:<28} declared (outside the catalog)", "");
        }
        let _ = writeln!(
            s,
            "  stakeholders: {}",
            if self.stakeholders.is_empty() {
                "none named".into()
            } else {
                self.stakeholders.join(", ")
            }
        );
        s
    }
}
