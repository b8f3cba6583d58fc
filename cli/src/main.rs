//! `skelpi`: the master CLI. Parses flags, calls one library function per
//! command and maps errors to exit codes (0 ok, 1 the job failed, 2 usage,
//! key or file error).

use anyhow::Context;
use clap::{Parser, Subcommand};
use skelpi_cli::{cmd, failure};

use cmd::bench::{BenchArgs, BenchCommand};
use cmd::pool_args::PoolArgs;
use cmd::run::RunArgs;
use skelpi::pool;
use skelpi_wire::key::{self, ClusterKey};
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Say more: the library's and the embedded agents' log lines
    /// (info; -vv: debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once; boxing would only obscure clap's derive
enum Command {
    /// Write a new 256-bit cluster key (mode 0600); copy it to every board.
    ///
    /// With --deploy: write the deploy signing key instead (Ed25519,
    /// mode 0600) and its public half beside it (`.pub`); the public half
    /// goes on every board (/etc/skelpi/deploy.pub, or `skelpi image
    /// --deploy-pubkey`), the private one stays with whoever may replace
    /// the agents' binaries (`skelpi deploy`).
    Keygen {
        /// Where to write it [default: $SKELPI_KEY_FILE or
        /// ~/.config/skelpi/cluster.key; with --deploy,
        /// $SKELPI_DEPLOY_KEY_FILE or ~/.config/skelpi/deploy.key].
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
        /// Replace an existing key file.
        #[arg(long)]
        force: bool,
        /// Write a deploy signing key, not a cluster key.
        #[arg(long)]
        deploy: bool,
    },
    /// List the agents that answer on mDNS, or that a DNS server lists
    /// (--discover), and where each was found.
    #[command(after_help = "Examples:
  skelpi discover                                     # mDNS on every interface
  skelpi discover --interface eth0
  skelpi discover --discover dns-sd:cluster.example   # unicast DNS-SD, past routers
  skelpi discover --discover mdns,srv:_skelpi._tcp.skelpi.pis.svc.cluster.local --dns-server 10.43.0.10")]
    Discover {
        #[command(flatten)]
        find: cmd::discover::FindArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print DNS records for the agents found (on mDNS by default), so
    /// that a DNS server can list them for masters beyond the local link
    /// (`--discover dns-sd:DOMAIN`).
    #[command(after_help = "Examples:
  skelpi dns-records --domain cluster.example                   # zone-file lines, on stdout
  skelpi dns-records --domain lab.test --format dnsmasq          # for /etc/dnsmasq.d/")]
    DnsRecords {
        /// The domain the records go under: `_skelpi._tcp.DOMAIN`.
        #[arg(long, value_parser = domain)]
        domain: String,
        /// Zone-file lines, or dnsmasq options.
        #[arg(long, value_enum, default_value = "zone")]
        format: cmd::discover::RecordFormat,
        #[command(flatten)]
        find: cmd::discover::FindArgs,
    },
    /// Measure each agent's small-message round-trip time.
    #[command(after_help = "Examples:
  skelpi ping                                  # the agents found on mDNS
  skelpi ping --agents pi1,pi2 --count 100
  skelpi ping --agents pi1,pi2,pi3 --skip-unreachable --json")]
    Ping {
        #[command(flatten)]
        pool: PoolArgs,
        /// Pings per agent.
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Print JSON (one object per agent, times in microseconds) instead
        /// of a table.
        #[arg(long)]
        json: bool,
    },
    /// Each board's health as its agent reports it: model, agent version,
    /// busy workers, load, free memory, CPU temperature and the Raspberry
    /// Pi firmware's throttling and under-voltage flags ("-": the board
    /// does not say).
    #[command(after_help = "Examples:
  skelpi health                                # the agents found on mDNS
  skelpi health --agents pi1,pi2 --json")]
    Health {
        #[command(flatten)]
        pool: PoolArgs,
        /// Print JSON (absent figures as null) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The pool's boards, live: health, load and temperature per board,
    /// refreshed every --interval; a board that stops answering turns
    /// down within 2 s of a poll. Below them, the jobs running on this
    /// machine: results/s over time, agents lost, tasks sent again, and
    /// per stage Ts, Ta, rho and queue. Keys: q quit, ↑↓ select, n b l t
    /// sort by name, busy workers, load, temperature.
    #[command(after_help = "Examples:
  skelpi top                                   # the agents found on mDNS
  skelpi top --agents pi1,pi2,pi3 --interval 500ms
  skelpi top --once --json                     # one snapshot of boards and jobs, for scripts")]
    Top(cmd::top::TopArgs),
    /// Run the benchmark suite (rtt, pmap, farm, pipeline), or one of its
    /// benchmarks; with no agents found, on an embedded local cluster of
    /// one agent per core. Tables go to stdout, CSV files and SVG plots to
    /// --out.
    #[command(after_help = "Examples:
  skelpi bench                                 # the whole suite, agents found or embedded
  skelpi bench rtt --agents pi1,pi2 --link-mbps 100 --csv rtt.csv
  skelpi bench pmap --local 2 --chunks 2,4,8
  skelpi bench farm --local 2 --tasks 20000 --trace trace-dir
  skelpi bench pipeline --agents pi1,pi2,pi3 --stages 3 --interval 20ms")]
    Bench {
        #[command(subcommand)]
        which: Option<BenchCommand>,
        #[command(flatten)]
        pool: PoolArgs,
        #[command(flatten)]
        args: BenchArgs,
    },
    /// A cluster lab on this machine: hosts in network namespaces on a
    /// (shaped) bridge, each running a real agent (needs root).
    Lab {
        #[command(subcommand)]
        command: cmd::lab::LabCommand,
    },
    /// Write a Raspberry Pi OS image whose first boot installs and starts
    /// the agent with the cluster key (edits only the FAT boot partition).
    ///
    /// No root is needed and nothing is mounted. The agent, its systemd
    /// unit, the key and skelpi-install.sh go in the boot partition's root
    /// (/boot/firmware on the board). The first boot runs the script:
    /// cloud-init runs it on Trixie images (detected by their
    /// user-data/meta-data files), firstrun.sh on Bookworm images. It
    /// moves the key to /etc/skelpi/cluster.key (0600) and off the FAT
    /// partition, installs /usr/local/bin/skelpi-agent and the unit, and
    /// enables and starts the agent. Flash the result to every board's SD
    /// card, boot them, then run `skelpi discover`.
    Image(cmd::image::ImageArgs),
    /// Upgrade the agents to new binaries, one board at a time, while
    /// the cluster keeps working (see the README's "Upgrading the agents").
    ///
    /// Each board gets the binary for its architecture with a manifest
    /// signed by the deploy key for that board; it checks the signature,
    /// the hash, the architecture and that the binary runs there before it
    /// restarts into it. The roll waits for each board to answer on the new
    /// binary and pass a small check job, then commits it; it stops at the
    /// first failure, leaving the boards not reached on their binary. A
    /// binary that fails its check, or does not come up, is rolled back by
    /// the board.
    #[command(after_help = "Examples:
  skelpi deploy --binary target/aarch64-unknown-linux-musl/board/skelpi-agent --dry-run
  skelpi deploy --binary target/aarch64-unknown-linux-musl/board/skelpi-agent --binary target/armv7-unknown-linux-gnueabihf/board/skelpi-agent
  skelpi deploy --agents pi1,pi2,pi3 --binary skelpi-agent --batch 2
  skelpi deploy --build --dry-run      # in the source tree: the builds the pool needs")]
    Deploy(cmd::deploy::DeployArgs),
    /// Run a job file: a skeleton tree and its inputs (see the README).
    #[command(after_help = "Examples:
  skelpi run examples/jobs/pmap.toml --local 2
  skelpi run examples/jobs/pipeline.toml --agents pi1,pi2 --out out.jsonl
  skelpi run job.toml --trace trace-dir        # then open trace-dir/trace.json in ui.perfetto.dev
  skelpi run job.toml --autonomic --target-throughput 50
  skelpi run job.toml --swap '1=scale(3)@5000' --json")]
    Run {
        #[command(flatten)]
        pool: PoolArgs,
        #[command(flatten)]
        args: RunArgs,
    },
    /// WebAssembly modules on the agents: `skelpi module push FILE.wasm`.
    Module {
        #[command(subcommand)]
        command: cmd::module::ModuleCommand,
    },
    /// Work with traces written by `run --trace` or `bench --trace`.
    Trace {
        #[command(subcommand)]
        command: cmd::trace::TraceCommand,
    },
    /// Print a completion script for your shell, e.g.
    /// `skelpi completions bash > ~/.local/share/bash-completion/completions/skelpi`
    /// or `skelpi completions zsh > "${fpath[1]}/_skelpi"`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cmd::progress::init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skelpi: error: {}", failure::text(&e));
            ExitCode::from(failure::exit_code(&e))
        }
    }
}

/// `--domain`: a DNS name that can hold agents' records.
fn domain(s: &str) -> Result<String, String> {
    skelpi::dnssd::check_domain(s).map(|()| s.to_owned())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen {
            out,
            force,
            deploy: true,
        } => {
            let path = out.unwrap_or_else(skelpi_wire::deploy_key::default_key_path);
            let key = skelpi_wire::deploy_key::DeployKey::generate()?;
            key.write(&path, force)?;
            let mut public = path.clone().into_os_string();
            public.push(".pub");
            let public = PathBuf::from(public);
            key.public()
                .write(&public)
                .with_context(|| format!("cannot write {}", public.display()))?;
            println!("wrote a new deploy key to {} (mode 0600)", path.display());
            println!(
                "wrote its public half to {}: put it on every board as \
                 /etc/skelpi/deploy.pub (or pass it to `skelpi image --deploy-pubkey`)",
                public.display()
            );
            Ok(())
        }
        Command::Keygen { out, force, .. } => {
            let path = out.unwrap_or_else(key::default_key_path);
            ClusterKey::generate()?
                .write(&path, force)
                .context("cannot write the key (pass --force to replace an existing one)")?;
            println!("wrote a new cluster key to {} (mode 0600)", path.display());
            println!("copy it to each agent (e.g. /etc/skelpi/cluster.key, mode 0600)");
            Ok(())
        }
        Command::Discover { find, json } => cmd::discover::discover(&find, json),
        Command::DnsRecords {
            domain,
            format,
            find,
        } => cmd::discover::records(&find, &domain, format),
        Command::Ping { pool, count, json } => smol::block_on(async {
            let mut pool = pool::connect(&pool.options(false)?).await?;
            eprintln!("{}", pool.origin);
            let mut rows = Vec::new();
            for agent in pool.cluster.agents_mut() {
                let mut rtts = Vec::with_capacity(count);
                for _ in 0..count.max(1) {
                    rtts.push(agent.ping().await?);
                }
                rows.push(cmd::ping::Row::new(agent, &rtts));
            }
            pool.cluster.close().await;
            cmd::ping::print(&rows, json)
        }),
        Command::Health { pool, json } => smol::block_on(async {
            let mut pool = pool::connect(&cmd::health::pool_options(&pool)?).await?;
            eprintln!("{}", pool.origin);
            let mut tried = std::collections::HashMap::new();
            let mut rows = cmd::health::ask_all(pool.cluster.agents_mut(), &mut tried).await;
            rows.extend(cmd::health::unreachable_rows(&pool.unreachable));
            pool.cluster.close().await;
            cmd::health::print(&rows, json)?;
            let down = rows.iter().filter(|r| r.state.is_err()).count();
            if down > 0 {
                anyhow::bail!("{down} of {} boards did not answer", rows.len());
            }
            Ok(())
        }),
        Command::Top(args) => cmd::top::run(&args),
        Command::Bench { which, pool, args } => cmd::bench::run(which, &pool, &args),
        Command::Run { pool, args } => cmd::run::run(&pool, &args),
        Command::Deploy(args) => cmd::deploy::run(&args),
        Command::Image(args) => cmd::image::run(&args),
        Command::Trace { command } => cmd::trace::run(&command),
        Command::Module { command } => cmd::module::run(&command),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            use std::io::Write;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "skelpi", &mut script);
            match std::io::stdout().write_all(&script) {
                // Read in part (`| head`): nothing to say.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                written => Ok(written?),
            }
        }
        Command::Lab { command } => {
            let code = cmd::lab::run(command)?;
            if code != 0 {
                std::process::exit(code.into());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::{CommandFactory, Parser};

    #[test]
    fn every_example_in_help_parses() {
        let cli = Cli::command();
        let mut seen = 0;
        for sub in cli.get_subcommands() {
            let Some(help) = sub.get_after_help() else {
                continue;
            };
            for line in help.to_string().lines() {
                let Some(example) = line.trim().strip_prefix("skelpi ") else {
                    continue;
                };
                let example = example.split(" # ").next().unwrap_or(example);
                let words = std::iter::once("skelpi")
                    .chain(example.split_whitespace().map(|w| w.trim_matches('\'')));
                let words: Vec<&str> = words.collect();
                if let Err(e) = Cli::try_parse_from(&words) {
                    panic!("{words:?}: {e}");
                }
                seen += 1;
            }
        }
        assert!(seen >= 10, "{seen} examples");
    }
}
