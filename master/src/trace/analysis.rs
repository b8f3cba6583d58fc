//! What a trace says: where time went on each node, each stage's service
//! time Ts, inter-arrival time Ta and utilisation rho = Ts / (Ta × workers)
//! (the seed's pipeline measures), tasks per worker, and the bottleneck.
//!
//! Ta is the traced span divided by the stage's items: the mean time
//! between its inputs over the whole job, the inverse of its throughput.
//! rho is then the utilisation law's U = X × S / m: the share of the job
//! its workers were busy. (The spacing of a stage's own arrivals would not
//! do: buffers let a fast stage take its whole input early, run flat out
//! for a while and finish early, which looks saturated over its own short
//! window though it never held the pipeline back.)

use super::merge::{Event, Node, Trace};
use serde::Serialize;
use skelpi_proto::trace::TraceKind;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A stage whose rho reaches this is saturated: the bottleneck.
pub const SATURATED: f64 = 0.8;

/// The analysis of one trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    /// The job id.
    pub job: String,
    /// The skeleton.
    pub skeleton: String,
    /// The time analysed: from the first event (or, if some node lost
    /// events, the first moment every node's record is complete) to the
    /// last, seconds.
    pub span_s: f64,
    /// Per node (master first).
    pub nodes: Vec<NodeUse>,
    /// Per stage, in pipeline order (streamed) or by kernel.
    pub stages: Vec<StageUse>,
    /// Per worker thread that ran anything.
    pub workers: Vec<WorkerUse>,
    /// The stage with the highest rho, if it is saturated.
    pub bottleneck: Option<String>,
    /// One line naming the bottleneck, or saying there is none.
    pub verdict: String,
    /// Messages whose receive was recorded before their send (after clock
    /// correction; should be 0).
    pub acausal_messages: usize,
    /// The trace's notes.
    pub notes: Vec<String>,
    /// The master's marks (a manager's decisions): seconds since the
    /// trace's first event, and what.
    pub marks: Vec<(f64, String)>,
}

/// Where one node's time went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeUse {
    /// Its name.
    pub name: String,
    /// Worker threads (0: the master).
    pub workers: u32,
    /// Kernel time, all workers together, seconds.
    pub compute_s: f64,
    /// Time sending frames, seconds.
    pub send_s: f64,
    /// Time receiving frames, seconds.
    pub recv_s: f64,
    /// compute / (workers × span): how busy its worker threads were.
    pub worker_use: f64,
    /// Share of the span some kernel ran on it.
    pub compute_share: f64,
    /// Share of the span no kernel ran but some frame moved.
    pub comm_share: f64,
    /// Share of the span it did neither: waiting.
    pub idle_share: f64,
    /// Frame bytes sent.
    pub bytes_sent: u64,
    /// Frame bytes received.
    pub bytes_received: u64,
    /// Events lost before collection.
    pub dropped: u64,
}

/// One stage's measures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageUse {
    /// `stage N: kernel` for a streamed stage, else the kernel.
    pub stage: String,
    /// The nodes it ran on.
    pub agents: Vec<String>,
    /// Kernel calls.
    pub items: usize,
    /// Distinct worker threads that ran it.
    pub workers: usize,
    /// Mean kernel time, seconds.
    pub ts_s: f64,
    /// Mean time between its inputs over the traced span, seconds.
    pub ta_s: f64,
    /// Ts / (Ta × workers).
    pub rho: f64,
    /// Mean wait of an input before its call, seconds.
    pub wait_s: f64,
}

/// One worker thread's share.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerUse {
    /// Its node.
    pub node: String,
    /// Its number on the node.
    pub worker: usize,
    /// Kernel calls it ran.
    pub tasks: usize,
    /// Their total time, seconds.
    pub busy_s: f64,
}

impl Analysis {
    /// Analyses a trace.
    pub fn of(trace: &Trace) -> Analysis {
        let window = Window::of(trace);
        let span_us = window.span_us;
        let nodes: Vec<NodeUse> = trace
            .nodes
            .iter()
            .map(|n| NodeUse::of(n, &window.events, span_us))
            .collect();
        let stages = StageUse::all(trace, &window.events, span_us);
        let workers = WorkerUse::all(trace, &window.events);
        let (bottleneck, verdict) = verdict(&stages, &nodes);
        let mut notes = trace.notes.clone();
        notes.extend(window.note);
        let origin_us = trace.events.first().map_or(0.0, |e| e.ts_us);
        Analysis {
            job: trace.job.clone(),
            skeleton: trace.skeleton.clone(),
            span_s: span_us / 1e6,
            nodes,
            stages,
            workers,
            bottleneck,
            verdict,
            acausal_messages: acausal_messages(trace),
            notes,
            marks: trace
                .marks
                .iter()
                .map(|m| ((m.ts_us - origin_us) / 1e6, m.text.clone()))
                .collect(),
        }
    }
}

/// The part of a trace analysed: every event, or — where a node lost its
/// oldest events — those from the first moment every node's record is
/// complete.
struct Window<'t> {
    events: Vec<&'t Event>,
    /// From the first event's start to the last's end, microseconds.
    span_us: f64,
    /// What a reader should know when events were left out.
    note: Option<String>,
}

impl<'t> Window<'t> {
    fn of(trace: &'t Trace) -> Window<'t> {
        // Where a node lost its oldest events, only the time after its
        // first kept one is complete everywhere.
        let first_of = |pid: u32| {
            trace
                .events
                .iter()
                .filter(|e| e.pid == pid)
                .map(|e| e.ts_us)
                .fold(f64::INFINITY, f64::min)
        };
        let complete_from = trace
            .nodes
            .iter()
            .filter(|n| n.dropped > 0)
            .map(|n| first_of(n.pid))
            .filter(|t| t.is_finite())
            .fold(f64::NEG_INFINITY, f64::max);
        let events: Vec<&Event> = trace
            .events
            .iter()
            .filter(|e| e.ts_us >= complete_from)
            .collect();
        let first = events.iter().map(|e| e.ts_us).fold(f64::INFINITY, f64::min);
        let last = events
            .iter()
            .map(|e| e.end_us())
            .fold(f64::NEG_INFINITY, f64::max);
        let span_us = if last > first { last - first } else { 0.0 };
        let note = complete_from.is_finite().then(|| {
            let all = trace
                .events
                .iter()
                .map(|e| e.ts_us)
                .fold(f64::INFINITY, f64::min);
            format!(
                "the analysis covers the last {} of the job ({} dropped), where every \
                 node's record is complete",
                duration(span_us / 1e6),
                duration((first - all).max(0.0) / 1e6)
            )
        });
        Window {
            events,
            span_us,
            note,
        }
    }
}

/// The name of node `pid`.
fn node_name(trace: &Trace, pid: u32) -> String {
    trace
        .nodes
        .iter()
        .find(|n| n.pid == pid)
        .map_or_else(|| format!("node {pid}"), |n| n.name.clone())
}

impl NodeUse {
    /// Where node `n`'s time went among `events`, over `span_us`.
    fn of(n: &Node, events: &[&Event], span_us: f64) -> NodeUse {
        let mine: Vec<&Event> = events.iter().copied().filter(|e| e.pid == n.pid).collect();
        let (mut compute, mut send, mut recv, mut sent, mut got) = (0.0, 0.0, 0.0, 0, 0);
        for e in &mine {
            match e.kind {
                TraceKind::Kernel => compute += e.dur_us,
                k if k.is_send() => {
                    send += e.dur_us;
                    sent += e.bytes;
                }
                _ => {
                    recv += e.dur_us;
                    got += e.bytes;
                }
            }
        }
        let capacity = f64::from(n.workers) * span_us;
        let share = |t: f64| if span_us > 0.0 { t / span_us } else { 0.0 };
        let (computing, communicating) = partition(&mine);
        NodeUse {
            name: n.name.clone(),
            workers: n.workers,
            compute_s: compute / 1e6,
            send_s: send / 1e6,
            recv_s: recv / 1e6,
            worker_use: if capacity > 0.0 {
                compute / capacity
            } else {
                0.0
            },
            compute_share: share(computing),
            comm_share: share(communicating),
            idle_share: if span_us > 0.0 {
                (1.0 - share(computing) - share(communicating)).max(0.0)
            } else {
                0.0
            },
            bytes_sent: sent,
            bytes_received: got,
            dropped: n.dropped,
        }
    }
}

/// A stage's kernel calls, gathered from the events.
#[derive(Default)]
struct Calls {
    /// Each call's kernel time and wait, microseconds.
    calls: Vec<(f64, f64)>,
    /// The (node, lane) pairs that ran them.
    lanes: BTreeSet<(u32, u32)>,
    /// The nodes that ran them.
    agents: BTreeSet<u32>,
}

impl StageUse {
    /// Every stage's measures over `span_us`: streamed ones by position,
    /// routed tasks by kernel.
    fn all(trace: &Trace, events: &[&Event], span_us: f64) -> Vec<StageUse> {
        let key = |stage: Option<u32>, kernel: &Option<String>| -> Option<(u32, String)> {
            match stage {
                Some(s) => Some((s, trace.stages.get(s as usize)?.clone())),
                None => Some((u32::MAX, kernel.clone()?)),
            }
        };
        let mut stages: BTreeMap<(u32, String), Calls> = BTreeMap::new();
        for e in events.iter().filter(|e| e.kind == TraceKind::Kernel) {
            if let Some(k) = key(e.stage, &e.kernel) {
                let acc = stages.entry(k).or_default();
                acc.calls.push((e.dur_us, e.wait_us));
                acc.lanes.insert((e.pid, e.lane.0));
                acc.agents.insert(e.pid);
            }
        }
        stages
            .into_iter()
            .filter(|(_, a)| !a.calls.is_empty())
            .map(|((s, kernel), a)| {
                let stage = if s == u32::MAX {
                    kernel
                } else {
                    format!("stage {s}: {kernel}")
                };
                StageUse::of(stage, &a, trace, span_us)
            })
            .collect()
    }

    /// The measures of one stage, named `stage`, from its calls.
    fn of(stage: String, a: &Calls, trace: &Trace, span_us: f64) -> StageUse {
        let n = a.calls.len() as f64;
        let ts = a.calls.iter().map(|c| c.0).sum::<f64>() / n;
        let wait = a.calls.iter().map(|c| c.1).sum::<f64>() / n;
        let ta = span_us / n;
        let workers = a.lanes.len().max(1);
        let rho = if ta > 0.0 {
            ts / (ta * workers as f64)
        } else {
            0.0
        };
        StageUse {
            stage,
            agents: a.agents.iter().map(|&p| node_name(trace, p)).collect(),
            items: a.calls.len(),
            workers,
            ts_s: ts / 1e6,
            ta_s: ta / 1e6,
            rho,
            wait_s: wait / 1e6,
        }
    }
}

impl WorkerUse {
    /// The share of every worker thread that ran a kernel among `events`.
    fn all(trace: &Trace, events: &[&Event]) -> Vec<WorkerUse> {
        let mut per_worker: BTreeMap<(u32, usize), (usize, f64)> = BTreeMap::new();
        for e in events.iter().filter(|e| e.kind == TraceKind::Kernel) {
            if let Some(w) = e.lane.as_worker() {
                let slot = per_worker.entry((e.pid, w)).or_default();
                slot.0 += 1;
                slot.1 += e.dur_us;
            }
        }
        per_worker
            .into_iter()
            .map(|((pid, worker), (tasks, busy))| WorkerUse {
                node: node_name(trace, pid),
                worker,
                tasks,
                busy_s: busy / 1e6,
            })
            .collect()
    }
}

/// Messages whose receive starts before their send, in the whole trace.
fn acausal_messages(trace: &Trace) -> usize {
    super::merge::messages(&trace.events)
        .into_iter()
        .filter(|&(s, r)| trace.events[r].ts_us < trace.events[s].ts_us)
        .count()
}

/// How long some kernel ran, and how long only frames moved, on one node:
/// a sweep over its events' starts and ends (microseconds).
fn partition(events: &[&Event]) -> (f64, f64) {
    let mut points: Vec<(f64, bool, i32)> = Vec::with_capacity(2 * events.len());
    for e in events {
        let kernel = e.kind == TraceKind::Kernel;
        points.push((e.ts_us, kernel, 1));
        points.push((e.end_us(), kernel, -1));
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut kernels, mut frames) = (0i32, 0i32);
    let (mut computing, mut communicating) = (0.0, 0.0);
    let mut at = points.first().map_or(0.0, |p| p.0);
    for (t, kernel, delta) in points {
        let dt = t - at;
        if kernels > 0 {
            computing += dt;
        } else if frames > 0 {
            communicating += dt;
        }
        at = t;
        if kernel {
            kernels += delta;
        } else {
            frames += delta;
        }
    }
    (computing, communicating)
}

fn verdict(stages: &[StageUse], nodes: &[NodeUse]) -> (Option<String>, String) {
    let Some(top) = stages.iter().max_by(|a, b| a.rho.total_cmp(&b.rho)) else {
        return (None, "no kernel ran: nothing to analyse".into());
    };
    let others = stages
        .iter()
        .filter(|s| s.stage != top.stage)
        .map(|s| s.rho)
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
    let rest = others.map_or(String::new(), |r| {
        format!("; the other stages wait for it (rho ≤ {r:.2})")
    });
    if top.rho >= SATURATED {
        let line = format!(
            "bottleneck: {} on {} — rho {:.2} (Ts {} against Ta {} with {} worker{}){rest}",
            top.stage,
            top.agents.join(", "),
            top.rho,
            duration(top.ts_s),
            duration(top.ta_s),
            top.workers,
            if top.workers == 1 { "" } else { "s" },
        );
        (Some(top.stage.clone()), line)
    } else {
        let master = nodes.first().map_or(0.0, |m| m.send_s + m.recv_s);
        let line = format!(
            "no stage is saturated (highest rho {:.2}, {}): the stages wait for their input — \
             the master's feed, the network, or cores shared with other agents on one host \
             limit throughput (the master spent {} sending and receiving frames)",
            top.rho,
            top.stage,
            duration(master)
        );
        (None, line)
    }
}

/// A duration in seconds, in the unit that reads best.
fn duration(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

impl fmt::Display for Analysis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "job {}: {}", self.job, self.skeleton)?;
        writeln!(f, "analysed span {}", duration(self.span_s))?;
        writeln!(f)?;
        writeln!(
            f,
            "time of each node: computing (some kernel runs), communicating (only \
             frames move), idle"
        )?;
        writeln!(
            f,
            "{:<20} {:>7} {:>10} {:>14} {:>6} {:>20} {:>12}",
            "node",
            "workers",
            "computing",
            "communicating",
            "idle",
            "kernel time (use)",
            "frame time"
        )?;
        for n in &self.nodes {
            let kernels = if n.workers > 0 {
                format!("{} ({:.0}%)", duration(n.compute_s), 100.0 * n.worker_use)
            } else {
                "-".into()
            };
            writeln!(
                f,
                "{:<20} {:>7} {:>9.0}% {:>13.0}% {:>5.0}% {:>20} {:>12}",
                n.name,
                n.workers,
                100.0 * n.compute_share,
                100.0 * n.comm_share,
                100.0 * n.idle_share,
                kernels,
                duration(n.send_s + n.recv_s),
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<32} {:>7} {:>7} {:>11} {:>11} {:>6} {:>11}  agents",
            "stage", "items", "workers", "Ts", "Ta", "rho", "wait"
        )?;
        for s in &self.stages {
            writeln!(
                f,
                "{:<32} {:>7} {:>7} {:>11} {:>11} {:>6.2} {:>11}  {}",
                s.stage,
                s.items,
                s.workers,
                duration(s.ts_s),
                duration(s.ta_s),
                s.rho,
                duration(s.wait_s),
                s.agents.join(", ")
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<20} {:>6} {:>7} {:>11}",
            "node", "worker", "tasks", "busy"
        )?;
        for w in &self.workers {
            writeln!(
                f,
                "{:<20} {:>6} {:>7} {:>11}",
                w.node,
                w.worker,
                w.tasks,
                duration(w.busy_s)
            )?;
        }
        writeln!(f)?;
        writeln!(f, "{}", self.verdict)?;
        if self.acausal_messages > 0 {
            writeln!(
                f,
                "warning: {} messages appear received before they were sent",
                self.acausal_messages
            )?;
        }
        for (at, text) in &self.marks {
            writeln!(f, "at {at:.2}s {text}")?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}
