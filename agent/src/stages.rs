//! Pipeline stages that stream agent to agent, like the seed's stages that
//! hold their successor's pid.
//!
//! The master opens each stage on a connection dedicated to it
//! ([`skelpi_proto::StageOpen`]). A stage registers an inbox under
//! `(stream, stage)` in the agent's [`Streams`](crate::streams::Streams); items addressed to it
//! arrive on any authenticated connection — the master's for the first
//! stage, the previous stage's agent's for the others — and the session
//! that reads one waits while the inbox is full, so a slow stage slows its
//! producer through TCP. The stage runs its kernel on the worker threads
//! one item at a time, in order, sends each result to the next stage's
//! agent over its own authenticated connection (the last stage: back to the
//! master), then forwards the end of the stream and reports its
//! measurements to the master, and keeps its link to the next stage open,
//! reading, until that stage's agent has read everything and closes it
//! (closing first would lose the items still in its socket buffers). A
//! kernel failure is reported to the master as
//! [`skelpi_proto::StageFailed`], and no end of stream follows it; a link
//! that ends before the end of its stream cuts the next stage's input
//! ([`Streams::cut`](crate::streams::Streams::cut)), which then reports `InputLost`. When the master
//! closes the stage's connection, the stage is dropped with its session.
//!
//! # Implementation
//! [`run_stage`] holds what the stage owns (its inbox, its links, its
//! kernel) and runs its parts, which share a `Stage` (what it is, where
//! it reports, how far it got): `find_kernel` and `open` find the kernel,
//! register the inbox and connect to the next stage's agent (between the
//! two, `run_stage` itself prepares the trace recorder, which takes much
//! stack in debug builds: see the comment there); `compute` runs the kernel
//! on the items and applies swaps between them; `forward` sends the
//! results onward, with the end after them, while it watches the link to
//! the next stage (`successor`), which `linger` keeps reading at the end.

mod compute;
mod forward;
mod open;

use crate::kernels::Registry;
use crate::state::AgentState;
use compute::Measures;
use futures_lite::future;
use open::Opened;
use skelpi_proto::code::StageSwap;
use skelpi_proto::text::{MESSAGE_MAX, clip};
use skelpi_proto::{ErrorCode, ErrorReply, JobId, Message, StageOpen, StageStats};
use skelpi_wire::Sender;
use smol::lock::Mutex;
use std::cell::Cell;
use std::time::Duration;

/// How the session that opened a stage is linked to its master, and how
/// the stage links to its successor likewise.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// The session's number in traces.
    pub conn: u32,
    /// The transport the master chose (the successor's link uses it too).
    pub plaintext: bool,
    /// The heartbeat the master asked for (zero: none): the stage asks its
    /// successor's agent for it, and takes that agent for gone after four
    /// silent beats.
    pub heartbeat: Duration,
}

/// Tells the kernels that a job has ended here when dropped.
struct EndJob<'a>(&'a Registry, JobId);

impl Drop for EndJob<'_> {
    fn drop(&mut self) {
        self.0.end_job(self.1);
    }
}

/// Runs a stage opened on this session until its input ends, then
/// forwards the end and reports. `control` is the session's sender (to the
/// master); `swaps` are the master's kernel swaps, each applied between
/// two items and answered on `control`.
pub async fn run_stage(
    config: &AgentState,
    open: StageOpen,
    control: &Mutex<Sender>,
    link: Link,
    swaps: async_channel::Receiver<StageSwap>,
) {
    let stage = Stage::new(config, &open, control, link);
    // However the stage ends (finished, failed, or dropped with its
    // session), its job has ended here: its ports' programs are stopped.
    let ended = EndJob(&config.kernels, stage.job);
    let Some(kernel) = stage.find_kernel(&open.kernel).await else {
        return;
    };
    if open.trace {
        // Here, not in a deeper call: preparing builds the trace rings on
        // the stack (about 1.5 MB in debug builds), and the agent's thread
        // has 2 MiB for all of its sessions' polls.
        config.workers.recorder().prepare();
    }
    let Some(Opened {
        mut program,
        input,
        registration,
        next,
    }) = stage.open(&open, kernel).await
    else {
        return;
    };
    let (mut next_tx, mut next_rx) = next.unzip();
    let mut measures = Measures::default();
    // Computing and forwarding overlap: item k+1 runs on a worker while
    // item k travels to the next stage. At most two results wait between.
    let (out_tx, out_rx) = async_channel::bounded(2);
    // One read of the link to the next stage runs from here to its close:
    // it is never cut off in the middle of a frame.
    let mut successor = std::pin::pin!(stage.successor(next_rx.as_mut()));
    let compute = stage.compute(&input, &mut program, &swaps, out_tx, &mut measures);
    let forward = stage.forward(&input, &out_rx, next_tx.as_mut(), successor.as_mut());
    let (computed, forwarded) = future::zip(compute, forward).await;
    if let Some(failed) = computed.or(forwarded) {
        if let Message::Error(e) = &failed {
            log::warn!(skelpi_job:% = stage.job; "job {}: {}", stage.job, e.message);
        }
        return stage.report(failed).await;
    }
    if let Some(tx) = next_tx.as_mut() {
        tx.close();
    }
    stage.report_stats(&measures).await;
    // Lingering, the stage holds nothing: its inbox and its job go.
    drop((registration, ended));
    if open.next.is_some() {
        stage.linger(successor).await;
    }
}

/// A stage as its parts share it: what it is, where it reports, and how
/// far it got.
struct Stage<'a> {
    /// The agent's shared state: kernels, workers, streams.
    config: &'a AgentState,
    /// The session's sender, to the master.
    control: &'a Mutex<Sender>,
    /// How the session is linked to the master (and the successor's link
    /// likewise).
    link: Link,
    /// The stream the stage belongs to.
    stream: u64,
    /// Its place in the pipeline.
    stage: u32,
    /// The stream's job (the stream id is the job's id, see `JobId`).
    job: JobId,
    /// Whether the stream is traced.
    trace: bool,
    /// The stage its results are sent as: the next one's (one past the
    /// last for the master).
    out_stage: u32,
    /// Whether computing reached the end of the stage's input (its inbox
    /// closed with no cut): only then does the end of the stream follow
    /// the last result. (When forwarding failed first, it closed the inbox
    /// itself; the stage then reports that failure, and sends no end.)
    ran_all: Cell<bool>,
    /// Set once the stage has sent its end and only waits for the next
    /// stage's agent to close the link: what that agent says is passed
    /// over.
    lingering: Cell<bool>,
}

impl<'a> Stage<'a> {
    /// The stage `open` asks for, reporting on `control`.
    fn new(
        config: &'a AgentState,
        open: &StageOpen,
        control: &'a Mutex<Sender>,
        link: Link,
    ) -> Stage<'a> {
        let (stream, stage) = (open.stream, open.stage);
        Stage {
            config,
            control,
            link,
            stream,
            stage,
            job: JobId(stream),
            trace: open.trace,
            out_stage: open
                .next
                .as_ref()
                .map_or(stage.saturating_add(1), |n| n.stage),
            ran_all: Cell::new(false),
            lingering: Cell::new(false),
        }
    }

    /// Sends `msg` to the master (a failure to send is the session's to
    /// notice).
    async fn report(&self, msg: Message) {
        let _ = self.control.lock().await.send(&msg).await;
    }

    /// Tells the master the stage cannot run, and why.
    async fn refuse(&self, code: ErrorCode, message: String) {
        let (job, stage) = (self.job, self.stage);
        let message = clip(&message, MESSAGE_MAX).into_owned();
        log::warn!(skelpi_job:% = job; "job {job}: stage {stage} refused: {message}");
        self.report(Message::Error(ErrorReply { code, message }))
            .await
    }

    /// Logs what the stage measured and reports it to the master.
    async fn report_stats(&self, measures: &Measures) {
        let (job, stage) = (self.job, self.stage);
        let Measures {
            items,
            busy,
            first,
            last,
        } = *measures;
        let span = match (first, last) {
            (Some(a), Some(b)) => b - a,
            _ => Duration::ZERO,
        };
        log::info!(
            skelpi_job:% = job;
            "job {job}: stage {stage} done: {items} items, busy {busy:.2?} of {span:.2?}"
        );
        self.report(Message::StageStats(StageStats {
            stream: self.stream,
            stage,
            items,
            busy_ns: busy.as_nanos().try_into().unwrap_or(u64::MAX),
            span_ns: span.as_nanos().try_into().unwrap_or(u64::MAX),
        }))
        .await;
    }
}
