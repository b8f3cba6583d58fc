//! Sending task outcomes to the master as the workers finish them.

use super::{Driver, LogQuota};
use crate::workers::{Failure, Outcome};
use skelpi_proto::text::{MESSAGE_MAX, clip};
use skelpi_proto::trace::{NO_STAGE, TraceKind};
use skelpi_proto::{Message, TaskDone, TaskFailed};
use skelpi_wire::{Sender, WireError};
use std::net::SocketAddr;
use std::time::Instant;

/// Outcomes the writer queues before writing them at once: small results
/// share a socket write, and the master reads them together...
const BATCH_OUTCOMES: usize = 64;

/// ...up to about this many bytes, so that a batch of large results does
/// not hold the sender (heartbeats, replies) longer than one would.
const BATCH_BYTES: usize = 256 << 10;

impl Driver<'_> {
    /// Sends task outcomes as the workers finish them, until the
    /// connection fails: each with those finished meanwhile (up to
    /// [`BATCH_OUTCOMES`]) in one write.
    pub(super) async fn write(&self, done: async_channel::Receiver<Outcome>) {
        while let Ok(first) = done.recv().await {
            // The master has a while to take them (see `WRITE_DEADLINE`).
            self.session.borrow_mut().writing(Instant::now());
            self.changed.notify(usize::MAX);
            let mut s = self.sender.lock().await;
            let mut next = Some(first);
            let (mut queued, mut bytes) = (0, 0);
            let mut sent = Ok(());
            while let Some(outcome) = next.take() {
                sent = self.queue(&mut s, outcome).await;
                queued += 1;
                bytes += s.last_frame_len();
                if sent.is_ok() && queued < BATCH_OUTCOMES && bytes < BATCH_BYTES {
                    next = done.try_recv().ok();
                }
            }
            if sent.is_ok() {
                sent = s.flush().await;
            }
            drop(s);
            self.session.borrow_mut().written();
            // A task refused deeper slots while this was written may go.
            self.freed.notify(usize::MAX);
            if let Err(e) = sent {
                log::warn!("cannot send a task result to master {}: {e}", self.peer);
                return;
            }
        }
    }

    /// Takes a worker's outcome (its task's slot is free again) and queues
    /// it on `s` (its write deadline counting from now).
    async fn queue(&self, s: &mut Sender, outcome: Outcome) -> Result<(), WireError> {
        {
            let mut session = self.session.borrow_mut();
            session.kernel_ran(outcome.tag.job, outcome.busy, outcome.result.is_ok());
            session.task_finished();
            session.writing(Instant::now());
        }
        self.freed.notify(usize::MAX);
        let (tag, id) = (outcome.tag, outcome.tag.id);
        let started = Instant::now();
        let sent = queue_outcome(s, outcome, &self.warnings, self.peer).await;
        if tag.trace.is_some() {
            let (kind, bytes) = (TraceKind::ResultSend, s.last_frame_len());
            let conn = self.conn;
            self.recorder
                .frame(tag.job, kind, conn, id, NO_STAGE, started, bytes);
        }
        sent
    }
}

/// Why a task's output of `floats` elements cannot be sent back.
fn unsendable(e: &skelpi_proto::EncodeError, floats: usize) -> String {
    match e {
        skelpi_proto::EncodeError::TooLarge { len, max } => format!(
            "output of {floats} floats ({len} bytes in a frame) exceeds the {} MiB limit of a frame",
            max >> 20
        ),
        other => format!("its output cannot be sent: {other}"),
    }
}

/// Queues a task's outcome: its result, or its failure (also when the
/// result cannot be sent: too large for a frame).
async fn queue_outcome(
    s: &mut Sender,
    Outcome { tag, busy, result }: Outcome,
    warnings: &LogQuota,
    peer: SocketAddr,
) -> Result<(), WireError> {
    let (id, job) = (tag.id, tag.job);
    let failure = match result {
        Ok(out) => {
            let busy_ns = Some(busy.as_nanos().min(u64::MAX as u128) as u64);
            let done = Message::TaskDone(TaskDone { id, busy_ns });
            match s.queue_bulk(&done, out.shape, &out.data).await {
                // The output is at fault, not the connection (nothing was
                // written): the task fails, as deterministically as a
                // kernel error.
                Err(WireError::Encode(e)) => Failure {
                    message: unsendable(&e, out.data.len()),
                    panicked: false,
                },
                sent => return sent,
            }
        }
        Err(f) => f,
    };
    let message = clip(&failure.message, MESSAGE_MAX).into_owned();
    let (level, held) = warnings.level(Some(job));
    log::log!(level, skelpi_job:% = job; "job {job}: task {id} for master {peer} failed: {message}{held}");
    let failed = TaskFailed {
        id,
        error: message,
        panicked: failure.panicked,
        missing_module: None,
    };
    s.queue(&Message::TaskFailed(failed)).await
}
