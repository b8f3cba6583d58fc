//! The manager's policy, without I/O: from what the stages did over a
//! window, which degrees to run next — and when to stop trying.
//!
//! It plans with a model and checks the model against the job:
//! - A stage with `d` worker slots whose tasks hold a slot `R` seconds can
//!   serve `d / R` items per second (its capacity). The bottleneck is the
//!   stage of least capacity; the pool's worker threads allow at most
//!   `threads / ΣTs` items per second (its ceiling, from the agents'
//!   kernel times).
//! - To go faster it gives slots to the stages below the rate it aims at
//!   (water-filling: one slot at a time to the stage of least capacity),
//!   within the pool's task credits — taking them, when every credit is in
//!   use, from stages that stay above that rate without them. It aims at
//!   the next stage's capacity ("as fast as the pool allows") or at the
//!   contract plus [`HEADROOM`].
//! - Every change is checked in the next window: growth that did not raise
//!   the throughput by [`MIN_GAIN`] is undone and the manager stops
//!   growing (the pool gives no more, whatever the model said); a release
//!   that cost throughput below the goal is undone and releases stop.
//! - When the contract is met with room to spare it releases slots.
//! - At most a budget of changes per job, so it cannot thrash; it plans
//!   again only if the throughput falls well below what it settled at.
//!   A hold (it stops acting, and says why) is said once until something
//!   changes.

use super::metrics::StageWindow;
use std::fmt::Write as _;
use std::time::Duration;

/// What the manager keeps the job at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Contract {
    /// As many items per second as the pool allows.
    Fastest,
    /// This many items per second: the feeder is paced to it, and the
    /// stages get the slots they need for it, no more.
    Throughput(f64),
}

impl std::fmt::Display for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Contract::Fastest => f.write_str("as fast as the pool allows"),
            Contract::Throughput(t) => write!(f, "{t} items/s"),
        }
    }
}

/// The live part of the pool, as the manager sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSize {
    /// Worker threads of the live agents (a kernel, computing or
    /// sleeping, holds one).
    pub threads: usize,
    /// Task credits of the live agents: tasks out at once, at most.
    pub slots: usize,
}

/// One look at the running job.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Since the job started.
    pub at: Duration,
    /// The window's length, seconds.
    pub secs: f64,
    /// Items per second out of the last stage over the window.
    pub throughput: f64,
    /// Each stage over the same window.
    pub stages: Vec<StageWindow>,
    /// The pool now.
    pub pool: PoolSize,
}

/// What a decision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Gave slots to stages below the rate aimed at.
    Grow,
    /// Took slots from stages with capacity to spare.
    Release,
    /// Undid the previous change, which did not pay.
    Revert,
    /// Changed nothing, and says why it stops acting.
    Hold,
}

/// A decision: what the manager saw and what it did.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// When, since the job started.
    pub at: Duration,
    /// What it did.
    pub action: Action,
    /// What it saw (the throughput, the bottleneck and its figures).
    pub saw: String,
    /// What it did, in words.
    pub did: String,
    /// The degrees from now on, per stage.
    pub degrees: Vec<usize>,
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "at {:.1}s saw {}; {}",
            self.at.as_secs_f64(),
            self.saw,
            self.did
        )
    }
}

/// Growth must raise the throughput by this fraction to be kept.
pub const MIN_GAIN: f64 = 0.05;
/// A contract rate is aimed at with this much to spare.
pub const HEADROOM: f64 = 0.10;
/// A contract counts as met at this fraction of its rate (give or take
/// one item of the window: a paced feeder's count is whole).
pub const MET: f64 = 0.97;
/// Changes a job may make (reverts included).
pub const MAX_CHANGES: usize = 12;
/// A window needs this many results from every stage to be judged.
pub const MIN_SERVED: u64 = 4;
/// And this long, seconds.
pub const MIN_WINDOW: f64 = 0.7;
/// The pool counts as busy at this fraction of its ceiling.
const AT_CEILING: f64 = 0.95;
/// A stage has capacity to spare above this multiple of the rate needed.
const SPARE: f64 = 1.5;
/// Every stage has capacity to spare above this multiple of the
/// throughput: the job is held back elsewhere.
const INPUT_BOUND: f64 = 1.25;
/// Settled throughput may fall to this fraction before planning again.
const DRIFT: f64 = 0.75;

#[derive(Debug, Clone)]
struct Pending {
    before: Vec<usize>,
    x_before: f64,
    grew: bool,
}

/// The policy's state for one job.
#[derive(Debug, Clone)]
pub struct Manager {
    contract: Contract,
    names: Vec<String>,
    degrees: Vec<usize>,
    pending: Option<Pending>,
    /// Why it stopped growing, and the throughput it had then.
    saturated: Option<(String, f64)>,
    no_release: bool,
    changes: usize,
    max_changes: usize,
    said_budget: bool,
    /// It said the stages are not what limits the job (said again only
    /// after a change).
    said_input_bound: bool,
}

/// Whether `x` items/s over `secs` meets `goal` (one item of slack).
pub fn meets(x: f64, secs: f64, goal: f64) -> bool {
    x + 1.0 / secs.max(1e-9) >= goal * MET
}

impl Manager {
    /// A manager for stages named `names` (for its messages) starting at
    /// `initial` degrees, allowed `max_changes` changes.
    pub fn new(
        contract: Contract,
        names: Vec<String>,
        initial: Vec<usize>,
        max_changes: usize,
    ) -> Manager {
        Manager {
            contract,
            names,
            degrees: initial.into_iter().map(|d| d.max(1)).collect(),
            pending: None,
            saturated: None,
            no_release: false,
            changes: 0,
            max_changes,
            said_budget: false,
            said_input_bound: false,
        }
    }

    /// The degrees it runs now.
    pub fn degrees(&self) -> &[usize] {
        &self.degrees
    }

    /// Changes made so far (reverts included).
    pub fn changes(&self) -> usize {
        self.changes
    }

    /// Why it stopped giving slots, if it did.
    pub fn saturated(&self) -> Option<&str> {
        self.saturated.as_ref().map(|(why, _)| why.as_str())
    }

    /// The contract's rate (`None`: as fast as possible).
    fn goal(&self) -> Option<f64> {
        match self.contract {
            Contract::Fastest => None,
            Contract::Throughput(t) => Some(t),
        }
    }

    /// Looks at a window of the job; returns what it decided, if anything
    /// (degrees changed, or a hold saying why it stops acting).
    pub fn observe(&mut self, obs: &Observation) -> Option<Decision> {
        let judged = obs.stages.len() == self.degrees.len()
            && obs.secs >= MIN_WINDOW
            && obs.throughput.is_finite()
            && obs
                .stages
                .iter()
                .all(|s| s.served >= MIN_SERVED && s.capacity.is_some_and(f64::is_finite));
        if !judged {
            return None;
        }
        let x = obs.throughput;
        let view = View::of(obs);
        let saw = self.describe(obs, &view);
        if let Some(p) = self.pending.take() {
            if p.grew && x < p.x_before * (1.0 + MIN_GAIN) {
                let why = format!(
                    "more slots ({}) did not raise the throughput ({:.1} → {x:.1} items/s): \
                     the pool gives no more",
                    list(&self.degrees),
                    p.x_before
                );
                self.saturated = Some((why.clone(), p.x_before));
                return Some(self.change(obs, Action::Revert, saw, p.before, why));
            }
            let below = self.goal().is_none_or(|g| !meets(x, obs.secs, g));
            if !p.grew && below && x < p.x_before * (1.0 - MIN_GAIN) {
                let why = format!(
                    "releasing slots cost throughput ({:.1} → {x:.1} items/s): releases stop",
                    p.x_before
                );
                self.no_release = true;
                return Some(self.change(obs, Action::Revert, saw, p.before, why));
            }
            if let (true, Some((_, at))) = (p.grew, &mut self.saturated) {
                // A kept change is the new reference for drift.
                *at = x;
            }
        }
        if self.changes >= self.max_changes {
            if !std::mem::replace(&mut self.said_budget, true) {
                let why = format!(
                    "holds: the {} changes a job may make are spent",
                    self.max_changes
                );
                return Some(self.hold(obs, saw, why));
            }
            return None;
        }
        match self.goal() {
            Some(g) if meets(x, obs.secs, g) => self.release(obs, &view, g * (1.0 + HEADROOM), saw),
            _ => self.grow(obs, &view, saw),
        }
    }

    fn grow(&mut self, obs: &Observation, view: &View, saw: String) -> Option<Decision> {
        let x = obs.throughput;
        let mut replan = String::new();
        if let Some((_, settled)) = &self.saturated {
            if x >= settled * DRIFT {
                return None;
            }
            replan =
                format!("the throughput fell from {settled:.1} to {x:.1} items/s: plans again; ");
            self.saturated = None;
        }
        if let Some(c) = view.ceiling
            && x >= c * AT_CEILING
        {
            let why = format!(
                "the pool's {} worker threads are busy: kernels take {:.1} ms per item in \
                 all, which allows {c:.1} items/s",
                obs.pool.threads,
                1000.0 * obs.pool.threads as f64 / c
            );
            self.saturated = Some((why.clone(), x));
            return Some(self.hold(obs, saw, format!("{replan}holds: {why}")));
        }
        let least = view.caps[view.bottleneck];
        let paced = self.goal().is_some_and(|g| x >= g * 0.9);
        if least > x * INPUT_BOUND && !paced {
            // Every stage could go faster: what holds the job back is not
            // a degree (the input, or the master).
            if !std::mem::replace(&mut self.said_input_bound, true) {
                let why = format!(
                    "holds: every stage has capacity to spare (the least, {least:.1} items/s, \
                     against {x:.1} done): the input or the master limits the job, not a degree"
                );
                return Some(self.hold(obs, saw, why));
            }
            return None;
        }
        let aim = match self.goal() {
            Some(g) => g * (1.0 + HEADROOM),
            None => {
                // The next stage's capacity; for one stage, double it
                // (or the ceiling, if lower).
                let next = view
                    .caps
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| i != view.bottleneck)
                    .map(|(_, &c)| c)
                    .fold(f64::INFINITY, f64::min);
                let aim = if next.is_finite() { next } else { 2.0 * least };
                view.ceiling
                    .map_or(aim, |c| aim.min(c))
                    .max(least * (1.0 + MIN_GAIN))
            }
        };
        let used: usize = self.degrees.iter().sum();
        let mut free = obs.pool.slots.saturating_sub(used);
        let cap = |i: usize, d: usize| d as f64 / view.response[i];
        let mut next = self.degrees.clone();
        let full = free == 0;
        if full {
            // Every credit is in use: take slots from stages that stay at
            // the aim without them.
            for (i, d) in next.iter_mut().enumerate() {
                while *d > 1 && cap(i, *d - 1) >= aim {
                    *d -= 1;
                    free += 1;
                }
            }
        }
        // Water-filling: a slot at a time to the stage of least capacity,
        // while it is below the aim.
        while free > 0 {
            let caps: Vec<f64> = (0..next.len()).map(|i| cap(i, next[i])).collect();
            let i = argmin(&caps);
            if caps[i] >= aim {
                break;
            }
            next[i] += 1;
            free -= 1;
        }
        let expect = (0..next.len())
            .map(|i| cap(i, next[i]))
            .fold(f64::INFINITY, f64::min)
            .min(view.ceiling.unwrap_or(f64::INFINITY));
        if next == self.degrees || expect < least * (1.0 + MIN_GAIN) {
            if !full && next == self.degrees {
                // The stages can do the aim: the shortfall is the window's.
                return None;
            }
            let why = if full {
                format!(
                    "all {} task credits of the pool are in use by the stages",
                    obs.pool.slots
                )
            } else {
                format!(
                    "the {} free task credits cannot raise the bottleneck's capacity by \
                     {:.0}%",
                    obs.pool.slots.saturating_sub(used),
                    MIN_GAIN * 100.0
                )
            };
            self.saturated = Some((why.clone(), x));
            return Some(self.hold(obs, saw, format!("{replan}holds: {why}")));
        }
        let mut did = format!(
            "{replan}gives slots: degrees {} → {} (expects {expect:.1} items/s",
            list(&self.degrees),
            list(&next),
        );
        if let (Some(g), Some(c)) = (self.goal(), view.ceiling)
            && c < g
        {
            let _ = write!(
                did,
                "; the contract's {g} items/s is above the pool's ceiling"
            );
        }
        did.push(')');
        self.pending = Some(Pending {
            before: self.degrees.clone(),
            x_before: x,
            grew: true,
        });
        Some(self.change(obs, Action::Grow, saw, next, did))
    }

    fn release(
        &mut self,
        obs: &Observation,
        view: &View,
        need: f64,
        saw: String,
    ) -> Option<Decision> {
        if self.no_release {
            return None;
        }
        let mut next = self.degrees.clone();
        for (i, d) in next.iter_mut().enumerate() {
            if *d > 1 && view.caps[i] > need * SPARE {
                *d = ((need * view.response[i]).ceil() as usize).clamp(1, *d);
            }
        }
        if next == self.degrees {
            return None;
        }
        let did = format!(
            "releases slots: degrees {} → {} ({need:.1} items/s needs no more)",
            list(&self.degrees),
            list(&next)
        );
        self.pending = Some(Pending {
            before: self.degrees.clone(),
            x_before: obs.throughput,
            grew: false,
        });
        Some(self.change(obs, Action::Release, saw, next, did))
    }

    fn hold(&mut self, obs: &Observation, saw: String, did: String) -> Decision {
        Decision {
            at: obs.at,
            action: Action::Hold,
            saw,
            did,
            degrees: self.degrees.clone(),
        }
    }

    fn change(
        &mut self,
        obs: &Observation,
        action: Action,
        saw: String,
        degrees: Vec<usize>,
        did: String,
    ) -> Decision {
        self.changes += 1;
        self.said_input_bound = false;
        let did = match action {
            Action::Revert => format!(
                "undoes: degrees {} → {}: {did}",
                list(&self.degrees),
                list(&degrees)
            ),
            _ => did,
        };
        self.degrees = degrees.clone();
        Decision {
            at: obs.at,
            action,
            saw,
            did,
            degrees,
        }
    }

    /// The throughput and the bottleneck's figures.
    fn describe(&self, obs: &Observation, view: &View) -> String {
        let b = view.bottleneck;
        let s = &obs.stages[b];
        let ms = |v| super::metrics::ms(v, 1);
        format!(
            "{:.1} items/s; bottleneck stage {} ({}) at degree {}: Ts {}, Ta {}, rho {}, \
             queue {}, capacity {:.1} items/s",
            obs.throughput,
            b + 1,
            self.names.get(b).map_or("?", String::as_str),
            s.degree,
            ms(s.service),
            ms(s.interarrival),
            s.rho.map_or("?".into(), |r| format!("{r:.2}")),
            s.queue,
            view.caps[b]
        )
    }
}

/// What a judged window says, computed once.
struct View {
    /// Each stage's capacity, items/s.
    caps: Vec<f64>,
    /// Each stage's slot time, seconds.
    response: Vec<f64>,
    /// The stage of least capacity.
    bottleneck: usize,
    /// Items per second the pool's threads allow: threads / ΣTs (if every
    /// stage reported kernel times).
    ceiling: Option<f64>,
}

impl View {
    fn of(obs: &Observation) -> View {
        let caps: Vec<f64> = obs
            .stages
            .iter()
            .map(|s| s.capacity.unwrap_or(0.0))
            .collect();
        let total: Option<f64> = obs.stages.iter().map(|s| s.service).sum();
        View {
            bottleneck: argmin(&caps),
            caps,
            response: obs
                .stages
                .iter()
                .map(|s| s.response.unwrap_or(f64::INFINITY))
                .collect(),
            ceiling: total
                .filter(|&t| t > 0.0)
                .map(|t| obs.pool.threads as f64 / t),
        }
    }
}

fn argmin(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// `1,4,1`.
pub fn list(degrees: &[usize]) -> String {
    degrees
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;
