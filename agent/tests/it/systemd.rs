//! The systemd side of the agent: the shipped unit passes
//! `systemd-analyze verify` without a word and is hardened, and the agent
//! speaks the notify protocol (ready, watchdog, stopping) on a real
//! datagram socket, as systemd would receive it.

use super::support::{KillOnDrop, TempDir, key_file};
use skelpi_wire::key::ClusterKey;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const UNIT: &str = include_str!("../../../systemd/skelpi-agent.service");

/// The shipped unit with ExecStart pointing at the binary built here (the
/// only line changed), written as `dir/skelpi-agent.service`.
fn unit_here(dir: &Path) -> std::path::PathBuf {
    let binary = env!("CARGO_BIN_EXE_skelpi-agent");
    let text = UNIT.replace(
        "ExecStart=/usr/local/bin/skelpi-agent",
        &format!("ExecStart={binary}"),
    );
    assert_ne!(
        text, UNIT,
        "the unit's ExecStart line changed: update this test"
    );
    let path = dir.join("skelpi-agent.service");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_unit_verifies_without_output_and_is_hardened() {
    let dir = TempDir::new("unit");
    let unit = unit_here(&dir.0);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian package systemd) is installed by scripts/test.sh");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("skelpi-agent.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    eprintln!("systemd-analyze security exposure: {score}");
    assert!(score <= 2.0, "exposure {score}:\n{text}");
}

#[test]
fn the_agent_notifies_ready_pings_the_watchdog_and_says_stopping() {
    let dir = TempDir::new("notify");
    let key = key_file(&dir.0, "cluster.key", &ClusterKey::generate().unwrap());
    let socket_path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // As systemd does, WATCHDOG_PID names the agent's own pid: the shell
    // sets it to its pid, then becomes the agent with exec.
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"WATCHDOG_PID=$$ exec "$0" --listen 127.0.0.1:0 --no-mdns --key-file "$1""#)
        .arg(env!("CARGO_BIN_EXE_skelpi-agent"))
        .arg(&key)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut child = KillOnDrop(child);
    let next = || {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()
    };
    let first = next();
    assert!(
        first.contains("READY=1") && first.contains("STATUS=skelpi-agent"),
        "{first}"
    );
    // Pings every 100 ms (half of WATCHDOG_USEC): three in a row.
    for _ in 0..3 {
        assert_eq!(next(), "WATCHDOG=1");
    }
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let mut said = next();
    while said == "WATCHDOG=1" {
        said = next();
    }
    assert_eq!(said, "STOPPING=1");
    assert!(child.0.wait().unwrap().success());
}
