//! Computing: the stage runs its kernel on its items one at a time, in
//! order, on the worker threads, and applies the master's kernel swaps
//! between two items.

use super::Stage;
use crate::kernels::{Array, Kernel, KernelError};
use crate::streams::{Counts, StageInput, StageItem};
use crate::workers::{Failure, Tag, Traced};
use futures_lite::future;
use skelpi_proto::code::{StageSwap, StageSwapped};
use skelpi_proto::text::{MESSAGE_MAX, clip, quoted};
use skelpi_proto::{ErrorCode, ErrorReply, Message, StageFailed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The kernel a stage runs and its arguments; a swap replaces both.
pub(super) struct Program {
    /// The kernel.
    pub(super) kernel: Arc<dyn Kernel>,
    /// Its arguments.
    pub(super) args: Vec<f64>,
}

/// What a stage measured of its items, for its closing report.
#[derive(Default, Clone, Copy)]
pub(super) struct Measures {
    /// Items run.
    pub(super) items: u64,
    /// Time spent waiting for the kernel on them.
    pub(super) busy: Duration,
    /// When the first item arrived.
    pub(super) first: Option<Instant>,
    /// When the last item arrived.
    pub(super) last: Option<Instant>,
}

impl Stage<'_> {
    /// Runs `program` on the items of `input` in order, each result passed
    /// to `results`, and applies the `swaps` that come between two items;
    /// says why it stopped before the end of the input, if it did (nothing
    /// when forwarding stopped taking results: forwarding says why).
    pub(super) async fn compute(
        &self,
        input: &StageInput,
        program: &mut Program,
        swaps: &async_channel::Receiver<StageSwap>,
        results: async_channel::Sender<(u64, Array)>,
        measures: &mut Measures,
    ) -> Option<Message> {
        let inbox = &input.items;
        // The index the next item will have, once one was seen.
        let mut next_index = 0;
        loop {
            // A swap waiting goes first: it applies from the next item.
            let next = future::or(async { Err(swaps.recv().await) }, async {
                Ok(inbox.recv().await)
            })
            .await;
            let item = match next {
                Ok(Ok(item)) => item,
                Ok(Err(_)) => match input.cut.get() {
                    None => break,
                    Some(why) => return Some(self.input_lost(next_index, why)),
                },
                Err(Ok(swap)) => {
                    let done = inbox.is_closed() && inbox.is_empty();
                    self.swap(program, swap, next_index, done).await;
                    continue;
                }
                // The swaps' sender lives in the session that owns this
                // stage: closed only as the session ends, which drops the
                // stage with it.
                Err(Err(_)) => future::pending().await,
            };
            next_index = item.index + 1;
            let index = item.index;
            match self.run_item(item, program, measures, &input.counts).await {
                Ok(out) => {
                    if results.send((index, out)).await.is_err() {
                        return None;
                    }
                }
                Err(f) => return Some(self.kernel_failed(index, f)),
            }
        }
        self.ran_all.set(true);
        drop(results);
        None
    }

    /// Applies `swap` to `program` from item `from` and answers it to the
    /// master; refused if the kernel is not found here, or if the stage
    /// has already run all its items (`done`).
    async fn swap(&self, program: &mut Program, swap: StageSwap, from: u64, done: bool) {
        let (job, stage) = (self.job, self.stage);
        let found = if done {
            Err(KernelError(format!("stage {stage} has run all its items")))
        } else {
            self.config.kernels.find_unblocked(&swap.kernel).await
        };
        let refused = match found {
            Ok(k) => {
                log::info!(
                    skelpi_job:% = job;
                    "job {job}: stage {stage} runs {}{} from item {from}",
                    swap.kernel,
                    quoted(&format!("{:?}", swap.args))
                );
                program.kernel = k;
                program.args = swap.args;
                None
            }
            Err(why) => {
                let why = format!("agent {}: {why}", self.config.info.name);
                Some(clip(&why, MESSAGE_MAX).into_owned())
            }
        };
        let swapped = StageSwapped {
            id: swap.id,
            stream: self.stream,
            stage,
            from,
            refused,
        };
        self.report(Message::StageSwapped(swapped)).await;
    }

    /// Runs `program` on one item on the worker threads, and counts it
    /// in `measures` and `counts`.
    async fn run_item(
        &self,
        item: StageItem,
        program: &Program,
        measures: &mut Measures,
        counts: &Counts,
    ) -> Result<Array, Failure> {
        measures.first.get_or_insert(item.arrived);
        measures.last = Some(item.arrived);
        let started = Instant::now();
        let tag = Tag {
            id: item.index,
            job: self.job,
            trace: self.trace.then_some(Traced {
                stage: self.stage,
                since: item.arrived,
            }),
            deadline: None,
        };
        let outcome = self
            .config
            .workers
            .call(tag, program.kernel.clone(), program.args.clone(), item.data)
            .await;
        let busy = started.elapsed();
        measures.busy += busy;
        measures.items += 1;
        counts.ran(busy);
        outcome
    }

    /// The error for an input cut off (`why`) before the end of its
    /// stream, when item `next` was due.
    fn input_lost(&self, next: u64, why: &str) -> Message {
        let stage = self.stage;
        let from = stage.saturating_sub(1);
        Message::Error(ErrorReply {
            code: ErrorCode::InputLost,
            message: format!(
                "stage {stage} lost its input from stage {from} \
                 (item {next} was next): {why}"
            ),
        })
    }

    /// Logs the kernel's failure `f` on item `index`, and says it.
    fn kernel_failed(&self, index: u64, f: Failure) -> Message {
        let (job, stage) = (self.job, self.stage);
        log::warn!(
            skelpi_job:% = job;
            "job {job}: stage {stage} failed on item {index}: {}",
            f.message
        );
        Message::StageFailed(StageFailed {
            stream: self.stream,
            stage,
            index,
            error: f.message,
            panicked: f.panicked,
        })
    }
}
