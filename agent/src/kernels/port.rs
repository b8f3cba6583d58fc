//! Ports: external programs as kernels (`port:<name>`), for code that is
//! not Rust — the seed's "ports for dusty deck code", framed like Erlang's
//! `{packet,4}`.
//!
//! The agent runs only programs found in its ports directory
//! (`skelpi-agent --ports DIR`): each executable file `NAME` there is the
//! kernel `port:NAME`. A program is started when a job first needs it and
//! reused for that job's later calls (one process per call running at
//! once, so at most one per worker thread); it is killed when its job ends
//! (the master starts another job, or goes away), or when a call fails.
//!
//! # The protocol
//! Every message is a frame: a 4-byte big-endian length, then that many
//! bytes. For each call the agent writes one frame and the program answers
//! with one:
//! - request: the number of arguments as a 4-byte little-endian integer,
//!   the arguments, then the input's elements, all as 8-byte little-endian
//!   floats (row-major for a matrix);
//! - reply: the output's elements as 8-byte little-endian floats (the
//!   output has the input's shape when it has as many elements, else it is
//!   a list), or `error: <message>` in UTF-8 for a failure of its own.
//!
//! A program that exits, answers something else, or does not answer within
//! the timeout fails the task (it is killed); the agent keeps serving.

use super::{Array, Kernel, KernelError};
use skelpi_proto::frame::HARD_MAX_FRAME;
use skelpi_proto::{JobId, Shape};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

/// How long a program may take to answer a call, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Jobs remembered as ended (a process of one still running is killed
/// when its call returns).
const ENDED_REMEMBERED: usize = 64;

/// The kernels `port:NAME` for the executable files `NAME` of `dir`,
/// sorted by name.
pub fn scan(dir: &Path, timeout: Duration) -> std::io::Result<Vec<(String, Port)>> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = std::fs::metadata(entry.path())?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            found.push((format!("port:{name}"), Port::new(entry.path(), timeout)));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// One program as a kernel: its processes, by job.
#[derive(Debug)]
pub struct Port {
    program: PathBuf,
    timeout: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Processes between calls.
    idle: Vec<Running>,
    /// Jobs that ended: their processes are killed, not kept.
    ended: VecDeque<JobId>,
}

/// A running program: requests go to a writer thread (a program that does
/// not read cannot block the caller past the timeout: the pipe fills, the
/// writer waits, the call times out and kills the program), replies come
/// from a reader thread that parses its output.
#[derive(Debug)]
struct Running {
    job: JobId,
    child: Child,
    requests: mpsc::Sender<Vec<u8>>,
    replies: mpsc::Receiver<Result<Vec<u8>, String>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Port {
    /// The program at `program`, each call answered within `timeout`.
    pub fn new(program: PathBuf, timeout: Duration) -> Port {
        Port {
            program,
            timeout,
            state: Mutex::default(),
        }
    }

    fn name(&self) -> String {
        let name = self.program.file_name().unwrap_or_default();
        format!("port:{}", name.to_string_lossy())
    }

    fn start(&self, job: JobId) -> Result<Running, KernelError> {
        let mut child = Command::new(&self.program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                KernelError(format!(
                    "{}: cannot start {}: {e}",
                    self.name(),
                    self.program.display()
                ))
            })?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        let (requests, to_write) = mpsc::channel::<Vec<u8>>();
        let writer = std::thread::Builder::new()
            .name("port-writer".into())
            .spawn(move || write_frames(stdin, to_write));
        if let Err(e) = writer {
            let _ = child.kill();
            let _ = child.wait();
            return Err(KernelError(format!(
                "{}: cannot start a writer: {e}",
                self.name()
            )));
        }
        let (tx, replies) = mpsc::channel();
        std::thread::Builder::new()
            .name("port-reader".into())
            .spawn(move || {
                loop {
                    let reply = read_frame(&mut stdout);
                    let end = reply.is_err();
                    if tx.send(reply).is_err() || end {
                        return;
                    }
                }
            })
            .map_err(|e| {
                let _ = child.kill();
                let _ = child.wait();
                KernelError(format!("{}: cannot start a reader: {e}", self.name()))
            })?;
        Ok(Running {
            job,
            child,
            requests,
            replies,
        })
    }

    /// Kills a failed process and says how it ended.
    fn fail(&self, mut p: Running, what: String) -> KernelError {
        let _ = p.child.kill();
        let status = p.child.wait().map_or(String::new(), |s| format!(" ({s})"));
        KernelError(format!("{}: {what}{status}", self.name()))
    }

    fn exchange(&self, p: &mut Running, args: &[f64], input: &Array) -> Result<Vec<u8>, String> {
        let mut request = Vec::with_capacity(4 + 8 * (args.len() + input.data.len()));
        request.extend_from_slice(&(args.len() as u32).to_le_bytes());
        for v in args.iter().chain(&input.data) {
            request.extend_from_slice(&v.to_le_bytes());
        }
        if u32::try_from(request.len()).is_err() {
            return Err(format!("a request of {} bytes is too large", request.len()));
        }
        p.requests
            .send(request)
            .map_err(|_| "the program does not read its input (it closed it)".to_string())?;
        match p.replies.recv_timeout(self.timeout) {
            Ok(reply) => reply,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(format!("no answer within {:?}: killed", self.timeout))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err("the program is gone".into()),
        }
    }
}

/// Writes each request as a `{packet,4}` frame until the caller or the
/// program goes.
fn write_frames(mut stdin: ChildStdin, requests: mpsc::Receiver<Vec<u8>>) {
    for request in requests {
        let len = (request.len() as u32).to_be_bytes();
        let sent = stdin
            .write_all(&len)
            .and_then(|()| stdin.write_all(&request))
            .and_then(|()| stdin.flush());
        if sent.is_err() {
            return;
        }
    }
}

/// One `{packet,4}` frame from `r`; `Err` says why there is none.
fn read_frame(r: &mut impl Read) -> Result<Vec<u8>, String> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(|_| "the program exited (or closed its output)".to_string())?;
    let len = u32::from_be_bytes(len) as usize;
    if len > HARD_MAX_FRAME as usize {
        return Err(format!(
            "the program wrote a frame of {len} bytes (at most {HARD_MAX_FRAME})"
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .map_err(|_| format!("the program exited in the middle of a {len}-byte frame"))?;
    Ok(body)
}

/// The output of a reply to a call on `input`.
fn output(reply: &[u8], input: &Shape) -> Result<Array, String> {
    if reply.len() % 8 != 0 {
        return Err(match std::str::from_utf8(reply) {
            Ok(text) if text.starts_with("error:") => text.to_owned(),
            _ => format!(
                "the program answered {} bytes, not a whole number of 8-byte floats",
                reply.len()
            ),
        });
    }
    let data: Vec<f64> = reply
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    Ok(match input.elements() {
        Some(n) if n == data.len() as u64 => Array {
            shape: *input,
            data,
        },
        _ => Array::list(data),
    })
}

impl Kernel for Port {
    fn call(&self, args: &[f64], input: Array) -> Result<Array, KernelError> {
        self.call_for(JobId(0), args, input)
    }

    fn call_for(&self, job: JobId, args: &[f64], input: Array) -> Result<Array, KernelError> {
        let idle = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let at = state.idle.iter().position(|p| p.job == job);
            at.map(|at| state.idle.swap_remove(at))
        };
        let mut p = match idle {
            Some(p) => p,
            None => self.start(job)?,
        };
        let reply = match self.exchange(&mut p, args, &input) {
            Ok(reply) => reply,
            Err(what) => return Err(self.fail(p, what)),
        };
        match output(&reply, &input.shape) {
            Ok(out) => {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if !state.ended.contains(&job) {
                    state.idle.push(p);
                }
                Ok(out)
            }
            // The program's own error: it is still sane, keep it.
            Err(what) if what.starts_with("error:") => {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if !state.ended.contains(&job) {
                    state.idle.push(p);
                }
                Err(KernelError(format!("{}: {what}", self.name())))
            }
            Err(what) => Err(self.fail(p, what)),
        }
    }

    fn end_job(&self, job: JobId) {
        let ended: Vec<Running> = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.ended.len() == ENDED_REMEMBERED {
                state.ended.pop_front();
            }
            state.ended.push_back(job);
            let (ended, keep) = std::mem::take(&mut state.idle)
                .into_iter()
                .partition(|p| p.job == job);
            state.idle = keep;
            ended
        };
        // Dropping kills them (outside the lock).
        drop(ended);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_become_arrays_errors_or_garbage() {
        let m = Shape::Matrix { rows: 1, cols: 2 };
        let two: Vec<u8> = [1.5f64, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(output(&two, &m).unwrap().shape, m, "same count: same shape");
        assert_eq!(output(&two[..8], &m).unwrap(), Array::list(vec![1.5]));
        assert_eq!(output(b"error: no way", &m).unwrap_err(), "error: no way");
        assert!(output(b"garbage", &m).unwrap_err().contains("7 bytes"));
    }

    #[test]
    fn frames_are_length_prefixed_and_bounded() {
        let mut ok: &[u8] = &[0, 0, 0, 2, 7, 8];
        assert_eq!(read_frame(&mut ok).unwrap(), [7, 8]);
        let mut cut: &[u8] = &[0, 0, 0, 9, 1];
        assert!(
            read_frame(&mut cut)
                .unwrap_err()
                .contains("middle of a 9-byte")
        );
        let mut huge: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(read_frame(&mut huge).unwrap_err().contains("at most"));
    }
}
