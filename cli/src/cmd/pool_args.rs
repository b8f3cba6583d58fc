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
    /// Browse mDNS on this network interface only (e.g. eth0, lo).
    #[arg(long, value_name = "NAME", global = true)]
    pub interface: Option<String>,
    /// How long to browse mDNS for agents.
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
}

impl PoolArgs {
    /// The pool options; `fallback_local`: an embedded cluster when no
    /// agent answers.
    pub fn options(&self, fallback_local: bool) -> PoolOptions {
        PoolOptions {
            agents: self.agents.clone(),
            local: self.local,
            discover_timeout: self.discover_timeout,
            interface: self.interface.clone(),
            fallback_local,
            key_file: self.key_file.clone(),
            plaintext: self.plaintext,
            skip_unreachable: self.skip_unreachable,
        }
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
