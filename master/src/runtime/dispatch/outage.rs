//! A job whose every agent is down at once, and a master that was itself
//! stalled.
//!
//! An agent drops the work of a master silent for its heartbeats and
//! closes the connection. A master that was suspended (Ctrl-Z, a laptop's
//! lid) or starved of CPU longer than that comes back to find every
//! connection closed, though every agent is alive. So a job whose every
//! agent is down waits up to [`ALL_DOWN_GRACE`] for one to answer again
//! (each is connected anew meanwhile, see `serve_link`) before its
//! waiting tasks fail, and a stall of the master is said as such rather
//! than blamed on the agents.

use super::Dispatcher;
use crate::runtime::JobError;
use std::time::{Duration, Instant};

/// While every agent is down, how long a job waits for one to answer
/// again before its waiting tasks fail.
pub const ALL_DOWN_GRACE: Duration = Duration::from_secs(5);

/// How often the master looks at its own clock for a stall...
const STALL_LOOK_EVERY: Duration = Duration::from_millis(100);

/// ...and a wake-up this much later than asked is a stall of the master
/// (a tenth of the default silence before an agent is taken for gone
/// would be noise; a second is not).
const STALL_NOTICE: Duration = Duration::from_secs(1);

impl Dispatcher<'_> {
    /// Gives up on the waiting tasks once every agent has been down for
    /// [`ALL_DOWN_GRACE`] without one coming back. Never returns.
    pub(super) async fn strand_when_none_returns(&self) {
        loop {
            self.until_liveness(|any_live| !any_live).await;
            let back = self.until_liveness(|any_live| any_live);
            if skelpi_wire::within(ALL_DOWN_GRACE, back).await.is_none() {
                self.strand_all();
                self.until_liveness(|any_live| any_live).await;
            }
        }
    }

    /// Returns once whether any agent is up satisfies `wanted`.
    async fn until_liveness(&self, wanted: impl Fn(bool) -> bool) {
        loop {
            let changed = self.liveness_changed.listen();
            if wanted(self.sched.borrow().any_live()) {
                return;
            }
            changed.await;
        }
    }

    /// Fails every task waiting while every agent is down.
    fn strand_all(&self) {
        let stranded = self.sched.borrow_mut().strand_all();
        if !stranded.is_empty() {
            log::warn!(
                "job {}: no agent answered again within {ALL_DOWN_GRACE:?}: {} waiting tasks fail",
                self.job,
                stranded.len()
            );
        }
        for key in stranded {
            self.settle(key, |_| Err(JobError::NoAgents));
        }
        self.pump();
        let _ = self.progress_tx.try_send(());
    }

    /// Says when this master itself was stalled (suspended, or starved
    /// of CPU) for [`STALL_NOTICE`] or more: its agents may have taken it
    /// for gone, which is not theirs to answer for. Never returns.
    pub(super) async fn note_own_stalls(&self) {
        let mut every = async_io::Timer::interval(STALL_LOOK_EVERY);
        let mut last = Instant::now();
        loop {
            futures_lite::StreamExt::next(&mut every).await;
            let now = Instant::now();
            let late = now.saturating_duration_since(last + STALL_LOOK_EVERY);
            last = now;
            if late >= STALL_NOTICE {
                log::warn!(
                    "job {}: this master was stalled for {late:.1?} (suspended, or starved of \
                     CPU); agents that took it for gone meanwhile dropped its work, and are \
                     connected again as they answer",
                    self.job
                );
            }
        }
    }
}
