//! The run's progress bar on the terminal (hidden when not wanted).

use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;

pub(super) fn progress_bar(enabled: bool, total: usize, done: usize) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} batches · {msg} · ETA {eta}",
    ) {
        bar.set_style(style);
    }
    bar.set_position(done as u64);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
