//! One job: a skeleton tree run over a stream of inputs on a cluster's
//! connections.

use super::check::check;
use super::dispatch::Dispatcher;
use super::eval::{Ctx, Spawner, Stream, channel, eval, replica_budget};
use super::handoff::{Inputs, Results, Room};
use super::stall::{self, Look};
use super::stream::{self, Swaps};
use super::switch::Switches;
use super::{Item, JobError};
use crate::client::AgentConn;
use crate::trace::{self, Recorder, Trace, TraceError};
use crate::watch::{self as watching, StageStatus, Watch};
use futures_lite::future;
use skelpi_proto::JobId;
use skelpi_proto::skeleton::Skeleton;
use smol::LocalExecutor;
use std::cell::Cell;
use std::time::Duration;

/// How long a stopped job waits for the results of tasks already sent.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Bounds of one job, and what may change while it runs.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Stop the job as stalled when nothing moved for this long (see
    /// [`super::stall`]); `None`: never.
    pub stall: Option<Duration>,
    /// How long each task may take on its agent, from its arrival there
    /// (queueing included); past it the task fails. `None`: no bound.
    pub task_deadline: Option<Duration>,
    /// Keep this watch up to date while the job runs (see
    /// [`crate::watch`]).
    pub watch: Option<Watch>,
    /// Kernel swaps of its `seq` stages asked while it runs (see
    /// [`super::switch`]).
    pub swaps: Option<Swaps>,
}

/// What became of each stage's kernel swaps (by `seq` stage; empty when
/// the job was given no swaps).
pub type Swapped = Vec<Vec<stream::Swapped>>;

/// What a job runs: a graph of nodes over the dispatcher, from the stream
/// of inputs to the stream of results.
pub trait Graph {
    /// Starts the graph's nodes (with `cx.spawner`) reading `input`;
    /// returns the stream of results.
    fn build<'a, 'c: 'a>(&'a self, cx: Ctx<'a, 'c>, input: Stream) -> Stream;
}

/// A skeleton tree runs as [`eval`] builds it.
impl Graph for Skeleton {
    fn build<'a, 'c: 'a>(&'a self, cx: Ctx<'a, 'c>, input: Stream) -> Stream {
        eval(cx, self, input)
    }
}

/// Runs `skeleton` on `inputs` over `conns`, handing each result and the
/// index of its input (for a reduction: 0) to `results` as it leaves the
/// tree (in input order where the tree keeps
/// order). Inputs are drawn only as the tree has room for them, and not
/// while the results' [`super::handoff::Room`] is full. On the
/// first error the job stops, waits (at most [`DRAIN_TIMEOUT`]) for the
/// results of tasks already sent, so every connection is left between
/// frames, and returns it; connections that failed, or whose tasks did not
/// come back in time, are marked broken. A job in which nothing moves for
/// `limits.stall` stops with [`JobError::Stalled`] (see [`super::stall`]),
/// giving up at once on the tasks in flight.
pub async fn run(
    conns: &mut [AgentConn],
    skeleton: &Skeleton,
    inputs: Inputs<'_>,
    results: Results<'_>,
    limits: Limits,
) -> Result<Swapped, JobError> {
    run_graph(conns, skeleton, skeleton, inputs, results, None, limits).await
}

/// [`run`], traced: also returns the job's merged trace, which is there
/// even when the job failed (as far as the agents could still be reached).
pub async fn run_traced(
    conns: &mut [AgentConn],
    skeleton: &Skeleton,
    inputs: Inputs<'_>,
    results: Results<'_>,
    limits: Limits,
) -> (Result<Swapped, JobError>, Result<Trace, TraceError>) {
    let mut trace = Err(TraceError::Stopped);
    let out = Some(&mut trace);
    let result = run_graph(conns, skeleton, skeleton, inputs, results, out, limits).await;
    (result, trace)
}

/// [`run`] with the graph `graph` built for `skeleton` (checked, and named
/// in logs and traces); traced if `trace_out` is given, which then holds
/// the job's trace. Swaps in `limits` are taken by the `seq` nodes of
/// `skeleton` that `graph` evaluates.
pub async fn run_graph(
    conns: &mut [AgentConn],
    skeleton: &Skeleton,
    graph: &impl Graph,
    inputs: Inputs<'_>,
    mut results: Results<'_>,
    trace_out: Option<&mut Result<Trace, TraceError>>,
    limits: Limits,
) -> Result<Swapped, JobError> {
    check(skeleton)?;
    if conns.is_empty() {
        return Err(JobError::NoAgents);
    }
    if let Some(c) = conns.iter().find(|c| c.is_broken()) {
        return Err(JobError::Invalid(format!(
            "the connection to {} failed earlier; reconnect before running a job",
            c.addr()
        )));
    }
    let recorder = trace_out.is_some().then(Recorder::new);
    let mut probes = Vec::new();
    if let Some(rec) = &recorder {
        for conn in conns.iter_mut() {
            match trace::probe(conn, rec.clock()).await {
                Ok(p) => probes.push(p),
                Err(e) => {
                    let why = JobError::Invalid(e.to_string());
                    if let Some(out) = trace_out {
                        *out = Err(e);
                    }
                    return Err(why);
                }
            }
        }
    }
    let cores = conns
        .iter()
        .map(|c| c.info().cores as usize)
        .sum::<usize>()
        .max(1);
    let job = JobId(rand::random());
    log::debug!("job {job}: {skeleton} on {} agents", conns.len());
    let dispatcher = Dispatcher::new(conns, job, recorder.as_ref());
    dispatcher.set_task_deadline(limits.task_deadline);
    // One I/O future for the whole job, drain included: dropping it
    // mid-frame would cut a frame.
    let mut io = Box::pin(dispatcher.run_io());
    // Inputs drawn and results handed on, for the stall watchdog.
    let (drawn, handed) = (Cell::new(0u64), Cell::new(0u64));
    let (drawn, handed) = (&drawn, &handed);
    let switches = Switches::new(limits.swaps.as_ref(), skeleton.seqs().len());
    let result = {
        let ex = LocalExecutor::new();
        let (spawn_tx, spawn_rx) = async_channel::unbounded();
        let cx = Ctx {
            spawner: Spawner(spawn_tx),
            d: &dispatcher,
            cores,
            home: None,
            replicated: false,
            budget: replica_budget(cores),
            switches: limits.swaps.is_some().then_some(&switches),
            stage: 0,
        };
        let room = results.room();
        let input = draw(&cx.spawner, inputs, drawn, room);
        let work = async {
            let out = graph.build(cx, input);
            while let Ok(r) = out.recv().await {
                let item = r?;
                handed.set(handed.get() + 1);
                results.push(item.index, item.data);
                // Handed on together: what comes out before the tree waits
                // (the other nodes run once before that is judged).
                if out.is_empty() {
                    future::yield_now().await;
                    if out.is_empty() {
                        results.flush();
                    }
                }
            }
            Ok(())
        };
        let stalled = stall::watch(limits.stall, |_| {
            let totals = (drawn.get(), handed.get());
            let parts = Some(dispatcher.task_counts());
            async move { Look { totals, parts } }
        });
        // Nodes hand the futures they start to this driver, which spawns
        // them; it never ends by itself.
        let driver = async {
            while let Ok(f) = spawn_rx.recv().await {
                ex.spawn(f).detach();
            }
            future::pending().await
        };
        let io_ended = async {
            io.as_mut().await;
            Err(JobError::NoAgents)
        };
        let stalled = async { Err(stalled.await) };
        let watched = async {
            match &limits.watch {
                Some(w) => keep_watch(w, &dispatcher, cores).await,
                None => future::pending().await,
            }
        };
        future::or(
            ex.run(future::or(work, driver)),
            future::or(io_ended, future::or(stalled, watched)),
        )
        .await
        // `ex` drops here: every node of the graph is cancelled; frames
        // already queued are still written by `io`.
    };
    if let Err(JobError::Stalled(_)) = &result {
        // What is in flight is what did not move: no use waiting for it.
        dispatcher.abandon_busy("the job stalled with tasks in flight on it");
    }
    let deadline = async {
        async_io::Timer::after(DRAIN_TIMEOUT).await;
        dispatcher.abandon_busy(&format!(
            "tasks in flight when the job stopped got no result within {DRAIN_TIMEOUT:?}"
        ));
    };
    future::or(future::or(dispatcher.drain(), deadline), io.as_mut()).await;
    drop(io);
    dispatcher.remember_kernel_times();
    if let Some(w) = &limits.watch {
        // The last counts, tasks sent again while draining included.
        copy_counts(w, &dispatcher, cores);
    }
    let casualties = dispatcher.casualties();
    let deaths = dispatcher.deaths();
    let rejoined = dispatcher.take_rejoined();
    drop(dispatcher);
    for (i, mut conn) in rejoined {
        conn.add_losses(conns[i].losses().to_vec());
        conns[i] = conn;
    }
    for (conn, lost) in conns.iter_mut().zip(deaths) {
        conn.add_losses(lost);
    }
    for (conn, why) in conns.iter_mut().zip(casualties) {
        if let Some((why, when)) = why {
            conn.mark_broken_at(why, when);
        }
    }
    if let (Some(rec), Some(out)) = (recorder, trace_out) {
        // Agents that failed or cannot trace are left out, with a note.
        let agents = trace::gather(conns.iter_mut(), probes, rec.clock(), job).await;
        let collected = rec.finish(job, skeleton.to_string(), Vec::new(), agents);
        *out = Ok(trace::merge::merge(&collected));
    }
    result.map(|()| switches.finish())
}

/// Copies the dispatcher's counts into `watch` every
/// [`watching::UPDATE_EVERY`]; never ends.
async fn keep_watch<T>(watch: &Watch, d: &Dispatcher<'_>, cores: usize) -> T {
    let agents = d.labels();
    watch.update(|s| s.agents = agents);
    loop {
        copy_counts(watch, d, cores);
        async_io::Timer::after(watching::UPDATE_EVERY).await;
    }
}

/// Copies the dispatcher's counts into `watch`: each kernel's stage (a
/// placed `seq` stage has one slot, a farm's or map's the pool's
/// `cores`), agents lost, tasks sent again, copies of tasks (overdue, or at the tail).
fn copy_counts(watch: &Watch, d: &Dispatcher<'_>, cores: usize) {
    let stages: Vec<StageStatus> = d
        .stage_totals()
        .iter()
        .map(|(kernel, t, pinned)| {
            let degree = if *pinned { 1 } else { cores };
            StageStatus::new(kernel.to_string(), degree, t)
        })
        .collect();
    let (lost, resent, copies) = (d.lost(), d.resent(), d.copies());
    watch.update(|s| {
        s.set_stages(stages);
        s.lost = lost;
        s.resent = resent;
        s.copies = copies;
    });
}

/// The stream of `inputs`, drawn by a node of its own (counted in `drawn`)
/// as the tree has room for them and `room` has room for their results.
fn draw<'a>(
    spawner: &Spawner<'a>,
    mut inputs: Inputs<'a>,
    drawn: &'a Cell<u64>,
    room: Room,
) -> Stream {
    let (tx, rx) = channel();
    spawner.spawn(async move {
        loop {
            room.wait().await;
            let Some(data) = inputs.next().await else {
                return;
            };
            let i = drawn.get();
            drawn.set(i + 1);
            let item = Item {
                index: i,
                input: i,
                origin: format!("item {i}"),
                data,
            };
            if tx.send(Ok(item)).await.is_err() {
                return;
            }
        }
    });
    rx
}
