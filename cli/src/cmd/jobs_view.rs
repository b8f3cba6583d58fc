//! The jobs panel of `skelpi top`: the jobs running on this machine (their
//! status files, see [`skelpi::watch`]), their throughput poll after poll
//! and each stage's Ts, Ta, rho and queue over the last poll.

use skelpi::runtime::autonomic::metrics::{Totals, window};
use skelpi::watch::{JobStatus, StageStatus};
use std::collections::VecDeque;

/// Seconds without a new status after which a job is said to be silent
/// (it publishes every half second).
const STALE_AFTER_S: f64 = 3.0;

/// How many polls of throughput a job keeps (its sparkline).
pub const HISTORY: usize = 120;

/// One job as top sees it: its last status, its results and stages at
/// the reading before, and its throughput.
#[derive(Debug, Clone)]
pub struct JobView {
    /// Its last status.
    pub now: JobStatus,
    /// Results at the status before, and when (ms since the epoch).
    results_before: Option<(u64, u64)>,
    /// The stages' totals at their reading before, and when.
    stages_before: Option<(Vec<StageStatus>, u64)>,
    /// Results per second over each poll, oldest first.
    pub rates: VecDeque<u64>,
}

/// One stage over the last poll.
#[derive(Debug, Clone, PartialEq)]
pub struct StageRow {
    /// Its kernel, and its agent when it has one.
    pub name: String,
    /// Items it finished, all told.
    pub served: u64,
    /// Ts: mean kernel time per item, seconds.
    pub ts: Option<f64>,
    /// Ta: mean time between arrivals, seconds.
    pub ta: Option<f64>,
    /// Ts / (degree × Ta): above 1, items arrive faster than it serves
    /// them and its queue grows.
    pub rho: Option<f64>,
    /// Items waiting for a free worker (for a streamed stage: in its
    /// inbox, the one running included).
    pub queue: u64,
}

impl StageRow {
    /// Its figures as cells: served, Ts, Ta, rho, queue ("-": unknown).
    pub fn cells(&self) -> [String; 5] {
        [
            self.served.to_string(),
            ms(self.ts),
            ms(self.ta),
            self.rho.map_or("-".into(), |r| format!("{r:.2}")),
            self.queue.to_string(),
        ]
    }
}

impl JobView {
    fn new(now: JobStatus) -> JobView {
        let mut view = JobView {
            now,
            results_before: None,
            stages_before: None,
            rates: VecDeque::new(),
        };
        view.rates.push_back(view.rate().round() as u64);
        view
    }

    fn same_job(&self, other: &JobStatus) -> bool {
        (self.now.pid, self.now.started_unix_ms) == (other.pid, other.started_unix_ms)
    }

    /// Takes a newer status (an unchanged file changes nothing; stages
    /// not read again since keep their window).
    fn advance(&mut self, now: JobStatus) {
        if now.updated_unix_ms <= self.now.updated_unix_ms {
            return;
        }
        let before = std::mem::replace(&mut self.now, now);
        self.results_before = Some((before.results, before.updated_unix_ms));
        if self.now.stages_unix_ms > before.stages_unix_ms {
            self.stages_before = Some((before.stages, before.stages_unix_ms));
        }
        if self.rates.len() == HISTORY {
            self.rates.pop_front();
        }
        self.rates.push_back(self.rate().round() as u64);
    }

    /// Results per second over the last poll (since the start at first).
    pub fn rate(&self) -> f64 {
        let (then, since) = self.results_before.unwrap_or((0, self.now.started_unix_ms));
        let secs = self.now.updated_unix_ms.saturating_sub(since) as f64 / 1e3;
        let done = self.now.results.saturating_sub(then);
        if secs > 0.0 { done as f64 / secs } else { 0.0 }
    }

    /// Each stage between its last two readings (since the start at
    /// first; a stage whose counts went back, as a restarted pipeline's,
    /// since its new start).
    pub fn stages(&self) -> Vec<StageRow> {
        let (before, since) = match &self.stages_before {
            Some((stages, at)) => (&stages[..], *at),
            None => (&[][..], self.now.started_unix_ms),
        };
        let secs = self.now.stages_unix_ms.saturating_sub(since) as f64 / 1e3;
        self.now
            .stages
            .iter()
            .enumerate()
            .map(|(i, stage)| {
                let now = stage.totals();
                let then = before
                    .get(i)
                    .filter(|b| b.name == stage.name && !went_back(b, stage))
                    .map_or_else(Totals::default, StageStatus::totals);
                let w = window(&then, &now, secs, stage.degree);
                StageRow {
                    name: stage.name.clone(),
                    served: stage.served,
                    ts: w.service,
                    ta: w.interarrival,
                    rho: w.rho,
                    queue: now.queue(),
                }
            })
            .collect()
    }

    /// One line: its name and tree, how it runs, results so far and rate,
    /// agents lost and tasks sent again.
    pub fn summary(&self) -> String {
        let j = &self.now;
        let of = j.inputs.map_or(String::new(), |n| format!("/{n}"));
        let mut line = format!(
            "{} (pid {}): {} {}, {}{of} results, {:.0}/s",
            j.name,
            j.pid,
            j.execution,
            j.skeleton,
            j.results,
            self.rate()
        );
        if !j.lost.is_empty() {
            line += &format!(", lost: {}", j.lost.join(", "));
        }
        if j.resent > 0 {
            line += &format!(", {} tasks sent again", j.resent);
        }
        let silent = self.silent_s();
        if silent > STALE_AFTER_S {
            line += &format!(", no news for {silent:.0} s (its master is stopped or stuck?)");
        }
        line
    }

    /// Seconds since its file was last written.
    pub fn silent_s(&self) -> f64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        now.saturating_sub(self.now.updated_unix_ms) as f64 / 1e3
    }

    /// The job as JSON, figures over the last poll.
    pub fn json(&self) -> serde_json::Value {
        let stages: Vec<_> = self
            .stages()
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name, "served": s.served, "ts_s": s.ts, "ta_s": s.ta,
                    "rho": s.rho, "queue": s.queue,
                })
            })
            .collect();
        let j = &self.now;
        serde_json::json!({
            "name": j.name, "pid": j.pid, "skeleton": j.skeleton, "execution": j.execution,
            "inputs": j.inputs, "results": j.results, "results_per_s": self.rate(),
            "agents": j.agents, "agents_lost": j.lost, "tasks_resent": j.resent,
            "updated_s_ago": self.silent_s(),
            "stages": stages,
        })
    }
}

/// Whether any count of `now` is below `before`'s (the stage started
/// again).
fn went_back(before: &StageStatus, now: &StageStatus) -> bool {
    now.arrived < before.arrived
        || now.started < before.started
        || now.served < before.served
        || now.busy_n < before.busy_n
}

/// Brings `views` up to `jobs` (the jobs running now): a job seen before
/// advances, a new one is added, one that ended goes.
pub fn update(views: &mut Vec<JobView>, jobs: Vec<JobStatus>) {
    let mut next = Vec::with_capacity(jobs.len());
    for job in jobs {
        match views.iter().position(|v| v.same_job(&job)) {
            Some(at) => {
                let mut view = views.swap_remove(at);
                view.advance(job);
                next.push(view);
            }
            None => next.push(JobView::new(job)),
        }
    }
    *views = next;
}

/// Seconds as milliseconds for a table cell ("-": unknown).
pub fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2} ms", v * 1e3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(updated: u64, results: u64, arrived: u64, busy_s: f64) -> JobStatus {
        JobStatus {
            pid: 7,
            name: "job.toml".into(),
            started_unix_ms: 1_000,
            updated_unix_ms: updated,
            stages_unix_ms: updated,
            results,
            stages: vec![StageStatus {
                name: "square".into(),
                degree: 2,
                arrived,
                started: results + 2,
                served: results,
                busy_s,
                busy_n: results,
                response_s: busy_s,
            }],
            ..JobStatus::default()
        }
    }

    #[test]
    fn figures_are_over_the_last_poll_and_an_ended_job_goes() {
        let mut views = Vec::new();
        update(&mut views, vec![status(2_000, 100, 110, 1.0)]);
        // Since the start: 100 results in 1 s.
        assert_eq!(views[0].rate().round(), 100.0);
        update(&mut views, vec![status(2_500, 400, 410, 4.0)]);
        let v = &views[0];
        // 300 results in 0.5 s; 300 items, 3 s of kernel: Ts 10 ms; 300
        // arrivals in 0.5 s: Ta 1.67 ms; rho = 10 / (2 × 1.67) = 3.
        assert_eq!(v.rate().round(), 600.0);
        let s = &v.stages()[0];
        assert!((s.ts.unwrap() - 0.010).abs() < 1e-9, "{s:?}");
        assert!((s.rho.unwrap() - 3.0).abs() < 1e-6, "{s:?}");
        assert_eq!(s.queue, 8, "arrived, not yet sent");
        assert_eq!(v.rates, [100, 600]);
        // An unchanged file changes nothing.
        update(&mut views, vec![status(2_500, 400, 410, 4.0)]);
        assert_eq!(views[0].rates.len(), 2);
        // Stages not read again: their window stands.
        let mut later = status(3_000, 500, 510, 5.0);
        later.stages = views[0].now.stages.clone();
        later.stages_unix_ms = 2_500;
        update(&mut views, vec![later]);
        assert_eq!(views[0].rate().round(), 200.0);
        assert!((views[0].stages()[0].rho.unwrap() - 3.0).abs() < 1e-6);
        update(&mut views, Vec::new());
        assert!(views.is_empty());
    }

    #[test]
    fn a_stage_that_starts_again_is_counted_from_its_new_start() {
        let mut views = Vec::new();
        update(&mut views, vec![status(2_000, 800, 900, 8.0)]);
        // A restarted pipeline: the stage counts again from its new start,
        // here past the same number served but fewer arrived.
        update(&mut views, vec![status(3_000, 800, 805, 8.0)]);
        let s = &views[0].stages()[0];
        assert!((s.ts.unwrap() - 0.010).abs() < 1e-9, "{s:?}");
        // 805 arrivals since the new start, within the 1 s window.
        assert!((s.ta.unwrap() - 1.0 / 805.0).abs() < 1e-9, "{s:?}");
    }
}
