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

use crate::kernels::{Array, KernelError};
use crate::state::AgentState;
use crate::workers::{Tag, Traced};
use futures_lite::future;
use skelpi_proto::code::{StageSwap, StageSwapped};
use skelpi_proto::text::{MESSAGE_MAX, clip, quoted};
use skelpi_proto::trace::TraceKind;
use skelpi_proto::{
    ErrorCode, ErrorReply, Hello, JobId, Message, StageFailed, StageOpen, StageStats, StreamItem,
    StreamRef,
};
use skelpi_wire::handshake::{self, ConnectOptions};
use skelpi_wire::{Receiver, Sender, WireError};
use smol::lock::Mutex;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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
struct EndJob<'a>(&'a crate::kernels::Registry, JobId);

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
    let Link {
        conn,
        plaintext,
        heartbeat,
    } = link;
    let (stream, stage) = (open.stream, open.stage);
    let report = |msg: Message| async move {
        let _ = control.lock().await.send(&msg).await;
    };
    // The stream id is the job's id (see `JobId`).
    let job = JobId(stream);
    // However the stage ends (finished, failed, or dropped with its
    // session), its job has ended here: its ports' programs are stopped.
    let ended = EndJob(&config.kernels, job);
    let refuse = |code: ErrorCode, message: String| {
        let message = clip(&message, MESSAGE_MAX).into_owned();
        log::warn!(skelpi_job:% = job; "job {job}: stage {stage} refused: {message}");
        report(Message::Error(ErrorReply { code, message }))
    };
    let mut kernel = match config.kernels.find_unblocked(&open.kernel).await {
        Ok(k) => k,
        Err(why) => {
            let what = format!("agent {}: {why}", config.info.name);
            return refuse(ErrorCode::BadRequest, what).await;
        }
    };
    let mut args = open.args.clone();
    if open.trace {
        config.workers.recorder().prepare();
    }
    let (input, registration) = match config.streams.register(stream, stage, open.trace) {
        Ok(r) => r,
        Err(what) => return refuse(ErrorCode::BadRequest, what).await,
    };
    let inbox = input.items;
    let counts = &input.counts;
    let (mut next_tx, mut next_rx, out_stage) = match &open.next {
        None => (None, None, stage.saturating_add(1)),
        Some(n) => match connect(config, &n.addr, plaintext, heartbeat).await {
            Ok((tx, rx)) => (Some(tx), Some(rx), n.stage),
            Err(e) => {
                let what = format!("cannot reach stage {} at {}: {e}", n.stage, n.addr);
                return refuse(ErrorCode::LinkLost, what).await;
            }
        },
    };
    log::info!(
        skelpi_job:% = job;
        "job {job}: stage {stage} runs {}{}, sending to {}",
        open.kernel,
        quoted(&format!("{:?}", open.args)),
        open.next.as_ref().map_or("the master", |n| n.addr.as_str())
    );
    report(Message::StageReady(StreamRef { stream, stage })).await;
    let (mut items, mut busy) = (0u64, Duration::ZERO);
    let (mut first, mut last) = (None, None);
    // Computing and forwarding overlap: item k+1 runs on a worker while
    // item k travels to the next stage. At most two results wait between.
    let (out_tx, out_rx) = async_channel::bounded::<(u64, Array)>(2);
    // Whether computing reached the end of the stage's input (its inbox
    // closed with no cut): only then does the end of the stream follow
    // the last result. (When forwarding failed first, it closed the inbox
    // itself; the stage then reports that failure, and sends no end.)
    let ran_all = std::cell::Cell::new(false);
    let compute = async {
        // The index the next item will have, once one was seen.
        let mut next_index = 0;
        loop {
            // A swap waiting goes first: it applies from the next item.
            let next = future::or(async { Err(swaps.recv().await) }, async {
                Ok(inbox.recv().await)
            })
            .await;
            let item = match next {
                Ok(Ok(item)) => item,
                Ok(Err(_)) => match input.cut.get() {
                    None => break,
                    Some(why) => {
                        let from = stage.saturating_sub(1);
                        return Some(Message::Error(ErrorReply {
                            code: ErrorCode::InputLost,
                            message: format!(
                                "stage {stage} lost its input from stage {from} \
                                 (item {next_index} was next): {why}"
                            ),
                        }));
                    }
                },
                Err(Ok(swap)) => {
                    let found = if inbox.is_closed() && inbox.is_empty() {
                        Err(KernelError(format!("stage {stage} has run all its items")))
                    } else {
                        config.kernels.find_unblocked(&swap.kernel).await
                    };
                    let refused = match found {
                        Ok(k) => {
                            log::info!(
                                skelpi_job:% = job;
                                "job {job}: stage {stage} runs {}{} from item {next_index}",
                                swap.kernel,
                                quoted(&format!("{:?}", swap.args))
                            );
                            kernel = k;
                            args = swap.args;
                            None
                        }
                        Err(why) => {
                            let why = format!("agent {}: {why}", config.info.name);
                            Some(clip(&why, MESSAGE_MAX).into_owned())
                        }
                    };
                    let swapped = StageSwapped {
                        id: swap.id,
                        stream,
                        stage,
                        from: next_index,
                        refused,
                    };
                    report(Message::StageSwapped(swapped)).await;
                    continue;
                }
                // The swaps' sender lives in the session that owns this
                // stage: closed only as the session ends, which drops the
                // stage with it.
                Err(Err(_)) => future::pending().await,
            };
            next_index = item.index + 1;
            first.get_or_insert(item.arrived);
            last = Some(item.arrived);
            let started = Instant::now();
            let tag = Tag {
                id: item.index,
                job,
                trace: open.trace.then_some(Traced {
                    stage,
                    since: item.arrived,
                }),
                deadline: None,
            };
            let outcome = config
                .workers
                .call(tag, kernel.clone(), args.clone(), item.data)
                .await;
            busy += started.elapsed();
            items += 1;
            counts.ran();
            match outcome {
                Ok(out) => {
                    if out_tx.send((item.index, out)).await.is_err() {
                        return None;
                    }
                }
                Err(f) => {
                    log::warn!(
                        skelpi_job:% = job;
                        "job {job}: stage {stage} failed on item {}: {}",
                        item.index,
                        f.message
                    );
                    return Some(Message::StageFailed(StageFailed {
                        stream,
                        stage,
                        index: item.index,
                        error: f.message,
                        panicked: f.panicked,
                    }));
                }
            }
        }
        ran_all.set(true);
        drop(out_tx);
        None
    };
    // The next stage's agent says nothing on this link but heartbeats,
    // unless it refuses an item or goes away; once this stage has sent
    // its end, that agent closes the link when it has read everything.
    // One read of the link runs from here to that close: it is never cut
    // off in the middle of a frame.
    let lingering = std::cell::Cell::new(false);
    let mut successor = std::pin::pin!(async {
        match next_rx.as_mut() {
            Some(rx) => Some(hear(rx, heartbeat, &lingering).await),
            None => future::pending().await,
        }
    });
    let forward = async {
        let link_failed = |what: String| {
            Some(Message::Error(ErrorReply {
                code: ErrorCode::LinkLost,
                message: format!("stage {stage} lost its link to stage {out_stage}: {what}"),
            }))
        };
        let recorder = config.workers.recorder();
        // The link to the next stage is a connection of its own in traces.
        let out_conn = if next_tx.is_some() {
            recorder.new_conn()
        } else {
            conn
        };
        let send_all = async {
            while let Ok((index, out)) = out_rx.recv().await {
                let head = Message::StreamItem(StreamItem {
                    stream,
                    stage: out_stage,
                    index,
                });
                let (started, sent, bytes) = match next_tx.as_mut() {
                    Some(tx) => {
                        let started = Instant::now();
                        let sent = tx.send_bulk(&head, out.shape, &out.data).await;
                        (started, sent, tx.last_frame_len())
                    }
                    None => {
                        let mut tx = control.lock().await;
                        let started = Instant::now();
                        let sent = tx.send_bulk(&head, out.shape, &out.data).await;
                        (started, sent, tx.last_frame_len())
                    }
                };
                if open.trace {
                    let kind = TraceKind::ItemSend;
                    recorder.frame(job, kind, out_conn, index, out_stage, started, bytes);
                }
                match sent {
                    Ok(()) => counts.passed_on(),
                    Err(e) if e.is_link() => return link_failed(e.to_string()),
                    // What was sent is at fault (e.g. larger than a frame):
                    // as deterministic as a kernel error.
                    Err(e) => {
                        log::warn!(
                            skelpi_job:% = job;
                            "job {job}: stage {stage} cannot send item {index}: {e}"
                        );
                        return Some(Message::StageFailed(StageFailed {
                            stream,
                            stage,
                            index,
                            error: format!("its result cannot be sent: {e}"),
                            panicked: false,
                        }));
                    }
                }
            }
            if !ran_all.get() {
                // The stage failed: it says so itself, and its successor
                // must not take the stream for complete.
                return None;
            }
            // The end follows the last item.
            let end = Message::StreamEnd(StreamRef {
                stream,
                stage: out_stage,
            });
            let sent = match next_tx.as_mut() {
                Some(tx) => tx.send(&end).await,
                None => control.lock().await.send(&end).await,
            };
            sent.err().and_then(|e| link_failed(e.to_string()))
        };
        let watch = async {
            match successor.as_mut().await {
                Some(Heard::Said(Message::Error(e))) => link_failed(e.message),
                Some(Heard::Said(other)) => link_failed(format!("it sent {}", other.kind_name())),
                Some(Heard::Ended(e)) => link_failed(e.to_string()),
                Some(Heard::Silent(quiet)) => link_failed(format!(
                    "its agent is silent for {quiet:.1?} (a heartbeat was due every \
                     {heartbeat:?})"
                )),
                None => future::pending().await,
            }
        };
        let failed = future::or(send_all, watch).await;
        if failed.is_some() {
            // Stop computing: nothing more can be passed on.
            inbox.close();
            out_rx.close();
        }
        failed
    };
    let (computed, forwarded) = future::zip(compute, forward).await;
    if let Some(failed) = computed.or(forwarded) {
        if let Message::Error(e) = &failed {
            log::warn!(skelpi_job:% = job; "job {job}: {}", e.message);
        }
        return report(failed).await;
    }
    if let Some(tx) = next_tx.as_mut() {
        tx.close();
    }
    let span = match (first, last) {
        (Some(a), Some(b)) => b - a,
        _ => Duration::ZERO,
    };
    log::info!(
        skelpi_job:% = job;
        "job {job}: stage {stage} done: {items} items, busy {busy:.2?} of {span:.2?}"
    );
    report(Message::StageStats(StageStats {
        stream,
        stage,
        items,
        busy_ns: busy.as_nanos().try_into().unwrap_or(u64::MAX),
        span_ns: span.as_nanos().try_into().unwrap_or(u64::MAX),
    }))
    .await;
    // Lingering, the stage holds nothing: its inbox and its job go.
    drop((registration, ended));
    if open.next.is_some() {
        linger(successor, &lingering, job, stage).await;
    }
}

/// What the next stage's agent did on the link to it.
enum Heard {
    /// It sent this (an error: it refused an item).
    Said(Message),
    /// The link ended (closed by that agent, or failed).
    Ended(WireError),
    /// It fell silent for this long, four beats or more.
    Silent(Duration),
}

/// Reads the link from the next stage's agent (`rx`) until it says
/// something, ends, or falls silent; once `lingering`, what it says is
/// passed over.
async fn hear(rx: &mut Receiver, heartbeat: Duration, lingering: &std::cell::Cell<bool>) -> Heard {
    let liveness = rx.liveness();
    let mut scratch = Vec::new();
    let heard = async {
        loop {
            match rx.recv(&mut scratch).await {
                // Only a refused item's error can come: it was reported.
                Ok(r) if lingering.get() => {
                    log::debug!("the next stage's agent said {}", r.msg.kind_name());
                }
                Ok(r) => return Heard::Said(r.msg),
                Err(e) => return Heard::Ended(e),
            }
        }
    };
    let silent = async {
        liveness.silent_past(heartbeat).await;
        Heard::Silent(liveness.silent_for())
    };
    future::or(heard, silent).await
}

/// Keeps the link to the next stage open, after this stage sent its last
/// item and the end and shut its own direction, until the next stage's
/// agent closes it — which it does once it has read everything, the end
/// last — or falls silent for four beats: `successor` goes on reading it.
///
/// Closing first would lose items: the next stage reads this link only as
/// fast as its inbox drains, so much of what was sent may still wait in
/// its socket buffers, and a socket closed here answers the next
/// heartbeat it sends with a reset, on which the operating system
/// discards them.
async fn linger(
    successor: std::pin::Pin<&mut impl Future<Output = Option<Heard>>>,
    lingering: &std::cell::Cell<bool>,
    job: JobId,
    stage: u32,
) {
    lingering.set(true);
    if let Some(Heard::Silent(quiet)) = successor.await {
        log::warn!(
            skelpi_job:% = job;
            "job {job}: stage {stage}'s successor fell silent for {quiet:.1?} before \
             taking all its items"
        );
    }
}

/// Opens an authenticated connection to the next stage's agent at `addr`
/// (an address, never a name to resolve) and greets it, asking for a
/// heartbeat every `heartbeat` (zero: none), so that an agent that turns
/// the connection away is known before any item is sent.
async fn connect(
    config: &AgentState,
    addr: &str,
    plaintext: bool,
    heartbeat: Duration,
) -> Result<(Sender, Receiver), String> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an address (ip:port)"))?;
    let limit = Duration::from_secs(10);
    let stream = skelpi_wire::dial(addr, limit)
        .await
        .map_err(|e| e.to_string())?;
    let opts = ConnectOptions {
        plaintext,
        ..Default::default()
    };
    let est = handshake::connect(stream, &config.key, &opts)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, mut receiver) = (est.sender, est.receiver);
    let hello = Message::Hello(Hello {
        master: format!("stage link from agent {}", config.info.name),
        heartbeat_ms: heartbeat.as_millis().try_into().unwrap_or(u32::MAX),
    });
    sender.send(&hello).await.map_err(|e| e.to_string())?;
    let mut scratch = Vec::new();
    let answer = skelpi_wire::within(limit, receiver.recv(&mut scratch))
        .await
        .transpose()
        .map_err(|e| e.to_string())?;
    match answer.map(|r| r.msg) {
        Some(Message::Welcome(_)) => Ok((sender, receiver)),
        Some(Message::Error(e)) => Err(e.message),
        Some(other) => Err(format!("it answered hello with {}", other.kind_name())),
        None => Err(format!("no answer to hello within {limit:?}")),
    }
}
