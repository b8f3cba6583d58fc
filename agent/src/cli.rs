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

use crate::deploy::Deployer;
use crate::kernels::Registry;
use crate::launch::{self, Choice, Files, Role};
use crate::{identity, logging, node};
use clap::Parser;
use skelpi_wire::deploy_key::DeployPublicKey;
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
    /// Announce over mDNS on this network interface only (repeatable;
    /// e.g. eth0 for the cluster on a board whose wlan0 is the home
    /// network) [default: every interface]. Needs --listen on 0.0.0.0 or
    /// :: (an agent bound to one address announces on its interface only).
    #[arg(long, value_name = "NAME", conflicts_with = "no_mdns")]
    interface: Vec<String>,
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
    /// Accept new agent binaries (`skelpi deploy`) signed by the key whose
    /// public half is in FILE [default: $CREDENTIALS_DIRECTORY/deploy.pub
    /// (the unit's credential), else /etc/skelpi/deploy.pub if it exists;
    /// without one, every deploy is refused].
    #[arg(long, value_name = "FILE")]
    deploy_pubkey: Option<PathBuf>,
    /// Keep deployed binaries in DIR/deploy [default: $STATE_DIRECTORY,
    /// which systemd's StateDirectory= sets; without one, every deploy is
    /// refused].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Print this binary's version, protocol and architecture, and exit
    /// (a deploy runs a new binary so before it switches to it).
    #[arg(long)]
    self_check: bool,
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
    /// The deploy public key could not be read.
    #[error(transparent)]
    DeployKey(#[from] skelpi_wire::deploy_key::DeployKeyError),
    /// The state directory could not be used.
    #[error("cannot use state directory {}: {source}", dir.display())]
    State {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A deploy asked for a restart, and the launcher could not be run.
    #[error("cannot restart into the deployed binary: {0}")]
    Restart(std::io::Error),
    /// The daemon stopped with an error.
    #[error(transparent)]
    Node(#[from] node::NodeError),
}

/// Parses the command line and runs the agent with `kernels` until SIGTERM
/// or SIGINT. Exit status 0 after a clean shutdown, 2 on an error (logged
/// and printed).
pub fn main(kernels: Registry) -> ExitCode {
    let args = Args::parse();
    if args.self_check {
        return self_check(&kernels);
    }
    logging::init(log::LevelFilter::Info);
    let outcome = run(args, kernels).and_then(|stopped| match stopped {
        node::Stopped::Signal => Ok(()),
        // Returns only when the launcher could not be run.
        node::Stopped::Restart => {
            crate::service::watchdog_ping();
            Err(CliError::Restart(launch::restart()))
        }
    });
    match outcome {
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

/// `--self-check`: runs a built-in kernel once, prints what a deploy
/// checks, exits 0 (1 if the kernel failed).
fn self_check(kernels: &Registry) -> ExitCode {
    use crate::kernels::Array;
    if let Some(square) = kernels.get("square") {
        let out = square.call(&[], Array::list(vec![3.0]));
        if !out.is_ok_and(|a| a.data == [9.0]) {
            eprintln!("skelpi-agent: self-check: the square kernel does not work");
            return ExitCode::from(1);
        }
    }
    print!(
        "{}",
        skelpi_proto::deploy::self_check_report(env!("CARGO_PKG_VERSION"), std::env::consts::ARCH)
    );
    ExitCode::SUCCESS
}

/// The deploy set-up `args` ask for: the deploy files (made if missing)
/// and the public key.
fn deploy_setup(args: &Args) -> Result<(Option<Files>, Option<DeployPublicKey>), CliError> {
    let state_dir = args.state_dir.clone().or_else(|| {
        // systemd sets a colon-separated list; ours has one directory.
        let dirs = std::env::var_os("STATE_DIRECTORY")?;
        let first = dirs.to_string_lossy().split(':').next()?.to_owned();
        (!first.is_empty()).then(|| PathBuf::from(first))
    });
    let files = match state_dir {
        Some(dir) => Some(Files::open(&dir).map_err(|source| CliError::State { dir, source })?),
        None => None,
    };
    let public = match &args.deploy_pubkey {
        Some(path) => Some(DeployPublicKey::load(path)?),
        None => default_deploy_pubkey()?,
    };
    Ok((files, public))
}

/// The deploy public key where a board keeps it: the unit's credential
/// (`$CREDENTIALS_DIRECTORY/deploy.pub`, `none` when the board has none),
/// else /etc/skelpi/deploy.pub if it exists.
fn default_deploy_pubkey() -> Result<Option<DeployPublicKey>, CliError> {
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let credential = PathBuf::from(dir).join("deploy.pub");
        if credential.exists() {
            return Ok(DeployPublicKey::load_optional(&credential)?);
        }
    }
    let default = PathBuf::from(skelpi_wire::deploy_key::DEFAULT_PUBLIC_KEY_PATH);
    match std::fs::metadata(&default) {
        Ok(_) => Ok(Some(DeployPublicKey::load(&default)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => {
            log::warn!(
                "cannot read {}: {e}; deploys are refused (pass --deploy-pubkey FILE, or \
                 hand it over as the unit's deploy.pub credential)",
                default.display()
            );
            Ok(None)
        }
    }
}

/// The SHA-256 of the deployed binary this process is, checked against
/// its record; one that does not match is removed and the launcher run
/// again (returns only if it cannot be). One that cannot be read runs on,
/// its hash unknown.
fn verified(files: &Files, role: Role) -> Result<Option<String>, CliError> {
    match files.verify(role) {
        Ok(Ok(sha)) => Ok(Some(sha)),
        Err(e) => {
            log::warn!("cannot read the deployed binary to check its hash: {e}");
            Ok(None)
        }
        Ok(Err(why)) => {
            log::error!("the deployed binary does not match its record: {why}");
            match role {
                Role::Trial => files.roll_back(&format!("it does not match its record: {why}")),
                _ => files.discard_current(&format!("it does not match its record: {why}")),
            }
            Err(CliError::Restart(launch::restart()))
        }
    }
}

/// As the launcher: replaces this process with a deployed binary when
/// there is one to run (see [`crate::launch`]); returns this process's
/// role when it runs itself.
fn launch_deployed(files: &Files) -> Role {
    let role = Role::from_env();
    // A trial that cannot be started is rolled back, and the choice made
    // again: at most twice.
    for _ in 0..2 {
        match files.choose(role) {
            Choice::Run => return role,
            Choice::Exec(path, next) => {
                let e = launch::exec(&path, next);
                log::error!("cannot run the deployed binary {}: {e}", path.display());
                if next != Role::Trial {
                    return role;
                }
                files.roll_back(&format!("it could not be started: {e}"));
            }
        }
    }
    role
}

/// Runs the agent as `args` say, with `kernels`, until it stops: by a
/// signal, or to restart into a deployed binary.
pub fn run(args: Args, kernels: Registry) -> Result<node::Stopped, CliError> {
    let (files, public) = deploy_setup(&args)?;
    let role = files.as_ref().map_or(Role::from_env(), launch_deployed);
    let deployed = match (&files, role) {
        (Some(files), Role::Current | Role::Trial) => verified(files, role)?,
        _ => None,
    };
    let deployer = Deployer::new(public, files, (role, deployed.clone()));
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
        mdns_interfaces: args.interface,
        allow_plaintext: args.allow_plaintext,
        kernels,
        kernel_memory: args.kernel_memory.map(|mib| mib.saturating_mul(1 << 20)),
        deployed,
        deployer,
    })
    .map_err(CliError::from)
}
