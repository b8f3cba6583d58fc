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

use super::job;
use super::{JobError, check::check};
use crate::client::AgentConn;
use crate::trace::{Trace, TraceError};
use graph::Control;
use manager::{MET, Manager};
use metrics::{AgentTotals, StageWindow, window};
use skelpi_agent::kernels::Array;
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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            contract: Contract::Fastest,
            period: Duration::from_millis(250),
            max_changes: manager::MAX_CHANGES,
            fixed: None,
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
        JobError::Invalid(format!(
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
    /// Degrees at the start and at the end.
    pub initial: Vec<usize>,
    /// Degrees at the end.
    pub degrees: Vec<usize>,
    /// Every decision, in order.
    pub decisions: Vec<Decision>,
    /// Changes of degrees made (reverts included).
    pub changes: usize,
    /// When the last change was made, since the start (`None`: none was).
    pub settled_at: Option<Duration>,
    /// The job's length, and its results.
    pub elapsed: Duration,
    /// Results out of the last stage.
    pub items: u64,
    /// Mean throughput over the whole job, items per second.
    pub throughput: f64,
    /// Throughput from the last change to the end (the whole job if there
    /// was none), items per second.
    pub settled_throughput: f64,
    /// Why the manager stopped giving slots, if it did.
    pub limit: Option<String>,
    /// Each stage over the whole job.
    pub per_stage: Vec<StageWindow>,
    /// What each agent did for each stage (by stage, then agent position).
    pub per_agent: Vec<Vec<AgentTotals>>,
}

impl Report {
    /// Whether the contract was met: the settled throughput reached it
    /// ([`MET`] of it; always, as fast as the pool allows).
    pub fn met(&self) -> bool {
        match self.contract {
            Contract::Fastest => true,
            Contract::Throughput(t) => self.settled_throughput >= t * MET,
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
        let settled = self
            .settled_at
            .map_or("no change was needed".to_string(), |t| {
                format!("settled after {:.1}s", t.as_secs_f64())
            });
        let _ = writeln!(
            s,
            "manager: degrees {} → {} ({} changes, {settled}); {:.1} items/s since, {:.1} over the job",
            manager::list(&self.initial),
            manager::list(&self.degrees),
            self.changes,
            self.settled_throughput,
            self.throughput
        );
        if let (Contract::Fastest, Some(limit)) = (self.contract, &self.limit) {
            let _ = writeln!(s, "manager: stopped giving slots: {limit}");
        }
        for (i, (w, name)) in self.per_stage.iter().zip(&self.stages).enumerate() {
            let ms = |v: Option<f64>| v.map_or("?".into(), |v| format!("{:.2} ms", v * 1e3));
            let agents = self.per_agent[i]
                .iter()
                .enumerate()
                .filter(|(_, a)| a.served > 0)
                .map(|(a, t)| format!("#{a}:{}", t.served))
                .collect::<Vec<_>>()
                .join(" ");
            let _ = writeln!(
                s,
                "  stage {} {name}: degree {}, Ts {}, Ta {}, rho {}, {} items (by agent {agents})",
                i + 1,
                self.degrees[i],
                ms(w.service),
                ms(w.interarrival),
                w.rho.map_or("?".into(), |r| format!("{r:.2}")),
                w.served,
            );
        }
        s
    }
}

/// Runs `skeleton` (see [`stages`]) on `inputs` over `conns`, managed as
/// `opts` say; results go to `on_result` in input order, decisions to
/// `on_decision` as they are made. Traced if `trace_out` is given (the
/// decisions are marks of the trace). The report is there even when the
/// job failed.
pub async fn run(
    conns: &mut [AgentConn],
    skeleton: &Skeleton,
    inputs: impl IntoIterator<Item = Array>,
    on_result: impl FnMut(u64, Array),
    opts: &Options,
    on_decision: impl FnMut(&Decision),
    trace_out: Option<&mut Result<Trace, TraceError>>,
) -> (Result<(), JobError>, Option<Report>) {
    let stages = match check(skeleton).and_then(|()| stages(skeleton)) {
        Ok(s) => s,
        Err(e) => return (Err(e), None),
    };
    let (kernels, initial): (Vec<Kernel>, Vec<usize>) = stages.into_iter().unzip();
    let start = opts.fixed.clone().unwrap_or_else(|| initial.clone());
    if start.len() != kernels.len() {
        let why = format!("{} fixed degrees for {} stages", start.len(), kernels.len());
        return (Err(JobError::Invalid(why)), None);
    }
    let cores: usize = conns.iter().map(|c| (c.info().cores as usize).max(1)).sum();
    let pool = PoolSize {
        cores,
        slots: cores * super::dispatch::CREDITS_PER_WORKER,
    };
    let names = kernels.iter().map(Kernel::to_string).collect();
    let manager = opts
        .fixed
        .is_none()
        .then(|| Manager::new(opts.contract, pool, names, start.clone(), opts.max_changes));
    let pace = match opts.contract {
        Contract::Throughput(t) if t > 0.0 => Some(t),
        _ => None,
    };
    let ctl = Control::new(
        kernels,
        &start,
        manager,
        pace,
        opts.period,
        Box::new(on_decision),
    );
    let result = job::run_graph(conns, skeleton, &ctl, inputs, on_result, trace_out).await;
    (result, Some(report(&ctl, opts.contract, start)))
}

fn report(ctl: &Control<'_>, contract: Contract, initial: Vec<usize>) -> Report {
    let elapsed = ctl.start.elapsed();
    let totals = ctl.totals.borrow();
    let degrees = ctl.degrees();
    let secs = elapsed.as_secs_f64().max(1e-9);
    let zero = metrics::Totals::default();
    let per_stage = totals
        .iter()
        .zip(&degrees)
        .map(|(t, &d)| window(&zero, t, secs, d))
        .collect();
    let items = ctl.out.get();
    let manager = ctl.manager.borrow();
    let (settled_at, settled_throughput) = match ctl.last_change.get() {
        Some((at, out)) => {
            let since = at.elapsed().as_secs_f64().max(1e-9);
            (Some(at - ctl.start), (items - out) as f64 / since)
        }
        None => (None, items as f64 / secs),
    };
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
        per_agent: totals.iter().map(|t| t.agents.clone()).collect(),
    }
}
