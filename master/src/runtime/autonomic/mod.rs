//! Autonomic skeletons: a manager that keeps a job's stages at the degrees
//! its contract needs, while the job runs (the seed's "autonomic
//! first-stage pipeline" and "manager with inviso/heartbeat").
//!
//! A managed job is a pipeline of `seq(k)` and `farm(seq(k))` stages (or a
//! single one), run by the master: every stage is elastic — its items go
//! out as tasks on demand, at most its *degree* at once, results put back
//! in order — so a plain stage becomes a farm by raising its degree
//! (stages are pure). [`metrics`] keeps live totals per stage and per
//! agent (always on: a few counters per task); [`manager::Manager`] judges
//! them every period and sets the degrees; the feeder admits items only as
//! the stages have room (and paced to a throughput contract), so queues
//! stay short. Every decision goes to the log, to the caller and to the
//! trace; the [`Report`] says whether the contract was met, and why not.

pub mod gate;
mod graph;
pub mod manager;
pub mod metrics;

pub use manager::{Action, Contract, Decision, PoolSize};

use super::handoff::{Inputs, Results};
use super::job;
use super::{JobError, check::check};
use crate::client::AgentConn;
use crate::trace::{Trace, TraceError};
use graph::Control;
use manager::{Manager, meets};
use metrics::{AgentTotals, StageWindow, Totals, window};
use skelpi_proto::skeleton::{Kernel, Skeleton};
use std::time::Duration;

/// How a managed job runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// What the manager keeps the job at.
    pub contract: Contract,
    /// How often it looks.
    pub period: Duration,
    /// Changes it may make in a job (reverts included).
    pub max_changes: usize,
    /// Run at these degrees, unmanaged (a baseline for the manager). The
    /// contract still paces the feeder.
    pub fixed: Option<Vec<usize>>,
    /// Stop the job as stalled when nothing moved for this long (see
    /// [`crate::runtime::stall`]; `None`: never).
    /// [`crate::cluster::Cluster::run_managed`] sets it from the
    /// cluster's stall timeout.
    pub stall: Option<Duration>,
    /// Keep this watch up to date while the job runs (see
    /// [`crate::watch`]); [`crate::cluster::Cluster::run_managed`] sets
    /// it from the cluster's.
    pub watch: Option<crate::watch::Watch>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            contract: Contract::Fastest,
            period: Duration::from_millis(250),
            max_changes: manager::MAX_CHANGES,
            fixed: None,
            stall: Some(crate::runtime::stall::DEFAULT_STALL_TIMEOUT),
            watch: None,
        }
    }
}

/// The stages a managed job runs: each one's kernel and starting degree
/// (a farm's replicas, else one). `Err` names what cannot be managed.
pub fn stages(skeleton: &Skeleton) -> Result<Vec<(Kernel, usize)>, JobError> {
    let one = |s: &Skeleton| match s {
        Skeleton::Seq(k) => Some((k.clone(), 1)),
        Skeleton::Farm {
            worker, replicas, ..
        } => match worker.as_ref() {
            Skeleton::Seq(k) => Some((k.clone(), replicas.map_or(1, |r| r.max(1) as usize))),
            _ => None,
        },
        _ => None,
    };
    let found = match skeleton {
        Skeleton::Pipe(stages) => stages.iter().map(one).collect::<Option<Vec<_>>>(),
        s => one(s).map(|s| vec![s]),
    };
    found.filter(|s| !s.is_empty()).ok_or_else(|| {
        JobError::Unmanageable(format!(
            "a managed job is a pipeline of seq(k) and farm(seq(k)) stages, or one of them; \
             {skeleton} is not"
        ))
    })
}

/// What a managed job did.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Its contract.
    pub contract: Contract,
    /// Each stage's kernel, as text.
    pub stages: Vec<String>,
    /// Degrees at the start.
    pub initial: Vec<usize>,
    /// Degrees at the end.
    pub degrees: Vec<usize>,
    /// Every decision, in order (the first 256).
    pub decisions: Vec<Decision>,
    /// Changes of degrees made (reverts included).
    pub changes: usize,
    /// When the last change was made, since the start (`None`: none was).
    pub settled_at: Option<Duration>,
    /// From the start to the last result.
    pub elapsed: Duration,
    /// Results out of the last stage.
    pub items: u64,
    /// Mean throughput over the whole job, items per second.
    pub throughput: f64,
    /// Throughput from the last change to the last result, items per
    /// second; `None` when that is too short to judge (under
    /// [`manager::MIN_WINDOW`] or 20 results) — then the job's mean counts.
    pub settled_throughput: Option<f64>,
    /// Why the manager stopped giving slots, if it did.
    pub limit: Option<String>,
    /// Each stage in the last window the manager judged (the whole job if
    /// none was judged).
    pub per_stage: Vec<StageWindow>,
    /// The live pool in the last window the manager judged (`None`: none
    /// was): smaller than at the start once an agent was lost.
    pub pool: Option<PoolSize>,
    /// Items each stage finished over the whole job.
    pub served: Vec<u64>,
    /// What each agent did for each stage (by stage, then agent position
    /// in the pool).
    pub per_agent: Vec<Vec<AgentTotals>>,
}

impl Report {
    /// The throughput the verdict is based on: settled, else the job's.
    pub fn judged_throughput(&self) -> f64 {
        self.settled_throughput.unwrap_or(self.throughput)
    }

    /// Whether the contract was met: the settled throughput reached it
    /// ([`manager::MET`] of it, give or take one item; always, as fast as
    /// the pool allows).
    pub fn met(&self) -> bool {
        match self.contract {
            Contract::Fastest => true,
            Contract::Throughput(t) => {
                let span = match (self.settled_at, self.settled_throughput) {
                    (Some(at), Some(_)) => self.elapsed.saturating_sub(at),
                    _ => self.elapsed,
                };
                meets(self.judged_throughput(), span.as_secs_f64(), t)
            }
        }
    }

    /// The summary `skelpi run` prints: the contract and whether it was
    /// met (and why not), the final degrees, each stage's figures.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let verdict = match (self.contract, self.met()) {
            (Contract::Fastest, _) => "best effort".to_string(),
            (_, true) => "met".to_string(),
            (_, false) => format!(
                "NOT met: {}",
                self.limit
                    .as_deref()
                    .unwrap_or("the job ended before the manager could reach it (too few items?)")
            ),
        };
        let _ = writeln!(s, "manager: contract {} — {verdict}", self.contract);
        let changes = match self.changes {
            1 => "1 change".to_string(),
            n => format!("{n} changes"),
        };
        let settled = match (self.settled_at, self.settled_throughput) {
            (None, _) => "no change was needed".to_string(),
            (Some(t), Some(x)) => {
                format!(
                    "settled after {:.1}s; {x:.1} items/s since",
                    t.as_secs_f64()
                )
            }
            (Some(t), None) => format!("last change at {:.1}s, too late to judge", t.as_secs_f64()),
        };
        let _ = writeln!(
            s,
            "manager: degrees {} → {} ({changes}, {settled}); {:.1} items/s over the job",
            manager::list(&self.initial),
            manager::list(&self.degrees),
            self.throughput
        );
        if let (Contract::Fastest, Some(limit)) = (self.contract, &self.limit) {
            let _ = writeln!(s, "manager: stopped giving slots: {limit}");
        }
        for (i, (w, name)) in self.per_stage.iter().zip(&self.stages).enumerate() {
            let ms = |v| metrics::ms(v, 2);
            let agents = self.per_agent[i]
                .iter()
                .enumerate()
                .filter(|(_, a)| a.served > 0)
                .map(|(a, t)| format!("#{a}:{}", t.served))
                .collect::<Vec<_>>()
                .join(" ");
            let _ = writeln!(
                s,
                "  stage {} {name}: degree {}, Ts {}, Ta {}, rho {} at degree {}; {} items (by agent {agents})",
                i + 1,
                self.degrees[i],
                ms(w.service),
                ms(w.interarrival),
                w.rho.map_or("?".into(), |r| format!("{r:.2}")),
                w.degree,
                self.served[i],
            );
        }
        s
    }

    /// Renumbers the agents of `per_agent` from positions among the
    /// connections the job ran on to positions in the pool (`places[i]`:
    /// the pool position of connection i).
    pub fn renumber_agents(&mut self, places: &[usize]) {
        for stage in &mut self.per_agent {
            let mut pooled = Vec::new();
            for (i, a) in stage.iter().enumerate() {
                let at = places.get(i).copied().unwrap_or(i);
                if pooled.len() <= at {
                    pooled.resize(at + 1, AgentTotals::default());
                }
                pooled[at] = *a;
            }
            *stage = pooled;
        }
    }
}

/// Checks what a managed job needs of its options.
fn validate(opts: &Options, stages: usize) -> Result<(), JobError> {
    let bad = |why: String| Err(JobError::Unmanageable(why));
    if opts.period < Duration::from_millis(10) {
        return bad(format!(
            "a period of {:?} is too short (at least 10 ms)",
            opts.period
        ));
    }
    if let Contract::Throughput(t) = opts.contract
        && !(t.is_finite() && t > 0.0)
    {
        return bad(format!(
            "a throughput of {t} items/s is not a positive rate"
        ));
    }
    if let Some(fixed) = &opts.fixed {
        if fixed.len() != stages {
            return bad(format!("{} fixed degrees for {stages} stages", fixed.len()));
        }
        if fixed.contains(&0) {
            return bad(format!("fixed degrees {} include 0", manager::list(fixed)));
        }
    }
    Ok(())
}

/// Runs `skeleton` (see [`stages`]) on `inputs` over `conns`, managed as
/// `opts` say; results go to `results` in input order, decisions to
/// `on_decision` as they are made. Traced if `trace_out` is given (the
/// decisions are marks of the trace). The report is there when the job
/// started, even if it failed; `None` when it could not start (a tree or
/// options a manager cannot run: [`JobError::Unmanageable`]).
pub async fn run(
    conns: &mut [AgentConn],
    skeleton: &Skeleton,
    inputs: Inputs<'_>,
    results: Results<'_>,
    opts: &Options,
    on_decision: impl FnMut(&Decision),
    trace_out: Option<&mut Result<Trace, TraceError>>,
) -> (Result<(), JobError>, Option<Report>) {
    let stages = match check(skeleton)
        .and_then(|()| stages(skeleton))
        .and_then(|s| validate(opts, s.len()).map(|()| s))
    {
        Ok(s) => s,
        Err(e) => return (Err(e), None),
    };
    let (kernels, initial): (Vec<Kernel>, Vec<usize>) = stages.into_iter().unzip();
    let start = opts.fixed.clone().unwrap_or(initial);
    let names = kernels.iter().map(Kernel::to_string).collect();
    let manager = opts
        .fixed
        .is_none()
        .then(|| Manager::new(opts.contract, names, start.clone(), opts.max_changes));
    let pace = match opts.contract {
        Contract::Throughput(t) => Some(t),
        Contract::Fastest => None,
    };
    let ctl = Control::new(
        kernels,
        &start,
        manager,
        pace,
        opts.period,
        Box::new(on_decision),
    );
    // A paced feed waits between items: that is not a stall.
    let every = pace.and_then(|t| Duration::try_from_secs_f64(1.0 / t).ok());
    let stall = crate::runtime::stall::paced(opts.stall, every);
    let limits = job::Limits {
        stall,
        task_deadline: None,
        watch: opts.watch.clone(),
        swaps: None,
    };
    let result = job::run_graph(conns, skeleton, &ctl, inputs, results, trace_out, limits)
        .await
        .map(drop);
    (result, Some(report(&ctl, opts.contract, start)))
}

/// Results after the last change needed to judge the settled throughput.
const SETTLED_ITEMS: u64 = 20;

fn report(ctl: &Control<'_>, contract: Contract, initial: Vec<usize>) -> Report {
    let start = ctl.start.get();
    let end = ctl.last_out.get().unwrap_or(start);
    let elapsed = end - start;
    let secs = elapsed.as_secs_f64().max(1e-9);
    let totals = ctl.totals.borrow();
    let degrees = ctl.degrees();
    let items = ctl.out.get();
    let per_stage = match ctl.last_window.borrow().as_ref() {
        Some(obs) => obs.stages.clone(),
        None => totals
            .iter()
            .zip(&degrees)
            .map(|(t, &d)| window(&Totals::default(), t, secs, d))
            .collect(),
    };
    let (settled_at, settled_throughput) = match ctl.last_change.get() {
        Some((at, out)) => {
            let span = end.saturating_duration_since(at).as_secs_f64();
            let n = items - out;
            let judged = span >= manager::MIN_WINDOW && n >= SETTLED_ITEMS;
            (Some(at - start), judged.then(|| n as f64 / span))
        }
        None => (None, Some(items as f64 / secs)),
    };
    let manager = ctl.manager.borrow();
    Report {
        contract,
        stages: ctl.names.clone(),
        initial,
        degrees,
        decisions: ctl.decisions.borrow().clone(),
        changes: manager.as_ref().map_or(0, Manager::changes),
        settled_at,
        elapsed,
        items,
        throughput: items as f64 / secs,
        settled_throughput,
        limit: manager
            .as_ref()
            .and_then(|m| m.saturated().map(str::to_owned)),
        per_stage,
        pool: ctl.last_window.borrow().as_ref().map(|obs| obs.pool),
        served: totals.iter().map(|t| t.served).collect(),
        per_agent: totals.iter().map(|t| t.agents.clone()).collect(),
    }
}
