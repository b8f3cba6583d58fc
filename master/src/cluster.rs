//! The pool of agents a job runs on: connections to remote agents, or an
//! embedded cluster of in-process agents on loopback.

use crate::client::{AgentConn, ClientError};
use crate::runtime::eval::get_nodes;
use crate::runtime::stream::{self, Placement, StageReport};
use crate::runtime::{JobError, job};
use skelpi_agent::kernels::Array;
use skelpi_agent::key::ClusterKey;
use skelpi_agent::local::{LocalAgent, LocalOptions};
use skelpi_agent::wire::handshake::ConnectOptions;
use skelpi_proto::skeleton::{Kernel, Skeleton};
use std::net::SocketAddr;
use std::time::Duration;

/// Connected agents, in pool order.
#[derive(Debug)]
pub struct Cluster {
    agents: Vec<AgentConn>,
    /// In-process agents this cluster owns; stopped when it is dropped
    /// (after the connections, which are declared first).
    local: Vec<LocalAgent>,
    /// The key and options the connections were made with: streamed
    /// pipelines open more.
    key: ClusterKey,
    opts: ConnectOptions,
}

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
        let mut agents = Vec::new();
        let mut failed = Vec::new();
        for t in tasks {
            match t.await {
                Ok(a) => agents.push(a),
                Err(e) => failed.push(e),
            }
        }
        let cluster = Cluster {
            agents,
            local: Vec::new(),
            key: key.clone(),
            opts: opts.clone(),
        };
        (cluster, failed)
    }

    /// Starts `n` in-process agents on loopback with a throwaway key and
    /// connects to them. `opts.plaintext` asks for the plaintext transport,
    /// which local agents allow.
    pub async fn local(n: usize, opts: &ConnectOptions) -> Result<Cluster, ClientError> {
        let key = ClusterKey::generate()
            .map_err(|e| ClientError::LocalStart(std::io::Error::other(e.to_string())))?;
        let mut local = Vec::with_capacity(n);
        for i in 0..n {
            let agent =
                LocalAgent::start(&format!("local-{i}"), key.clone(), LocalOptions::default())
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
    /// use skelpi_agent::kernels::Array;
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
    /// the iterator only as the tree has room for them, so a huge generator
    /// runs in bounded memory.
    pub async fn run_each(
        &mut self,
        skeleton: &Skeleton,
        inputs: impl IntoIterator<Item = Array>,
        on_result: impl FnMut(u64, Array),
    ) -> Result<(), JobError> {
        if let Some(stages) = streamable(skeleton) {
            self.stream_pipeline(&stages, inputs, None, on_result)
                .await?;
            return Ok(());
        }
        if self.agents.iter().any(AgentConn::is_broken) {
            // Jobs run on the connections that are still good; the pool
            // keeps its order.
            let (good, bad): (Vec<_>, Vec<_>) = std::mem::take(&mut self.agents)
                .into_iter()
                .enumerate()
                .partition(|(_, a)| !a.is_broken());
            let (places, mut conns): (Vec<usize>, Vec<AgentConn>) = good.into_iter().unzip();
            let result = job::run(&mut conns, skeleton, inputs, on_result).await;
            let mut all: Vec<(usize, AgentConn)> = places.into_iter().zip(conns).collect();
            all.extend(bad);
            all.sort_by_key(|(i, _)| *i);
            self.agents = all.into_iter().map(|(_, a)| a).collect();
            return result;
        }
        job::run(&mut self.agents, skeleton, inputs, on_result).await
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
        let live: Vec<&AgentConn> = self.agents.iter().filter(|a| !a.is_broken()).collect();
        if live.is_empty() {
            return Err(JobError::NoAgents);
        }
        let placement: Vec<Placement> = get_nodes(stages.len(), live.len())
            .into_iter()
            .map(|i| Placement {
                addr: live[i].addr(),
                name: live[i].info().name.clone(),
            })
            .collect();
        stream::run_pipeline(
            &placement, &self.key, &self.opts, stages, inputs, interval, on_result,
        )
        .await
    }

    /// The seed's pmap: `kernel` applied to every chunk, one task per chunk,
    /// dispatched on demand; results in chunk order.
    ///
    /// # Examples
    /// `x -> x * x` over three chunks:
    /// ```
    /// use skelpi::cluster::Cluster;
    /// use skelpi_agent::kernels::Array;
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

    /// Says goodbye to every agent.
    pub async fn close(mut self) {
        for a in std::mem::take(&mut self.agents) {
            a.close().await;
        }
    }
}

/// The kernels of a tree that is a pipeline of two or more `seq` stages,
/// which stream agent to agent.
fn streamable(tree: &Skeleton) -> Option<Vec<Kernel>> {
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
