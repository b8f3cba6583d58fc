//! `skelpi`: the master CLI. Parses flags, calls one library function per
//! command and maps errors to exit codes (0 ok, 1 the job failed, 2 usage,
//! key or file error).

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use skelpi::bench::{report, rtt};
use skelpi::discover::{DiscoverOptions, discover};
use skelpi::pool::{self, PoolError, PoolOptions};
use skelpi_agent::key::{self, ClusterKey};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// skelpi: parallel and distributed programming with algorithmic skeletons
/// on a cluster of small boards.
///
/// The pool of agents comes from mDNS discovery (`_skelpi._tcp`), from
/// `--agents host:port,...`, or from `--local N` (N in-process agents on
/// loopback with a throwaway key). Connections are authenticated and
/// encrypted with the cluster key (`skelpi keygen`).
#[derive(Debug, Parser)]
#[command(name = "skelpi", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once; boxing would only obscure clap's derive
enum Command {
    /// Write a new 256-bit cluster key (mode 0600); copy it to every board.
    Keygen {
        /// Where to write it [default: $SKELPI_KEY_FILE or ~/.config/skelpi/cluster.key].
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
        /// Replace an existing key file.
        #[arg(long)]
        force: bool,
    },
    /// List the agents that answer on mDNS.
    Discover {
        /// How long to listen.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Browse on this network interface only (e.g. eth0, lo).
        #[arg(long, value_name = "NAME")]
        interface: Option<String>,
    },
    /// Measure each agent's small-message round-trip time.
    Ping {
        #[command(flatten)]
        pool: PoolArgs,
        /// Pings per agent.
        #[arg(long, default_value_t = 10)]
        count: usize,
    },
    /// Run the benchmark suite; with no agents found, on an embedded local
    /// cluster of one agent per core.
    Bench {
        #[command(subcommand)]
        which: Option<BenchCommand>,
        #[command(flatten)]
        pool: PoolArgs,
        #[command(flatten)]
        rtt: RttArgs,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Round-trip times of lists and matrices of floats (the seed's first
    /// table) and of small messages.
    Rtt {
        #[command(flatten)]
        pool: PoolArgs,
        #[command(flatten)]
        rtt: RttArgs,
    },
}

#[derive(Debug, Clone, Args)]
struct PoolArgs {
    /// Agents to use, `host[:port]` comma-separated (port 7871 by default).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "HOST:PORT,...",
        global = true
    )]
    agents: Vec<String>,
    /// Run on N in-process agents on loopback instead.
    #[arg(long, value_name = "N", global = true, conflicts_with = "agents")]
    local: Option<usize>,
    /// Cluster key file.
    #[arg(long, value_name = "PATH", global = true)]
    key_file: Option<PathBuf>,
    /// Browse mDNS on this network interface only (e.g. eth0, lo).
    #[arg(long, value_name = "NAME", global = true)]
    interface: Option<String>,
    /// How long to browse mDNS for agents.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration, global = true)]
    discover_timeout: Duration,
    /// Skip encryption after authenticating (agents must run with
    /// --allow-plaintext; for trusted benchmark networks).
    #[arg(long, global = true)]
    plaintext: bool,
}

#[derive(Debug, Clone, Args)]
struct RttArgs {
    /// List lengths to send (floats).
    #[arg(
        long,
        default_value = "1000,100000,1000000,1500000",
        value_parser = parse_sizes,
        global = true
    )]
    lists: Sizes,
    /// Matrix sizes D to send (D×D floats).
    #[arg(
        long,
        default_value = "50,100,150,200,300,1000,2000",
        value_parser = parse_sizes,
        global = true
    )]
    matrices: Sizes,
    /// Timed repeats per size (the median is reported).
    #[arg(long, default_value_t = 5, global = true,
          value_parser = clap::value_parser!(u32).range(1..))]
    repeats: u32,
    /// Pings per agent for the small-message row (0 to skip).
    #[arg(long, default_value_t = 1000, global = true)]
    pings: usize,
    /// Link speed in Mb/s, for the utilisation column.
    #[arg(long, value_name = "MBPS", global = true)]
    link_mbps: Option<f64>,
    /// Skip the raw-TCP baseline (raw TCP to the same agents, same run).
    #[arg(long, global = true)]
    no_baseline: bool,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 2010, global = true)]
    seed: u64,
    /// Also write the rows as CSV to this file.
    #[arg(long, value_name = "FILE", global = true)]
    csv: Option<PathBuf>,
    /// Print JSON instead of the table.
    #[arg(long, global = true)]
    json: bool,
}

/// A comma-separated list of sizes; empty or `none` for no sizes.
#[derive(Debug, Clone)]
struct Sizes(Vec<usize>);

fn parse_sizes(s: &str) -> Result<Sizes, String> {
    if s.trim().is_empty() || s.trim() == "none" {
        return Ok(Sizes(Vec::new()));
    }
    s.split(',')
        .map(|p| {
            p.trim()
                .replace('_', "")
                .parse::<usize>()
                .map_err(|_| format!("{p:?} is not a size (expected e.g. 1000,1000000 or none)"))
        })
        .collect::<Result<_, _>>()
        .map(Sizes)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    skelpi_agent::logging::init(log::LevelFilter::Warn);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skelpi: error: {e:#}");
            let usage = e
                .downcast_ref::<PoolError>()
                .is_some_and(|p| matches!(p, PoolError::Key { .. } | PoolError::BadAddress(_)))
                || e.downcast_ref::<std::io::Error>().is_some();
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen { out, force } => {
            let path = out.unwrap_or_else(key::default_key_path);
            ClusterKey::generate()?
                .write(&path, force)
                .context("cannot write the key (pass --force to replace an existing one)")?;
            println!("wrote a new cluster key to {} (mode 0600)", path.display());
            println!("copy it to each agent (e.g. /etc/skelpi/cluster.key, mode 0600)");
            Ok(())
        }
        Command::Discover {
            timeout,
            json,
            interface,
        } => {
            let agents = discover(&DiscoverOptions {
                timeout,
                expect: None,
                interface,
            })?;
            if json {
                let v: Vec<_> = agents
                    .iter()
                    .map(|a| {
                        serde_json::json!({
                            "id": a.info.id, "name": a.info.name, "address": a.socket_addr().to_string(),
                            "addresses": a.addrs, "arch": a.info.arch, "cores": a.info.cores,
                            "memory_bytes": a.info.memory_bytes, "version": a.info.version,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if agents.is_empty() {
                println!("no agents answered within {timeout:?}");
            } else {
                println!(
                    "{:<16} {:<16} {:<22} {:<8} {:>5} {:>9} {:>7}",
                    "id", "name", "address", "arch", "cores", "memory", "version"
                );
                for a in &agents {
                    println!(
                        "{:<16} {:<16} {:<22} {:<8} {:>5} {:>7.1} G {:>7}",
                        a.info.id,
                        a.info.name,
                        a.socket_addr().to_string(),
                        a.info.arch,
                        a.info.cores,
                        a.info.memory_bytes as f64 / (1u64 << 30) as f64,
                        a.info.version
                    );
                }
            }
            Ok(())
        }
        Command::Ping { pool, count } => smol::block_on(async {
            let mut pool = pool::connect(&pool_options(&pool, false)).await?;
            eprintln!("{}", pool.origin);
            println!(
                "{:<16} {:<22} {:>10} {:>10} {:>10}",
                "agent", "address", "min", "median", "max"
            );
            for agent in pool.cluster.agents_mut() {
                let mut rtts = Vec::with_capacity(count);
                for _ in 0..count.max(1) {
                    rtts.push(agent.ping().await?);
                }
                println!(
                    "{:<16} {:<22} {:>10.1?} {:>10.1?} {:>10.1?}",
                    agent.info().name,
                    agent.addr().to_string(),
                    skelpi::stats::quantile(&rtts, 0.0),
                    skelpi::stats::median(&rtts),
                    skelpi::stats::quantile(&rtts, 1.0),
                );
            }
            pool.cluster.close().await;
            Ok(())
        }),
        Command::Bench { which, pool, rtt } => {
            let (pool, rtt) = match which {
                Some(BenchCommand::Rtt { pool, rtt }) => (pool, rtt),
                None => (pool, rtt),
            };
            bench_rtt(&pool, &rtt)
        }
    }
}

fn pool_options(p: &PoolArgs, fallback_local: bool) -> PoolOptions {
    PoolOptions {
        agents: p.agents.clone(),
        local: p.local,
        discover_timeout: p.discover_timeout,
        interface: p.interface.clone(),
        fallback_local,
        key_file: p.key_file.clone(),
        plaintext: p.plaintext,
    }
}

fn bench_rtt(pool_args: &PoolArgs, args: &RttArgs) -> anyhow::Result<()> {
    smol::block_on(async {
        let mut pool = pool::connect(&pool_options(pool_args, true)).await?;
        eprintln!("{}", pool.origin);
        let opts = rtt::RttOptions {
            lists: args.lists.0.clone(),
            matrices: args.matrices.0.clone(),
            repeats: args.repeats as usize,
            pings: args.pings,
            link_mbps: args.link_mbps,
            baseline: !args.no_baseline,
            seed: args.seed,
        };
        let bar = indicatif::ProgressBar::new(rtt::steps(&opts, pool.cluster.agents().len()));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
                .expect("static template"),
        );
        let report = rtt::run(&mut pool.cluster, &pool.origin, &opts, &bar).await?;
        bar.finish_and_clear();
        pool.cluster.close().await;
        if let Some(path) = &args.csv {
            report::write_csv(&report, path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report::rtt_table(&report));
        }
        Ok(())
    })
}
