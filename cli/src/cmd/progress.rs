//! One progress bar style for every long command: what is done of what,
//! the elapsed time, the rate and the time left. Every bar is drawn through
//! one [`MultiProgress`], and the command's log lines (warnings) are
//! printed above the bars, not across them ([`init_logging`]).

use indicatif::{MultiProgress, ProgressBar, ProgressState, ProgressStyle};
use std::sync::LazyLock;

/// The bars of this process.
static BARS: LazyLock<MultiProgress> = LazyLock::new(MultiProgress::new);

/// Logs to stderr, each line printed above the progress bars: warnings,
/// but the embedded agents' (`--local`) only when they are errors; with
/// `verbose` 1 everything at info, 2 at debug; `RUST_LOG` overrides.
/// Later calls, and loggers installed after it (an embedded agent's),
/// change nothing.
pub fn init_logging(verbose: u8) {
    let (level, agents) = match verbose {
        0 => (log::LevelFilter::Warn, log::LevelFilter::Error),
        1 => (log::LevelFilter::Info, log::LevelFilter::Info),
        _ => (log::LevelFilter::Debug, log::LevelFilter::Debug),
    };
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level);
    // RUST_LOG, when set, says it all.
    if std::env::var_os("RUST_LOG").is_none() {
        builder
            .filter_module("skelpi_agent", agents)
            .filter_module("skelpi_kernels", agents);
    }
    let logger = builder
        .parse_default_env()
        .target(env_logger::Target::Stderr)
        .build();
    let max = logger.filter();
    if indicatif_log_bridge::LogWrapper::new(BARS.clone(), logger)
        .try_init()
        .is_ok()
    {
        log::set_max_level(max);
    }
}

/// A bar of `len` steps named `unit` (e.g. "results", "steps"), drawn on
/// stderr: `[=====>    ] 120/500 results  00:00:03  40/s  ETA 10s  msg`.
/// Print through [`ProgressBar::suspend`] (or `println` on it) so that
/// lines go above the bar, not across it.
pub fn bar(len: u64, unit: &str) -> ProgressBar {
    let template = format!(
        "[{{bar:30}}] {{pos}}/{{len}} {unit}  {{elapsed_precise}}  {{rate}}  ETA {{eta}}  {{msg}}"
    );
    BARS.add(ProgressBar::new(len)).with_style(
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
    BARS.add(ProgressBar::new(total)).with_style(
        ProgressStyle::with_template(
            "[{bar:30}] {bytes}/{total_bytes}  {elapsed_precise}  {bytes_per_sec}  ETA {eta}  {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    )
}
