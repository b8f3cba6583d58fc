//! Running an agent binary's `--self-check`, bounded: what an agent does
//! before it switches to a deployed binary, and what `skelpi deploy` does
//! with a binary it can run here (the report's form is
//! `skelpi_proto::deploy`).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a self-check may take.
pub const SELF_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Output kept of each of its streams.
const KEPT: u64 = 64 << 10;

/// How long its output may take to end once it exited (a process it
/// left behind may hold the pipes).
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// Runs `path --self-check` (at most [`SELF_CHECK_TIMEOUT`]); the
/// `key=value` lines it printed after the banner. Its output is read as
/// it comes, so a chatty binary cannot block on a full pipe. The error
/// says why, in words that fit after "the binary ...".
pub fn run(path: &Path) -> Result<HashMap<String, String>, String> {
    let mut child = Command::new(path)
        .arg("--self-check")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("does not run here: {e}"))?;
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < SELF_CHECK_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "did not end its self-check within {SELF_CHECK_TIMEOUT:?}"
                ));
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("could not be waited for: {e}"));
            }
        }
    };
    let stdout = String::from_utf8_lossy(&collected(&stdout)).into_owned();
    let report = skelpi_proto::deploy::parse_self_check(&stdout).filter(|_| status.success());
    report.ok_or_else(|| {
        let stderr = collected(&stderr);
        let stderr = String::from_utf8_lossy(&stderr);
        let said = skelpi_proto::text::clip(stderr.trim(), 200).into_owned();
        format!(
            "failed its self-check ({status}){}",
            if said.is_empty() {
                ": is it a skelpi-agent?".to_owned()
            } else {
                format!(": {said}")
            }
        )
    })
}

/// What a [`drain`] kept, once its stream ended or after
/// [`OUTPUT_GRACE`] (nothing then).
fn collected(drained: &std::sync::mpsc::Receiver<Vec<u8>>) -> Vec<u8> {
    drained.recv_timeout(OUTPUT_GRACE).unwrap_or_default()
}

/// Reads a child's stream on a thread of its own, keeping its first
/// [`KEPT`] bytes, sent when the stream ends.
fn drain(pipe: Option<Box<dyn Read + Send>>) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(pipe) = pipe {
            let mut pipe = pipe;
            let _ = (&mut pipe).take(KEPT).read_to_end(&mut kept);
            // The rest is read and dropped, so the child never blocks.
            let _ = std::io::copy(&mut pipe, &mut std::io::sink());
        }
        let _ = tx.send(kept);
    });
    rx
}
