//! One run of a streamed pipeline on one placement: open the stages, feed
//! the held items again and then new ones, read the results, and say how
//! it stopped — finished, lost an agent (start again elsewhere), or failed.
//!
//! [`open`] connects to the stages' agents and opens the stages; then the
//! run's [`parts`] go on together — the feed, and for every stage its
//! listener, the watch on its agent's heartbeats and the master's own
//! beats — beside the stall watchdog. The first part to stop ends the run;
//! what the others report in a short grace is weighed with it
//! ([`decide`]).

mod open;
mod parts;

use super::replay::Replay;
use super::swap::SwapState;
use super::{Placement, StageReport, StreamSpec};
use crate::client::{AgentConn, ClientError};
use crate::runtime::JobError;
use crate::runtime::handoff::{Inputs, Results};
use crate::trace::{self, ClockSample, Recorder, Trace, TraceError};
use futures_lite::future;
use parts::Attempt;
use skelpi_proto::skeleton::{Kernel, Skeleton};
use skelpi_proto::{ErrorCode, ErrorReply, JobId};
use skelpi_wire::WireError;
use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// How long each agent may take to give its part of the trace of a run
/// that stopped early.
const GATHER_AFTER_STOP: Duration = Duration::from_secs(5);

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

/// How a part ends: `Ok` with its stage's report (a listener) or nothing
/// (the others), or early.
type PartEnd = Result<Option<StageReport>, PartStop>;

/// One concurrent part of a running stream: the feed, or one stage's
/// listener (which ends with the stage's report).
type Part<'a> = Pin<Box<dyn Future<Output = PartEnd> + 'a>>;

/// What a finished run gives: the stages' reports, and its trace if traced.
pub(super) type Finished = (Vec<StageReport>, Option<Result<Trace, TraceError>>);

/// Runs the pipeline once on `placement` as stream `stream`: feeds the
/// items `replay` holds, then new ones from `inputs` while the window has
/// room, and hands each result due to `results`. Traced (`traced`), a run
/// that stops early gives the trace of what it did as far as the agents
/// left can tell, marked with where and why it stopped.
pub(super) async fn run(
    spec: &StreamSpec<'_>,
    placement: &[Placement],
    stream: u64,
    traced: bool,
    (replay, swaps): (&RefCell<Replay>, &RefCell<SwapState>),
    inputs: &mut Inputs<'_>,
    results: &mut Results<'_>,
) -> Result<Finished, (Stop, Option<Trace>)> {
    // The stages' kernels now: swapped ones after a restart.
    let kernels = swaps.borrow().current().to_vec();
    let recorder = traced.then(Recorder::new);
    let peers = agent_of_stage(placement);
    let agents = peers.iter().max().map_or(0, |&a| a + 1);
    // Each agent's clock probes (inner `None`: it does not trace).
    let mut probes: Vec<Option<Option<Vec<ClockSample>>>> = vec![None; agents];
    let on = (placement, &kernels[..]);
    let opened = open::within_timeout(spec, on, stream, recorder.as_ref(), &peers, &mut probes);
    let mut conns = opened
        .await
        .map_err(|stop| (decide(vec![stop], Vec::new()), None))?;
    let attempt = Attempt::new(spec, on, stream, recorder.as_ref(), (replay, swaps));
    log::debug!(
        "job {}: {} streamed stages open; feeding from item {} ({} held)",
        attempt.job(),
        spec.stages.len(),
        replay.borrow().done(),
        replay.borrow().held()
    );
    let parts = run_parts(&attempt, &mut conns, inputs, results).await;
    let job = attempt.job();
    drop(attempt);
    let reports = match parts {
        Ok(reports) => reports,
        Err(stop) => {
            // Dropped, not closed: a goodbye may never be read by a
            // stopped agent whose socket is full (and a frame may be half
            // written). Dropping them ends the stages.
            drop(conns);
            let Some(rec) = recorder else {
                return Err((stop, None));
            };
            rec.mark(stopped_here(&stop, replay.borrow().done()));
            let at = (placement, &peers[..]);
            let trace = gather_after(spec, rec, at, probes, &kernels, (job, &stop)).await;
            return Err((stop, Some(trace)));
        }
    };
    let trace = match recorder {
        Some(rec) => Some(Ok(
            gather(rec, &mut conns, &peers, probes, &kernels, job).await
        )),
        None => None,
    };
    for c in conns {
        c.close().await;
    }
    Ok((reports, trace))
}

/// The trace's mark where a run stopped early: why, and the first item
/// whose result was missing (`first`).
fn stopped_here(stop: &Stop, first: u64) -> String {
    match stop {
        Stop::Restart { why, .. } => {
            format!("the stream stopped ({why}); it starts again from item {first}")
        }
        Stop::Fail(e) => format!("the job failed ({e}); item {first} was the first not done"),
    }
}

/// Each stage's agent, numbered in order of first use.
fn agent_of_stage(placement: &[Placement]) -> Vec<usize> {
    let mut agents: Vec<SocketAddr> = Vec::new();
    placement
        .iter()
        .map(|p| match agents.iter().position(|a| *a == p.addr) {
            Some(i) => i,
            None => {
                agents.push(p.addr);
                agents.len() - 1
            }
        })
        .collect()
}

/// Runs every part on the open connections `conns`, beside the stall
/// watchdog, until all end (the stages' reports, in order) or one stops.
async fn run_parts(
    attempt: &Attempt<'_>,
    conns: &mut [AgentConn],
    inputs: &mut Inputs<'_>,
    results: &mut Results<'_>,
) -> Result<Vec<StageReport>, Stop> {
    let n = conns.len();
    let mut halves: Vec<_> = conns
        .iter_mut()
        .map(|c| (c.addr(), c.heartbeat(), c.halves()))
        .collect();
    let mut parts = attempt.parts(&mut halves, inputs, results);
    // Poll everything; the first stop ends the run (the connections close
    // when the run returns, which stops every stage). An agent that dies
    // makes its neighbours complain too, over other connections: what
    // arrives in a short grace is weighed together.
    let mut reports = Vec::with_capacity(n);
    let stalled = async { Err(attempt.stalled().await) };
    let watched = attempt.watched();
    let outcome = future::or(
        poll_all(&mut parts, &mut reports),
        future::or(stalled, watched),
    )
    .await;
    if let Err(first) = outcome {
        return Err(settle(first, &mut parts, reports).await);
    }
    reports.sort_by_key(|r| r.stage);
    Ok(reports)
}

/// What a run whose part stopped with `first` comes to: unless that
/// settles it (a lost agent or a task error), the other `parts` may still
/// report for a [`GRACE`], and every stop is weighed together.
async fn settle(first: PartStop, parts: &mut Vec<Part<'_>>, mut reports: Vec<StageReport>) -> Stop {
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
            match future::or(poll_all(parts, &mut reports), grace).await {
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
    decide(stops, reports)
}

/// Probes the agents' clocks again, collects their events and merges the
/// run's trace; `peers`: each stage's agent, `probes`: each agent's probes
/// before the run.
async fn gather(
    rec: Recorder,
    conns: &mut [AgentConn],
    peers: &[usize],
    probes: Vec<Option<Option<Vec<ClockSample>>>>,
    kernels: &[Kernel],
    job: JobId,
) -> Trace {
    // Each agent once, on the connection of its first stage (agents are
    // numbered in that order).
    let firsts: Vec<usize> = (0..probes.len())
        .filter_map(|a| peers.iter().position(|&p| p == a))
        .collect();
    let on = conns
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| firsts.contains(i))
        .map(|(_, c)| c);
    let before = probes.into_iter().map(Option::flatten).collect();
    let agents = trace::gather(on, before, rec.clock(), job).await;
    merged(rec, kernels, job, agents)
}

/// [`gather`] after a run that stopped (`stop`): its connections are
/// gone, so each agent still there is asked on a new one, within
/// [`GATHER_AFTER_STOP`] each; the agents it lost, and those that do not
/// answer in time, are left out (the trace's mark names the lost).
async fn gather_after(
    spec: &StreamSpec<'_>,
    rec: Recorder,
    (placement, peers): (&[Placement], &[usize]),
    probes: Vec<Option<Option<Vec<ClockSample>>>>,
    kernels: &[Kernel],
    (job, stop): (JobId, &Stop),
) -> Trace {
    let lost: Vec<SocketAddr> = match stop {
        Stop::Restart { lost, .. } => lost.iter().map(|l| l.0).collect(),
        Stop::Fail(_) => Vec::new(),
    };
    let mut agents = Vec::new();
    for (agent, probe) in probes.into_iter().enumerate() {
        let Some(first) = peers.iter().position(|&p| p == agent) else {
            continue;
        };
        let addr = placement[first].addr;
        if lost.contains(&addr) {
            continue;
        }
        let asked = async {
            let mut conn = AgentConn::connect(addr, spec.key, spec.opts).await?;
            let got = trace::gather([&mut conn], vec![probe.flatten()], rec.clock(), job).await;
            conn.close().await;
            Ok::<_, ClientError>(got)
        };
        match skelpi_wire::within(GATHER_AFTER_STOP, asked).await {
            Some(Ok(got)) => agents.extend(got),
            Some(Err(e)) => log::debug!("job {job}: no trace from {addr}: {e}"),
            None => log::debug!("job {job}: no trace from {addr} within {GATHER_AFTER_STOP:?}"),
        }
    }
    merged(rec, kernels, job, agents)
}

/// The run's trace: the master's records and the agents', merged.
fn merged(rec: Recorder, kernels: &[Kernel], job: JobId, agents: Vec<trace::AgentTrace>) -> Trace {
    let names = kernels.iter().map(Kernel::to_string).collect();
    let tree = Skeleton::pipe(kernels.iter().cloned().map(Skeleton::seq)).to_string();
    trace::merge::merge(&rec.finish(job, tree, names, agents))
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
    use crate::runtime::TaskError;

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
