//! Running an agent as a daemon: bind, announce, serve until SIGTERM,
//! SIGINT or a deploy's restart, say goodbye.

use crate::announce::{AnnounceError, Announcer};
use crate::deploy::Deployer;
use crate::identity;
use crate::server;
use crate::service;
use crate::state::AgentState;
use futures_lite::StreamExt;
use skelpi_wire::handshake::AcceptOptions;
use skelpi_wire::key::ClusterKey;
use std::net::SocketAddr;
use std::sync::Arc;
use thiserror::Error;

/// Everything a daemon needs, parsed from its command line.
#[derive(Debug)]
pub struct NodeConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Agent name (host name by default).
    pub name: String,
    /// Fixed agent id; derived from the machine id, name and port if absent.
    pub id: Option<String>,
    /// The cluster key.
    pub key: ClusterKey,
    /// Worker threads for kernels.
    pub workers: usize,
    /// Announce over mDNS/DNS-SD.
    pub mdns: bool,
    /// Announce on these network interfaces only (none: every one), for an
    /// agent listening on 0.0.0.0 or `::`.
    pub mdns_interfaces: Vec<String>,
    /// Grant masters' requests for a plaintext transport.
    pub allow_plaintext: bool,
    /// The kernels it offers.
    pub kernels: crate::kernels::Registry,
    /// Bytes its kernels may hold at once (`None`: half the machine's
    /// memory, see [`crate::workers::default_kernel_memory`]).
    pub kernel_memory: Option<u64>,
    /// How it takes new binaries (see [`crate::deploy`]).
    pub deployer: Deployer,
    /// The SHA-256 of the binary running, when a deploy put it there.
    pub deployed: Option<String>,
}

/// Why the daemon stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// SIGTERM or SIGINT.
    Signal,
    /// A deploy asked for a restart into a new binary.
    Restart,
}

/// Why the daemon stopped with an error.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// mDNS registration failed.
    #[error("cannot announce over mDNS{hint}: {0}", hint = no_mdns_hint(.0))]
    Announce(#[from] AnnounceError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The server failed.
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

/// The way out of an announcing failure: a wrong `--interface` is
/// mended where it is written, a failing daemon by going without mDNS.
fn no_mdns_hint(e: &AnnounceError) -> &'static str {
    match e {
        AnnounceError::Interface(_) => "",
        _ => " (use --no-mdns to run without it)",
    }
}

/// Runs the agent until SIGTERM, SIGINT or a deploy's restart; returns
/// which after a clean shutdown (sessions closed, mDNS goodbye sent).
pub fn run(config: NodeConfig) -> Result<Stopped, NodeError> {
    let bind = |source| NodeError::Bind {
        addr: config.listen,
        source,
    };
    let std_listener = std::net::TcpListener::bind(config.listen).map_err(bind)?;
    let local = std_listener.local_addr().map_err(bind)?;
    let listener = async_net::TcpListener::try_from(std_listener).map_err(bind)?;
    let mut info = identity::local_info(
        &config.name,
        config.id.as_deref(),
        config.workers,
        local.port(),
    );
    info.build = Some(Box::new(
        config
            .deployer
            .build(env!("CARGO_PKG_VERSION"), config.deployed.clone()),
    ));
    let mut signals =
        async_signal::Signals::new([async_signal::Signal::Term, async_signal::Signal::Int])
            .map_err(NodeError::Signals)?;
    let announcer = if config.mdns {
        Some(Announcer::start(&info, local, &config.mdns_interfaces)?)
    } else {
        None
    };
    let status = format!(
        "skelpi-agent {} ({}) listening on {local}, {} workers, mDNS {}",
        info.id,
        info.name,
        config.workers,
        if config.mdns { "on" } else { "off" }
    );
    crate::logging::set_agent_id(&info.id);
    log::info!("{status}");
    let server_config = Arc::new(
        AgentState::new(
            info,
            config.key,
            AcceptOptions {
                allow_plaintext: config.allow_plaintext,
                ..AcceptOptions::default()
            },
        )
        .map_err(NodeError::Serve)?
        .with_kernels(config.kernels)
        .with_deployer(config.deployer),
    );
    if let Some(bytes) = config.kernel_memory {
        server_config.workers.set_kernel_memory(bytes);
    }
    service::ready(&status);
    if server_config.deploy.on_trial() {
        log::info!(
            "the deployed binary {} is ready, on trial until its master commits it",
            config.deployed.as_deref().unwrap_or("?")
        );
    }
    let state = server_config.clone();
    let serve = server::serve(listener, server_config, async {
        let signal = async {
            if let Some(sig) = signals.next().await {
                let name = match sig {
                    Ok(async_signal::Signal::Term) => "SIGTERM",
                    Ok(async_signal::Signal::Int) => "SIGINT",
                    _ => "a signal",
                };
                log::info!("received {name}, shutting down");
            }
            state.deploy.signal_seen();
            // Only a stop is said to systemd: a restart into a deployed
            // binary keeps the unit running (the same process, exec'd).
            service::stopping();
        };
        let restart = async {
            let deadline = async {
                if !state.deploy.on_trial() {
                    return std::future::pending().await;
                }
                async_io::Timer::after(crate::deploy::COMMIT_DEADLINE).await;
                state.deploy.give_up_trial(&format!(
                    "no master committed it within {:?} of its start",
                    crate::deploy::COMMIT_DEADLINE
                ));
                std::future::pending::<()>().await
            };
            futures_lite::future::or(state.deploy.restart_requested(), deadline).await;
            log::info!("restarting through the launcher");
        };
        futures_lite::future::or(signal, restart).await;
    });
    let served = smol::block_on(futures_lite::future::or(serve, async {
        service::watchdog().await;
        Ok(())
    }));
    if let Some(a) = announcer
        && let Err(e) = a.stop()
    {
        log::warn!("mDNS goodbye failed: {e}");
    }
    served.map_err(NodeError::Serve)?;
    log::info!("stopped");
    Ok(if state.deploy.restarting() {
        Stopped::Restart
    } else {
        Stopped::Signal
    })
}
