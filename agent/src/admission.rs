//! Admission control: how many connections an agent lets in, and how loudly
//! it complains about the ones it turns away.
//!
//! Peers that have not authenticated draw on a small budget of their own
//! ([`MAX_HANDSHAKING`] in all, [`MAX_HANDSHAKING_PER_IP`] per address), so
//! idle or hostile sockets cannot use up the slots of authenticated
//! masters, and refusals are logged at most once a second.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Handshakes in progress at once.
pub const MAX_HANDSHAKING: usize = 64;
/// Handshakes in progress at once from one address.
pub const MAX_HANDSHAKING_PER_IP: usize = 8;

/// Counters of one agent's connections (single-threaded: the server's
/// executor).
#[derive(Debug)]
pub struct Admission {
    max_sessions: usize,
    handshaking: Cell<usize>,
    per_ip: RefCell<HashMap<IpAddr, usize>>,
    sessions: Cell<usize>,
    /// Refusals and failed handshakes, logged at most once a second.
    pub complaints: Throttle,
}

/// A handshake's claim on the budget; released on drop.
#[derive(Debug)]
pub struct HandshakeSlot {
    admission: Rc<Admission>,
    ip: IpAddr,
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
            handshaking: Cell::new(0),
            per_ip: RefCell::new(HashMap::new()),
            sessions: Cell::new(0),
            complaints: Throttle::new(Duration::from_secs(1)),
        })
    }

    /// Lets a new connection from `ip` start its handshake, or says why not.
    pub fn handshake(self: &Rc<Self>, ip: IpAddr) -> Result<HandshakeSlot, String> {
        let from_ip = self.per_ip.borrow().get(&ip).copied().unwrap_or(0);
        if self.handshaking.get() >= MAX_HANDSHAKING {
            return Err(format!(
                "{MAX_HANDSHAKING} handshakes in progress (the limit)"
            ));
        }
        if from_ip >= MAX_HANDSHAKING_PER_IP {
            return Err(format!(
                "{from_ip} handshakes in progress from {ip} (the limit per address)"
            ));
        }
        self.handshaking.set(self.handshaking.get() + 1);
        *self.per_ip.borrow_mut().entry(ip).or_default() += 1;
        Ok(HandshakeSlot {
            admission: self.clone(),
            ip,
        })
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

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let a = &self.admission;
        a.handshaking.set(a.handshaking.get() - 1);
        let mut per_ip = a.per_ip.borrow_mut();
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
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

    /// Logs `message` at warn level unless one was logged within the period.
    pub fn warn(&self, message: impl FnOnce() -> String) {
        let now = Instant::now();
        if self.last.get().is_some_and(|t| now - t < self.period) {
            self.held_back.set(self.held_back.get() + 1);
            return;
        }
        let held = self.held_back.replace(0);
        self.last.set(Some(now));
        if held > 0 {
            log::warn!("{} ({held} similar messages held back)", message());
        } else {
            log::warn!("{}", message());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_are_budgeted_per_address_and_released() {
        let a = Admission::new(1);
        let ip: IpAddr = [10, 0, 0, 1].into();
        let slots: Vec<_> = (0..MAX_HANDSHAKING_PER_IP)
            .map(|_| a.handshake(ip).unwrap())
            .collect();
        assert!(a.handshake(ip).unwrap_err().contains("per address"));
        assert!(
            a.handshake([10, 0, 0, 2].into()).is_ok(),
            "other addresses still get in"
        );
        drop(slots);
        let slot = a.handshake(ip).unwrap();
        let session = a.session(slot).unwrap();
        let second = a.handshake(ip).unwrap();
        assert!(a.session(second).unwrap_err().contains("sessions open"));
        drop(session);
        assert!(a.session(a.handshake(ip).unwrap()).is_ok());
    }
}
