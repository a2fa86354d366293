//! A small run of the benchmark program, so it cannot rot: every case runs end
//! to end and lands in the table. Its figures are not judged here (the machine
//! is shared and noisy); `cargo bench -p backfill-tests --bench backfill` is
//! where they mean something.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_tests::bench::{self, Cases, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_benchmark_runs_every_case() {
    let report = bench::run(&Options {
        scale: 0.01,
        batches: 8,
        workers: 2,
        empty_batches: 300,
        empty_concurrency: 4,
        plan_batches: 20_000,
        repeat: 1,
        cases: Cases::All,
    })
    .await;
    let table = report.render();
    println!("{table}");
    for case in [
        "(a) baseline",
        "(b) Backfill",
        "(c) Backfill",
        "(d) orchestration",
        "(e) worker",
        "(g) plan's row estimate",
        "(g) plan's time estimate",
        "(f) 20000 batches: recorded",
        "(f) `backfill status`",
        "(f) coordinator",
        "(h) validation fingerprint",
        "(i) baseline",
        "(i) Backfill partition-overwrite, one batch per partition",
        "(i) Backfill partition-overwrite, half-year batches",
        "(j) diff of the run",
        "(j) diff of two line-item tables",
        "(k) console: the page of a 20000-batch run",
        "(l) swap, target locked, no live writes",
        "(l) swap with ",
    ] {
        let line = report
            .lines
            .iter()
            .find(|l| l.case.starts_with(case))
            .unwrap_or_else(|| panic!("no line {case:?} in\n{table}"));
        // A share off an estimate may be exactly 0; every other figure is positive.
        assert!(
            line.value.is_finite() && (line.value > 0.0 || line.unit == "% off"),
            "{case}: {} {}",
            line.value,
            line.unit
        );
        assert!(table.contains(&line.case), "{table}");
    }
    assert_eq!(report.batches, 8, "{table}");
}
