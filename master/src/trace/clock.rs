//! Putting agents' clocks on the master's time base.
//!
//! NTP-style: the master sends a probe at `t0` (its clock), the agent reads
//! its clock `a`, the reply arrives at `t3`. If both legs took equally long,
//! the agent's clock is ahead by `a - (t0 + t3) / 2`, with an error of at
//! most half the round trip; so of several probes the one with the
//! smallest round trip is kept. Probes before and after a job give a
//! second estimate and so the drift between the clocks, when the job is
//! long enough for drift to show well above the estimates' error.
//!
//! Then the recorded messages themselves bound the offsets: a message is
//! received after it is sent. Those bounds are difference constraints
//! between nodes' corrections, solved exactly (shortest paths); the agents
//! are fixed one after the other, each at the value of its feasible
//! interval closest to zero ([`correct`]: greedy, so the result can depend
//! on the agents' order, but every message ends up causal).

use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Probes per clock estimate.
pub const PROBES: usize = 8;

/// Estimates closer together than this give no drift estimate: their
/// errors would dominate.
const MIN_DRIFT_BASE_NS: i64 = 2_000_000_000;

/// Drift beyond this (parts per million) is taken for an estimation error.
const MAX_DRIFT_PPM: f64 = 500.0;

/// A drift is believed only when it is this many times its error bound
/// (the two estimates' half round trips over the time between them).
const DRIFT_SIGNIFICANCE: f64 = 4.0;

/// The master's trace clock: nanoseconds since the trace began.
#[derive(Debug, Clone, Copy)]
pub struct MasterClock {
    epoch: Instant,
}

impl MasterClock {
    /// A clock reading 0 now.
    pub fn start() -> MasterClock {
        MasterClock {
            epoch: Instant::now(),
        }
    }

    /// Its reading at `t`, nanoseconds.
    pub fn at(&self, t: Instant) -> i64 {
        let d = t.saturating_duration_since(self.epoch).as_nanos();
        i64::try_from(d).unwrap_or(i64::MAX)
    }

    /// Its reading now.
    pub fn now_ns(&self) -> i64 {
        self.at(Instant::now())
    }
}

/// One probe: master clock when sent and when answered, agent clock between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockSample {
    /// Master clock, probe sent.
    pub sent_ns: i64,
    /// Agent clock, probe handled.
    pub agent_ns: i64,
    /// Master clock, reading received.
    pub back_ns: i64,
}

impl ClockSample {
    /// Round trip, nanoseconds.
    pub fn rtt_ns(&self) -> i64 {
        self.back_ns.saturating_sub(self.sent_ns)
    }

    /// How far the agent's clock is ahead of the master's (any readings:
    /// computed wide, so a hostile agent's cannot overflow).
    pub fn offset_ns(&self) -> f64 {
        let mid = (i128::from(self.sent_ns) + i128::from(self.back_ns)) as f64 / 2.0;
        (i128::from(self.agent_ns) as f64) - mid
    }
}

/// The best estimate of several probes: the one with the smallest round
/// trip (probes whose answer came back before they left are ignored).
pub fn best(samples: &[ClockSample]) -> Option<ClockSample> {
    samples
        .iter()
        .copied()
        .filter(|s| s.back_ns >= s.sent_ns)
        .min_by_key(ClockSample::rtt_ns)
}

/// How an agent's clock maps onto the master's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClockModel {
    /// Agent clock ahead of the master's at master time `at_ns`, ns.
    pub offset_ns: f64,
    /// Master time of that estimate.
    pub at_ns: f64,
    /// Agent clock rate minus master clock rate (0.000_01 = 10 ppm).
    pub drift: f64,
    /// Round trip of the best probe, ns: the estimate's error is at most
    /// half of it.
    pub rtt_ns: i64,
    /// Shift added after the NTP estimate so that every message is received
    /// after it is sent, ns (positive: the agent's events move earlier).
    pub correction_ns: f64,
}

impl ClockModel {
    /// A model from probes before the job and, if any, after it.
    pub fn estimate(before: &[ClockSample], after: &[ClockSample]) -> Option<ClockModel> {
        let b = best(before).or_else(|| best(after))?;
        let mid = |s: &ClockSample| (s.sent_ns + s.back_ns) as f64 / 2.0;
        let mut model = ClockModel {
            offset_ns: b.offset_ns(),
            at_ns: mid(&b),
            drift: 0.0,
            rtt_ns: b.rtt_ns(),
            correction_ns: 0.0,
        };
        if let Some(a) = best(after).filter(|a| a != &b) {
            let base = mid(&a) - mid(&b);
            let drift = (a.offset_ns() - b.offset_ns()) / base;
            let error = (a.rtt_ns() as f64 + b.rtt_ns() as f64) / 2.0 / base;
            if base >= MIN_DRIFT_BASE_NS as f64
                && drift.abs() * 1e6 <= MAX_DRIFT_PPM
                && drift.abs() >= DRIFT_SIGNIFICANCE * error
            {
                model.drift = drift;
            } else if a.rtt_ns() < b.rtt_ns() {
                // No drift to speak of: the better of the two estimates.
                model.offset_ns = a.offset_ns();
                model.at_ns = mid(&a);
                model.rtt_ns = a.rtt_ns();
            }
        }
        Some(model)
    }

    /// The master time of agent clock reading `agent_ns`: the NTP model
    /// inverted, then the correction.
    pub fn to_master(&self, agent_ns: i64) -> f64 {
        // agent = master + offset + drift (master - at)
        let a = agent_ns as f64;
        (a - self.offset_ns + self.drift * self.at_ns) / (1.0 + self.drift) - self.correction_ns
    }
}

/// A message between two nodes (0 is the master), already on the master's
/// time base: sent at `sent`, received at `received` (ns).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Message {
    /// Sending node.
    pub from: usize,
    /// Receiving node.
    pub to: usize,
    /// When it was sent.
    pub sent: f64,
    /// When it was received.
    pub received: f64,
}

/// The smallest corrections `c` (node 0, the master, stays at 0) such that
/// every message, with each node's times moved by `-c[node]`, is received
/// no earlier than it was sent. Nodes are fixed one after the other, each
/// at the value of its feasible interval closest to 0 given the nodes
/// fixed before. `None` if the messages contradict each other (no
/// correction satisfies all of them; clocks that drift in a way the model
/// misses).
pub fn correct(nodes: usize, messages: &[Message]) -> Option<Vec<f64>> {
    // Constraint for a message p -> q: c[q] - c[p] <= received - sent.
    let mut d = vec![vec![f64::INFINITY; nodes]; nodes];
    for (i, row) in d.iter_mut().enumerate() {
        row[i] = 0.0;
    }
    for m in messages {
        if m.from < nodes && m.to < nodes && m.from != m.to {
            let w = m.received - m.sent;
            let e = &mut d[m.from][m.to];
            *e = e.min(w);
        }
    }
    let close = |d: &mut Vec<Vec<f64>>| -> bool {
        for k in 0..nodes {
            for i in 0..nodes {
                for j in 0..nodes {
                    let via = d[i][k] + d[k][j];
                    if via < d[i][j] {
                        d[i][j] = via;
                    }
                }
            }
        }
        (0..nodes).all(|i| d[i][i] >= -1e-6)
    };
    if !close(&mut d) {
        return None;
    }
    let mut c = vec![0.0; nodes];
    for i in 1..nodes {
        // c[i] - c[0] <= d[0][i] and c[0] - c[i] <= d[i][0].
        let (lo, hi) = (-d[i][0], d[0][i]);
        let v = 0.0f64.clamp(lo.min(hi), hi.max(lo));
        c[i] = v;
        d[0][i] = d[0][i].min(v);
        d[i][0] = d[i][0].min(-v);
        if !close(&mut d) {
            return None;
        }
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t0: i64, up: i64, down: i64, offset: i64) -> ClockSample {
        ClockSample {
            sent_ns: t0,
            agent_ns: t0 + up + offset,
            back_ns: t0 + up + down,
        }
    }

    #[test]
    fn the_quickest_probe_wins_and_bounds_the_error() {
        let offset = 5_000_000_000;
        let samples = [
            sample(0, 400_000, 30_000, offset),
            sample(1_000_000, 20_000, 22_000, offset),
            sample(2_000_000, 25_000, 900_000, offset),
        ];
        let m = ClockModel::estimate(&samples, &[]).unwrap();
        assert_eq!(m.rtt_ns, 42_000);
        assert!((m.offset_ns - offset as f64).abs() <= 21_000.0, "{m:?}");
        let agent_time = 1_000_000 + 20_000 + offset;
        let master = m.to_master(agent_time);
        assert!((master - 1_020_000.0).abs() <= 21_000.0, "{master}");
    }

    #[test]
    fn drift_is_estimated_over_a_long_enough_job() {
        // The agent's clock runs 50 ppm fast and starts 1 s ahead.
        let at = |t: i64| 1_000_000_000 + t + t / 20_000;
        let probe = |t: i64| ClockSample {
            sent_ns: t,
            agent_ns: at(t + 10_000),
            back_ns: t + 20_000,
        };
        let mut m = ClockModel::estimate(&[probe(0)], &[probe(10_000_000_000)]).unwrap();
        assert!((m.drift * 1e6 - 50.0).abs() < 0.1, "{}", m.drift * 1e6);
        let t = 7_000_000_000;
        assert!((m.to_master(at(t)) - t as f64).abs() < 10.0);
        // A correction moves every mapped time by itself, drift or not.
        m.correction_ns = 1_500.0;
        assert!((m.to_master(at(t)) - (t as f64 - 1_500.0)).abs() < 10.0);
        // Noise: 3 ppm between estimates with 40 µs round trips over 2 s is
        // within their error, so no drift is believed.
        let noisy = |t: i64, extra: i64| ClockSample {
            sent_ns: t,
            agent_ns: t + 20_000 + extra,
            back_ns: t + 40_000,
        };
        let m = ClockModel::estimate(&[noisy(0, 0)], &[noisy(2_000_000_000, 6_000)]).unwrap();
        assert_eq!(m.drift, 0.0);
        // Hostile readings do not overflow.
        let wild = ClockSample {
            sent_ns: 0,
            agent_ns: i64::MIN,
            back_ns: 10,
        };
        assert!(ClockModel::estimate(&[wild], &[]).unwrap().offset_ns < -9e18);
        // Too short a job: no drift, the better estimate.
        let m = ClockModel::estimate(&[probe(0)], &[probe(100_000_000)]).unwrap();
        assert_eq!(m.drift, 0.0);
    }

    #[test]
    fn corrections_make_every_message_causal_and_stay_small() {
        // Node 1's estimate is 30 µs late: a message from the master at 100
        // appears received at 90; one back, sent at 200, received at 260.
        let msgs = [
            Message {
                from: 0,
                to: 1,
                sent: 100.0,
                received: 90.0,
            },
            Message {
                from: 1,
                to: 0,
                sent: 200.0,
                received: 260.0,
            },
            Message {
                from: 1,
                to: 2,
                sent: 300.0,
                received: 305.0,
            },
        ];
        let c = correct(3, &msgs).unwrap();
        assert_eq!(c[0], 0.0);
        // c1 <= -10 (first message), c1 >= -60 (second): the closest to 0.
        assert_eq!(c[1], -10.0);
        for m in msgs {
            assert!(
                m.received - c[m.to] >= m.sent - c[m.from] - 1e-9,
                "{m:?} {c:?}"
            );
        }
        // Contradictions are reported, not papered over.
        let bad = [
            Message {
                from: 0,
                to: 1,
                sent: 100.0,
                received: 50.0,
            },
            Message {
                from: 1,
                to: 0,
                sent: 200.0,
                received: 100.0,
            },
        ];
        assert_eq!(correct(2, &bad), None);
        assert_eq!(correct(2, &[]), Some(vec![0.0, 0.0]));
    }
}
