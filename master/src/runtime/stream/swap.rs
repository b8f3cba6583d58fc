//! Hot code loading in a streamed pipeline, the seed's `{change_code, F1}`:
//! a running stage's kernel is replaced while items flow.
//!
//! The caller holds a [`Swapper`] and asks for a swap at any time (from a
//! result callback, say). The master sends it on the stage's own
//! connection; the stage applies it between two items and answers with the
//! first item its new kernel runs on, so every item is computed by exactly
//! one of the two kernels, with one switch point, and the stream's order
//! and contents are untouched. A stage that cannot run the new kernel
//! keeps its old one and says why. When the stream restarts after a lost
//! agent, its stages open with their current kernels and the items
//! replayed run with them: a switch point moves back to the first
//! replayed item if it lay after it (still one point per swap), and swaps
//! not yet answered are taken as applied from there ([`SwapOutcome::By`]).

use skelpi_proto::code::StageSwapped;
use skelpi_proto::skeleton::Kernel;
use std::collections::VecDeque;

/// Asks a running job's stages (a streamed pipeline's, or a routed job's
/// `seq` nodes) for new kernels. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Swapper {
    stages: Vec<async_channel::Sender<Kernel>>,
}

/// The job's end of a [`Swapper`]: pass it to
/// `Cluster::stream_pipeline_swapping` or `Cluster::run_routed_swapping`.
/// It serves one job: when that ends, swaps not taken are reported as not
/// applied and the swapper's `swap` returns `false`.
#[derive(Debug, Clone)]
pub struct Swaps {
    pub(crate) stages: Vec<async_channel::Receiver<Kernel>>,
}

impl Swaps {
    /// The number of stages it was made for.
    pub fn stages(&self) -> usize {
        self.stages.len()
    }

    /// Refuses every later swap (the swapper's `swap` returns `false`);
    /// returns those asked and not taken, with their stage.
    pub(crate) fn close(&self) -> Vec<(usize, Kernel)> {
        let mut left = Vec::new();
        for (stage, rx) in self.stages.iter().enumerate() {
            rx.close();
            left.extend(std::iter::from_fn(|| rx.try_recv().ok()).map(|k| (stage, k)));
        }
        left
    }
}

/// A swapper and the swaps it sends, for a pipeline of `stages` stages.
pub fn swaps(stages: usize) -> (Swapper, Swaps) {
    let (tx, rx) = (0..stages).map(|_| async_channel::unbounded()).unzip();
    (Swapper { stages: tx }, Swaps { stages: rx })
}

impl Swapper {
    /// Asks stage `stage` (from 0) to run `kernel`: a streamed stage from
    /// its next item on, a routed job's from one switch point (see
    /// [`crate::runtime::switch`]). Returns immediately; the outcome is in
    /// the stage's report ([`super::StageReport::swaps`]) or what
    /// `Cluster::run_routed_swapping` returns. `false`: no such stage, or
    /// the job has ended.
    pub fn swap(&self, stage: usize, kernel: Kernel) -> bool {
        self.stages
            .get(stage)
            .is_some_and(|tx| tx.try_send(kernel).is_ok())
    }
}

/// What became of one swap.
#[derive(Debug, Clone, PartialEq)]
pub struct Swapped {
    /// The kernel asked for.
    pub kernel: Kernel,
    /// What the stage did.
    pub outcome: SwapOutcome,
}

/// How a stage took a swap.
#[derive(Debug, Clone, PartialEq)]
pub enum SwapOutcome {
    /// It runs the new kernel from this item on (the items before it ran
    /// the kernel before).
    From(u64),
    /// Its agent was lost before it answered; the stream restarted from
    /// this item with the new kernel. The old stage may have switched
    /// earlier (after the swap was asked): the new kernel ran from this
    /// item on at the latest, still from a single point.
    By(u64),
    /// It kept its kernel, for this reason (the new one is unknown on its
    /// agent, its module is not stored there, it had run all its items).
    Refused(String),
    /// The stream ended before the swap reached the stage.
    NotApplied,
}

/// Swaps across a pipeline's attempts: each stage's current kernel, the
/// swaps sent and not answered (by id), and what became of the others.
#[derive(Debug)]
pub(super) struct SwapState {
    current: Vec<Kernel>,
    pending: Vec<VecDeque<(u64, Kernel)>>,
    done: Vec<Vec<Swapped>>,
    next_id: u64,
}

impl SwapState {
    pub(super) fn new(stages: &[Kernel]) -> SwapState {
        SwapState {
            current: stages.to_vec(),
            pending: vec![VecDeque::new(); stages.len()],
            done: vec![Vec::new(); stages.len()],
            next_id: 1,
        }
    }

    /// The kernels the stages run now (a restarted stream opens with them).
    pub(super) fn current(&self) -> &[Kernel] {
        &self.current
    }

    /// A swap of `stage` is sent: its id.
    pub(super) fn sent(&mut self, stage: usize, kernel: Kernel) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.pending[stage].push_back((id, kernel));
        id
    }

    /// Stage `stage` of a run fed from item `first` on answered a swap (a
    /// stage that has seen no item yet says 0: its first item is
    /// `first`). `Err`: it was asked no such swap.
    pub(super) fn answered(
        &mut self,
        stage: usize,
        answer: &StageSwapped,
        first: u64,
    ) -> Result<(), String> {
        let pending = &mut self.pending[stage];
        let Some(at) = pending.iter().position(|(id, _)| *id == answer.id) else {
            return Err(format!(
                "stage {stage} answered swap {}, which it was not asked",
                answer.id
            ));
        };
        let (_, kernel) = pending.remove(at).expect("found");
        let outcome = match &answer.refused {
            Some(why) => SwapOutcome::Refused(why.clone()),
            None => {
                self.current[stage] = kernel.clone();
                SwapOutcome::From(answer.from.max(first))
            }
        };
        log::info!("stage {stage} swapped to {kernel}: {outcome:?}");
        self.done[stage].push(Swapped { kernel, outcome });
        Ok(())
    }

    /// The stream restarts from item `first`: the items replayed run with
    /// the current kernels, those of swaps not answered included (their
    /// stage may have applied them before its agent was lost).
    pub(super) fn restarted(&mut self, first: u64) {
        for s in self.done.iter_mut().flatten() {
            if let SwapOutcome::From(from) | SwapOutcome::By(from) = &mut s.outcome {
                *from = (*from).min(first);
            }
        }
        for (stage, pending) in self.pending.iter_mut().enumerate() {
            for (_, kernel) in pending.drain(..) {
                self.current[stage] = kernel.clone();
                self.done[stage].push(Swapped {
                    kernel,
                    outcome: SwapOutcome::By(first),
                });
            }
        }
    }

    /// What became of every swap, per stage; those never answered were
    /// not applied.
    pub(super) fn finish(mut self) -> Vec<Vec<Swapped>> {
        for (done, pending) in self.done.iter_mut().zip(self.pending) {
            done.extend(pending.into_iter().map(|(_, kernel)| Swapped {
                kernel,
                outcome: SwapOutcome::NotApplied,
            }));
        }
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: u64, from: u64, refused: Option<&str>) -> StageSwapped {
        StageSwapped {
            id,
            stream: 1,
            stage: 0,
            from,
            refused: refused.map(str::to_owned),
        }
    }

    #[test]
    fn answers_match_swaps_by_id_and_a_restart_moves_switch_points_back() {
        let k = |f: f64| Kernel::new("scale", [f]);
        let mut state = SwapState::new(&[k(1.0), k(1.0)]);
        assert!(state.answered(0, &answer(3, 3, None), 0).is_err());
        let a = state.sent(0, k(2.0));
        let b = state.sent(0, Kernel::new("missing", []));
        let c = state.sent(1, k(3.0));
        // Answers in any order, each to its own swap.
        state
            .answered(0, &answer(b, 12, Some("no kernel")), 0)
            .unwrap();
        state.answered(0, &answer(a, 10, None), 0).unwrap();
        assert!(state.answered(0, &answer(a, 10, None), 0).is_err());
        assert!(state.answered(1, &answer(a, 10, None), 0).is_err());
        assert_eq!(state.current(), [k(2.0), k(1.0)]);
        // Replayed from 7: item 7 on ran the new kernels, the unanswered
        // one included.
        state.restarted(7);
        assert_eq!(state.current(), [k(2.0), k(3.0)]);
        let done = state.finish();
        assert_eq!(done[0][0].outcome, SwapOutcome::Refused("no kernel".into()));
        assert_eq!(done[0][1].outcome, SwapOutcome::From(7));
        assert_eq!(done[1][0].outcome, SwapOutcome::By(7));
        assert!(c > b && b > a);
        // A stage of a restarted run, fed from 40, swapped before its
        // first item: from 40. One never answered: not applied.
        let mut state = SwapState::new(&[k(1.0)]);
        let d = state.sent(0, k(2.0));
        state.answered(0, &answer(d, 0, None), 40).unwrap();
        state.sent(0, k(4.0));
        let done = state.finish();
        assert_eq!(done[0][0].outcome, SwapOutcome::From(40));
        assert_eq!(done[0][1].outcome, SwapOutcome::NotApplied);
    }
}
