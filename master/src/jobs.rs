//! One way to run a job: [`JobBuilder`] takes a tree, its inputs and
//! options, and [`JobBuilder::run`] chooses how the [`Cluster`] runs it.
//!
//! # Examples
//! A farm of `square` over four inputs, results in order:
//! ```
//! use skelpi::cluster::Cluster;
//! use skelpi::jobs::{Execution, JobBuilder};
//! use skelpi_proto::Array;
//! smol::block_on(async {
//!     let mut cluster = Cluster::local(2, &Default::default()).await?;
//!     let mut squares = Vec::new();
//!     let outcome = JobBuilder::new("farm(seq(square))".parse()?)
//!         .inputs((1..=4).map(|i| Array::list(vec![f64::from(i)])))
//!         .on_result(|_, a| squares.push(a.data[0]))
//!         .run(&mut cluster)
//!         .await;
//!     outcome.result?;
//!     assert_eq!(outcome.execution, Execution::Routed);
//!     assert_eq!(squares, [1.0, 4.0, 9.0, 16.0]);
//!     cluster.close().await;
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Implementation
//! The choice, made by [`JobBuilder::plan`] before anything is sent:
//! a job with a manager's options runs managed
//! ([`Cluster::run_managed`]); a pipeline of at least two `seq` stages
//! ([`streamable`]) is streamed agent to agent, through
//! [`Cluster::stream_pipeline_swapping`] when it has swaps; anything else
//! is routed through the master ([`Cluster::run_each`], which streams the
//! streamable trees itself; [`Cluster::run_routed_swapping`] when it has
//! swaps). Swaps name the tree's `seq` stages, in the order written; a
//! managed job takes none.

use crate::cluster::{Cluster, streamable};
use crate::modules::{PushError, Pushed};
use crate::runtime::JobError;
use crate::runtime::autonomic::{self, Contract};
use crate::runtime::stream::{self, StageReport, Swapped};
use crate::trace::{Trace, TraceError};
use crate::watch::Watch;
use skelpi_proto::Array;
use skelpi_proto::skeleton::{Kernel, Skeleton};
use std::fmt;
use std::path::PathBuf;
use thiserror::Error;

/// A job to run on a [`Cluster`]: its tree, its inputs and how to run
/// them; [`JobBuilder::run`] runs it.
pub struct JobBuilder<'a> {
    skeleton: Skeleton,
    inputs: Box<dyn Iterator<Item = Array> + 'a>,
    trace: Option<bool>,
    managed: Option<autonomic::Options>,
    swaps: Vec<Swap>,
    modules_base: Option<PathBuf>,
    watch: Option<Watch>,
    on_result: Box<dyn FnMut(u64, Array) + 'a>,
    on_event: Box<dyn FnMut(Event<'_>) + 'a>,
}

/// A stage's kernel replaced while a job runs (hot code loading): from
/// one switch point on, once `after` results are in. In a streamed
/// pipeline the stage switches at its next item; in a routed job (a farm,
/// a map, ...) at the job input after the last it sent a task for (see
/// [`crate::runtime::switch`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Swap {
    /// The stage: the tree's `seq` nodes numbered from 0 in the order
    /// written ([`Skeleton::seqs`]).
    pub stage: usize,
    /// The kernel it runs next.
    pub kernel: Kernel,
    /// Asked once this many results are in (0: before the first item).
    pub after: u64,
}

/// How a job runs.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Execution {
    /// The master routes every item, task by task, to the agents.
    Routed,
    /// A pipeline of `seq` stages streamed agent to agent.
    Streamed {
        /// Its number of stages.
        stages: usize,
    },
    /// A pipeline whose stages' degrees a manager sets while it runs.
    Managed(Contract),
}

/// `routed`, `streamed`, `managed (CONTRACT)`.
impl fmt::Display for Execution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Execution::Routed => f.write_str("routed"),
            Execution::Streamed { .. } => f.write_str("streamed"),
            Execution::Managed(c) => write!(f, "managed ({c})"),
        }
    }
}

/// What a job reports while it runs, to [`JobBuilder::on_event`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'e> {
    /// A module file the tree or a swap names was stored on the pool.
    ModuleStored(&'e Pushed),
    /// The job starts: the tree it runs (module files named by hash).
    Started {
        /// The tree.
        skeleton: &'e Skeleton,
        /// How it runs.
        execution: Execution,
    },
    /// The manager of a managed job decided this.
    Decision(&'e autonomic::Decision),
    /// A swap was asked of its stage.
    SwapAsked(&'e Swap),
    /// A swap that waits for more results than the job has: it is never
    /// asked.
    SwapNever {
        /// The swap.
        swap: &'e Swap,
        /// The job's number of inputs.
        inputs: u64,
    },
    /// What became of a swap, once the job ended.
    Swapped {
        /// Its stage.
        stage: usize,
        /// The swap and its outcome.
        swapped: &'e Swapped,
    },
}

/// Why a job could not run, or failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RunError {
    /// Swaps were asked of a job whose tree has no `seq` stage.
    #[error(
        "swap {stage}=...: {skeleton} has no seq stage to swap (a reduction's or a feedback \
         condition's kernel stays as written)"
    )]
    NoStages {
        /// The first swap's stage.
        stage: usize,
        /// The job's tree.
        skeleton: Box<Skeleton>,
    },
    /// A swap names a stage the job does not have.
    #[error(
        "swap {stage}={kernel}: the job has stages 0 to {last} (its seq kernels, numbered in \
         the order written)"
    )]
    NoSuchStage {
        /// The stage named.
        stage: usize,
        /// The kernel asked for.
        kernel: Kernel,
        /// The job's last stage.
        last: usize,
    },
    /// Swaps were asked of a managed job.
    #[error("swaps are for routed and streamed jobs, not managed ones")]
    ManagedSwaps,
    /// A swap waits for results a job of one result never gives.
    #[error(
        "swap {stage}={kernel}@{after}: this job gives one result (its reduction's), so no \
         swap can wait for results: ask it before the job starts, with @0"
    )]
    OneResult {
        /// The stage named.
        stage: usize,
        /// The kernel asked for.
        kernel: Kernel,
        /// The results it would wait for.
        after: u64,
    },
    /// A module file the job names could not be pushed.
    #[error(transparent)]
    Module(#[from] PushError),
    /// The job failed.
    #[error(transparent)]
    Job(#[from] JobError),
}

/// What a run came to.
#[derive(Debug)]
#[non_exhaustive]
pub struct Outcome {
    /// How it ran ([`Execution::Routed`] if it could not start).
    pub execution: Execution,
    /// Whether it ran to the end.
    pub result: Result<(), RunError>,
    /// Results handed to [`JobBuilder::on_result`].
    pub results: u64,
    /// A managed job's report, when it started (even if it failed).
    pub report: Option<autonomic::Report>,
    /// What each stage of a swapping pipeline measured (empty otherwise).
    pub stages: Vec<StageReport>,
    /// What became of each stage's swaps, by stage (empty without swaps,
    /// or when the job failed).
    pub swapped: Vec<Vec<Swapped>>,
    /// The job's trace, when [`JobBuilder::trace`] turned tracing on.
    pub trace: Option<Result<Trace, TraceError>>,
}

impl<'a> JobBuilder<'a> {
    /// A job running `skeleton` on no inputs yet, routed or streamed as
    /// the tree asks, its results dropped.
    pub fn new(skeleton: Skeleton) -> JobBuilder<'a> {
        JobBuilder {
            skeleton,
            inputs: Box::new(std::iter::empty()),
            trace: None,
            managed: None,
            swaps: Vec::new(),
            modules_base: None,
            watch: None,
            on_result: Box::new(|_, _| {}),
            on_event: Box::new(|_| {}),
        }
    }

    /// Its inputs, drawn only as the tree has room for them (a huge
    /// generator runs in bounded memory).
    pub fn inputs(mut self, inputs: impl IntoIterator<Item = Array, IntoIter: 'a>) -> Self {
        self.inputs = Box::new(inputs.into_iter());
        self
    }

    /// Turns the cluster's tracing on or off for this job and after (as
    /// [`Cluster::set_tracing`]); when on, the job's trace is in
    /// [`Outcome::trace`]. Unset, the cluster's setting stands and a trace
    /// stays for [`Cluster::take_trace`].
    pub fn trace(mut self, on: bool) -> Self {
        self.trace = Some(on);
        self
    }

    /// Runs the job managed (see [`autonomic`]), as `opts` say: a
    /// pipeline of `seq` and `farm(seq)` stages.
    pub fn managed(mut self, opts: autonomic::Options) -> Self {
        self.managed = Some(opts);
        self
    }

    /// Adds a swap of one of the tree's `seq` stages (any job but a
    /// managed one).
    pub fn swap(mut self, swap: Swap) -> Self {
        self.swaps.push(swap);
        self
    }

    /// Pushes the module files the tree and swaps name
    /// (`wasm:FILE.wasm:export`, `FILE` relative to `base`) to the pool
    /// before the job starts, and runs their kernels by hash.
    pub fn modules_relative_to(mut self, base: impl Into<PathBuf>) -> Self {
        self.modules_base = Some(base.into());
        self
    }

    /// Keeps `watch` up to date while the job runs: how it runs, its
    /// results, its stages' totals, agents lost and tasks sent again (a
    /// [`crate::watch::Publisher`] shows it to `skelpi top`).
    pub fn watch(mut self, watch: Watch) -> Self {
        self.watch = Some(watch);
        self
    }

    /// Hands each result and its input's index to `sink` as it leaves the
    /// tree. It runs where the job is awaited, not on the thread that
    /// talks to the agents: it may block (the job then waits for it, and
    /// its heartbeats go on).
    pub fn on_result(mut self, sink: impl FnMut(u64, Array) + 'a) -> Self {
        self.on_result = Box::new(sink);
        self
    }

    /// Hands what the job reports while it runs to `observer` (where the
    /// job is awaited, like [`JobBuilder::on_result`]).
    pub fn on_event(mut self, observer: impl FnMut(Event<'_>) + 'a) -> Self {
        self.on_event = Box::new(observer);
        self
    }

    /// How the job will run, or why it cannot (checked before anything is
    /// sent; [`JobBuilder::run`] checks it again).
    pub fn plan(&self) -> Result<Execution, RunError> {
        let streamed = streamable(&self.skeleton);
        if let Some(first) = self.swaps.first() {
            let stages = self.skeleton.seqs().len();
            if stages == 0 {
                return Err(RunError::NoStages {
                    stage: first.stage,
                    skeleton: Box::new(self.skeleton.clone()),
                });
            }
            if let Some(bad) = self.swaps.iter().find(|s| s.stage >= stages) {
                return Err(RunError::NoSuchStage {
                    stage: bad.stage,
                    kernel: bad.kernel.clone(),
                    last: stages - 1,
                });
            }
            if let Some(bad) = self.swaps.iter().find(|s| s.after > 0)
                && one_result(&self.skeleton)
            {
                return Err(RunError::OneResult {
                    stage: bad.stage,
                    kernel: bad.kernel.clone(),
                    after: bad.after,
                });
            }
        }
        Ok(match (&self.managed, streamed) {
            (Some(_), _) if !self.swaps.is_empty() => return Err(RunError::ManagedSwaps),
            (Some(opts), _) => Execution::Managed(opts.contract),
            (None, Some(stages)) => Execution::Streamed {
                stages: stages.len(),
            },
            (None, None) => Execution::Routed,
        })
    }

    /// Runs the job on `cluster`, as [`JobBuilder::plan`] says.
    pub async fn run(mut self, cluster: &mut Cluster) -> Outcome {
        let mut outcome = Outcome {
            execution: Execution::Routed,
            result: Ok(()),
            results: 0,
            report: None,
            stages: Vec::new(),
            swapped: Vec::new(),
            trace: None,
        };
        outcome.result = self.run_into(cluster, &mut outcome).await;
        outcome
    }

    /// [`JobBuilder::run`], filling `out` as it goes.
    async fn run_into(&mut self, cluster: &mut Cluster, out: &mut Outcome) -> Result<(), RunError> {
        out.execution = self.plan()?;
        self.push_modules(cluster).await?;
        if let Some(on) = self.trace {
            cluster.set_tracing(on);
        }
        (self.on_event)(Event::Started {
            skeleton: &self.skeleton,
            execution: out.execution,
        });
        let inputs = std::mem::replace(&mut self.inputs, Box::new(std::iter::empty()));
        let watch = self.watch.clone();
        if let Some(w) = &watch {
            let execution = out.execution.to_string();
            let skeleton = self.skeleton.to_string();
            let size = inputs.size_hint();
            w.update(|s| {
                s.execution = execution;
                s.skeleton = skeleton;
                s.inputs = size.1.filter(|&n| n == size.0).map(|n| n as u64);
            });
        }
        // This job's watch, if it has one, until it ends or is dropped.
        let watching = Watching::set(cluster, watch);
        let cluster = &mut *watching.cluster;
        let results = &mut out.results;
        let sink = &mut self.on_result;
        let on_result = |index, a| {
            *results += 1;
            sink(index, a);
        };
        let result = match (&self.managed, out.execution) {
            (Some(opts), _) => {
                let on_event = &mut self.on_event;
                let on_decision = |d: &autonomic::Decision| on_event(Event::Decision(d));
                let (result, report) = cluster
                    .run_managed(&self.skeleton, inputs, opts, on_result, on_decision)
                    .await;
                out.report = report;
                result
            }
            (None, execution) if !self.swaps.is_empty() => {
                let size = inputs.size_hint().1;
                let on_event = &mut *self.on_event;
                let got = swapping(
                    cluster,
                    (&self.skeleton, execution),
                    (inputs, size),
                    &self.swaps,
                    on_result,
                    on_event,
                );
                got.await.map(|(stages, swapped)| {
                    out.stages = stages;
                    out.swapped = swapped;
                })
            }
            _ => cluster.run_each(&self.skeleton, inputs, on_result).await,
        };
        if self.trace == Some(true) {
            out.trace = cluster.take_trace();
        }
        if let Err(e) = result {
            return Err(e.into());
        }
        for (stage, swapped) in out.swapped.iter().enumerate() {
            for s in swapped {
                (self.on_event)(Event::Swapped { stage, swapped: s });
            }
        }
        Ok(())
    }

    /// Pushes the module files the tree and the swaps name, if asked.
    async fn push_modules(&mut self, cluster: &mut Cluster) -> Result<(), PushError> {
        let Some(base) = &self.modules_base else {
            return Ok(());
        };
        let (skeleton, pushed) = cluster.push_named_modules(&self.skeleton, base).await?;
        for p in &pushed {
            (self.on_event)(Event::ModuleStored(p));
        }
        self.skeleton = skeleton;
        for s in &mut self.swaps {
            let tree = Skeleton::seq(s.kernel.clone());
            let (tree, pushed) = cluster.push_named_modules(&tree, base).await?;
            if let (Skeleton::Seq(k), Some(p)) = (tree, pushed.first()) {
                (self.on_event)(Event::ModuleStored(p));
                s.kernel = k;
            }
        }
        Ok(())
    }
}

/// Whether `tree` gives one result whatever its inputs (a reduction, or a
/// pipeline with one).
fn one_result(tree: &Skeleton) -> bool {
    match tree {
        Skeleton::Reduce(_) => true,
        Skeleton::Pipe(stages) => stages.iter().any(one_result),
        _ => false,
    }
}

/// A job's watch set on its cluster, the cluster's own put back when
/// dropped (the job ended, or its future was dropped).
struct Watching<'c> {
    cluster: &'c mut Cluster,
    before: Option<Option<Watch>>,
}

impl<'c> Watching<'c> {
    /// Sets `watch` on `cluster`, if there is one.
    fn set(cluster: &'c mut Cluster, watch: Option<Watch>) -> Watching<'c> {
        let before = watch.map(|w| {
            let before = cluster.watch().cloned();
            cluster.set_watch(Some(w));
            before
        });
        Watching { cluster, before }
    }
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        if let Some(before) = self.before.take() {
            self.cluster.set_watch(before);
        }
    }
}

/// Runs `tree` over `inputs` (at most `size` of them, if known), streamed
/// or routed as `execution` says, asking each swap of `swaps` once its
/// count of results is in. Returns what each stage of a streamed pipeline
/// measured, and what became of each stage's swaps.
async fn swapping(
    cluster: &mut Cluster,
    (tree, execution): (&Skeleton, Execution),
    (inputs, size): (impl IntoIterator<Item = Array>, Option<usize>),
    swaps: &[Swap],
    mut on_result: impl FnMut(u64, Array),
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<(Vec<StageReport>, Vec<Vec<Swapped>>), JobError> {
    let (swapper, channels) = stream::swaps(tree.seqs().len());
    let ask = |s: &Swap, on_event: &mut dyn FnMut(Event<'_>)| {
        swapper.swap(s.stage, s.kernel.clone());
        on_event(Event::SwapAsked(s));
    };
    for s in swaps.iter().filter(|s| s.after == 0) {
        ask(s, on_event);
    }
    if let Some(inputs) = size.map(|n| n as u64) {
        for swap in swaps.iter().filter(|s| s.after > inputs) {
            on_event(Event::SwapNever { swap, inputs });
        }
    }
    let mut seen = 0u64;
    let with_swaps = |index: u64, a: Array| {
        on_result(index, a);
        seen += 1;
        for s in swaps.iter().filter(|s| s.after == seen) {
            ask(s, on_event);
        }
    };
    match (execution, streamable(tree)) {
        // Pushing modules renamed kernels, not the tree's shape.
        (Execution::Streamed { .. }, Some(stages)) => {
            let reports = cluster
                .stream_pipeline_swapping(&stages, inputs, None, &channels, with_swaps)
                .await?;
            let swapped = reports.iter().map(|r| r.swaps.clone()).collect();
            Ok((reports, swapped))
        }
        _ => {
            let swapped = cluster
                .run_routed_swapping(tree, inputs, &channels, with_swaps)
                .await?;
            Ok((Vec::new(), swapped))
        }
    }
}

impl fmt::Debug for JobBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobBuilder")
            .field("skeleton", &self.skeleton)
            .field("trace", &self.trace)
            .field("managed", &self.managed)
            .field("swaps", &self.swaps)
            .field("modules_base", &self.modules_base)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Swap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}@{}", self.stage, self.kernel, self.after)
    }
}

#[cfg(test)]
mod tests {
    use super::{Execution, JobBuilder, RunError, Swap};
    use crate::runtime::autonomic::{self, Contract};
    use skelpi_proto::skeleton::Kernel;

    fn job(tree: &str) -> JobBuilder<'static> {
        JobBuilder::new(tree.parse().unwrap())
    }

    fn swap(stage: usize) -> Swap {
        Swap {
            stage,
            kernel: Kernel::new("scale", [3.0]),
            after: 1,
        }
    }

    #[test]
    fn plan_routes_streams_or_manages_as_the_tree_and_options_say() {
        let plan = |b: JobBuilder<'_>| b.plan().unwrap();
        assert_eq!(plan(job("farm(seq(square))")), Execution::Routed);
        assert_eq!(plan(job("pipe(seq(square))")), Execution::Routed);
        let pipe = "pipe(seq(square), seq(identity))";
        assert_eq!(plan(job(pipe)), Execution::Streamed { stages: 2 });
        assert_eq!(
            plan(job(pipe).swap(swap(1))),
            Execution::Streamed { stages: 2 }
        );
        let opts = autonomic::Options {
            contract: Contract::Throughput(50.0),
            ..Default::default()
        };
        assert_eq!(
            plan(job(pipe).managed(opts)),
            Execution::Managed(Contract::Throughput(50.0))
        );
    }

    #[test]
    fn plan_routes_swaps_of_farms_maps_and_routed_pipelines() {
        for tree in [
            "farm(seq(square))",
            "map(4, seq(square))",
            "pipe(seq(square), farm(seq(identity)))",
        ] {
            assert_eq!(job(tree).swap(swap(0)).plan().unwrap(), Execution::Routed);
        }
        let routed = "pipe(map(2, seq(square)), farm(seq(identity)), reduce(sum))";
        let err = job(routed).swap(swap(2)).plan().unwrap_err().to_string();
        assert!(err.contains("the job has stages 0 to 1"), "{err}");
        // One result: a swap can only be asked before it starts.
        let err = job(routed).swap(swap(1)).plan().unwrap_err();
        assert!(matches!(err, RunError::OneResult { after: 1, .. }), "{err}");
        let first = Swap {
            after: 0,
            ..swap(1)
        };
        assert_eq!(job(routed).swap(first).plan().unwrap(), Execution::Routed);
    }

    #[test]
    fn plan_refuses_swaps_that_no_stage_can_take() {
        let err = job("reduce(sum)").swap(swap(0)).plan().unwrap_err();
        assert!(matches!(err, RunError::NoStages { stage: 0, .. }), "{err}");
        assert!(
            err.to_string().contains("has no seq stage to swap"),
            "{err}"
        );
        let pipe = "pipe(seq(square), seq(identity))";
        let err = job(pipe).swap(swap(7)).plan().unwrap_err();
        assert!(
            err.to_string().contains("the job has stages 0 to 1"),
            "{err}"
        );
        let managed = job(pipe).managed(Default::default()).swap(swap(1));
        assert!(matches!(managed.plan(), Err(RunError::ManagedSwaps)));
    }
}
