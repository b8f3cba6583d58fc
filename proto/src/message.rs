//! The typed messages of the protocol.
//!
//! On the wire every message is one CBOR array of three items:
//! `[kind, body, bulk]` — a small unsigned kind number, the body as a CBOR
//! map (serde), and either null or a typed `f64` array (see [`crate::bulk`]).

use crate::code::{ModulePush, ModuleStored, StageSwap, StageSwapped};
use crate::deploy::{DeployChunk, DeployOffer, DeployRef, DeployStaged};
use crate::trace::{ClockReading, TraceBatch, TraceRequest};
use crate::{AgentInfo, JobId};
use serde::{Deserialize, Serialize};

/// A protocol message. Bulk arrays travel beside it, not inside it: see
/// [`crate::codec`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Message {
    /// Master → agent, first message after the secure handshake.
    Hello(Hello),
    /// Agent → master, the reply to [`Message::Hello`].
    Welcome(AgentInfo),
    /// Either side: are you there? Answered with [`Message::Pong`].
    Ping(Ping),
    /// The answer to a [`Message::Ping`], with the same nonce.
    Pong(Ping),
    /// Master → agent: one chunk of an array for the echo role. Carries bulk.
    Echo(Chunk),
    /// Agent → master: the echoed chunk. Carries bulk.
    EchoReply(Chunk),
    /// Either side: a request failed; the connection stays usable.
    Error(ErrorReply),
    /// Either side: I am closing this connection on purpose.
    Bye,
    /// Master → agent: open a one-shot raw TCP echo socket for this master,
    /// the baseline that benchmarks compare skelpi with on the same agent.
    RawEchoOpen,
    /// Agent → master: the raw echo socket listens on this port; it accepts
    /// one connection from this master's address that opens with the token,
    /// for this session only.
    RawEchoReady(RawEchoReady),
    /// Master → agent: run a kernel on the array that comes with it.
    /// Carries bulk (the input).
    Task(TaskHead),
    /// Agent → master: a task's result. Carries bulk (the output).
    TaskDone(TaskDone),
    /// Agent → master: a task failed (kernel error, panic, unknown kernel).
    TaskFailed(TaskFailed),
    /// Master → agent, on a connection dedicated to it: run a pipeline
    /// stage, sending its results to the next stage's agent (or back on
    /// this connection for the last stage).
    StageOpen(StageOpen),
    /// Agent → master: the stage is registered and connected to its next
    /// stage; items may flow.
    StageReady(StreamRef),
    /// Into a stage (from the master or the previous stage's agent), or out
    /// of the last stage to the master. Carries bulk (the item).
    StreamItem(StreamItem),
    /// No more items for that stage.
    StreamEnd(StreamRef),
    /// Agent → master: a stage's kernel failed on an item; the stage stops.
    StageFailed(StageFailed),
    /// Agent → master, after the stage forwarded its end of stream: what
    /// the stage measured.
    StageStats(StageStats),
    /// Master → agent: read your trace clock now. Answered with
    /// [`Message::ClockReading`] at once.
    ClockProbe(Ping),
    /// Agent → master: its trace clock when it handled the probe.
    ClockReading(ClockReading),
    /// Master → agent: send what was recorded for a traced job. Answered
    /// with one or more [`Message::TraceBatch`]es, the last one marked.
    TraceCollect(TraceRequest),
    /// Agent → master: recorded events of a job.
    TraceBatch(TraceBatch),
    /// Agent → master, every [`Hello::heartbeat_ms`]: still here. Receivers
    /// take it as a sign of life and pass it to no one.
    Heartbeat,
    /// Master → agent: store a WebAssembly module. Answered with
    /// [`Message::ModuleStored`] or an error.
    ModulePush(ModulePush),
    /// Agent → master: the module is stored; its kernels.
    ModuleStored(ModuleStored),
    /// Master → agent, on a stage's connection: replace the stage's kernel
    /// between two items. Answered with [`Message::StageSwapped`] or an
    /// error.
    StageSwap(StageSwap),
    /// Agent → master: the first item the stage's new kernel runs on.
    StageSwapped(StageSwapped),
    /// Master → agent, on any connection: how far has this stage of a
    /// stream running here got? Answered with [`Message::StageProgress`]
    /// (or an error if it does not run here). A master asks when its
    /// pipeline has made no progress for a while, to say where it stands.
    StageQuery(StreamRef),
    /// Agent → master: a stage's counts so far.
    StageProgress(StageProgress),
    /// Master → agent: a new binary for this agent, its signed manifest
    /// (see [`crate::deploy`]). Answered with [`Message::DeployAccepted`]
    /// or an error.
    DeployOffer(DeployOffer),
    /// Agent → master: send the binary's chunks.
    DeployAccepted,
    /// Master → agent: bytes of the offered binary.
    DeployChunk(DeployChunk),
    /// Master → agent: that was the whole binary; check it. Answered with
    /// [`Message::DeployStaged`] or an error.
    DeployFinish,
    /// Agent → master: the binary passed every check.
    DeployStaged(DeployStaged),
    /// Master → agent: restart into the staged binary. Answered with
    /// [`Message::DeployRestarting`], after which the agent closes every
    /// connection and restarts.
    DeployRestart,
    /// Agent → master: restarting now.
    DeployRestarting,
    /// Master → agent: the binary on trial passed the master's check; keep
    /// it. Answered with [`Message::DeployCommitted`] or an error.
    DeployCommit(DeployRef),
    /// Agent → master: the binary on trial is the current one now.
    DeployCommitted,
    /// Master → agent: how is the board? Answered with
    /// [`Message::Health`].
    HealthQuery,
    /// Agent → master: its board's health.
    Health(Box<crate::health::HealthReport>),
    /// Master → agent: the binary on trial failed the master's check: go
    /// back to the one before. Answered with [`Message::DeployRestarting`]
    /// (or an error), after which the agent restarts.
    DeployAbort(DeployRef),
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A pipeline stage to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageOpen {
    /// The pipeline, a number chosen by the master.
    pub stream: u64,
    /// This stage's position, from 0.
    pub stage: u32,
    /// Kernel name.
    pub kernel: String,
    /// Kernel arguments.
    pub args: Vec<f64>,
    /// Where results go; `None`: back to the master on this connection.
    pub next: Option<StageNext>,
    /// Record trace events for this stage (absent: no).
    #[serde(default, skip_serializing_if = "is_false")]
    pub trace: bool,
}

/// The stage after this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageNext {
    /// Its agent's address, `host:port`.
    pub addr: String,
    /// Its position.
    pub stage: u32,
}

/// A stage of a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRef {
    /// The pipeline.
    pub stream: u64,
    /// The stage.
    pub stage: u32,
}

/// One item of a pipeline's stream, addressed to a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamItem {
    /// The pipeline.
    pub stream: u64,
    /// The stage it goes to (one past the last: the master).
    pub stage: u32,
    /// Its position in the pipeline's input.
    pub index: u64,
}

/// A stage's kernel failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageFailed {
    /// The pipeline.
    pub stream: u64,
    /// The stage.
    pub stage: u32,
    /// The item it failed on.
    pub index: u64,
    /// What went wrong, lower case.
    pub error: String,
    /// The kernel panicked.
    pub panicked: bool,
}

/// A stage's own measurements, on the agent's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageStats {
    /// The pipeline.
    pub stream: u64,
    /// The stage.
    pub stage: u32,
    /// Items it processed.
    pub items: u64,
    /// Time its kernel ran, all items together, nanoseconds.
    pub busy_ns: u64,
    /// From the first item's arrival to the last's, nanoseconds.
    pub span_ns: u64,
}

/// How far a stage has got: the answer to [`Message::StageQuery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageProgress {
    /// The pipeline.
    pub stream: u64,
    /// The stage.
    pub stage: u32,
    /// Items that came into its inbox.
    pub arrived: u64,
    /// Items its kernel has run.
    pub done: u64,
    /// Results it has passed on (to the next stage or the master).
    pub sent: u64,
    /// The end of its input has come.
    pub input_ended: bool,
    /// Its kernel's run time so far, summed, nanoseconds (absent from
    /// agents older than this field: then 0 with `done` > 0).
    #[serde(default)]
    pub busy_ns: u64,
}

/// A task: which kernel to run, with what arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskHead {
    /// Task id chosen by the master; the result carries it.
    pub id: u64,
    /// The job the task belongs to, for the agent's logs (absent from
    /// masters older than this field: then 0).
    #[serde(default)]
    pub job: JobId,
    /// Kernel name.
    pub kernel: String,
    /// Kernel arguments.
    pub args: Vec<f64>,
    /// Record trace events for this task (absent: no).
    #[serde(default, skip_serializing_if = "is_false")]
    pub trace: bool,
    /// Milliseconds the task may take from its arrival, queueing included
    /// (absent: no deadline). Past it the agent fails the task; a kernel
    /// that asks whether to go on stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u32>,
}

/// A finished task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDone {
    /// The task's id.
    pub id: u64,
    /// How long its kernel ran, nanoseconds (its service time without the
    /// wait in the agent's queue); absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_ns: Option<u64>,
}

/// A failed task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailed {
    /// The task's id.
    pub id: u64,
    /// What went wrong, lower case.
    pub error: String,
    /// The kernel panicked (rather than returning an error).
    pub panicked: bool,
    /// The task's WebAssembly module (its hash) is not stored on the agent
    /// (evicted from its cache, or never pushed): a master that has it may
    /// push it and send the task again. Absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_module: Option<String>,
}

/// Where the raw echo baseline listens, and the token that opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawEchoReady {
    /// TCP port on the agent's address.
    pub port: u16,
    /// 16 random bytes the master sends first on the raw socket; they
    /// travel to it only inside the authenticated session.
    pub token: [u8; 16],
}

/// The master's greeting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// A name for the master, for the agent's logs.
    pub master: String,
    /// Send a [`Message::Heartbeat`] this often, milliseconds (absent or 0:
    /// never), so that the master notices an agent that stopped answering.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub heartbeat_ms: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Ping payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Opaque value echoed back in the pong.
    pub nonce: u64,
}

/// Where a chunk of an array belongs.
///
/// Arrays larger than one frame travel as consecutive chunks; a chunk of a
/// matrix is a band of whole rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Request id chosen by the sender; replies carry the same id.
    pub id: u64,
    /// Index of this chunk's first element in the whole array.
    pub offset: u64,
    /// Elements in the whole array.
    pub total: u64,
}

/// What went wrong with a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Machine-readable category.
    pub code: ErrorCode,
    /// Human-readable explanation, lower case.
    pub message: String,
}

/// Categories of [`ErrorReply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The message was understood but is not valid here.
    BadRequest,
    /// The agent does not offer what was asked.
    Unsupported,
    /// The agent is shutting down.
    ShuttingDown,
    /// A pipeline stage lost its link to the next stage's agent (that
    /// agent is gone, silent, or unreachable).
    LinkLost,
    /// A pipeline stage's input, the link from the previous stage's agent,
    /// ended before the end of its stream (that agent is gone, or the
    /// path from it is broken).
    InputLost,
    /// A code from a newer peer.
    #[serde(other)]
    Unknown,
}

impl Message {
    /// The kind number written on the wire.
    pub fn kind(&self) -> u8 {
        match self {
            Message::Hello(_) => 1,
            Message::Welcome(_) => 2,
            Message::Ping(_) => 3,
            Message::Pong(_) => 4,
            Message::Echo(_) => 5,
            Message::EchoReply(_) => 6,
            Message::Error(_) => 7,
            Message::Bye => 8,
            Message::RawEchoOpen => 9,
            Message::RawEchoReady(_) => 10,
            Message::Task(_) => 11,
            Message::TaskDone(_) => 12,
            Message::TaskFailed(_) => 13,
            Message::StageOpen(_) => 14,
            Message::StageReady(_) => 15,
            Message::StreamItem(_) => 16,
            Message::StreamEnd(_) => 17,
            Message::StageFailed(_) => 18,
            Message::StageStats(_) => 19,
            Message::ClockProbe(_) => 20,
            Message::ClockReading(_) => 21,
            Message::TraceCollect(_) => 22,
            Message::TraceBatch(_) => 23,
            Message::Heartbeat => 24,
            Message::ModulePush(_) => 25,
            Message::ModuleStored(_) => 26,
            Message::StageSwap(_) => 27,
            Message::StageSwapped(_) => 28,
            Message::StageQuery(_) => 29,
            Message::StageProgress(_) => 30,
            Message::DeployOffer(_) => 31,
            Message::DeployAccepted => 32,
            Message::DeployChunk(_) => 33,
            Message::DeployFinish => 34,
            Message::DeployStaged(_) => 35,
            Message::DeployRestart => 36,
            Message::DeployRestarting => 37,
            Message::DeployCommit(_) => 38,
            Message::DeployCommitted => 39,
            Message::HealthQuery => 40,
            Message::Health(_) => 41,
            Message::DeployAbort(_) => 42,
        }
    }

    /// The kind's name, for errors and logs.
    pub fn kind_name(&self) -> &'static str {
        kind_name(self.kind().into())
    }

    /// Whether this kind of message carries a bulk array.
    pub fn carries_bulk(&self) -> bool {
        matches!(
            self,
            Message::Echo(_)
                | Message::EchoReply(_)
                | Message::Task(_)
                | Message::TaskDone(_)
                | Message::StreamItem(_)
        )
    }
}

/// Name of a kind number, `"unknown"` for numbers this version lacks.
pub fn kind_name(kind: u64) -> &'static str {
    match kind {
        1 => "hello",
        2 => "welcome",
        3 => "ping",
        4 => "pong",
        5 => "echo",
        6 => "echo-reply",
        7 => "error",
        8 => "bye",
        9 => "raw-echo-open",
        10 => "raw-echo-ready",
        11 => "task",
        12 => "task-done",
        13 => "task-failed",
        14 => "stage-open",
        15 => "stage-ready",
        16 => "stream-item",
        17 => "stream-end",
        18 => "stage-failed",
        19 => "stage-stats",
        20 => "clock-probe",
        21 => "clock-reading",
        22 => "trace-collect",
        23 => "trace-batch",
        24 => "heartbeat",
        25 => "module-push",
        26 => "module-stored",
        27 => "stage-swap",
        28 => "stage-swapped",
        29 => "stage-query",
        30 => "stage-progress",
        31 => "deploy-offer",
        32 => "deploy-accepted",
        33 => "deploy-chunk",
        34 => "deploy-finish",
        35 => "deploy-staged",
        36 => "deploy-restart",
        37 => "deploy-restarting",
        38 => "deploy-commit",
        39 => "deploy-committed",
        40 => "health-query",
        41 => "health",
        42 => "deploy-abort",
        _ => "unknown",
    }
}
