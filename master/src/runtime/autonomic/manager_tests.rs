//! The manager's policy against a queueing model of a pipeline.

use super::*;

/// A pipeline as queueing theory sees it: stage i's kernel takes `ts[i]`
/// seconds on one of `threads` threads; with more tasks out than threads,
/// tasks wait their turn (their slots are held longer). `limit`: something
/// the model does not see (a paced feeder, a link) caps the throughput.
struct Plant {
    ts: Vec<f64>,
    pool: PoolSize,
    limit: Option<f64>,
}

/// The seed-like case: stages of 10, 40 and 10 ms.
fn slow_middle(threads: usize, slots: usize, limit: Option<f64>) -> Plant {
    Plant {
        ts: vec![0.010, 0.040, 0.010],
        pool: PoolSize { threads, slots },
        limit,
    }
}

impl Plant {
    fn stretch(&self, d: &[usize]) -> f64 {
        (d.iter().sum::<usize>() as f64 / self.pool.threads as f64).max(1.0)
    }

    fn throughput(&self, d: &[usize]) -> f64 {
        let stretch = self.stretch(d);
        let stages = (0..d.len())
            .map(|i| d[i] as f64 / (self.ts[i] * stretch))
            .fold(f64::INFINITY, f64::min);
        let ceiling = self.pool.threads as f64 / self.ts.iter().sum::<f64>();
        let x = stages.min(ceiling);
        self.limit.map_or(x, |p| x.min(p))
    }

    fn observe(&self, at: f64, d: &[usize]) -> Observation {
        let x = self.throughput(d);
        let stretch = self.stretch(d);
        let stages = (0..d.len())
            .map(|i| {
                let r = self.ts[i] * stretch;
                StageWindow {
                    degree: d[i],
                    secs: 1.0,
                    arrived: x as u64,
                    served: x as u64,
                    throughput: x,
                    response: Some(r),
                    service: Some(self.ts[i]),
                    interarrival: Some(1.0 / x),
                    queue: 0,
                    rho: Some(self.ts[i] * x / d[i] as f64),
                    capacity: Some(d[i] as f64 / r),
                }
            })
            .collect();
        Observation {
            at: Duration::from_secs_f64(at),
            secs: 1.0,
            throughput: x,
            stages,
            pool: self.pool,
        }
    }

    /// The best static degrees with at most `slots` tasks out.
    fn best(&self) -> f64 {
        let slots = self.pool.slots;
        let mut best = 0.0f64;
        for a in 1..=slots {
            for b in 1..=slots {
                for c in 1..=slots {
                    if a + b + c <= slots {
                        best = best.max(self.throughput(&[a, b, c]));
                    }
                }
            }
        }
        best
    }

    /// Forty one-second windows under a manager starting at `start`;
    /// `blind`: the agents report no kernel times (no ceiling is known).
    fn manage(&self, contract: Contract, start: &[usize], blind: bool) -> (Manager, Vec<Decision>) {
        let names = vec!["a".into(), "b".into(), "c".into()];
        let mut m = Manager::new(contract, names, start.to_vec(), MAX_CHANGES);
        let mut decisions = Vec::new();
        for t in 1..=40 {
            let mut obs = self.observe(t as f64, m.degrees());
            if blind {
                obs.stages.iter_mut().for_each(|s| s.service = None);
            }
            decisions.extend(m.observe(&obs));
        }
        (m, decisions)
    }
}

#[test]
fn a_slow_middle_stage_gets_slots_until_the_pool_is_busy() {
    let plant = slow_middle(4, 8, None);
    let (m, decisions) = plant.manage(Contract::Fastest, &[1, 1, 1], false);
    let got = plant.throughput(m.degrees());
    assert!(
        got >= 0.95 * plant.best(),
        "{got} vs {}: {decisions:#?}",
        plant.best()
    );
    assert!(decisions.len() <= 4, "{decisions:#?}");
    assert!(decisions.last().unwrap().at <= Duration::from_secs(4));
    assert_eq!(decisions[0].action, Action::Grow);
    assert!(
        decisions[0].saw.contains("bottleneck stage 2 (b)"),
        "{}",
        decisions[0].saw
    );
}

#[test]
fn with_every_credit_in_use_slots_move_from_spare_stages_to_the_bottleneck() {
    // A farm of 6 in the middle would be right; the outer stages were
    // given 3 each, and the pool has 8 credits.
    let plant = slow_middle(8, 8, None);
    let (m, decisions) = plant.manage(Contract::Fastest, &[3, 2, 3], false);
    let got = plant.throughput(m.degrees());
    assert!(
        got >= 0.95 * plant.best(),
        "{got} vs {}: {decisions:#?}",
        plant.best()
    );
    assert!(m.degrees()[1] >= 4, "{decisions:#?}");
}

#[test]
fn a_contract_beyond_the_pool_is_said_unmet_and_changes_stop() {
    let plant = slow_middle(4, 8, Some(1000.0));
    let (m, decisions) = plant.manage(Contract::Throughput(1000.0), &[1, 1, 1], false);
    assert!(m.changes() <= 3, "{decisions:#?}");
    let why = m.saturated().expect("says why it stopped");
    assert!(
        why.contains("4 worker threads are busy") || why.contains("credits"),
        "{why}"
    );
    let last = decisions.last().unwrap();
    assert_eq!(last.action, Action::Hold, "{decisions:#?}");
    assert!(
        decisions
            .iter()
            .any(|d| d.did.contains("above the pool's ceiling"))
    );
}

#[test]
fn a_met_contract_releases_spare_slots_and_keeps_its_rate() {
    let plant = slow_middle(16, 32, Some(30.0));
    let (m, decisions) = plant.manage(Contract::Throughput(30.0), &[4, 8, 4], false);
    assert_eq!(m.degrees(), [1, 2, 1], "{decisions:#?}");
    assert!(plant.throughput(m.degrees()) >= 30.0 * MET);
    assert!(decisions.iter().all(|d| d.action == Action::Release));
}

#[test]
fn a_paced_contract_one_item_short_in_a_window_is_met_not_input_bound() {
    let plant = slow_middle(16, 32, Some(20.0));
    let names = vec!["a".into(); 3];
    let mut m = Manager::new(Contract::Throughput(20.0), names, vec![1, 1, 1], 12);
    // 14 items in a 0.75 s window: 18.7 items/s.
    let mut obs = plant.observe(1.0, &[1, 1, 1]);
    obs.secs = 0.75;
    obs.throughput = 14.0 / 0.75;
    assert_eq!(m.observe(&obs), None);
}

#[test]
fn growth_that_does_not_pay_is_undone_once_and_not_tried_again() {
    // Something the model does not see holds the job at what the middle
    // stage does alone; no kernel times, so no ceiling to stop at.
    let plant = slow_middle(8, 16, Some(25.0));
    let (m, decisions) = plant.manage(Contract::Fastest, &[1, 1, 1], true);
    let actions: Vec<Action> = decisions.iter().map(|d| d.action).collect();
    assert_eq!(actions, [Action::Grow, Action::Revert], "{decisions:#?}");
    assert_eq!(m.degrees(), [1, 1, 1]);
    assert!(m.saturated().unwrap().contains("did not raise"));
}

#[test]
fn stages_with_capacity_to_spare_are_left_alone_and_said_so_once() {
    let plant = slow_middle(8, 16, Some(10.0));
    let (m, decisions) = plant.manage(Contract::Fastest, &[1, 1, 1], false);
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    assert_eq!(decisions[0].action, Action::Hold);
    assert!(decisions[0].did.contains("the input or the master"));
    assert_eq!((m.degrees(), m.changes()), (&[1, 1, 1][..], 0));
}

#[test]
fn windows_too_short_or_too_thin_are_not_judged() {
    let plant = slow_middle(4, 8, None);
    let mut m = Manager::new(Contract::Fastest, vec!["a".into(); 3], vec![1, 1, 1], 12);
    let mut obs = plant.observe(1.0, &[1, 1, 1]);
    obs.stages[1].served = MIN_SERVED - 1;
    assert_eq!(m.observe(&obs), None);
    let mut obs = plant.observe(1.0, &[1, 1, 1]);
    obs.secs = MIN_WINDOW / 2.0;
    assert_eq!(m.observe(&obs), None);
    assert_eq!(m.changes(), 0);
}
