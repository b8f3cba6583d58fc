//! How a failed command is reported: its error, each cause once, and the
//! exit status (2 for what the user can fix before running anything, 1 for
//! a command that ran and failed).

use skelpi::jobs::RunError;
use skelpi::pool::PoolError;
use skelpi::runtime::JobError;

/// The error and its causes, `: `-separated, each said once: a cause whose
/// text the message already holds (an error that prints its source too) is
/// not repeated.
pub fn text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let said = cause.to_string();
        if out.contains(&said) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&said);
    }
    out
}

/// The user stopped the command (Ctrl-C).
#[derive(Debug, thiserror::Error)]
#[error("stopped by the user")]
pub struct Interrupted;

/// The exit status for `e`: 130 when the user stopped it (as a shell
/// reports SIGINT), 2 for a usage error (a bad key or address, a
/// file that cannot be read or is not valid, a tree naming kernels no agent
/// offers, swaps the job cannot take, the lab run without root), 1
/// otherwise.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.is::<Interrupted>()) {
        return 130;
    }
    // An I/O error only as the error itself: deeper in the chain it is
    // often a network's, not a file's.
    let usage = e.chain().any(is_usage) || e.downcast_ref::<std::io::Error>().is_some();
    if usage { 2 } else { 1 }
}

fn is_usage(cause: &(dyn std::error::Error + 'static)) -> bool {
    use skelpi::trace::TraceError;
    if cause.downcast_ref::<crate::pools::PoolsError>().is_some() {
        return true;
    }
    if let Some(p) = cause.downcast_ref::<PoolError>() {
        return matches!(p, PoolError::Key { .. } | PoolError::BadAddress(_));
    }
    if let Some(t) = cause.downcast_ref::<TraceError>() {
        return matches!(t, TraceError::File { .. } | TraceError::Format { .. });
    }
    if let Some(l) = cause.downcast_ref::<crate::lab::LabError>() {
        return matches!(
            l,
            crate::lab::LabError::NotRoot | crate::lab::LabError::Invalid(_)
        );
    }
    if let Some(j) = cause.downcast_ref::<JobError>() {
        return matches!(j, JobError::NoKernel { .. });
    }
    if let Some(r) = cause.downcast_ref::<RunError>() {
        return !matches!(r, RunError::Module(_))
            && !matches!(r, RunError::Job(j) if !matches!(j, JobError::NoKernel { .. }));
    }
    cause.is::<crate::jobfile::JobFileError>()
        || cause.is::<crate::image::ImageError>()
        || cause.is::<skelpi::deploy::DeployError>()
        || cause.is::<skelpi_wire::deploy_key::DeployKeyError>()
        || cause.is::<crate::cmd::top::NoTerminal>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_the_message_already_says_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(crate::jobfile::JobFileError::Read {
            path: "job.toml".into(),
            source: io,
        });
        assert_eq!(text(&e), "cannot read job.toml: No such file");
        assert_eq!(exit_code(&e), 2);
        let e = anyhow::anyhow!("the link broke").context("job x failed");
        assert_eq!(text(&e), "job x failed: the link broke");
        assert_eq!(exit_code(&e), 1);
    }
}
