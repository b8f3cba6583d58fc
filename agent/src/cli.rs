//! The agent's command line, as a library: `skelpi-agent` is
//! `cli::main(Registry::builtin())`, and a custom agent is the same with
//! its own kernels — a ten-line `main.rs`:
//!
//! ```no_run
//! use skelpi_agent::kernels::{Array, KernelError, Registry};
//!
//! fn main() -> std::process::ExitCode {
//!     let kernels = Registry::builtin().with("celsius", |_: &[f64], x: Array| {
//!         let data = x.data.iter().map(|f| (f - 32.0) * 5.0 / 9.0).collect();
//!         Ok::<_, KernelError>(Array { data, ..x })
//!     });
//!     skelpi_agent::cli::main(kernels)
//! }
//! ```
//!
//! It takes the same flags as `skelpi-agent`, announces itself the same
//! way, and tells masters its kernels in its handshake reply, so that they
//! send it only jobs it can run.

use crate::kernels::Registry;
use crate::{identity, logging, node};
use clap::Parser;
use skelpi_wire::key;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use thiserror::Error;

/// skelpi-agent: runs skelpi skeleton roles (farm worker, pipeline stage,
/// reducer, echo) for an authenticated master, on all of this board's cores.
///
/// It announces itself as `_skelpi._tcp.local.` over mDNS/DNS-SD so that
/// `skelpi discover` finds it, and accepts only masters holding the cluster
/// key (create one with `skelpi keygen`; the file must be mode 0600).
/// Under systemd it logs to the journal, otherwise to stderr (RUST_LOG sets
/// the level).
#[derive(Debug, Clone, Parser)]
#[command(name = "skelpi-agent", version, about, long_about)]
pub struct Args {
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
    /// Memory the kernels may hold at once, in MiB: a call that would need
    /// more (a large `matmul_power`, say) fails its task instead of
    /// running the board out of memory [default: half the machine's].
    #[arg(long, value_name = "MIB")]
    kernel_memory: Option<u64>,
    /// Grant a master's request to skip encryption after authenticating
    /// (for benchmark networks you trust).
    #[arg(long)]
    allow_plaintext: bool,
    /// Offer the executable files of DIR as kernels `port:NAME` (external
    /// programs exchanging 4-byte-length-prefixed frames on stdin/stdout;
    /// see the README's "Bringing your code to the boards"). Only programs
    /// there can be run.
    #[arg(long, value_name = "DIR")]
    ports: Option<PathBuf>,
    /// Seconds a port program may take to answer one call before it is
    /// killed and the task fails.
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    port_timeout: u64,
    /// Fuel for one call of a WebAssembly kernel (about one unit per guest
    /// instruction): a guest that uses it all, an endless loop say, fails
    /// its task.
    #[cfg(feature = "wasm")]
    #[arg(long, value_name = "UNITS", default_value_t = 1_000_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    wasm_fuel: u64,
    /// Memory for one call of a WebAssembly kernel, MiB: a guest that
    /// grows past it fails its task.
    #[cfg(feature = "wasm")]
    #[arg(long, value_name = "MIB", default_value_t = 128,
          value_parser = clap::value_parser!(u64).range(1..=2047))]
    wasm_memory: u64,
    /// WebAssembly modules masters push are kept in memory up to MIB (the
    /// least recently used go first; their compiled code takes a few
    /// times their size more); 0 runs no WebAssembly.
    #[cfg(feature = "wasm")]
    #[arg(long, value_name = "MIB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(0..=2047))]
    wasm_cache: u64,
    /// Also keep pushed modules in DIR (as HASH.wasm, checked when read
    /// back), so they survive restarts and evictions from the cache.
    #[cfg(feature = "wasm")]
    #[arg(long, value_name = "DIR")]
    modules: Option<PathBuf>,
}

/// Why an agent could not run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CliError {
    /// The cluster key could not be used.
    #[error("cannot use cluster key {}: {source}", path.display())]
    Key {
        /// Where it was looked for.
        path: PathBuf,
        /// Why it could not be used.
        source: key::KeyError,
    },
    /// The ports directory could not be read.
    #[error("cannot read ports directory {}: {source}", dir.display())]
    Ports {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The modules directory could not be made.
    #[error("cannot use modules directory {}: {source}", dir.display())]
    Modules {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The daemon stopped with an error.
    #[error(transparent)]
    Node(#[from] node::NodeError),
}

/// Parses the command line and runs the agent with `kernels` until SIGTERM
/// or SIGINT. Exit status 0 after a clean shutdown, 2 on an error (logged
/// and printed).
pub fn main(kernels: Registry) -> ExitCode {
    let args = Args::parse();
    logging::init(log::LevelFilter::Info);
    match run(args, kernels) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain: "cannot use cluster key K: cannot read K:
            // Permission denied".
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                let c_text = c.to_string();
                if !text.contains(&c_text) {
                    text = format!("{text}: {c_text}");
                }
                cause = c.source();
            }
            log::error!("{text}");
            eprintln!("skelpi-agent: error: {text}");
            ExitCode::from(2)
        }
    }
}

/// Runs the agent as `args` say, with `kernels`.
pub fn run(args: Args, kernels: Registry) -> Result<(), CliError> {
    let path = args.key_file.unwrap_or_else(key::default_key_path);
    let key = key::ClusterKey::load(&path).map_err(|source| CliError::Key { path, source })?;
    let workers = args.workers.unwrap_or_else(identity::cores).max(1);
    let kernels = match &args.ports {
        Some(dir) => {
            let timeout = std::time::Duration::from_secs(args.port_timeout);
            kernels
                .with_ports(dir, timeout)
                .map_err(|source| CliError::Ports {
                    dir: dir.clone(),
                    source,
                })?
        }
        None => kernels,
    };
    #[cfg(feature = "wasm")]
    let kernels = {
        use crate::kernels::wasm::{Limits, Modules};
        if let Some(dir) = &args.modules {
            std::fs::create_dir_all(dir).map_err(|source| CliError::Modules {
                dir: dir.clone(),
                source,
            })?;
        }
        let limits = Limits {
            fuel: args.wasm_fuel,
            memory: (args.wasm_memory as usize) << 20,
        };
        let cache = (args.wasm_cache as usize) << 20;
        let modules = (cache > 0).then(|| Modules::new(limits, cache, args.modules.clone()));
        kernels.with_modules(modules)
    };
    node::run(node::NodeConfig {
        listen: args.listen,
        name: args.name.unwrap_or_else(identity::default_name),
        id: args.id,
        key,
        workers,
        mdns: !args.no_mdns,
        allow_plaintext: args.allow_plaintext,
        kernels,
        kernel_memory: args.kernel_memory.map(|mib| mib.saturating_mul(1 << 20)),
    })?;
    Ok(())
}
