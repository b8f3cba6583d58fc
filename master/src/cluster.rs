//! The pool of agents a job runs on: connections to remote agents, or an
//! embedded cluster of in-process agents on loopback.

use crate::client::{AgentConn, ClientError};
use skelpi_agent::key::ClusterKey;
use skelpi_agent::local::{LocalAgent, LocalOptions};
use skelpi_agent::wire::handshake::ConnectOptions;
use std::net::SocketAddr;

/// Connected agents, in pool order.
#[derive(Debug)]
pub struct Cluster {
    agents: Vec<AgentConn>,
    /// In-process agents this cluster owns; stopped when it is dropped
    /// (after the connections, which are declared first).
    local: Vec<LocalAgent>,
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

    /// Says goodbye to every agent.
    pub async fn close(mut self) {
        for a in std::mem::take(&mut self.agents) {
            a.close().await;
        }
    }
}
