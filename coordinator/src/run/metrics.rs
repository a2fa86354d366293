//! Run progress as Prometheus gauges, for `backfill run|follow|resume|retry
//! --metrics-addr`: refreshed from the ledger at every reconcile.

use backfill_shared::control::batches::Counts;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use uuid::Uuid;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Held {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    run_id: String,
}

/// The gauges of the run this coordinator drives.
#[derive(Debug, Default)]
pub struct RunMetrics {
    batches: Family<State, Gauge>,
    rows_written: Gauge,
    held: Family<Held, Gauge>,
    driving: Family<RunLabels, Gauge>,
}

impl RunMetrics {
    /// A registry holding these gauges (shared, not copied).
    #[must_use]
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("backfill_run");
        registry.register(
            "batches",
            "Batches of the run by ledger state",
            self.batches.clone(),
        );
        registry.register(
            "rows_written",
            "Rows inserted, updated and deleted so far",
            self.rows_written.clone(),
        );
        registry.register(
            "held",
            "1 while no new batch starts because the run is paused or throttled",
            self.held.clone(),
        );
        registry.register(
            "driving",
            "1 while this coordinator drives the run",
            self.driving.clone(),
        );
        registry
    }

    pub(super) fn attached(&self, run_id: Uuid) {
        self.driving
            .get_or_create(&RunLabels {
                run_id: run_id.to_string(),
            })
            .set(1);
    }

    pub(super) fn update(&self, counts: &Counts, paused: bool, throttled: bool) {
        for (state, n) in [
            ("pending", counts.pending),
            ("queued", counts.queued),
            ("running", counts.running),
            ("applied", counts.applied),
            ("failed", counts.failed),
        ] {
            self.batches.get_or_create(&State { state }).set(n);
        }
        self.rows_written
            .set(counts.rows.inserted + counts.rows.updated + counts.rows.deleted);
        self.held
            .get_or_create(&Held { reason: "paused" })
            .set(i64::from(paused));
        self.held
            .get_or_create(&Held {
                reason: "throttled",
            })
            .set(i64::from(throttled));
    }
}
