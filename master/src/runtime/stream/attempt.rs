//! One run of a streamed pipeline on one placement: open the stages, feed
//! the held items again and then new ones, read the results, and say how
//! it stopped — finished, lost an agent (start again elsewhere), or failed.

use super::progress::Probes;
use super::replay::Replay;
use super::swap::SwapState;
use super::{OPEN_TIMEOUT, Placement, READY_TIMEOUT, StageReport, StreamSpec};
use crate::client::{AgentConn, ClientError};
use crate::runtime::stall::{self, Look};
use crate::runtime::{JobError, TaskError};
use crate::trace::{self, ClockSample, Recorder, Trace, TraceError};
use futures_lite::future;
use skelpi_proto::Array;
use skelpi_proto::code::StageSwap;
use skelpi_proto::skeleton::{Kernel, Skeleton};
use skelpi_proto::trace::TraceKind;
use skelpi_proto::{
    ErrorCode, ErrorReply, JobId, Message, Shape, StageNext, StageOpen, StreamItem, StreamRef,
};
use skelpi_wire::WireError;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// How long the other parts may still report after the first one stopped:
/// an agent's death reaches the master on several connections.
const GRACE: Duration = Duration::from_millis(500);

/// How one part of a running stream stopped early.
#[derive(Debug)]
pub(super) enum PartStop {
    /// The agent at this address is gone: its connection ended or failed,
    /// or it fell silent for four heartbeats.
    Lost(SocketAddr, String, Instant),
    /// The link from stage `link` to stage `link + 1` broke, as the stage
    /// at its `upstream` end (which lost its output) or the other (which
    /// lost its input) saw it; `blame` is the agent at the far end from
    /// the stage that saw it: it is gone, or the path to it is broken.
    Link {
        link: usize,
        upstream: bool,
        blame: SocketAddr,
        why: String,
        at: Instant,
    },
    /// The job fails with this.
    Fail(JobError),
}

/// How a run stopped early.
#[derive(Debug)]
pub(super) enum Stop {
    /// Start again without these agents (address, why, when); `reports`
    /// are those of the stages that had finished.
    Restart {
        lost: Vec<(SocketAddr, String, Instant)>,
        why: String,
        reports: Vec<StageReport>,
    },
    /// The job fails with this.
    Fail(JobError),
}

/// One concurrent part of a running stream: the feed, or one stage's
/// listener (which ends with the stage's report).
type Part<'a> = Pin<Box<dyn Future<Output = Result<Option<StageReport>, PartStop>> + 'a>>;

/// What a finished run gives: the stages' reports, and its trace if traced.
pub(super) type Finished = (Vec<StageReport>, Option<Result<Trace, TraceError>>);

/// Runs the pipeline once on `placement` as stream `stream`: feeds the
/// items `replay` holds, then new ones from `inputs` while the window has
/// room, and hands each result due to `on_result`.
pub(super) async fn run<I: Iterator<Item = Array>>(
    spec: &StreamSpec<'_>,
    placement: &[Placement],
    stream: u64,
    traced: bool,
    (replay, swaps): (&RefCell<Replay>, &RefCell<SwapState>),
    inputs: &mut I,
    on_result: &mut impl FnMut(u64, Array),
) -> Result<Finished, Stop> {
    let n = spec.stages.len();
    // The stages' kernels now: swapped ones after a restart.
    let kernels = swaps.borrow().current().to_vec();
    let kernels = &kernels[..];
    let job = JobId(stream);
    let recorder_owned = traced.then(Recorder::new);
    let recorder = recorder_owned.as_ref();
    // Distinct agents, in order of first use, and each stage's agent.
    let mut agents: Vec<SocketAddr> = Vec::new();
    let peers: Vec<usize> = placement
        .iter()
        .map(|p| match agents.iter().position(|a| *a == p.addr) {
            Some(i) => i,
            None => {
                agents.push(p.addr);
                agents.len() - 1
            }
        })
        .collect();
    // Each agent's clock probes (inner `None`: it does not trace).
    let mut probes: Vec<Option<Option<Vec<ClockSample>>>> = vec![None; agents.len()];
    let opened = future::or(
        open(
            spec,
            kernels,
            placement,
            stream,
            recorder,
            &peers,
            &mut probes,
        ),
        async {
            async_io::Timer::after(OPEN_TIMEOUT).await;
            Err(PartStop::Fail(JobError::Invalid(format!(
                "the pipeline's stages did not open within {OPEN_TIMEOUT:?}"
            ))))
        },
    )
    .await;
    let mut conns = match opened {
        Ok(conns) => conns,
        Err(stop) => return Err(decide(vec![stop], Vec::new())),
    };
    let first = replay.borrow().done();
    log::debug!(
        "job {job}: {n} streamed stages open; feeding from item {first} ({} held)",
        replay.borrow().held()
    );

    // Items sent to stage 0 in this run; every stage must report that many.
    let fed = Cell::new(0u64);
    // Items of the stages that reported their end (the watchdog does not
    // ask those).
    let finished: Vec<Cell<Option<u64>>> = (0..n).map(|_| Cell::new(None)).collect();
    let finished = &finished;
    let fed = &fed;
    // A result taken makes room in the window: the feed may go on.
    let (room_tx, room_rx) = async_channel::bounded::<()>(1);
    let room_tx = &room_tx;
    // Closed when the first stage's listener ends: the feed stops serving
    // its swaps.
    let (first_done_tx, first_done_rx) = async_channel::bounded::<()>(1);
    let mut first_done_tx = Some(first_done_tx);
    let mut halves: Vec<_> = conns
        .iter_mut()
        .map(|c| (c.addr(), c.heartbeat(), c.halves()))
        .collect();
    let mut parts: Vec<Part<'_>> = Vec::new();
    let mut on_result = Some(on_result);
    let mut inputs = Some(inputs);
    for (i, (addr, (beat, liveness), (sender, receiver))) in halves.iter_mut().enumerate() {
        let addr = *addr;
        let lost = move |e: WireError| sent_or_lost(addr, e);
        // This stage's swaps.
        let stage_swaps = spec.swaps.and_then(|s| s.stages.get(i));
        let swap = move |kernel: Kernel| {
            let id = swaps.borrow_mut().sent(i, kernel.clone());
            Message::StageSwap(StageSwap {
                id,
                stream,
                stage: i as u32,
                kernel: kernel.name,
                args: kernel.args,
            })
        };
        let mut idle_sender = None;
        if let Some(inputs) = inputs.take() {
            let sender = &mut **sender;
            let room_rx = room_rx.clone();
            let first_done = first_done_rx.clone();
            let feed = async move {
                let mut due = Instant::now();
                let mut next = first;
                loop {
                    // Swaps of the first stage go between two items.
                    while let Some(kernel) = stage_swaps.and_then(|rx| rx.try_recv().ok()) {
                        sender.send(&swap(kernel)).await.map_err(lost)?;
                    }
                    let again = replay.borrow().get(next);
                    let data = match again {
                        Some(data) => data,
                        None => {
                            while !replay.borrow_mut().has_room() {
                                let _ = room_rx.recv().await;
                            }
                            let Some(input) = inputs.next() else { break };
                            let (index, data) = replay.borrow_mut().push(input);
                            debug_assert_eq!(index, next);
                            data
                        }
                    };
                    if let Some(every) = spec.interval {
                        async_io::Timer::at(due).await;
                        due = due.checked_add(every).unwrap_or(due);
                    }
                    let head = Message::StreamItem(StreamItem {
                        stream,
                        stage: 0,
                        index: next,
                    });
                    let started = Instant::now();
                    sender
                        .send_bulk(&head, data.shape, &data.data)
                        .await
                        .map_err(lost)?;
                    if let Some(rec) = recorder {
                        let bytes = sender.last_frame_len();
                        let kind = TraceKind::ItemSend;
                        rec.frame(kind, 0, next, 0, started, bytes, trace::NO_LABEL);
                    }
                    next += 1;
                    fed.set(fed.get() + 1);
                }
                let end = Message::StreamEnd(StreamRef { stream, stage: 0 });
                sender.send(&end).await.map_err(lost)?;
                // The stage may still have items to run: swaps go on
                // until it reports (its listener drops the sender).
                if let Some(rx) = stage_swaps {
                    loop {
                        let asked = future::or(async { rx.recv().await.ok() }, async {
                            let _ = first_done.recv().await;
                            None
                        });
                        match asked.await {
                            Some(kernel) => sender.send(&swap(kernel)).await.map_err(lost)?,
                            None => break,
                        }
                    }
                }
                Ok(None)
            };
            parts.push(Box::pin(feed));
        } else {
            idle_sender = Some(&mut **sender);
        }
        let results = if i + 1 == n { on_result.take() } else { None };
        let receiver = &mut **receiver;
        let kernel = &kernels[i];
        let agent = &placement[i].name;
        // Stage 0's listener holds this until it ends.
        let done_guard = if i == 0 { first_done_tx.take() } else { None };
        let listen = async move {
            let _done_guard = done_guard;
            let mut results = results;
            let mut ended = false;
            let mut data = Vec::new();
            loop {
                // Whatever fails in receiving, the agent is of no more use.
                let got = receiver
                    .recv(&mut data)
                    .await
                    .map_err(|e| PartStop::Lost(addr, e.to_string(), Instant::now()))?;
                match got.msg {
                    Message::StreamItem(item) if results.is_some() && item.stage == n as u32 => {
                        let taken = replay.borrow_mut().accept(item.index);
                        if let Err(o) = taken {
                            return Err(PartStop::Fail(JobError::Invalid(format!(
                                "the pipeline returned item {} where {} was due",
                                o.got, o.due
                            ))));
                        }
                        if replay.borrow().resumes() {
                            let _ = room_tx.try_send(());
                        }
                        if let Some(rec) = recorder {
                            let (at, bytes) = (got.started, got.frame_len);
                            let (kind, id, stage) = (TraceKind::ItemRecv, item.index, item.stage);
                            rec.frame(kind, i, id, stage, at, bytes, trace::NO_LABEL);
                        }
                        let shape = got.bulk.unwrap_or(Shape::List(0));
                        let out = Array {
                            shape,
                            data: std::mem::take(&mut data),
                        };
                        if let Some(f) = results.as_mut() {
                            f(item.index, out);
                        }
                    }
                    Message::StreamEnd(_) if results.is_some() => ended = true,
                    Message::StageSwapped(a) if a.stream == stream && a.stage == i as u32 => {
                        if let Err(what) = swaps.borrow_mut().answered(i, &a, first) {
                            let what = format!("{what} (on {agent})");
                            return Err(PartStop::Fail(JobError::Invalid(what)));
                        }
                    }
                    Message::StageFailed(f) => {
                        return Err(PartStop::Fail(
                            TaskError {
                                job: Some(job),
                                task: format!("item {}", f.index),
                                kernel: kernel.name.clone(),
                                agent: format!("{agent} ({addr})"),
                                message: f.error,
                                panicked: f.panicked,
                            }
                            .into(),
                        ));
                    }
                    Message::StageStats(s) => {
                        let all = fed.get();
                        let left = replay.borrow().held();
                        if s.items != all || (results.is_some() && (!ended || left != 0)) {
                            return Err(PartStop::Fail(JobError::Invalid(format!(
                                "stage {i} on {agent} ended after {} of {all} items \
                                 ({left} results missing)",
                                s.items
                            ))));
                        }
                        finished[i].set(Some(s.items));
                        return Ok(Some(StageReport {
                            stage: i,
                            kernel: swaps.borrow().current()[i].clone(),
                            swaps: Vec::new(),
                            agent: agent.clone(),
                            items: s.items,
                            busy: Duration::from_nanos(s.busy_ns),
                            span: Duration::from_nanos(s.span_ns),
                        }));
                    }
                    // Once open, a stage speaks up only when its link to
                    // the next one fails.
                    Message::Error(e) => return Err(stage_error(i, placement, e)),
                    other => {
                        return Err(PartStop::Fail(
                            ClientError::Protocol {
                                addr,
                                what: format!("{} from stage {i}", other.kind_name()),
                            }
                            .into(),
                        ));
                    }
                }
            }
        };
        let beat = *beat;
        let (liveness, heard) = (liveness.clone(), liveness.clone());
        let watch = async move {
            liveness.silent_past(beat).await;
            let what = format!(
                "silent for {:.1?} (a heartbeat was due every {beat:?}): declared down",
                liveness.silent_for()
            );
            Err(PartStop::Lost(addr, what, Instant::now()))
        };
        // The master beats on the connections it sends nothing else on
        // (all but the first stage's): an agent whose master falls silent
        // drops its stage. Not on the feed's — the agent reads that one
        // only as fast as its stage takes items. Swaps of these stages go
        // on them too.
        let beats = async move {
            let Some(sender) = idle_sender else {
                return future::pending().await;
            };
            // The first beat at once: the agent then knows this master
            // beats. Only to an agent that beats itself (it sends its
            // first beat on hello): an older one would refuse the frame.
            let mut due = (!beat.is_zero()).then(Instant::now);
            loop {
                // Once the swapper is gone, only beats.
                let asked = async {
                    if let Some(rx) = stage_swaps
                        && let Ok(kernel) = rx.recv().await
                    {
                        return Some(kernel);
                    }
                    future::pending().await
                };
                let timer = async {
                    match due {
                        Some(at) => async_io::Timer::at(at).await,
                        None => future::pending().await,
                    };
                    None
                };
                match future::or(asked, timer).await {
                    Some(kernel) => sender.send(&swap(kernel)).await.map_err(lost)?,
                    None => {
                        if heard.beats() > 0 {
                            sender.send(&Message::Heartbeat).await.map_err(lost)?;
                        }
                        due = due.map(|at| at.max(Instant::now()) + beat);
                    }
                }
            }
        };
        parts.push(Box::pin(future::or(listen, future::or(watch, beats))));
    }
    // Poll everything; the first stop ends the run (the connections close
    // when this returns, which stops every stage). An agent that dies makes
    // its neighbours complain too, over other connections: what arrives in
    // a short grace is weighed together.
    let mut reports = Vec::with_capacity(n);
    let questions = Probes::default();
    let stalled = async {
        let stalled = stall::watch(stall::paced(spec.stall, spec.interval), |from| {
            let totals = {
                let r = replay.borrow();
                (r.drawn(), r.done())
            };
            let questions = &questions;
            async move {
                // Results came: nothing to ask.
                let parts = if from.is_none_or(|from| from == totals) {
                    let on = (placement, kernels);
                    Some(questions.ask(spec, on, stream, finished).await)
                } else {
                    None
                };
                Look { totals, parts }
            }
        });
        Err(PartStop::Fail(stalled.await))
    };
    let outcome = future::or(poll_all(&mut parts, &mut reports), stalled).await;
    if let Err(first) = outcome {
        // A lost agent or a task error settles what happens; anything
        // else waits a little for one.
        let settles =
            |s: &PartStop| matches!(s, PartStop::Lost(..) | PartStop::Fail(JobError::Task(_)));
        let mut stops = vec![first];
        if !settles(&stops[0]) {
            let deadline = Instant::now() + GRACE;
            while !parts.is_empty() {
                let grace = async {
                    async_io::Timer::at(deadline).await;
                    Ok(())
                };
                match future::or(poll_all(&mut parts, &mut reports), grace).await {
                    Err(stop) => {
                        let settled = settles(&stop);
                        stops.push(stop);
                        if settled {
                            break;
                        }
                    }
                    Ok(()) => break,
                }
            }
        }
        reports.sort_by_key(|r| r.stage);
        return Err(decide(stops, reports));
    }
    drop(parts);
    drop(halves);
    let mut trace_out = None;
    if let Some(rec) = recorder_owned {
        // Each agent once, on the connection of its first stage (agents
        // are numbered in that order).
        let firsts: Vec<usize> = (0..agents.len())
            .filter_map(|a| peers.iter().position(|&p| p == a))
            .collect();
        let on = conns
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| firsts.contains(i))
            .map(|(_, c)| c);
        let before = probes.into_iter().map(Option::flatten).collect();
        let agents = trace::gather(on, before, rec.clock(), job).await;
        let names = kernels.iter().map(Kernel::to_string).collect();
        let tree = Skeleton::pipe(kernels.iter().cloned().map(Skeleton::seq)).to_string();
        trace_out = Some(Ok(trace::merge::merge(
            &rec.finish(job, tree, names, agents),
        )));
    }
    for c in conns {
        c.close().await;
    }
    reports.sort_by_key(|r| r.stage);
    Ok((reports, trace_out))
}

/// Connects to every stage's agent, opens the stages (each told where the
/// next one runs) and waits until all are ready.
async fn open(
    spec: &StreamSpec<'_>,
    kernels: &[Kernel],
    placement: &[Placement],
    stream: u64,
    recorder: Option<&Recorder>,
    peers: &[usize],
    probes: &mut [Option<Option<Vec<ClockSample>>>],
) -> Result<Vec<AgentConn>, PartStop> {
    let mut conns = Vec::with_capacity(placement.len());
    for (i, p) in placement.iter().enumerate() {
        let mut conn = AgentConn::connect(p.addr, spec.key, spec.opts)
            .await
            .map_err(|e| PartStop::Lost(p.addr, e.to_string(), Instant::now()))?;
        if let Some(rec) = recorder
            && probes[peers[i]].is_none()
        {
            let probed = trace::probe(&mut conn, rec.clock())
                .await
                .map_err(|e| PartStop::Fail(JobError::Invalid(e.to_string())))?;
            probes[peers[i]] = Some(probed);
        }
        let next = placement.get(i + 1).map(|q| StageNext {
            addr: q.addr.to_string(),
            stage: i as u32 + 1,
        });
        let open = Message::StageOpen(StageOpen {
            stream,
            stage: i as u32,
            kernel: kernels[i].name.clone(),
            args: kernels[i].args.clone(),
            next,
            trace: recorder.is_some(),
        });
        let (sender, _) = conn.halves();
        sender
            .send(&open)
            .await
            .map_err(|e| PartStop::Lost(p.addr, e.to_string(), Instant::now()))?;
        conns.push(conn);
    }
    let deadline = Instant::now() + READY_TIMEOUT;
    for (i, conn) in conns.iter_mut().enumerate() {
        let addr = conn.addr();
        let (_, receiver) = conn.halves();
        let mut scratch = Vec::new();
        let left = deadline.saturating_duration_since(Instant::now());
        let got = skelpi_wire::within(left, receiver.recv(&mut scratch)).await;
        let what = format!("stage {i} was not ready within {READY_TIMEOUT:?}");
        let got = got
            .ok_or_else(|| PartStop::Lost(addr, what, Instant::now()))?
            .map_err(|e| PartStop::Lost(addr, e.to_string(), Instant::now()))?;
        match got.msg {
            Message::StageReady(r) if r.stream == stream && r.stage == i as u32 => {}
            Message::Error(e) if e.code != ErrorCode::BadRequest => {
                return Err(stage_error(i, placement, e));
            }
            Message::Error(e) => {
                return Err(PartStop::Fail(JobError::Invalid(format!(
                    "stage {i} ({}) on {}: {}",
                    kernels[i], placement[i].name, e.message
                ))));
            }
            other => {
                return Err(PartStop::Fail(
                    ClientError::Protocol {
                        addr,
                        what: format!("{} while opening stage {i}", other.kind_name()),
                    }
                    .into(),
                ));
            }
        }
    }
    Ok(conns)
}

/// What an error from stage `i`'s agent means: its link to the next stage
/// broke (blame that stage's agent), its input from the previous stage
/// ended early (blame that one's), it is shutting down (lost), or the job
/// fails.
fn stage_error(i: usize, placement: &[Placement], e: ErrorReply) -> PartStop {
    let (addr, agent) = (placement[i].addr, &placement[i].name);
    let why = format!("stage {i} on {agent}: {}", e.message);
    let at = Instant::now();
    match e.code {
        ErrorCode::LinkLost => PartStop::Link {
            link: i,
            upstream: true,
            blame: placement.get(i + 1).map_or(addr, |p| p.addr),
            why,
            at,
        },
        // Only stages after the first have an input link (the first's is
        // this connection).
        ErrorCode::InputLost => PartStop::Link {
            link: i.saturating_sub(1),
            upstream: false,
            blame: placement[i.saturating_sub(1)].addr,
            why,
            at,
        },
        ErrorCode::ShuttingDown => PartStop::Lost(addr, why, Instant::now()),
        _ => PartStop::Fail(
            ClientError::Agent {
                addr,
                message: format!("stage {i}: {}", e.message),
            }
            .into(),
        ),
    }
}

/// What a failed send means: the connection failed (the agent is lost), or
/// what was sent is at fault (e.g. larger than a frame) and the job fails.
fn sent_or_lost(addr: SocketAddr, e: WireError) -> PartStop {
    if e.is_link() {
        PartStop::Lost(addr, e.to_string(), Instant::now())
    } else {
        PartStop::Fail(ClientError::Wire { addr, source: e }.into())
    }
}

/// Weighs the stops seen together: a task error fails the job (its input
/// would fail again); lost agents restart without them; any other error
/// fails the job; broken links alone restart without one agent (a
/// stage's successor's agent can fall silent to it before the master
/// notices): that of the first broken link — a stage whose input broke
/// ends its own output too, so the links after it break in turn — at the
/// far end from its upstream stage if that stage saw it, else from its
/// downstream one.
fn decide(stops: Vec<PartStop>, reports: Vec<StageReport>) -> Stop {
    let mut lost = Vec::new();
    let mut links = Vec::new();
    let mut fail = None;
    for stop in stops {
        match stop {
            PartStop::Fail(e @ JobError::Task(_)) => return Stop::Fail(e),
            PartStop::Lost(addr, why, at) => {
                if !lost.iter().any(|(a, _, _)| *a == addr) {
                    lost.push((addr, why, at));
                }
            }
            link @ PartStop::Link { .. } => links.push(link),
            PartStop::Fail(e) => {
                fail.get_or_insert(e);
            }
        }
    }
    let link_whys = links.iter().filter_map(|l| match l {
        PartStop::Link { why, .. } => Some(why.clone()),
        _ => None,
    });
    if !lost.is_empty() {
        let why = lost
            .iter()
            .map(|(a, w, _)| format!("{a}: {w}"))
            .chain(link_whys)
            .collect::<Vec<_>>()
            .join("; ");
        return Stop::Restart { lost, why, reports };
    }
    if let Some(e) = fail {
        return Stop::Fail(e);
    }
    let why = link_whys.collect::<Vec<_>>().join("; ");
    // The first broken link, seen from upstream if it was.
    let first = links
        .into_iter()
        .filter_map(|l| match l {
            PartStop::Link {
                link,
                upstream,
                blame,
                at,
                ..
            } => Some((link, !upstream, blame, at)),
            _ => None,
        })
        .min_by_key(|&(link, downstream, _, _)| (link, downstream));
    let lost = first.map(|(_, _, blame, at)| (blame, why.clone(), at));
    Stop::Restart {
        lost: lost.into_iter().collect(),
        why,
        reports,
    }
}

/// Polls every part until all are done or one stops (that one is removed;
/// the others can be polled again).
async fn poll_all(
    parts: &mut Vec<Part<'_>>,
    reports: &mut Vec<StageReport>,
) -> Result<(), PartStop> {
    future::poll_fn(|cx| {
        let mut i = 0;
        while i < parts.len() {
            match parts[i].as_mut().poll(cx) {
                std::task::Poll::Ready(Ok(report)) => {
                    reports.extend(report);
                    drop(parts.swap_remove(i));
                }
                std::task::Poll::Ready(Err(e)) => {
                    drop(parts.swap_remove(i));
                    return std::task::Poll::Ready(Err(e));
                }
                std::task::Poll::Pending => i += 1,
            }
        }
        if parts.is_empty() {
            std::task::Poll::Ready(Ok(()))
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_task_error_fails_whatever_else_was_seen() {
        let task = TaskError {
            job: None,
            task: "item 3".into(),
            kernel: "k".into(),
            agent: "a".into(),
            message: "boom".into(),
            panicked: false,
        };
        let stops = vec![
            PartStop::Lost(addr(1), "gone".into(), Instant::now()),
            PartStop::Fail(task.into()),
        ];
        assert!(matches!(
            decide(stops, vec![]),
            Stop::Fail(JobError::Task(_))
        ));
    }

    /// A broken link from stage `link`, seen from upstream or not.
    fn link(link: usize, upstream: bool, port: u16, why: &str) -> PartStop {
        PartStop::Link {
            link,
            upstream,
            blame: addr(port),
            why: why.into(),
            at: Instant::now(),
        }
    }

    #[test]
    fn lost_agents_restart_without_them_once_each() {
        let stops = vec![
            link(0, true, 2, "stage 0 lost its link to stage 1"),
            PartStop::Lost(addr(2), "reset".into(), Instant::now()),
            PartStop::Lost(addr(2), "silent".into(), Instant::now()),
            PartStop::Fail(JobError::Invalid("late".into())),
        ];
        match decide(stops, vec![]) {
            Stop::Restart { lost, why, .. } => {
                assert_eq!(lost.len(), 1);
                assert_eq!(lost[0].0, addr(2));
                assert!(why.contains("reset") && why.contains("link"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// The one agent a restart goes without.
    fn blamed(stops: Vec<PartStop>) -> (SocketAddr, String) {
        match decide(stops, vec![]) {
            Stop::Restart { lost, why, .. } => {
                assert_eq!(lost.len(), 1, "{why}");
                (lost[0].0, why)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn broken_links_alone_restart_without_one_agent_and_other_errors_fail() {
        // Stages 0..3 on agents 10, 11, 12, 13. The link 1 -> 2 breaks:
        // stage 1 says so (blaming 12), stage 2 lost its input (blaming
        // 11), and its ending cuts stage 3's input (blaming 12) in turn.
        let stops = vec![
            link(2, false, 12, "stage 3 lost its input"),
            link(1, false, 11, "stage 2 lost its input"),
            link(1, true, 12, "stage 1 lost its link to stage 2"),
        ];
        let (agent, why) = blamed(stops);
        assert_eq!(agent, addr(12), "the far end as its upstream stage saw it");
        assert!(why.contains("stage 2 lost its input"), "{why}");
        // Only the downstream stage saw it (its predecessor said nothing
        // in time): the upstream agent is blamed, once.
        let stops = vec![
            link(2, false, 12, "stage 3 lost its input"),
            link(1, false, 11, "stage 2 lost its input"),
        ];
        assert_eq!(blamed(stops).0, addr(11));
        let twice = vec![link(0, true, 3, "x"), link(0, true, 3, "y")];
        assert_eq!(blamed(twice), (addr(3), "x; y".to_owned()));
        let bad = vec![
            link(0, true, 3, "x"),
            PartStop::Fail(JobError::Invalid("y".into())),
        ];
        assert!(matches!(
            decide(bad, vec![]),
            Stop::Fail(JobError::Invalid(_))
        ));
    }
}
