//! A timer for loops whose deadline moves often: it is set again only when
//! the deadline comes earlier or the timer has rung, because setting a
//! timer wakes the thread that drives the reactor (a context switch), and
//! a loop that made a timer per message paid that per message.

use async_io::Timer;
use std::time::Instant;

/// Rings no later than the deadline it is given, possibly earlier (at an
/// older deadline that has since moved later): its owner checks what is
/// due when it rings, and asks again.
#[derive(Debug)]
pub struct Alarm {
    timer: Timer,
    /// The instant the timer is set to, until it rings.
    set: Option<Instant>,
}

impl Default for Alarm {
    fn default() -> Self {
        Alarm::new()
    }
}

impl Alarm {
    /// An alarm that is not set.
    pub fn new() -> Alarm {
        Alarm {
            timer: Timer::never(),
            set: None,
        }
    }

    /// Waits until `at` at the latest (for ever if `None`); it may return
    /// earlier, at a deadline set before and not yet rung.
    pub async fn ring_by(&mut self, at: Option<Instant>) {
        let Some(at) = at else {
            return std::future::pending().await;
        };
        if self.set.is_none_or(|set| set > at) {
            self.timer.set_at(at);
            self.set = Some(at);
        }
        (&mut self.timer).await;
        self.set = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;
    use std::time::Duration;

    /// Runs `alarm.ring_by(at)` for at most `limit`: whether it rang.
    async fn rang(alarm: &mut Alarm, at: Instant, limit: Duration) -> bool {
        future::or(
            async {
                alarm.ring_by(Some(at)).await;
                true
            },
            async {
                async_io::Timer::after(limit).await;
                false
            },
        )
        .await
    }

    #[test]
    fn rings_by_the_earliest_deadline_given_and_is_set_again_after_ringing() {
        future::block_on(async {
            let mut alarm = Alarm::new();
            let far = Instant::now() + Duration::from_secs(60);
            assert!(!rang(&mut alarm, far, Duration::from_millis(10)).await);
            // An earlier deadline sets it again.
            let soon = Instant::now() + Duration::from_millis(20);
            assert!(rang(&mut alarm, soon, Duration::from_secs(30)).await);
            assert!(Instant::now() >= soon);
            // A later one keeps the earlier setting: it rings early.
            let near = Instant::now() + Duration::from_millis(20);
            assert!(!rang(&mut alarm, near, Duration::from_millis(1)).await);
            assert!(rang(&mut alarm, far, Duration::from_secs(30)).await);
            assert!(Instant::now() < far, "rang at the earlier deadline");
            // Once rung, a deadline is set anew.
            let next = Instant::now() + Duration::from_millis(10);
            assert!(rang(&mut alarm, next, Duration::from_secs(30)).await);
            assert!(Instant::now() >= next);
        });
    }
}
