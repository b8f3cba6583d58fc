//! The flags that choose the pool of agents, shared by every command that
//! talks to agents.

use clap::Args;
use skelpi::pool::PoolOptions;
use std::path::PathBuf;
use std::time::Duration;

/// Where the agents come from.
#[derive(Debug, Clone, Args)]
pub struct PoolArgs {
    /// Agents to use, `host[:port]` comma-separated (port 7871 by default).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "HOST:PORT,...",
        global = true
    )]
    pub agents: Vec<String>,
    /// Run on N in-process agents on loopback instead (1 to 256).
    #[arg(long, value_name = "N", global = true, conflicts_with = "agents",
          value_parser = local_agents)]
    pub local: Option<usize>,
    /// Cluster key file.
    #[arg(long, value_name = "PATH", global = true)]
    pub key_file: Option<PathBuf>,
    /// Browse mDNS on this network interface only (e.g. eth0, lo); with
    /// --discover, write `mdns:NAME` among the sources instead.
    #[arg(long, value_name = "NAME", global = true, conflicts_with_all = ["discover", "pool"])]
    pub interface: Option<String>,
    /// Where to find agents when none are named (repeatable, or
    /// comma-separated): `mdns` (the default), `mdns:INTERFACE`,
    /// `dns-sd:DOMAIN` (unicast DNS-SD: `_skelpi._tcp.DOMAIN` on a DNS
    /// server, past routers) or `srv:NAME` (SRV records, e.g. a Kubernetes
    /// headless Service's `_skelpi._tcp.skelpi.NAMESPACE.svc.cluster.local`).
    #[arg(long, value_name = "SOURCE", value_delimiter = ',', global = true)]
    pub discover: Vec<skelpi::sources::Source>,
    /// The DNS server of `dns-sd:` and `srv:` sources, `IP[:PORT]`
    /// [default: the nameservers of /etc/resolv.conf, in turn].
    #[arg(long, value_name = "ADDR", global = true, value_parser = skelpi::dnssd::parse_server)]
    pub dns_server: Option<std::net::SocketAddr>,
    /// Use the pool NAME of the pool file (its sources, agents, DNS server
    /// and key file; see --pools-file).
    #[arg(long, value_name = "NAME", global = true,
          conflicts_with_all = ["agents", "local", "discover"])]
    pub pool: Option<String>,
    /// The pool file [default: $SKELPI_POOLS_FILE or
    /// ~/.config/skelpi/pools.toml].
    #[arg(long, value_name = "PATH", global = true, requires = "pool")]
    pub pools_file: Option<PathBuf>,
    /// How long to look for agents (each source).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration, global = true)]
    pub discover_timeout: Duration,
    /// Skip encryption after authenticating (agents must run with
    /// --allow-plaintext; for trusted benchmark networks).
    #[arg(long, global = true)]
    pub plaintext: bool,
    /// With --agents: run on the agents that answer, saying which did
    /// not, instead of failing when one cannot be reached (discovered
    /// agents are always skipped so).
    #[arg(long, global = true)]
    pub skip_unreachable: bool,
    /// How often each agent must beat, from 100ms to 60s; one silent for 4
    /// beats is declared down [default: 500ms, so 2 s]. Longer for links
    /// so slow or lossy that 2 s without a byte is not a sign of a dead
    /// board.
    #[arg(long, value_name = "DURATION", global = true, value_parser = heartbeat)]
    pub heartbeat: Option<Duration>,
}

impl PoolArgs {
    /// The pool options (a named pool's read from the pool file);
    /// `fallback_local`: an embedded cluster when no agent answers (not
    /// for a named pool).
    pub fn options(&self, fallback_local: bool) -> Result<PoolOptions, crate::pools::PoolsError> {
        if let Some(name) = &self.pool {
            let path = self
                .pools_file
                .clone()
                .unwrap_or_else(crate::pools::default_path);
            let pool = crate::pools::load(&path, name)?;
            let mut opts = self.plain_options(false);
            opts.sources = pool.sources;
            opts.dns_server = self.dns_server.or(pool.dns_server);
            opts.key_file = self.key_file.clone().or(pool.key_file);
            return Ok(opts);
        }
        Ok(self.plain_options(fallback_local))
    }

    fn plain_options(&self, fallback_local: bool) -> PoolOptions {
        PoolOptions {
            agents: self.agents.clone(),
            local: self.local,
            discover_timeout: self.discover_timeout,
            interface: self.interface.clone(),
            sources: self.discover.clone(),
            dns_server: self.dns_server,
            fallback_local,
            key_file: self.key_file.clone(),
            plaintext: self.plaintext,
            skip_unreachable: self.skip_unreachable,
            heartbeat: self.heartbeat,
        }
    }
}

/// `--heartbeat`: what agents grant (100 ms to 60 s).
fn heartbeat(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    let (min, max) = (
        u64::from(skelpi_proto::beat::MIN_HEARTBEAT_MS),
        u64::from(skelpi_proto::beat::MAX_HEARTBEAT_MS),
    );
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if (min..=max).contains(&ms) {
        Ok(d)
    } else {
        Err(format!(
            "{s:?}: give a heartbeat from {min}ms to {}s (agents grant no other)",
            max / 1000
        ))
    }
}

/// `--local N`: at least one in-process agent, at most 256.
fn local_agents(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n @ 1..=256) => Ok(n),
        Ok(n) => Err(format!("{n} in-process agents: give 1 to 256")),
        Err(_) => Err(format!("{s:?} is not a number of agents (1 to 256)")),
    }
}
