//! Which binary runs: the one installed with the board, the one a deploy
//! made current, or a freshly staged trial — and the way back when a
//! trial does not come up.
//!
//! The installed `skelpi-agent` (the unit's `ExecStart=`) is the launcher.
//! At start it looks in the deploy directory (`STATE_DIR/deploy`):
//!
//! - a `trial` never started: it marks it started and runs it (`exec`, so
//!   systemd keeps watching the same process);
//! - a `trial` marked started: that trial ran and was never committed (it
//!   exited, crashed, or hung until the watchdog killed it, and systemd
//!   started the unit again). It is removed, the reason kept in
//!   `last-failure` (agents report it in their handshake), and the
//!   launcher goes on as if there were no trial;
//! - a `current`: it runs it;
//! - else it runs itself.
//!
//! A trial becomes `current` (and `current` `previous`) only when the
//! master commits it, after it answered on it and ran a check job there;
//! until then any restart rolls it back. A deployed binary checks its own
//! hash against its record before it runs. A restart asked for by a
//! deploy runs the launcher again. Without systemd (or another supervisor that
//! restarts the agent when it exits), a trial that exits is not rolled
//! back until the agent is started again.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// The environment variable that tells a started binary its role.
pub const ROLE_VAR: &str = "SKELPI_AGENT_ROLE";
/// The environment variable that names the launcher to a started binary.
pub const LAUNCHER_VAR: &str = "SKELPI_AGENT_LAUNCHER";

/// Which binary this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The binary installed with the board (or run by hand).
    Installed,
    /// The binary a deploy made current.
    Current,
    /// A binary just deployed, on trial until it is ready.
    Trial,
}

impl Role {
    /// This process's role, from [`ROLE_VAR`].
    pub fn from_env() -> Role {
        match std::env::var(ROLE_VAR).as_deref() {
            Ok("current") => Role::Current,
            Ok("trial") => Role::Trial,
            _ => Role::Installed,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Installed => "installed",
            Role::Current => "current",
            Role::Trial => "trial",
        }
    }
}

/// What the launcher does.
#[derive(Debug, PartialEq, Eq)]
pub enum Choice {
    /// Run this binary.
    Run,
    /// Replace this process with the binary at the path, in that role.
    Exec(PathBuf, Role),
}

/// The deploy directory and its files: `incoming` (an upload), `staged`
/// (checked, waiting for the master's restart), `trial` (restarted into,
/// not yet committed; `trial.started` once the launcher ran it),
/// `current` and `previous`, each binary with its `.sha256` record (hash,
/// version, signing time), and `last-failure`, `last-issued`.
#[derive(Debug, Clone)]
pub struct Files {
    dir: PathBuf,
}

impl Files {
    /// The deploy directory under `state_dir`, made (mode 0700) if
    /// missing; an upload or staged binary left by an earlier run is
    /// removed (it was never restarted into).
    pub fn open(state_dir: &Path) -> io::Result<Files> {
        let dir = state_dir.join("deploy");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let files = Files { dir };
        for leftover in ["incoming", "staged", "staged.sha256"] {
            let _ = std::fs::remove_file(files.path(leftover));
        }
        Ok(files)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Where an upload is written.
    pub fn incoming(&self) -> PathBuf {
        self.path("incoming")
    }

    /// A new, empty upload file: a fresh inode each time (an earlier
    /// upload's open handle writes elsewhere), mode 0700.
    pub fn fresh_incoming(&self) -> io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(self.incoming());
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(self.incoming())
    }

    /// Drops the upload.
    pub fn drop_incoming(&self) {
        let _ = std::fs::remove_file(self.incoming());
    }

    /// Makes the checked upload the staged binary, with its record.
    pub fn stage(&self, sha256: &str, version: &str, issued_at: u64) -> io::Result<()> {
        let record = format!("{sha256}\n{version}\n{issued_at}\n");
        std::fs::write(self.path("staged.sha256"), record)?;
        std::fs::rename(self.incoming(), self.path("staged"))?;
        self.sync()
    }

    /// Drops the staged binary.
    pub fn unstage(&self) {
        let _ = std::fs::remove_file(self.path("staged"));
        let _ = std::fs::remove_file(self.path("staged.sha256"));
    }

    /// Makes the staged binary the trial the launcher runs next.
    pub fn stage_to_trial(&self) -> io::Result<()> {
        let _ = std::fs::remove_file(self.path("trial.started"));
        std::fs::rename(self.path("staged.sha256"), self.path("trial.sha256"))?;
        std::fs::rename(self.path("staged"), self.path("trial"))?;
        self.sync()
    }

    /// Why the last deploy here did not become the running binary.
    pub fn last_failure(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.path("last-failure")).ok()?;
        Some(skelpi_proto::text::clip(text.trim(), 400).into_owned())
    }

    /// Records the signing time of the manifest last restarted into
    /// (written whole, then renamed).
    pub fn set_last_issued(&self, issued_at: u64) -> io::Result<()> {
        let tmp = self.path("last-issued.new");
        std::fs::write(&tmp, format!("{issued_at}\n"))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(tmp, self.path("last-issued"))?;
        self.sync()
    }

    /// The signing time of the last manifest restarted into here (0: none).
    pub fn last_issued(&self) -> u64 {
        std::fs::read_to_string(self.path("last-issued"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    fn record(&self, role: Role) -> Option<(String, u64)> {
        let name = match role {
            Role::Installed => return None,
            Role::Current => "current.sha256",
            Role::Trial => "trial.sha256",
        };
        let text = std::fs::read_to_string(self.path(name)).ok()?;
        let mut lines = text.lines();
        let sha = lines.next()?.to_owned();
        let issued = lines.nth(1).and_then(|l| l.parse().ok()).unwrap_or(0);
        Some((sha, issued))
    }

    /// The SHA-256 its record gives for the binary in `role` (`None` for
    /// the installed one).
    pub fn deployed(&self, role: Role) -> Option<String> {
        self.record(role).map(|(sha, _)| sha)
    }

    /// Checks that the binary in `role` is the one its record names (a
    /// deployed binary about to run): its SHA-256, or (inner `Err`) how it
    /// differs; an outer `Err` when it cannot be read.
    pub fn verify(&self, role: Role) -> io::Result<Result<String, String>> {
        use std::io::Read;
        let (name, recorded) = match role {
            Role::Installed => return Ok(Err("the installed binary has no record".into())),
            Role::Current => ("current", self.deployed(role)),
            Role::Trial => ("trial", self.deployed(role)),
        };
        // Read in pieces: a board's memory need not hold the binary twice.
        let mut file = std::fs::File::open(self.path(name))?;
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
        }
        let sha: String = hash
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(match recorded {
            Some(r) if r == sha => Ok(sha),
            r => Err(format!(
                "its SHA-256 is {sha}, its record says {}",
                r.as_deref().unwrap_or("nothing")
            )),
        })
    }

    /// What the launcher runs.
    pub fn choose(&self, role: Role) -> Choice {
        if role != Role::Installed {
            return Choice::Run;
        }
        // A promotion cut short between its two renames: the new binary
        // is current already, its record not yet.
        if !self.path("trial").exists() && self.path("trial.sha256").exists() {
            let _ = std::fs::rename(self.path("trial.sha256"), self.path("current.sha256"));
            let _ = std::fs::remove_file(self.path("trial.started"));
        }
        if self.path("trial").exists() {
            if self.path("trial.started").exists() {
                self.roll_back(
                    "it exited, crashed or hung before it was committed (ready and checked)",
                );
            } else if let Err(e) =
                std::fs::write(self.path("trial.started"), b"").and_then(|()| self.sync())
            {
                log::error!("cannot mark the deployed binary started ({e}); not running it");
                self.roll_back(&format!("its start could not be recorded: {e}"));
            } else {
                return Choice::Exec(self.path("trial"), Role::Trial);
            }
        }
        if self.path("current").exists() {
            return Choice::Exec(self.path("current"), Role::Current);
        }
        Choice::Run
    }

    /// Removes a trial that did not come up, saying why in
    /// `last-failure`.
    pub fn roll_back(&self, why: &str) {
        let sha = self.deployed(Role::Trial).unwrap_or_else(|| "?".to_owned());
        let back_to = self
            .deployed(Role::Current)
            .map_or("the installed binary".to_owned(), |s| format!("binary {s}"));
        self.fail(&format!(
            "rolled back from binary {sha} to {back_to}: {why}"
        ));
        for name in ["trial", "trial.sha256", "trial.started"] {
            let _ = std::fs::remove_file(self.path(name));
        }
        let _ = self.sync();
    }

    /// Removes a current binary that does not match its record (the
    /// installed one runs next).
    pub fn discard_current(&self, why: &str) {
        self.fail(&format!("discarded the current binary: {why}"));
        for name in ["current", "current.sha256"] {
            let _ = std::fs::remove_file(self.path(name));
        }
        let _ = self.sync();
    }

    fn fail(&self, text: &str) {
        log::warn!("deploy failed: {text}");
        if let Err(e) = std::fs::write(self.path("last-failure"), format!("{text}\n")) {
            log::warn!("cannot record the failed deploy: {e}");
        }
    }

    /// Commits the trial (it is ready and passed the master's check): it
    /// becomes `current`, the one it replaces is kept as `previous`.
    /// Each step replaces a name atomically; the binary moves before its
    /// record, and the launcher completes a promotion cut short between
    /// the two ([`Files::choose`]).
    pub fn promote(&self) -> io::Result<()> {
        if self.path("current").exists() {
            for (from, to) in [
                ("current", "previous"),
                ("current.sha256", "previous.sha256"),
            ] {
                let tmp = self.path(&format!("{to}.new"));
                let _ = std::fs::remove_file(&tmp);
                std::fs::hard_link(self.path(from), &tmp)?;
                std::fs::rename(&tmp, self.path(to))?;
            }
        }
        std::fs::rename(self.path("trial"), self.path("current"))?;
        self.sync()?;
        std::fs::rename(self.path("trial.sha256"), self.path("current.sha256"))?;
        let _ = std::fs::remove_file(self.path("trial.started"));
        let _ = std::fs::remove_file(self.path("last-failure"));
        self.sync()
    }

    /// Flushes the directory's renames to disk.
    fn sync(&self) -> io::Result<()> {
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

/// Replaces this process with `path` in `role`, with the same arguments;
/// returns only on failure.
pub fn exec(path: &Path, role: Role) -> io::Error {
    let launcher =
        std::env::var_os(LAUNCHER_VAR).or_else(|| std::env::current_exe().ok().map(OsString::from));
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "skelpi-agent".into());
    let mut cmd = std::process::Command::new(path);
    cmd.arg0(arg0).args(args).env(ROLE_VAR, role.name());
    if let Some(launcher) = launcher {
        cmd.env(LAUNCHER_VAR, launcher);
    }
    log::info!(
        "starting the {} agent binary {}",
        role.name(),
        path.display()
    );
    cmd.exec()
}

/// Replaces this process with the launcher (which picks the binary that
/// runs next); returns only on failure.
pub fn restart() -> io::Error {
    let launcher = match std::env::var_os(LAUNCHER_VAR) {
        Some(path) => PathBuf::from(path),
        None => match std::env::current_exe() {
            Ok(path) => path,
            Err(e) => return e,
        },
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "skelpi-agent".into());
    log::info!("restarting through {}", launcher.display());
    std::process::Command::new(&launcher)
        .arg0(arg0)
        .args(args)
        .env_remove(ROLE_VAR)
        .env_remove(LAUNCHER_VAR)
        .exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("skelpi-launch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Files::open(&dir).unwrap()
    }

    fn stage(files: &Files, sha: &str) {
        drop(files.fresh_incoming().unwrap());
        std::fs::write(files.incoming(), sha.as_bytes()).unwrap();
        files.stage(sha, "0.1.0", 7).unwrap();
        files.stage_to_trial().unwrap();
    }

    #[test]
    fn a_trial_runs_once_then_rolls_back_unless_promoted() {
        let files = scratch("trial");
        assert_eq!(files.choose(Role::Installed), Choice::Run);
        stage(&files, "aa");
        let trial = files.dir().join("trial");
        assert_eq!(
            files.choose(Role::Installed),
            Choice::Exec(trial.clone(), Role::Trial)
        );
        assert_eq!(files.deployed(Role::Trial).as_deref(), Some("aa"));
        // It was never committed: the next start rolls back to the installed one.
        assert_eq!(files.choose(Role::Installed), Choice::Run);
        let failure = files.last_failure().unwrap();
        assert!(
            failure.contains("rolled back from binary aa to the installed"),
            "{failure}"
        );
        // A second deploy that comes up becomes current, the first kept.
        stage(&files, "bb");
        assert_eq!(
            files.choose(Role::Installed),
            Choice::Exec(trial, Role::Trial)
        );
        files.promote().unwrap();
        assert_eq!(files.last_failure(), None);
        let current = files.dir().join("current");
        assert_eq!(
            files.choose(Role::Installed),
            Choice::Exec(current.clone(), Role::Current)
        );
        assert_eq!(files.deployed(Role::Current).as_deref(), Some("bb"));
        // A third that fails goes back to the second.
        stage(&files, "cc");
        assert!(matches!(
            files.choose(Role::Installed),
            Choice::Exec(_, Role::Trial)
        ));
        assert_eq!(
            files.choose(Role::Installed),
            Choice::Exec(current, Role::Current)
        );
        let failure = files.last_failure().unwrap();
        assert!(failure.contains("from binary cc to binary bb"), "{failure}");
        // A binary started by the launcher runs, once its hash is checked.
        assert_eq!(files.choose(Role::Current), Choice::Run);
        let e = files.verify(Role::Current).unwrap().unwrap_err();
        assert!(e.contains("its record says bb"), "{e}");
        files.discard_current(&e);
        assert_eq!(files.choose(Role::Installed), Choice::Run);
        // A staged binary never restarted into is gone at the next start.
        drop(files.fresh_incoming().unwrap());
        files.stage("dd", "0.1.0", 8).unwrap();
        let files = Files::open(files.dir().parent().unwrap()).unwrap();
        assert!(!files.dir().join("staged").exists());
        let _ = std::fs::remove_dir_all(files.dir().parent().unwrap());
    }
}
