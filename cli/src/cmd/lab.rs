//! `skelpi lab up|down|exec`: a cluster of network-namespace hosts on this
//! machine (root only).

use crate::lab::{self, LabOptions};
use clap::Subcommand;
use std::path::PathBuf;

/// What to do with a lab.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Create N hosts (network namespaces on one bridge), each running a
    /// real skelpi-agent with mDNS, and a namespace for the master; with
    /// --boards, also boot virtual boards on the bridge (qemu, an image
    /// written by `skelpi image`, DHCP from dnsmasq) and wait for their
    /// agents.
    Up {
        /// Lab number (0-250): several labs can coexist. Addresses are
        /// 10.77.ID.N, the master 10.77.ID.254.
        #[arg(long, default_value_t = 0)]
        id: u8,
        /// Hosts, one agent each.
        #[arg(long, default_value_t = 4)]
        hosts: usize,
        /// Shape every link to this rate, Mb/s (tbf), e.g. 100 as in the seed.
        #[arg(long, value_name = "MBPS")]
        link_mbps: Option<f64>,
        /// Add this one-way delay to every link, ms (netem).
        #[arg(long, value_name = "MS")]
        delay_ms: Option<f64>,
        /// Drop this share of packets on every link, percent (netem).
        #[arg(long, value_name = "PCT")]
        loss_pct: Option<f64>,
        /// The agent binary [default: skelpi-agent next to this skelpi].
        #[arg(long, value_name = "PATH")]
        agent_binary: Option<PathBuf>,
        /// Worker threads per agent [default: the agent's, one per core].
        #[arg(long)]
        workers: Option<usize>,
        /// Let agents grant plaintext transport (for --plaintext benches).
        #[arg(long)]
        allow_plaintext: bool,
        /// Virtual boards to boot besides the hosts (about 100 s each to
        /// READY under software emulation; they boot in parallel).
        #[arg(long, default_value_t = 0)]
        boards: usize,
        /// The virtual board base: the directory `scripts/board-base.sh`
        /// prints (disk.img, vmlinuz, initrd.img). Needed with --boards.
        #[arg(long, value_name = "DIR")]
        board_base: Option<PathBuf>,
        /// The agent put on the boards [default: --agent-binary].
        #[arg(long, value_name = "PATH")]
        board_agent: Option<PathBuf>,
        /// Hold host HOST's agent to PERCENT of one core (a cgroup CPU
        /// quota), as a slower board next to faster ones: e.g. `--cpu-quota
        /// 3=25`. Repeatable.
        #[arg(long, value_name = "HOST=PERCENT")]
        cpu_quota: Vec<crate::lab::cpu::Quota>,
        /// Let the hosts' agents take upgrades signed with this deploy
        /// key's public half (the `.pub` file of `skelpi keygen --deploy`),
        /// each with a state directory in the lab's: for `skelpi deploy`
        /// and `skelpi bench roll` in the lab.
        #[arg(long, value_name = "FILE")]
        deploy_pubkey: Option<PathBuf>,
        /// Run avahi-daemon in the master namespace (on a D-Bus bus of its
        /// own, publishing nothing), so that an independent DNS-SD browser
        /// sees what the agents announce: `skelpi lab exec -- avahi-browse
        /// -rpt _skelpi._tcp`.
        #[arg(long)]
        avahi: bool,
        /// Spread the hosts over N subnets (1 to 8), each a bridge of its
        /// own (10.<77+s>.<id>.0/24; host n in subnet (n-1) mod N, the
        /// master in the first), joined by a router namespace that
        /// forwards IP but not multicast: mDNS answers only within a
        /// subnet, as past a real router.
        #[arg(long, default_value_t = 1, value_name = "N")]
        subnets: usize,
        /// Run Debian's avahi-daemon on the router as an mDNS reflector
        /// (`enable-reflector=yes`), the usual way across subnets: the
        /// master then finds the agents of every subnet. Needs --subnets 2
        /// or more.
        #[arg(long)]
        reflector: bool,
    },
    /// Stop the lab's agents and remove its namespaces (safe to repeat, and
    /// after a crash).
    Down {
        /// Lab number.
        #[arg(long, default_value_t = 0)]
        id: u8,
    },
    /// Run a command in the lab's master namespace, with the lab's key:
    /// e.g. `skelpi lab exec -- skelpi bench rtt`.
    Exec {
        /// Lab number.
        #[arg(long, default_value_t = 0)]
        id: u8,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
}

/// Runs a lab command; returns the exit code for `exec`.
pub fn run(cmd: LabCommand) -> anyhow::Result<u8> {
    match cmd {
        LabCommand::Up {
            id,
            hosts,
            link_mbps,
            delay_ms,
            loss_pct,
            agent_binary,
            workers,
            allow_plaintext,
            boards,
            board_base,
            board_agent,
            cpu_quota,
            deploy_pubkey,
            avahi,
            subnets,
            reflector,
        } => {
            let agent_binary = agent_binary.unwrap_or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|e| e.parent().map(|d| d.join("skelpi-agent")))
                    .unwrap_or_else(|| PathBuf::from("skelpi-agent"))
            });
            let lab = lab::up(&LabOptions {
                id,
                hosts,
                link_mbps,
                delay_ms,
                loss_pct,
                agent_binary,
                workers,
                allow_plaintext,
                boards,
                board_base,
                board_agent,
                cpu_quotas: cpu_quota.clone(),
                deploy_pubkey,
                avahi,
                subnets,
                reflector,
            })?;
            println!(
                "lab {} is up: {} hosts ({}), master namespace {}",
                lab.id,
                lab.host_ns.len(),
                lab.host_addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                lab.master_ns
            );
            if let Some(r) = &lab.router_ns {
                println!(
                    "{subnets} subnets joined by the router namespace {r}{}",
                    if reflector {
                        " (an avahi-daemon reflector carries mDNS across)"
                    } else {
                        " (mDNS stays within each subnet)"
                    }
                );
            }
            for q in &cpu_quota {
                println!(
                    "host {}: its agent held to {}% of one core (a cgroup CPU quota)",
                    q.host, q.percent
                );
            }
            for b in &lab.boards {
                println!(
                    "board {}: READY (console {}, MAC {})",
                    b.n,
                    b.console.display(),
                    b.mac
                );
            }
            println!(
                "key: {}; agent logs: {}",
                lab.key_file.display(),
                lab.dir.display()
            );
            println!("try: skelpi lab exec --id {id} -- skelpi discover");
            Ok(0)
        }
        LabCommand::Down { id } => {
            let n = lab::down(id)?;
            if n == 0 {
                println!("lab {id} was not up");
            } else {
                println!("lab {id} is down ({n} namespaces removed)");
            }
            Ok(0)
        }
        LabCommand::Exec { id, command } => {
            let status = lab::exec(id, &command)?;
            Ok(status.code().unwrap_or(1).clamp(0, 255) as u8)
        }
    }
}
