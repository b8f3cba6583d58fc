//! The parts of a running stream, polled together: the feed of the first
//! stage, and for every stage its listener (results, swaps answered,
//! failures, its closing report), the watch that declares its agent down
//! when it falls silent, and the master's heartbeats on every connection
//! (the feed's sent between its items). Beside them, the stall watchdog.

use super::{Part, PartEnd, PartStop, sent_or_lost, stage_error};
use crate::client::ClientError;
use crate::runtime::handoff::{Inputs, Results, Room};
use crate::runtime::stall::{self, Look};
use crate::runtime::stream::progress::Probes;
use crate::runtime::stream::replay::Replay;
use crate::runtime::stream::swap::SwapState;
use crate::runtime::stream::{Placement, StageReport, StreamSpec};
use crate::runtime::{JobError, TaskError};
use crate::trace::{self, Recorder};
use crate::watch::StageStatus;
use futures_lite::future;
use skelpi_proto::beat::Beats;
use skelpi_proto::code::StageSwap;
use skelpi_proto::skeleton::Kernel;
use skelpi_proto::trace::TraceKind;
use skelpi_proto::{Array, JobId, Message, Shape, StageFailed, StageStats, StreamItem, StreamRef};
use skelpi_wire::{Liveness, Received, Receiver, Sender};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One stage's open connection: its agent's address, the heartbeat asked
/// of it and what the master last heard, and the connection's halves.
pub(super) type Halves<'c> = (
    SocketAddr,
    (Duration, Arc<Liveness>),
    (&'c mut Sender, &'c mut Receiver),
);

/// One run of the pipeline, as its parts share it.
pub(super) struct Attempt<'a> {
    spec: &'a StreamSpec<'a>,
    placement: &'a [Placement],
    /// The stages' kernels as the run opened them.
    kernels: &'a [Kernel],
    stream: u64,
    recorder: Option<&'a Recorder>,
    replay: &'a RefCell<Replay>,
    swaps: &'a RefCell<SwapState>,
    /// The first item fed in this run (the first whose result is missing).
    first: u64,
    /// Items sent to stage 0 in this run; every stage must report that many.
    fed: Cell<u64>,
    /// Items of the stages that reported their end (the watchdog does not
    /// ask those).
    finished: Vec<Cell<Option<u64>>>,
    /// A result taken makes room in the window: the feed may go on.
    room: (async_channel::Sender<()>, async_channel::Receiver<()>),
}

impl<'a> Attempt<'a> {
    /// A run of the stages `on` as stream `stream`, fed from the first
    /// item `replay` holds.
    pub(super) fn new(
        spec: &'a StreamSpec<'a>,
        (placement, kernels): (&'a [Placement], &'a [Kernel]),
        stream: u64,
        recorder: Option<&'a Recorder>,
        (replay, swaps): (&'a RefCell<Replay>, &'a RefCell<SwapState>),
    ) -> Attempt<'a> {
        Attempt {
            spec,
            placement,
            kernels,
            stream,
            recorder,
            replay,
            swaps,
            first: replay.borrow().done(),
            fed: Cell::new(0),
            finished: (0..placement.len()).map(|_| Cell::new(None)).collect(),
            room: async_channel::bounded(1),
        }
    }

    /// The job id the agents log this run under.
    pub(super) fn job(&self) -> JobId {
        JobId(self.stream)
    }

    /// Every part of the run on the stages' connections: the feed of the
    /// first stage, drawing from `inputs`, and each stage's listener (the
    /// last one's hands its results to `on_result`), raced with the watch
    /// on its agent and the master's beats.
    pub(super) fn parts<'p>(
        &'p self,
        halves: &'p mut [Halves<'_>],
        inputs: &'p mut Inputs<'_>,
        results: &'p mut Results<'_>,
    ) -> Vec<Part<'p>> {
        let n = halves.len();
        // Closed when the first stage's listener ends: the feed stops
        // serving its swaps.
        let (first_done_tx, first_done_rx) = async_channel::bounded::<()>(1);
        let mut first_done_tx = Some(first_done_tx);
        let room = results.room();
        let mut results = Some(results);
        let mut inputs = Some(inputs);
        let mut parts: Vec<Part<'p>> = Vec::new();
        for (i, (addr, (beat, liveness), (sender, receiver))) in halves.iter_mut().enumerate() {
            let addr = *addr;
            let mut idle_sender = None;
            if let Some(inputs) = inputs.take() {
                let first_done = first_done_rx.clone();
                let beats = (*beat, liveness.clone());
                let inputs = (inputs, room.clone());
                parts.push(Box::pin(self.feed(addr, sender, beats, inputs, first_done)));
            } else {
                idle_sender = Some(&mut **sender);
            }
            let results = if i + 1 == n { results.take() } else { None };
            // Stage 0's listener holds this until it ends.
            let done_guard = if i == 0 { first_done_tx.take() } else { None };
            let listen = self.listen(i, addr, receiver, results, done_guard);
            let watch = watch(addr, *beat, liveness.clone());
            let beats = self.beat(i, addr, *beat, liveness.clone(), idle_sender);
            parts.push(Box::pin(future::or(listen, future::or(watch, beats))));
        }
        parts
    }

    /// Stage `i`'s swaps, if any may be asked.
    fn swaps_of(&self, i: usize) -> Option<&'a async_channel::Receiver<Kernel>> {
        self.spec.swaps.and_then(|s| s.stages.get(i))
    }

    /// The message that swaps stage `i`'s kernel for `kernel` (the swap is
    /// taken as sent).
    fn swap(&self, i: usize, kernel: Kernel) -> Message {
        let id = self.swaps.borrow_mut().sent(i, kernel.clone());
        Message::StageSwap(StageSwap {
            id,
            stream: self.stream,
            stage: i as u32,
            kernel: kernel.name,
            args: kernel.args,
        })
    }

    /// Feeds the first stage on `sender`: the held items, then new ones
    /// from `inputs` while the window has room (one every
    /// `spec.interval` if given), then the stream's end. Its swaps go
    /// between two items, and after the end until its listener ends
    /// (`first_done` closes). The master's heartbeats (every `beats.0`, to
    /// an agent that beats: `beats.1` heard one) go on this connection
    /// whenever the feed waits, so the first stage's agent can tell a
    /// master that waits from one that is gone.
    async fn feed(
        &self,
        addr: SocketAddr,
        sender: &mut Sender,
        (every, heard): (Duration, Arc<Liveness>),
        mut inputs: (&mut Inputs<'_>, Room),
        first_done: async_channel::Receiver<()>,
    ) -> PartEnd {
        let lost = |e| sent_or_lost(addr, e);
        let stage_swaps = self.swaps_of(0);
        let mut beats = Beats::new(every, Instant::now());
        let mut due = Instant::now();
        let mut next = self.first;
        loop {
            // Swaps of the first stage go between two items.
            while let Some(kernel) = stage_swaps.and_then(|rx| rx.try_recv().ok()) {
                sender.send(&self.swap(0, kernel)).await.map_err(lost)?;
            }
            let item = self.item(next, &mut inputs);
            let Some(data) = beating(sender, &mut beats, &heard, item)
                .await
                .map_err(lost)?
            else {
                break;
            };
            if let Some(every) = self.spec.interval {
                let timer = async_io::Timer::at(due);
                beating(sender, &mut beats, &heard, timer)
                    .await
                    .map_err(lost)?;
                due = due.checked_add(every).unwrap_or(due);
            }
            self.send_item(sender, next, &data).await.map_err(lost)?;
            next += 1;
            self.fed.set(self.fed.get() + 1);
        }
        let end = Message::StreamEnd(StreamRef {
            stream: self.stream,
            stage: 0,
        });
        sender.send(&end).await.map_err(lost)?;
        // The stage may still have items to run: swaps and beats go on
        // until it reports (its listener drops the sender).
        loop {
            let asked = future::or(
                async {
                    match stage_swaps {
                        Some(rx) => rx.recv().await.ok(),
                        None => future::pending().await,
                    }
                },
                async {
                    let _ = first_done.recv().await;
                    None
                },
            );
            match beating(sender, &mut beats, &heard, asked)
                .await
                .map_err(lost)?
            {
                Some(kernel) => sender.send(&self.swap(0, kernel)).await.map_err(lost)?,
                None => break,
            }
        }
        Ok(None)
    }

    /// Item `index` to feed: held again, or drawn from `inputs` once the
    /// window has room and the results waiting for the caller leave room
    /// (`inputs.1`); `None` when the inputs have ended.
    async fn item(&self, index: u64, inputs: &mut (&mut Inputs<'_>, Room)) -> Option<Rc<Array>> {
        let again = self.replay.borrow().get(index);
        if again.is_some() {
            return again;
        }
        while !self.replay.borrow_mut().has_room() {
            let _ = self.room.1.recv().await;
        }
        inputs.1.wait().await;
        let input = inputs.0.next().await?;
        let (drawn, data) = self.replay.borrow_mut().push(input);
        debug_assert_eq!(drawn, index);
        Some(data)
    }

    /// Sends item `index` to the first stage (and records it if traced).
    async fn send_item(
        &self,
        sender: &mut Sender,
        index: u64,
        data: &Array,
    ) -> Result<(), skelpi_wire::WireError> {
        let head = Message::StreamItem(StreamItem {
            stream: self.stream,
            stage: 0,
            index,
        });
        let started = Instant::now();
        sender.send_bulk(&head, data.shape, &data.data).await?;
        if let Some(rec) = self.recorder {
            let bytes = sender.last_frame_len();
            let kind = TraceKind::ItemSend;
            rec.frame(kind, 0, index, 0, started, bytes, trace::NO_LABEL);
        }
        Ok(())
    }

    /// Reads stage `i`'s connection until the stage reports its end: the
    /// pipeline's results if `results` is given (the last stage), the
    /// answers to its swaps, its failure, its report. `_done_guard` is
    /// dropped when it ends.
    async fn listen(
        &self,
        i: usize,
        addr: SocketAddr,
        receiver: &mut Receiver,
        mut results: Option<&mut Results<'_>>,
        _done_guard: Option<async_channel::Sender<()>>,
    ) -> PartEnd {
        let n = self.placement.len();
        let agent = &self.placement[i].name;
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
                    let out = self.result(i, item, &got, std::mem::take(&mut data))?;
                    if let Some(r) = results.as_mut() {
                        r.push(item.index, out);
                        r.flush();
                    }
                }
                Message::StreamEnd(_) if results.is_some() => ended = true,
                Message::StageSwapped(a) if a.stream == self.stream && a.stage == i as u32 => {
                    if let Err(what) = self.swaps.borrow_mut().answered(i, &a, self.first) {
                        let what = format!("{what} (on {agent})");
                        return Err(PartStop::Fail(JobError::Invalid(what)));
                    }
                }
                Message::StageFailed(f) => return Err(self.failed(i, addr, f)),
                Message::StageStats(s) => {
                    let ended = results.is_some().then_some(ended);
                    return self.report(i, s, ended);
                }
                // Once open, a stage speaks up only when its link to the
                // next one fails.
                Message::Error(e) => return Err(stage_error(i, self.placement, e)),
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
    }

    /// Takes the pipeline's result `item` (`got` is its frame, `data` its
    /// elements) from the last stage, `i`: it must be the next due, and
    /// makes room in the window.
    fn result(
        &self,
        i: usize,
        item: StreamItem,
        got: &Received,
        data: Vec<f64>,
    ) -> Result<Array, PartStop> {
        let taken = self.replay.borrow_mut().accept(item.index);
        if let Err(o) = taken {
            return Err(PartStop::Fail(JobError::Invalid(format!(
                "the pipeline returned item {} where {} was due",
                o.got, o.due
            ))));
        }
        if self.replay.borrow().resumes() {
            let _ = self.room.0.try_send(());
        }
        if let Some(rec) = self.recorder {
            let (at, bytes) = (got.started, got.frame_len);
            let (kind, id, stage) = (TraceKind::ItemRecv, item.index, item.stage);
            rec.frame(kind, i, id, stage, at, bytes, trace::NO_LABEL);
        }
        let shape = got.bulk.unwrap_or(Shape::List(0));
        Ok(Array { shape, data })
    }

    /// Stage `i`'s kernel failed on an item: the job fails with it.
    fn failed(&self, i: usize, addr: SocketAddr, f: StageFailed) -> PartStop {
        let agent = &self.placement[i].name;
        PartStop::Fail(
            TaskError {
                job: Some(self.job()),
                task: format!("item {}", f.index),
                kernel: self.kernels[i].name.clone(),
                agent: format!("{agent} ({addr})"),
                message: f.error,
                panicked: f.panicked,
            }
            .into(),
        )
    }

    /// Stage `i` ended with `s`: its report, if it ran every item fed and
    /// — for the stage whose results the master reads, `ended` telling
    /// whether the pipeline's end came — every result came too.
    fn report(&self, i: usize, s: StageStats, ended: Option<bool>) -> PartEnd {
        let agent = &self.placement[i].name;
        let all = self.fed.get();
        let left = self.replay.borrow().held();
        if s.items != all || ended.is_some_and(|ended| !ended || left != 0) {
            return Err(PartStop::Fail(JobError::Invalid(format!(
                "stage {i} on {agent} ended after {} of {all} items ({left} results missing)",
                s.items
            ))));
        }
        self.finished[i].set(Some(s.items));
        Ok(Some(StageReport {
            stage: i,
            kernel: self.swaps.borrow().current()[i].clone(),
            swaps: Vec::new(),
            agent: agent.clone(),
            items: s.items,
            busy: Duration::from_nanos(s.busy_ns),
            span: Duration::from_nanos(s.span_ns),
        }))
    }

    /// The master beats on the connections it sends nothing else on (all
    /// but the first stage's, `sender`): an agent whose master falls
    /// silent drops its stage. Not on the feed's — the agent reads that
    /// one only as fast as its stage takes items. Swaps of stage `i` go on
    /// it too. Never ends but in failure.
    async fn beat(
        &self,
        i: usize,
        addr: SocketAddr,
        every: Duration,
        heard: Arc<Liveness>,
        sender: Option<&mut Sender>,
    ) -> PartEnd {
        let Some(sender) = sender else {
            return future::pending().await;
        };
        let lost = |e| sent_or_lost(addr, e);
        let stage_swaps = self.swaps_of(i);
        // The first beat at once: the agent then knows this master beats.
        // Only to an agent that beats itself (it sends its first beat on
        // hello): an older one would refuse the frame.
        let mut beats = Beats::new(every, Instant::now());
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
                match beats.next() {
                    Some(at) => async_io::Timer::at(at).await,
                    None => future::pending().await,
                };
                None
            };
            match future::or(asked, timer).await {
                Some(kernel) => sender.send(&self.swap(i, kernel)).await.map_err(lost)?,
                None => {
                    if beats.take_due(Instant::now()) && heard.beats() > 0 {
                        sender.send(&Message::Heartbeat).await.map_err(lost)?;
                    }
                }
            }
        }
    }

    /// Returns the job's error once nothing moved for the stall bound:
    /// results are counted, and when none came the stages are asked
    /// where they stand.
    pub(super) async fn stalled(&self) -> PartStop {
        let questions = Probes::default();
        let bound = stall::paced(self.spec.stall, self.spec.interval);
        let stalled = stall::watch(bound, |from| {
            let totals = {
                let r = self.replay.borrow();
                (r.drawn(), r.done())
            };
            let questions = &questions;
            async move {
                // Results came: nothing to ask.
                let parts = if from.is_none_or(|from| from == totals) {
                    let on = (self.placement, self.kernels);
                    let finished = &self.finished[..];
                    Some(questions.ask(self.spec, on, self.stream, finished).await)
                } else {
                    None
                };
                Look { totals, parts }
            }
        });
        PartStop::Fail(stalled.await)
    }
}

impl Attempt<'_> {
    /// Keeps the spec's watch up to date with each stage's counts, asked
    /// of its agent every [`WATCH_EVERY`]; never ends.
    pub(super) async fn watched<T>(&self) -> T {
        let Some(watch) = &self.spec.watch else {
            return future::pending().await;
        };
        let questions = Probes::default();
        let mut stages: Vec<StageStatus> = Vec::new();
        loop {
            let on = (self.placement, self.kernels);
            let asked = questions
                .progress(self.spec, on, self.stream, &self.finished)
                .await;
            stages.resize(asked.len(), StageStatus::default());
            for (i, ((name, asked), stage)) in asked.into_iter().zip(&mut stages).enumerate() {
                stage.name = name;
                stage.degree = 1;
                if let Some(items) = self.finished[i].get() {
                    (stage.arrived, stage.started, stage.served) = (items, items, items);
                } else if let Some(Ok(Some(p))) = asked {
                    // Waiting and running: in its inbox, not yet done.
                    *stage = StageStatus {
                        arrived: p.arrived,
                        started: p.done,
                        served: p.done,
                        busy_s: Duration::from_nanos(p.busy_ns).as_secs_f64(),
                        busy_n: if p.busy_ns > 0 { p.done } else { 0 },
                        ..std::mem::take(stage)
                    };
                }
            }
            let agents = self.placement.iter().map(|p| p.name.clone()).collect();
            watch.update(|s| {
                s.set_stages(stages.clone());
                s.agents = agents;
            });
            async_io::Timer::after(WATCH_EVERY).await;
        }
    }
}

/// How often a watched pipeline's stages are asked how far they got: each
/// question is a frame to every stage's agent.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Returns once the agent at `addr`, asked to beat every `beat`, has
/// fallen silent (see [`Liveness::silent_past`]): it is lost.
async fn watch(addr: SocketAddr, beat: Duration, liveness: Arc<Liveness>) -> PartEnd {
    liveness.silent_past(beat).await;
    let what = format!(
        "silent for {:.1?} (a heartbeat was due every {beat:?}): declared down",
        liveness.silent_for()
    );
    Err(PartStop::Lost(addr, what, Instant::now()))
}

/// Awaits `wait`, sending the master's heartbeats on `sender` as `beats`
/// fall due meanwhile (only to an agent that beats: `heard` one of its).
/// `wait` must be safe to poll again after a beat was sent.
async fn beating<T>(
    sender: &mut Sender,
    beats: &mut Beats,
    heard: &Liveness,
    wait: impl Future<Output = T>,
) -> Result<T, skelpi_wire::WireError> {
    let mut wait = std::pin::pin!(wait);
    loop {
        let timer = async {
            match beats.next() {
                Some(at) => async_io::Timer::at(at).await,
                None => future::pending().await,
            };
            None
        };
        match future::or(async { Some(wait.as_mut().await) }, timer).await {
            Some(done) => return Ok(done),
            None => {
                if beats.take_due(Instant::now()) && heard.beats() > 0 {
                    sender.send(&Message::Heartbeat).await?;
                }
            }
        }
    }
}
