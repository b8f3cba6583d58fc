//! Traces of skeleton jobs: the Inviso successor.
//!
//! When a job is traced, the master and every agent record events —
//! frames sent and received (with their bytes), kernel calls (with their
//! queue wait) — on their own clocks ([`Recorder`] here,
//! `skelpi_agent::trace` on the agents). Around the job the master reads
//! each agent's clock a few times ([`clock`]), collects the agents' events
//! at its end, and [`merge`]s everything onto its own time base, corrected
//! so that no message is received before it was sent. The merged
//! [`Trace`] is written as Chrome Trace Event JSON ([`chrome`], opens in
//! Perfetto) and analysed ([`analysis`]): compute vs communication vs idle
//! per node, Ts, Ta and rho per stage, tasks per worker, the bottleneck.

pub mod analysis;
pub mod chrome;
pub mod clock;
mod collect;
pub mod merge;

pub use analysis::Analysis;
pub use clock::{ClockSample, MasterClock};
pub use collect::{AgentEvents, AgentTrace, Collected, NO_LABEL, Recorder, gather, probe};
pub use merge::{Event, Mark, Node, Trace};

use std::path::{Path, PathBuf};
use thiserror::Error;

/// Tracing went wrong.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TraceError {
    /// The job stopped before its trace could be collected.
    #[error("the job stopped before its trace could be collected")]
    Stopped,
    /// An agent could not be probed or asked for its events.
    #[error("cannot trace agent {agent}: {source}")]
    Agent {
        /// The agent.
        agent: String,
        /// The cause.
        #[source]
        source: crate::client::ClientError,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A trace file is not one this tool wrote.
    #[error("{path} is not a skelpi trace: {what}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// Writes `trace.json`, `analysis.txt` and `analysis.json` into `dir`
/// (created if missing); returns the analysis.
pub fn write_dir(trace: &Trace, dir: &Path) -> Result<Analysis, TraceError> {
    let file = |name: &str| dir.join(name);
    let io = |path: PathBuf| move |source| TraceError::File { path, source };
    std::fs::create_dir_all(dir).map_err(io(dir.to_owned()))?;
    let analysis = Analysis::of(trace);
    std::fs::write(file("trace.json"), chrome::to_json(trace)).map_err(io(file("trace.json")))?;
    std::fs::write(file("analysis.txt"), analysis.to_string()).map_err(io(file("analysis.txt")))?;
    let json = serde_json::to_string_pretty(&analysis).expect("analysis serialises");
    std::fs::write(file("analysis.json"), json + "\n").map_err(io(file("analysis.json")))?;
    Ok(analysis)
}

/// Trace files larger than this are refused (a traced job writes far less:
/// its agents hold at most a few hundred thousand events).
pub const MAX_TRACE_FILE: u64 = 1 << 30;

/// Reads a `trace.json` written by [`write_dir`].
pub fn read_file(path: &Path) -> Result<Trace, TraceError> {
    let io = |source| TraceError::File {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_TRACE_FILE {
        return Err(TraceError::Format {
            path: path.to_owned(),
            what: format!("{len} bytes, more than any trace skelpi writes ({MAX_TRACE_FILE})"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    chrome::from_json(&text).map_err(|what| TraceError::Format {
        path: path.to_owned(),
        what,
    })
}
