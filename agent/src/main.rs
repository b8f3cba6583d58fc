//! `skelpi-agent`: the skelpi node daemon. Parses flags, loads the key and
//! hands over to [`skelpi_agent::node::run`].

use anyhow::Context;
use clap::Parser;
use skelpi_agent::{identity, key, logging, node};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// skelpi-agent: runs skelpi skeleton roles (farm worker, pipeline stage,
/// reducer, echo) for an authenticated master, on all of this board's cores.
///
/// It announces itself as `_skelpi._tcp.local.` over mDNS/DNS-SD so that
/// `skelpi discover` finds it, and accepts only masters holding the cluster
/// key (create one with `skelpi keygen`; the file must be mode 0600).
/// Under systemd it logs to the journal, otherwise to stderr (RUST_LOG sets
/// the level).
#[derive(Debug, Parser)]
#[command(name = "skelpi-agent", version, about, long_about)]
struct Args {
    /// Address and port to listen on.
    #[arg(long, default_value = "0.0.0.0:7871", value_name = "ADDR")]
    listen: SocketAddr,
    /// Agent name, shown by `skelpi discover` [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// Fixed agent id [default: derived from the machine id, name and port].
    #[arg(long)]
    id: Option<String>,
    /// Cluster key file (64 hex digits, mode 0600) [default: $SKELPI_KEY_FILE,
    /// $CREDENTIALS_DIRECTORY/cluster.key, ~/.config/skelpi/cluster.key].
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// Do not announce over mDNS; masters must name this agent with --agents.
    #[arg(long)]
    no_mdns: bool,
    /// Worker threads for kernels [default: number of cores].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Grant a master's request to skip encryption after authenticating
    /// (for benchmark networks you trust).
    #[arg(long)]
    allow_plaintext: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(log::LevelFilter::Info);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            eprintln!("skelpi-agent: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let key_path = args.key_file.unwrap_or_else(key::default_key_path);
    let key = key::ClusterKey::load(&key_path)
        .with_context(|| format!("cannot use cluster key {}", key_path.display()))?;
    let workers = args.workers.unwrap_or_else(identity::cores).max(1);
    node::run(node::NodeConfig {
        listen: args.listen,
        name: args.name.unwrap_or_else(identity::default_name),
        id: args.id,
        key,
        workers,
        mdns: !args.no_mdns,
        allow_plaintext: args.allow_plaintext,
    })?;
    Ok(())
}
