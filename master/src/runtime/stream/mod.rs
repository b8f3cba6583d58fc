//! Pipelines of `seq` stages streamed agent to agent: the master feeds the
//! first stage and reads the last; items never come back in between (see
//! `skelpi_agent::stages`).
//!
//! Every stage gets a connection of its own from the master: to open it,
//! to hear of its failures and its measurements, and — for the first stage
//! — to feed it, for the last to read its results. Closing them (on an
//! error, or when the caller drops the job) stops every stage.
//!
//! Faults: the master holds every item it fed until the pipeline's result
//! for it is back (a window of [`WINDOW_PER_STAGE`] items per stage, at
//! most [`WINDOW_BYTES`]). When a stage's agent is lost — its connection
//! ends, or it falls silent for four heartbeats — the stream stops, the
//! lost agent's stages move to live agents of the pool, and the stream
//! opens again under a new id, fed first the held items from the first
//! whose result is missing. Stages are pure, and the master takes only the
//! next index due, so every result comes once, in order.
//!
//! The master beats on every stage connection from the job's own thread
//! (see [`super::handoff`]): a result callback or an input iterator that
//! blocks for seconds holds the feed, not the beats.

mod attempt;
mod progress;
mod replay;
mod swap;

pub use swap::{SwapOutcome, Swapped, Swapper, Swaps, swaps};

use super::JobError;
use super::handoff::{Inputs, Results};
use crate::trace::{Trace, TraceError};
use attempt::Stop;
use replay::Replay;
use skelpi_proto::JobId;
use skelpi_proto::skeleton::Kernel;
use skelpi_wire::handshake::ConnectOptions;
use skelpi_wire::key::ClusterKey;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use swap::SwapState;

/// Times a stream starts again after losing agents before the job fails.
pub const MAX_RESTARTS: usize = 3;

/// Items the master holds for replay, per stage (and one stage's worth
/// more for the feed); the window refills from half. Deep enough that tiny
/// items stream as fast as with TCP's buffers alone (64 cost 18% of the
/// throughput of 1-float items on 3 local agents; 1,024 cost nothing
/// measurable); [`WINDOW_BYTES`] bounds it for large items.
pub const WINDOW_PER_STAGE: usize = 1024;

/// Bytes the held items may take (one item is always let through).
pub const WINDOW_BYTES: usize = 256 << 20;

/// How long stages may take to open (connect to their successor), all
/// together, clock probes of a traced run included.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the stages may take to report ready once all are asked to
/// open: a stage not ready by then is taken for lost.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a stage runs.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The agent's address (also given to the previous stage).
    pub addr: SocketAddr,
    /// Its name, for reports and errors.
    pub name: String,
}

/// What one stage measured, on its agent's clock.
#[derive(Debug, Clone, PartialEq)]
pub struct StageReport {
    /// Position, from 0.
    pub stage: usize,
    /// Its kernel.
    pub kernel: Kernel,
    /// The agent it ran on (name).
    pub agent: String,
    /// Items it processed.
    pub items: u64,
    /// Time its kernel calls took, all items together (worker queueing
    /// included).
    pub busy: Duration,
    /// From the first item's arrival to the last's.
    pub span: Duration,
    /// The swaps of its kernel asked for while it ran, in order, and what
    /// became of each (`kernel` is the one it ran last).
    pub swaps: Vec<Swapped>,
}

/// What a streamed pipeline runs, where, and how.
#[derive(Debug, Clone)]
pub struct StreamSpec<'a> {
    /// One kernel per stage.
    pub stages: &'a [Kernel],
    /// One agent per stage (an agent may hold several).
    pub placement: Vec<Placement>,
    /// Where a stage may move when its agent is lost: the pool's agents,
    /// in order (those of `placement` among them).
    pub pool: Vec<Placement>,
    /// The cluster's key.
    pub key: &'a ClusterKey,
    /// How to connect (transport, heartbeat).
    pub opts: &'a ConnectOptions,
    /// Feed one input every `interval` if given (later if the first stage
    /// is full), else as fast as the stages take them.
    pub interval: Option<Duration>,
    /// Record a trace of the run.
    pub trace: bool,
    /// Kernel swaps asked for while it runs (see [`Swapper`]).
    pub swaps: Option<&'a Swaps>,
    /// Stop the job as stalled when nothing moved for this long (see
    /// [`crate::runtime::stall`]); `None`: never.
    pub stall: Option<Duration>,
    /// Bytes of fed items the master may hold for replay (see
    /// [`WINDOW_BYTES`], the default); a larger item is refused.
    pub max_replay_bytes: usize,
    /// Keep this watch up to date with each stage's counts (see
    /// [`crate::watch`]).
    pub watch: Option<crate::watch::Watch>,
}

/// An agent a pipeline lost.
#[derive(Debug, Clone)]
pub struct LostAgent {
    /// Its address.
    pub addr: SocketAddr,
    /// Its name.
    pub name: String,
    /// What happened.
    pub why: String,
    /// When it was noticed.
    pub at: Instant,
}

/// How a streamed pipeline ended.
#[derive(Debug)]
pub struct StreamRun {
    /// Each stage's report (of the run that finished), or why the job
    /// failed.
    pub result: Result<Vec<StageReport>, JobError>,
    /// The agents lost on the way, in order.
    pub lost: Vec<LostAgent>,
    /// Times the stream started again after a loss.
    pub restarts: usize,
    /// The merged trace, when asked for: only a run that went through
    /// without a restart has one.
    pub trace: Option<Result<Trace, TraceError>>,
}

/// Runs the pipeline `spec` over `inputs`, handing each result and its
/// index to `results` exactly once, in input order. A stage whose agent
/// is lost moves to another agent of the pool, and the stream starts again
/// from the first item whose result is missing (at most [`MAX_RESTARTS`]
/// times).
pub async fn run_pipeline(
    spec: &StreamSpec<'_>,
    mut inputs: Inputs<'_>,
    mut results: Results<'_>,
) -> StreamRun {
    if let Some(s) = spec.swaps
        && s.stages() != spec.stages.len()
    {
        let (made, n) = (s.stages(), spec.stages.len());
        return StreamRun {
            result: Err(JobError::Invalid(format!(
                "swaps made for {made} stages given to a pipeline of {n}"
            ))),
            lost: Vec::new(),
            restarts: 0,
            trace: None,
        };
    }
    let swaps = RefCell::new(SwapState::new(spec.stages));
    // An item the window cannot hold ends the feed and fails the job.
    let limit = spec.max_replay_bytes;
    inputs.limit_bytes(limit);
    let mut run = run_attempts(spec, &mut inputs, &mut results, &swaps).await;
    if let Some((i, bytes)) = inputs.refused() {
        run.result = Err(JobError::Invalid(format!(
            "item {i} is {bytes} bytes, more than the {limit} bytes of fed items the master may \
             hold for replay (--max-replay-memory); raise the bound, or split the item with \
             map(n, ...)"
        )));
    }
    if let Ok(reports) = &mut run.result {
        // Swaps still unsent: asked for too late.
        let mut state = swaps.into_inner();
        for (stage, rx) in spec.swaps.iter().flat_map(|s| s.stages.iter().enumerate()) {
            while let Ok(kernel) = rx.try_recv() {
                state.sent(stage, kernel);
            }
        }
        // Later swaps are refused at once (`Swapper::swap` says false).
        for rx in spec.swaps.iter().flat_map(|s| &s.stages) {
            rx.close();
        }
        let done = state.finish();
        for r in reports {
            r.swaps = done.get(r.stage).cloned().unwrap_or_default();
        }
    }
    run
}

/// [`run_pipeline`], swaps kept in `swaps` across the attempts.
async fn run_attempts(
    spec: &StreamSpec<'_>,
    inputs: &mut Inputs<'_>,
    results: &mut Results<'_>,
    swaps: &RefCell<SwapState>,
) -> StreamRun {
    let n = spec.stages.len();
    let mut run = StreamRun {
        result: Err(JobError::Cancelled),
        lost: Vec::new(),
        restarts: 0,
        trace: spec.trace.then_some(Err(TraceError::Stopped)),
    };
    if n == 0 || spec.placement.len() != n {
        run.result = Err(JobError::Invalid(format!(
            "a pipeline of {n} stages needs one placement per stage (it has {})",
            spec.placement.len()
        )));
        return run;
    }
    // The first stream's id is the job id the agents log.
    let job = JobId(rand::random());
    log::debug!("job {job}: pipeline of {n} streamed stages");
    let window = WINDOW_PER_STAGE * (n + 1);
    let replay = RefCell::new(Replay::new(window, spec.max_replay_bytes));
    let mut placement = spec.placement.clone();
    // Agents log a restarted stream under its own id.
    let mut stream = job.0;
    loop {
        let traced = spec.trace && run.restarts == 0;
        let outcome = attempt::run(
            spec,
            &placement,
            stream,
            traced,
            (&replay, swaps),
            inputs,
            results,
        )
        .await;
        // Only the first run is traced: after a restart, its trace (up to
        // the restart, marked) is the one kept.
        let stop = match outcome {
            Ok((reports, trace)) => {
                if trace.is_some() {
                    run.trace = trace;
                }
                run.result = Ok(reports);
                return run;
            }
            Err((stop, trace)) => {
                if let Some(trace) = trace {
                    run.trace = Some(Ok(trace));
                }
                stop
            }
        };
        let (lost, why) = match stop {
            Stop::Fail(e) => {
                run.result = Err(e);
                return run;
            }
            Stop::Restart { lost, why, reports } => {
                // Every result is in: nothing to run again.
                if replay.borrow().held() == 0 && inputs.peek().await.is_none() {
                    log::warn!("job {job}: all results in, then an agent was lost: {why}");
                    run.result = Ok(reports);
                    return run;
                }
                (lost, why)
            }
        };
        for (addr, why, at) in lost {
            let name = spec
                .pool
                .iter()
                .chain(&placement)
                .find(|p| p.addr == addr)
                .map_or_else(|| addr.to_string(), |p| p.name.clone());
            log::warn!("job {job}: agent {name} ({addr}) lost: {why}");
            if let Some(w) = &spec.watch {
                w.update(|s| s.lost.push(format!("{name} ({addr})")));
            }
            run.lost.push(LostAgent {
                addr,
                name,
                why,
                at,
            });
        }
        let first = replay.borrow().done();
        if run.restarts >= MAX_RESTARTS {
            run.result = Err(JobError::Restarts {
                restarts: run.restarts,
                item: first,
                agents: run.lost.iter().map(|l| l.name.clone()).collect(),
                why,
            });
            return run;
        }
        let gone: Vec<SocketAddr> = run.lost.iter().map(|l| l.addr).collect();
        if let Err(e) = replace(&mut placement, &spec.pool, &gone) {
            run.result = Err(e);
            return run;
        }
        run.restarts += 1;
        swaps.borrow_mut().restarted(first);
        stream = rand::random();
        let names: Vec<&str> = placement.iter().map(|p| p.name.as_str()).collect();
        log::warn!(
            "job {job}: restarting the stream as job {} ({why}); stages now on {}; \
             replaying from item {first} ({} held)",
            JobId(stream),
            names.join(", "),
            replay.borrow().held()
        );
    }
}

/// Moves the stages placed on a `gone` agent to live agents of `pool`,
/// each to the one holding the fewest stages (the first such in pool
/// order).
fn replace(
    placement: &mut [Placement],
    pool: &[Placement],
    gone: &[SocketAddr],
) -> Result<(), JobError> {
    let live: Vec<&Placement> = pool.iter().filter(|p| !gone.contains(&p.addr)).collect();
    for i in 0..placement.len() {
        if !gone.contains(&placement[i].addr) {
            continue;
        }
        let load = |p: &Placement| placement.iter().filter(|q| q.addr == p.addr).count();
        let best = live
            .iter()
            .min_by_key(|p| load(p))
            .ok_or(JobError::NoAgents)?;
        placement[i] = (*best).clone();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(port: u16) -> Placement {
        Placement {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            name: format!("a{port}"),
        }
    }

    #[test]
    fn a_lost_agents_stages_move_to_the_least_loaded_live_agents() {
        let pool: Vec<Placement> = (1..=3).map(place).collect();
        let mut placement = vec![place(1), place(2), place(3), place(1)];
        replace(&mut placement, &pool, &[place(1).addr]).unwrap();
        let ports: Vec<u16> = placement.iter().map(|p| p.addr.port()).collect();
        assert_eq!(ports, [2, 2, 3, 3]);
        let all: Vec<SocketAddr> = pool.iter().map(|p| p.addr).collect();
        let err = replace(&mut placement, &pool, &all);
        assert!(matches!(err, Err(JobError::NoAgents)));
    }
}
