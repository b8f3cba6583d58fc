//! How much a session logs about its master's requests.

use crate::admission::Throttle;
use skelpi_proto::JobId;
use std::cell::RefCell;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

/// Job ids a session remembers for logging each job once; beyond that it
/// forgets them all and may log a job again.
const JOBS_REMEMBERED: usize = 1024;

/// What a session logs about its master's requests at a level above debug:
/// the first record of each job, and at most one a second for the whole
/// session (the next says how many were held back); the rest go to debug.
/// So neither a failing job of many tasks nor a master inventing a job id
/// per task can flood the journal (journald would drop the agent's other
/// records).
#[derive(Debug)]
pub(super) struct LogQuota {
    level: log::Level,
    jobs: RefCell<HashSet<JobId>>,
    throttle: Throttle,
}

impl LogQuota {
    /// A quota for records at `level`.
    pub(super) fn new(level: log::Level) -> LogQuota {
        LogQuota {
            level,
            jobs: RefCell::new(HashSet::new()),
            throttle: Throttle::new(Duration::from_secs(1)),
        }
    }

    /// The level of a record (about `job`, if any), and a note to add to
    /// it: how many were held back before it.
    pub(super) fn level(&self, job: Option<JobId>) -> (log::Level, String) {
        let first = job.is_none_or(|job| {
            let mut jobs = self.jobs.borrow_mut();
            if jobs.len() >= JOBS_REMEMBERED {
                jobs.clear();
            }
            jobs.insert(job)
        });
        match first.then(|| self.throttle.admit()).flatten() {
            Some(0) => (self.level, String::new()),
            Some(held) => (self.level, format!(" ({held} similar records held back)")),
            None => (log::Level::Debug, String::new()),
        }
    }

    /// Says how many records were held back since the last one (the
    /// session ends).
    pub(super) fn close(&self, peer: SocketAddr) {
        let held = self.throttle.take_held_back();
        if held > 0 {
            log::log!(
                self.level,
                "master {peer}: {held} similar records held back (logged at debug level)"
            );
        }
    }
}
