//! The pool of agents a job runs on: connections to remote agents, or an
//! embedded cluster of in-process agents on loopback.

use crate::client::{AgentConn, ClientError};
use crate::runtime::eval::get_nodes;
use crate::runtime::handoff::{self, Inputs, Results};
use crate::runtime::stream::{self, Placement, StageReport, StreamSpec};
use crate::runtime::{JobError, autonomic, job, offered, stall};
use crate::trace::{Trace, TraceError};
use crate::watch::Watch;
#[cfg(feature = "local")]
use skelpi_agent::local::{LocalAgent, LocalOptions};
use skelpi_proto::AgentInfo;
use skelpi_proto::Array;
use skelpi_proto::skeleton::{Kernel, Skeleton};
use skelpi_wire::handshake::ConnectOptions;
use skelpi_wire::key::ClusterKey;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Connected agents, in pool order.
#[derive(Debug)]
pub struct Cluster {
    agents: Vec<AgentConn>,
    /// In-process agents this cluster owns; stopped when it is dropped
    /// (after the connections, which are declared first).
    local: Vec<Embedded>,
    /// The key and options the connections were made with: streamed
    /// pipelines open more.
    key: ClusterKey,
    opts: ConnectOptions,
    /// Trace the jobs it runs.
    tracing: bool,
    /// How long its jobs may go without progress (see [`stall`]).
    stall_timeout: Option<Duration>,
    /// Bytes of fed items a streamed pipeline may hold for replay.
    max_replay_bytes: usize,
    /// How long each routed task may take on its agent.
    task_deadline: Option<Duration>,
    /// The last traced job's trace, until taken.
    last_trace: Option<Result<Trace, TraceError>>,
    /// Jobs keep this watch up to date while they run.
    watch: Option<Watch>,
    /// When each failed agent was last tried again.
    tried: HashMap<SocketAddr, Instant>,
    /// WebAssembly modules pushed through this cluster, by hash: pushed
    /// again to agents that rejoin (a restarted agent forgot them).
    pub(crate) modules: Vec<(String, std::sync::Arc<[u8]>)>,
}

/// What a job gives back from its thread: its outcome `T`, the
/// connections it ran on, its trace if traced.
type Returned<T = Result<(), JobError>> = (T, Vec<AgentConn>, Option<Result<Trace, TraceError>>);

/// An in-process agent a cluster owns (none without the `local` feature).
#[cfg(feature = "local")]
type Embedded = LocalAgent;
#[cfg(not(feature = "local"))]
type Embedded = std::convert::Infallible;

/// A failed agent is tried again before a job at most this often.
pub const REJOIN_EVERY: Duration = Duration::from_secs(5);

/// How long trying a failed agent again may take.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(2);

impl Cluster {
    /// Connects to every agent in `addrs` concurrently. Fails, naming the
    /// agent, if any cannot be reached or authenticated.
    pub async fn connect(
        addrs: &[SocketAddr],
        key: &ClusterKey,
        opts: &ConnectOptions,
    ) -> Result<Cluster, ClientError> {
        let tasks: Vec<_> = addrs
            .iter()
            .map(|&addr| {
                let key = key.clone();
                let opts = opts.clone();
                smol::spawn(async move { AgentConn::connect(addr, &key, &opts).await })
            })
            .collect();
        let mut agents = Vec::with_capacity(tasks.len());
        for t in tasks {
            agents.push(t.await?);
        }
        Ok(Cluster {
            agents,
            local: Vec::new(),
            key: key.clone(),
            opts: opts.clone(),
            tracing: false,
            stall_timeout: Some(stall::DEFAULT_STALL_TIMEOUT),
            max_replay_bytes: crate::runtime::stream::WINDOW_BYTES,
            task_deadline: None,
            last_trace: None,
            tried: HashMap::new(),
            watch: None,
            modules: Vec::new(),
        })
    }

    /// Connects to every agent in `addrs` it can, concurrently: agents that
    /// fail are returned beside the cluster instead of failing it (for
    /// discovered agents, which may belong to another cluster or be gone).
    pub async fn connect_reachable(
        addrs: &[SocketAddr],
        key: &ClusterKey,
        opts: &ConnectOptions,
    ) -> (Cluster, Vec<ClientError>) {
        let tasks: Vec<_> = addrs
            .iter()
            .map(|&addr| {
                let key = key.clone();
                let opts = opts.clone();
                smol::spawn(async move { AgentConn::connect(addr, &key, &opts).await })
            })
            .collect();
        let mut agents: Vec<AgentConn> = Vec::new();
        let mut failed = Vec::new();
        for t in tasks {
            match t.await {
                // One agent reached at two addresses (a board on two
                // networks, found by two sources) is used once.
                Ok(a) => match agents.iter().find(|b| b.info().id == a.info().id) {
                    Some(first) => {
                        log::warn!(
                            "agent {} (id {}) answered at {} and at {}: using it once, at {}",
                            a.info().name,
                            a.info().id,
                            first.addr(),
                            a.addr(),
                            first.addr()
                        );
                        a.close().await;
                    }
                    None => agents.push(a),
                },
                Err(e) => failed.push(e),
            }
        }
        let cluster = Cluster {
            agents,
            local: Vec::new(),
            key: key.clone(),
            opts: opts.clone(),
            tracing: false,
            stall_timeout: Some(stall::DEFAULT_STALL_TIMEOUT),
            max_replay_bytes: crate::runtime::stream::WINDOW_BYTES,
            task_deadline: None,
            last_trace: None,
            tried: HashMap::new(),
            watch: None,
            modules: Vec::new(),
        };
        (cluster, failed)
    }

    /// Starts `n` in-process agents on loopback with a throwaway key and
    /// connects to them. `opts.plaintext` asks for the plaintext transport,
    /// which local agents allow. With the `local` feature.
    #[cfg(feature = "local")]
    pub async fn local(n: usize, opts: &ConnectOptions) -> Result<Cluster, ClientError> {
        Cluster::local_with(&vec![LocalOptions::default(); n], opts).await
    }

    /// [`Cluster::local`] with options for each agent (one agent per entry).
    #[cfg(feature = "local")]
    pub async fn local_with(
        agents: &[LocalOptions],
        opts: &ConnectOptions,
    ) -> Result<Cluster, ClientError> {
        let key = ClusterKey::generate()
            .map_err(|e| ClientError::LocalStart(std::io::Error::other(e.to_string())))?;
        let mut local = Vec::with_capacity(agents.len());
        for (i, options) in agents.iter().enumerate() {
            let agent = LocalAgent::start(&format!("local-{i}"), key.clone(), options.clone())
                .map_err(|source| ClientError::Connect {
                    addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                    source,
                })?;
            local.push(agent);
        }
        let addrs: Vec<_> = local.iter().map(LocalAgent::addr).collect();
        let mut cluster = Cluster::connect(&addrs, &key, opts).await?;
        cluster.local = local;
        Ok(cluster)
    }

    /// Stops a job in which nothing moved for `bound` — no result, no
    /// item through any stage or task — while its agents still beat, with
    /// [`JobError::Stalled`] saying where each part stood; `None` (or
    /// zero) never does. By default [`stall::DEFAULT_STALL_TIMEOUT`]: a
    /// kernel call that can take longer needs a longer bound. A job fed
    /// at a set pace waits at least four of its intervals.
    pub fn set_stall_timeout(&mut self, bound: Option<Duration>) {
        self.stall_timeout = bound.filter(|b| !b.is_zero());
    }

    /// Bounds the memory of fed items a streamed pipeline holds until
    /// their results are back (to replay them after a lost agent): a full
    /// window waits for results, and an item larger than `bytes` fails
    /// the job before it is sent. Default
    /// [`WINDOW_BYTES`](crate::runtime::stream::WINDOW_BYTES), 256 MiB.
    pub fn set_max_replay_bytes(&mut self, bytes: usize) {
        self.max_replay_bytes = bytes.max(1);
    }

    /// Gives each task of the jobs it routes `deadline` on its agent (from
    /// its arrival there, queueing included): past it the agent fails the
    /// task, stopping a built-in kernel at once, and the job fails naming
    /// it. `None` (or zero), the default: no bound. Not for the stages of
    /// streamed pipelines, whose items have no deadline.
    pub fn set_task_deadline(&mut self, deadline: Option<Duration>) {
        self.task_deadline = deadline.filter(|d| !d.is_zero());
    }

    /// Keeps `watch` up to date while each job runs from now on (`None`:
    /// stops; a [`crate::JobBuilder`] given a watch of its own uses that
    /// one for its job); see [`crate::watch`].
    pub fn set_watch(&mut self, watch: Option<Watch>) {
        self.watch = watch;
    }

    /// The watch its jobs keep up to date, if any.
    pub fn watch(&self) -> Option<&Watch> {
        self.watch.as_ref()
    }

    /// `on_result`, counting each result in the watch, if any.
    fn counted<'f>(
        &self,
        mut on_result: impl FnMut(u64, Array) + 'f,
    ) -> impl FnMut(u64, Array) + 'f {
        let watch = self.watch.clone();
        move |index, a| {
            if let Some(w) = &watch {
                w.result();
            }
            on_result(index, a);
        }
    }

    /// Traces the jobs it runs from now on (`false`: stops). Each traced
    /// job's trace replaces the previous one until [`Cluster::take_trace`].
    pub fn set_tracing(&mut self, on: bool) {
        self.tracing = on;
    }

    /// The trace of the last job run while tracing was on (an error if it
    /// could not be collected), once.
    pub fn take_trace(&mut self) -> Option<Result<Trace, TraceError>> {
        self.last_trace.take()
    }

    /// Whether the agents are in-process ones.
    pub fn is_local(&self) -> bool {
        !self.local.is_empty()
    }

    /// The connected agents.
    pub fn agents(&self) -> &[AgentConn] {
        &self.agents
    }

    /// The connected agents, mutably.
    pub fn agents_mut(&mut self) -> &mut [AgentConn] {
        &mut self.agents
    }

    /// Worker threads of the pool, all agents together.
    pub fn cores(&self) -> usize {
        self.agents.iter().map(|a| a.info().cores as usize).sum()
    }

    /// Runs `skeleton` on `inputs` and returns the results (in input order
    /// where the tree keeps order).
    ///
    /// # Examples
    /// A pipeline of a farm and a reduction, written in the text form:
    /// ```
    /// use skelpi::cluster::Cluster;
    /// use skelpi_proto::Array;
    /// use skelpi_proto::skeleton::Skeleton;
    ///
    /// fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     smol::block_on(async {
    ///         let mut cluster = Cluster::local(2, &Default::default()).await?;
    ///         let tree: Skeleton = "pipe(farm(seq(square)), reduce(sum))".parse()?;
    ///         let inputs = (0..100).map(|i| Array::list(vec![f64::from(i)]));
    ///         let out = cluster.run(&tree, inputs).await?;
    ///         assert_eq!(out[0].data, [328350.0]);
    ///         Ok(())
    ///     })
    /// }
    /// ```
    pub async fn run(
        &mut self,
        skeleton: &Skeleton,
        inputs: impl IntoIterator<Item = Array>,
    ) -> Result<Vec<Array>, JobError> {
        let mut out = Vec::new();
        self.run_each(skeleton, inputs, |_, a| out.push(a)).await?;
        Ok(out)
    }

    /// Runs `skeleton` on `inputs`, handing each result and its input's
    /// index to `on_result` as soon as it is ready. Inputs are drawn from
    /// the iterator only as the tree has room for them (a few ahead: see
    /// [`handoff`]), so a huge generator runs in bounded memory. Both run
    /// here, where the job is awaited; the job's connections and their
    /// heartbeats run on a thread of their own, so either may block (a slow
    /// disk, a network write) without the agents taking the master for
    /// gone: the job waits for them (up to its stall bound, see
    /// [`Cluster::set_stall_timeout`]).
    pub async fn run_each(
        &mut self,
        skeleton: &Skeleton,
        inputs: impl IntoIterator<Item = Array>,
        on_result: impl FnMut(u64, Array),
    ) -> Result<(), JobError> {
        self.rejoin().await;
        if let Some(stages) = streamable(skeleton) {
            self.stream_pipeline(&stages, inputs, None, on_result)
                .await?;
            return Ok(());
        }
        self.routed(skeleton, inputs, None, on_result).await?;
        Ok(())
    }

    /// Runs `skeleton` on `inputs` routed through the master (even a
    /// pipeline [`Cluster::run_each`] would stream), its `seq` stages'
    /// kernels replaced while it runs by the [`stream::Swapper`] made with
    /// `swaps`. The stages are the tree's `seq` nodes numbered in the
    /// order written ([`Skeleton::seqs`]). Returns what became of each
    /// stage's swaps: a new kernel runs on every job input from its switch
    /// point on, the old one on every input before it (see
    /// [`crate::runtime::switch`]).
    ///
    /// # Examples
    /// A farm that doubles items, then triples them from some item on:
    /// ```
    /// use skelpi::cluster::Cluster;
    /// use skelpi::runtime::stream::{self, SwapOutcome};
    /// use skelpi_proto::Array;
    /// use skelpi_proto::skeleton::Kernel;
    /// smol::block_on(async {
    ///     let mut cluster = Cluster::local(2, &Default::default()).await?;
    ///     let tree = "farm(seq(scale(2)))".parse()?;
    ///     let (swapper, swaps) = stream::swaps(1);
    ///     let inputs = (1..=2000).map(|i| Array::list(vec![f64::from(i)]));
    ///     let mut out = vec![0.0; 2000];
    ///     let swapped = cluster
    ///         .run_routed_swapping(&tree, inputs, &swaps, |i, a| {
    ///             if i == 10 {
    ///                 swapper.swap(0, Kernel::new("scale", [3.0]));
    ///             }
    ///             out[i as usize] = a.data[0] / (i + 1) as f64;
    ///         })
    ///         .await?;
    ///     let SwapOutcome::From(k) = swapped[0][0].outcome else { panic!() };
    ///     assert!(out.iter().enumerate().all(|(i, &f)| f == if (i as u64) < k { 2.0 } else { 3.0 }));
    ///     Ok::<_, Box<dyn std::error::Error>>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn run_routed_swapping(
        &mut self,
        skeleton: &Skeleton,
        inputs: impl IntoIterator<Item = Array>,
        swaps: &stream::Swaps,
        on_result: impl FnMut(u64, Array),
    ) -> Result<job::Swapped, JobError> {
        let stages = skeleton.seq_count();
        if swaps.stages() != stages {
            return Err(JobError::Invalid(format!(
                "swaps made for {} stages given to {skeleton}, which has {stages}",
                swaps.stages()
            )));
        }
        self.rejoin().await;
        let ran = self.routed(skeleton, inputs, Some(swaps), on_result).await;
        // Swaps asked from the last results' callbacks, after the job's
        // last task: not applied; later ones are refused (`swap` is false).
        let late = swaps.close();
        ran.map(|mut swapped| {
            for (stage, kernel) in late {
                swapped[stage].push(stream::Swapped {
                    kernel,
                    outcome: stream::SwapOutcome::NotApplied,
                });
            }
            swapped
        })
    }

    /// Runs `skeleton` routed through the master, taking `swaps`.
    async fn routed(
        &mut self,
        skeleton: &Skeleton,
        inputs: impl IntoIterator<Item = Array>,
        swaps: Option<&stream::Swaps>,
        on_result: impl FnMut(u64, Array),
    ) -> Result<job::Swapped, JobError> {
        let able = self.able(skeleton)?;
        let (places, conns, bad) = self.take_good(&able);
        let tracing = self.tracing;
        let limits = job::Limits {
            stall: self.stall_timeout,
            task_deadline: self.task_deadline,
            watch: self.watch.clone(),
            swaps: swaps.cloned(),
        };
        let tree = skeleton.clone();
        let io = move |inputs, results| Self::job(tracing, limits, conns, tree, inputs, results);
        let on_result = self.counted(on_result);
        let (result, conns, trace) = handoff::on_own_thread(inputs, on_result, |_| {}, io).await;
        if let Some(trace) = trace {
            self.last_trace = Some(trace);
        }
        self.put_back(places, conns, bad);
        result
    }

    /// Runs a managed job (see [`autonomic`]): a pipeline of `seq` and
    /// `farm(seq)` stages whose degrees a manager sets while it runs, as
    /// `opts` say. Decisions go to `on_decision` as they are made; the
    /// report is there when the job started, even if it failed (`None`
    /// when it could not: no agent, or a tree or options a manager cannot
    /// run).
    pub async fn run_managed(
        &mut self,
        skeleton: &Skeleton,
        inputs: impl IntoIterator<Item = Array>,
        opts: &autonomic::Options,
        on_result: impl FnMut(u64, Array),
        on_decision: impl FnMut(&autonomic::Decision),
    ) -> (Result<(), JobError>, Option<autonomic::Report>) {
        self.rejoin().await;
        let able = match self.able(skeleton) {
            Ok(able) => able,
            Err(e) => return (Err(e), None),
        };
        let (places, conns, bad) = self.take_good(&able);
        if conns.is_empty() {
            self.put_back(places, conns, bad);
            return (Err(JobError::NoAgents), None);
        }
        let tracing = self.tracing;
        let opts = autonomic::Options {
            stall: self.stall_timeout,
            watch: self.watch.clone(),
            ..opts.clone()
        };
        let tree = skeleton.clone();
        let io = move |inputs, results| Self::managed(tracing, opts, conns, tree, inputs, results);
        let (mut out, conns, trace) =
            handoff::on_own_thread(inputs, self.counted(on_result), on_decision, io).await;
        if let Some(report) = &mut out.1 {
            report.renumber_agents(&places);
        }
        if let Some(trace) = trace {
            self.last_trace = Some(trace);
        }
        self.put_back(places, conns, bad);
        out
    }

    /// A managed job on `conns`, on the job's thread (see
    /// [`Cluster::run_managed`]); gives the connections back, and the job's
    /// trace if `tracing`.
    async fn managed(
        tracing: bool,
        opts: autonomic::Options,
        mut conns: Vec<AgentConn>,
        skeleton: Skeleton,
        inputs: Inputs<'static>,
        results: Results<'static>,
    ) -> Returned<(Result<(), JobError>, Option<autonomic::Report>)> {
        let mut trace = Err(TraceError::Stopped);
        let traced = tracing.then_some(&mut trace);
        let decisions = results.decisions();
        let out = autonomic::run(
            &mut conns, &skeleton, inputs, results, &opts, decisions, traced,
        )
        .await;
        (out, conns, tracing.then_some(trace))
    }

    /// Which agents of the pool (by position) can run `tree`: good ones
    /// that offer every kernel it names (others are left out, with a
    /// warning). `Err`, before anything is sent, when none can.
    fn able(&self, tree: &Skeleton) -> Result<Vec<bool>, JobError> {
        let good: Vec<usize> = (0..self.agents.len())
            .filter(|&i| !self.agents[i].is_broken())
            .collect();
        let infos: Vec<&AgentInfo> = good.iter().map(|&i| self.agents[i].info()).collect();
        let mut able = vec![false; self.agents.len()];
        for a in offered::able(tree, &infos)? {
            able[good[a]] = true;
        }
        for &i in &good {
            if !able[i] {
                let info = self.agents[i].info();
                log::warn!(
                    "agent {} does not offer every kernel of {tree} (it has {}): left out \
                     of this job",
                    info.name,
                    info.kernels.join(", ")
                );
            }
        }
        Ok(able)
    }

    /// Takes the connections marked in `able` out of the pool, with their
    /// places (jobs run on them), and the others.
    #[allow(clippy::type_complexity)]
    fn take_good(
        &mut self,
        able: &[bool],
    ) -> (Vec<usize>, Vec<AgentConn>, Vec<(usize, AgentConn)>) {
        let (good, bad): (Vec<_>, Vec<_>) = std::mem::take(&mut self.agents)
            .into_iter()
            .enumerate()
            .partition(|(i, _)| able.get(*i).copied().unwrap_or(false));
        let (places, conns) = good.into_iter().unzip();
        (places, conns, bad)
    }

    /// Puts connections taken by [`Cluster::take_good`] back, in the
    /// pool's order.
    fn put_back(
        &mut self,
        places: Vec<usize>,
        conns: Vec<AgentConn>,
        bad: Vec<(usize, AgentConn)>,
    ) {
        let mut all: Vec<(usize, AgentConn)> = places.into_iter().zip(conns).collect();
        all.extend(bad);
        all.sort_by_key(|(i, _)| *i);
        self.agents = all.into_iter().map(|(_, a)| a).collect();
    }

    /// One dispatched job on `conns`, on the job's thread; gives the
    /// connections back, and the job's trace if `tracing`.
    async fn job(
        tracing: bool,
        limits: job::Limits,
        mut conns: Vec<AgentConn>,
        skeleton: Skeleton,
        inputs: Inputs<'static>,
        results: Results<'static>,
    ) -> Returned<Result<job::Swapped, JobError>> {
        if !tracing {
            let result = job::run(&mut conns, &skeleton, inputs, results, limits).await;
            return (result, conns, None);
        }
        let (result, got) = job::run_traced(&mut conns, &skeleton, inputs, results, limits).await;
        (result, conns, Some(got))
    }

    /// Runs a pipeline of `seq` stages streamed agent to agent: stage i on
    /// the pool's agent i mod (live agents), as the seed's `get_nodes`.
    /// Feeds one input every `interval` if given. Returns what each stage
    /// measured.
    pub async fn stream_pipeline(
        &mut self,
        stages: &[Kernel],
        inputs: impl IntoIterator<Item = Array>,
        interval: Option<Duration>,
        on_result: impl FnMut(u64, Array),
    ) -> Result<Vec<StageReport>, JobError> {
        self.stream(stages, inputs, interval, None, on_result).await
    }

    /// [`Cluster::stream_pipeline`] whose stages' kernels can be replaced
    /// while it runs: by the [`stream::Swapper`] made with `swaps` (see
    /// [`stream::swaps`]). Each stage's report says what became of its
    /// swaps (from which item the new kernel ran).
    ///
    /// # Examples
    /// Stage 1 passes items on, then triples them from some item on:
    /// ```
    /// use skelpi::cluster::Cluster;
    /// use skelpi::runtime::stream::{self, SwapOutcome};
    /// use skelpi_proto::Array;
    /// use skelpi_proto::skeleton::Kernel;
    /// smol::block_on(async {
    ///     let mut cluster = Cluster::local(2, &Default::default()).await?;
    ///     let stages = [Kernel::new("scale", [2.0]), Kernel::new("identity", [])];
    ///     let (swapper, swaps) = stream::swaps(stages.len());
    ///     // More items than the stream holds in flight (1,024 per stage
    ///     // and one stage's worth more) after the swap is asked: stage 1
    ///     // cannot have run them all.
    ///     let inputs = (1..=4000).map(|i| Array::list(vec![f64::from(i)]));
    ///     let mut out = Vec::new();
    ///     let reports = cluster
    ///         .stream_pipeline_swapping(&stages, inputs, None, &swaps, |i, a| {
    ///             if i == 10 {
    ///                 swapper.swap(1, Kernel::new("scale", [3.0]));
    ///             }
    ///             out.push(a.data[0] / (i + 1) as f64);
    ///         })
    ///         .await?;
    ///     let SwapOutcome::From(k) = reports[1].swaps[0].outcome else { panic!() };
    ///     assert!(out.iter().enumerate().all(|(i, &f)| f == if (i as u64) < k { 2.0 } else { 6.0 }));
    ///     Ok::<_, Box<dyn std::error::Error>>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn stream_pipeline_swapping(
        &mut self,
        stages: &[Kernel],
        inputs: impl IntoIterator<Item = Array>,
        interval: Option<Duration>,
        swaps: &stream::Swaps,
        on_result: impl FnMut(u64, Array),
    ) -> Result<Vec<StageReport>, JobError> {
        self.stream(stages, inputs, interval, Some(swaps), on_result)
            .await
    }

    async fn stream(
        &mut self,
        stages: &[Kernel],
        inputs: impl IntoIterator<Item = Array>,
        interval: Option<Duration>,
        swaps: Option<&stream::Swaps>,
        on_result: impl FnMut(u64, Array),
    ) -> Result<Vec<StageReport>, JobError> {
        self.rejoin().await;
        let tree = Skeleton::pipe(stages.iter().cloned().map(Skeleton::seq));
        let able = self.able(&tree)?;
        let pool: Vec<Placement> = self
            .agents
            .iter()
            .zip(&able)
            .filter(|&(_, &able)| able)
            .map(|(a, _)| Placement {
                addr: a.addr(),
                name: a.info().name.clone(),
            })
            .collect();
        if pool.is_empty() {
            return Err(JobError::NoAgents);
        }
        let placement = get_nodes(stages.len(), pool.len())
            .into_iter()
            .map(|i| pool[i].clone())
            .collect();
        let stages = stages.to_vec();
        let (key, opts) = (self.key.clone(), self.opts.clone());
        let swaps = swaps.cloned();
        let watch = self.watch.clone();
        let (trace, stall, max_replay_bytes) =
            (self.tracing, self.stall_timeout, self.max_replay_bytes);
        let io = move |inputs, results| async move {
            let spec = StreamSpec {
                stages: &stages,
                placement,
                pool,
                key: &key,
                opts: &opts,
                interval,
                trace,
                swaps: swaps.as_ref(),
                stall,
                max_replay_bytes,
                watch,
            };
            stream::run_pipeline(&spec, inputs, results).await
        };
        let on_result = self.counted(on_result);
        let run = handoff::on_own_thread(inputs, on_result, |_| {}, io).await;
        // A lost agent is tried again before the next job.
        for lost in &run.lost {
            if let Some(conn) = self.agents.iter_mut().find(|a| a.addr() == lost.addr) {
                conn.mark_broken_at(lost.why.clone(), lost.at);
            }
        }
        if let Some(trace) = run.trace {
            self.last_trace = Some(trace);
        }
        run.result
    }

    /// The seed's pmap: `kernel` applied to every chunk, one task per chunk,
    /// dispatched on demand; results in chunk order.
    ///
    /// # Examples
    /// `x -> x * x` over three chunks:
    /// ```
    /// use skelpi::cluster::Cluster;
    /// use skelpi_proto::Array;
    /// use skelpi_proto::skeleton::Kernel;
    /// smol::block_on(async {
    ///     let mut cluster = Cluster::local(2, &Default::default()).await?;
    ///     let chunks = vec![Array::list(vec![1.0, 2.0]), Array::list(vec![3.0]), Array::list(vec![])];
    ///     let out = cluster.pmap(Kernel::new("square", []), chunks).await?;
    ///     assert_eq!(out.iter().map(|a| a.data.clone()).collect::<Vec<_>>(),
    ///                [vec![1.0, 4.0], vec![9.0], vec![]]);
    ///     Ok::<_, Box<dyn std::error::Error>>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn pmap(
        &mut self,
        kernel: Kernel,
        chunks: Vec<Array>,
    ) -> Result<Vec<Array>, JobError> {
        let farm = Skeleton::Farm {
            worker: Box::new(Skeleton::Seq(kernel)),
            replicas: Some(chunks.len().max(1) as u32),
            ordered: true,
        };
        self.run(&farm, chunks).await
    }

    /// Tries again the agents whose connection failed (not more often
    /// than [`REJOIN_EVERY`] each): one that answers — restarted, or back
    /// from a pause — rejoins the pool in its place and gets new work.
    /// Jobs do this first.
    pub async fn rejoin(&mut self) {
        for conn in self.agents.iter_mut().filter(|c| !c.is_broken()) {
            conn.settle().await;
        }
        for conn in self.agents.iter_mut().filter(|c| c.is_broken()) {
            let addr = conn.addr();
            if self
                .tried
                .get(&addr)
                .is_some_and(|t| t.elapsed() < REJOIN_EVERY)
            {
                continue;
            }
            self.tried.insert(addr, Instant::now());
            let opts = ConnectOptions {
                timeout: self.opts.timeout.min(REJOIN_TIMEOUT),
                ..self.opts.clone()
            };
            match AgentConn::connect(addr, &self.key, &opts).await {
                Ok(mut again) => {
                    log::info!("agent {} ({addr}) rejoined the pool", again.info().name);
                    self.tried.remove(&addr);
                    for (hash, bytes) in &self.modules {
                        if let Err(e) = crate::modules::push(&mut again, hash, bytes).await {
                            log::warn!("module {hash} not stored again on {addr}: {e}");
                        }
                    }
                    *conn = again;
                }
                Err(e) => log::debug!("agent at {addr} is still gone: {e}"),
            }
        }
    }

    /// The cluster key its connections were made with.
    pub fn key(&self) -> &ClusterKey {
        &self.key
    }

    /// The options its connections were made with.
    pub fn connect_options(&self) -> &ConnectOptions {
        &self.opts
    }

    /// Says goodbye to every agent.
    pub async fn close(mut self) {
        for a in std::mem::take(&mut self.agents) {
            a.close().await;
        }
    }
}

/// The stages of a pipeline of at least two `seq` stages (those run
/// streamed agent to agent), else `None`.
pub fn streamable(tree: &Skeleton) -> Option<Vec<Kernel>> {
    match tree {
        Skeleton::Pipe(stages) if stages.len() >= 2 => stages
            .iter()
            .map(|s| match s {
                Skeleton::Seq(k) => Some(k.clone()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}
