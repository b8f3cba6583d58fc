//! A job whose every agent is down at once, and a master that was itself
//! stalled.
//!
//! An agent drops the work of a master silent for its heartbeats and
//! closes the connection. A master that was suspended (Ctrl-Z, or the
//! whole machine, a laptop's lid) or starved of CPU longer than that
//! comes back to find every connection closed, though every agent is
//! alive. So a job whose every agent is down waits up to
//! [`ALL_DOWN_GRACE`] for one to answer again (each is connected anew
//! meanwhile, see `serve_link` and `redial_pause`) before its waiting
//! tasks fail, and a stall of the master is said as such rather than
//! blamed on the agents, nor counted against its tasks' losses (not a
//! suspend of the whole machine: the monotonic clock read here stops
//! with it).

use super::{Dispatcher, REDIAL_FIRST};
use crate::runtime::JobError;
use crate::runtime::stall::OWN_STALL as STALL_NOTICE;
use skelpi_proto::beat::DOWN_AFTER_BEATS;
use std::time::{Duration, Instant};

/// While every agent is down, how long a job waits for one to answer
/// again before its waiting tasks fail.
pub const ALL_DOWN_GRACE: Duration = Duration::from_secs(5);

/// How often the master looks at its own clock for a stall (a look
/// [`STALL_NOTICE`] later than asked is one, as for the stall watchdog).
const STALL_LOOK_EVERY: Duration = Duration::from_millis(100);

/// Agents lost this long after a stall of the master were lost to it.
const AFTER_STALL: Duration = Duration::from_secs(3);

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
        self.looked.set(Instant::now());
        loop {
            futures_lite::StreamExt::next(&mut every).await;
            let now = Instant::now();
            let late = now.saturating_duration_since(self.looked.get() + STALL_LOOK_EVERY);
            self.looked.set(now);
            if late < STALL_NOTICE {
                continue;
            }
            let patience = self.patience();
            if late >= patience {
                self.stalled_at.set(Some(now));
            }
            let agents = if late >= patience {
                "agents that heard nothing from it for that long took it for gone and \
                 dropped its work; they are connected again as they answer"
            } else {
                "shorter than its agents' patience"
            };
            log::warn!(
                "job {}: this master was stalled for {late:.1?} (suspended, or starved of CPU): \
                 {agents}",
                self.job
            );
        }
    }

    /// Whether this master was stalled just now for as long as its agents
    /// wait: its own look is that overdue (it has not run since it
    /// resumed), or such a stall ended within [`AFTER_STALL`]. An agent
    /// lost then took the master for gone.
    pub(super) fn stalled_lately(&self) -> bool {
        let now = Instant::now();
        let overdue = now.saturating_duration_since(self.looked.get()) >= self.patience();
        let recent = self
            .stalled_at
            .get()
            .is_some_and(|at| now.saturating_duration_since(at) < AFTER_STALL);
        overdue || recent
    }

    /// How long the agents wait for this master's silence: the longest
    /// heartbeat asked of them, [`DOWN_AFTER_BEATS`] times (for ever
    /// without heartbeats).
    fn patience(&self) -> Duration {
        match self.links.iter().map(|l| l.heartbeat).max() {
            Some(beat) if !beat.is_zero() => beat * DOWN_AFTER_BEATS,
            _ => Duration::MAX,
        }
    }

    /// A redial's pause: `pause`, cut short when every agent goes down
    /// meanwhile; [`REDIAL_FIRST`] while every agent is down, so each is
    /// tried a few times within [`ALL_DOWN_GRACE`].
    pub(super) async fn redial_pause(&self, pause: Duration) {
        if !self.sched.borrow().any_live() {
            async_io::Timer::after(REDIAL_FIRST).await;
            return;
        }
        let paused = async {
            async_io::Timer::after(pause).await;
        };
        let all_down = self.until_liveness(|any_live| !any_live);
        futures_lite::future::or(paused, all_down).await;
    }
}
