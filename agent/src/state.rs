//! The state one agent's sessions share (`AgentState`): fixed identity,
//! key and limits, and the live kernel registry, worker pool and stream
//! registry. Built by `node` (the daemon) and `local` (in-process agents);
//! `server`, `roles` and `stages` read it and never import each other for
//! it.

use crate::deploy::Deployer;
use crate::kernels::Registry;
use crate::streams::Streams;
use crate::workers::Workers;
use skelpi_proto::AgentInfo;
use skelpi_wire::handshake::AcceptOptions;
use skelpi_wire::key::ClusterKey;

/// Connections served at once unless configured otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// What a serving agent holds: who it is, the key and limits masters
/// meet, and the live parts every session shares — its kernels, its
/// worker threads and the pipeline stages running on it.
#[derive(Debug)]
pub struct AgentState {
    /// What the agent says about itself.
    pub info: AgentInfo,
    /// The cluster key masters must prove they hold.
    pub key: ClusterKey,
    /// Handshake and frame limits.
    pub accept: AcceptOptions,
    /// Authenticated sessions served at once; a master beyond that is told
    /// the agent is busy. (Handshakes have their own budget, see
    /// [`crate::admission`].)
    pub max_connections: usize,
    /// The kernels this agent offers.
    pub kernels: Registry,
    /// The threads kernels run on, shared by all sessions.
    pub workers: Workers,
    /// The pipeline stages running here, for items arriving on any session.
    pub streams: Streams,
    /// New binaries for this agent (`skelpi deploy`); disabled unless the
    /// daemon was given a deploy key and a state directory.
    pub deploy: Deployer,
    /// When it started serving.
    pub started: std::time::Instant,
    /// Masters with a session now.
    masters: std::sync::atomic::AtomicUsize,
}

/// Counts a master's session while it lives (see
/// [`AgentState::master_connected`]).
#[derive(Debug)]
pub struct MasterSession<'a>(&'a AgentState);

impl Drop for MasterSession<'_> {
    fn drop(&mut self) {
        self.0
            .masters
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl AgentState {
    /// A configuration with the built-in kernels, `info.cores` worker
    /// threads and default limits.
    pub fn new(
        info: AgentInfo,
        key: ClusterKey,
        accept: AcceptOptions,
    ) -> std::io::Result<AgentState> {
        let workers = Workers::new(info.cores as usize)?;
        Ok(AgentState {
            info,
            key,
            accept,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            kernels: Registry::default(),
            workers,
            streams: Streams::default(),
            deploy: Deployer::disabled(),
            started: std::time::Instant::now(),
            masters: std::sync::atomic::AtomicUsize::new(0),
        }
        .with_kernels(Registry::builtin()))
    }

    /// Counts a master's session until the guard is dropped.
    pub fn master_connected(&self) -> MasterSession<'_> {
        self.masters
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        MasterSession(self)
    }

    /// Masters with a session now.
    pub fn masters(&self) -> usize {
        self.masters.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The same, taking new binaries as `deployer` says.
    pub fn with_deployer(mut self, deployer: Deployer) -> AgentState {
        self.deploy = deployer;
        self
    }

    /// The same, offering `kernels` (and saying so in its handshake
    /// reply).
    pub fn with_kernels(mut self, kernels: Registry) -> AgentState {
        self.info.kernels = kernels.names().into_iter().map(str::to_owned).collect();
        self.kernels = kernels;
        self
    }
}
