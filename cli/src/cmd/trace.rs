//! `skelpi trace summarize FILE`, and the trace output of `run` and
//! `bench`.

use anyhow::Context;
use clap::Subcommand;
use skelpi::trace::{self, Analysis, Trace, TraceError};
use std::path::{Path, PathBuf};

/// What to do with a saved trace.
#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Print the analysis of a trace written by `skelpi run --trace` or
    /// `skelpi bench --trace` (its trace.json): per node compute vs
    /// communication vs idle, per stage Ts, Ta and rho, tasks per worker,
    /// and the bottleneck.
    Summarize {
        /// The trace.json file.
        #[arg(value_name = "TRACE.json")]
        file: PathBuf,
        /// Print the analysis as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a trace command.
pub fn run(command: &TraceCommand) -> anyhow::Result<()> {
    match command {
        TraceCommand::Summarize { file, json } => {
            let trace = trace::read_file(file)?;
            let analysis = Analysis::of(&trace);
            if *json {
                println!("{}", serde_json::to_string_pretty(&analysis)?);
            } else {
                print!("{analysis}");
            }
            Ok(())
        }
    }
}

/// Writes a job's trace and analysis into `dir` and says where, with the
/// bottleneck line; `what` names the job in messages.
pub fn save(
    trace: Option<Result<Trace, TraceError>>,
    dir: &Path,
    what: &str,
) -> anyhow::Result<()> {
    let trace = trace
        .with_context(|| format!("{what} ran no traced job"))?
        .with_context(|| format!("no trace of {what}"))?;
    let analysis = trace::write_dir(&trace, dir)?;
    eprintln!(
        "trace of {what} ({} events) written to {} (open trace.json in https://ui.perfetto.dev); \
         analysis in analysis.txt:",
        trace.events.len(),
        dir.display()
    );
    eprintln!("  {}", analysis.verdict);
    for note in &analysis.notes {
        eprintln!("  note: {note}");
    }
    Ok(())
}
