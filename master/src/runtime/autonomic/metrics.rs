//! Live metrics of a stage: running totals, cheap enough to keep for
//! every task of every job, and what they say over a window (service time
//! Ts, inter-arrival time Ta, queue, utilisation rho = Ts / (degree × Ta),
//! capacity). No clock is read here: callers pass the durations.

use std::time::Duration;

/// What one agent did for a stage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AgentTotals {
    /// Tasks it finished.
    pub served: u64,
    /// Its kernels' run time, summed.
    pub busy: Duration,
}

/// Running totals of one stage since the job started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Items handed to the stage.
    pub arrived: u64,
    /// Items sent to an agent.
    pub started: u64,
    /// Items whose result came back.
    pub served: u64,
    /// Time from sending a task to its result (a worker slot of the stage
    /// is held that long), summed.
    pub response: Duration,
    /// Kernel run time the agents reported, summed, and over how many tasks
    /// (older agents report none).
    pub busy: Duration,
    /// Tasks with a reported run time.
    pub busy_n: u64,
    /// Per agent of the pool, by position.
    pub agents: Vec<AgentTotals>,
}

impl Totals {
    /// An item reached the stage.
    pub fn arrive(&mut self) {
        self.arrived += 1;
    }

    /// An item was sent to an agent.
    pub fn start(&mut self) {
        self.started += 1;
    }

    /// An item's result came back from `agent` after `response`; its kernel
    /// ran `busy` there.
    pub fn finish(&mut self, agent: usize, response: Duration, busy: Option<Duration>) {
        self.served += 1;
        self.response += response;
        if self.agents.len() <= agent {
            self.agents.resize(agent + 1, AgentTotals::default());
        }
        let a = &mut self.agents[agent];
        a.served += 1;
        if let Some(busy) = busy {
            self.busy += busy;
            self.busy_n += 1;
            a.busy += busy;
        }
    }

    /// Items waiting for a worker slot now.
    pub fn queue(&self) -> u64 {
        self.arrived.saturating_sub(self.started)
    }
}

/// What a stage did over a window of time.
#[derive(Debug, Clone, PartialEq)]
pub struct StageWindow {
    /// Worker slots it had (its degree).
    pub degree: usize,
    /// The window's length, seconds.
    pub secs: f64,
    /// Items that reached it, and that it finished, in the window.
    pub arrived: u64,
    /// Items it finished in the window.
    pub served: u64,
    /// Items finished per second.
    pub throughput: f64,
    /// Mean time a task held a worker slot (sent to result), seconds.
    pub response: Option<f64>,
    /// Ts: mean kernel run time per task on the agents, seconds.
    pub service: Option<f64>,
    /// Ta: mean time between arrivals, seconds.
    pub interarrival: Option<f64>,
    /// Items waiting for a slot at the window's end.
    pub queue: u64,
    /// Utilisation of its slots: Ts / (degree × Ta). Near 1: it is the
    /// bottleneck (arrivals cannot outrun it for long: queues are bounded).
    pub rho: Option<f64>,
    /// Items per second it could finish at this degree: degree / response.
    pub capacity: Option<f64>,
}

/// Seconds as milliseconds with `places` decimals (`?` if unknown), for
/// decisions and summaries.
pub fn ms(v: Option<f64>, places: usize) -> String {
    v.map_or("?".into(), |v| format!("{:.*} ms", places, v * 1e3))
}

/// The window between two readings of a stage's totals, `secs` apart,
/// at `degree` (a count that went down, as when a stage starts again,
/// counts as none).
pub fn window(before: &Totals, now: &Totals, secs: f64, degree: usize) -> StageWindow {
    let arrived = now.arrived.saturating_sub(before.arrived);
    let served = now.served.saturating_sub(before.served);
    let busy_n = now.busy_n.saturating_sub(before.busy_n);
    let mean = |total: Duration, n: u64| (n > 0).then(|| total.as_secs_f64() / n as f64);
    let response = mean(now.response.saturating_sub(before.response), served);
    let service = mean(now.busy.saturating_sub(before.busy), busy_n);
    let interarrival = (arrived > 0 && secs > 0.0).then(|| secs / arrived as f64);
    let degree = degree.max(1);
    StageWindow {
        degree,
        secs,
        arrived,
        served,
        throughput: if secs > 0.0 {
            served as f64 / secs
        } else {
            0.0
        },
        response,
        service,
        interarrival,
        queue: now.queue(),
        rho: service
            .zip(interarrival)
            .map(|(ts, ta)| ts / (degree as f64 * ta)),
        capacity: response.filter(|&r| r > 0.0).map(|r| degree as f64 / r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_gives_ts_ta_rho_and_capacity_of_what_happened_in_it() {
        let ms = Duration::from_millis;
        let mut t = Totals::default();
        t.arrive();
        t.start();
        t.finish(0, ms(50), Some(ms(40)));
        let before = t.clone();
        // One second: 10 arrivals, 8 finished by two agents, 40 ms of
        // kernel and 50 ms held each.
        for i in 0..10 {
            t.arrive();
            if i < 9 {
                t.start();
            }
            if i < 8 {
                t.finish(i % 2, ms(50), Some(ms(40)));
            }
        }
        let w = window(&before, &t, 1.0, 2);
        assert_eq!((w.arrived, w.served, w.queue), (10, 8, 1));
        assert!((w.service.unwrap() - 0.040).abs() < 1e-9);
        assert!((w.interarrival.unwrap() - 0.1).abs() < 1e-9);
        assert!((w.rho.unwrap() - 0.2).abs() < 1e-9, "0.04 / (2 × 0.1)");
        assert!((w.capacity.unwrap() - 40.0).abs() < 1e-9, "2 / 0.05");
        assert_eq!(t.agents[1].served, 4);
        let empty = window(&t, &t, 1.0, 1);
        assert_eq!(
            (empty.service, empty.rho, empty.capacity),
            (None, None, None)
        );
    }
}
