//! The rules of one master's session, without sockets or a clock: what to
//! do with each message, the heartbeat both sides agreed on, what the
//! master's silence means, how many of its tasks may be in flight, the one
//! stage and raw echo socket it may open, the jobs and streams it fed.
//!
//! [`roles`](crate::roles) drives a [`Session`]: it hands it each message
//! read ([`Session::handle`]), what the workers and stages report, and the
//! time; it carries out the [`Action`]s returned, and calls
//! [`Session::on_timeout`] at [`Session::poll_timeout`]. The rules are
//! tested as transcripts on a clock the tests move (`tests/it/session.rs`).

use skelpi_proto::beat::{self, Beats};
use skelpi_proto::code::StageSwap;
use skelpi_proto::{
    Array, ErrorCode, ErrorReply, JobId, MAX_TASKS_PER_WORKER, Message, StageOpen, StreamItem,
    TaskHead, credits_per_worker,
};
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

/// How long one result may take to be written to its master: a master
/// that reads nothing for this long (with results waiting) is taken for
/// gone, and its session ends. A 16 MiB frame takes 1.4 s at 100 Mb/s.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(60);

/// A stream's stage: `(stream, stage)`.
pub type StageKey = (u64, u32);

/// What the session asks its driver to do, in order.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Send this message to the master.
    Send(Message),
    /// Send this message with an array (an echo's reply).
    SendBulk(Message, Array),
    /// Queue this task on the workers: a slot is taken for it, given back
    /// by [`Session::task_finished`] once its outcome is taken, or at once
    /// if its kernel is unknown here (then answer `TaskFailed`). A small
    /// task that came with every slot taken waits in the session's queue
    /// instead, and comes back from [`Session::release_next`].
    RunTask(TaskHead, Array),
    /// This job has ended here: the kernels may free what they kept for it.
    EndJob(JobId),
    /// Open the raw echo socket and answer `RawEchoReady`, or an error.
    OpenRawEcho,
    /// Start the stage (the session runs one at most); report its end with
    /// [`Session::stage_ended`].
    StartStage(StageOpen),
    /// Pass a kernel swap to the running stage.
    Swap(StageSwap),
    /// Deliver a stream item to its stage here (waiting while its inbox is
    /// full); a refusal goes to [`Session::delivery_refused`].
    Deliver(StreamItem, Array),
    /// The end of a stream for a stage here.
    EndStream(StageKey),
    /// Answer the master's hello with this agent's facts.
    Welcome,
    /// Answer a request from the agent's shared state (a stage query, a
    /// clock probe, a trace collection, a module push).
    Answer(Message),
    /// End the session (after sending anything before this).
    Close(Ending),
}

/// Why a session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The master said goodbye.
    Goodbye,
    /// The master sent what cannot be read further.
    BadInput,
    /// The master beat, then fell silent this long with work unfinished.
    Silent(Duration),
    /// The master took no result for [`WRITE_DEADLINE`].
    NotReading,
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Goodbye => f.write_str("said goodbye"),
            Ending::BadInput => f.write_str("sent input that cannot be read further"),
            Ending::Silent(d) => {
                write!(f, "silent for {d:.1?} with work unfinished: taken for gone")
            }
            Ending::NotReading => {
                write!(f, "took no result for {WRITE_DEADLINE:?}: taken for gone")
            }
        }
    }
}

/// What the driver saw of the master's liveness (the receiver counts
/// heartbeats, which never reach [`Session::handle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    /// Heartbeats received so far.
    pub beats: u64,
    /// Time since the last frame began to arrive.
    pub silent_for: Duration,
}

/// A session's state.
#[derive(Debug)]
pub struct Session {
    /// Tasks it may have on the workers (queued, running, or their
    /// outcome waiting to be sent): what bounds the outcomes it holds.
    slots: usize,
    /// Worker threads, if short small tasks may take more slots than
    /// `slots` (see [`Session::deepening`]).
    workers: Option<usize>,
    /// Recent kernel time of this job's tasks that ran to a result (a
    /// moving mean that takes a much longer one at once).
    kernel_mean: Option<Duration>,
    /// No other job has calls on the workers (as the driver last said).
    alone: bool,
    in_flight: usize,
    /// Small tasks that came with every slot taken, in arrival order: each
    /// runs when a slot frees, and reading goes on meanwhile.
    queued: VecDeque<(TaskHead, Array)>,
    /// Small tasks `queued` may hold.
    queue_room: usize,
    /// A task that came with every slot taken and no room in `queued`
    /// (or too large for it): reading waits until it can go on.
    held: Option<(TaskHead, Array)>,
    /// The heartbeat the master asked for, once.
    heartbeat: Option<Duration>,
    beats: Beats,
    /// When to look at the master's silence next.
    next_watch: Option<Instant>,
    /// The master beats (said once in the log).
    master_beats: bool,
    stage: Option<StageKey>,
    stage_running: bool,
    raw_opened: bool,
    last_job: Option<JobId>,
    /// Stages here this connection delivered items to and not yet their
    /// end: if it ends first, their input is cut.
    feeding: HashSet<StageKey>,
    /// Since when a result has been being written.
    writing_since: Option<Instant>,
    /// Reading is held by this agent's own backpressure (a stage's full
    /// inbox): the master's frames wait unread in the socket, so its
    /// silence is not judged meanwhile.
    reading_held: bool,
    /// When reading last went on after being held: silence counts from
    /// then at the earliest.
    reading_since: Option<Instant>,
    ended: bool,
}

impl Session {
    /// A session that may have `slots` tasks on the workers and
    /// `queue_room` more small ones (inputs of at most
    /// [`SMALL_TASK_BYTES`](skelpi_proto::SMALL_TASK_BYTES)) waiting for
    /// a slot.
    pub fn new(slots: usize, queue_room: usize) -> Session {
        Session {
            slots: slots.max(1),
            workers: None,
            kernel_mean: None,
            alone: true,
            in_flight: 0,
            queued: VecDeque::new(),
            queue_room,
            held: None,
            heartbeat: None,
            beats: Beats::none(),
            next_watch: None,
            master_beats: false,
            stage: None,
            stage_running: false,
            raw_opened: false,
            last_job: None,
            feeding: HashSet::new(),
            writing_since: None,
            reading_held: false,
            reading_since: None,
            ended: false,
        }
    }

    /// Lets small tasks whose kernels have been short take more slots than
    /// the session's own, as many per worker (of `workers`) as make
    /// [`WINDOW_WORK`](skelpi_proto::WINDOW_WORK) of their job's recent
    /// kernel time, up to [`MAX_TASKS_PER_WORKER`]: a worker then runs a
    /// batch of them without being woken for each. Only while no other
    /// job has calls on the workers ([`Session::set_alone`]) and no result
    /// waits to be written: another master's first task waits behind at
    /// most the batch, and from then on each keeps to its own slots; a
    /// master that stops reading holds no more results than before.
    pub fn deepening(mut self, workers: usize) -> Session {
        self.workers = Some(workers.max(1));
        self
    }

    /// Most tasks it may ever have on the workers: what the channel of
    /// their outcomes must hold.
    pub fn most_slots(&self) -> usize {
        self.workers
            .map_or(self.slots, |w| (w * MAX_TASKS_PER_WORKER).max(self.slots))
    }

    /// A task of this master's `job` ran `busy` on a worker, to a result
    /// (`ok`) or not (a failure, or a deadline passed in the queue: not
    /// counted, as it says nothing of how long the kernel runs). An
    /// earlier job's (a copy finishing late) is not counted either.
    pub fn kernel_ran(&mut self, job: JobId, busy: Duration, ok: bool) {
        if !ok || self.last_job.is_some_and(|j| j != job) {
            return;
        }
        self.kernel_mean = Some(match self.kernel_mean {
            // A much longer one is taken at once: kernels got longer.
            Some(mean) if busy <= mean * 2 => (mean * 7 + busy) / 8,
            _ => busy,
        });
    }

    /// Whether no other job has calls on the workers now (the driver asks
    /// the workers before each task it hands the session).
    pub fn set_alone(&mut self, alone: bool) {
        self.alone = alone;
    }

    /// The job whose tasks may go deeper than the session's own slots
    /// now, if any: the last task's job, once the session holds its own
    /// slots' worth (only then does [`Session::set_alone`] matter).
    pub fn deepening_job(&self) -> Option<JobId> {
        self.last_job
            .filter(|_| self.workers.is_some() && self.in_flight >= self.slots)
    }

    /// Slots a task may take: the session's own, or more for a small one
    /// while kernels have been short (see [`Session::deepening`]).
    fn slots_for(&self, task: &TaskHead, input: &Array) -> usize {
        let deep = self.alone && self.writing_since.is_none() && is_small(task, input);
        match (self.workers, self.kernel_mean) {
            (Some(workers), Some(mean)) if deep => {
                (workers * credits_per_worker(mean)).max(self.slots)
            }
            _ => self.slots,
        }
    }

    /// The heartbeat the master asked for (zero: none yet).
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat.unwrap_or_default()
    }

    /// Tasks of this master on the workers (queued there, running, or
    /// their outcome waiting to be sent).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Small tasks of this master waiting in the session for a slot.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Whether the master's next message may be read: not while a task
    /// waits for a slot with no room in the queue (so a master past its
    /// slots waits, and its TCP).
    pub fn can_read(&self) -> bool {
        self.held.is_none() && !self.ended
    }

    /// Whether it ended.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// What to do with a message from the master (`bulk`: its array).
    pub fn handle(&mut self, now: Instant, msg: Message, bulk: Option<Array>) -> Vec<Action> {
        if self.ended {
            return Vec::new();
        }
        match msg {
            Message::Hello(hello) => self.on_hello(now, hello.heartbeat_ms, bulk),
            Message::Ping(p) => vec![Action::Send(Message::Pong(p))],
            Message::Echo(chunk) => match bulk {
                Some(data) => vec![Action::SendBulk(Message::EchoReply(chunk), data)],
                None => vec![bad_request("echo without an array")],
            },
            Message::Task(task) => self.on_task(task, bulk),
            Message::RawEchoOpen => self.on_raw_echo(),
            Message::StageOpen(open) => self.on_stage_open(open),
            Message::StageSwap(swap) => self.on_swap(swap),
            Message::StreamItem(item) => {
                self.feeding.insert((item.stream, item.stage));
                vec![Action::Deliver(
                    item,
                    bulk.unwrap_or_else(|| Array::list(Vec::new())),
                )]
            }
            Message::StreamEnd(end) => {
                let key = (end.stream, end.stage);
                self.feeding.remove(&key);
                vec![Action::EndStream(key)]
            }
            msg @ (Message::StageQuery(_)
            | Message::ClockProbe(_)
            | Message::TraceCollect(_)
            | Message::ModulePush(_)
            | Message::DeployOffer(_)
            | Message::DeployChunk(_)
            | Message::DeployFinish
            | Message::DeployRestart
            | Message::DeployCommit(_)
            | Message::DeployAbort(_)
            | Message::HealthQuery) => vec![Action::Answer(msg)],
            Message::Bye => self.end(Ending::Goodbye),
            // The driver logs it; nothing to answer.
            Message::Error(_) => Vec::new(),
            other => vec![error(
                ErrorCode::Unsupported,
                format!("agent does not handle {} messages", other.kind_name()),
            )],
        }
    }

    /// The master sent bytes that are no message (`what`); `recoverable`:
    /// the next frame can still be read.
    pub fn bad_input(&mut self, what: String, recoverable: bool) -> Vec<Action> {
        let mut actions = vec![error(ErrorCode::BadRequest, what)];
        if !recoverable {
            actions.extend(self.end(Ending::BadInput));
        }
        actions
    }

    fn on_hello(&mut self, now: Instant, heartbeat_ms: u32, _: Option<Array>) -> Vec<Action> {
        if let Some(every) = beat::negotiate(heartbeat_ms)
            && self.heartbeat.is_none()
        {
            self.heartbeat = Some(every);
            self.beats = Beats::new(every, now);
            self.next_watch = Some(now + every / 4);
        }
        vec![Action::Welcome]
    }

    fn on_task(&mut self, task: TaskHead, bulk: Option<Array>) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(ended) = self.last_job.replace(task.job)
            && ended != task.job
        {
            actions.push(Action::EndJob(ended));
            // Another job, other kernels: their times are not known yet.
            self.kernel_mean = None;
        }
        let input = bulk.unwrap_or_else(|| Array::list(Vec::new()));
        if self.in_flight < self.slots_for(&task, &input) && self.queued.is_empty() {
            self.in_flight += 1;
            actions.push(Action::RunTask(task, input));
        } else if self.fits_queue(&task, &input) {
            self.queued.push_back((task, input));
        } else {
            self.held = Some((task, input));
        }
        actions
    }

    /// Whether a task may wait in the queue now: small (its head counted
    /// too, see [`skelpi_proto::task_bytes`]) and with room left.
    fn fits_queue(&self, task: &TaskHead, input: &Array) -> bool {
        self.queued.len() < self.queue_room && is_small(task, input)
    }

    fn on_raw_echo(&mut self) -> Vec<Action> {
        if std::mem::replace(&mut self.raw_opened, true) {
            return vec![bad_request(
                "this session already opened its raw echo socket",
            )];
        }
        vec![Action::OpenRawEcho]
    }

    fn on_stage_open(&mut self, open: StageOpen) -> Vec<Action> {
        if self.stage.is_some() {
            return vec![bad_request("this session already runs a stage")];
        }
        self.stage = Some((open.stream, open.stage));
        self.stage_running = true;
        vec![Action::StartStage(open)]
    }

    fn on_swap(&mut self, swap: StageSwap) -> Vec<Action> {
        if self.stage == Some((swap.stream, swap.stage)) {
            return vec![Action::Swap(swap)];
        }
        vec![bad_request(&format!(
            "stage swap for stage {} of stream {}, which this session does not run",
            swap.stage, swap.stream
        ))]
    }

    /// The raw echo socket could not be opened: it may be asked again.
    pub fn raw_echo_failed(&mut self) {
        self.raw_opened = false;
    }

    /// A task's outcome was taken (or its kernel was unknown): its slot
    /// is free again.
    pub fn task_finished(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// The next task waiting for a slot, once one is free: the oldest
    /// queued (the held one then takes its place in the queue if it fits,
    /// so reading goes on), else the held one (and reading goes on).
    pub fn release_next(&mut self) -> Option<Action> {
        let (task, input) = self.queued.front().or(self.held.as_ref())?;
        if self.in_flight >= self.slots_for(task, input) {
            return None;
        }
        let (task, input) = match self.queued.pop_front() {
            Some(next) => {
                if self
                    .held
                    .as_ref()
                    .is_some_and(|(t, a)| self.fits_queue(t, a))
                {
                    self.queued.extend(self.held.take());
                }
                next
            }
            None => self.held.take()?,
        };
        self.in_flight += 1;
        Some(Action::RunTask(task, input))
    }

    /// The stage refused an item (`what`: why): the error to send.
    pub fn delivery_refused(&mut self, key: StageKey, what: String) -> Message {
        self.feeding.remove(&key);
        error_message(ErrorCode::BadRequest, what)
    }

    /// The stage this session started has ended.
    pub fn stage_ended(&mut self) {
        self.stage_running = false;
    }

    /// Reading the master's frames is held by this agent (`held`), or goes
    /// on again at `now`: while held, the master's silence is not judged,
    /// and afterwards it counts from `now` at the earliest.
    pub fn reading_held(&mut self, held: bool, now: Instant) {
        self.reading_held = held;
        if !held {
            self.reading_since = Some(now);
        }
    }

    /// A result began to be written at `now`.
    pub fn writing(&mut self, now: Instant) {
        self.writing_since = Some(now);
    }

    /// The result being written was written.
    pub fn written(&mut self) {
        self.writing_since = None;
    }

    /// When [`Session::on_timeout`] is due next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ended {
            return None;
        }
        let deadline = self.writing_since.map(|t| t + WRITE_DEADLINE);
        [self.beats.next(), self.next_watch, deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// What is due at `now`, given what was `heard` of the master: a
    /// heartbeat, or the end of a master taken for gone.
    pub fn on_timeout(&mut self, now: Instant, heard: Heard) -> Vec<Action> {
        if self.ended {
            return Vec::new();
        }
        if self
            .writing_since
            .is_some_and(|t| now >= t + WRITE_DEADLINE)
        {
            return self.end(Ending::NotReading);
        }
        if let (Some(at), Some(every)) = (self.next_watch, self.heartbeat)
            && at <= now
        {
            self.next_watch = Some(now + every / 4);
            self.master_beats |= heard.beats > 0;
            let busy = self.in_flight > 0 || !self.queued.is_empty() || self.stage_running;
            let silent_for = match self.reading_since {
                Some(t) => heard.silent_for.min(now.saturating_duration_since(t)),
                None => heard.silent_for,
            };
            if busy && !self.reading_held && beat::is_down(every, heard.beats, silent_for) {
                return self.end(Ending::Silent(silent_for));
            }
        }
        if self.beats.take_due(now) {
            return vec![Action::Send(Message::Heartbeat)];
        }
        Vec::new()
    }

    /// Whether the master has beaten (as last seen by [`Session::on_timeout`]).
    pub fn master_beats(&self) -> bool {
        self.master_beats
    }

    fn end(&mut self, why: Ending) -> Vec<Action> {
        self.ended = true;
        vec![Action::Close(why)]
    }

    /// What the session leaves to clean up once it is over: the last job
    /// it ran tasks for (now ended here), the stages whose input it fed
    /// without their end (to cut), and the tasks left unfinished.
    pub fn finish(self) -> Leftovers {
        let mut cut: Vec<_> = self.feeding.into_iter().collect();
        cut.sort_unstable();
        Leftovers {
            last_job: self.last_job,
            cut,
            unfinished: self.in_flight + self.queued.len() + usize::from(self.held.is_some()),
        }
    }
}

/// What an ended session leaves to clean up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftovers {
    /// The last job it ran tasks for: it has ended here.
    pub last_job: Option<JobId>,
    /// Stages it fed without their end: their input is cut.
    pub cut: Vec<StageKey>,
    /// Tasks left queued or running.
    pub unfinished: usize,
}

/// Whether a task is small (its head counted too, see
/// [`skelpi_proto::task_bytes`]): it may wait in the session's queue.
fn is_small(task: &TaskHead, input: &Array) -> bool {
    let bytes = skelpi_proto::task_bytes(&task.kernel, task.args.len(), input.data.len());
    bytes <= skelpi_proto::SMALL_TASK_BYTES
}

/// An error reply (see [`error`]) for a bad request.
fn bad_request(what: &str) -> Action {
    error(ErrorCode::BadRequest, what.to_owned())
}

/// An error reply to send (its message clipped: it may quote the peer).
pub fn error(code: ErrorCode, message: String) -> Action {
    Action::Send(error_message(code, message))
}

/// An error reply (its message clipped: it may quote the peer).
pub fn error_message(code: ErrorCode, message: String) -> Message {
    use skelpi_proto::text::{MESSAGE_MAX, clip};
    let message = match clip(&message, MESSAGE_MAX) {
        std::borrow::Cow::Borrowed(_) => message,
        clipped => clipped.into_owned(),
    };
    Message::Error(ErrorReply { code, message })
}

impl fmt::Display for Action {
    /// One line of a transcript: `send Pong`, `run task 3`, `close: …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Send(Message::Error(e)) => write!(f, "send error {:?}: {}", e.code, e.message),
            Action::Send(m) => write!(f, "send {}", m.kind_name()),
            Action::SendBulk(m, a) => write!(f, "send {} of {}", m.kind_name(), a.data.len()),
            Action::RunTask(t, _) => write!(f, "run task {}", t.id),
            Action::EndJob(j) => write!(f, "end job {j}"),
            Action::OpenRawEcho => f.write_str("open raw echo"),
            Action::Welcome => f.write_str("send welcome"),
            Action::StartStage(o) => write!(f, "start stage {} of {}", o.stage, o.stream),
            Action::Swap(s) => write!(f, "swap stage {} to {}", s.stage, s.kernel),
            Action::Deliver(i, _) => write!(f, "deliver item {} to stage {}", i.index, i.stage),
            Action::EndStream((stream, stage)) => write!(f, "end stream {stream} stage {stage}"),
            Action::Answer(m) => write!(f, "answer {}", m.kind_name()),
            Action::Close(why) => write!(f, "close: {why}"),
        }
    }
}
