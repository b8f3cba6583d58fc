//! Virtual boards: an image `skelpi image` wrote over the board base
//! (`scripts/board-base.sh`: Debian's kernel, systemd, cloud-init, journald
//! and avahi, laid out as Raspberry Pi OS), booted under qemu with software
//! emulation (nested KVM hangs on these machines) — what a user does with
//! a Pi: flash, boot, run, read the journal. The master reaches the board
//! through a port qemu forwards on loopback (its user network restricted:
//! the board reaches nothing else); what the board wrote is read
//! back from its disk once it has powered down (mtools, debugfs,
//! `journalctl -D`).

use super::agents::agent_binary;
use super::deploy::{appended_build, exits_at_start, roll_one};
use super::lab::LabGuard;
use super::lab::in_lab;
use super::support::{Scratch, free_port, skelpi, sorted_lines};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a board may take from power on to its agent answering (about
/// 60 s under software emulation on 2 busy cores).
const BOOT_LIMIT: Duration = Duration::from_secs(240);
/// How long a clean power-down may take.
const POWER_DOWN_LIMIT: Duration = Duration::from_secs(120);
/// Where the boot partition starts on the base (scripts/board-base.sh).
const BOOT_PARTITION: &str = "@@4M";

/// The board base, built once per machine (cached by the script).
fn board_base() -> PathBuf {
    board_base_for("amd64")
}

/// The board base of architecture `arch` (Debian's name).
fn board_base_for(arch: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/board-base.sh");
    let out = Command::new(&script)
        .args(["--arch", arch])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Runs a tool; its stdout, or a failure naming it and what it said.
fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A board powered on: qemu with the image as its disk, its serial console
/// in a file, its agent's port forwarded to `port` on loopback. Killed on
/// drop if still running.
struct Board {
    qemu: Child,
    monitor: PathBuf,
    serial: PathBuf,
    port: u16,
    ssh_port: u16,
    powered_on: Instant,
}

impl Board {
    /// Boots `image` as a Pi's firmware would: the base's kernel with the
    /// image's cmdline.txt.
    fn boot(base: &Path, image: &Path, dir: &Path, run: usize) -> Board {
        let cmdline = tool(
            "mtype",
            &[
                "-i",
                &format!("{}{BOOT_PARTITION}", image.display()),
                "::cmdline.txt",
            ],
        );
        let (monitor, serial) = (
            dir.join(format!("monitor-{run}.sock")),
            dir.join(format!("serial-{run}.log")),
        );
        let (port, ssh_port) = (free_port(), free_port());
        let qemu = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-m", "1024", "-smp", "2"])
            .args(["-display", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-monitor")
            .arg(format!("unix:{},server,nowait", monitor.display()))
            .arg("-kernel")
            .arg(base.join("vmlinuz"))
            .arg("-initrd")
            .arg(base.join("initrd.img"))
            .args(["-append", cmdline.trim()])
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", image.display()))
            .arg("-nic")
            .arg(format!(
                "user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:7871,\
                 hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 (Debian package qemu-system-x86)");
        Board {
            qemu,
            monitor,
            serial,
            port,
            ssh_port,
            powered_on: Instant::now(),
        }
    }

    fn agents(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs `skelpi run ARGS` on the board's agent; fails the test if the
    /// job fails.
    fn run(&self, key: &str, args: &[&str]) {
        let agents = self.agents();
        let mut all = vec!["run", "--agents", &agents, "--key-file", key];
        all.extend_from_slice(args);
        let (code, _, stderr) = skelpi(&all);
        assert_eq!(code, Some(0), "{stderr}");
    }

    /// The agent's resident set on the board, KiB (`VmRSS`, read as root:
    /// the unit hides its process from other users).
    fn agent_rss_kib(&self, identity: &Path) -> u64 {
        let line = self.ssh(
            identity,
            "sudo grep VmRSS /proc/$(systemctl show -p MainPID --value skelpi-agent)/status",
        );
        line.split_whitespace()
            .nth(1)
            .and_then(|kib| kib.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {line:?}"))
    }

    /// Runs a command on the board as the image's login user (`pi`, with
    /// the test's SSH key); its stdout.
    fn ssh(&self, identity: &Path, command: &str) -> String {
        let port = self.ssh_port.to_string();
        tool(
            "ssh",
            &[
                "-i",
                identity.to_str().unwrap(),
                "-p",
                &port,
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=20",
                "-o",
                "LogLevel=ERROR",
                "pi@127.0.0.1",
                command,
            ],
        )
    }

    /// Whether the agent answers a ping now.
    fn answers(&self, key: &str) -> bool {
        skelpi(&["ping", "--agents", &self.agents(), "--key-file", key]).0 == Some(0)
    }

    /// Polls (every 100 ms) until the agent answers again, at most
    /// `limit`; how long it took.
    fn serving_again(&self, key: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.answers(key) {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the agent did not serve again within {limit:?}:\n{}",
            tail(&self.console())
        );
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Waits until the board's agent answers a ping (polled once a second:
    /// a booting machine sends no event); the time since power-on and the
    /// agent's name.
    fn wait_serving(&mut self, key: &str) -> (Duration, String) {
        while self.powered_on.elapsed() < BOOT_LIMIT {
            if let Some(status) = self.qemu.try_wait().unwrap() {
                panic!(
                    "qemu exited ({status}) before the agent served:\n{}",
                    tail(&self.console())
                );
            }
            let (code, stdout, _) =
                skelpi(&["ping", "--agents", &self.agents(), "--key-file", key]);
            if code == Some(0) {
                let name = stdout
                    .lines()
                    .nth(1)
                    .and_then(|l| l.split_whitespace().next())
                    .unwrap_or_default()
                    .to_owned();
                return (self.powered_on.elapsed(), name);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        panic!(
            "the board's agent did not answer within {BOOT_LIMIT:?}; its console:\n{}",
            tail(&self.console())
        );
    }

    /// Presses the power button (ACPI) and waits for systemd to stop
    /// everything and power off, so the disk holds what the board wrote.
    fn power_down(mut self) {
        let mut monitor = UnixStream::connect(&self.monitor).unwrap();
        monitor.write_all(b"system_powerdown\n").unwrap();
        let started = Instant::now();
        while started.elapsed() < POWER_DOWN_LIMIT {
            if self.qemu.try_wait().unwrap().is_some() {
                let mut rest = Vec::new();
                let _ = monitor.read_to_end(&mut rest);
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "the board did not power down within {POWER_DOWN_LIMIT:?}:\n{}",
            tail(&self.console())
        );
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// The last lines of a console log, for failures.
fn tail(log: &str) -> String {
    let lines: Vec<_> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The root partition of `image`, for debugfs (`FILE?offset=N`).
fn root_fs(image: &Path) -> String {
    let table = tool("sfdisk", &["--dump", image.to_str().unwrap()]);
    let start: u64 = table
        .lines()
        .filter(|l| l.contains("type=83"))
        .find_map(|l| {
            l.split("start=")
                .nth(1)?
                .split(',')
                .next()?
                .trim()
                .parse()
                .ok()
        })
        .expect("a Linux root partition");
    format!("{}?offset={}", image.display(), start * 512)
}

/// The skelpi-agent unit's journal entries on the powered-down board.
fn agent_journal(image: &Path, dir: &Path) -> Vec<serde_json::Value> {
    journal(image, dir, &["-u", "skelpi-agent"])
}

/// The journal entries on the powered-down board that `filters`
/// (journalctl's) select.
fn journal(image: &Path, dir: &Path, filters: &[&str]) -> Vec<serde_json::Value> {
    let out = dir.join("journal");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let rdump = format!("rdump /var/log/journal {}", out.display());
    tool("debugfs", &["-R", &rdump, &root_fs(image)]);
    let files = out.join("journal");
    let mut args = vec!["-D", files.to_str().unwrap(), "-o", "json", "--no-pager"];
    args.extend_from_slice(filters);
    tool("journalctl", &args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The agent the flashed board gets: this workspace's debug build, or the
/// build `SKELPI_BOARD_AGENT` names, relative to the workspace (to
/// measure the stripped board build: `cargo build --profile board -p
/// skelpi-agent`, then `SKELPI_BOARD_AGENT=target/board/skelpi-agent`).
fn flashed_agent() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::var_os("SKELPI_BOARD_AGENT").map_or_else(agent_binary, |p| workspace.join(p))
}

/// Writes a board image over the base with a new key (its path returned)
/// and [`flashed_agent`], with `extra` options of `skelpi image`; what
/// `skelpi image` printed.
fn write_image(base: &Path, dir: &Scratch, image: &Path, extra: &[&str]) -> (String, String) {
    let key = dir.path("cluster.key");
    assert_eq!(skelpi(&["keygen", "--out", &key]).0, Some(0));
    let agent = flashed_agent();
    let disk = base.join("disk.img");
    let mut args = vec![
        "image",
        "--base",
        disk.to_str().unwrap(),
        "--out",
        image.to_str().unwrap(),
        "--agent-binary",
        agent.to_str().unwrap(),
        "--key-file",
        &key,
    ];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = skelpi(&args);
    assert_eq!(code, Some(0), "{stderr}");
    (key, stdout)
}

/// A job file of this test: a farm over seeded random arrays.
fn farm_job(dir: &Path) -> String {
    let path = dir.join("farm.toml");
    std::fs::write(
        &path,
        "skeleton = \"farm(seq(erf_burn(5)), 4)\"\n[input]\ngenerate = \"random\"\n\
         items = 64\nlength = 256\nseed = 7\n",
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
#[ignore = "needs root: scripts/board-base.sh builds the board base with mmdebstrap"]
fn a_flashed_board_boots_installs_the_agent_serves_logs_and_comes_back_after_a_reboot() {
    let dir = Scratch::new("board");
    let base = board_base();
    let image = dir.0.join("board.img");
    let identity = dir.0.join("id_ed25519");
    tool(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            identity.to_str().unwrap(),
        ],
    );
    let public = dir.path("id_ed25519.pub");
    let deploy_key = dir.path("deploy.key");
    assert_eq!(
        skelpi(&["keygen", "--deploy", "--out", &deploy_key]).0,
        Some(0)
    );
    let (key, stdout) = write_image(
        &base,
        &dir,
        &image,
        &[
            "--hostname-prefix",
            "vpi",
            "--ssh-key",
            &public,
            "--deploy-pubkey",
            &format!("{deploy_key}.pub"),
        ],
    );
    assert!(stdout.contains("agent: x86-64"), "{stdout}");

    // First boot: cloud-init installs the agent, systemd starts it.
    let mut board = Board::boot(&base, &image, &dir.0, 1);
    let (ready, name) = board.wait_serving(&key);
    eprintln!("board: power-on to serving in {ready:.1?} (first boot)");
    assert!(
        name.starts_with("vpi-") && name.len() == 10,
        "host name {name:?}"
    );
    let console = board.console();
    assert!(
        console.contains("skelpi-install: host name vpi-"),
        "{}",
        tail(&console)
    );
    assert!(console.contains("skelpi-install: skelpi-agent installed and enabled"));

    // A job on the board gives what in-process agents give.
    let job = farm_job(&dir.0);
    let (on_board, on_local) = (dir.path("board.jsonl"), dir.path("local.jsonl"));
    board.run(&key, &[&job, "--out", &on_board]);
    let (code, _, stderr) = skelpi(&["run", "--local", "2", &job, "--out", &on_local]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(sorted_lines(&on_board).len(), 64);
    assert_eq!(sorted_lines(&on_board), sorted_lines(&on_local));

    // Memory: the agent's resident set idle, and after 10,000 tasks.
    let idle = board.agent_rss_kib(&identity);
    let many = dir.path("many.toml");
    std::fs::write(
        &many,
        "skeleton = \"farm(seq(identity))\"\n[input]\ngenerate = \"range\"\n\
         items = 10000\nlength = 4\n",
    )
    .unwrap();
    board.run(&key, &[&many]);
    let after = board.agent_rss_kib(&identity);
    eprintln!(
        "board: agent RSS {idle} KiB idle, {after} KiB after 10,000 tasks ({})",
        flashed_agent().display()
    );
    assert!(
        after <= idle + 16 * 1024,
        "the agent grew from {idle} to {after} KiB over 10,000 tasks"
    );

    // kill -9: systemd starts the agent again (Restart=always, 2 s later).
    // Five times: the median of 5 (systemd's start limit, 5 starts in
    // 10 s, is not reached: each round takes over 2 s).
    let mut restarts: Vec<Duration> = (0..5)
        .map(|_| {
            board.ssh(&identity, "sudo pkill -KILL -x skelpi-agent");
            board.serving_again(&key, Duration::from_secs(60))
        })
        .collect();
    restarts.sort();
    eprintln!("board: kill -9 to serving again: {restarts:.1?}");
    assert!(
        restarts[2] <= Duration::from_secs(5),
        "median {:?}",
        restarts[2]
    );
    // Stopped (SIGSTOP): it sends no watchdog pings, so systemd kills it
    // after WatchdogSec (20 s) and starts it again.
    board.ssh(&identity, "sudo pkill -STOP -x skelpi-agent");
    let back = board.serving_again(&key, Duration::from_secs(90));
    eprintln!("board: SIGSTOP to serving again: {back:.1?}");
    assert!(
        back >= Duration::from_secs(15),
        "served while stopped? {back:?}"
    );

    // Its health, read by the sandboxed agent from the board's /proc and
    // /sys (a PC's DMI name under qemu; no Pi firmware flags).
    let (code, out, err) = skelpi(&[
        "health",
        "--agents",
        &board.agents(),
        "--key-file",
        &key,
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let health: serde_json::Value = serde_json::from_str(&out).unwrap();
    let health = &health[0];
    assert!(
        health["model"].as_str().is_some_and(|m| !m.is_empty()),
        "{health}"
    );
    assert!(health["uptime_s"].as_u64().is_some(), "{health}");
    assert!(health["throttled"].is_null(), "{health}");
    eprintln!("board: health {health}");

    // An upgrade under real systemd: a new build rolled in...
    let new_build = dir.0.join("skelpi-agent-2");
    appended_build(&agent_binary(), &new_build, "2");
    let (code, out, err) = skelpi(&[
        "deploy",
        "--agents",
        &board.agents(),
        "--key-file",
        &key,
        "--deploy-key",
        &deploy_key,
        "--binary",
        new_build.to_str().unwrap(),
        "--ready-timeout",
        "120s",
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("upgraded to"), "{out}");
    eprintln!("board: {}", out.lines().last().unwrap_or_default());
    let new_sha = skelpi::deploy::Binary::read(&new_build).unwrap().sha256;
    // ... then a build that exits at start: systemd starts the unit again
    // (Restart=always) and its launcher rolls back to the new build.
    let bad = exits_at_start(dir.0.join("bad-build"));
    let cluster_key = skelpi_wire::key::ClusterKey::load(Path::new(&key)).unwrap();
    let signer = skelpi_wire::deploy_key::DeployKey::load(Path::new(&deploy_key)).unwrap();
    let addr = board.agents().parse().unwrap();
    let (outcome, back) = roll_one(addr, &cluster_key, &signer, &bad, Duration::from_secs(120));
    eprintln!("board: a build that exits at start rolled back, serving again in {back:.1?}");
    let skelpi::deploy::Outcome::Failed(why) = outcome else {
        panic!("{outcome:?}");
    };
    assert!(why.contains(&format!("to binary {new_sha}")), "{why}");
    board.power_down();

    // What the first boot left: the key moved off the FAT partition to
    // /etc/skelpi (0600), the agent's records with its id and the job's.
    let boot_files = tool(
        "mdir",
        &[
            "-b",
            "-i",
            &format!("{}{BOOT_PARTITION}", image.display()),
            "::",
        ],
    );
    assert!(!boot_files.contains("skelpi-cluster.key"), "{boot_files}");
    let key_stat = tool(
        "debugfs",
        &["-R", "stat /etc/skelpi/cluster.key", &root_fs(&image)],
    );
    assert!(key_stat.contains("Mode:  0600"), "{key_stat}");
    let journal = agent_journal(&image, &dir.0);
    let field =
        |e: &serde_json::Value, f: &str| e.get(f).and_then(|v| v.as_str()).map(str::to_owned);
    let id = journal
        .iter()
        .find_map(|e| field(e, "SKELPI_AGENT_ID"))
        .expect("SKELPI_AGENT_ID in the journal");
    let job_entry = journal
        .iter()
        .find(|e| field(e, "SKELPI_JOB").is_some())
        .expect("a SKELPI_JOB record");
    let job_id = field(job_entry, "SKELPI_JOB").unwrap();
    assert!(field(job_entry, "MESSAGE").unwrap().contains(&job_id));
    let messages: Vec<String> = journal.iter().filter_map(|e| field(e, "MESSAGE")).collect();
    assert!(
        messages.iter().any(|m| m.contains("Watchdog timeout")),
        "the watchdog killed the stopped agent: {messages:#?}"
    );
    // The journal shows each switch: to the new build, and back to it.
    for said in [
        format!("the deployed binary {new_sha} is ready"),
        format!("rolled back from binary {}", bad.sha256),
    ] {
        assert!(
            messages.iter().any(|m| m.contains(&said)),
            "{said:?} not in the journal: {messages:#?}"
        );
    }

    // A reboot brings the same agent back, without installing again.
    let mut board = Board::boot(&base, &image, &dir.0, 2);
    let (ready, again) = board.wait_serving(&key);
    eprintln!("board: power-on to serving in {ready:.1?} (reboot)");
    assert_eq!(again, name);
    // On the deployed build still.
    let conn = smol::block_on(skelpi::client::AgentConn::connect(
        board.agents().parse().unwrap(),
        &cluster_key,
        &Default::default(),
    ))
    .unwrap();
    assert_eq!(
        conn.info().build.clone().unwrap().deployed.as_deref(),
        Some(new_sha.as_str())
    );
    smol::block_on(conn.close());
    assert!(
        !board.console().contains("skelpi-install:"),
        "installed again"
    );
    board.power_down();
    let boots: std::collections::HashSet<_> = agent_journal(&image, &dir.0)
        .iter()
        .filter(|e| field(e, "SKELPI_AGENT_ID").as_deref() == Some(id.as_str()))
        .filter_map(|e| field(e, "_BOOT_ID"))
        .collect();
    assert_eq!(boots.len(), 2, "agent {id} in both boots' journals");
}

/// Runs `skeleton` over 200 random items on lab `id`'s agents and on two
/// in-process agents: the same results.
fn same_in_lab_as_in_process(id: &str, dir: &Scratch, name: &str, skeleton: &str) {
    let job = dir.0.join(format!("{name}.toml"));
    std::fs::write(
        &job,
        format!(
            "skeleton = \"{skeleton}\"\n[input]\ngenerate = \"random\"\nitems = 200\n\
             length = 64\nseed = 3\n"
        ),
    )
    .unwrap();
    let job = job.to_str().unwrap();
    let (on_lab, on_local) = (
        dir.path(&format!("{name}-lab")),
        dir.path(&format!("{name}-local")),
    );
    let (code, _, err) = in_lab(id, &["run", "--interface", "eth0", job, "--out", &on_lab]);
    assert_eq!(code, Some(0), "{name}: {err}");
    let (code, _, err) = skelpi(&["run", "--local", "2", job, "--out", &on_local]);
    assert_eq!(code, Some(0), "{name}: {err}");
    assert_eq!(sorted_lines(&on_lab).len(), 200, "{name}");
    assert_eq!(sorted_lines(&on_lab), sorted_lines(&on_local), "{name}");
}

/// Lab `id` with one process host (this workspace's agent) and one board
/// booted over `base`, with `extra` options of `lab up`; down when the
/// guard drops. Prints the lab's report (power-on to READY).
fn lab_with_a_board(id: &str, base: &Path, extra: &[&str]) -> LabGuard {
    let _ = skelpi(&["lab", "down", "--id", id]);
    let guard = LabGuard(id.to_owned());
    let agent = agent_binary();
    let up = [
        "lab",
        "up",
        "--id",
        id,
        "--hosts",
        "1",
        "--boards",
        "1",
        "--board-base",
        base.to_str().unwrap(),
        "--agent-binary",
        agent.to_str().unwrap(),
    ];
    let (code, out, err) = skelpi(&[&up[..], extra].concat());
    assert_eq!(code, Some(0), "{out}{err}");
    eprintln!("{}", err.trim());
    assert!(out.contains("board 1: READY"), "{out}");
    guard
}

#[test]
#[ignore = "needs root: network namespaces, taps, binfmt_misc and the arm64 board base (mmdebstrap)"]
fn an_arm64_lab_board_boots_the_aarch64_agent_and_runs_a_farm_with_a_process_host() {
    let base = board_base_for("arm64");
    let dir = Scratch::new("lab-arm64");
    // An id of its own (the other lab tests take 100-249).
    let id = (50 + std::process::id() % 50).to_string();
    let arm = crate::cross::arm_agent();
    let guard = lab_with_a_board(&id, &base, &["--board-agent", arm.to_str().unwrap()]);

    // The board's aarch64 agent announces itself over mDNS.
    let (code, out, err) = in_lab(&id, &["discover", "--interface", "eth0"]);
    assert_eq!(code, Some(0), "{err}");
    let board = out
        .lines()
        .find(|l| l.contains(&format!("lab{id}b1-")))
        .unwrap_or_else(|| panic!("the board's agent: {out}"));
    assert!(board.contains("aarch64"), "{board}");

    // A farm over the board and the process host computes what
    // in-process agents compute.
    // (the pipeline places a stage on each agent: the board runs one.)
    same_in_lab_as_in_process(&id, &dir, "farm", "farm(seq(erf_burn(5)), 4)");
    same_in_lab_as_in_process(&id, &dir, "pipe", "pipe(seq(square), seq(erf_burn(5)))");
    drop(guard);
    let qemus = tool("ps", &["-eo", "stat=,args="]);
    assert!(
        !qemus.lines().any(|l| !l.starts_with('Z')
            && l.contains("qemu-system-aarch64")
            && l.contains(&format!("skelpi-lab-{id}/"))),
        "the board still runs: {qemus}"
    );
}

#[test]
#[ignore = "needs root: network namespaces, taps, and the board base (mmdebstrap)"]
fn a_lab_board_is_discovered_by_mdns_and_streams_a_pipeline_with_a_process_host() {
    let base = board_base();
    let dir = Scratch::new("lab-board");
    // An id of its own (the lab test takes 200-249).
    let id = (150 + std::process::id() % 50).to_string();
    let guard = lab_with_a_board(&id, &base, &["--avahi"]);

    // The board announces itself over mDNS on the lab's bridge.
    let (code, out, err) = in_lab(&id, &["discover", "--interface", "eth0"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("lab{id}-h1")), "{out}");
    let board_name = format!("lab{id}b1-");
    assert!(out.contains(&board_name), "the board's agent: {out}");
    assert_eq!(
        out.lines().filter(|l| l.contains(":7871")).count(),
        2,
        "{out}"
    );
    // An independent DNS-SD browser (avahi, in the master's namespace)
    // resolves the board's agent too, at the address `discover` found
    // (`discover`'s columns: id, name, address, ...), with its TXT record.
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.contains(&board_name))
        .unwrap()
        .split_whitespace()
        .collect();
    let (ip, port) = row[2].rsplit_once(':').unwrap();
    let line = crate::lab::avahi_resolves(&id, row[1]);
    assert!(line.contains(&format!(";{ip};{port};")), "{line}");
    assert!(line.contains("\"arch=x86_64\""), "{line}");

    // A streamed pipeline (stage 0 on one agent, stage 1 on the other,
    // items agent to agent over the bridge) and a farm, as in-process
    // agents compute them.
    for (name, skeleton) in [
        ("pipe", "pipe(seq(square), seq(erf_burn(5)))"),
        ("farm", "farm(seq(erf_burn(5)), 4)"),
    ] {
        same_in_lab_as_in_process(&id, &dir, name, skeleton);
    }

    // Down: no board, tap or namespace is left.
    drop(guard);
    let netns = tool("ip", &["netns", "list"]);
    assert!(!netns.contains(&format!("skl{id}-")), "{netns}");
    let qemus = tool("ps", &["-eo", "stat=,args="]);
    assert!(
        !qemus.lines().any(|l| !l.starts_with('Z')
            && l.contains("qemu-system")
            && l.contains(&format!("skelpi-lab-{id}/"))),
        "a board still runs: {qemus}"
    );
}

#[test]
#[ignore = "needs root: scripts/board-base.sh builds the board base with mmdebstrap"]
fn a_board_with_a_malformed_first_boot_seed_still_boots_and_says_why() {
    let dir = Scratch::new("board-bad-seed");
    let base = board_base();
    let image = dir.0.join("board.img");
    write_image(&base, &dir, &image, &[]);
    // The user's edit gone wrong: user-data that is not YAML.
    let bad = dir.0.join("user-data");
    std::fs::write(&bad, "#cloud-config\nruncmd: [sh, -c, 'unclosed\n  - {\n").unwrap();
    let fat = format!("{}{BOOT_PARTITION}", image.display());
    tool(
        "mcopy",
        &["-o", "-i", &fat, bad.to_str().unwrap(), "::user-data"],
    );

    let board = Board::boot(&base, &image, &dir.0, 1);
    // It boots to its login prompt (the agent is not installed: nothing
    // ran the install script).
    let started = Instant::now();
    while !board.console().contains("login:") {
        assert!(
            started.elapsed() < BOOT_LIMIT,
            "no login prompt within {BOOT_LIMIT:?}:\n{}",
            tail(&board.console())
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    board.power_down();
    let said: Vec<String> = journal(&image, &dir.0, &["-t", "cloud-init"])
        .iter()
        .filter_map(|e| e.get("MESSAGE").and_then(|m| m.as_str()).map(str::to_owned))
        .collect();
    assert!(
        said.iter().any(|m| m.to_lowercase().contains("yaml")),
        "cloud-init's records name the bad YAML: {said:#?}"
    );
}
