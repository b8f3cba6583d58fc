//! The session's rules as transcripts, on a clock the test moves and a
//! master the test plays (no sockets): what the agent does with each
//! message, when it beats, when a silent master or one that reads nothing
//! is taken for gone, what an ended session leaves to clean up. Each line
//! of a transcript is `<ms> <action>`; a received message is `<ms> <- kind`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use skelpi_agent::session::{Heard, Leftovers, Session, WRITE_DEADLINE};
use skelpi_proto::beat::DOWN_AFTER_BEATS;
use skelpi_proto::code::StageSwap;
use skelpi_proto::{
    Array, Hello, JobId, Message, Ping, SMALL_TASK_BYTES, StageOpen, StreamItem, StreamRef,
    TaskHead,
};
use std::time::{Duration, Instant};

/// Calls of `on_timeout` one run may make (every loop is bounded).
const MAX_TICKS: usize = 1_000_000;

/// A session, a fake clock and what the master was heard to say.
struct Sim {
    session: Session,
    t0: Instant,
    now: Instant,
    /// Heartbeats the agent heard from the master.
    beats_heard: u64,
    /// When the master was last heard (any frame).
    last_heard: Instant,
    lines: Vec<String>,
}

impl Sim {
    fn new(slots: usize) -> Sim {
        Sim::queueing(slots, 0)
    }

    /// A session with `slots` and room for `room` small tasks queued.
    fn queueing(slots: usize, room: usize) -> Sim {
        let t0 = Instant::now();
        Sim {
            session: Session::new(slots, room),
            t0,
            now: t0,
            beats_heard: 0,
            last_heard: t0,
            lines: Vec::new(),
        }
    }

    fn ms(&self) -> u128 {
        (self.now - self.t0).as_millis()
    }

    fn log(&mut self, actions: Vec<skelpi_agent::session::Action>) {
        for action in actions {
            let line = format!("{} {action}", self.ms());
            self.lines.push(line);
        }
    }

    /// The master's message arrives now.
    fn recv(&mut self, msg: Message) -> &mut Sim {
        self.recv_bulk(msg, None)
    }

    /// The master's message arrives now, with an array.
    fn recv_bulk(&mut self, msg: Message, bulk: Option<Array>) -> &mut Sim {
        self.last_heard = self.now;
        self.lines
            .push(format!("{} <- {}", self.ms(), msg.kind_name()));
        let actions = self.session.handle(self.now, msg, bulk);
        self.log(actions);
        self
    }

    /// A heartbeat of the master arrives now (the receiver counts it; it
    /// never reaches the session).
    fn beat(&mut self) {
        self.beats_heard += 1;
        self.last_heard = self.now;
    }

    /// Moves the clock to `ms` after the start, calling the session each
    /// time it is due on the way.
    fn run_until(&mut self, ms: u64) -> &mut Sim {
        let target = self.t0 + Duration::from_millis(ms);
        for _ in 0..MAX_TICKS {
            match self.session.poll_timeout() {
                Some(at) if at <= target => {
                    self.now = self.now.max(at);
                    let heard = Heard {
                        beats: self.beats_heard,
                        silent_for: self.now - self.last_heard,
                    };
                    let actions = self.session.on_timeout(self.now, heard);
                    self.log(actions);
                }
                _ => {
                    self.now = self.now.max(target);
                    return self;
                }
            }
        }
        panic!("the session was due more than {MAX_TICKS} times before {ms} ms");
    }

    /// The transcript so far, without heartbeats sent; cleared.
    fn take(&mut self) -> Vec<String> {
        let lines = std::mem::take(&mut self.lines);
        lines
            .into_iter()
            .filter(|l| !l.ends_with("send heartbeat"))
            .collect()
    }

    /// The times heartbeats were sent, ms; cleared with the transcript.
    fn beats_sent(&mut self) -> Vec<u128> {
        let lines = std::mem::take(&mut self.lines);
        lines
            .iter()
            .filter(|l| l.ends_with("send heartbeat"))
            .map(|l| l.split(' ').next().unwrap().parse().unwrap())
            .collect()
    }
}

fn hello(heartbeat_ms: u32) -> Message {
    Message::Hello(Hello {
        master: "test".into(),
        heartbeat_ms,
    })
}

fn task(id: u64, job: u64) -> Message {
    Message::Task(TaskHead {
        id,
        job: JobId(job),
        kernel: "square".into(),
        args: Vec::new(),
        trace: false,
        deadline_ms: None,
    })
}

fn stage_open(stream: u64, stage: u32) -> Message {
    Message::StageOpen(StageOpen {
        stream,
        stage,
        kernel: "square".into(),
        args: Vec::new(),
        next: None,
        trace: false,
    })
}

fn swap(stream: u64, stage: u32) -> Message {
    Message::StageSwap(StageSwap {
        id: 1,
        stream,
        stage,
        kernel: "cube".into(),
        args: Vec::new(),
    })
}

fn item(stream: u64, stage: u32, index: u64) -> Message {
    Message::StreamItem(StreamItem {
        stream,
        stage,
        index,
    })
}

#[test]
fn hello_gets_a_welcome_and_the_beats_asked_for_bounded_first_at_once() {
    let mut sim = Sim::new(4);
    sim.recv(hello(10)).run_until(250);
    // 10 ms is below the floor: beats every 100 ms, the first at once.
    assert_eq!(sim.beats_sent(), [0, 100, 200]);
    assert_eq!(sim.session.heartbeat(), Duration::from_millis(100));
    // A second hello changes nothing.
    sim.recv(hello(1_000)).run_until(350);
    assert_eq!(sim.take(), ["250 <- hello", "250 send welcome"]);
    assert_eq!(sim.session.heartbeat(), Duration::from_millis(100));

    let mut sim = Sim::new(4);
    sim.recv(hello(u32::MAX));
    assert_eq!(sim.session.heartbeat(), Duration::from_secs(60));
    let mut sim = Sim::new(4);
    sim.recv(hello(0)).run_until(600_000);
    assert_eq!(sim.take(), ["0 <- hello", "0 send welcome"]);
    assert_eq!(
        sim.session.poll_timeout(),
        None,
        "no beats asked: never due"
    );
}

#[test]
fn a_master_that_beat_then_fell_silent_with_a_task_running_is_taken_for_gone() {
    let mut sim = Sim::new(4);
    sim.recv(hello(100));
    for t in (0..=1_000).step_by(100) {
        sim.run_until(t);
        sim.beat();
    }
    sim.recv(task(7, 1)).run_until(3_000);
    let lines = sim.take();
    assert_eq!(
        lines[..4],
        [
            "0 <- hello",
            "0 send welcome",
            "1000 <- task",
            "1000 run task 7"
        ]
    );
    // Gone once silent 4 beats (400 ms), seen at the next look (every 25 ms).
    let [close] = &lines[4..] else {
        panic!("one close expected: {lines:?}")
    };
    let at: u64 = close.split(' ').next().unwrap().parse().unwrap();
    assert!((1_400..=1_425).contains(&at), "{close}");
    assert!(close.contains("close: silent for"), "{close}");
    assert!(sim.session.ended());
    assert_eq!(sim.session.poll_timeout(), None);
}

#[test]
fn a_silent_master_is_kept_while_nothing_of_its_runs_and_if_it_never_beat() {
    // Idle: silence is a master thinking, not a dead one.
    let mut sim = Sim::new(4);
    sim.recv(hello(100));
    sim.beat();
    sim.run_until(600_000);
    assert!(!sim.session.ended());

    // Busy, but it never beat (an older master): nothing to judge by.
    let mut sim = Sim::new(4);
    sim.recv(hello(100)).recv(task(1, 1)).run_until(600_000);
    assert!(!sim.session.ended());

    // A stage of its running counts as work; once the stage ended, not.
    let mut sim = Sim::new(4);
    sim.recv(hello(100)).recv(stage_open(3, 0));
    sim.beat();
    sim.session.stage_ended();
    sim.run_until(600_000);
    assert!(!sim.session.ended());
    let mut sim = Sim::new(4);
    sim.recv(hello(100)).recv(stage_open(3, 0));
    sim.beat();
    sim.run_until(1_000);
    assert!(sim.session.ended());
}

#[test]
fn silence_while_the_agent_holds_its_reading_is_not_the_masters() {
    // A stage of the master runs; the agent stops reading for 10 s (its
    // stage's inbox is full): the beats wait unread in the socket, and the
    // master is not judged by them.
    let mut sim = Sim::new(4);
    sim.recv(hello(100)).recv(stage_open(3, 0));
    sim.beat();
    sim.run_until(100);
    sim.session.reading_held(true, sim.now);
    sim.run_until(10_100);
    assert!(!sim.session.ended(), "{:?}", sim.take());
    // Reading goes on and nothing comes (the master is gone): its silence
    // counts from then, 4 beats (400 ms) and the next look (25 ms).
    sim.session.reading_held(false, sim.now);
    sim.run_until(11_000);
    let lines = sim.take();
    let close = lines.last().unwrap();
    let at: u64 = close.split(' ').next().unwrap().parse().unwrap();
    assert!((10_500..=10_525).contains(&at), "{lines:?}");
    assert!(close.contains("close: silent for 400"), "{close}");
}

/// A master beating every 100 ms over a network that delays or drops
/// beats, with a task running: the session ends if and only if some gap
/// between beats heard reached 4 intervals, and never before the gap did.
#[test]
fn seeded_beat_delays_and_drops_end_the_session_only_past_the_bound() {
    let every = 100u64;
    let bound = every * u64::from(DOWN_AFTER_BEATS);
    let (mut kept, mut gone) = (0, 0);
    for seed in 0..300 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sim = Sim::new(4);
        sim.recv(hello(every as u32)).recv(task(1, 1));
        sim.beat();
        let (mut heard_at, mut widest) = (0u64, 0u64);
        let (mut sent_at, mut gone_at) = (0u64, None);
        while sent_at < 20_000 {
            sent_at += every;
            if rng.random_bool(0.2) {
                continue; // dropped
            }
            // Delayed by up to 3 intervals, never reordered past a later one.
            let arrives = (sent_at + rng.random_range(0..3 * every)).max(heard_at);
            sim.run_until(arrives);
            if sim.session.ended() {
                gone_at = Some(sim.ms() as u64);
                break;
            }
            widest = widest.max(arrives - heard_at);
            heard_at = arrives;
            sim.beat();
        }
        match gone_at {
            None => {
                kept += 1;
                let most = bound + every / 4;
                assert!(widest < most, "seed {seed}: gap {widest} ms kept");
            }
            Some(_) => {
                gone += 1;
                let close = sim.take().pop().unwrap();
                let at: u64 = close.split(' ').next().unwrap().parse().unwrap();
                assert!(
                    at - heard_at >= bound,
                    "seed {seed}: gone after {} ms",
                    at - heard_at
                );
                assert!(close.contains("close: silent"), "seed {seed}: {close}");
            }
        }
    }
    assert!(
        kept > 10 && gone > 10,
        "both outcomes drawn: {kept} kept, {gone} gone"
    );
}

#[test]
fn a_master_past_its_slots_is_not_read_until_one_is_given_back() {
    let mut sim = Sim::new(2);
    sim.recv(task(1, 1)).recv(task(2, 1)).recv(task(3, 1));
    assert_eq!(
        sim.take(),
        [
            "0 <- task",
            "0 run task 1",
            "0 <- task",
            "0 run task 2",
            "0 <- task"
        ]
    );
    assert!(!sim.session.can_read(), "task 3 waits for a slot");
    assert_eq!(sim.session.release_next(), None, "no slot yet");
    sim.session.task_finished();
    let run = sim.session.release_next().expect("task 3 runs");
    assert_eq!(run.to_string(), "run task 3");
    assert!(sim.session.can_read());
    assert_eq!(sim.session.in_flight(), 2);
    let left = sim.session.finish();
    assert_eq!(left.unfinished, 2);
}

/// An input of `floats` elements.
fn input(floats: usize) -> Option<Array> {
    Some(Array::list(vec![0.5; floats]))
}

/// Floats of the largest small task's input (a `square` task without
/// arguments: its kernel's name counts too).
const SMALL: usize = (SMALL_TASK_BYTES - "square".len()) / 8;

#[test]
fn small_tasks_past_the_slots_queue_and_reading_goes_on_until_the_queue_is_full() {
    let mut sim = Sim::queueing(1, 2);
    sim.recv_bulk(task(1, 1), input(SMALL));
    sim.recv_bulk(task(2, 1), input(SMALL));
    sim.recv_bulk(task(3, 1), input(1));
    assert!(sim.session.can_read(), "two small tasks fit the queue");
    assert_eq!(sim.session.queued(), 2);
    sim.recv_bulk(task(4, 1), input(1));
    assert!(!sim.session.can_read(), "task 4 finds the queue full");
    assert_eq!(sim.session.release_next(), None, "no slot yet");
    sim.session.task_finished();
    let run = sim.session.release_next().expect("the oldest queued runs");
    assert_eq!(run.to_string(), "run task 2");
    assert!(sim.session.can_read(), "task 4 took task 2's place");
    assert_eq!(sim.session.queued(), 2);
    assert_eq!(sim.session.finish().unfinished, 3);
}

#[test]
fn a_large_task_past_the_slots_is_held_behind_the_queued_ones() {
    let mut sim = Sim::queueing(1, 4);
    sim.recv_bulk(task(1, 1), input(1));
    sim.recv_bulk(task(2, 1), input(1));
    sim.recv_bulk(task(3, 1), input(SMALL + 1));
    assert!(!sim.session.can_read(), "a large task never queues");
    sim.session.task_finished();
    assert_eq!(
        sim.session.release_next().unwrap().to_string(),
        "run task 2"
    );
    assert!(!sim.session.can_read(), "still held");
    sim.session.task_finished();
    assert_eq!(
        sim.session.release_next().unwrap().to_string(),
        "run task 3"
    );
    assert!(sim.session.can_read());
    assert_eq!(sim.session.release_next(), None);
}

/// In a seeded run, the master's next task (of `total`, `sent` so far)
/// comes now if one is left, the session reads, and the dice say so (a
/// small one with odds `small`): what the session does with it.
fn arrive(
    rng: &mut StdRng,
    session: &mut Session,
    now: Instant,
    (sent, total): (&mut u64, usize),
    small: f64,
) -> Option<Vec<skelpi_agent::session::Action>> {
    if *sent >= total as u64 || !session.can_read() || !rng.random_bool(0.6) {
        return None;
    }
    *sent += 1;
    let floats = if rng.random_bool(small) { 1 } else { SMALL + 1 };
    Some(session.handle(now, task(*sent, 1), input(floats)))
}

/// Seeded runs of a master sending small and large tasks while slots free
/// at random: tasks run in arrival order, each once; the workers never
/// have more than the slots, the queue never more than its room; reading
/// stops only while a task is held; nothing is left over at the end.
#[test]
fn seeded_arrivals_and_finishes_run_every_task_once_in_order_within_bounds() {
    for seed in 0..500u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let (slots, room) = (rng.random_range(1..4), rng.random_range(0..6));
        let mut session = Session::new(slots, room);
        let now = Instant::now();
        let (mut sent, mut ran, mut running) = (0u64, Vec::new(), 0usize);
        let total = 60;
        for _ in 0..10_000 {
            if ran.len() == total {
                break;
            }
            let mut actions = Vec::new();
            if let Some(came) = arrive(&mut rng, &mut session, now, (&mut sent, total), 0.8) {
                actions = came;
            } else if running > 0 {
                running -= 1;
                session.task_finished();
                actions.extend(session.release_next());
            }
            for a in actions {
                if let skelpi_agent::session::Action::RunTask(t, _) = a {
                    ran.push(t.id);
                    running += 1;
                }
            }
            assert!(session.in_flight() <= slots, "seed {seed}: slots exceeded");
            assert!(session.queued() <= room, "seed {seed}: queue exceeded");
            assert_eq!(running, session.in_flight(), "seed {seed}");
        }
        let want: Vec<u64> = (1..=total as u64).collect();
        assert_eq!(ran, want, "seed {seed}: every task once, in order");
        assert_eq!(session.finish().unfinished, running, "seed {seed}");
    }
}

/// Short small tasks go deeper onto the workers (a worker runs a batch
/// of them without being woken for each), long or large ones do not.
#[test]
fn small_tasks_of_short_kernels_take_more_slots_and_long_ones_do_not() {
    let (workers, slots, room) = (2, 4, 28);
    let mut session = Session::new(slots, room).deepening(workers);
    assert_eq!(session.most_slots(), 32, "16 per worker at most");
    let now = Instant::now();
    let mut id = 0;
    let mut send = |session: &mut Session, n: usize, floats: usize| {
        (0..n)
            .map(|_| {
                id += 1;
                session.handle(now, task(id, 1), input(floats)).len()
            })
            .sum::<usize>()
    };
    // Unknown kernel times: the session's own slots, the rest queued.
    assert_eq!(send(&mut session, 6, 1), slots);
    assert_eq!((session.in_flight(), session.queued()), (4, 2));
    // Kernels of 10 µs: 1 ms of them is 101 per worker, 16 at most.
    for _ in 0..4 {
        session.kernel_ran(JobId(1), Duration::from_micros(10), true);
        session.task_finished();
    }
    let mut released = 0;
    while session.release_next().is_some() {
        released += 1;
    }
    assert_eq!(released, 2, "the queued ones run");
    assert_eq!(send(&mut session, 40, 1), 30, "32 on the workers");
    assert_eq!((session.in_flight(), session.queued()), (32, 10));
    // A large task never goes past the session's own slots.
    let mut big = Session::new(slots, room).deepening(workers);
    big.kernel_ran(JobId(1), Duration::from_micros(10), true);
    for i in 1..=5 {
        big.handle(now, task(i, 1), input(SMALL + 1));
    }
    assert_eq!(big.in_flight(), slots, "large tasks: the own slots only");
    // Kernels of 400 µs: 3 behind the running one make 1 ms: 4 each.
    let mut mid = Session::new(slots, room).deepening(workers);
    mid.kernel_ran(JobId(1), Duration::from_micros(400), true);
    for i in 1..=12 {
        mid.handle(now, task(i, 1), input(1));
    }
    assert_eq!((mid.in_flight(), mid.queued()), (8, 4));
}

/// Deeper slots end at once when a kernel runs long (the mean takes it),
/// when another job has calls on the workers, when a result waits to be
/// written, and with a new job; failures do not make kernels look short.
#[test]
fn deeper_slots_end_with_a_long_kernel_another_job_a_blocked_writer_or_a_new_job() {
    let (workers, slots, room) = (1, 2, 14);
    let now = Instant::now();
    // Up to 20 tasks, while the session reads.
    let fill = |session: &mut Session, from: u64, job: u64| {
        for id in from..from + 20 {
            if session.can_read() {
                session.handle(now, task(id, job), input(1));
            }
        }
        session.in_flight()
    };
    let short =
        |session: &mut Session| session.kernel_ran(JobId(1), Duration::from_micros(5), true);
    // A long kernel after short ones.
    let mut s = Session::new(slots, room).deepening(workers);
    short(&mut s);
    s.kernel_ran(JobId(1), Duration::from_millis(50), true);
    assert_eq!(fill(&mut s, 1, 1), 2, "a long kernel: the own slots");
    // Another job's calls on the workers.
    let mut s = Session::new(slots, room).deepening(workers);
    short(&mut s);
    s.set_alone(false);
    assert_eq!(fill(&mut s, 1, 1), 2, "not alone: the own slots");
    s.set_alone(true);
    for _ in 0..2 {
        s.task_finished();
    }
    while s.release_next().is_some() {}
    assert_eq!(s.in_flight(), 15, "alone again: every waiting one runs");
    // A result waiting to be written.
    let mut s = Session::new(slots, room).deepening(workers);
    short(&mut s);
    s.writing(now);
    assert_eq!(fill(&mut s, 1, 1), 2, "writing: the own slots");
    // A new job: its kernels are not known yet, and the last job's late
    // outcomes do not count for it.
    let mut s = Session::new(slots, room).deepening(workers);
    short(&mut s);
    s.handle(now, task(1, 1), input(1));
    s.handle(now, task(2, 2), input(1));
    s.kernel_ran(JobId(1), Duration::from_micros(5), true);
    assert_eq!(fill(&mut s, 3, 2), 2, "a new job: the own slots");
    // Failures (or tasks past their deadline in the queue) of no time.
    let mut s = Session::new(slots, room).deepening(workers);
    s.kernel_ran(JobId(1), Duration::ZERO, false);
    assert_eq!(
        fill(&mut s, 1, 1),
        2,
        "failures say nothing of kernel times"
    );
}

/// Seeded runs as above, with deeper slots while kernels are short and
/// kernel times that change between short and long: every task runs once
/// in order, never more on the workers than the deepest slots, large
/// ones only within the session's own, and long ones within them too
/// once the mean has followed.
#[test]
fn seeded_deeper_slots_run_every_task_once_in_order_within_bounds() {
    let mut deeper_runs = 0;
    for seed in 0..300u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let workers = rng.random_range(1..4);
        let (slots, room) = (2 * workers, 14 * workers);
        let mut session = Session::new(slots, room).deepening(workers);
        let now = Instant::now();
        let (mut sent, mut ran, mut running) = (0u64, Vec::new(), Vec::<bool>::new());
        let (total, mut long_streak, mut deepest) = (200, 0, 0);
        for _ in 0..20_000 {
            if ran.len() == total {
                break;
            }
            let mut actions = Vec::new();
            if let Some(came) = arrive(&mut rng, &mut session, now, (&mut sent, total), 0.9) {
                actions = came;
            } else if !running.is_empty() {
                let was_long = running.remove(0);
                let us = if was_long { 50_000 } else { 5 };
                long_streak = if was_long { long_streak + 1 } else { 0 };
                session.kernel_ran(JobId(1), Duration::from_micros(us), true);
                session.task_finished();
                actions.extend(session.release_next());
            }
            for a in actions {
                if let skelpi_agent::session::Action::RunTask(t, input) = a {
                    let large = input.data.len() > SMALL;
                    assert!(
                        !large || session.in_flight() <= slots,
                        "seed {seed}: a large task past the own slots"
                    );
                    assert!(
                        long_streak == 0 || session.in_flight() <= slots,
                        "seed {seed}: deeper slots after a long kernel"
                    );
                    ran.push(t.id);
                    running.push((t.id - 1) / 50 % 2 == 1);
                }
            }
            assert!(
                session.in_flight() <= 16 * workers,
                "seed {seed}: slots exceeded"
            );
            deepest = deepest.max(session.in_flight());
            assert!(session.queued() <= room, "seed {seed}: queue exceeded");
            assert_eq!(running.len(), session.in_flight(), "seed {seed}");
        }
        let want: Vec<u64> = (1..=total as u64).collect();
        assert_eq!(ran, want, "seed {seed}: every task once, in order");
        deeper_runs += usize::from(deepest > slots);
    }
    assert!(
        deeper_runs > 150,
        "short tasks went deeper in {deeper_runs} runs of 300"
    );
}

#[test]
fn a_task_of_another_job_ends_the_previous_job_here() {
    let mut sim = Sim::new(8);
    sim.recv(task(1, 1)).recv(task(2, 1)).recv(task(3, 2));
    assert_eq!(
        sim.take(),
        [
            "0 <- task",
            "0 run task 1",
            "0 <- task",
            "0 run task 2",
            "0 <- task",
            "0 end job 0000000000000001",
            "0 run task 3"
        ]
    );
    assert_eq!(sim.session.finish().last_job, Some(JobId(2)));
}

#[test]
fn one_stage_and_one_raw_echo_socket_per_session_and_swaps_only_for_its_stage() {
    let mut sim = Sim::new(4);
    sim.recv(stage_open(5, 1)).recv(stage_open(6, 0));
    sim.recv(swap(5, 0)).recv(swap(5, 1));
    sim.recv(Message::RawEchoOpen).recv(Message::RawEchoOpen);
    sim.session.raw_echo_failed();
    sim.recv(Message::RawEchoOpen);
    assert_eq!(
        sim.take(),
        [
            "0 <- stage-open",
            "0 start stage 1 of 5",
            "0 <- stage-open",
            "0 send error BadRequest: this session already runs a stage",
            "0 <- stage-swap",
            "0 send error BadRequest: stage swap for stage 0 of stream 5, which this session \
             does not run",
            "0 <- stage-swap",
            "0 swap stage 1 to cube",
            "0 <- raw-echo-open",
            "0 open raw echo",
            "0 <- raw-echo-open",
            "0 send error BadRequest: this session already opened its raw echo socket",
            "0 <- raw-echo-open",
            "0 open raw echo",
        ]
    );
}

#[test]
fn a_master_that_takes_no_result_for_the_write_deadline_is_taken_for_gone() {
    let deadline = WRITE_DEADLINE.as_millis() as u64;
    let mut sim = Sim::new(4);
    sim.recv(task(1, 1));
    sim.session.task_finished();
    sim.session.writing(sim.now);
    sim.run_until(deadline - 1);
    assert!(!sim.session.ended());
    sim.session.written();
    sim.run_until(10 * deadline);
    assert!(
        !sim.session.ended(),
        "a result written in time ends nothing"
    );

    sim.session.writing(sim.now);
    sim.run_until(12 * deadline);
    let lines = sim.take();
    assert_eq!(
        lines.last().unwrap(),
        &format!(
            "{} close: took no result for 60s: taken for gone",
            11 * deadline
        )
    );
}

#[test]
fn bad_input_is_answered_and_ends_the_session_only_when_unreadable() {
    let mut sim = Sim::new(4);
    let actions = sim
        .session
        .bad_input("unknown message kind 99".into(), true);
    sim.log(actions);
    sim.recv(Message::Ping(Ping { nonce: 3 }));
    sim.recv(Message::Pong(Ping { nonce: 3 }));
    let actions = sim.session.bad_input("frame of 1 GiB".into(), false);
    sim.log(actions);
    sim.recv(Message::Ping(Ping { nonce: 4 }));
    assert_eq!(
        sim.take(),
        [
            "0 send error BadRequest: unknown message kind 99",
            "0 <- ping",
            "0 send pong",
            "0 <- pong",
            "0 send error Unsupported: agent does not handle pong messages",
            "0 send error BadRequest: frame of 1 GiB",
            "0 close: sent input that cannot be read further",
            "0 <- ping",
        ]
    );
}

#[test]
fn goodbye_ends_the_session_and_it_cuts_the_streams_it_fed_without_their_end() {
    let mut sim = Sim::new(4);
    sim.recv(item(1, 0, 0))
        .recv(item(1, 1, 0))
        .recv(item(2, 0, 0));
    sim.recv(Message::StreamEnd(StreamRef {
        stream: 1,
        stage: 0,
    }));
    // A stage that refused an item is not cut by this session.
    let refused = sim
        .session
        .delivery_refused((2, 0), "stage 0 of 2 ended".into());
    assert!(matches!(refused, Message::Error(_)));
    sim.recv(task(1, 9)).recv(Message::Bye).recv(task(2, 9));
    let lines = sim.take();
    assert_eq!(
        lines[lines.len() - 5..],
        [
            "0 <- task",
            "0 run task 1",
            "0 <- bye",
            "0 close: said goodbye",
            "0 <- task"
        ]
    );
    assert_eq!(
        sim.session.finish(),
        Leftovers {
            last_job: Some(JobId(9)),
            cut: vec![(1, 1)],
            unfinished: 1,
        }
    );
}
