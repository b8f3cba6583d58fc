//! A gate with a limit that can change while it is in use: a stage's
//! degree (tasks it may have out at once) and the job's admission window.

use event_listener::{Event, IntoNotification};
use std::cell::Cell;

/// Lets at most `limit` holders in at once; the limit may be raised or
/// lowered at any time (lowering lets no one new in until enough holders
/// leave: nobody is interrupted).
#[derive(Debug)]
pub struct Gate {
    limit: Cell<usize>,
    held: Cell<usize>,
    changed: Event,
}

impl Gate {
    /// A gate letting `limit` holders in (at least one).
    pub fn new(limit: usize) -> Gate {
        Gate {
            limit: Cell::new(limit.max(1)),
            held: Cell::new(0),
            changed: Event::new(),
        }
    }

    /// Waits for room, then takes it; [`Gate::leave`] gives it back.
    pub async fn enter(&self) {
        loop {
            // Listen first, then check: a leave between the two is heard.
            let listener = self.changed.listen();
            if self.held.get() < self.limit.get() {
                self.held.set(self.held.get() + 1);
                return;
            }
            listener.await;
        }
    }

    /// Gives back room taken by [`Gate::enter`].
    pub fn leave(&self) {
        debug_assert!(self.held.get() > 0, "a gate left more often than entered");
        self.held.set(self.held.get().saturating_sub(1));
        // One more waiter for each leave, even if an earlier leave's
        // waiter has not run yet (a plain `notify(1)` would wake only one
        // for two leaves).
        self.changed.notify(1.additional());
    }

    /// Changes the limit (at least one).
    pub fn set_limit(&self, limit: usize) {
        self.limit.set(limit.max(1));
        self.changed.notify(usize::MAX);
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit.get()
    }

    /// Holders inside now.
    pub fn held(&self) -> usize {
        self.held.get()
    }
}

#[cfg(test)]
mod tests {
    use super::Gate;
    use futures_lite::future;
    use std::pin::pin;

    #[test]
    fn a_raised_limit_lets_waiters_in_and_a_lowered_one_waits_for_leavers() {
        let gate = Gate::new(1);
        future::block_on(async {
            gate.enter().await;
            let mut second = pin!(gate.enter());
            assert!(future::poll_once(second.as_mut()).await.is_none(), "full");
            gate.set_limit(2);
            assert!(future::poll_once(second.as_mut()).await.is_some(), "raised");
            gate.set_limit(1);
            let mut third = pin!(gate.enter());
            assert!(future::poll_once(third.as_mut()).await.is_none());
            gate.leave();
            assert!(
                future::poll_once(third.as_mut()).await.is_none(),
                "still one holder against a limit of one"
            );
            gate.leave();
            assert!(future::poll_once(third.as_mut()).await.is_some());
            assert_eq!((gate.held(), gate.limit()), (1, 1));
        });
    }

    #[test]
    fn two_leaves_let_two_waiters_in() {
        let gate = Gate::new(2);
        future::block_on(async {
            gate.enter().await;
            gate.enter().await;
            let mut a = pin!(gate.enter());
            let mut b = pin!(gate.enter());
            assert!(future::poll_once(a.as_mut()).await.is_none());
            assert!(future::poll_once(b.as_mut()).await.is_none());
            gate.leave();
            gate.leave();
            assert!(future::poll_once(a.as_mut()).await.is_some());
            assert!(future::poll_once(b.as_mut()).await.is_some(), "woken too");
            assert_eq!(gate.held(), 2);
        });
    }
}
