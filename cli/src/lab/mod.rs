//! A cluster lab on one machine: hosts that are Linux network namespaces
//! joined by a bridge (itself in a namespace of its own, so nothing is
//! added to the machine's own network), a real `skelpi-agent` process in
//! each host, a namespace for the master, and optionally every link shaped
//! with `tc` (tbf for the rate, netem for delay and loss) — the seed's
//! 100 Mb/s LAN of single-core machines, reproducible anywhere with root.
//!
//! Everything a lab creates is named `skl<id>-...` (namespaces) and lives
//! in those namespaces, so [`down`] can remove a lab even after a crash,
//! without any state. Addresses are `10.77.<id>.<n>/24`: host n is `.n`
//! (from 1), the master `.254`.
//!
//! With `subnets` > 1, hosts are spread over that many subnets, each a
//! bridge of its own (`10.<77+s>.<id>.0/24`, host n in subnet
//! `(n-1) % subnets`, the master in subnet 0), joined by a router namespace
//! (`skl<id>-router`, `.253` in each, IP forwarding on, no multicast
//! routing): mDNS answers only within a subnet, as past a real router. An
//! avahi-daemon reflector on the router (`reflector`) carries mDNS across,
//! the usual home and office answer.
//!
//! It is a subcommand of `skelpi` rather than a script because it starts
//! and supervises the agent binary, reuses the key handling and is tested
//! like the rest of the tool.

pub mod avahi;
pub mod boards;
pub mod cpu;
mod sh;

use skelpi_wire::key::ClusterKey;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use thiserror::Error;

/// The port lab agents listen on.
pub const PORT: u16 = 7871;

/// Why a lab operation failed.
#[derive(Debug, Error)]
pub enum LabError {
    /// Not running as root.
    #[error("the lab needs root (network namespaces, bridges and tc): run it with sudo")]
    NotRoot,
    /// A command failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed or why it could not run.
        message: String,
    },
    /// A lab with this id already exists.
    #[error("lab {0} is already up (skelpi lab down --id {0} first)")]
    Exists(u8),
    /// Bad options.
    #[error("{0}")]
    Invalid(String),
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A board did not come up.
    #[error("board {board}: {step}: {why}")]
    Board {
        /// The board's number.
        board: usize,
        /// What was being done.
        step: String,
        /// What went wrong.
        why: String,
    },
    /// An agent did not start.
    #[error("agent on host {host} did not start: {why} (its log: {log})")]
    Agent {
        /// The host number.
        host: usize,
        /// What happened.
        why: String,
        /// Its log file.
        log: PathBuf,
    },
}

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Lab number (0–250): names and subnet; several labs can coexist.
    pub id: u8,
    /// Hosts, each with one agent (1–200).
    pub hosts: usize,
    /// Rate of every link, Mb/s (`None`: unshaped).
    pub link_mbps: Option<f64>,
    /// One-way delay added on every link, ms.
    pub delay_ms: Option<f64>,
    /// Packet loss on every link, percent.
    pub loss_pct: Option<f64>,
    /// The agent binary.
    pub agent_binary: PathBuf,
    /// Worker threads per agent (`None`: the agent's default).
    pub workers: Option<usize>,
    /// Let agents grant plaintext transport.
    pub allow_plaintext: bool,
    /// Booted boards (virtual machines on the bridge), besides the hosts.
    pub boards: usize,
    /// The virtual board base (what `scripts/board-base.sh` prints).
    pub board_base: Option<PathBuf>,
    /// The agent put on the boards (`None`: `agent_binary`).
    pub board_agent: Option<PathBuf>,
    /// Hosts held to a share of a core (a slower board).
    pub cpu_quotas: Vec<cpu::Quota>,
    /// The deploy public key the hosts' agents accept upgrades signed
    /// for (each then has a state directory in the lab's); `None`: they
    /// refuse every deploy.
    pub deploy_pubkey: Option<PathBuf>,
    /// Run avahi-daemon (on a D-Bus bus of its own) in the master
    /// namespace, for `avahi-browse` through `skelpi lab exec`.
    pub avahi: bool,
    /// Subnets the hosts are spread over, joined by a router (1: one
    /// bridge, no router).
    pub subnets: usize,
    /// Run an avahi-daemon reflector on the router (needs 2 subnets or
    /// more).
    pub reflector: bool,
}

/// A lab that is up: where to find its parts.
#[derive(Debug, Clone)]
pub struct Lab {
    /// Its number.
    pub id: u8,
    /// The master's namespace.
    pub master_ns: String,
    /// The hosts' namespaces, in order.
    pub host_ns: Vec<String>,
    /// The hosts' addresses, in order.
    pub host_addrs: Vec<Ipv4Addr>,
    /// The router's namespace, if the lab has subnets.
    pub router_ns: Option<String>,
    /// The agents' process ids, in order.
    pub agent_pids: Vec<u32>,
    /// The cluster key file of the lab.
    pub key_file: PathBuf,
    /// Where logs and the key live.
    pub dir: PathBuf,
    /// The booted boards, in order (their agents READY).
    pub boards: Vec<boards::Board>,
}

/// Namespace-name prefix of lab `id`.
pub fn prefix(id: u8) -> String {
    format!("skl{id}-")
}

/// The folder of lab `id`: key and agent logs.
pub fn dir(id: u8) -> PathBuf {
    std::env::temp_dir().join(format!("skelpi-lab-{id}"))
}

/// The master namespace of lab `id`.
pub fn master_ns(id: u8) -> String {
    format!("{}master", prefix(id))
}

fn require_root() -> Result<(), LabError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("");
    if uid == "0" {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

/// The namespaces of lab `id` that exist.
pub fn namespaces(id: u8) -> Result<Vec<String>, LabError> {
    let p = prefix(id);
    Ok(sh::ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&p))
        .map(str::to_owned)
        .collect())
}

/// Builds the lab: namespaces, bridge, links, shaping, key, agents.
/// On failure, whatever was created is removed again.
pub fn up(opts: &LabOptions) -> Result<Lab, LabError> {
    require_root()?;
    if opts.id > 250 {
        return Err(LabError::Invalid("--id must be 0 to 250".into()));
    }
    if opts.hosts > 200 || opts.boards > 20 || opts.hosts + opts.boards == 0 {
        return Err(LabError::Invalid(
            "--hosts must be 0 to 200 and --boards 0 to 20, at least one of either".into(),
        ));
    }
    if !(1..=8).contains(&opts.subnets) {
        return Err(LabError::Invalid("--subnets must be 1 to 8".into()));
    }
    if opts.reflector && opts.subnets < 2 {
        return Err(LabError::Invalid(
            "--reflector needs --subnets 2 or more: it carries mDNS across the router".into(),
        ));
    }
    if opts.boards > 0 && opts.subnets > 1 {
        return Err(LabError::Invalid(
            "--boards joins the first subnet's bridge alone: use one subnet with boards".into(),
        ));
    }
    if opts.boards > 0 && opts.board_base.is_none() {
        return Err(LabError::Invalid(
            "--boards needs --board-base: the directory scripts/board-base.sh prints".into(),
        ));
    }
    if let Some((i, q)) = opts
        .cpu_quotas
        .iter()
        .enumerate()
        .find(|(i, q)| opts.cpu_quotas[..*i].iter().any(|p| p.host == q.host))
    {
        let first = opts.cpu_quotas[..i].iter().find(|p| p.host == q.host);
        return Err(LabError::Invalid(format!(
            "--cpu-quota {}={}: host {} was given {}% already (one quota per host)",
            q.host,
            q.percent,
            q.host,
            first.map_or(0.0, |p| p.percent)
        )));
    }
    if let Some(q) = opts.cpu_quotas.iter().find(|q| q.host > opts.hosts) {
        return Err(LabError::Invalid(format!(
            "--cpu-quota {}={}: there are only {} hosts",
            q.host, q.percent, opts.hosts
        )));
    }
    if let Some(p) = opts.deploy_pubkey.as_ref().filter(|p| !p.is_file()) {
        return Err(LabError::Invalid(format!(
            "--deploy-pubkey {}: no such file (write one with skelpi keygen --deploy)",
            p.display()
        )));
    }
    if !namespaces(opts.id)?.is_empty() {
        return Err(LabError::Exists(opts.id));
    }
    if !opts.agent_binary.is_file() {
        return Err(LabError::Invalid(format!(
            "agent binary {} not found (build it: cargo build --release -p skelpi-agent, or pass --agent-binary)",
            opts.agent_binary.display()
        )));
    }
    let built = build(opts);
    if built.is_err() {
        let _ = down(opts.id);
    }
    built
}

fn build(opts: &LabOptions) -> Result<Lab, LabError> {
    let id = opts.id;
    let p = prefix(id);
    let sw = format!("{p}sw");
    let master = master_ns(id);
    let hosts: Vec<String> = (1..=opts.hosts).map(|n| format!("{p}h{n}")).collect();
    let subnets = opts.subnets.max(1);
    // Host n's subnet, and an address in subnet s.
    let subnet_of = |n: usize| (n - 1) % subnets;
    let in_subnet = |s: usize, n: u8| Ipv4Addr::new(10, 77 + s as u8, id, n);
    let addr = |n: u8| in_subnet(subnet_of(usize::from(n)), n);

    // The switch: a bridge per subnet, alone in their namespace.
    sh::ip(&["netns", "add", &sw])?;
    sh::ip_in(&sw, &["link", "set", "lo", "up"])?;
    for s in 0..subnets {
        let br = format!("br{s}");
        sh::ip_in(&sw, &["link", "add", &br, "type", "bridge"])?;
        sh::ip_in(&sw, &["link", "set", &br, "up"])?;
    }
    let mut members: Vec<(String, Ipv4Addr, usize)> = vec![(master.clone(), in_subnet(0, 254), 0)];
    for (i, h) in hosts.iter().enumerate() {
        members.push((h.clone(), addr(i as u8 + 1), subnet_of(i + 1)));
    }
    for (k, (ns, ip, s)) in members.iter().enumerate() {
        sh::ip(&["netns", "add", ns])?;
        sh::ip_in(ns, &["link", "set", "lo", "up"])?;
        // A veth pair made in the switch: one end on the bridge, the other
        // moved into the host and named eth0 there.
        let port = format!("p{k}");
        let far = format!("e{k}");
        sh::ip_in(
            &sw,
            &["link", "add", &port, "type", "veth", "peer", "name", &far],
        )?;
        sh::ip_in(&sw, &["link", "set", &port, "master", &format!("br{s}")])?;
        sh::ip_in(&sw, &["link", "set", &port, "up"])?;
        sh::ip_in(&sw, &["link", "set", &far, "netns", ns])?;
        sh::ip_in(ns, &["link", "set", &far, "name", "eth0"])?;
        sh::ip_in(ns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        sh::ip_in(ns, &["link", "set", "eth0", "up"])?;
        shape_dev(ns, "eth0", opts)?;
        // Shape the switch side too, so traffic towards the host is held
        // to the same rate as traffic from it.
        shape_dev(&sw, &port, opts)?;
        if subnets > 1 {
            let gateway = in_subnet(*s, ROUTER_HOST).to_string();
            sh::ip_in(ns, &["route", "add", "default", "via", &gateway])?;
        }
    }
    let router_ns = if subnets > 1 {
        Some(router(&sw, &p, subnets, |s| in_subnet(s, ROUTER_HOST))?)
    } else {
        None
    };

    let dir = dir(id);
    std::fs::create_dir_all(&dir).map_err(|source| LabError::Io {
        path: dir.clone(),
        source,
    })?;
    let key_file = dir.join("cluster.key");
    let key = ClusterKey::generate().map_err(|e| LabError::Invalid(e.to_string()))?;
    key.write(&key_file, true)
        .map_err(|e| LabError::Invalid(format!("cannot write {}: {e}", key_file.display())))?;

    let mut pids = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let pid = start_agent(opts, h, i + 1, addr(i as u8 + 1), &key_file, &dir)?;
        if let Some(q) = opts.cpu_quotas.iter().rev().find(|q| q.host == i + 1) {
            cpu::limit(id, i + 1, q.percent, pid)?;
        }
        pids.push(pid);
    }
    if opts.avahi {
        avahi::start(&master, &dir)?;
    }
    if let (true, Some(r)) = (opts.reflector, &router_ns) {
        avahi::start_reflector(r, &dir)?;
    }
    let mut booted = Vec::new();
    if opts.boards > 0 {
        boards::start_dhcp(&sw, id, &dir)?;
        for n in 1..=opts.boards {
            booted.push(boards::start(opts, &sw, n, &key_file, &dir)?);
        }
        boards::wait_ready(&booted, |b, after| {
            eprintln!("board {}: agent READY {after:.0?} after power-on", b.n);
        })?;
    }
    Ok(Lab {
        id,
        master_ns: master,
        host_ns: hosts,
        host_addrs: (1..=opts.hosts).map(|n| addr(n as u8)).collect(),
        router_ns,
        agent_pids: pids,
        key_file,
        dir,
        boards: booted,
    })
}

/// The router's host number in each subnet.
const ROUTER_HOST: u8 = 253;

/// The router of a lab of `subnets` subnets (bridges `br<s>` in the switch
/// namespace `sw`): a namespace with an interface `eth<s>` on each, at
/// `addr(s)`, forwarding IPv4 between them (and no multicast routing).
fn router(
    sw: &str,
    prefix: &str,
    subnets: usize,
    addr: impl Fn(usize) -> Ipv4Addr,
) -> Result<String, LabError> {
    let ns = format!("{prefix}router");
    sh::ip(&["netns", "add", &ns])?;
    sh::ip_in(&ns, &["link", "set", "lo", "up"])?;
    for s in 0..subnets {
        let (port, far, dev) = (format!("r{s}"), format!("q{s}"), format!("eth{s}"));
        sh::ip_in(
            sw,
            &["link", "add", &port, "type", "veth", "peer", "name", &far],
        )?;
        sh::ip_in(sw, &["link", "set", &port, "master", &format!("br{s}")])?;
        sh::ip_in(sw, &["link", "set", &port, "up"])?;
        sh::ip_in(sw, &["link", "set", &far, "netns", &ns])?;
        sh::ip_in(&ns, &["link", "set", &far, "name", &dev])?;
        sh::ip_in(
            &ns,
            &["addr", "add", &format!("{}/24", addr(s)), "dev", &dev],
        )?;
        sh::ip_in(&ns, &["link", "set", &dev, "up"])?;
    }
    sh::run(
        "ip",
        &[
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
        ],
    )?;
    Ok(ns)
}

/// tbf at the link rate (32 KiB of burst, 50 ms of queue), with netem
/// below it for delay and loss. tbf counts 1514 bytes for a full frame;
/// Ethernet also sends a preamble, a gap and a checksum (24 bytes), so the
/// rate is scaled by 1514/1538: TCP's goodput ceiling at 100 Mb/s is then
/// the real 94.15 Mb/s (1448 payload bytes of 1538 on the wire). (A tc
/// size table would count those bytes once per 64 KB segment-offload
/// packet on a veth, not once per frame.)
fn shape_dev(ns: &str, dev: &str, opts: &LabOptions) -> Result<(), LabError> {
    let mut netem: Vec<String> = Vec::new();
    if let Some(d) = opts.delay_ms.filter(|d| *d > 0.0) {
        netem.extend(["delay".to_owned(), format!("{d}ms")]);
    }
    if let Some(l) = opts.loss_pct.filter(|l| *l > 0.0) {
        netem.extend(["loss".to_owned(), format!("{l}%")]);
    }
    let netem: Vec<&str> = netem.iter().map(String::as_str).collect();
    let mut args: Vec<&str> = vec!["qdisc", "add", "dev", dev];
    match opts.link_mbps {
        Some(mbps) => {
            let rate = format!("{}kbit", (mbps * 1000.0 * 1514.0 / 1538.0).round() as u64);
            let tbf = [
                "root", "handle", "1:", "tbf", "rate", &rate, "burst", "32kb", "latency", "50ms",
            ];
            sh::tc_in(ns, &[&args[..], &tbf[..]].concat())?;
            if !netem.is_empty() {
                args.extend(["parent", "1:1", "handle", "10:", "netem"]);
                sh::tc_in(ns, &[&args[..], &netem[..]].concat())?;
            }
        }
        None if !netem.is_empty() => {
            args.extend(["root", "netem"]);
            sh::tc_in(ns, &[&args[..], &netem[..]].concat())?;
        }
        None => {}
    }
    Ok(())
}

fn start_agent(
    opts: &LabOptions,
    ns: &str,
    n: usize,
    ip: Ipv4Addr,
    key_file: &Path,
    dir: &Path,
) -> Result<u32, LabError> {
    use std::os::unix::process::CommandExt;
    let log = dir.join(format!("agent-h{n}.log"));
    let file = std::fs::File::create(&log).map_err(|source| LabError::Io {
        path: log.clone(),
        source,
    })?;
    let listen = format!("{ip}:{PORT}");
    let name = format!("lab{}-h{n}", opts.id);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(&opts.agent_binary)
        .args(["--listen", &listen, "--name", &name, "--id", &name])
        .arg("--key-file")
        .arg(key_file)
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        // Its own process group: the agent outlives `skelpi lab up`.
        .process_group(0);
    if let Some(w) = opts.workers {
        cmd.args(["--workers", &w.to_string()]);
    }
    if opts.allow_plaintext {
        cmd.arg("--allow-plaintext");
    }
    if let Some(public) = &opts.deploy_pubkey {
        cmd.arg("--deploy-pubkey")
            .arg(public)
            .arg("--state-dir")
            .arg(dir.join(format!("state-h{n}")));
    }
    let child = cmd.spawn().map_err(|e| LabError::Agent {
        host: n,
        why: e.to_string(),
        log: log.clone(),
    })?;
    let pid = child.id();
    // `ip netns exec` execs the agent, so this is the agent's pid. Wait for
    // its "listening on" line.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("listening on") {
            return Ok(pid);
        }
        let alive = running(pid);
        if !alive || Instant::now() > deadline {
            let why = if alive {
                "no \"listening on\" line within 15 s".to_owned()
            } else {
                "it exited".to_owned()
            };
            return Err(LabError::Agent { host: n, why, log });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` is running (not gone, not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z"))
}

/// Removes lab `id`: stops every process in its namespaces (SIGTERM, then
/// SIGKILL after 5 s), deletes the namespaces (and with them the bridge and
/// links) and its folder. Idempotent: a lab that is not there is fine.
pub fn down(id: u8) -> Result<usize, LabError> {
    require_root()?;
    let spaces = namespaces(id)?;
    let pids = |ns: &str| -> Vec<String> {
        sh::ip(&["netns", "pids", ns])
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    for ns in &spaces {
        for pid in pids(ns) {
            let _ = sh::run("kill", &["-TERM", &pid]);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while spaces.iter().any(|ns| !pids(ns).is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for ns in &spaces {
        for pid in pids(ns) {
            let _ = sh::run("kill", &["-KILL", &pid]);
        }
    }
    for ns in &spaces {
        sh::ip(&["netns", "del", ns])?;
    }
    cpu::remove(id);
    let _ = std::fs::remove_dir_all(dir(id));
    Ok(spaces.len())
}

/// Runs `command` in lab `id`'s master namespace with the lab's key as
/// `SKELPI_KEY_FILE`; returns its exit status.
pub fn exec(id: u8, command: &[String]) -> Result<std::process::ExitStatus, LabError> {
    require_root()?;
    let ns = master_ns(id);
    if !namespaces(id)?.contains(&ns) {
        return Err(LabError::Invalid(format!(
            "lab {id} is not up (skelpi lab up --id {id})"
        )));
    }
    let Some((program, args)) = command.split_first() else {
        return Err(LabError::Invalid(
            "no command given (skelpi lab exec -- COMMAND...)".into(),
        ));
    };
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns, program])
        .args(args)
        .env("SKELPI_KEY_FILE", dir(id).join("cluster.key"));
    if let Some(bus) = avahi::bus_address(&dir(id)) {
        cmd.env("DBUS_SYSTEM_BUS_ADDRESS", bus);
    }
    cmd.status().map_err(|e| LabError::Command {
        command: format!("ip netns exec {ns} {program}"),
        message: e.to_string(),
    })
}
