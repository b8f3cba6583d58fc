//! A running job seen from outside its process (`skelpi top`'s jobs
//! panel): a [`Watch`] the job keeps up to date, a [`Publisher`] that
//! writes it as a small JSON file every period in a per-user directory
//! ([`jobs_dir`]), and [`running`], which reads those files back.
//!
//! The job pays for this with a few counters it keeps anyway (each stage's
//! [`Totals`]) copied into the watch four times a second (a streamed
//! pipeline's stages, asked of their agents, once a second); the file is
//! written by a thread of the publisher's own, so a slow disk never holds
//! the job up. A job's file is removed when its publisher is dropped; a
//! file whose process is gone (killed) is removed by the next reader.
//!
//! The directory is private: every folder from `/tmp/skelpi-UID` down
//! must be this user's, no symbolic link, closed to others, or nothing is
//! written or read there; files are written new (never through a link)
//! and renamed into place, and only small regular files are read.

use crate::runtime::autonomic::metrics::{AgentTotals, Totals};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often a job's counters are copied into its watch.
pub const UPDATE_EVERY: Duration = Duration::from_millis(250);

/// How often a publisher writes its job's file.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// What a running job is doing: the file's contents (fields missing from
/// a file of another version of skelpi read as their defaults).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobStatus {
    /// The process running it.
    pub pid: u32,
    /// When that process started (`/proc/PID/stat`'s start time, in clock
    /// ticks since boot): a file whose PID now names another process is
    /// stale.
    pub pid_start: u64,
    /// What its user ran (a job file's name, a benchmark).
    pub name: String,
    /// Its tree.
    pub skeleton: String,
    /// How it runs: `routed`, `streamed`, `managed`.
    pub execution: String,
    /// When it started, ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// When this was written.
    pub updated_unix_ms: u64,
    /// When `stages` were last copied from the job (their figures' time).
    pub stages_unix_ms: u64,
    /// Inputs it has, when known.
    pub inputs: Option<u64>,
    /// Results handed on so far.
    pub results: u64,
    /// The agents it runs on.
    pub agents: Vec<String>,
    /// Agents lost during the job, in the order they were lost (one may be
    /// named twice if it was lost twice).
    pub lost: Vec<String>,
    /// Tasks handed to an agent again: theirs was lost, or had lost their
    /// module (routed and managed jobs).
    pub resent: u64,
    /// Copies sent of tasks overdue on their agent, or ending sooner on
    /// an idle one at the tail (the first result counts).
    pub copies: u64,
    /// Its stages (a routed job: one per kernel it calls, and whether it
    /// runs as a placed `seq` stage or on any agent).
    pub stages: Vec<StageStatus>,
}

impl JobStatus {
    /// Replaces its stages, stamped now.
    pub fn set_stages(&mut self, stages: Vec<StageStatus>) {
        self.stages = stages;
        self.stages_unix_ms = unix_ms();
    }
}

/// One stage's running totals (see [`Totals`]), in seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StageStatus {
    /// Its kernel, and where it runs when that is one agent.
    pub name: String,
    /// Worker slots it may use.
    pub degree: usize,
    /// Items handed to it.
    pub arrived: u64,
    /// Items sent to an agent.
    pub started: u64,
    /// Items finished.
    pub served: u64,
    /// Kernel run time reported by the agents, summed, seconds.
    pub busy_s: f64,
    /// Tasks with a reported run time.
    pub busy_n: u64,
    /// Time from each call to its result (waiting for a free worker
    /// included), summed, seconds.
    pub response_s: f64,
}

impl StageStatus {
    /// A stage `name` of `degree` slots with these totals.
    pub fn new(name: String, degree: usize, t: &Totals) -> StageStatus {
        StageStatus {
            name,
            degree,
            arrived: t.arrived,
            started: t.started,
            served: t.served,
            busy_s: t.busy.as_secs_f64(),
            busy_n: t.busy_n,
            response_s: t.response.as_secs_f64(),
        }
    }

    /// Its totals back, for [`crate::runtime::autonomic::metrics::window`].
    pub fn totals(&self) -> Totals {
        let secs = |s: f64| Duration::try_from_secs_f64(s).unwrap_or_default();
        Totals {
            arrived: self.arrived,
            started: self.started,
            served: self.served,
            response: secs(self.response_s),
            busy: secs(self.busy_s),
            busy_n: self.busy_n,
            agents: Vec::<AgentTotals>::new(),
        }
    }
}

/// A running job's status, shared between the job (which updates it) and
/// a [`Publisher`]; cheap to clone. Two watches are equal when they are
/// clones of one.
#[derive(Debug, Clone, Default)]
pub struct Watch(Arc<Shared>);

impl PartialEq for Watch {
    fn eq(&self, other: &Watch) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Watch {}

#[derive(Debug, Default)]
struct Shared {
    status: Mutex<JobStatus>,
    /// Counted apart from `status`: bumped for every result.
    results: AtomicU64,
}

impl Watch {
    /// A watch of job `name` running `skeleton` in this process, started
    /// now.
    pub fn new(name: &str, skeleton: &str) -> Watch {
        let pid = std::process::id();
        let status = JobStatus {
            pid,
            pid_start: process_start(pid).unwrap_or(0),
            name: name.to_owned(),
            skeleton: skeleton.to_owned(),
            started_unix_ms: unix_ms(),
            ..JobStatus::default()
        };
        Watch(Arc::new(Shared {
            status: Mutex::new(status),
            results: AtomicU64::new(0),
        }))
    }

    /// Changes the status (a poisoned lock is taken over: a status is
    /// never left half-written by a panic that matters).
    pub fn update(&self, f: impl FnOnce(&mut JobStatus)) {
        let mut status = self.0.status.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut status);
    }

    /// One more result handed on.
    pub fn result(&self) {
        self.0.results.fetch_add(1, Ordering::Relaxed);
    }

    /// The status now.
    pub fn snapshot(&self) -> JobStatus {
        let mut status = self
            .0
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        status.results = self.0.results.load(Ordering::Relaxed);
        status.updated_unix_ms = unix_ms();
        status
    }
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The start time of process `pid` (`/proc/PID/stat`, field 22), if it
/// runs.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's name, which may hold anything but ends at the
    // last ')': the state is field 3, the start time field 22.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// This process's user id (the owner of `/proc/self`).
fn my_uid() -> io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/self")?.uid())
}

/// Where this user's running jobs publish their status (the folders it
/// creates are private: see [`Publisher::start`]): `$SKELPI_JOBS_DIR`,
/// else `$XDG_RUNTIME_DIR/skelpi/jobs`, else `/tmp/skelpi-UID/jobs`.
pub fn jobs_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SKELPI_JOBS_DIR") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return Path::new(&dir).join("skelpi/jobs");
    }
    shared_tmp_dir()
}

/// The folder used when there is no runtime folder: `/tmp/skelpi-UID/jobs`.
fn shared_tmp_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/skelpi-{}/jobs", my_uid().unwrap_or(0)))
}

/// The folders that must be private for `dir`: it, and in `/tmp`, where
/// anyone could have made `skelpi-UID` first, its parent too.
fn own_levels(dir: &Path) -> Vec<&Path> {
    match dir.parent() {
        Some(parent) if dir == shared_tmp_dir() => vec![parent, dir],
        _ => vec![dir],
    }
}

/// Whether `dir` is a private folder of this user: no symbolic link, owned
/// by this user, closed to group and others.
fn is_private(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(dir)?;
    let why = if !m.is_dir() {
        "is not a folder (or is a symbolic link)".to_owned()
    } else if m.uid() != my_uid()? {
        format!("belongs to user {}", m.uid())
    } else if m.mode() & 0o077 != 0 {
        format!("is open to others (mode {:o})", m.mode() & 0o777)
    } else {
        return Ok(());
    };
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{} {why}: not used for job status files", dir.display()),
    ))
}

/// Creates `dir` private to this user (and its parent in `/tmp`), or
/// checks that it is.
fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(above) = own_levels(dir)[0].parent() {
        std::fs::create_dir_all(above)?;
    }
    for level in own_levels(dir) {
        match std::fs::DirBuilder::new().mode(0o700).create(level) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        is_private(level)?;
    }
    Ok(())
}

/// Writes a [`Watch`] to its file every [`PUBLISH_EVERY`] on a thread of
/// its own; the file goes when this is dropped.
#[derive(Debug)]
pub struct Publisher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl Publisher {
    /// Publishes `watch` in `dir` (created if need be) as
    /// `PID-N.json`, N counting this process's jobs.
    pub fn start(watch: Watch, dir: &Path) -> io::Result<Publisher> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        private_dir(dir)?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{}-{n}.json", std::process::id()));
        write_status(&path, &watch.snapshot())?;
        let (stop, stopped) = mpsc::channel();
        let file = path.clone();
        let thread = std::thread::Builder::new()
            .name("skelpi-watch".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(PUBLISH_EVERY)
                {
                    if let Err(e) = write_status(&file, &watch.snapshot()) {
                        log::debug!("cannot publish the job's status in {}: {e}", file.display());
                    }
                }
            })?;
        Ok(Publisher {
            stop: Some(stop),
            thread: Some(thread),
            path,
        })
    }

    /// The file it writes.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes `status` to `path` whole: a reader sees the old file or the new.
/// The temporary file is created new (an existing file or link there is
/// removed, never written through).
fn write_status(path: &Path, status: &JobStatus) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    file.write_all(&serde_json::to_vec(status)?)?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// The largest status file read (a job of a hundred stages is under 20 KB).
const MAX_STATUS_BYTES: u64 = 1 << 20;

/// Whether a status file's process still runs (the same process: its PID
/// not reused since).
fn still_running(status: &JobStatus) -> bool {
    match process_start(status.pid) {
        Some(start) => status.pid_start == 0 || start == status.pid_start,
        None => false,
    }
}

/// The PID a file's name starts with (`PID-N.json`, `PID-N.json.tmp`).
fn pid_of(name: &str) -> Option<u32> {
    name.split('-').next()?.parse().ok()
}

/// The jobs running now whose status is in `dir`, oldest first (none if
/// `dir` is not a private folder of this user); files left by processes
/// that are gone are removed, files that are not small regular files or
/// do not parse are skipped.
pub fn running(dir: &Path) -> Vec<JobStatus> {
    if own_levels(dir).into_iter().any(|d| is_private(d).is_err()) {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut jobs = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json.tmp") {
            // Left by a process killed while it wrote.
            if pid_of(&name).is_some_and(|pid| process_start(pid).is_none()) {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        if !name.ends_with(".json") {
            continue;
        }
        let small_file = entry
            .metadata()
            .is_ok_and(|m| m.is_file() && m.len() <= MAX_STATUS_BYTES);
        if !small_file {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let Ok(status) = serde_json::from_slice::<JobStatus>(&bytes) else {
            continue;
        };
        if still_running(&status) {
            jobs.push(status);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
    jobs.sort_by_key(|j| (j.started_unix_ms, j.pid));
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("skelpi-watch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_published_job_is_read_back_and_gone_when_its_publisher_is() {
        let dir = scratch("published");
        let watch = Watch::new("job.toml", "farm(seq(square))");
        let publisher = Publisher::start(watch.clone(), &dir).unwrap();
        watch.result();
        watch.update(|s| s.resent = 2);
        // The first file is written at start: the job's name is there at once.
        let first = running(&dir);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].name, "job.toml");
        // Later counts come with the next write.
        let mut seen = None;
        for _ in 0..40 {
            std::thread::sleep(PUBLISH_EVERY / 4);
            seen = running(&dir).pop().filter(|s| s.results == 1);
            if seen.is_some() {
                break;
            }
        }
        let seen = seen.expect("the publisher wrote the new counts");
        assert_eq!((seen.resent, seen.pid), (2, std::process::id()));
        drop(publisher);
        assert!(running(&dir).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_left_by_a_process_that_is_gone_is_removed_by_its_reader() {
        let dir = scratch("stale");
        private_dir(&dir).unwrap();
        let gone = JobStatus {
            pid: u32::MAX - 1,
            ..JobStatus::default()
        };
        let path = dir.join("stale.json");
        write_status(&path, &gone).unwrap();
        std::fs::write(dir.join("torn.json"), b"{not json").unwrap();
        let cut_short = dir.join(format!("{}-0.json.tmp", u32::MAX - 1));
        std::fs::write(&cut_short, b"{").unwrap();
        assert!(running(&dir).is_empty());
        assert!(!path.exists() && !cut_short.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_folder_that_is_a_link_or_open_to_others_is_not_used() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("links");
        let real = dir.join("real");
        private_dir(&real).unwrap();
        let linked = dir.join("linked");
        std::os::unix::fs::symlink(&real, &linked).unwrap();
        let watch = Watch::new("job.toml", "seq(square)");
        let refused = Publisher::start(watch.clone(), &linked).unwrap_err();
        assert!(refused.to_string().contains("symbolic link"), "{refused}");
        // A file put there by hand is not read through the link either.
        write_status(&real.join("1-0.json"), &watch.snapshot()).unwrap();
        assert_eq!(running(&real).len(), 1);
        assert!(running(&linked).is_empty());
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(running(&real).is_empty());
        let open = Publisher::start(watch, &real).unwrap_err();
        assert!(open.to_string().contains("open to others"), "{open}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_of_another_version_still_reads() {
        let old = format!(
            r#"{{"pid": {}, "name": "job.toml", "results": 3, "stages": [{{"name": "square"}}]}}"#,
            std::process::id()
        );
        let status: JobStatus = serde_json::from_str(&old).unwrap();
        assert_eq!((status.results, status.stages[0].served), (3, 0));
        assert!(
            still_running(&status),
            "pid_start 0: judged by the PID alone"
        );
        let reused = JobStatus {
            pid_start: 1,
            ..status
        };
        assert!(!still_running(&reused), "a PID now naming another process");
    }

    #[test]
    fn totals_survive_the_file() {
        let mut t = Totals::default();
        t.arrive();
        t.start();
        t.finish(
            0,
            Duration::from_millis(30),
            Some(Duration::from_millis(20)),
        );
        let back = StageStatus::new("square".into(), 2, &t).totals();
        assert_eq!((back.arrived, back.served, back.busy_n), (1, 1, 1));
        assert_eq!(back.busy, Duration::from_millis(20));
    }
}
