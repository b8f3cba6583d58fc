//! Forwarding: the stage sends its results onward in order — to the next
//! stage's agent, the last stage to the master — and the end of the stream
//! after them, while it watches the link to the next stage; at the end it
//! keeps that link open until the next stage's agent closes it.

use super::Stage;
use crate::kernels::Array;
use crate::streams::{Counts, StageInput};
use futures_lite::future;
use skelpi_proto::trace::TraceKind;
use skelpi_proto::{ErrorCode, ErrorReply, Message, StageFailed, StreamItem, StreamRef};
use skelpi_wire::{Receiver, Sender, WireError};
use std::cell::Cell;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// What the next stage's agent did on the link to it.
pub(super) enum Heard {
    /// It sent this (an error: it refused an item).
    Said(Message),
    /// The link ended (closed by that agent, or failed).
    Ended(WireError),
    /// It fell silent for this long, four beats or more.
    Silent(Duration),
}

impl Stage<'_> {
    /// Reads the link from the next stage's agent (`rx`) until it says
    /// something, ends, or falls silent (see [`hear`]); for the last
    /// stage, which has no such link, never ends.
    ///
    /// The next stage's agent says nothing on this link but heartbeats,
    /// unless it refuses an item or goes away; once this stage has sent
    /// its end, that agent closes the link when it has read everything.
    pub(super) async fn successor(&self, rx: Option<&mut Receiver>) -> Option<Heard> {
        match rx {
            Some(rx) => Some(hear(rx, self.link.heartbeat, &self.lingering).await),
            None => future::pending().await,
        }
    }

    /// Sends the results onward as computing passes them on `results`
    /// (over `next_tx`, or else to the master), then the end of the stream,
    /// while watching the next stage's agent on `successor`. On a failure
    /// it stops computing (closing `input`'s inbox and `results`) and says
    /// why, unless computing failed first and says so itself.
    pub(super) async fn forward(
        &self,
        input: &StageInput,
        results: &async_channel::Receiver<(u64, Array)>,
        next_tx: Option<&mut Sender>,
        successor: Pin<&mut impl Future<Output = Option<Heard>>>,
    ) -> Option<Message> {
        // The link to the next stage is a connection of its own in traces.
        let out_conn = if next_tx.is_some() {
            self.config.workers.recorder().new_conn()
        } else {
            self.link.conn
        };
        let send_all = self.send_all(&input.counts, results, next_tx, out_conn);
        let failed = future::or(send_all, self.watch(successor)).await;
        if failed.is_some() {
            // Stop computing: nothing more can be passed on.
            input.items.close();
            results.close();
        }
        failed
    }

    /// Sends each result onward as it comes (traced on connection
    /// `out_conn`), counting it in `counts`, then the end of the stream if
    /// computing ran all the input; says why it stopped, if sending failed.
    async fn send_all(
        &self,
        counts: &Counts,
        results: &async_channel::Receiver<(u64, Array)>,
        mut next_tx: Option<&mut Sender>,
        out_conn: u32,
    ) -> Option<Message> {
        while let Ok((index, out)) = results.recv().await {
            let sent = self.send_result(next_tx.as_deref_mut(), out_conn, index, out);
            match sent.await {
                Ok(()) => counts.passed_on(),
                Err(e) if e.is_link() => return Some(self.link_lost(e.to_string())),
                // What was sent is at fault (e.g. larger than a frame):
                // as deterministic as a kernel error.
                Err(e) => return Some(self.unsendable(index, e)),
            }
        }
        if !self.ran_all.get() {
            // The stage failed: it says so itself, and its successor
            // must not take the stream for complete.
            return None;
        }
        // The end follows the last item.
        let end = Message::StreamEnd(StreamRef {
            stream: self.stream,
            stage: self.out_stage,
        });
        let sent = match next_tx {
            Some(tx) => tx.send(&end).await,
            None => self.control.lock().await.send(&end).await,
        };
        sent.err().map(|e| self.link_lost(e.to_string()))
    }

    /// Sends `out`, the result of item `index`, to the next stage's agent
    /// on `next_tx`, or else to the master, and traces its frame on
    /// connection `out_conn`.
    async fn send_result(
        &self,
        next_tx: Option<&mut Sender>,
        out_conn: u32,
        index: u64,
        out: Array,
    ) -> Result<(), WireError> {
        let head = Message::StreamItem(StreamItem {
            stream: self.stream,
            stage: self.out_stage,
            index,
        });
        let (started, sent, bytes) = match next_tx {
            Some(tx) => {
                let started = Instant::now();
                let sent = tx.send_bulk(&head, out.shape, &out.data).await;
                (started, sent, tx.last_frame_len())
            }
            None => {
                let mut tx = self.control.lock().await;
                let started = Instant::now();
                let sent = tx.send_bulk(&head, out.shape, &out.data).await;
                (started, sent, tx.last_frame_len())
            }
        };
        if self.trace {
            let (recorder, kind) = (self.config.workers.recorder(), TraceKind::ItemSend);
            let (job, stage) = (self.job, self.out_stage);
            recorder.frame(job, kind, out_conn, index, stage, started, bytes);
        }
        sent
    }

    /// Waits for the next stage's agent to act on the link (`successor`)
    /// and says what it did as the loss of that link; for the last stage,
    /// never.
    async fn watch(
        &self,
        successor: Pin<&mut impl Future<Output = Option<Heard>>>,
    ) -> Option<Message> {
        let heartbeat = self.link.heartbeat;
        match successor.await {
            Some(Heard::Said(Message::Error(e))) => Some(self.link_lost(e.message)),
            Some(Heard::Said(other)) => {
                Some(self.link_lost(format!("it sent {}", other.kind_name())))
            }
            Some(Heard::Ended(e)) => Some(self.link_lost(e.to_string())),
            Some(Heard::Silent(quiet)) => Some(self.link_lost(format!(
                "its agent is silent for {quiet:.1?} (a heartbeat was due every \
                 {heartbeat:?})"
            ))),
            None => future::pending().await,
        }
    }

    /// The error for the link to the next stage lost (`what`: how).
    fn link_lost(&self, what: String) -> Message {
        let (stage, out_stage) = (self.stage, self.out_stage);
        Message::Error(ErrorReply {
            code: ErrorCode::LinkLost,
            message: format!("stage {stage} lost its link to stage {out_stage}: {what}"),
        })
    }

    /// Logs that the result of item `index` cannot be sent (`e`: what is
    /// wrong with it), and says it as the stage's failure.
    fn unsendable(&self, index: u64, e: WireError) -> Message {
        let (job, stage) = (self.job, self.stage);
        log::warn!(
            skelpi_job:% = job;
            "job {job}: stage {stage} cannot send item {index}: {e}"
        );
        Message::StageFailed(StageFailed {
            stream: self.stream,
            stage,
            index,
            error: format!("its result cannot be sent: {e}"),
            panicked: false,
        })
    }

    /// Keeps the link to the next stage open, after this stage sent its
    /// last item and the end and shut its own direction, until the next
    /// stage's agent closes it — which it does once it has read
    /// everything, the end last — or falls silent for four beats:
    /// `successor` goes on reading it.
    ///
    /// Closing first would lose items: the next stage reads this link only
    /// as fast as its inbox drains, so much of what was sent may still
    /// wait in its socket buffers, and a socket closed here answers the
    /// next heartbeat it sends with a reset, on which the operating system
    /// discards them.
    pub(super) async fn linger(&self, successor: Pin<&mut impl Future<Output = Option<Heard>>>) {
        let (job, stage) = (self.job, self.stage);
        self.lingering.set(true);
        if let Some(Heard::Silent(quiet)) = successor.await {
            log::warn!(
                skelpi_job:% = job;
                "job {job}: stage {stage}'s successor fell silent for {quiet:.1?} before \
                 taking all its items"
            );
        }
    }
}

/// Reads the link from the next stage's agent (`rx`) until it says
/// something, ends, or falls silent; once `lingering`, what it says is
/// passed over.
async fn hear(rx: &mut Receiver, heartbeat: Duration, lingering: &Cell<bool>) -> Heard {
    let liveness = rx.liveness();
    let mut scratch = Vec::new();
    let heard = async {
        loop {
            match rx.recv(&mut scratch).await {
                // Only a refused item's error can come: it was reported.
                Ok(r) if lingering.get() => {
                    log::debug!("the next stage's agent said {}", r.msg.kind_name());
                }
                Ok(r) => return Heard::Said(r.msg),
                Err(e) => return Heard::Ended(e),
            }
        }
    };
    let silent = async {
        liveness.silent_past(heartbeat).await;
        Heard::Silent(liveness.silent_for())
    };
    future::or(heard, silent).await
}
