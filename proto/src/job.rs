//! Job ids: how a master's job is named on the wire and in the agents'
//! logs.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A job's id, chosen at random by the master for each job. Every task
/// of the job carries it ([`crate::TaskHead::job`]); a streamed pipeline's
/// stream id is its job id. Agents log it as the journal field
/// `SKELPI_JOB`, so `journalctl SKELPI_JOB=…` finds one job's records on
/// every board.
///
/// Shown as 16 lower-case hex digits, the form [`FromStr`] reads back:
///
/// ```
/// use skelpi_proto::JobId;
///
/// let job = JobId(0x2a);
/// assert_eq!(job.to_string(), "000000000000002a");
/// assert_eq!("000000000000002a".parse::<JobId>(), Ok(job));
/// assert!("2a!".parse::<JobId>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A string that is not a job id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a job id (1 to 16 hex digits)")]
pub struct BadJobId(pub String);

impl FromStr for JobId {
    type Err = BadJobId;

    fn from_str(s: &str) -> Result<JobId, BadJobId> {
        let ok = (1..=16).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit());
        match u64::from_str_radix(s, 16) {
            Ok(v) if ok => Ok(JobId(v)),
            _ => Err(BadJobId(s.to_owned())),
        }
    }
}
