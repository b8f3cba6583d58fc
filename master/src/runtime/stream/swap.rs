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
//! not yet answered are sent again.

use skelpi_proto::code::StageSwapped;
use skelpi_proto::skeleton::Kernel;
use std::collections::VecDeque;

/// Asks a running pipeline's stages for new kernels. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Swapper {
    stages: Vec<async_channel::Sender<Kernel>>,
}

/// The pipeline's end of a [`Swapper`]: pass it to
/// `Cluster::stream_pipeline_swapping`.
#[derive(Debug)]
pub struct Swaps {
    pub(super) stages: Vec<async_channel::Receiver<Kernel>>,
}

/// A swapper and the swaps it sends, for a pipeline of `stages` stages.
pub fn swaps(stages: usize) -> (Swapper, Swaps) {
    let (tx, rx) = (0..stages).map(|_| async_channel::unbounded()).unzip();
    (Swapper { stages: tx }, Swaps { stages: rx })
}

impl Swapper {
    /// Asks stage `stage` (from 0) to run `kernel` from its next item on.
    /// Returns immediately; the outcome is in the stage's report
    /// ([`super::StageReport::swaps`]). `false`: no such stage, or the
    /// pipeline has ended.
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
    /// It kept its kernel, for this reason (the new one is unknown on its
    /// agent, its module is not stored there...).
    Refused(String),
    /// The stream ended before the stage took it.
    NotApplied,
}

/// Swaps across a pipeline's attempts: each stage's current kernel, the
/// swaps sent and not answered, and what became of the others.
#[derive(Debug)]
pub(super) struct SwapState {
    current: Vec<Kernel>,
    pending: Vec<VecDeque<Kernel>>,
    done: Vec<Vec<Swapped>>,
}

impl SwapState {
    pub(super) fn new(stages: &[Kernel]) -> SwapState {
        SwapState {
            current: stages.to_vec(),
            pending: vec![VecDeque::new(); stages.len()],
            done: vec![Vec::new(); stages.len()],
        }
    }

    /// The kernels the stages run now (a restarted stream opens with them).
    pub(super) fn current(&self) -> &[Kernel] {
        &self.current
    }

    /// Takes the swaps of `stage` sent and not answered: about to be sent
    /// again, to a restarted stage.
    pub(super) fn take_pending(&mut self, stage: usize) -> Vec<Kernel> {
        self.pending[stage].drain(..).collect()
    }

    /// A swap of `stage` was sent.
    pub(super) fn sent(&mut self, stage: usize, kernel: Kernel) {
        self.pending[stage].push_back(kernel);
    }

    /// Stage `stage` of a run fed from item `first` on answered its
    /// oldest swap (a stage that has seen no item yet says 0: its first
    /// item is `first`). `Err`: it answered none.
    pub(super) fn answered(
        &mut self,
        stage: usize,
        answer: &StageSwapped,
        first: u64,
    ) -> Result<(), String> {
        let Some(kernel) = self.pending[stage].pop_front() else {
            return Err(format!("stage {stage} answered a swap it was not asked"));
        };
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

    /// The stream restarts from item `first`: those replayed run with the
    /// current kernels.
    pub(super) fn restarted(&mut self, first: u64) {
        for s in self.done.iter_mut().flatten() {
            if let SwapOutcome::From(from) = &mut s.outcome {
                *from = (*from).min(first);
            }
        }
    }

    /// What became of every swap, per stage; those never answered were
    /// not applied.
    pub(super) fn finish(mut self) -> Vec<Vec<Swapped>> {
        for (done, pending) in self.done.iter_mut().zip(self.pending) {
            done.extend(pending.into_iter().map(|kernel| Swapped {
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

    fn answer(from: u64, refused: Option<&str>) -> StageSwapped {
        StageSwapped {
            stream: 1,
            stage: 0,
            from,
            refused: refused.map(str::to_owned),
        }
    }

    #[test]
    fn answers_match_swaps_in_order_and_a_restart_moves_switch_points_back() {
        let k = |f: f64| Kernel::new("scale", [f]);
        let mut state = SwapState::new(&[k(1.0), k(1.0)]);
        assert!(state.answered(0, &answer(3, None), 0).is_err());
        state.sent(0, k(2.0));
        state.sent(0, Kernel::new("missing", []));
        state.sent(1, k(3.0));
        state.answered(0, &answer(10, None), 0).unwrap();
        state
            .answered(0, &answer(12, Some("no kernel")), 0)
            .unwrap();
        assert_eq!(state.current(), [k(2.0), k(1.0)]);
        assert_eq!(state.take_pending(1), [k(3.0)]);
        state.sent(1, k(3.0));
        // Replayed from 7: item 7 on ran the new kernel.
        state.restarted(7);
        let done = state.finish();
        assert_eq!(done[0][0].outcome, SwapOutcome::From(7));
        assert_eq!(done[0][1].outcome, SwapOutcome::Refused("no kernel".into()));
        assert_eq!(done[1][0].outcome, SwapOutcome::NotApplied);
        // A stage of a restarted run, fed from 40, swapped before its
        // first item: from 40.
        let mut state = SwapState::new(&[k(1.0)]);
        state.sent(0, k(2.0));
        state.answered(0, &answer(0, None), 40).unwrap();
        assert_eq!(state.finish()[0][0].outcome, SwapOutcome::From(40));
    }
}
