//! An independent DNS-SD client in the lab's master namespace: Debian's
//! avahi-daemon, on a D-Bus bus of its own (in the lab's directory), so
//! that `skelpi lab exec -- avahi-browse -rpt _skelpi._tcp` reads what the
//! agents announce as any DNS-SD browser would.
//!
//! The daemon runs in a mount namespace of its own with a private
//! `/run/avahi-daemon` (its pid file), so labs and a host's own daemon do
//! not see each other; it publishes nothing. Both processes live in the
//! master namespace: [`super::down`] stops them with the rest.
//!
//! [`start_reflector`] runs another avahi-daemon on a lab's router, with
//! `enable-reflector=yes` and no bus: it repeats mDNS between the subnets,
//! as a home or office router does.

use super::{LabError, running};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the bus and the daemon may take to start.
const START_LIMIT: Duration = Duration::from_secs(15);

/// The bus socket of the lab whose files are in `dir`.
pub fn bus_socket(dir: &Path) -> PathBuf {
    dir.join("dbus.socket")
}

/// `DBUS_SYSTEM_BUS_ADDRESS` for the bus of the lab whose files are in
/// `dir`, if it runs one.
pub fn bus_address(dir: &Path) -> Option<String> {
    let socket = bus_socket(dir);
    socket
        .exists()
        .then(|| format!("unix:path={}", socket.display()))
}

/// Starts the bus and avahi-daemon in namespace `ns`, their files and
/// logs in `dir`; returns once the daemon is up.
pub fn start(ns: &str, dir: &Path) -> Result<(), LabError> {
    let socket = bus_socket(dir);
    // One left by a lab that crashed would pass for the new bus.
    let _ = std::fs::remove_file(&socket);
    let bus_conf = dir.join("dbus.conf");
    write(&bus_conf, &bus_config(&socket))?;
    let avahi_conf = dir.join("avahi-daemon.conf");
    write(
        &avahi_conf,
        "[server]\nuse-ipv4=yes\nuse-ipv6=no\nallow-interfaces=eth0\nenable-dbus=yes\n\
         [publish]\ndisable-publishing=yes\n",
    )?;
    let what = "dbus-daemon (Debian package dbus-daemon)";
    let bus = spawn(
        Command::new("ip")
            .args(["netns", "exec", ns, "dbus-daemon", "--nofork"])
            .arg(format!("--config-file={}", bus_conf.display())),
        &dir.join("dbus.log"),
        what,
    )?;
    wait(bus, what, || socket.exists())?;
    daemon(
        ns,
        &avahi_conf,
        &dir.join("avahi-daemon.log"),
        Some(&socket),
    )
}

/// Starts avahi-daemon as a reflector in namespace `ns` (a lab's router),
/// its files in `dir`: every interface, no bus, nothing published.
pub fn start_reflector(ns: &str, dir: &Path) -> Result<(), LabError> {
    let conf = dir.join("avahi-reflector.conf");
    write(
        &conf,
        "[server]\nuse-ipv4=yes\nuse-ipv6=no\nenable-dbus=no\n\
         [publish]\ndisable-publishing=yes\n[reflector]\nenable-reflector=yes\n",
    )?;
    daemon(ns, &conf, &dir.join("avahi-reflector.log"), None)
}

/// Runs avahi-daemon with `conf` in namespace `ns` (on the bus at `bus`,
/// if any), its output in `log`; returns once it is up.
fn daemon(ns: &str, conf: &Path, log: &Path, bus: Option<&Path>) -> Result<(), LabError> {
    // A /run of its own: its pid file and socket, nothing on the host's.
    let daemon = "mount -t tmpfs skelpi-lab /run && mkdir /run/avahi-daemon && \
                  exec avahi-daemon --no-chroot --no-drop-root --no-rlimits -f \"$1\"";
    let what = "avahi-daemon (Debian package avahi-daemon)";
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns", "exec", ns, "unshare", "--mount", "sh", "-c", daemon, "sh",
    ])
    .arg(conf);
    if let Some(socket) = bus {
        cmd.env(
            "DBUS_SYSTEM_BUS_ADDRESS",
            format!("unix:path={}", socket.display()),
        );
    }
    let avahi = spawn(&mut cmd, log, what)?;
    wait(avahi, what, || {
        std::fs::read_to_string(log).is_ok_and(|l| l.contains("Server startup complete"))
    })
}

/// A system bus that lets root own and call anything: the lab's alone.
fn bus_config(socket: &Path) -> String {
    format!(
        "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n \
         \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n<busconfig>\n  \
         <type>system</type>\n  <listen>unix:path={}</listen>\n  <auth>EXTERNAL</auth>\n  \
         <policy context=\"default\">\n    <allow user=\"*\"/>\n    <allow own=\"*\"/>\n    \
         <allow send_destination=\"*\"/>\n    <allow receive_sender=\"*\"/>\n  </policy>\n\
         </busconfig>\n",
        socket.display()
    )
}

fn write(path: &Path, text: &str) -> Result<(), LabError> {
    std::fs::write(path, text).map_err(|source| LabError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Starts `cmd` in a process group of its own, its output in `log`.
fn spawn(cmd: &mut Command, log: &Path, what: &str) -> Result<(u32, PathBuf), LabError> {
    let file = std::fs::File::create(log).map_err(|source| LabError::Io {
        path: log.to_owned(),
        source,
    })?;
    let out = file.try_clone().map_err(|source| LabError::Io {
        path: log.to_owned(),
        source,
    })?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(file)
        .process_group(0)
        .spawn()
        .map_err(|e| LabError::Command {
            command: what.to_owned(),
            message: e.to_string(),
        })?;
    Ok((child.id(), log.to_owned()))
}

/// Waits until `up` says the process `(pid, log)` named `what` is up.
fn wait((pid, log): (u32, PathBuf), what: &str, up: impl Fn() -> bool) -> Result<(), LabError> {
    let deadline = Instant::now() + START_LIMIT;
    while !up() {
        let said = || std::fs::read_to_string(&log).unwrap_or_default();
        if !running(pid) {
            return Err(LabError::Command {
                command: what.to_owned(),
                message: format!("it exited: {}", said().trim()),
            });
        }
        if Instant::now() > deadline {
            return Err(LabError::Command {
                command: what.to_owned(),
                message: format!("not up within {START_LIMIT:?} (its log: {})", log.display()),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
