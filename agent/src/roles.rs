//! The roles an agent plays for a master on one connection: ping, echo
//! (the round-trip benchmark's far end), the raw echo baseline, tasks —
//! kernel calls run on the agent's worker threads — and one pipeline stage
//! ([`crate::stages`]); and, on any connection, delivery of stream items to
//! the stages running here.
//!
//! # Implementation
//! Two loops share the connection's [`Sender`]: the reader answers
//! requests in order and queues tasks on the workers (waiting while their
//! bounded queue is full, which stops reading and so throttles the
//! master through TCP); the writer sends task outcomes as workers finish.

use crate::admission::Throttle;
use crate::kernels::Array;
use crate::raw_echo;
use crate::stages;
use crate::state::AgentState;
use crate::streams;
use crate::workers::{Failure, Outcome, Tag, Traced};
use futures_lite::future;
use skelpi_proto::text::{MESSAGE_MAX, clip, quoted};
use skelpi_proto::trace::{ClockReading, NO_STAGE, TraceKind};
use skelpi_proto::{
    ErrorCode, ErrorReply, JobId, Message, RawEchoReady, Shape, TaskDone, TaskFailed, TaskHead,
};
use skelpi_wire::handshake::{DOWN_AFTER_BEATS, Established};
use skelpi_wire::{Sender, WireError};
use smol::lock::Mutex;
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Job ids a session remembers for logging each job once; beyond that it
/// forgets them all and may log a job again.
const JOBS_REMEMBERED: usize = 1024;

/// Tasks a session may have queued, running or waiting to be sent, per
/// worker thread: what a master's credits use (2 per core), so a master
/// that keeps to them never waits for a slot.
pub const TASKS_PER_WORKER: usize = 2;

/// How long one result may take to be written to its master: a master
/// that reads nothing for this long (with results waiting) is taken for
/// gone, and its session ends. A 16 MiB frame takes 1.4 s at 100 Mb/s.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(60);

/// Kernel swaps a stage's session holds for it while it runs an item.
const SWAPS_WAITING: usize = 64;

/// Bounds of the heartbeat interval a master may ask for, milliseconds.
const MIN_HEARTBEAT_MS: u32 = 100;
const MAX_HEARTBEAT_MS: u32 = 60_000;

/// Serves one authenticated connection until the master leaves or `stop`
/// completes; in the latter case the master is told the agent is shutting
/// down. Tasks still running for this master are abandoned: their outcomes
/// are dropped when the workers finish them.
pub async fn serve_session(
    est: Established,
    peer: SocketAddr,
    config: &AgentState,
    stop: impl Future<Output = ()>,
) {
    let Established {
        sender,
        mut receiver,
        local_addr,
        plaintext,
        ..
    } = est;
    let sender = Mutex::new(sender);
    let (raw_tx, raw_rx) = async_channel::bounded(1);
    // Task slots of this session: the reader takes one before it queues a
    // task, the writer gives it back once it has taken the task's outcome.
    // So outcomes never outnumber `done`'s room, and a worker never waits
    // for a master that does not read (nor holds up other masters' tasks).
    let slots = TASKS_PER_WORKER * config.workers.len();
    let (done_tx, done_rx) = async_channel::bounded::<Outcome>(slots);
    let (slot_tx, slot_rx) = async_channel::bounded::<()>(slots);
    for _ in 0..slots {
        let _ = slot_tx.try_send(());
    }
    // Tasks of this master queued, running or waiting to be sent.
    let in_flight = || slots - slot_rx.len();
    let mut bulk = Vec::new();
    let mut raw_opened = false;
    let (stage_tx, stage_rx) = async_channel::bounded(1);
    // Kernel swaps for that stage, applied between two items.
    let (swap_tx, swap_rx) = async_channel::bounded(SWAPS_WAITING);
    // The stage this session opened: (stream, stage).
    let mut stage_opened: Option<(u64, u32)> = None;
    // The heartbeat interval the master asked for, once.
    let (beat_tx, beat_rx) = async_channel::bounded::<Duration>(1);
    let (watch_tx, watch_rx) = async_channel::bounded::<Duration>(1);
    // A stage of this master's running.
    let stage_running = Cell::new(false);
    // The heartbeat the master asked for: its stages ask it of their
    // successors too.
    let heartbeat = Cell::new(Duration::ZERO);
    let liveness = receiver.liveness();
    let mut stop = std::pin::pin!(stop);
    // Jobs this session has run tasks for, to log each job once.
    let job_news = LogQuota::new(log::Level::Info);
    // The job of the last task: when a task of another comes, or the
    // master goes, it has ended here (its ports' programs are stopped).
    let last_job: Cell<Option<JobId>> = Cell::new(None);
    // Stages here this connection has delivered items to and not yet
    // the end of their stream: if it ends first, their input is cut.
    let mut feeding: HashSet<(u64, u32)> = HashSet::new();
    let recorder = config.workers.recorder();
    // Warnings about this master's requests (see `LogQuota`).
    let warnings = LogQuota::new(log::Level::Warn);
    // This connection's number in traces.
    let conn = recorder.new_conn();
    let reader = async {
        loop {
            let next = future::or(async { Some(receiver.recv(&mut bulk).await) }, async {
                stop.as_mut().await;
                None
            })
            .await;
            let Some(next) = next else {
                return shutting_down(&sender).await;
            };
            let received = match next {
                Ok(r) => r,
                Err(WireError::Closed) => {
                    log::info!("master {peer} disconnected");
                    return;
                }
                Err(WireError::Io(e)) => {
                    log::info!("connection to master {peer} ended: {e}");
                    return;
                }
                Err(e) => {
                    let (level, held) = warnings.level(None);
                    log::log!(
                        level,
                        "bad input from master {peer}: {}{held}",
                        clip(&e.to_string(), MESSAGE_MAX)
                    );
                    let sent = sender
                        .lock()
                        .await
                        .send(&error(ErrorCode::BadRequest, e.to_string()))
                        .await;
                    if e.is_recoverable() && sent.is_ok() {
                        continue;
                    }
                    sender.lock().await.close();
                    return;
                }
            };
            let result = match received.msg {
                Message::Hello(hello) => {
                    log::info!("master {peer} is {:?}", quoted(&hello.master));
                    if hello.heartbeat_ms > 0 {
                        let ms = hello.heartbeat_ms.clamp(MIN_HEARTBEAT_MS, MAX_HEARTBEAT_MS);
                        heartbeat.set(Duration::from_millis(ms.into()));
                        let _ = beat_tx.try_send(Duration::from_millis(ms.into()));
                        let _ = watch_tx.try_send(Duration::from_millis(ms.into()));
                    }
                    let welcome = Message::Welcome(config.info.clone());
                    sender.lock().await.send(&welcome).await
                }
                Message::Ping(p) => sender.lock().await.send(&Message::Pong(p)).await,
                Message::Echo(chunk) => match received.bulk {
                    Some(shape) => {
                        let reply = Message::EchoReply(chunk);
                        sender.lock().await.send_bulk(&reply, shape, &bulk).await
                    }
                    None => {
                        let what = "echo without an array".to_owned();
                        sender
                            .lock()
                            .await
                            .send(&error(ErrorCode::BadRequest, what))
                            .await
                    }
                },
                Message::Task(task) => {
                    if let Some(ended) = last_job.replace(Some(task.job))
                        && ended != task.job
                    {
                        config.kernels.end_job(ended);
                    }
                    let job = task.job;
                    let (level, held) = job_news.level(Some(job));
                    log::log!(level, skelpi_job:% = job; "job {job}: tasks from master {peer}{held}");
                    let shape = received.bulk.unwrap_or(Shape::List(0));
                    let input = Array {
                        shape,
                        data: std::mem::take(&mut bulk),
                    };
                    let traced = task.trace.then(|| {
                        recorder.prepare();
                        let (kind, at, bytes) =
                            (TraceKind::TaskRecv, received.started, received.frame_len);
                        recorder.frame(task.job, kind, conn, task.id, NO_STAGE, at, bytes);
                        // Its wait starts once the frame is in.
                        Traced {
                            stage: NO_STAGE,
                            since: Instant::now(),
                        }
                    });
                    // A master past its slots waits (so does its TCP).
                    let slot = future::or(async { slot_rx.recv().await.ok() }, async {
                        stop.as_mut().await;
                        None
                    })
                    .await;
                    if slot.is_none() {
                        return shutting_down(&sender).await;
                    }
                    let started =
                        start_task(config, task, input, traced, &done_tx, (&sender, &warnings));
                    let (queued, sent) = started.await;
                    if !queued {
                        let _ = slot_tx.try_send(());
                    }
                    sent
                }
                Message::RawEchoOpen => {
                    let reply = if raw_opened {
                        error(
                            ErrorCode::BadRequest,
                            "this session already opened its raw echo socket".into(),
                        )
                    } else {
                        match raw_echo::open(local_addr.ip())
                            .and_then(|o| Ok((o.listener.local_addr()?.port(), o.token, o)))
                        {
                            Ok((port, token, opened)) => {
                                raw_opened = true;
                                let _ = raw_tx.try_send(opened);
                                Message::RawEchoReady(RawEchoReady { port, token })
                            }
                            Err(e) => error(
                                ErrorCode::Unsupported,
                                format!("cannot open a raw echo socket: {e}"),
                            ),
                        }
                    };
                    sender.lock().await.send(&reply).await
                }
                Message::StageOpen(open) => {
                    if stage_opened.is_some() {
                        let what = "this session already runs a stage".to_owned();
                        sender
                            .lock()
                            .await
                            .send(&error(ErrorCode::BadRequest, what))
                            .await
                    } else {
                        stage_opened = Some((open.stream, open.stage));
                        let _ = stage_tx.try_send(open);
                        Ok(())
                    }
                }
                Message::StreamItem(item) => {
                    let shape = received.bulk.unwrap_or(Shape::List(0));
                    let data = Array {
                        shape,
                        data: std::mem::take(&mut bulk),
                    };
                    let arrived = streams::Arrival {
                        conn,
                        started: received.started,
                        frame_len: received.frame_len,
                    };
                    let key = (item.stream, item.stage);
                    feeding.insert(key);
                    // A full inbox holds this reader; shutdown still ends it.
                    let delivered = future::or(
                        async { Some(config.streams.deliver(item, data, arrived, recorder).await) },
                        async {
                            stop.as_mut().await;
                            None
                        },
                    )
                    .await;
                    match delivered {
                        None => return shutting_down(&sender).await,
                        Some(Ok(())) => Ok(()),
                        Some(Err(what)) => {
                            feeding.remove(&key);
                            // Items still in flight after a stage ended are
                            // many: not worth a warning each.
                            log::debug!("{peer}: {what}");
                            sender
                                .lock()
                                .await
                                .send(&error(ErrorCode::BadRequest, what))
                                .await
                        }
                    }
                }
                Message::StreamEnd(end) => {
                    feeding.remove(&(end.stream, end.stage));
                    if !config.streams.end(end.stream, end.stage) {
                        log::debug!(
                            "{peer}: end of stage {} of stream {}, which has ended",
                            end.stage,
                            end.stream
                        );
                    }
                    Ok(())
                }
                Message::StageQuery(q) => {
                    let reply = match config.streams.progress(q.stream, q.stage) {
                        Some(p) => Message::StageProgress(p),
                        None => error(
                            ErrorCode::BadRequest,
                            format!("no stage {} of job {} runs here", q.stage, JobId(q.stream)),
                        ),
                    };
                    sender.lock().await.send(&reply).await
                }
                Message::ClockProbe(p) => {
                    let reading = ClockReading {
                        nonce: p.nonce,
                        agent_ns: recorder.now_ns(),
                    };
                    sender
                        .lock()
                        .await
                        .send(&Message::ClockReading(reading))
                        .await
                }
                Message::TraceCollect(req) => {
                    let mut s = sender.lock().await;
                    let mut sent = Ok(());
                    for batch in recorder.batches(req.job) {
                        sent = s.send(&Message::TraceBatch(batch)).await;
                        if sent.is_err() {
                            break;
                        }
                    }
                    sent
                }
                Message::ModulePush(push) => {
                    let reply = store_module(config, push, peer).await;
                    sender.lock().await.send(&reply).await
                }
                Message::StageSwap(swap) => {
                    if stage_opened == Some((swap.stream, swap.stage)) {
                        // The stage answers when it has swapped (it takes
                        // swaps before items). This reader never waits for
                        // it: it must go on reading the master's beats.
                        match swap_tx.try_send(swap) {
                            Err(async_channel::TrySendError::Full(swap)) => {
                                let what = format!(
                                    "stage {} has {SWAPS_WAITING} swaps waiting: ask again once \
                                     it has answered them",
                                    swap.stage
                                );
                                let mut s = sender.lock().await;
                                s.send(&error(ErrorCode::BadRequest, what)).await
                            }
                            // Closed: the stage is gone with its channel.
                            _ => Ok(()),
                        }
                    } else {
                        let what = format!(
                            "stage swap for stage {} of stream {}, which this session does not run",
                            swap.stage, swap.stream
                        );
                        sender
                            .lock()
                            .await
                            .send(&error(ErrorCode::BadRequest, what))
                            .await
                    }
                }
                Message::Bye => {
                    log::info!("master {peer} said goodbye");
                    sender.lock().await.close();
                    return;
                }
                Message::Error(e) => {
                    let (level, held) = warnings.level(None);
                    let what = quoted(&e.message);
                    log::log!(level, "master {peer} reported an error: {what}{held}");
                    Ok(())
                }
                other => {
                    let what = format!("agent does not handle {} messages", other.kind_name());
                    sender
                        .lock()
                        .await
                        .send(&error(ErrorCode::Unsupported, what))
                        .await
                }
            };
            if let Err(e) = result {
                log::warn!("connection to master {peer} failed: {e}");
                return;
            }
        }
    };
    let writer = async {
        while let Ok(outcome) = done_rx.recv().await {
            let _ = slot_tx.try_send(());
            let (tag, id) = (outcome.tag, outcome.tag.id);
            let send = async {
                let mut s = sender.lock().await;
                let started = Instant::now();
                let sent = send_outcome(&mut s, outcome, &warnings, peer).await;
                if tag.trace.is_some() {
                    let (kind, bytes) = (TraceKind::ResultSend, s.last_frame_len());
                    recorder.frame(tag.job, kind, conn, id, NO_STAGE, started, bytes);
                }
                Some(sent)
            };
            let late = async {
                async_io::Timer::after(WRITE_DEADLINE).await;
                None
            };
            match future::or(send, late).await {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    log::warn!("cannot send a task result to master {peer}: {e}");
                    return;
                }
                None => {
                    log::warn!(
                        "master {peer} took no result for {WRITE_DEADLINE:?}: taken for gone"
                    );
                    return;
                }
            }
        }
    };
    let raw = raw_echo::serve_opened(raw_rx, peer.ip());
    // The stage this session opened, if any: dropped with the session.
    let stage = async {
        if let Ok(open) = stage_rx.recv().await {
            stage_running.set(true);
            let link = stages::Link {
                conn,
                plaintext,
                heartbeat: heartbeat.get(),
            };
            stages::run_stage(config, open, &sender, link, swap_rx.clone()).await;
            stage_running.set(false);
        }
        future::pending::<()>().await
    };
    // Heartbeats, if the master asked: they tell it this agent still
    // answers while its kernels run.
    let beat = async {
        if let Ok(every) = beat_rx.recv().await {
            // The first at once: the master then knows this agent beats.
            while sender.lock().await.send(&Message::Heartbeat).await.is_ok() {
                async_io::Timer::after(every).await;
            }
        }
        future::pending::<()>().await
    };
    // A master that beats and then falls silent while work of its is
    // unfinished is taken for gone (its host died, it was stopped): the
    // session ends, which drops its work.
    let watch = async {
        if let Ok(every) = watch_rx.recv().await {
            let down_after = every * DOWN_AFTER_BEATS;
            let mut heard = false;
            loop {
                async_io::Timer::after(every / 4).await;
                if !heard && liveness.beats() > 0 {
                    heard = true;
                    log::info!(
                        "master {peer} beats: silent for {down_after:?} with work unfinished, \
                         it is taken for gone"
                    );
                }
                let busy = in_flight() > 0 || stage_running.get();
                let silent = liveness.silent_for();
                if busy && liveness.beats() > 0 && silent >= down_after {
                    log::warn!(
                        "master {peer} silent for {silent:.1?} with work unfinished: \
                         taken for gone"
                    );
                    return;
                }
            }
        }
        future::pending::<()>().await
    };
    future::or(
        reader,
        future::or(
            writer,
            future::or(raw, future::or(stage, future::or(beat, watch))),
        ),
    )
    .await;
    if let Some(job) = last_job.get() {
        config.kernels.end_job(job);
    }
    job_news.close(peer);
    warnings.close(peer);
    for (stream, stage) in feeding {
        let why = format!("the connection from {peer} ended before the end of the stream");
        config.streams.cut(stream, stage, &why);
    }
    let left = in_flight();
    if left > 0 {
        // The workers skip queued calls whose session is gone.
        log::info!("master {peer} left {left} tasks unfinished; those not started are dropped");
    }
}

/// What a session logs about its master's requests at a level above debug:
/// the first record of each job, and at most one a second for the whole
/// session (the next says how many were held back); the rest go to debug.
/// So neither a failing job of many tasks nor a master inventing a job id
/// per task can flood the journal (journald would drop the agent's other
/// records).
#[derive(Debug)]
struct LogQuota {
    level: log::Level,
    jobs: RefCell<HashSet<JobId>>,
    throttle: Throttle,
}

impl LogQuota {
    /// A quota for records at `level`.
    fn new(level: log::Level) -> LogQuota {
        LogQuota {
            level,
            jobs: RefCell::new(HashSet::new()),
            throttle: Throttle::new(Duration::from_secs(1)),
        }
    }

    /// The level of a record (about `job`, if any), and a note to add to
    /// it: how many were held back before it.
    fn level(&self, job: Option<JobId>) -> (log::Level, String) {
        let first = job.is_none_or(|job| {
            let mut jobs = self.jobs.borrow_mut();
            if jobs.len() >= JOBS_REMEMBERED {
                jobs.clear();
            }
            jobs.insert(job)
        });
        match first.then(|| self.throttle.admit()).flatten() {
            Some(0) => (self.level, String::new()),
            Some(held) => (self.level, format!(" ({held} similar records held back)")),
            None => (log::Level::Debug, String::new()),
        }
    }

    /// Says how many records were held back since the last one (the
    /// session ends).
    fn close(&self, peer: SocketAddr) {
        let held = self.throttle.take_held_back();
        if held > 0 {
            log::log!(
                self.level,
                "master {peer}: {held} similar records held back (logged at debug level)"
            );
        }
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

/// Sends a task's outcome: its result, or its failure (also when the
/// result cannot be sent: too large for a frame).
async fn send_outcome(
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
            match s.send_bulk(&done, out.shape, &out.data).await {
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
    };
    s.send(&Message::TaskFailed(failed)).await
}

/// Tells the master the agent is shutting down, and closes the connection.
async fn shutting_down(sender: &Mutex<Sender>) {
    let mut s = sender.lock().await;
    let bye = error(ErrorCode::ShuttingDown, "agent is shutting down".into());
    let _ = s.send(&bye).await;
    s.close();
}

/// Queues a task on the workers (its outcome goes to `done`), or answers
/// at once if its kernel is unknown; says whether it was queued.
async fn start_task(
    config: &AgentState,
    task: TaskHead,
    input: Array,
    trace: Option<Traced>,
    done: &async_channel::Sender<Outcome>,
    (sender, warnings): (&Mutex<Sender>, &LogQuota),
) -> (bool, Result<(), WireError>) {
    match config.kernels.find_unblocked(&task.kernel).await {
        Ok(kernel) => {
            let deadline = task
                .deadline_ms
                .and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms.into())));
            let tag = Tag {
                id: task.id,
                job: task.job,
                trace,
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
            };
            let sent = sender.lock().await.send(&Message::TaskFailed(failed)).await;
            (false, sent)
        }
    }
}

/// Stores a pushed WebAssembly module (compiled off the executor); the
/// reply to send.
async fn store_module(
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
                error(ErrorCode::BadRequest, e.to_string())
            }
        };
    }
    let _ = (config, push, peer);
    let what = "this agent runs no WebAssembly (built without the wasm feature, \
                or started with --wasm-cache 0)";
    error(ErrorCode::Unsupported, what.to_owned())
}

/// An error reply (its message clipped: it may quote the peer).
fn error(code: ErrorCode, message: String) -> Message {
    let message = match clip(&message, MESSAGE_MAX) {
        std::borrow::Cow::Borrowed(_) => message,
        clipped => clipped.into_owned(),
    };
    Message::Error(ErrorReply { code, message })
}
