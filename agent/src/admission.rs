//! Admission control: how many connections an agent lets in, and how loudly
//! it complains about the ones it turns away.
//!
//! Peers that have not authenticated draw on a small budget of their own
//! ([`MAX_HANDSHAKING`] in all, [`MAX_HANDSHAKING_PER_IP`] per address —
//! per /64 for IPv6, where one host holds many), so idle or hostile
//! sockets cannot use up the slots of authenticated masters. A connection
//! that finds the budget full is not refused: the oldest pending handshake
//! (of its address, if that is what is full) is evicted for it, so idle
//! sockets only ever delay a fresh peer by a handshake. Handshakes whose
//! peer has not sent a byte go first: a master that connects from the same
//! address as a stream of idle sockets keeps its place once it has spoken.
//! A silent handshake younger than [`SILENT_GRACE`] may be a master whose
//! first bytes are on their way: while one that spoke and then stalled
//! (still pending after [`STALLED_AFTER`]) can go instead, it does.
//! Refusals are logged at most once a second.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Handshakes in progress at once.
pub const MAX_HANDSHAKING: usize = 64;
/// Handshakes in progress at once from one address (one /64 for IPv6).
pub const MAX_HANDSHAKING_PER_IP: usize = 8;

/// How long a handshake may stay silent before it is taken for idle
/// rather than for a master whose first bytes are on their way.
pub const SILENT_GRACE: Duration = Duration::from_millis(100);

/// How long a handshake whose peer spoke may take before it is taken for
/// stalled: far more than the round trips of a real master's handshake.
pub const STALLED_AFTER: Duration = Duration::from_secs(1);

/// Where a peer connects from, for the per-address budget: an IPv4
/// address, or an IPv6 address's /64 (an IPv4-mapped one as IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin(u128);

impl Origin {
    /// The origin of a peer at `ip`.
    pub fn of(ip: IpAddr) -> Origin {
        match ip {
            IpAddr::V4(v4) => Origin(u32::from(v4).into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Origin(u32::from(v4).into()),
                None => Origin(u128::from(v6) >> 64 | 1 << 64),
            },
        }
    }
}

/// A handshake in progress.
struct Pending {
    id: u64,
    origin: Origin,
    /// When it was accepted.
    since: Instant,
    /// Whether its peer's first bytes were read.
    spoke: bool,
    /// Whether bytes from its peer wait unread (it spoke, but its
    /// handshake has not run yet).
    waiting: Box<dyn Fn() -> bool>,
    /// Closing it tells the handshake it was evicted.
    _evict: async_channel::Sender<()>,
}

/// Counters of one agent's connections (single-threaded: the server's
/// executor).
#[derive(Debug)]
pub struct Admission {
    max_sessions: usize,
    /// Handshakes in progress, oldest first.
    pending: RefCell<VecDeque<Pending>>,
    next: Cell<u64>,
    sessions: Cell<usize>,
    /// Refusals and failed handshakes, logged at most once a second.
    pub complaints: Throttle,
}

/// A handshake's claim on the budget; released on drop.
#[derive(Debug)]
pub struct HandshakeSlot {
    admission: Rc<Admission>,
    id: u64,
    evicted: async_channel::Receiver<()>,
}

impl HandshakeSlot {
    /// Completes when a newer connection took this handshake's place.
    pub async fn evicted(&self) {
        let _ = self.evicted.recv().await;
    }

    /// Records that the peer sent its first bytes: from now on, silent
    /// handshakes are evicted before this one.
    pub fn spoke(&self) {
        let mut pending = self.admission.pending.borrow_mut();
        if let Some(p) = pending.iter_mut().find(|p| p.id == self.id) {
            p.spoke = true;
        }
    }
}

/// An authenticated session's claim on the budget; released on drop.
#[derive(Debug)]
pub struct SessionSlot {
    admission: Rc<Admission>,
}

impl Admission {
    /// Admission with room for `max_sessions` authenticated sessions.
    pub fn new(max_sessions: usize) -> Rc<Admission> {
        Rc::new(Admission {
            max_sessions,
            pending: RefCell::new(VecDeque::new()),
            next: Cell::new(0),
            sessions: Cell::new(0),
            complaints: Throttle::new(Duration::from_secs(1)),
        })
    }

    /// Lets a new connection from `ip`, accepted at `now`, start its
    /// handshake, evicting a pending one if the budget is full (see
    /// `victim`); the reason of an eviction, to log, beside the slot.
    /// `waiting` tells whether the peer's bytes wait unread on its socket:
    /// a peer that spoke is not silent even if its handshake has not
    /// read them yet.
    pub fn handshake(
        self: &Rc<Self>,
        ip: IpAddr,
        now: Instant,
        waiting: impl Fn() -> bool + 'static,
    ) -> (HandshakeSlot, Option<String>) {
        let origin = Origin::of(ip);
        let mut pending = self.pending.borrow_mut();
        let from_origin = pending.iter().filter(|p| p.origin == origin).count();
        let victim = if from_origin >= MAX_HANDSHAKING_PER_IP {
            let why = format!("{from_origin} handshakes pending from {ip}'s address");
            victim(&pending, now, |p| p.origin == origin).map(|(at, which)| (at, why, which))
        } else if pending.len() >= MAX_HANDSHAKING {
            let why = format!("{MAX_HANDSHAKING} handshakes pending");
            victim(&pending, now, |_| true).map(|(at, which)| (at, why, which))
        } else {
            None
        };
        let why = victim.and_then(|(at, why, which)| {
            // Dropping its sender tells the evicted handshake to stop.
            pending.remove(at)?;
            Some(format!("{why}: the {which} evicted"))
        });
        let id = self.next.get();
        self.next.set(id + 1);
        let (tx, evicted) = async_channel::bounded(1);
        pending.push_back(Pending {
            id,
            origin,
            since: now,
            spoke: false,
            waiting: Box::new(waiting),
            _evict: tx,
        });
        let slot = HandshakeSlot {
            admission: self.clone(),
            id,
            evicted,
        };
        (slot, why)
    }

    /// Turns a finished handshake into a session, if there is room.
    pub fn session(self: &Rc<Self>, slot: HandshakeSlot) -> Result<SessionSlot, String> {
        drop(slot);
        if self.sessions.get() >= self.max_sessions {
            return Err(format!("{} sessions open (the limit)", self.max_sessions));
        }
        self.sessions.set(self.sessions.get() + 1);
        Ok(SessionSlot {
            admission: self.clone(),
        })
    }
}

/// Where in `pending` (oldest first) the handshake to evict is, among
/// those `eligible`, and which kind it is: the oldest silent one if it has
/// been silent past [`SILENT_GRACE`]; else the oldest that spoke and is
/// still pending after [`STALLED_AFTER`]; else the oldest silent one;
/// else the oldest.
fn victim(
    pending: &VecDeque<Pending>,
    now: Instant,
    eligible: impl Fn(&Pending) -> bool,
) -> Option<(usize, &'static str)> {
    let silent = |p: &Pending| !p.spoke && !(p.waiting)();
    let older = |p: &Pending, than| now.saturating_duration_since(p.since) >= than;
    let oldest_silent = pending.iter().position(|p| eligible(p) && silent(p));
    if let Some(at) = oldest_silent
        && older(&pending[at], SILENT_GRACE)
    {
        return Some((at, "oldest silent"));
    }
    let stalled = pending
        .iter()
        .position(|p| eligible(p) && !silent(p) && older(p, STALLED_AFTER));
    stalled
        .map(|at| (at, "oldest stalled"))
        .or(oldest_silent.map(|at| (at, "oldest silent")))
        .or_else(|| pending.iter().position(eligible).map(|at| (at, "oldest")))
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("id", &self.id)
            .field("origin", &self.origin)
            .field("spoke", &self.spoke)
            .finish_non_exhaustive()
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut pending = self.admission.pending.borrow_mut();
        if let Some(at) = pending.iter().position(|p| p.id == self.id) {
            pending.remove(at);
        }
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let a = &self.admission;
        a.sessions.set(a.sessions.get() - 1);
    }
}

/// Logs a warning at most once per period, counting what it held back.
#[derive(Debug)]
pub struct Throttle {
    period: Duration,
    last: Cell<Option<Instant>>,
    held_back: Cell<u64>,
}

impl Throttle {
    /// A throttle that lets one message through per `period`.
    pub fn new(period: Duration) -> Throttle {
        Throttle {
            period,
            last: Cell::new(None),
            held_back: Cell::new(0),
        }
    }

    /// Whether a message may be logged now: `Some` with how many were
    /// held back since the last one, or `None` if one was logged within
    /// the period (this one is counted as held back).
    pub fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        if self.last.get().is_some_and(|t| now - t < self.period) {
            self.held_back.set(self.held_back.get() + 1);
            return None;
        }
        self.last.set(Some(now));
        Some(self.held_back.replace(0))
    }

    /// Messages held back since the last one let through (now none).
    pub fn take_held_back(&self) -> u64 {
        self.held_back.replace(0)
    }

    /// Logs `message` at warn level unless one was logged within the period.
    pub fn warn(&self, message: impl FnOnce() -> String) {
        match self.admit() {
            Some(0) => log::warn!("{}", message()),
            Some(held) => log::warn!("{} ({held} similar messages held back)", message()),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_budget_evicts_the_oldest_handshake_of_the_address_or_of_all() {
        let a = Admission::new(1);
        let t0 = Instant::now();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let slots: Vec<_> = (0..MAX_HANDSHAKING_PER_IP)
            .map(|_| a.handshake(ip, t0, || false))
            .collect();
        assert!(slots.iter().all(|(_, why)| why.is_none()));
        let (newest, why) = a.handshake(ip, t0, || false);
        assert!(why.unwrap().contains("pending from 10.0.0.1"));
        assert!(slots[0].0.evicted.is_closed(), "the oldest of that address");
        assert!(!slots[1].0.evicted.is_closed());
        let (_, why) = a.handshake([10, 0, 0, 2].into(), t0, || false);
        assert!(why.is_none(), "other addresses have their own budget");
        // The whole budget full: the oldest of all goes.
        let all: Vec<_> = (3..=9u8)
            .flat_map(|k| (0..MAX_HANDSHAKING_PER_IP).map(move |_| [10, 0, 0, k]))
            .map(|ip| a.handshake(ip.into(), t0, || false))
            .collect();
        assert_eq!(a.pending.borrow().len(), MAX_HANDSHAKING);
        let (tenth, why) = a.handshake([10, 0, 0, 10].into(), t0, || false);
        assert!(why.unwrap().contains("64 handshakes pending"));
        assert!(slots[1].0.evicted.is_closed());
        assert_eq!(a.pending.borrow().len(), MAX_HANDSHAKING);
        // Slots release on drop, evicted or not; sessions are budgeted.
        drop((slots, all, tenth));
        let session = a.session(newest).unwrap();
        let (second, _) = a.handshake(ip, t0, || false);
        assert!(a.session(second).unwrap_err().contains("sessions open"));
        drop(session);
        assert!(a.session(a.handshake(ip, t0, || false).0).is_ok());
        assert!(a.pending.borrow().is_empty());
    }

    #[test]
    fn a_handshake_whose_peer_spoke_outlives_silent_ones() {
        let a = Admission::new(4);
        let t0 = Instant::now();
        let ip: IpAddr = [10, 0, 0, 1].into();
        // A master connects and speaks, another's first bytes are in but
        // unread; then idle sockets keep coming.
        let (master, _) = a.handshake(ip, t0, || false);
        master.spoke();
        let (early, _) = a.handshake(ip, t0, || true);
        let idle: Vec<_> = (0..4 * MAX_HANDSHAKING_PER_IP)
            .map(|_| a.handshake(ip, t0, || false))
            .collect();
        assert!(!master.evicted.is_closed(), "the master kept its place");
        assert!(
            !early.evicted.is_closed(),
            "so did the one whose bytes wait"
        );
        let (_, why) = &idle[MAX_HANDSHAKING_PER_IP];
        assert!(why.as_ref().unwrap().contains("the oldest silent evicted"));
        // With every pending handshake speaking, the oldest goes after all.
        for (slot, _) in &idle {
            slot.spoke();
        }
        let (_, why) = a.handshake(ip, t0, || false);
        assert!(master.evicted.is_closed());
        assert!(why.unwrap().ends_with(": the oldest evicted"));
    }

    #[test]
    fn a_master_whose_first_bytes_are_on_their_way_outlives_stalled_handshakes() {
        let a = Admission::new(4);
        let t0 = Instant::now();
        let later = t0 + STALLED_AFTER;
        let ip: IpAddr = [10, 0, 0, 1].into();
        // Seven peers sent their preamble and stalled; one idle socket.
        let stalled: Vec<_> = (0..MAX_HANDSHAKING_PER_IP - 1)
            .map(|_| a.handshake(ip, t0, || false))
            .collect();
        for (slot, _) in &stalled {
            slot.spoke();
        }
        let (idle, _) = a.handshake(ip, t0, || false);
        // An idle socket past the grace goes first...
        let (master, why) = a.handshake(ip, later, || false);
        assert!(idle.evicted.is_closed());
        assert!(why.unwrap().ends_with("the oldest silent evicted"));
        // ...then, the master being silent for a moment only, a stalled one.
        let (_, why) = a.handshake(ip, later, || false);
        assert!(!master.evicted.is_closed(), "the master kept its place");
        assert!(stalled[0].0.evicted.is_closed());
        assert!(why.unwrap().ends_with("the oldest stalled evicted"));
        // A handshake that spoke but is young is not taken for stalled.
        let a = Admission::new(4);
        let talking: Vec<_> = (0..MAX_HANDSHAKING_PER_IP)
            .map(|_| a.handshake(ip, t0, || false))
            .collect();
        talking[0].0.spoke();
        let (_, why) = a.handshake(ip, t0 + SILENT_GRACE, || false);
        assert!(!talking[0].0.evicted.is_closed());
        assert!(talking[1].0.evicted.is_closed());
        assert!(why.unwrap().ends_with("the oldest silent evicted"));
    }

    #[test]
    fn ipv6_peers_share_the_budget_of_their_64() {
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            Origin::of(v6("2001:db8::1")),
            Origin::of(v6("2001:db8::ffff:1"))
        );
        assert_ne!(
            Origin::of(v6("2001:db8::1")),
            Origin::of(v6("2001:db8:0:1::1"))
        );
        assert_eq!(
            Origin::of(v6("::ffff:10.0.0.1")),
            Origin::of([10, 0, 0, 1].into())
        );
        assert_ne!(Origin::of(v6("::1")), Origin::of([0, 0, 0, 1].into()));
    }
}
