//! The roles an agent plays for a master on one connection: ping, echo
//! (the round-trip benchmark's far end), the raw echo baseline, tasks —
//! kernel calls run on the agent's worker threads — and one pipeline stage
//! ([`crate::stages`]); and, on any connection, delivery of stream items to
//! the stages running here.
//!
//! # Implementation
//! The rules live in a [`Session`] without sockets or a clock; this module
//! drives it. Loops share the connection's [`Sender`]: the reader hands
//! each message to the session and carries out what it answers (queueing a
//! task on the workers; a small task past the slots waits in the session's
//! queue, which the feeder empties as slots free; while a task finds no
//! room there, the reader reads nothing, so a master past its slots waits,
//! and its TCP); the writer sends task outcomes as workers finish, those
//! finished together in one write; the clock calls the session when it is due
//! (heartbeats, a silent master, a master that reads nothing) and never
//! waits for the sender, so a master that stops reading cannot stop it
//! from ending the session (heartbeats go through a loop of their own);
//! the stage and the raw echo socket run when opened.

use crate::kernels::Array;
use crate::raw_echo;
use crate::session::{Action, Ending, Heard, Session, error_message};
use crate::stages;
use crate::state::AgentState;
use crate::trace::Recorder;
use crate::workers::{Outcome, Traced};
use event_listener::Event;
use futures_lite::future;
use skelpi_proto::code::StageSwap;
use skelpi_proto::text::{MESSAGE_MAX, clip, quoted};
use skelpi_proto::trace::{NO_STAGE, TraceKind};
use skelpi_proto::{ErrorCode, JobId, Message, StageOpen};
use skelpi_wire::alarm::Alarm;
use skelpi_wire::handshake::{DOWN_AFTER_BEATS, Established};
use skelpi_wire::{Liveness, Receiver, Sender, WireError};
use smol::lock::Mutex;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

mod outcome;
mod quota;
mod requests;

use quota::LogQuota;

/// Tasks a session may have on the workers (queued there, running, or
/// their outcome waiting to be sent) per worker thread, and small ones it
/// may queue beyond those: what a master's credits use, so a master that
/// keeps to them never waits for a slot.
pub use skelpi_proto::{MAX_TASKS_PER_WORKER, TASKS_PER_WORKER};

/// Kernel swaps a stage's session holds for it while it runs an item.
const SWAPS_WAITING: usize = 64;

/// Whether a session goes on.
type Flow = ControlFlow<()>;

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
        receiver,
        local_addr,
        plaintext,
        ..
    } = est;
    // Task slots of this session: taken when a task is queued, given back
    // once the writer has taken its outcome. So outcomes never outnumber
    // `done`'s room, and a worker never waits for a master that does not
    // read (nor holds up other masters' tasks).
    let slots = TASKS_PER_WORKER * config.workers.len();
    let queue_room = (MAX_TASKS_PER_WORKER - TASKS_PER_WORKER) * config.workers.len();
    let session = Session::new(slots, queue_room).deepening(config.workers.len());
    let (done_tx, done_rx) = async_channel::bounded::<Outcome>(session.most_slots());
    let (raw_tx, raw_rx) = async_channel::bounded(1);
    let (stage_tx, stage_rx) = async_channel::bounded(1);
    // Kernel swaps for that stage, applied between two items.
    let (swap_tx, swap_rx) = async_channel::bounded(SWAPS_WAITING);
    let (beat_tx, beat_rx) = async_channel::bounded(1);
    let recorder = config.workers.recorder();
    let driver = Driver {
        config,
        peer,
        local_addr: local_addr.ip(),
        closer: sender.closer(),
        sender: Mutex::new(sender),
        session: RefCell::new(session),
        changed: Event::new(),
        freed: Event::new(),
        arrived: RefCell::new(VecDeque::new()),
        conn: recorder.new_conn(),
        recorder,
        job_news: LogQuota::new(log::Level::Info),
        warnings: LogQuota::new(log::Level::Warn),
        done: done_tx,
        raw: raw_tx,
        stage: stage_tx,
        swaps: swap_tx,
        beat: beat_tx,
    };
    let liveness = receiver.liveness();
    let shutdown = async {
        stop.await;
        driver.shutting_down().await;
    };
    future::or(
        shutdown,
        future::or(
            driver.read(receiver),
            future::or(
                driver.write(done_rx),
                future::or(
                    raw_echo::serve_opened(raw_rx, peer.ip()),
                    future::or(
                        driver.run_stage(stage_rx, swap_rx, plaintext),
                        future::or(
                            driver.tick(liveness),
                            future::or(driver.beat(beat_rx), driver.feed()),
                        ),
                    ),
                ),
            ),
        ),
    )
    .await;
    driver.finish();
}

/// A task read, until it runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    id: u64,
    /// When its frame began to arrive: its deadline counts from then.
    at: Instant,
    traced: Option<Traced>,
}

/// A frame as it arrived (for traces).
#[derive(Debug, Clone, Copy)]
struct Frame {
    started: Instant,
    len: usize,
}

/// What serves one session: its [`Session`] and the I/O it drives.
struct Driver<'a> {
    config: &'a AgentState,
    peer: SocketAddr,
    /// The address the master reached: the raw echo socket listens there.
    local_addr: IpAddr,
    sender: Mutex<Sender>,
    /// Closes the connection even while a writer holds `sender`.
    closer: skelpi_wire::Closer,
    session: RefCell<Session>,
    /// The session's timeout may have moved.
    changed: Event,
    /// A task slot was given back.
    freed: Event,
    /// The tasks read and not yet run, in arrival order (the order they
    /// run in): when each arrived and how it is traced.
    arrived: RefCell<VecDeque<Arrival>>,
    /// This connection's number in traces.
    conn: u32,
    recorder: &'a Arc<Recorder>,
    /// Jobs this session has run tasks for, to log each job once.
    job_news: LogQuota,
    /// Warnings about this master's requests (see `LogQuota`).
    warnings: LogQuota,
    done: async_channel::Sender<Outcome>,
    raw: async_channel::Sender<raw_echo::Opened>,
    stage: async_channel::Sender<StageOpen>,
    swaps: async_channel::Sender<StageSwap>,
    /// A heartbeat is due (see [`Driver::beat`]).
    beat: async_channel::Sender<()>,
}

impl Driver<'_> {
    /// Reads the master's messages until the session ends.
    async fn read(&self, mut receiver: Receiver) {
        let mut bulk = Vec::new();
        loop {
            // Not `unheard`: a master past its slots, or one whose results
            // wait because it reads nothing, is judged as ever.
            if self.wait_for_slot().await.is_break() {
                return;
            }
            let received = match receiver.recv(&mut bulk).await {
                Ok(received) => received,
                Err(e) => match self.read_failed(e).await {
                    ControlFlow::Continue(()) => continue,
                    ControlFlow::Break(()) => return,
                },
            };
            let frame = Frame {
                started: received.started,
                len: received.frame_len,
            };
            self.note(&received.msg, frame);
            let array = received.bulk.map(|shape| Array {
                shape,
                data: std::mem::take(&mut bulk),
            });
            if let Message::Task(task) = &received.msg {
                self.ask_alone(task.job);
            }
            let (actions, moved) = {
                let mut session = self.session.borrow_mut();
                let before = session.poll_timeout();
                let actions = session.handle(Instant::now(), received.msg, array);
                (actions, session.poll_timeout() != before)
            };
            if moved {
                self.changed.notify(usize::MAX);
            }
            for action in actions {
                if self.execute(action, frame, &mut bulk).await.is_break() {
                    return;
                }
            }
        }
    }

    /// Awaits `wait`, which holds the reader by this agent's own
    /// backpressure (a stage's full inbox): meanwhile the master's silence
    /// is not judged.
    async fn unheard<T>(&self, wait: impl Future<Output = T>) -> T {
        self.session.borrow_mut().reading_held(true, Instant::now());
        let out = wait.await;
        self.session
            .borrow_mut()
            .reading_held(false, Instant::now());
        out
    }

    /// While a task read waits for a slot (and no room in the session's
    /// queue), waits until [`Driver::feed`] has found it one.
    async fn wait_for_slot(&self) -> Flow {
        loop {
            let freed = self.freed.listen();
            if self.session.borrow().can_read() {
                return Flow::Continue(());
            }
            if self.session.borrow().ended() {
                return Flow::Break(());
            }
            freed.await;
        }
    }

    /// Tells the session whether `job` is alone on the workers (asked
    /// only when the session holds its own slots' worth: before, it does
    /// not matter).
    fn ask_alone(&self, job: JobId) {
        if self.session.borrow().deepening_job().is_some() {
            let alone = !self.config.workers.others_busy(job);
            self.session.borrow_mut().set_alone(alone);
        }
    }

    /// Runs the tasks waiting for a slot as slots free, oldest first.
    async fn feed(&self) {
        loop {
            let freed = self.freed.listen();
            let job = self.session.borrow().deepening_job();
            if let Some(job) = job {
                self.ask_alone(job);
            }
            let next = self.session.borrow_mut().release_next();
            let Some(run) = next else {
                freed.await;
                continue;
            };
            // The reader may go on, the held task having moved.
            self.freed.notify(usize::MAX);
            let now = Frame {
                started: Instant::now(),
                len: 0,
            };
            if self.execute(run, now, &mut Vec::new()).await.is_break() {
                return;
            }
        }
    }

    /// What was read was no message: the master is told, and the session
    /// ends unless the next frame can be read.
    async fn read_failed(&self, e: WireError) -> Flow {
        let peer = self.peer;
        match e {
            WireError::Closed => log::info!("master {peer} disconnected"),
            WireError::Io(e) => log::info!("connection to master {peer} ended: {e}"),
            e => {
                let (level, held) = self.warnings.level(None);
                let what = e.to_string();
                let what = clip(&what, MESSAGE_MAX);
                log::log!(level, "bad input from master {peer}: {what}{held}");
                let actions = self
                    .session
                    .borrow_mut()
                    .bad_input(e.to_string(), e.is_recoverable());
                for action in actions {
                    self.execute(
                        action,
                        Frame {
                            started: Instant::now(),
                            len: 0,
                        },
                        &mut Vec::new(),
                    )
                    .await?;
                }
                return Flow::Continue(());
            }
        }
        Flow::Break(())
    }

    /// Logs (and traces) a message read, before the session handles it.
    fn note(&self, msg: &Message, frame: Frame) {
        let peer = self.peer;
        match msg {
            Message::Hello(hello) => log::info!("master {peer} is {:?}", quoted(&hello.master)),
            Message::Task(task) => {
                let job = task.job;
                let (level, held) = self.job_news.level(Some(job));
                log::log!(level, skelpi_job:% = job; "job {job}: tasks from master {peer}{held}");
                let traced = task.trace.then(|| {
                    self.recorder.prepare();
                    let kind = TraceKind::TaskRecv;
                    let (at, bytes) = (frame.started, frame.len);
                    self.recorder
                        .frame(job, kind, self.conn, task.id, NO_STAGE, at, bytes);
                    // Its wait starts once the frame is in.
                    Traced {
                        stage: NO_STAGE,
                        since: Instant::now(),
                    }
                });
                self.arrived.borrow_mut().push_back(Arrival {
                    id: task.id,
                    at: frame.started,
                    traced,
                });
            }
            Message::Error(e) => {
                let (level, held) = self.warnings.level(None);
                let what = quoted(&e.message);
                log::log!(level, "master {peer} reported an error: {what}{held}");
            }
            _ => {}
        }
    }

    /// Carries out one of the session's actions (`frame`: the message's,
    /// `bulk`: the buffer an echoed array goes back to).
    async fn execute(&self, action: Action, frame: Frame, bulk: &mut Vec<f64>) -> Flow {
        let config = self.config;
        match action {
            Action::Send(msg) => self.send(&msg).await,
            Action::SendBulk(msg, array) => {
                let sent = self
                    .sender
                    .lock()
                    .await
                    .send_bulk(&msg, array.shape, &array.data)
                    .await;
                // The next frame is read into the same buffer.
                *bulk = array.data;
                self.sent(sent)
            }
            Action::Welcome => {
                let mut info = config.info.clone();
                // What a deploy changed since the agent started.
                if let Some(build) = info.build.as_mut() {
                    build.on_trial = config.deploy.on_trial();
                }
                self.send(&Message::Welcome(info)).await
            }
            Action::RunTask(task, input) => self.run_task(task, input).await,
            Action::EndJob(job) => {
                config.kernels.end_job(job);
                Flow::Continue(())
            }
            Action::OpenRawEcho => self.open_raw_echo().await,
            Action::StartStage(open) => {
                let _ = self.stage.try_send(open);
                Flow::Continue(())
            }
            Action::Swap(swap) => self.swap(swap).await,
            Action::Deliver(item, data) => self.unheard(self.deliver(item, data, frame)).await,
            Action::EndStream((stream, stage)) => {
                if !config.streams.end(stream, stage) {
                    let peer = self.peer;
                    log::debug!("{peer}: end of stage {stage} of stream {stream}, which has ended");
                }
                Flow::Continue(())
            }
            Action::Answer(msg) => self.answer(msg).await,
            Action::Close(why) => {
                self.close(&why).await;
                Flow::Break(())
            }
        }
    }

    /// Sends a message to the master.
    async fn send(&self, msg: &Message) -> Flow {
        let sent = self.sender.lock().await.send(msg).await;
        self.sent(sent)
    }

    /// Whether the session goes on after a send.
    fn sent(&self, sent: Result<(), WireError>) -> Flow {
        match sent {
            Ok(()) => Flow::Continue(()),
            Err(e) => {
                log::warn!("connection to master {} failed: {e}", self.peer);
                Flow::Break(())
            }
        }
    }

    /// Ends the connection, saying why in the log. A master that said
    /// goodbye or sent bad input gets the frame being written first; one
    /// taken for gone does not: a frame it does not read may hold the
    /// sender for ever, and the connection closes when the session's
    /// loops are dropped.
    async fn close(&self, why: &Ending) {
        let peer = self.peer;
        match why {
            Ending::Goodbye => log::info!("master {peer} {why}"),
            // Logged as it was read.
            Ending::BadInput => {}
            Ending::Silent(_) | Ending::NotReading => {
                // Closed before it is said (a writer may hold the
                // sender): whoever reads the line finds it closed.
                self.closer.close();
                log::warn!("master {peer} {why}");
                return;
            }
        }
        self.sender.lock().await.close();
    }

    /// Calls the session when it is due (or its timeout moved), and
    /// carries out what it says: a heartbeat, or the end of a master taken
    /// for gone.
    async fn tick(&self, liveness: Arc<Liveness>) {
        // Moved by every result written, the timeout is not set anew each
        // time (see `Alarm`).
        let mut alarm = Alarm::new();
        loop {
            let changed = self.changed.listen();
            let due = self.session.borrow().poll_timeout();
            future::or(alarm.ring_by(due), changed).await;
            let heard = Heard {
                beats: liveness.beats(),
                silent_for: liveness.silent_for(),
            };
            for action in self.due(heard) {
                match action {
                    // Sent by `beat`, so that a master that reads nothing
                    // (the sender held by a frame it does not take) cannot
                    // stop this loop from judging it.
                    Action::Send(Message::Heartbeat) => {
                        let _ = self.beat.try_send(());
                    }
                    Action::Close(why) => return self.close(&why).await,
                    other => {
                        let now = Frame {
                            started: Instant::now(),
                            len: 0,
                        };
                        if self.execute(other, now, &mut Vec::new()).await.is_break() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Sends the heartbeats [`Driver::tick`] asks for (one waiting at
    /// most: a beat due while another waits for the sender is dropped).
    async fn beat(&self, due: async_channel::Receiver<()>) {
        while due.recv().await.is_ok() {
            if self.send(&Message::Heartbeat).await.is_break() {
                return;
            }
        }
    }

    /// What the session says is due now; the first time it sees the
    /// master beat, the log says what its silence will mean.
    fn due(&self, heard: Heard) -> Vec<Action> {
        let mut session = self.session.borrow_mut();
        let beat_before = session.master_beats();
        let actions = session.on_timeout(Instant::now(), heard);
        if session.master_beats() && !beat_before {
            let every = session.heartbeat();
            let down_after = every * DOWN_AFTER_BEATS;
            log::info!(
                "master {} beats every {every:?}; should it fall silent for {down_after:?} while \
                 work of its is unfinished, it will be taken for gone",
                self.peer
            );
        }
        actions
    }

    /// Runs the stage this session opened, if any (dropped with the
    /// session).
    async fn run_stage(
        &self,
        opened: async_channel::Receiver<StageOpen>,
        swaps: async_channel::Receiver<StageSwap>,
        plaintext: bool,
    ) {
        if let Ok(open) = opened.recv().await {
            // The heartbeat the master asked for: the stage asks it of
            // its successors too.
            let link = stages::Link {
                conn: self.conn,
                plaintext,
                heartbeat: self.session.borrow().heartbeat(),
            };
            stages::run_stage(self.config, open, &self.sender, link, swaps).await;
            self.session.borrow_mut().stage_ended();
        }
        future::pending::<()>().await
    }

    /// Tells the master the agent is shutting down, and closes the
    /// connection.
    async fn shutting_down(&self) {
        let mut s = self.sender.lock().await;
        let bye = error_message(ErrorCode::ShuttingDown, "agent is shutting down".into());
        let _ = s.send(&bye).await;
        s.close();
    }

    /// Cleans up after the session: its last job ends here, the streams
    /// it fed without their end are cut, its queued tasks are dropped.
    fn finish(self) {
        let peer = self.peer;
        let left = self.session.into_inner().finish();
        if let Some(job) = left.last_job {
            self.config.kernels.end_job(job);
        }
        self.job_news.close(peer);
        self.warnings.close(peer);
        for (stream, stage) in left.cut {
            let why = format!("the connection from {peer} ended before the end of the stream");
            self.config.streams.cut(stream, stage, &why);
        }
        if left.unfinished > 0 {
            // The workers skip queued calls whose session is gone.
            log::info!(
                "master {peer} left {} tasks unfinished; those not started are dropped",
                left.unfinished
            );
        }
    }
}
