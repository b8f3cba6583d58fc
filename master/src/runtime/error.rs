//! Errors of jobs.

use crate::client::ClientError;
use skelpi_proto::JobId;
use thiserror::Error;

/// A kernel call that failed on an agent.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error(
    "{}task {task} ({kernel}) failed on agent {agent}: {message}",
    job.map(|j| format!("job {j}: ")).unwrap_or_default()
)]
pub struct TaskError {
    /// The job, when it ran on agents: the agents' journals carry it as
    /// `SKELPI_JOB`.
    pub job: Option<JobId>,
    /// Which task: the item's index in the job input, with the part or
    /// round inside nested skeletons (`item 3`, `item 3 part 1`).
    pub task: String,
    /// The kernel that failed.
    pub kernel: String,
    /// The agent it ran on (name and address).
    pub agent: String,
    /// The kernel's or agent's explanation.
    pub message: String,
    /// The kernel panicked.
    pub panicked: bool,
}

/// Why a job failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum JobError {
    /// A task failed; the cluster remains usable.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// An agent connection failed.
    #[error(transparent)]
    Agent(#[from] ClientError),
    /// The pool has no live agent.
    #[error("no agent is left to run tasks on")]
    NoAgents,
    /// The job was stopped before this part of it finished.
    #[error("the job was cancelled")]
    Cancelled,
    /// The skeleton cannot run on these inputs.
    #[error("invalid job: {0}")]
    Invalid(String),
    /// The tree names kernels that no agent of the pool offers (or that
    /// no single agent offers all of).
    #[error(
        "{}{}: {}",
        if kernels.len() == 1 {
            format!("no agent of the pool offers kernel {}", kernels[0])
        } else {
            format!("no agent offers all of {}", kernels.join(", "))
        },
        match suggestion {
            Some(s) => format!(" (did you mean {s}?)"),
            None => String::new(),
        },
        offered.join("; ")
    )]
    NoKernel {
        /// The kernels.
        kernels: Vec<String>,
        /// What the agents offer, agents that offer the same kernels
        /// together (`a and b offer k1, k2`).
        offered: Vec<String>,
        /// An offered kernel whose name is close to the one missing.
        suggestion: Option<String>,
    },
    /// A managed job's tree or options are not what a manager can run.
    #[error("cannot manage this job: {0}")]
    Unmanageable(String),
    /// A task was lost with every agent it was sent to, more times than
    /// it is sent again: it may be what kills them.
    #[error(
        "task {task} ({kernel}) was lost with {} agents in turn ({}); it is not sent again",
        agents.len(),
        agents.join(", ")
    )]
    Lost {
        /// Which task (e.g. `item 3 part 1`).
        task: String,
        /// Its kernel.
        kernel: String,
        /// The agents lost while running it, in order.
        agents: Vec<String>,
    },
    /// Nothing moved for the job's stall timeout while its agents still
    /// beat: where each part stood.
    #[error("the job stalled: {0}")]
    Stalled(Box<super::stall::Stall>),
    /// A streamed pipeline lost agents more times than it starts again.
    #[error(
        "the pipeline started again {restarts} times and lost agents again \
         ({}), with item {item} unfinished: {why}",
        agents.join(", ")
    )]
    Restarts {
        /// Times it started again.
        restarts: usize,
        /// The first item whose result was missing.
        item: u64,
        /// The agents lost, in order.
        agents: Vec<String>,
        /// What stopped the last run.
        why: String,
    },
}

impl JobError {
    /// A feedback body that did not turn one item into one.
    pub(super) fn feedback_count(body: &impl std::fmt::Display, got: usize) -> JobError {
        JobError::Invalid(format!(
            "feedback body {body} gave {got} items for one; it must give exactly one"
        ))
    }

    /// A feedback loop that hit its bound.
    pub(super) fn feedback_endless(
        origin: &str,
        max_rounds: u32,
        body: &impl std::fmt::Display,
        until: &impl std::fmt::Display,
    ) -> JobError {
        JobError::Invalid(format!(
            "{origin} still loops after {max_rounds} rounds of feedback({body}, {until})"
        ))
    }
}
