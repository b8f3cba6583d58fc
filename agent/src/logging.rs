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
//!
//! # Journal fields
//! Besides the journal logger's standard fields (`MESSAGE`, `PRIORITY`,
//! `SYSLOG_IDENTIFIER`, `CODE_FILE`, …), every record carries
//! `SKELPI_AGENT_ID` once [`set_agent_id`] has named the agent, and records
//! about a job carry `SKELPI_JOB` (16 hex digits, see
//! [`skelpi_proto::JobId`]): `journalctl -u skelpi-agent SKELPI_JOB=…`.
//! Record key-values become fields, upper-cased: `skelpi_job` →
//! `SKELPI_JOB`.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

use log::kv::{Key, Source, Value, VisitSource};

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

/// The agent's id, once known (after the agent has bound its port).
static AGENT_ID: OnceLock<String> = OnceLock::new();

/// Names this agent in every later journal record, as the field
/// `SKELPI_AGENT_ID` (the id `skelpi discover` shows). The first call wins:
/// a process serves one agent.
pub fn set_agent_id(id: &str) {
    let _ = AGENT_ID.set(id.to_owned());
}

/// The journal logger, adding `SKELPI_AGENT_ID` to every record.
struct AgentJournal(systemd_journal_logger::JournalLog);

impl log::Log for AgentJournal {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        let Some(id) = AGENT_ID.get() else {
            return self.0.log(record);
        };
        let fields = WithAgentId {
            id,
            rest: record.key_values(),
        };
        self.0.log(&record.to_builder().key_values(&fields).build());
    }

    fn flush(&self) {}
}

/// A record's key-values with the agent id in front.
struct WithAgentId<'a> {
    id: &'a str,
    rest: &'a dyn Source,
}

impl Source for WithAgentId<'_> {
    fn visit<'kvs>(&'kvs self, visitor: &mut dyn VisitSource<'kvs>) -> Result<(), log::kv::Error> {
        visitor.visit_pair(Key::from_str("SKELPI_AGENT_ID"), Value::from(self.id))?;
        self.rest.visit(visitor)
    }
}

/// Installs the journal logger; fails if journald cannot be reached or a
/// logger is already installed.
fn install_journal(level: log::LevelFilter) -> Result<(), Box<dyn std::error::Error>> {
    let journal = systemd_journal_logger::JournalLog::new()?;
    log::set_boxed_logger(Box::new(AgentJournal(journal)))?;
    log::set_max_level(level);
    Ok(())
}

/// Installs the stderr logger, each line led by its UTC time (RFC 3339,
/// milliseconds). If another logger is already installed there
/// is nothing to do: records go wherever that one sends them.
fn install_stderr(level: log::LevelFilter) {
    let _ = env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .target(env_logger::Target::Stderr)
        .format(|buf, record| {
            let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
            let (level, target) = (record.level(), record.target());
            writeln!(buf, "[{now} {level:<5} {target}] {}", record.args())
        })
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
