//! The heartbeat rule both ends of a connection follow, without a clock:
//! times are passed in.
//!
//! A master asks for a heartbeat interval in its hello ([`negotiate`]
//! bounds it). From then on each end sends a [`Message::Heartbeat`] on the
//! [`Beats`] schedule — the first at once, so the peer knows it beats — and
//! takes its peer for down once the peer has beaten at least once and then
//! been silent for [`DOWN_AFTER_BEATS`] intervals ([`is_down`]). A peer
//! that never beat (an older one) is judged by its connection alone.
//!
//! [`Message::Heartbeat`]: crate::Message::Heartbeat

use std::time::{Duration, Instant};

/// Heartbeat intervals of silence after which a peer is taken for down
/// (2 s with a master's default 500 ms heartbeat).
pub const DOWN_AFTER_BEATS: u32 = 4;

/// Shortest heartbeat interval an agent grants, milliseconds.
pub const MIN_HEARTBEAT_MS: u32 = 100;

/// Longest heartbeat interval an agent grants, milliseconds.
pub const MAX_HEARTBEAT_MS: u32 = 60_000;

/// The interval granted for a hello's `heartbeat_ms`: bounded to
/// [`MIN_HEARTBEAT_MS`]..=[`MAX_HEARTBEAT_MS`]; `None` for 0 (no beats).
pub fn negotiate(asked_ms: u32) -> Option<Duration> {
    (asked_ms > 0).then(|| {
        let ms = asked_ms.clamp(MIN_HEARTBEAT_MS, MAX_HEARTBEAT_MS);
        Duration::from_millis(ms.into())
    })
}

/// Whether a peer asked to beat every `every` is down: it beat at least
/// once (`beats_heard`) and has now been silent for `silent_for`, at least
/// [`DOWN_AFTER_BEATS`] intervals. Never for a zero interval.
pub fn is_down(every: Duration, beats_heard: u64, silent_for: Duration) -> bool {
    !every.is_zero() && beats_heard > 0 && silent_for >= every * DOWN_AFTER_BEATS
}

/// When to send the next heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beats {
    every: Duration,
    next: Option<Instant>,
}

impl Beats {
    /// A schedule of one beat every `every` from `now` (the first is due
    /// at once); none for a zero interval.
    pub fn new(every: Duration, now: Instant) -> Beats {
        Beats {
            every,
            next: (!every.is_zero()).then_some(now),
        }
    }

    /// No beats at all.
    pub fn none() -> Beats {
        Beats {
            every: Duration::ZERO,
            next: None,
        }
    }

    /// The interval (zero: no beats).
    pub fn every(&self) -> Duration {
        self.every
    }

    /// When the next beat is due, if ever.
    pub fn next(&self) -> Option<Instant> {
        self.next
    }

    /// Whether a beat is due at `now`; if so the next is scheduled an
    /// interval after this one is sent (a late beat is not followed by a
    /// burst).
    pub fn take_due(&mut self, now: Instant) -> bool {
        match self.next {
            Some(at) if at <= now => {
                self.next = Some(at.max(now) + self.every);
                true
            }
            _ => false,
        }
    }

    /// Something else was sent at `now`: the peer heard from this end, so
    /// the next beat can wait a whole interval.
    pub fn postpone(&mut self, now: Instant) {
        if let Some(at) = &mut self.next {
            *at = (*at).max(now + self.every);
        }
    }
}
