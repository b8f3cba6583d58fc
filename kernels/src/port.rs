//! Ports: external programs as kernels (`port:<name>`), for code that is
//! not Rust — the seed's "ports for dusty deck code", framed like Erlang's
//! `{packet,4}`.
//!
//! The agent runs only programs of its ports directory (`skelpi-agent
//! --ports DIR`): each executable regular file `NAME` there (not a link,
//! not writable by group or others) is the kernel `port:NAME`. A program
//! is started when a job first needs it, in a process group of its own,
//! with `SKELPI_PORT` set to its path, and reused for that job's later
//! calls (one process per call running at once, so at most one per worker
//! thread); its group is killed when its job ends (the master starts
//! another job, a stage ends, or the master goes away), or when a call
//! fails.
//!
//! # The protocol
//! Every message is a frame: a 4-byte big-endian length, then that many
//! bytes. For each call the agent writes one frame and the program answers
//! with exactly one:
//! - request: three 4-byte little-endian integers — the argument count,
//!   the rows and the columns of the input (rows 0 for a list of `columns`
//!   elements) — then the arguments and the input's elements as 8-byte
//!   little-endian floats (row-major);
//! - reply: a 4-byte little-endian status, then for status 0 the output's
//!   elements as 8-byte little-endian floats (the output has the input's
//!   shape when it has as many elements, else it is a list), for status 1
//!   an error message in UTF-8 (the task fails with it; the program is
//!   kept).
//!
//! A program that exits, answers anything else (or without being asked),
//! or does not answer within the timeout fails the task and is killed; the
//! agent keeps serving.

use super::{Array, Kernel, KernelError};
use skelpi_proto::frame::HARD_MAX_FRAME;
use skelpi_proto::{JobId, Shape};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

/// How long a program may take to answer a call, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The kernels `port:NAME` for the programs of `dir`, sorted by name.
/// Entries that cannot be offered (links, files writable by group or
/// others or owned by another user, names a job cannot spell) are skipped
/// with a warning. A directory that others could change (see
/// [`check_dir`]) is refused.
pub fn scan(dir: &Path, timeout: Duration) -> std::io::Result<Vec<(String, Port)>> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    check_dir(dir)?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            log::warn!("ports: skipping {}: not a UTF-8 name", path.display());
            continue;
        };
        // Not followed: a link could lead out of the directory.
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) => {
                log::warn!("ports: skipping {}: {e}", path.display());
                continue;
            }
        };
        let mode = meta.permissions().mode();
        if meta.file_type().is_file() && mode & 0o111 == 0 {
            // Not executable: a data file, left alone.
            continue;
        }
        let skip = if !meta.file_type().is_file() {
            Some("not a regular file (links are not followed)")
        } else if mode & 0o022 != 0 {
            Some("writable by group or others")
        } else if !trusted_owner(meta.uid()) {
            Some("owned by another user than root or this agent's")
        } else if name.contains(|c: char| c.is_whitespace() || "(),".contains(c)) {
            Some("its name has spaces, parentheses or commas, which a job cannot name")
        } else {
            None
        };
        match skip {
            Some(why) => log::warn!("ports: skipping {}: {why}", path.display()),
            None => found.push((format!("port:{name}"), Port::new(path, timeout))),
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// Whether a file or directory owned by `uid` may hold programs this
/// agent runs: root's, or the agent's own user's.
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

/// Refuses a ports directory whose programs someone other than root or
/// this agent's user could replace: the directory or any of its parents
/// owned by another user, or writable by group or others (a parent that
/// is sticky and root's, like `/tmp`, is fine: others cannot replace what
/// is not theirs in it).
pub fn check_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = dir.canonicalize().map_err(|e| {
        std::io::Error::new(e.kind(), format!("ports directory {}: {e}", dir.display()))
    })?;
    let mut at = Some(dir.as_path());
    while let Some(d) = at {
        let meta = std::fs::metadata(d)?;
        let (mode, uid) = (meta.mode() & 0o7777, meta.uid());
        let sticky_root = mode & 0o1000 != 0 && uid == 0 && d != dir;
        let problem = if !trusted_owner(uid) {
            Some(format!(
                "is owned by uid {uid}, not by root or this agent's user"
            ))
        } else if mode & 0o022 != 0 && !sticky_root {
            Some(format!(
                "is writable by group or others (mode {mode:04o}): run `chmod go-w {}`",
                d.display()
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(std::io::Error::other(format!(
                "ports directory {}: {} {problem}, so others could change its programs",
                dir.display(),
                d.display()
            )));
        }
        at = d.parent();
    }
    Ok(())
}

/// Opens the program at `path` to run it, and checks the file opened
/// (not whatever the path names by then): not a link, a regular file,
/// executable, not writable by group or others, root's or this agent's
/// user's. The descriptor stays open across `exec` (a script's
/// interpreter reads it by its `/proc/self/fd` name).
fn open_program(path: &Path) -> Result<std::os::fd::OwnedFd, String> {
    use rustix::fs::{FileType, Mode, OFlags};
    let fd =
        rustix::fs::open(path, OFlags::RDONLY | OFlags::NOFOLLOW, Mode::empty()).map_err(|e| {
            match e {
                rustix::io::Errno::LOOP => "it is a symbolic link now".to_owned(),
                e => format!("cannot open it: {e}"),
            }
        })?;
    let st = rustix::fs::fstat(&fd).map_err(|e| format!("cannot stat it: {e}"))?;
    let mode = st.st_mode & 0o7777;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        Err("it is not a regular file now".to_owned())
    } else if mode & 0o022 != 0 {
        Err(format!(
            "it is writable by group or others now (mode {mode:04o})"
        ))
    } else if mode & 0o111 == 0 {
        Err("it is not executable now".to_owned())
    } else if !trusted_owner(st.st_uid) {
        Err(format!("it is owned by uid {} now", st.st_uid))
    } else {
        Ok(fd)
    }
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
    /// Calls running now, by job.
    busy: HashMap<JobId, usize>,
    /// Jobs that ended while calls of theirs ran: those calls' processes
    /// are killed when they return.
    ended: Vec<JobId>,
}

/// A running program: requests go to a writer thread (a program that does
/// not read cannot block the caller past the timeout: the pipe fills, the
/// writer waits, the call times out and kills the program), replies come
/// from a reader thread that parses its output, one frame at a time.
#[derive(Debug)]
struct Running {
    job: JobId,
    child: Child,
    requests: mpsc::Sender<Vec<u8>>,
    replies: mpsc::Receiver<Result<Vec<u8>, String>>,
}

impl Running {
    /// Kills the program's process group (a wrapper script's children
    /// too) and reaps it; says how it ended.
    fn kill(&mut self) -> String {
        let group = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = self.child.kill();
        self.child
            .wait()
            .map_or(String::new(), |s| format!(" ({s})"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
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

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start(&self, job: JobId) -> Result<Running, KernelError> {
        use std::os::fd::AsRawFd;
        // What runs is the file checked, through its descriptor: the path
        // is not looked up again (a program swapped for a link or another
        // file after the check is not run).
        let program = open_program(&self.program).map_err(|why| {
            KernelError(format!(
                "{}: refusing to run {}: {why}",
                self.name(),
                self.program.display()
            ))
        })?;
        let mut child = Command::new(format!("/proc/self/fd/{}", program.as_raw_fd()))
            .arg0(&self.program)
            .env("SKELPI_PORT", &self.program)
            .process_group(0)
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
        // One reply waits at most: a program writing unasked cannot fill
        // the agent's memory.
        let (tx, replies) = mpsc::sync_channel(1);
        let mut running = Running {
            job,
            child,
            requests,
            replies,
        };
        let threads = std::thread::Builder::new()
            .name("port-writer".into())
            .spawn(move || write_frames(stdin, to_write))
            .and_then(|_| {
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
            });
        if let Err(e) = threads {
            running.kill();
            return Err(KernelError(format!(
                "{}: cannot start its I/O threads: {e}",
                self.name()
            )));
        }
        Ok(running)
    }

    fn exchange(&self, p: &mut Running, args: &[f64], input: &Array) -> Result<Vec<u8>, String> {
        if let Ok(unasked) = p.replies.try_recv() {
            return Err(match unasked {
                Ok(_) => "the program wrote a frame without being asked".into(),
                Err(e) => e,
            });
        }
        let (rows, cols) = match input.shape {
            Shape::List(n) => (0, n),
            Shape::Matrix { rows, cols } => (rows, cols),
        };
        let dims = [args.len() as u64, rows, cols]
            .map(|d| u32::try_from(d).map_err(|_| format!("a dimension of {d} is too large")));
        let mut request = Vec::with_capacity(16 + 8 * (args.len() + input.data.len()));
        request.extend_from_slice(&[0; 4]);
        for d in dims {
            request.extend_from_slice(&d?.to_le_bytes());
        }
        for v in args.iter().chain(&input.data) {
            request.extend_from_slice(&v.to_le_bytes());
        }
        let len = u32::try_from(request.len() - 4)
            .map_err(|_| format!("a request of {} bytes is too large", request.len()))?;
        request[..4].copy_from_slice(&len.to_be_bytes());
        p.requests
            .send(request)
            .map_err(|_| "the program exited (its input is closed)".to_string())?;
        match p.replies.recv_timeout(self.timeout) {
            Ok(reply) => reply,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(format!("no answer within {:?}: killed", self.timeout))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err("the program is gone".into()),
        }
    }

    /// Takes an idle process of `job` that still runs, or starts one.
    fn take(&self, job: JobId) -> Result<Running, KernelError> {
        let idle = {
            let mut state = self.state();
            *state.busy.entry(job).or_default() += 1;
            let at = state.idle.iter().position(|p| p.job == job);
            at.map(|at| state.idle.swap_remove(at))
        };
        if let Some(mut p) = idle {
            // One that exited between calls is replaced.
            if matches!(p.child.try_wait(), Ok(None)) {
                return Ok(p);
            }
        }
        self.start(job).inspect_err(|_| self.done(job, None))
    }

    /// A call of `job` is over; `keep`: its process, still sane.
    fn done(&self, job: JobId, keep: Option<Running>) {
        let dead = {
            let mut state = self.state();
            let left = state.busy.get_mut(&job).map_or(0, |n| {
                *n -= 1;
                *n
            });
            let ended = state.ended.contains(&job);
            if left == 0 {
                state.busy.remove(&job);
                state.ended.retain(|&j| j != job);
            }
            match keep {
                Some(p) if !ended => {
                    state.idle.push(p);
                    None
                }
                other => other,
            }
        };
        // A process of an ended job is killed outside the lock.
        drop(dead);
    }
}

/// Writes each request (a whole frame) until the caller or the program
/// goes.
fn write_frames(mut stdin: ChildStdin, requests: mpsc::Receiver<Vec<u8>>) {
    for frame in requests {
        if stdin
            .write_all(&frame)
            .and_then(|()| stdin.flush())
            .is_err()
        {
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

/// What a reply says: the output of a call on `input`, or the program's
/// own error (`Ok(Err)`); `Err`: the reply is garbage.
fn output(reply: &[u8], input: &Shape) -> Result<Result<Array, String>, String> {
    let (status, body) = match reply {
        [a, b, c, d, body @ ..] => (u32::from_le_bytes([*a, *b, *c, *d]), body),
        _ => {
            return Err(format!(
                "the program answered {} bytes, no status",
                reply.len()
            ));
        }
    };
    match status {
        0 if body.len() % 8 == 0 => {
            let data: Vec<f64> = body
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect();
            Ok(Ok(match input.elements() {
                Some(n) if n == data.len() as u64 => Array {
                    shape: *input,
                    data,
                },
                _ => Array::list(data),
            }))
        }
        0 => Err(format!(
            "the program answered {} bytes after its status, not a whole number of \
             8-byte floats",
            body.len()
        )),
        1 => Ok(Err(String::from_utf8_lossy(body).into_owned())),
        other => Err(format!(
            "the program answered status {other} (0 or 1 expected)"
        )),
    }
}

impl Kernel for Port {
    fn call(&self, args: &[f64], input: Array) -> Result<Array, KernelError> {
        self.call_for(JobId(0), args, input)
    }

    fn call_for(&self, job: JobId, args: &[f64], input: Array) -> Result<Array, KernelError> {
        let mut p = self.take(job)?;
        let failed = |p: &mut Running, what: String| {
            let how = p.kill();
            KernelError(format!("{}: {what}{how}", self.name()))
        };
        let reply = match self.exchange(&mut p, args, &input) {
            Ok(reply) => reply,
            Err(what) => {
                let e = failed(&mut p, what);
                self.done(job, None);
                return Err(e);
            }
        };
        match output(&reply, &input.shape) {
            Ok(result) => {
                self.done(job, Some(p));
                result.map_err(|e| KernelError(format!("{}: {e}", self.name())))
            }
            Err(what) => {
                let e = failed(&mut p, what);
                self.done(job, None);
                Err(e)
            }
        }
    }

    fn end_job(&self, job: JobId) {
        let ended: Vec<Running> = {
            let mut state = self.state();
            if state.busy.contains_key(&job) && !state.ended.contains(&job) {
                state.ended.push(job);
            }
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

    fn reply(status: u32, body: &[u8]) -> Vec<u8> {
        [&status.to_le_bytes()[..], body].concat()
    }

    #[test]
    fn replies_become_arrays_errors_or_garbage() {
        let m = Shape::Matrix { rows: 1, cols: 2 };
        let two: Vec<u8> = [1.5f64, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let ok = |r: &[u8]| output(r, &m).unwrap().unwrap();
        assert_eq!(ok(&reply(0, &two)).shape, m, "same count: same shape");
        assert_eq!(ok(&reply(0, &two[..8])), Array::list(vec![1.5]));
        // An error message of 16 bytes is not two floats.
        let e = output(&reply(1, b"error: bad input"), &m).unwrap();
        assert_eq!(e.unwrap_err(), "error: bad input");
        assert!(
            output(&reply(0, b"garbage"), &m)
                .unwrap_err()
                .contains("7 bytes")
        );
        assert!(output(&reply(7, b""), &m).unwrap_err().contains("status 7"));
        assert!(output(b"ab", &m).unwrap_err().contains("no status"));
    }

    #[test]
    fn only_executable_regular_files_no_one_else_can_write_are_offered() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("skelpi-port-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let put = |name: &str, mode: u32| {
            let path = dir.join(name);
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        put("ok.sh", 0o755);
        put("data.txt", 0o644);
        put("shared.sh", 0o775);
        put("two words.sh", 0o755);
        std::os::unix::fs::symlink("/bin/sh", dir.join("sh")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.join("dangling")).unwrap();
        let names: Vec<String> = scan(&dir, DEFAULT_TIMEOUT)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["port:ok.sh"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A fresh directory under the temporary one, mode 0755.
    fn scratch(name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("skelpi-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[test]
    fn a_ports_directory_others_could_change_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let top = scratch("port-dirs");
        let ports = top.join("ports");
        std::fs::create_dir(&ports).unwrap();
        mode(&ports, 0o755);
        assert!(
            scan(&ports, DEFAULT_TIMEOUT).is_ok(),
            "/tmp is sticky and root's"
        );
        mode(&ports, 0o777);
        let e = scan(&ports, DEFAULT_TIMEOUT).unwrap_err().to_string();
        assert!(e.contains("writable by group or others (mode 0777)"), "{e}");
        // Sticky is no excuse for the directory itself.
        mode(&ports, 0o1777);
        assert!(scan(&ports, DEFAULT_TIMEOUT).is_err());
        mode(&ports, 0o755);
        mode(&top, 0o775);
        let e = scan(&ports, DEFAULT_TIMEOUT).unwrap_err().to_string();
        assert!(e.contains(&format!("{} is writable", top.display())), "{e}");
        mode(&top, 0o755);
        let _ = std::fs::remove_dir_all(&top);
    }

    #[test]
    fn a_program_swapped_after_the_scan_is_not_run() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("port-swap");
        let marker = dir.join("ran");
        let evil = dir.join("evil");
        let script = format!("#!/bin/sh\ntouch {}\n", marker.display());
        std::fs::write(&evil, script).unwrap();
        std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o755)).unwrap();
        let ports = dir.join("ports");
        std::fs::create_dir(&ports).unwrap();
        let ok = ports.join("ok.sh");
        std::fs::write(&ok, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o755)).unwrap();
        let found = scan(&ports, DEFAULT_TIMEOUT).unwrap();
        let port = &found[0].1;
        // Swapped for a link to another program...
        std::fs::remove_file(&ok).unwrap();
        std::os::unix::fs::symlink(&evil, &ok).unwrap();
        let e = port.call(&[], Array::list(vec![1.0])).unwrap_err().0;
        assert!(
            e.contains("refusing to run") && e.contains("symbolic link now"),
            "{e}"
        );
        // ...or for a file others may write.
        std::fs::remove_file(&ok).unwrap();
        std::fs::write(&ok, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = port.call(&[], Array::list(vec![1.0])).unwrap_err().0;
        assert!(e.contains("writable by group or others now"), "{e}");
        assert!(!marker.exists(), "the swapped-in program never ran");
        let _ = std::fs::remove_dir_all(&dir);
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
