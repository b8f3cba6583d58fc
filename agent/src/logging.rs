//! The global logger: the systemd journal under systemd, stderr otherwise.
//!
//! # Examples
//!
//! ```
//! use skelpi_agent::logging::{self, LogTarget};
//!
//! let target = logging::init(log::LevelFilter::Info);
//! // A second call changes nothing and reports the same target.
//! assert_eq!(logging::init(log::LevelFilter::Debug), target);
//! log::info!("agent starting");
//! ```
//!
//! # Implementation
//!
//! systemd sets `JOURNAL_STREAM` to the device and inode of the stream it
//! connected to a service's stderr (systemd.exec(5)). We log to the journal
//! only when our stderr is still that stream, so a child that inherited the
//! variable but had its stderr redirected logs where it was pointed. The
//! journal logger fails when no journald socket exists (e.g. in containers),
//! so its failure falls back to stderr (DESIGN §9).

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

/// Where journald listens for native-protocol messages.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Where log records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogTarget {
    /// The systemd journal, with structured fields.
    Journal,
    /// Standard error, as text lines.
    Stderr,
}

/// Installs the global logger and sets the maximum level to `level`.
///
/// Logs to the systemd journal when `JOURNAL_STREAM` names our stderr, the
/// journald socket exists and the journal logger initialises; to stderr
/// otherwise. A journal failure falls back to stderr and never panics. On
/// stderr, `RUST_LOG`, when set, overrides `level` (env_logger syntax).
///
/// Safe to call more than once: later calls do nothing and return the target
/// chosen by the first.
pub fn init(level: log::LevelFilter) -> LogTarget {
    static TARGET: OnceLock<LogTarget> = OnceLock::new();
    *TARGET.get_or_init(|| install(level))
}

/// Chooses and installs the logger (once).
fn install(level: log::LevelFilter) -> LogTarget {
    let journal_stream = std::env::var("JOURNAL_STREAM").ok();
    let wanted = choose_target(
        journal_stream.as_deref(),
        stderr_id().as_deref(),
        Path::new(JOURNAL_SOCKET).exists(),
    );
    if wanted == LogTarget::Journal && install_journal(level).is_ok() {
        return LogTarget::Journal;
    }
    install_stderr(level);
    LogTarget::Stderr
}

/// Decides where to log, from the environment's facts.
///
/// `journal_stream` is `$JOURNAL_STREAM`, `stderr_id` is our stderr's
/// `"DEVICE:INODE"`, and `socket_exists` says whether journald's socket is
/// there. The journal is chosen only when all three agree.
fn choose_target(
    journal_stream: Option<&str>,
    stderr_id: Option<&str>,
    socket_exists: bool,
) -> LogTarget {
    match (journal_stream, stderr_id) {
        (Some(stream), Some(stderr)) if socket_exists && !stream.is_empty() && stream == stderr => {
            LogTarget::Journal
        }
        _ => LogTarget::Stderr,
    }
}

/// Our stderr's device and inode as `"DEVICE:INODE"`, the format of
/// `JOURNAL_STREAM`; `None` if stderr is closed or cannot be examined.
fn stderr_id() -> Option<String> {
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some(format!("{}:{}", meta.dev(), meta.ino()))
}

/// Installs the journal logger; fails if journald cannot be reached or a
/// logger is already installed.
fn install_journal(level: log::LevelFilter) -> Result<(), Box<dyn std::error::Error>> {
    systemd_journal_logger::JournalLog::new()?.install()?;
    log::set_max_level(level);
    Ok(())
}

/// Installs the stderr logger. If another logger is already installed there
/// is nothing to do: records go wherever that one sends them.
fn install_stderr(level: log::LevelFilter) {
    let _ = env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .target(env_logger::Target::Stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_only_when_stream_matches_stderr_and_socket_exists() {
        assert_eq!(
            choose_target(Some("8:42"), Some("8:42"), true),
            LogTarget::Journal
        );
    }

    #[test]
    fn stderr_when_any_fact_is_missing() {
        let cases = [
            (None, Some("8:42"), true),
            (Some("8:42"), None, true),
            (Some("8:42"), Some("8:42"), false),
            (Some(""), Some(""), true),
            (None, None, false),
        ];
        for (stream, stderr, socket) in cases {
            assert_eq!(
                choose_target(stream, stderr, socket),
                LogTarget::Stderr,
                "{stream:?} {stderr:?} {socket}"
            );
        }
    }

    #[test]
    fn stderr_when_stream_was_inherited_but_stderr_redirected() {
        assert_eq!(
            choose_target(Some("8:42"), Some("8:43"), true),
            LogTarget::Stderr
        );
    }

    #[test]
    fn stderr_id_has_journal_stream_format() {
        // The test harness keeps stderr open.
        let id = stderr_id().unwrap();
        let (dev, ino) = id.split_once(':').unwrap();
        dev.parse::<u64>().unwrap();
        ino.parse::<u64>().unwrap();
    }

    #[test]
    fn init_twice_returns_the_first_target() {
        let first = init(log::LevelFilter::Warn);
        assert_eq!(init(log::LevelFilter::Trace), first);
    }
}
