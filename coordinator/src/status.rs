//! `backfill status RUN [--json]`: batches by state, rows, failures with their
//! errors, an ETA, and the budget used.

use crate::error::Result;
use backfill_shared::control::batches::{self, Counts, Failure};
use backfill_shared::control::{log, runs};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Serialize)]
pub struct BreachStatus {
    #[serde(flatten)]
    pub breach: backfill_shared::checks::Breach,
    pub accepted: bool,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub run_id: Uuid,
    pub name: String,
    pub target: String,
    pub state: String,
    pub halt_reason: Option<String>,
    /// Since when the `pause_when` guard holds new batches, if it does.
    pub throttled_since: Option<chrono::DateTime<chrono::Utc>>,
    pub batches: Counts,
    pub batch_count: u32,
    pub failures: Vec<Failure>,
    /// What the batches' bounds are, for a time column: `UTC`, `no time zone`.
    pub bounds_zone: Option<&'static str>,
    /// Limits batches broke, with whether an operator accepted each.
    pub breaches: Vec<BreachStatus>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Seconds until every batch is applied, at the pace so far.
    pub eta_seconds: Option<i64>,
    /// The same as a range: the remaining batches at the mean duration of a
    /// batch less and plus its spread, at the concurrency so far; it always
    /// holds `eta_seconds`.
    pub eta_range_seconds: Option<(i64, i64)>,
    /// Why there is no ETA while the run is not finished: it is not moving
    /// (halted, paused, at its canary, held by the load guard, no worker).
    pub eta_withheld: Option<String>,
    pub brief_hash: String,
    pub code_version: String,
    pub operator: String,
    /// Said by the driving coordinator while batches wait and no worker consumes them.
    pub no_workers: Option<String>,
    /// `limits.budget` and what the run has used of it; `None` without a budget.
    pub budget: Option<BudgetStatus>,
    /// `limits.canary`: its batches and what they showed; `None` without one.
    pub canary: Option<crate::canary::Figures>,
}

/// A run's budget: its caps and what it has used.
#[derive(Debug, Serialize)]
pub struct BudgetStatus {
    pub caps: backfill_shared::brief::Budget,
    pub rows_written: i64,
    /// Warehouse seconds: the applied batches' apply durations, summed.
    pub batch_seconds: f64,
    pub elapsed_seconds: f64,
    /// Elapsed plus the remainder at the pace so far, once there is a pace.
    pub projected_seconds: Option<f64>,
}

/// Seconds until the `remaining` batches are applied, at the pace of the
/// `applied` ones over the time the run `worked`; `None` before there is a pace
/// or after the last batch.
#[must_use]
pub fn eta(worked: chrono::Duration, applied: i64, remaining: i64) -> Option<i64> {
    (applied > 0 && remaining > 0).then(|| worked.num_seconds().max(1) * remaining / applied)
}

/// The ETA ([`eta`]) and its range: the `remaining` batches at the mean
/// duration of the `applied` ones (`applied_ms` in all) less and plus
/// `spread_ms`, at the concurrency so far, widened to hold the ETA itself.
#[must_use]
pub fn estimate(
    worked: chrono::Duration,
    applied: i64,
    remaining: i64,
    applied_ms: i64,
    spread_ms: i64,
) -> (Option<i64>, Option<(i64, i64)>) {
    let Some(eta) = eta(worked, applied, remaining) else {
        return (None, None);
    };
    let elapsed_ms = worked.num_milliseconds().max(1) as f64;
    // Batches applied side by side, on average, so far.
    let concurrency = applied_ms as f64 / elapsed_ms;
    let mean = applied_ms as f64 / applied as f64;
    let spread = spread_ms as f64;
    let range = (concurrency > 0.0 && mean > 0.0).then(|| {
        let at = |per_batch: f64| {
            (remaining as f64 * per_batch.max(0.0) / concurrency / 1000.0).round() as i64
        };
        (at(mean - spread).min(eta), at(mean + spread).max(eta))
    });
    (Some(eta), range)
}

/// Why a run that is not finished has no ETA: it is not moving (halted,
/// paused, at its canary, held by the load guard, no worker taking its
/// batches); `None` for a run that moves, or is finished. `status`, `list`,
/// the console and the API all ask this.
#[must_use]
pub fn withheld(
    state: runs::RunState,
    finished: bool,
    no_workers: bool,
    throttled_since: Option<chrono::DateTime<chrono::Utc>>,
    reviewer: &str,
) -> Option<String> {
    if finished {
        return None;
    }
    match state {
        runs::RunState::Running if no_workers => Some("no worker is taking its batches".to_owned()),
        runs::RunState::Running => throttled_since
            .map(|since| format!("held by pause_when since {}", since.format("%H:%M:%S UTC"))),
        runs::RunState::Canary => Some(format!(
            "waiting at its canary for {reviewer} to promote it"
        )),
        other => Some(format!("{other}")),
    }
}

pub async fn status(pool: &PgPool, run_id: Uuid) -> Result<Status> {
    let run = runs::load(pool, run_id).await?;
    let counts = batches::counts(pool, run_id).await?;
    let failures = batches::failures(pool, run_id).await?;
    let bounds_zone = crate::catalog::bounds_zone(
        pool,
        &run.brief.scope.target,
        &run.brief.scope.batch_by.column,
    )
    .await?;
    let remaining = counts.total() - counts.applied;
    let throttled_since = run.throttled_since;
    // Time the run ran: standing halted, paused or at its canary is not its pace.
    let worked = run.active_time(chrono::Utc::now());
    // The coordinator's latest word on workers, while the run still needs them.
    let no_workers = if run.state == runs::RunState::Running {
        log::latest_of(pool, run_id, &["no_workers", "workers_back"])
            .await?
            .filter(|e| e.event == "no_workers")
            .and_then(|e| e.detail["advice"].as_str().map(str::to_owned))
    } else {
        None
    };
    let eta_withheld = withheld(
        run.state,
        run.finished_at.is_some(),
        no_workers.is_some(),
        throttled_since,
        &run.brief.meta.reviewer,
    );
    let (eta_seconds, eta_range_seconds) = if run.finished_at.is_none() && eta_withheld.is_none() {
        estimate(
            worked,
            counts.applied,
            remaining,
            counts.applied_ms,
            counts.applied_ms_spread,
        )
    } else {
        (None, None)
    };
    let caps = run.brief.limits.budget;
    let budget = (!caps.is_empty()).then(|| {
        let used = backfill_shared::checks::BudgetUse {
            rows_written: counts.rows.inserted + counts.rows.updated + counts.rows.deleted,
            batch_seconds: counts.applied_ms as f64 / 1000.0,
            elapsed_seconds: run
                .working_time(run.finished_at.unwrap_or_else(chrono::Utc::now))
                .as_seconds_f64(),
            applied: usize::try_from(counts.applied).unwrap_or(0),
            total: usize::try_from(counts.total()).unwrap_or(0),
        };
        BudgetStatus {
            caps,
            rows_written: used.rows_written,
            batch_seconds: used.batch_seconds,
            elapsed_seconds: used.elapsed_seconds,
            projected_seconds: used.projected_seconds(),
        }
    });
    let canary = crate::canary::figures(pool, &run).await?;
    Ok(Status {
        canary,
        budget,
        no_workers,
        run_id,
        name: run.brief.meta.name.clone(),
        target: run.brief.scope.target.to_string(),
        state: run.state.to_string(),
        // Why it halted, while it is halted: a resumed run holds no more.
        halt_reason: run
            .halt_reason
            .filter(|_| run.state == runs::RunState::Halted),
        throttled_since,
        batches: counts,
        batch_count: run.batch_count,
        failures,
        bounds_zone,
        breaches: crate::resume::breaches(pool, run_id)
            .await?
            .into_iter()
            .map(|(breach, accepted)| BreachStatus { breach, accepted })
            .collect(),
        created_at: run.created_at,
        finished_at: run.finished_at,
        eta_seconds,
        eta_range_seconds,
        eta_withheld,
        brief_hash: run.brief_hash,
        code_version: run.code_version,
        operator: run.operator,
    })
}

impl Status {
    #[must_use]
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let c = &self.batches;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Run {} ({} on {}): {}",
            self.run_id,
            self.name,
            self.target,
            self.state.to_uppercase()
        );
        if let Some(since) = self.throttled_since {
            let _ = writeln!(
                s,
                "  throttled: pause_when holds new batches since {}",
                since.format("%H:%M:%S UTC")
            );
        }
        if let Some(advice) = &self.no_workers {
            let _ = writeln!(s, "  WARNING:  {advice}");
        }
        if let Some(reason) = &self.halt_reason {
            let _ = writeln!(s, "  halted:   {reason}");
        }
        let _ = writeln!(
            s,
            "  batches:  {} applied, {} running, {} queued, {} pending, {} failed (of {})",
            c.applied, c.running, c.queued, c.pending, c.failed, self.batch_count
        );
        let _ = writeln!(
            s,
            "  rows:     {} from source, {} inserted, {} updated, {} deleted",
            c.rows.source, c.rows.inserted, c.rows.updated, c.rows.deleted
        );
        let _ = writeln!(
            s,
            "  started:  {}  by {} ({})",
            self.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
            self.operator,
            self.code_version
        );
        match (self.finished_at, self.eta_seconds) {
            (Some(f), _) => {
                let _ = writeln!(s, "  finished: {}", f.format("%Y-%m-%d %H:%M:%S UTC"));
            }
            (None, Some(eta)) => {
                let range = self.eta_range_seconds.map_or_else(String::new, |(lo, hi)| {
                    format!(" (batch durations vary: {lo}–{hi} s)")
                });
                let _ = writeln!(s, "  eta:      ~{eta} s{range}");
            }
            (None, None) => {
                if let Some(why) = &self.eta_withheld {
                    let _ = writeln!(s, "  eta:      none while {why}");
                }
            }
        }
        if let Some(b) = &self.budget {
            let mut parts = Vec::new();
            if let Some(cap) = b.caps.rows {
                parts.push(format!("rows {} of {cap}", b.rows_written));
            }
            if let Some(cap) = b.caps.batch_seconds {
                parts.push(format!("warehouse {:.0} s of {cap} s", b.batch_seconds));
            }
            if let Some(cap) = b.caps.duration_seconds {
                parts.push(match b.projected_seconds {
                    Some(p) => format!(
                        "time {:.0} s elapsed, ~{p:.0} s projected, of {cap} s",
                        b.elapsed_seconds
                    ),
                    None => format!("time {:.0} s elapsed of {cap} s", b.elapsed_seconds),
                });
            }
            let _ = writeln!(s, "  budget:   {}", parts.join("; "));
        }
        if let Some(canary) = &self.canary {
            s.push_str(&canary.render());
        }
        if !self.breaches.is_empty() {
            let _ = writeln!(s, "  limits breached:");
            for b in &self.breaches {
                let _ = writeln!(
                    s,
                    "    {} [{}]{}",
                    b.breach.message,
                    b.breach.limit,
                    if b.accepted { " (accepted)" } else { "" }
                );
            }
        }
        if !self.failures.is_empty() {
            let _ = writeln!(s, "  failures:");
            let zone = self
                .bounds_zone
                .map_or_else(String::new, |z| format!(" {z}"));
            for f in &self.failures {
                let _ = writeln!(
                    s,
                    "    batch {} [{}, {}){zone} {} after {} attempt(s): {}",
                    f.batch_no, f.lo, f.hi, f.state, f.attempts, f.last_error
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    proptest::proptest! {
        /// Whatever the ledger's figures, the ETA lies within its range.
        #[test]
        fn the_eta_is_always_inside_its_range(
            worked_ms in 0_i64..10_000_000,
            applied in 0_i64..100_000,
            remaining in 0_i64..100_000,
            applied_ms in 0_i64..1_000_000_000,
            spread_ms in 0_i64..1_000_000,
        ) {
            let worked = chrono::Duration::milliseconds(worked_ms);
            let (eta, range) = super::estimate(worked, applied, remaining, applied_ms, spread_ms);
            proptest::prop_assert_eq!(eta.is_some(), applied > 0 && remaining > 0);
            if let (Some(eta), Some((lo, hi))) = (eta, range) {
                proptest::prop_assert!(lo <= eta && eta <= hi, "{} not in {}..{}", eta, lo, hi);
                proptest::prop_assert!(lo >= 0);
            }
            if eta.is_none() {
                proptest::prop_assert!(range.is_none());
            }
        }
    }

    proptest::proptest! {
        /// Only a running run that moves has an ETA: any other state, a
        /// finished run, no worker or the load guard withholds it, saying why.
        #[test]
        fn only_a_moving_run_has_an_eta(
            state in proptest::sample::select(backfill_shared::control::runs::RunState::ALL.to_vec()),
            finished: bool,
            no_workers: bool,
            throttled: bool,
        ) {
            use backfill_shared::control::runs::RunState;
            let since = throttled.then(chrono::Utc::now);
            let why = super::withheld(state, finished, no_workers, since, "bob");
            let moving = state == RunState::Running && !no_workers && !throttled;
            proptest::prop_assert_eq!(why.is_none(), finished || moving, "{:?}", why);
            if state == RunState::Canary && !finished {
                proptest::prop_assert!(why.unwrap_or_default().contains("bob"));
            }
        }
    }

    #[test]
    fn the_eta_is_the_remaining_batches_at_the_pace_so_far() {
        let worked = chrono::Duration::seconds(60);
        assert_eq!(super::eta(worked, 20, 40), Some(120));
        assert_eq!(super::eta(worked, 0, 40), None, "no pace yet");
        assert_eq!(super::eta(worked, 60, 0), None, "nothing left");
        assert_eq!(super::eta(chrono::Duration::zero(), 1, 1), Some(1));
    }
}
