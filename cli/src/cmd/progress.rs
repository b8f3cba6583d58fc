//! One progress bar style for every long command: what is done of what,
//! the elapsed time, the rate and the time left.

use indicatif::{ProgressBar, ProgressState, ProgressStyle};

/// A bar of `len` steps named `unit` (e.g. "results", "steps"), drawn on
/// stderr: `[=====>    ] 120/500 results  00:00:03  40/s  ETA 10s  msg`.
/// Print through [`ProgressBar::suspend`] (or `println` on it) so that
/// lines go above the bar, not across it.
pub fn bar(len: u64, unit: &str) -> ProgressBar {
    let template = format!(
        "[{{bar:30}}] {{pos}}/{{len}} {unit}  {{elapsed_precise}}  {{rate}}  ETA {{eta}}  {{msg}}"
    );
    ProgressBar::new(len).with_style(
        ProgressStyle::with_template(&template)
            .expect("a valid template")
            .with_key(
                "rate",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.1}/s", state.per_sec());
                },
            )
            .progress_chars("=> "),
    )
}

/// A bar of `total` bytes: the same style, in bytes.
pub fn bytes(total: u64) -> ProgressBar {
    ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "[{bar:30}] {bytes}/{total_bytes}  {elapsed_precise}  {bytes_per_sec}  ETA {eta}  {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    )
}
