//! Which binary runs: the one installed with the board, the one a deploy
//! made current, or a freshly staged trial — and the way back when a
//! trial does not come up.
//!
//! The installed `skelpi-agent` (the unit's `ExecStart=`) is the launcher.
//! At start it looks in the deploy directory (`STATE_DIR/deploy`):
//!
//! - a `trial` never started: it marks it started and runs it (`exec`, so
//!   systemd keeps watching the same process);
//! - a `trial` marked started: that trial ran and never became ready (it
//!   exited, crashed, or hung until the watchdog killed it, and systemd
//!   started the unit again). It is moved aside to `failed`, the reason
//!   kept in `last-failure` (agents report it in their handshake), and
//!   the launcher goes on as if there were no trial;
//! - a `current`: it runs it;
//! - else it runs itself.
//!
//! A trial that becomes ready promotes itself: `current` becomes
//! `previous`, the trial `current`. A restart asked for by a deploy runs
//! the launcher again. Without systemd (or another supervisor that
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

/// The deploy directory and its files.
#[derive(Debug, Clone)]
pub struct Files {
    dir: PathBuf,
}

impl Files {
    /// The deploy directory under `state_dir`, made (mode 0700) if
    /// missing.
    pub fn open(state_dir: &Path) -> io::Result<Files> {
        let dir = state_dir.join("deploy");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(Files { dir })
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

    /// Makes the checked upload the trial the launcher runs next, with
    /// its hash and version beside it.
    pub fn stage(&self, sha256: &str, version: &str) -> io::Result<()> {
        std::fs::write(
            self.path("trial.sha256.new"),
            format!("{sha256}\n{version}\n"),
        )?;
        let _ = std::fs::remove_file(self.path("trial.started"));
        std::fs::rename(self.incoming(), self.path("trial"))?;
        std::fs::rename(self.path("trial.sha256.new"), self.path("trial.sha256"))
    }

    /// Why the last deploy here did not become the running binary.
    pub fn last_failure(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.path("last-failure")).ok()?;
        Some(skelpi_proto::text::clip(text.trim(), 400).into_owned())
    }

    /// The SHA-256 of the binary in `role` (`None` for the installed one).
    pub fn deployed(&self, role: Role) -> Option<String> {
        let name = match role {
            Role::Installed => return None,
            Role::Current => "current.sha256",
            Role::Trial => "trial.sha256",
        };
        let text = std::fs::read_to_string(self.path(name)).ok()?;
        text.lines().next().map(str::to_owned)
    }

    /// What the launcher runs.
    pub fn choose(&self, role: Role) -> Choice {
        if role != Role::Installed {
            return Choice::Run;
        }
        if self.path("trial").exists() {
            if self.path("trial.started").exists() {
                self.roll_back("it exited, crashed or hung before it was ready");
            } else if let Err(e) = std::fs::write(self.path("trial.started"), b"") {
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

    /// Moves a trial that did not come up aside, saying why in
    /// `last-failure`.
    pub fn roll_back(&self, why: &str) {
        let sha = self.deployed(Role::Trial).unwrap_or_else(|| "?".to_owned());
        let back_to = self
            .deployed(Role::Current)
            .map_or("the installed binary".to_owned(), |s| format!("binary {s}"));
        let text = format!("rolled back from binary {sha} to {back_to}: {why}");
        log::warn!("deploy failed: {text}");
        let _ = std::fs::rename(self.path("trial"), self.path("failed"));
        let _ = std::fs::rename(self.path("trial.sha256"), self.path("failed.sha256"));
        let _ = std::fs::remove_file(self.path("trial.started"));
        if let Err(e) = std::fs::write(self.path("last-failure"), format!("{text}\n")) {
            log::warn!("cannot record the failed deploy: {e}");
        }
    }

    /// A trial that became ready becomes the current binary; the one it
    /// replaces is kept as `previous`.
    pub fn promote(&self) -> io::Result<()> {
        if self.path("current").exists() {
            std::fs::rename(self.path("current"), self.path("previous"))?;
            let _ = std::fs::rename(self.path("current.sha256"), self.path("previous.sha256"));
        }
        std::fs::rename(self.path("trial"), self.path("current"))?;
        std::fs::rename(self.path("trial.sha256"), self.path("current.sha256"))?;
        let _ = std::fs::remove_file(self.path("trial.started"));
        let _ = std::fs::remove_file(self.path("last-failure"));
        Ok(())
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
        std::fs::write(files.incoming(), b"binary").unwrap();
        files.stage(sha, "0.1.0").unwrap();
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
        // It never became ready: the next start rolls back to the installed one.
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
        // A binary started by the launcher runs.
        assert_eq!(files.choose(Role::Current), Choice::Run);
        let _ = std::fs::remove_dir_all(files.dir().parent().unwrap());
    }
}
