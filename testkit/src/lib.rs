//! skelpi-testkit (tests and benchmarks only, never published):
//! supervising `skelpi-agent` processes — start one, wait until it
//! listens, read its log lines, stop it.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `skelpi-agent` process; killed on drop if still running.
#[derive(Debug)]
pub struct AgentProcess {
    /// The child process.
    pub child: Child,
    /// The address it reported listening on.
    pub addr: SocketAddr,
    /// The id it reported.
    pub id: String,
    /// Its log lines (stderr), as they come.
    pub lines: mpsc::Receiver<String>,
}

impl AgentProcess {
    /// Starts `binary` with `args` (stderr logging at info level) and waits
    /// up to `wait` for its "listening on" line.
    pub fn start(binary: &Path, args: &[&str], wait: Duration) -> std::io::Result<AgentProcess> {
        let mut child = Command::new(binary)
            .args(args)
            .env_remove("JOURNAL_STREAM")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let fail = |child: &mut Child, what: String| {
            let _ = child.kill();
            let _ = child.wait();
            Err(std::io::Error::other(what))
        };
        loop {
            let line = match rx.recv_timeout(wait) {
                Ok(line) => line,
                Err(_) => {
                    return fail(
                        &mut child,
                        format!("agent did not report listening within {wait:?}"),
                    );
                }
            };
            // "skelpi-agent ID (NAME) listening on ADDR, ..."
            if let Some((before, after)) = line.split_once(" listening on ") {
                let id = before
                    .split("skelpi-agent ")
                    .nth(1)
                    .and_then(|s| s.split(' ').next());
                let addr = after.split([',', ' ']).next().and_then(|a| a.parse().ok());
                if let (Some(id), Some(addr)) = (id, addr) {
                    return Ok(AgentProcess {
                        child,
                        addr,
                        id: id.to_owned(),
                        lines: rx,
                    });
                }
                return fail(&mut child, format!("cannot parse agent line {line:?}"));
            }
        }
    }

    /// Resident set size of the process in bytes, from `/proc`.
    pub fn rss(&self) -> std::io::Result<u64> {
        self.status_bytes("VmRSS:")
    }

    /// Peak resident set size of the process so far, in bytes.
    pub fn peak_rss(&self) -> std::io::Result<u64> {
        self.status_bytes("VmHWM:")
    }

    fn status_bytes(&self, field: &str) -> std::io::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .ok_or_else(|| std::io::Error::other(format!("no {field} in /proc status")))
    }

    /// Sends SIGTERM (through `kill(1)`) and waits for the exit status.
    pub fn terminate(mut self) -> std::io::Result<std::process::ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        self.child.wait()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `sig` (`-STOP`, `-CONT`, `-KILL`, ...) to process `pid` with
/// kill(1); panics if it cannot.
pub fn signal(sig: &str, pid: &str) {
    let ok = Command::new("kill")
        .args([sig, pid])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// Threads that spin on the CPU until dropped: a saturated machine for
/// tests and benchmarks that must show nothing breaks under load.
#[derive(Debug)]
pub struct Spinners {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Spinners {
    /// Starts `per_core` spinning threads per core of this machine.
    pub fn per_core(per_core: usize) -> Spinners {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..per_core * cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                })
            })
            .collect();
        Spinners { stop, threads }
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
