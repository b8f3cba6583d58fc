//! Booted boards in the lab: an image per board written by
//! [`crate::image::build`] over a virtual board base
//! (`scripts/board-base.sh`), booted under `qemu-system-x86_64` (an amd64
//! base) or `qemu-system-aarch64 -M virt` (an arm64 base, a 64-bit Pi's
//! architecture) with software emulation, joined to the lab's bridge
//! through a tap device, with a DHCP server (dnsmasq) on the bridge as a
//! home router would have.
//!
//! The taps, dnsmasq and the qemu processes live in the lab's switch
//! namespace, so [`super::down`] stops and removes them with the rest.

use super::{LabError, LabOptions, running, sh};
use crate::image::{self, FirstBoot, ImageOptions};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a board may take from power-on to its agent's READY (about
/// 100 s on 2 busy cores under software emulation).
pub const READY_LIMIT: Duration = Duration::from_secs(300);

/// Whether a console shows that systemd started the agent: for a
/// `Type=notify` unit, "Started" is printed once it said READY=1 (between
/// the words, colour codes; the unit's name may be cut short).
fn agent_ready(console: &str) -> bool {
    console
        .lines()
        .any(|l| l.contains("Started") && l.contains("skelpi-agent.servi"))
}

/// The last lines of a console, for an error.
fn console_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(12)..].join("\n")
}

/// The emulator that boots boards of one architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    /// The program.
    pub program: &'static str,
    /// Its arguments before the board's own (machine, CPU, memory).
    pub args: &'static [&'static str],
    /// The Debian package that has it.
    pub package: &'static str,
}

impl Machine {
    /// The machine that runs an agent built for `arch` (as
    /// [`crate::image::ImageReport::arch`] names it), if one does.
    pub fn for_agent(arch: &str) -> Option<Machine> {
        match arch {
            "x86-64" => Some(Machine {
                program: "qemu-system-x86_64",
                args: &["-accel", "tcg", "-m", "1024", "-smp", "2"],
                package: "qemu-system-x86",
            }),
            "aarch64" => Some(Machine {
                program: "qemu-system-aarch64",
                args: &[
                    "-M",
                    "virt",
                    "-cpu",
                    "cortex-a72",
                    "-accel",
                    "tcg,thread=multi",
                    "-m",
                    "1024",
                    "-smp",
                    "2",
                ],
                package: "qemu-system-arm",
            }),
            _ => None,
        }
    }

    /// `running qemu-system-… (Debian package …)`, for errors.
    fn running(&self) -> String {
        format!("running {} (Debian package {})", self.program, self.package)
    }
}

/// A booted board of a lab.
#[derive(Debug, Clone)]
pub struct Board {
    /// Its number, from 1.
    pub n: usize,
    /// What boots it.
    pub machine: Machine,
    /// Its disk image.
    pub image: PathBuf,
    /// Its serial console, as a file.
    pub console: PathBuf,
    /// Its network card's address (its DHCP lease is for it).
    pub mac: String,
    /// The process id of its qemu.
    pub pid: u32,
}

/// The files of a virtual board base: the disk and the kernel qemu boots.
fn base_file(base: &Path, name: &str) -> Result<PathBuf, LabError> {
    let path = base.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(LabError::Invalid(format!(
            "--board-base {}: no {name}; make a base with scripts/board-base.sh and pass the \
             directory it prints",
            base.display()
        )))
    }
}

/// Starts dnsmasq on the switch's bridge: addresses `.100`–`.199` for the
/// boards, the bridge itself `.253`. Its log and leases go to `dir`.
pub fn start_dhcp(sw: &str, id: u8, dir: &Path) -> Result<(), LabError> {
    let bridge = Ipv4Addr::new(10, 77, id, 253);
    sh::ip_in(sw, &["addr", "add", &format!("{bridge}/24"), "dev", "br0"])?;
    let range = format!(
        "{},{},255.255.255.0,1h",
        Ipv4Addr::new(10, 77, id, 100),
        Ipv4Addr::new(10, 77, id, 199)
    );
    let log = dir.join("dnsmasq.log");
    let file = std::fs::File::create(&log).map_err(|source| LabError::Io {
        path: log.clone(),
        source,
    })?;
    Command::new("ip")
        .args([
            "netns",
            "exec",
            sw,
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
        ])
        .args([
            "--port=0",
            "--interface=br0",
            "--bind-interfaces",
            "--log-dhcp",
        ])
        .arg(format!("--dhcp-range={range}"))
        .arg(format!(
            "--dhcp-leasefile={}",
            dir.join("dnsmasq.leases").display()
        ))
        .arg("--log-facility=-")
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(|source| LabError::Io {
            path: log.clone(),
            source,
        })?)
        .stderr(file)
        .process_group(0)
        .spawn()
        .map_err(|e| LabError::Command {
            command: "dnsmasq (Debian package dnsmasq-base)".into(),
            message: e.to_string(),
        })?;
    Ok(())
}

/// Writes board `n`'s image, makes its tap on the bridge and powers it on.
pub fn start(
    opts: &LabOptions,
    sw: &str,
    n: usize,
    key: &Path,
    dir: &Path,
) -> Result<Board, LabError> {
    let base = opts.board_base.as_deref().ok_or_else(|| {
        LabError::Invalid(
            "--boards needs --board-base (the directory scripts/board-base.sh prints)".into(),
        )
    })?;
    let (disk, kernel, initrd) = (
        base_file(base, "disk.img")?,
        base_file(base, "vmlinuz")?,
        base_file(base, "initrd.img")?,
    );
    let step = |what: &str, e: &dyn std::fmt::Display| LabError::Board {
        board: n,
        step: what.to_owned(),
        why: e.to_string(),
    };
    let image = dir.join(format!("board-{n}.img"));
    let written = image::build(
        &ImageOptions {
            base: disk,
            out: image.clone(),
            force: true,
            agent_binary: opts
                .board_agent
                .clone()
                .unwrap_or_else(|| opts.agent_binary.clone()),
            key_file: key.to_owned(),
            deploy_pubkey: None,
            flavor: None,
            first_boot: FirstBoot {
                hostname_prefix: Some(format!("lab{}b{n}", opts.id)),
                user: "pi".into(),
                ..FirstBoot::default()
            },
        },
        |_| {},
    )
    .map_err(|e| step("writing its image", &e))?;
    let cmdline = written.cmdline.trim().to_owned();
    let machine = Machine::for_agent(written.arch).ok_or_else(|| {
        step(
            "choosing its emulator",
            &format!("no virtual board runs an {} agent", written.arch),
        )
    })?;

    let tap = format!("tb{n}");
    sh::ip_in(sw, &["tuntap", "add", "dev", &tap, "mode", "tap"])?;
    sh::ip_in(sw, &["link", "set", &tap, "master", "br0"])?;
    sh::ip_in(sw, &["link", "set", &tap, "up"])?;

    let mac = format!("52:54:00:77:{:02x}:{:02x}", opts.id, n);
    let console = dir.join(format!("board-{n}.console"));
    let qemu_log = dir.join(format!("board-{n}.qemu.log"));
    let qemu_err = std::fs::File::create(&qemu_log).map_err(|source| LabError::Io {
        path: qemu_log.clone(),
        source,
    })?;
    let qemu = Command::new("ip")
        .args(["netns", "exec", sw, machine.program])
        .args(machine.args)
        .args(["-display", "none", "-no-reboot", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &cmdline])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", image.display()))
        .arg("-nic")
        .arg(format!(
            "tap,ifname={tap},script=no,downscript=no,model=virtio-net-pci,mac={mac}"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(qemu_err)
        .process_group(0)
        .spawn()
        .map_err(|e| step(&machine.running(), &e))?;
    Ok(Board {
        n,
        machine,
        image,
        console,
        mac,
        // `ip netns exec` execs qemu: this is qemu's pid.
        pid: qemu.id(),
    })
}

/// Waits until every board's agent is READY (its console says systemd
/// started it), at most [`READY_LIMIT`] from now; reports each as it is.
pub fn wait_ready(
    boards: &[Board],
    mut ready: impl FnMut(&Board, Duration),
) -> Result<(), LabError> {
    let started = Instant::now();
    let mut waiting: Vec<&Board> = boards.iter().collect();
    while !waiting.is_empty() {
        waiting.retain(|b| {
            let console = std::fs::read_to_string(&b.console).unwrap_or_default();
            if agent_ready(&console) {
                ready(b, started.elapsed());
                false
            } else {
                true
            }
        });
        if let Some(b) = waiting.iter().find(|b| !running(b.pid)) {
            return Err(LabError::Board {
                board: b.n,
                step: b.machine.running(),
                why: format!(
                    "it exited before the agent was READY: {}; the end of its console:\n{}",
                    console_tail(&b.console.with_extension("qemu.log")).trim(),
                    console_tail(&b.console)
                ),
            });
        }
        if let Some(b) = waiting.first()
            && started.elapsed() > READY_LIMIT
        {
            return Err(LabError::Board {
                board: b.n,
                step: "waiting for its agent's READY".into(),
                why: format!(
                    "not READY within {READY_LIMIT:?}; the end of its console:\n{}",
                    console_tail(&b.console)
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}
