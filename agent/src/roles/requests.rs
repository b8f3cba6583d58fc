//! The requests a session answers from the agent's shared state or by
//! starting work: tasks, the raw echo socket, stage swaps, stream items,
//! stage queries, clock probes, trace collection, module pushes and
//! deploys.

use super::{Arrival, Driver, Flow, Frame, LogQuota, SWAPS_WAITING};
use crate::kernels::Array;
use crate::raw_echo;
use crate::session::error_message;
use crate::state::AgentState;
use crate::streams;
use crate::workers::{Outcome, Tag};
use skelpi_proto::code::StageSwap;
use skelpi_proto::text::{MESSAGE_MAX, clip};
use skelpi_proto::trace::ClockReading;
use skelpi_proto::{ErrorCode, JobId, Message, RawEchoReady, TaskFailed, TaskHead};
use skelpi_wire::{Sender, WireError};
use smol::lock::Mutex;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

impl Driver<'_> {
    /// When task `id` arrived and how it is traced (forgotten now: it
    /// runs). Tasks are handed to the workers in about their arrival
    /// order, so it is near the front.
    fn arrival(&self, id: u64) -> Option<Arrival> {
        let mut arrived = self.arrived.borrow_mut();
        let at = arrived.iter().position(|a| a.id == id)?;
        arrived.remove(at)
    }

    /// Queues a task on the workers (its slot was taken), or answers at
    /// once if its kernel is unknown (its slot given back).
    pub(super) async fn run_task(&self, task: TaskHead, input: Array) -> Flow {
        let arrival = self.arrival(task.id);
        let parts = (&self.sender, &self.warnings);
        let (queued, sent) = start_task(self.config, task, input, arrival, &self.done, parts).await;
        if !queued {
            self.session.borrow_mut().task_finished();
            self.freed.notify(usize::MAX);
        }
        self.sent(sent)
    }

    /// Opens the raw echo socket and tells the master where, or why not.
    pub(super) async fn open_raw_echo(&self) -> Flow {
        let opened = raw_echo::open(self.local_addr)
            .and_then(|o| Ok((o.listener.local_addr()?.port(), o.token, o)));
        let reply = match opened {
            Ok((port, token, opened)) => {
                let _ = self.raw.try_send(opened);
                Message::RawEchoReady(RawEchoReady { port, token })
            }
            Err(e) => {
                self.session.borrow_mut().raw_echo_failed();
                let what = format!("cannot open a raw echo socket: {e}");
                error_message(ErrorCode::Unsupported, what)
            }
        };
        self.send(&reply).await
    }

    /// Passes a kernel swap to the stage, which answers once it has
    /// swapped (it takes swaps before items); the reader never waits for
    /// it, as it must go on reading the master's beats.
    pub(super) async fn swap(&self, swap: StageSwap) -> Flow {
        match self.swaps.try_send(swap) {
            Err(async_channel::TrySendError::Full(swap)) => {
                let what = format!(
                    "stage {} has {SWAPS_WAITING} swaps waiting: ask again once it has answered \
                     them",
                    swap.stage
                );
                self.send(&error_message(ErrorCode::BadRequest, what)).await
            }
            // Closed: the stage is gone with its channel.
            _ => Flow::Continue(()),
        }
    }

    /// Delivers a stream item to its stage here; a full inbox holds the
    /// reader (shutdown still ends it).
    pub(super) async fn deliver(
        &self,
        item: skelpi_proto::StreamItem,
        data: Array,
        frame: Frame,
    ) -> Flow {
        let arrived = streams::Arrival {
            conn: self.conn,
            started: frame.started,
            frame_len: frame.len,
        };
        let key = (item.stream, item.stage);
        let delivered = self
            .config
            .streams
            .deliver(item, data, arrived, self.recorder);
        let Err(what) = delivered.await else {
            return Flow::Continue(());
        };
        // Items still in flight after a stage ended are many: not worth
        // a warning each.
        log::debug!("{}: {what}", self.peer);
        let reply = self.session.borrow_mut().delivery_refused(key, what);
        self.send(&reply).await
    }

    /// Answers a request from the agent's shared state.
    pub(super) async fn answer(&self, msg: Message) -> Flow {
        let config = self.config;
        let reply = match msg {
            Message::StageQuery(q) => match config.streams.progress(q.stream, q.stage) {
                Some(p) => Message::StageProgress(p),
                None => {
                    let what = format!("no stage {} of job {} runs here", q.stage, JobId(q.stream));
                    error_message(ErrorCode::BadRequest, what)
                }
            },
            Message::ClockProbe(p) => Message::ClockReading(ClockReading {
                nonce: p.nonce,
                agent_ns: self.recorder.now_ns(),
            }),
            Message::TraceCollect(req) => {
                let mut s = self.sender.lock().await;
                for batch in self.recorder.batches(req.job) {
                    let sent = s.send(&Message::TraceBatch(batch)).await;
                    self.sent(sent)?;
                }
                return Flow::Continue(());
            }
            Message::ModulePush(push) => store_module(config, push, self.peer).await,
            // The board's files are read off the executor (a sensor read
            // may take milliseconds); the agent's own figures here.
            Message::HealthQuery => {
                let board = smol::unblock(|| crate::health::read_board(Path::new("/"))).await;
                Message::Health(Box::new(crate::health::report(config, board)))
            }
            deploy @ (Message::DeployOffer(_)
            | Message::DeployChunk(_)
            | Message::DeployFinish
            | Message::DeployRestart
            | Message::DeployCommit(_)
            | Message::DeployAbort(_)) => match config
                .deploy
                .handle(&config.info.id, self.peer, deploy)
                .await
            {
                None => return Flow::Continue(()),
                Some(Ok(reply)) => reply,
                Some(Err(why)) => {
                    let (level, held) = self.warnings.level(None);
                    log::log!(level, "master {}: deploy refused: {why}{held}", self.peer);
                    let why = clip(&why, MESSAGE_MAX).into_owned();
                    error_message(ErrorCode::BadRequest, why)
                }
            },
            other => {
                let what = format!("agent does not answer {} messages", other.kind_name());
                error_message(ErrorCode::Unsupported, what)
            }
        };
        self.send(&reply).await
    }
}

/// Queues a task on the workers (its outcome goes to `done`), or answers
/// at once if its kernel is unknown; says whether it was queued.
pub(super) async fn start_task(
    config: &AgentState,
    task: TaskHead,
    input: Array,
    arrival: Option<Arrival>,
    done: &async_channel::Sender<Outcome>,
    (sender, warnings): (&Mutex<Sender>, &LogQuota),
) -> (bool, Result<(), WireError>) {
    match config.kernels.find_unblocked(&task.kernel).await {
        Ok(kernel) => {
            // From its arrival: its wait in the session's queue counts.
            let arrived = arrival.map_or_else(Instant::now, |a| a.at);
            let deadline = task
                .deadline_ms
                .and_then(|ms| arrived.checked_add(Duration::from_millis(ms.into())));
            let tag = Tag {
                id: task.id,
                job: task.job,
                trace: arrival.and_then(|a| a.traced),
                deadline,
            };
            config
                .workers
                .submit(tag, kernel, task.args, input, done.clone())
                .await;
            (true, Ok(()))
        }
        Err(why) => {
            let error = format!("agent {}: {why}", config.info.name);
            let error = clip(&error, MESSAGE_MAX).into_owned();
            let job = task.job;
            let (level, held) = warnings.level(Some(job));
            log::log!(level, skelpi_job:% = job; "job {job}: task {}: {error}{held}", task.id);
            let failed = TaskFailed {
                id: task.id,
                error,
                panicked: false,
                missing_module: config.kernels.missing_module(&task.kernel),
            };
            let sent = sender.lock().await.send(&Message::TaskFailed(failed)).await;
            (false, sent)
        }
    }
}

/// Stores a pushed WebAssembly module (compiled off the executor); the
/// reply to send.
pub(super) async fn store_module(
    config: &AgentState,
    push: skelpi_proto::code::ModulePush,
    peer: SocketAddr,
) -> Message {
    #[cfg(feature = "wasm")]
    if let Some(modules) = config.kernels.modules().cloned() {
        let hash = push.hash.clone();
        let stored = smol::unblock(move || modules.store(&push.hash, &push.bytes)).await;
        return match stored {
            Ok(kernels) => {
                log::info!("master {peer} stored module {hash}: {}", kernels.join(", "));
                Message::ModuleStored(skelpi_proto::code::ModuleStored { hash, kernels })
            }
            Err(e) => {
                let e = clip(&e.to_string(), MESSAGE_MAX).into_owned();
                log::warn!("master {peer} pushed a module that was refused: {e}");
                error_message(ErrorCode::BadRequest, e.to_string())
            }
        };
    }
    let _ = (config, push, peer);
    let what = "this agent runs no WebAssembly (built without the wasm feature, \
                or started with --wasm-cache 0)";
    error_message(ErrorCode::Unsupported, what.to_owned())
}
