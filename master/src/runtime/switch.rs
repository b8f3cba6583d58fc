//! Kernel swaps in a routed job (a farm, a map, a pipeline routed through
//! the master): the seed's `{change_code, F1}` where the master sends
//! every task itself.
//!
//! A swap names a stage: the tree's `seq` nodes, numbered from 0 in the
//! order written ([`Skeleton::seqs`](skelpi_proto::skeleton::Skeleton::seqs)),
//! as the stages of a streamed pipeline are. The master picks each task's
//! kernel when it sends it, so a swap needs no agent's answer: the stage
//! takes it when it next sends a task, and its switch point is the job
//! input after the highest one it has sent a task for. Every task of an
//! input before that point runs the old kernel (also when it is sent
//! late, as a farm's items finish out of order), every task of an input
//! from it on runs the new one: one switch point per swap, counted in job
//! inputs, so a map's chunks of one input all run the same kernel. A task
//! sent again (its agent lost) or copied (overdue, or at the tail) keeps the kernel it was
//! given. A swap to a kernel some agent of the job lacks is refused when
//! the stage takes it, before any task runs it.

use super::stream::{SwapOutcome, Swapped, Swaps};
use skelpi_proto::skeleton::Kernel;
use std::cell::RefCell;
use std::rc::Rc;

/// The swaps of one routed job, per stage.
#[derive(Debug, Default)]
pub struct Switches {
    stages: Vec<RefCell<Stage>>,
}

/// One stage's swaps.
#[derive(Debug, Default)]
struct Stage {
    /// Swaps asked and not yet taken.
    inbox: Option<async_channel::Receiver<Kernel>>,
    /// The highest job input it has sent a task for.
    highest: Option<u64>,
    /// Each swap taken, in order: its kernel and the first input it runs
    /// on, or why it was refused.
    taken: Vec<(Kernel, Result<u64, String>)>,
    /// The kernels taken, from which input each runs.
    points: Vec<(u64, Rc<Kernel>)>,
}

impl Switches {
    /// The switches of a job whose tree has `stages` seq nodes, taking the
    /// swaps `swaps` sends (none: no stage ever swaps).
    pub fn new(swaps: Option<&Swaps>, stages: usize) -> Switches {
        let inbox = |i: usize| swaps.and_then(|s| s.stages.get(i).cloned());
        Switches {
            stages: (0..stages)
                .map(|i| {
                    RefCell::new(Stage {
                        inbox: inbox(i),
                        ..Stage::default()
                    })
                })
                .collect(),
        }
    }

    /// The kernel stage `stage` runs for a task of job input `input`, if
    /// a swap replaced its own (`None`: its own). Takes the swaps asked
    /// since its last task first; `lacking` (as
    /// [`Dispatcher::lacking`](super::dispatch::Dispatcher::lacking)) says why a kernel cannot be
    /// run by every agent of the job, if it cannot.
    pub fn kernel(
        &self,
        stage: usize,
        input: u64,
        lacking: impl Fn(&Kernel) -> Option<String>,
    ) -> Option<Rc<Kernel>> {
        let mut s = self.stages.get(stage)?.borrow_mut();
        while let Some(kernel) = s.inbox.as_ref().and_then(|rx| rx.try_recv().ok()) {
            s.take(kernel, &lacking);
        }
        s.highest = Some(s.highest.map_or(input, |h| h.max(input)));
        s.points
            .iter()
            .rev()
            .find(|(from, _)| *from <= input)
            .map(|(_, k)| k.clone())
    }

    /// What became of each stage's swaps, once the job ended: a swap
    /// still waiting, or whose switch point no input reached, was not
    /// applied.
    pub fn finish(self) -> Vec<Vec<Swapped>> {
        self.stages
            .into_iter()
            .map(|s| s.into_inner().outcomes())
            .collect()
    }
}

impl Stage {
    /// Takes the swap to `kernel`: from the input after the highest sent,
    /// never before an earlier swap's point.
    fn take(&mut self, kernel: Kernel, lacking: impl Fn(&Kernel) -> Option<String>) {
        if let Some(why) = lacking(&kernel) {
            log::info!("swap to {kernel} refused: {why}");
            self.taken.push((kernel, Err(why)));
            return;
        }
        let after = self.highest.map_or(0, |h| h + 1);
        let from = self.points.last().map_or(after, |(p, _)| after.max(*p));
        log::info!("swapped to {kernel} from input {from}");
        self.points.push((from, Rc::new(kernel.clone())));
        self.taken.push((kernel, Ok(from)));
    }

    /// What became of its swaps: one whose point no input reached, or
    /// that a later swap replaced at the same point (no input ran it), was
    /// not applied.
    fn outcomes(self) -> Vec<Swapped> {
        let reached = |from: u64| self.highest.is_some_and(|h| h >= from);
        let points: Vec<Option<u64>> = self
            .taken
            .iter()
            .map(|(_, t)| t.as_ref().ok().copied())
            .collect();
        let replaced = |i: usize, from: u64| points[i + 1..].contains(&Some(from));
        let mut out: Vec<Swapped> = self
            .taken
            .into_iter()
            .enumerate()
            .map(|(i, (kernel, took))| Swapped {
                outcome: match took {
                    Ok(from) if reached(from) && !replaced(i, from) => SwapOutcome::From(from),
                    Ok(_) => SwapOutcome::NotApplied,
                    Err(why) => SwapOutcome::Refused(why),
                },
                kernel,
            })
            .collect();
        if let Some(rx) = self.inbox {
            out.extend(
                std::iter::from_fn(|| rx.try_recv().ok()).map(|kernel| Swapped {
                    kernel,
                    outcome: SwapOutcome::NotApplied,
                }),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::stream;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn k(factor: f64) -> Kernel {
        Kernel::new("scale", [factor])
    }

    /// The factor a task of `input` runs with: the stage's own kernel (1)
    /// or a swap's.
    fn factor(s: &Switches, input: u64) -> f64 {
        s.kernel(0, input, |_| None).map_or(1.0, |k| k.args[0])
    }

    #[test]
    fn every_input_runs_one_kernel_with_one_switch_point_per_swap_in_any_order() {
        // Inputs sent out of order (as a farm's replicas and a map's
        // chunks send them), some sent several times (a map's chunks, a
        // feedback's rounds); swaps asked at random moments.
        for seed in 0..500 {
            let mut rng = StdRng::seed_from_u64(seed);
            let n: u64 = rng.random_range(1..200);
            let (swapper, swaps) = stream::swaps(1);
            let s = Switches::new(Some(&swaps), 1);
            let mut order: Vec<u64> = (0..n)
                .flat_map(|i| std::iter::repeat_n(i, rng.random_range(1..4)))
                .collect();
            // Near order, as a bounded window of replicas sends them.
            for i in 0..order.len() {
                let j = (i + rng.random_range(0..8)).min(order.len() - 1);
                order.swap(i, j);
            }
            let asks: Vec<usize> = (0..rng.random_range(0..4))
                .map(|_| rng.random_range(0..order.len()))
                .collect();
            let mut ran: Vec<Vec<f64>> = vec![Vec::new(); n as usize];
            let mut asked = 0;
            for (at, &input) in order.iter().enumerate() {
                for _ in asks.iter().filter(|&&a| a == at) {
                    asked += 1;
                    assert!(swapper.swap(0, k(f64::from(asked + 1))));
                }
                ran[input as usize].push(factor(&s, input));
            }
            let outcomes = s.finish();
            assert_eq!(outcomes[0].len(), asked as usize, "seed {seed}");
            // Each input ran one kernel, however often it was sent.
            let each: Vec<f64> = ran
                .iter()
                .map(|f| {
                    assert!(f.windows(2).all(|w| w[0] == w[1]), "seed {seed}: {f:?}");
                    f[0]
                })
                .collect();
            // The kernel of input i is the last swap whose point is <= i.
            let mut want = vec![1.0; n as usize];
            for s in &outcomes[0] {
                match s.outcome {
                    SwapOutcome::From(from) => want[from as usize..].fill(s.kernel.args[0]),
                    SwapOutcome::NotApplied => {}
                    ref other => panic!("seed {seed}: {other:?}"),
                }
            }
            assert_eq!(each, want, "seed {seed}: {outcomes:?}");
        }
    }

    #[test]
    fn a_swap_replaced_at_its_own_point_is_not_applied() {
        let (swapper, swaps) = stream::swaps(1);
        let s = Switches::new(Some(&swaps), 1);
        assert_eq!(factor(&s, 0), 1.0);
        assert!(swapper.swap(0, k(3.0)));
        assert!(swapper.swap(0, k(5.0)));
        assert_eq!(factor(&s, 1), 5.0, "the later swap wins");
        let out = s.finish();
        assert_eq!(
            out[0][0].outcome,
            SwapOutcome::NotApplied,
            "no input ran it"
        );
        assert_eq!(out[0][1].outcome, SwapOutcome::From(1));
    }

    #[test]
    fn a_swap_no_agent_can_run_is_refused_and_one_past_the_end_not_applied() {
        let (swapper, swaps) = stream::swaps(2);
        let s = Switches::new(Some(&swaps), 2);
        assert!(swapper.swap(0, Kernel::new("nope", [])));
        let lacking = |k: &Kernel| (k.name == "nope").then(|| "agent a lacks nope".to_owned());
        assert!(s.kernel(0, 0, lacking).is_none(), "refused: the old kernel");
        assert!(swapper.swap(0, k(3.0)));
        assert!(swapper.swap(1, k(5.0)));
        assert_eq!(s.kernel(0, 0, |_| None), None, "input 0 was sent before");
        assert_eq!(s.kernel(0, 1, |_| None).unwrap().args, [3.0]);
        let out = s.finish();
        assert!(matches!(&out[0][0].outcome, SwapOutcome::Refused(w) if w.contains("lacks")));
        assert_eq!(out[0][1].outcome, SwapOutcome::From(1));
        // Stage 1 sent no task after its swap was asked.
        assert_eq!(out[1][0].outcome, SwapOutcome::NotApplied);
        assert!(!swapper.swap(5, k(1.0)), "no such stage");
    }
}
