//! Which agent runs which task, and what becomes of a task whose agent is
//! lost: the dispatcher's decisions as a state machine without I/O, so that
//! they can be tested against thousands of fault schedules (see the tests
//! below) and the dispatcher only moves frames.
//!
//! Tasks are the callers' keys; each send of a task is an *attempt* with an
//! id of its own (the wire's task id). Agents have credits — a task sent on
//! demand takes one and gives it back with its result — while a task placed
//! on its home agent (a pipeline stage) takes none. A result counts only if
//! its attempt is still out: the first result of a task is taken, and the
//! late results of an agent declared down are dropped. A task lost with its
//! agent is sent again, before newer tasks, at most [`MAX_REDISPATCH`]
//! times.
//!
//! A task out far longer than tasks of its kind usually are
//! ([`Scheduler::speculate`])
//! gets a copy on another agent, as MapReduce's backup tasks: a stalled
//! board (an SD card, heat, a SIGSTOP) then costs the job a few task
//! times, not the seconds until it is declared down. The first result
//! counts; the other copy's is dropped like a late one. Copies are bounded
//! by [`SPECULATION_SHARE`] of the pool's credits.
//!
//! At a job's tail — no task waits and an agent has a free credit — a task
//! that would end sooner on that idle agent than where it is gets a copy
//! there ([`Scheduler::speculate`], as LATE's "longest approximate time to
//! end" in Hadoop): a slow board's last chunks then end on a fast one,
//! instead of holding the job until the slow board is done. Each agent's
//! kernel time per kind of task ([`Scheduler::ran`]) says where a task
//! would end, queueing behind the agent's other tasks included.

use skelpi_proto::{MAX_TASKS_PER_WORKER, TASKS_PER_WORKER};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Times a task lost with its agent is sent again, to another live agent,
/// before the job fails naming it (a task that keeps killing agents).
pub const MAX_REDISPATCH: usize = 3;

pub use skelpi_proto::{WINDOW_WORK, credits_per_worker};

/// Copies out or waiting, as a share of the live pool's credits; in a pool
/// so small that this is less than one agent's credits, as many copies as
/// the live agent with most credits has (one stalled board's tasks are
/// copied at once).
pub const SPECULATION_SHARE: f64 = 0.1;

/// A task is overdue once out this many times as long as tasks are out
/// on average...
pub const OVERDUE_FACTOR: f64 = 4.0;

/// ...and at least this long: tasks of microseconds are not copied for a
/// scheduling hiccup.
pub const OVERDUE_FLOOR: Duration = Duration::from_millis(20);

/// A tail copy goes to an idle agent only if it would end sooner there by
/// this share of its kernel time there (and [`OVERDUE_FLOOR`]): estimates
/// are means, and a copy costs the other agent its run.
pub const TAIL_GAIN: f64 = 0.5;

/// Credits per worker of an agent that queues `queued` small tasks per
/// worker beyond [`TASKS_PER_WORKER`], for kernels that run `mean` on
/// average there (`None`: not known, or an older agent that does not say).
pub fn window_per_worker(mean: Option<Duration>, queued: usize) -> usize {
    let deepest = TASKS_PER_WORKER + queued.min(MAX_TASKS_PER_WORKER - TASKS_PER_WORKER);
    mean.map_or(TASKS_PER_WORKER, |m| credits_per_worker(m).min(deepest))
}

/// A task to send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dispatch {
    /// The task.
    pub task: u64,
    /// The agent to send it to.
    pub agent: usize,
    /// The attempt's id: its result will carry it.
    pub attempt: u64,
    /// It is a copy of a task (overdue, or at the tail; not a task sent again).
    pub copy: bool,
}

/// What became of the tasks of an agent declared down.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Down {
    /// Tasks to be sent again (already queued, first in line).
    pub again: Vec<u64>,
    /// Tasks given up: lost more than [`MAX_REDISPATCH`] times, with the
    /// agents lost while running them, in order.
    pub lost: Vec<(u64, Vec<usize>)>,
    /// Every agent is down now: the tasks wait for one to come back
    /// ([`Scheduler::on_up`]) or for [`Scheduler::strand_all`].
    pub all_down: bool,
}

#[derive(Debug)]
struct Task {
    /// The agent it must run on while that agent lives.
    home: Option<usize>,
    /// Agents lost while running it.
    lost: Vec<usize>,
    /// Its attempts out now (two while a copy runs).
    out: usize,
    /// It waits in `backups` for a copy to be sent.
    copy_waiting: bool,
    /// A copy of it was asked for once: never again (a task that stalls
    /// every agent it runs on is bounded by [`MAX_REDISPATCH`]).
    copied: bool,
    /// Too large for an agent's queue: sent only to an agent holding fewer
    /// credits than its first ones.
    large: bool,
    /// Its kind (the caller's: a kernel), whose tasks' mean time out says
    /// when it is overdue.
    class: u32,
}

#[derive(Debug, Clone, Copy)]
struct Attempt {
    task: u64,
    agent: usize,
    /// It holds one of its agent's credits.
    credit: bool,
    /// When it was sent.
    sent: Instant,
    /// It is a copy (see [`Scheduler::speculate`]).
    copy: bool,
    /// Another attempt of its task answered first: its result will be
    /// dropped.
    stale: bool,
    /// Its task's class.
    class: u32,
}

/// Where the tasks out would end (see [`Scheduler::speculate`]'s tail
/// copies).
#[derive(Debug, Default)]
struct Estimate {
    /// Each task out on a credit that may be copied: `(end, task, agent,
    /// class)`.
    ends: Vec<(Instant, u64, usize, u32)>,
    /// When each busy worker of each agent of known speed is free again.
    free_at: HashMap<usize, Vec<Instant>>,
    /// How long each live agent's oldest task has been out.
    running_for: HashMap<usize, Duration>,
}

/// The dispatcher's state: agents, credits, tasks waiting and tasks out.
#[derive(Debug)]
pub struct Scheduler {
    live: Vec<bool>,
    /// Every agent went down and tasks wait (and may be submitted) for
    /// one to come back, until [`Scheduler::strand_all`].
    waiting_for_any: bool,
    /// Free credits, as agent numbers, in the order they came free.
    free: VecDeque<usize>,
    /// Credits each agent has, and how many of them are taken.
    credits: Vec<usize>,
    held: Vec<usize>,
    /// The credits each agent had at first: a large task goes only to an
    /// agent holding fewer.
    base: Vec<usize>,
    /// Tasks waiting for a credit, oldest first.
    queue: VecDeque<u64>,
    /// Tasks waiting to go to their home, which lives.
    homed: VecDeque<u64>,
    tasks: HashMap<u64, Task>,
    attempts: HashMap<u64, Attempt>,
    /// Tasks waiting for a copy to be sent (overdue, or at the tail), oldest first.
    backups: VecDeque<u64>,
    /// Copies out now.
    copies_out: usize,
    /// The moving mean of how long a task of each class is out, seconds
    /// (none before the first result of that class).
    mean_out: HashMap<u32, f64>,
    /// Worker threads of each agent: how many of its tasks run at once.
    workers: Vec<usize>,
    /// The moving mean of each agent's kernel time for tasks of each
    /// class, seconds (see [`Scheduler::ran`]).
    busy: HashMap<(usize, u32), f64>,
    /// Tail copies waiting in `backups` for the idle agent they were asked
    /// for.
    target: HashMap<u64, usize>,
}

impl Scheduler {
    /// A scheduler for agents holding `credits[i]` credits each. A task
    /// takes a credit of the agent with the smallest share of its credits
    /// taken (the oldest such credit on a tie), so tasks spread over idle
    /// agents before any agent gets a second one.
    pub fn new(credits: &[usize]) -> Scheduler {
        let mut free = VecDeque::new();
        for round in 0..credits.iter().copied().max().unwrap_or(0) {
            for (agent, &c) in credits.iter().enumerate() {
                if round < c {
                    free.push_back(agent);
                }
            }
        }
        Scheduler {
            live: vec![true; credits.len()],
            waiting_for_any: false,
            free,
            credits: credits.to_vec(),
            held: vec![0; credits.len()],
            base: credits.to_vec(),
            queue: VecDeque::new(),
            homed: VecDeque::new(),
            tasks: HashMap::new(),
            attempts: HashMap::new(),
            backups: VecDeque::new(),
            copies_out: 0,
            mean_out: HashMap::new(),
            workers: vec![1; credits.len()],
            busy: HashMap::new(),
            target: HashMap::new(),
        }
    }

    /// Sets how many tasks `agent` runs at once (one until told).
    pub fn set_workers(&mut self, agent: usize, workers: usize) {
        if let Some(w) = self.workers.get_mut(agent) {
            *w = workers.max(1);
        }
    }

    /// What an earlier job measured: tasks of class `class` take `secs` in
    /// their kernel on `agent` (unless this job knows better already).
    pub fn seed_busy(&mut self, agent: usize, class: u32, secs: f64) {
        self.busy.entry((agent, class)).or_insert(secs);
    }

    /// The mean kernel time of tasks of class `class` on `agent`, seconds.
    pub fn busy_of(&self, agent: usize, class: u32) -> Option<f64> {
        self.busy.get(&(agent, class)).copied()
    }

    /// A task of class `class` ran `busy` in its kernel on `agent` (as the
    /// agent measured it, queueing not included): the agent's speed at
    /// that kind of task, which places tail copies.
    pub fn ran(&mut self, agent: usize, class: u32, busy: Duration) {
        let b = busy.as_secs_f64();
        let mean = self.busy.entry((agent, class)).or_insert(b);
        *mean += (b - *mean) / 8.0;
    }

    /// Takes task `task` (a key new to this scheduler), to run on `home`
    /// if given and alive, else on the first free credit. `Err`: no agent
    /// is alive to run it, and the tasks were given up
    /// ([`Scheduler::strand_all`]).
    pub fn submit(&mut self, task: u64, home: Option<usize>) -> Result<(), u64> {
        self.submit_sized(task, home, false, 0)
    }

    /// [`Scheduler::submit`] for a task that is `large` (too large for an
    /// agent's queue, see [`skelpi_proto::SMALL_TASK_BYTES`]): it takes a
    /// credit only of an agent holding fewer than it had at first, so an
    /// agent whose credits grew for small tasks never gets it behind a
    /// full queue. `class` is its kind (a kernel): it is overdue against
    /// the tasks of its class only.
    pub fn submit_sized(
        &mut self,
        task: u64,
        home: Option<usize>,
        large: bool,
        class: u32,
    ) -> Result<(), u64> {
        if !self.any_live() && !self.waiting_for_any {
            return Err(task);
        }
        let old = self.tasks.insert(
            task,
            Task {
                home,
                lost: Vec::new(),
                out: 0,
                copy_waiting: false,
                copied: false,
                large,
                class,
            },
        );
        debug_assert!(old.is_none(), "task {task} submitted twice");
        if home.is_some_and(|h| self.is_live(h)) {
            self.homed.push_back(task);
        } else {
            self.queue.push_back(task);
        }
        Ok(())
    }

    /// The next task to send at `now`, if one waits and an agent can take
    /// it; `attempt` names its send (unique: results are matched by it).
    pub fn next_send(&mut self, now: Instant, attempt: impl FnOnce() -> u64) -> Option<Dispatch> {
        // A task at home goes first and needs no credit; then a copy (of
        // an overdue task, or at the tail), on another agent; else the
        // oldest task takes a credit of the least loaded agent (the scan
        // is over the free credits: fine for pools of hundreds of cores).
        let (task, agent, credit, copy) = match self.homed.pop_front() {
            Some(task) => (task, self.tasks.get(&task)?.home?, false, false),
            None => match self.place_copy() {
                Some((task, agent)) => (task, agent, true, true),
                None => {
                    let head = *self.queue.front()?;
                    let large = self.tasks.get(&head).is_some_and(|t| t.large);
                    let at = self.least_loaded_credit(|a| !large || self.held[a] < self.base[a])?;
                    let agent = self.free.remove(at)?;
                    self.held[agent] += 1;
                    (self.queue.pop_front()?, agent, true, false)
                }
            },
        };
        let mut class = 0;
        if let Some(t) = self.tasks.get_mut(&task) {
            t.out += 1;
            class = t.class;
        }
        self.copies_out += usize::from(copy);
        let id = attempt();
        let old = self.attempts.insert(
            id,
            Attempt {
                task,
                agent,
                credit,
                sent: now,
                copy,
                stale: false,
                class,
            },
        );
        debug_assert!(old.is_none(), "attempt id {id} reused");
        Some(Dispatch {
            task,
            agent,
            attempt: id,
            copy,
        })
    }

    /// The oldest task waiting for a copy that a free credit of another
    /// agent than its first attempt's can take now, and that agent (its
    /// credit taken).
    fn place_copy(&mut self) -> Option<(u64, usize)> {
        for i in 0..self.backups.len() {
            let task = self.backups[i];
            let running = self
                .attempts
                .values()
                .find(|a| a.task == task)
                .map(|a| a.agent);
            let large = self.tasks.get(&task).is_some_and(|t| t.large);
            // A tail copy waits for the agent it was asked for, while that
            // agent lives.
            let target = self.target.get(&task).copied().filter(|&b| self.live[b]);
            let ok = |a: usize| {
                Some(a) != running
                    && target.is_none_or(|b| a == b)
                    && (!large || self.held[a] < self.base[a])
            };
            let Some(at) = self.least_loaded_credit(ok) else {
                continue;
            };
            let agent = self.free.remove(at)?;
            self.held[agent] += 1;
            self.backups.remove(i);
            self.target.remove(&task);
            if let Some(t) = self.tasks.get_mut(&task) {
                t.copy_waiting = false;
            }
            return Some((task, agent));
        }
        None
    }

    /// Marks tasks for a copy on another agent (send them with
    /// [`Scheduler::next_send`]); returns how many were marked. Tasks placed
    /// at home are never copied, a task at most once, and copies out or
    /// waiting stay within [`SPECULATION_SHARE`] of the live credits (or
    /// one agent's credits). Marked, oldest first:
    /// - tasks overdue at `now`: out alone longer than [`OVERDUE_FACTOR`]
    ///   times the mean time tasks of their class are out (and
    ///   [`OVERDUE_FLOOR`]): a stalled agent's;
    /// - at the tail (no task waits), for each agent with a free credit,
    ///   the task that would end latest where it is, if it would end
    ///   sooner on that agent by [`TAIL_GAIN`] of its time there (and
    ///   [`OVERDUE_FLOOR`]): a slow agent's.
    pub fn speculate(&mut self, now: Instant) -> usize {
        if self.live.iter().filter(|&&l| l).count() < 2 {
            return 0;
        }
        let room = self.copy_room();
        let overdue = self.mark_overdue(now, room);
        overdue + self.mark_tail(now, room - overdue)
    }

    /// How many more copies may be out or waiting (see
    /// [`Scheduler::speculate`]).
    fn copy_room(&self) -> usize {
        let live = || (0..self.live.len()).filter(|&a| self.live[a]);
        let credits: usize = live().map(|a| self.credits[a]).sum();
        let one_board = live().map(|a| self.credits[a]).max().unwrap_or(1);
        let cap = ((credits as f64 * SPECULATION_SHARE) as usize).max(one_board);
        cap.saturating_sub(self.copies_out + self.backups.len())
    }

    /// Marks up to `room` tasks overdue at `now` for a copy, oldest first.
    fn mark_overdue(&mut self, now: Instant, room: usize) -> usize {
        if room == 0 || self.mean_out.is_empty() {
            return 0;
        }
        let means = &self.mean_out;
        let overdue = |class: u32| {
            let mean = means.get(&class)?;
            Some(Duration::from_secs_f64(mean * OVERDUE_FACTOR).max(OVERDUE_FLOOR))
        };
        let mut late: Vec<(Instant, u64)> = self
            .attempts
            .values()
            .filter(|a| a.credit && self.copyable(a))
            .filter(|a| overdue(a.class).is_some_and(|o| now.saturating_duration_since(a.sent) > o))
            .map(|a| (a.sent, a.task))
            .collect();
        late.sort_unstable();
        late.truncate(room);
        for &(_, task) in &late {
            self.mark_copy(task, None);
        }
        late.len()
    }

    /// Whether `a`'s task may get a copy: it is out once (this attempt),
    /// was never copied, and has no home.
    fn copyable(&self, a: &Attempt) -> bool {
        !a.stale
            && self
                .tasks
                .get(&a.task)
                .is_some_and(|t| t.out == 1 && !t.copied && t.home.is_none())
    }

    /// Marks `task` for a copy, on agent `target` if given.
    fn mark_copy(&mut self, task: u64, target: Option<usize>) {
        if let Some(t) = self.tasks.get_mut(&task) {
            t.copy_waiting = true;
            t.copied = true;
        }
        self.backups.push_back(task);
        if let Some(b) = target {
            self.target.insert(task, b);
        }
    }

    /// At the tail (no task waits), marks up to `room` tasks for a copy on
    /// an idle agent where they would end sooner (see
    /// [`Scheduler::speculate`]).
    fn mark_tail(&mut self, now: Instant, room: usize) -> usize {
        if room == 0 || !self.queue.is_empty() || !self.homed.is_empty() {
            return 0;
        }
        // Agents with a free credit, and how many, less the tail copies
        // waiting for them.
        let mut idle: HashMap<usize, usize> = HashMap::new();
        for &a in &self.free {
            *idle.entry(a).or_default() += 1;
        }
        for b in self.target.values() {
            if let Some(n) = idle.get_mut(b) {
                *n = n.saturating_sub(1);
            }
        }
        idle.retain(|_, n| *n > 0);
        if idle.is_empty() {
            return 0;
        }
        let pools = self.pool_means();
        let mut est = self.estimated_ends(now, &pools);
        // The latest end first, each to the idle agent where it would end
        // first.
        est.ends
            .sort_unstable_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
        let mut marked = 0;
        for (end, task, agent, class) in std::mem::take(&mut est.ends) {
            let large = self.tasks.get(&task).is_some_and(|t| t.large);
            let best = idle
                .keys()
                .filter(|&&b| b != agent && (!large || self.held[b] < self.base[b]))
                .filter_map(|&b| Some((self.copy_end(b, class, now, &est, &pools)?, b)))
                .min();
            let Some(((copy_end, there), b)) = best else {
                continue;
            };
            let gain = end.saturating_duration_since(copy_end);
            if gain <= there.mul_f64(TAIL_GAIN).max(OVERDUE_FLOOR) {
                continue;
            }
            self.mark_copy(task, Some(b));
            marked += 1;
            if let Some(workers) = est.free_at.get_mut(&b) {
                Self::occupy(workers, self.workers[b], copy_end);
            }
            if let Some(n) = idle.get_mut(&b) {
                *n -= 1;
                if *n == 0 {
                    idle.remove(&b);
                }
            }
            if marked == room || idle.is_empty() {
                break;
            }
        }
        marked
    }

    /// When a copy of a task of `class` would end on agent `b` (see
    /// [`Estimate`]), and its kernel time there: `None` if `b`'s speed at
    /// it cannot be told.
    fn copy_end(
        &self,
        b: usize,
        class: u32,
        now: Instant,
        est: &Estimate,
        pools: &HashMap<u32, Duration>,
    ) -> Option<(Instant, Duration)> {
        let workers = est.free_at.get(&b)?;
        let start = if workers.len() < self.workers[b] {
            now
        } else {
            workers.iter().copied().min()?.max(now)
        };
        let running_for = est.running_for.get(&b).copied().unwrap_or_default();
        let there = self.service(b, class, running_for, pools)?;
        Some((start + there, there))
    }

    /// Takes the worker of `workers` (free times of a `count`-worker
    /// agent's busy workers) that is free first, until `end`.
    fn occupy(workers: &mut Vec<Instant>, count: usize, end: Instant) {
        if workers.len() >= count
            && let Some(first) = workers.iter().enumerate().min_by_key(|&(_, t)| *t)
        {
            let at = first.0;
            workers.swap_remove(at);
        }
        workers.push(end);
    }

    /// The mean kernel time of each class over the agents that ran it.
    fn pool_means(&self) -> HashMap<u32, Duration> {
        let mut sums: HashMap<u32, (f64, u32)> = HashMap::new();
        for (&(_, class), &b) in &self.busy {
            let (sum, n) = sums.entry(class).or_default();
            *sum += b;
            *n += 1;
        }
        sums.into_iter()
            .map(|(class, (sum, n))| (class, Duration::from_secs_f64(sum / f64::from(n))))
            .collect()
    }

    /// Where each live agent's tasks would end (see [`Estimate`]): each
    /// agent runs its tasks in the order sent, as many at once as it has
    /// workers, each for its kernel time there (see
    /// [`Scheduler::service`]); a task past its estimate ends now. Agents
    /// of unknown speed are left out.
    fn estimated_ends(&self, now: Instant, pools: &HashMap<u32, Duration>) -> Estimate {
        let mut by_agent: HashMap<usize, Vec<(u64, &Attempt)>> = (0..self.live.len())
            .filter(|&a| self.live[a])
            .map(|a| (a, Vec::new()))
            .collect();
        for (&id, a) in &self.attempts {
            if let Some(out) = by_agent.get_mut(&a.agent) {
                out.push((id, a));
            }
        }
        let mut est = Estimate::default();
        'agents: for (agent, mut out) in by_agent {
            out.sort_unstable_by_key(|&(id, a)| (a.sent, id));
            let running_for = out.first().map_or(Duration::ZERO, |(_, a)| {
                now.saturating_duration_since(a.sent)
            });
            est.running_for.insert(agent, running_for);
            let workers = self.workers[agent];
            // When each busy worker is free again.
            let mut free_at: Vec<Instant> = Vec::with_capacity(workers);
            for (_, a) in out {
                let Some(took) = self.service(agent, a.class, running_for, pools) else {
                    continue 'agents;
                };
                let start = if free_at.len() < workers {
                    a.sent
                } else {
                    let (at, &first) = free_at
                        .iter()
                        .enumerate()
                        .min_by_key(|&(_, t)| *t)
                        .expect("workers >= 1");
                    free_at.swap_remove(at);
                    first.max(a.sent)
                };
                let end = (start + took).max(now);
                free_at.push(end);
                if a.credit && self.copyable(a) {
                    est.ends.push((end, a.task, agent, a.class));
                }
            }
            est.free_at.insert(agent, free_at);
        }
        est
    }

    /// The kernel time of a task of `class` on `agent`: its own mean if
    /// known. Else, from `pools` (the mean of the agents that ran that
    /// class) and `running_for` (how long the agent's oldest task has been
    /// out): the pool's mean, or longer once that task has been out longer
    /// than it — twice its time out less the pool's mean, as if half done
    /// by then; with no pool mean, twice its time out. `None` if nothing
    /// says.
    fn service(
        &self,
        agent: usize,
        class: u32,
        running_for: Duration,
        pools: &HashMap<u32, Duration>,
    ) -> Option<Duration> {
        if let Some(&b) = self.busy.get(&(agent, class)) {
            return Some(Duration::from_secs_f64(b));
        }
        let guess = running_for * 2;
        match pools.get(&class) {
            Some(&p) => Some(p.max(guess.saturating_sub(p))),
            None if !guess.is_zero() => Some(guess),
            None => None,
        }
    }

    /// How long tasks of the slowest class are out on average (`None`
    /// before the first result).
    pub fn mean_out(&self) -> Option<Duration> {
        let slowest = self.mean_out.values().copied().reduce(f64::max)?;
        Some(Duration::from_secs_f64(slowest))
    }

    /// Forgets that `task` waits for a copy.
    fn drop_backup(&mut self, task: u64) {
        if let Some(t) = self.tasks.get_mut(&task)
            && std::mem::take(&mut t.copy_waiting)
        {
            self.backups.retain(|&b| b != task);
            self.target.remove(&task);
        }
    }

    /// A result of attempt `attempt` came from `agent` at `now`: returns
    /// its task if the result counts (the task is then finished: the first
    /// of its copies to answer), `None` if it is late (its agent was
    /// declared down, or another copy answered first), repeated, unknown,
    /// or its task was cancelled.
    pub fn on_result(&mut self, now: Instant, agent: usize, attempt: u64) -> Option<u64> {
        self.answer(now, agent, attempt, false)
    }

    /// [`Scheduler::on_result`] for a failure: it counts only from the
    /// task's last attempt out; while another copy runs, it is dropped
    /// (that copy may succeed: the failure may be its agent's, e.g. a
    /// deadline passed in its queue) and `None` is returned.
    pub fn on_failed(&mut self, now: Instant, agent: usize, attempt: u64) -> Option<u64> {
        self.answer(now, agent, attempt, true)
    }

    fn answer(&mut self, now: Instant, agent: usize, attempt: u64, failed: bool) -> Option<u64> {
        let a = *self.attempts.get(&attempt)?;
        if a.agent != agent {
            return None;
        }
        self.attempts.remove(&attempt);
        self.copies_out -= usize::from(a.copy);
        if a.credit && self.live[a.agent] {
            self.held[a.agent] -= 1;
            // Not freed again if the agent's credits shrank below it.
            if self.held[a.agent] < self.credits[a.agent] {
                self.free.push_back(a.agent);
            }
        }
        // A cancelled task's result frees its credit and goes nowhere; so
        // does a copy's whose task another copy finished.
        if a.stale {
            return None;
        }
        let t = self.tasks.get_mut(&a.task)?;
        if failed && t.out > 1 {
            t.out -= 1;
            return None;
        }
        self.drop_backup(a.task);
        let t = self.tasks.remove(&a.task)?;
        if t.out > 1 {
            for other in self.attempts.values_mut().filter(|o| o.task == a.task) {
                other.stale = true;
            }
        }
        // A moving mean over about the last 16 results of its class that
        // counted.
        let took = now.saturating_duration_since(a.sent).as_secs_f64();
        let mean = self.mean_out.entry(t.class).or_insert(took);
        *mean += (took - *mean) / 16.0;
        Some(a.task)
    }

    /// The caller of `task` no longer waits: a waiting task is dropped; one
    /// out stays out until its result (which frees its credit) or its
    /// agent's loss, and is then forgotten.
    pub fn cancel(&mut self, task: u64) {
        self.drop_backup(task);
        self.queue.retain(|&t| t != task);
        self.homed.retain(|&t| t != task);
        self.tasks.remove(&task);
    }

    /// Declares `agent` down: its credits go, and its tasks out are sent
    /// again or given up (see [`Down`]). Declaring it again changes
    /// nothing.
    pub fn on_down(&mut self, agent: usize) -> Down {
        self.on_down_counting(agent, true)
    }

    /// [`Scheduler::on_down`], counting the loss against each task out
    /// there only if `count` (not when the master itself stalled and the
    /// agent took it for gone: no task of it kills agents).
    pub fn on_down_counting(&mut self, agent: usize, count: bool) -> Down {
        let mut down = Down::default();
        if !self.live.get(agent).copied().unwrap_or(false) {
            return down;
        }
        self.live[agent] = false;
        self.free.retain(|&a| a != agent);
        self.held[agent] = 0;
        // Tail copies waiting for it are not asked any more: their tasks
        // may be copied again.
        let aimed: Vec<u64> = self
            .target
            .iter()
            .filter(|&(_, &b)| b == agent)
            .map(|(&t, _)| t)
            .collect();
        for task in aimed {
            self.drop_backup(task);
            if let Some(t) = self.tasks.get_mut(&task) {
                t.copied = false;
            }
        }
        let mut out: Vec<(u64, Attempt)> = self
            .attempts
            .iter()
            .filter(|(_, a)| a.agent == agent)
            .map(|(&id, &a)| (id, a))
            .collect();
        // Oldest attempt first: they go back in line in that order.
        out.sort_by_key(|&(id, _)| id);
        let mut again = Vec::new();
        for (id, a) in out {
            self.attempts.remove(&id);
            self.copies_out -= usize::from(a.copy);
            // A cancelled task is forgotten with its attempt.
            let Some(t) = self.tasks.get_mut(&a.task) else {
                continue;
            };
            t.out = t.out.saturating_sub(1);
            if count {
                t.lost.push(agent);
            }
            if t.out > 0 {
                // Its copy runs on elsewhere.
                continue;
            }
            if std::mem::take(&mut t.copy_waiting) {
                self.backups.retain(|&b| b != a.task);
                self.target.remove(&a.task);
            }
            if t.lost.len() > MAX_REDISPATCH {
                let lost = std::mem::take(&mut t.lost);
                self.tasks.remove(&a.task);
                down.lost.push((a.task, lost));
            } else {
                again.push(a.task);
            }
        }
        // Tasks waiting for this home now run on demand, after the lost
        // ones (older) and before newer tasks.
        let tasks = &self.tasks;
        let (moved, stay): (VecDeque<u64>, VecDeque<u64>) = self
            .homed
            .drain(..)
            .partition(|t| tasks.get(t).and_then(|t| t.home) == Some(agent));
        self.homed = stay;
        // A task lost away from its home, which is up again (it came
        // back), goes home; the others go first in line.
        let (home_up, elsewhere): (Vec<u64>, Vec<u64>) =
            again.iter().chain(&moved).partition(|t| {
                tasks
                    .get(t)
                    .and_then(|t| t.home)
                    .is_some_and(|h| self.live[h])
            });
        for task in elsewhere.into_iter().rev() {
            self.queue.push_front(task);
        }
        self.homed.extend(home_up);
        down.again = again;
        if !self.any_live() {
            self.waiting_for_any = true;
            down.all_down = true;
        }
        down
    }

    /// Gives up on every task waiting while every agent is down (none came
    /// back in time): they can run nowhere. Later submissions are refused
    /// until an agent is up again. Nothing, if an agent is up.
    pub fn strand_all(&mut self) -> Vec<u64> {
        if self.any_live() {
            return Vec::new();
        }
        self.waiting_for_any = false;
        let stranded: Vec<u64> = self.queue.drain(..).chain(self.homed.drain(..)).collect();
        for t in &stranded {
            self.tasks.remove(t);
        }
        self.backups.retain(|b| !stranded.contains(b));
        self.target.retain(|b, _| !stranded.contains(b));
        stranded
    }

    /// Declares `agent` up again (its connection made anew): it gets its
    /// credits back, with none taken, and the waiting tasks whose home it
    /// is go home again. An agent up already changes nothing.
    pub fn on_up(&mut self, agent: usize) {
        if agent >= self.live.len() || self.live[agent] {
            return;
        }
        self.live[agent] = true;
        self.waiting_for_any = false;
        self.held[agent] = 0;
        self.free
            .extend(std::iter::repeat_n(agent, self.credits[agent]));
        let tasks = &self.tasks;
        let (home, rest): (VecDeque<u64>, VecDeque<u64>) = self
            .queue
            .drain(..)
            .partition(|t| tasks.get(t).and_then(|t| t.home) == Some(agent));
        self.queue = rest;
        self.homed.extend(home);
    }

    /// Sets the credits of `agent` (at least one): more are free at once;
    /// fewer take effect as its results come back (a credit given back
    /// while it holds more than its credits is not freed again).
    pub fn set_credits(&mut self, agent: usize, credits: usize) {
        let Some(old) = self.credits.get(agent).copied() else {
            return;
        };
        let credits = credits.max(1);
        self.credits[agent] = credits;
        if !self.live[agent] {
            return;
        }
        let held = self.held[agent];
        let (free_now, free_then) = (old.saturating_sub(held), credits.saturating_sub(held));
        if free_then > free_now {
            self.free
                .extend(std::iter::repeat_n(agent, free_then - free_now));
        } else {
            // The newest free credits go first.
            for _ in free_then..free_now {
                if let Some(at) = self.free.iter().rposition(|&a| a == agent) {
                    self.free.remove(at);
                }
            }
        }
    }

    /// Credits of `agent`.
    pub fn credits(&self, agent: usize) -> usize {
        self.credits.get(agent).copied().unwrap_or(0)
    }

    /// Where in `free` the credit to take next is: the agent with the
    /// smallest share of its credits taken, the oldest credit on a tie,
    /// among the agents `ok` allows.
    fn least_loaded_credit(&self, ok: impl Fn(usize) -> bool) -> Option<usize> {
        // held/credits compared as fractions: a*d < c*b.
        let share = |a: usize| (self.held[a], self.credits[a].max(1));
        let mut best: Option<(usize, (usize, usize))> = None;
        for (at, &agent) in self.free.iter().enumerate() {
            if !ok(agent) {
                continue;
            }
            let (h, c) = share(agent);
            if best.is_none_or(|(_, (bh, bc))| h * bc < bh * c) {
                best = Some((at, (h, c)));
            }
            if h == 0 {
                break;
            }
        }
        best.map(|(at, _)| at)
    }

    /// Test check: for each live agent, credits taken are its attempts
    /// holding one, and free are its credits not taken (none if it holds
    /// more, its credits having shrunk).
    #[cfg(test)]
    fn check_credits(&self, seed: u64) {
        for a in 0..self.live.len() {
            if !self.live[a] {
                continue;
            }
            let out = self
                .attempts
                .values()
                .filter(|x| x.agent == a && x.credit)
                .count();
            let free = self.free.iter().filter(|&&f| f == a).count();
            assert_eq!(self.held[a], out, "seed {seed}: agent {a}'s credits taken");
            assert_eq!(
                free,
                self.credits[a].saturating_sub(out),
                "seed {seed}: agent {a}'s free credits"
            );
        }
    }

    /// Test check: a task has at most two attempts out, the copies out are
    /// counted right, and a task waits for a copy once at most.
    #[cfg(test)]
    fn check_copies(&self, seed: u64) {
        let mut out: HashMap<u64, usize> = HashMap::new();
        for a in self.attempts.values() {
            *out.entry(a.task).or_default() += 1;
        }
        for (task, &n) in &out {
            assert!(n <= 2, "seed {seed}: task {task} has {n} attempts out");
            if let Some(t) = self.tasks.get(task) {
                assert_eq!(t.out, n, "seed {seed}: task {task}'s attempts out");
            }
        }
        let copies = self.attempts.values().filter(|a| a.copy).count();
        assert_eq!(self.copies_out, copies, "seed {seed}: copies out");
        let mut waiting: Vec<u64> = self.backups.iter().copied().collect();
        waiting.sort_unstable();
        waiting.dedup();
        assert_eq!(
            waiting.len(),
            self.backups.len(),
            "seed {seed}: a copy asked twice"
        );
        for t in &self.backups {
            assert!(
                self.tasks
                    .get(t)
                    .is_some_and(|t| t.copy_waiting && t.out == 1),
                "seed {seed}: task {t} waits for a copy wrongly"
            );
        }
        for t in self.target.keys() {
            assert!(
                self.backups.contains(t),
                "seed {seed}: task {t} has a target but waits for no copy"
            );
        }
    }

    /// Test view: whether the task first in line is large.
    #[cfg(test)]
    fn head_is_large(&self) -> bool {
        let head = self.queue.front().and_then(|t| self.tasks.get(t));
        head.is_some_and(|t| t.large)
    }

    /// Test view: credits `agent` holds.
    #[cfg(test)]
    fn held_on(&self, agent: usize) -> usize {
        self.held[agent]
    }

    /// Whether the agent is alive.
    pub fn is_live(&self, agent: usize) -> bool {
        self.live.get(agent).copied().unwrap_or(false)
    }

    /// Whether any agent is alive.
    pub fn any_live(&self) -> bool {
        self.live.contains(&true)
    }

    /// Attempts out on `agent`.
    pub fn out_on(&self, agent: usize) -> usize {
        self.attempts.values().filter(|a| a.agent == agent).count()
    }

    /// When the oldest attempt out on `agent` was sent, and its class.
    pub fn oldest_out(&self, agent: usize) -> Option<(Instant, u32)> {
        let on = self.attempts.iter().filter(|(_, a)| a.agent == agent);
        on.map(|(&id, a)| (a.sent, id, a.class))
            .min()
            .map(|(sent, _, class)| (sent, class))
    }

    /// The ids of the attempts out on `agent`.
    pub fn attempts_on(&self, agent: usize) -> Vec<u64> {
        let on = self.attempts.iter().filter(|(_, a)| a.agent == agent);
        on.map(|(&id, _)| id).collect()
    }

    /// Attempts out, all agents together (on live agents only: a lost
    /// agent's are gone).
    pub fn out(&self) -> usize {
        self.attempts.len()
    }

    /// Whether attempts are out and all of them are stale: copies of tasks
    /// that another copy finished first (on a stalled agent, they may
    /// never answer).
    pub fn only_stale_out(&self) -> bool {
        !self.attempts.is_empty() && self.attempts.values().all(|a| a.stale)
    }

    /// Tasks waiting to be sent.
    pub fn waiting(&self) -> usize {
        self.queue.len() + self.homed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One instant for tests that do not move the clock.
    fn t0() -> Instant {
        static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *T0.get_or_init(Instant::now)
    }

    fn ids() -> impl FnMut() -> u64 {
        let mut next = 100;
        move || {
            next += 1;
            next
        }
    }

    #[test]
    fn first_tasks_spread_over_agents_and_credits_bound_what_is_out() {
        let mut s = Scheduler::new(&[2, 1]);
        let mut id = ids();
        for t in 0..5 {
            s.submit(t, None).unwrap();
        }
        let sent: Vec<usize> = std::iter::from_fn(|| s.next_send(t0(), &mut id))
            .map(|x| x.agent)
            .collect();
        assert_eq!(sent, [0, 1, 0], "round by round; then no credit is left");
        assert_eq!((s.out(), s.waiting()), (3, 2));
        assert_eq!(s.on_result(t0(), 1, 102), Some(1));
        assert_eq!(
            s.next_send(t0(), &mut id).map(|x| (x.task, x.agent)),
            Some((3, 1))
        );
    }

    #[test]
    fn a_task_goes_to_an_idle_agent_before_a_busy_agent_s_second_credit() {
        let mut s = Scheduler::new(&[2, 2]);
        let mut id = ids();
        for t in 0..3 {
            s.submit(t, None).unwrap();
        }
        let first = s.next_send(t0(), &mut id).unwrap();
        let second = s.next_send(t0(), &mut id).unwrap();
        assert_eq!((first.agent, second.agent), (0, 1));
        assert_eq!(s.on_result(t0(), 1, second.attempt), Some(1));
        // Agent 0's second credit is older than agent 1's returned one,
        // but agent 0 is busy and agent 1 idle.
        assert_eq!(s.next_send(t0(), &mut id).map(|x| x.agent), Some(1));
    }

    #[test]
    fn more_credits_free_at_once_and_fewer_take_effect_as_results_come_back() {
        let mut s = Scheduler::new(&[1]);
        let mut id = ids();
        for t in 0..6 {
            s.submit(t, None).unwrap();
        }
        assert!(s.next_send(t0(), &mut id).is_some());
        assert!(s.next_send(t0(), &mut id).is_none(), "one credit");
        s.set_credits(0, 4);
        let sent: Vec<_> = std::iter::from_fn(|| s.next_send(t0(), &mut id)).collect();
        assert_eq!(sent.len(), 3, "three more at once");
        s.set_credits(0, 2);
        assert_eq!(s.on_result(t0(), 0, 101), Some(0));
        assert!(s.next_send(t0(), &mut id).is_none(), "3 out for 2 credits");
        assert_eq!(s.on_result(t0(), 0, 102), Some(1));
        assert!(s.next_send(t0(), &mut id).is_none(), "2 out for 2 credits");
        assert_eq!(s.on_result(t0(), 0, 103), Some(2));
        assert!(
            s.next_send(t0(), &mut id).is_some(),
            "1 out: one free again"
        );
        s.check_credits(0);
    }

    #[test]
    fn an_overdue_task_is_copied_to_another_agent_and_the_first_result_counts() {
        let t = t0();
        let ms = Duration::from_millis;
        let mut s = Scheduler::new(&[1, 1, 1]);
        let mut id = ids();
        for task in 0..4 {
            s.submit(task, None).unwrap();
        }
        let sent: Vec<_> = std::iter::from_fn(|| s.next_send(t, &mut id)).collect();
        assert_eq!(sent.len(), 3);
        // Tasks take 10 ms: agents 1 and 2 answer, agent 0 stalls.
        assert_eq!(s.on_result(t + ms(10), 1, sent[1].attempt), Some(1));
        let fourth = s.next_send(t + ms(10), &mut id).unwrap();
        assert_eq!(s.on_result(t + ms(20), 2, sent[2].attempt), Some(2));
        assert_eq!(s.on_result(t + ms(20), 1, fourth.attempt), Some(3));
        let mean = s.mean_out().unwrap();
        assert!(mean >= ms(10) && mean < ms(11), "{mean:?}");
        assert_eq!(s.speculate(t + ms(30)), 0, "not overdue yet");
        assert_eq!(s.speculate(t + ms(45)), 1, "overdue past 4 × 10 ms");
        assert_eq!(s.speculate(t + ms(60)), 0, "asked once");
        let copy = s.next_send(t + ms(60), &mut id).unwrap();
        assert_eq!(copy.task, 0);
        assert_ne!(copy.agent, 0, "never on the stalled agent");
        assert_eq!(s.on_result(t + ms(70), copy.agent, copy.attempt), Some(0));
        assert!(s.only_stale_out(), "the stalled attempt is left, stale");
        assert_eq!(
            s.on_result(t + ms(900), 0, sent[0].attempt),
            None,
            "late copy"
        );
        assert_eq!(s.out(), 0);
    }

    #[test]
    fn a_slow_kind_of_task_is_overdue_against_its_own_kind_only() {
        let t = t0();
        let ms = Duration::from_millis;
        let mut s = Scheduler::new(&[2, 2]);
        let mut id = ids();
        // Class 1 takes 100 ms; class 0, 1 ms, and is far more frequent.
        s.submit_sized(0, None, false, 1).unwrap();
        let slow = s.next_send(t, &mut id).unwrap();
        assert!(s.on_result(t + ms(100), slow.agent, slow.attempt).is_some());
        s.submit_sized(1, None, false, 1).unwrap();
        let slow = s.next_send(t + ms(100), &mut id).unwrap();
        for k in 0..50 {
            s.submit_sized(10 + k, None, false, 0).unwrap();
            let fast = s.next_send(t + ms(100), &mut id).unwrap();
            assert!(s.on_result(t + ms(101), fast.agent, fast.attempt).is_some());
        }
        // Out 150 ms: far past the fast kind's mean, not past 4 × 100 ms.
        assert_eq!(s.speculate(t + ms(250)), 0);
        assert_eq!(
            s.speculate(t + ms(510)),
            1,
            "out 410 ms: overdue for its kind"
        );
        assert!(s.on_result(t + ms(520), slow.agent, slow.attempt).is_some());
    }

    #[test]
    fn copies_stay_within_one_agents_credits_in_a_small_pool() {
        let t = t0();
        let mut s = Scheduler::new(&[2, 2, 2]);
        let mut id = ids();
        for task in 0..7 {
            s.submit(task, None).unwrap();
        }
        let sent: Vec<_> = std::iter::from_fn(|| s.next_send(t, &mut id)).collect();
        assert_eq!(sent.len(), 6);
        let first = sent[0];
        assert!(s.on_result(t, first.agent, first.attempt).is_some());
        let _ = s.next_send(t, &mut id);
        // Every task out is long overdue: two copies (one agent's
        // credits; 10% of 6 is less), the oldest first.
        assert_eq!(s.speculate(t + Duration::from_secs(10)), 2);
        assert_eq!(s.speculate(t + Duration::from_secs(10)), 0);
    }

    #[test]
    fn an_agent_that_queues_nothing_keeps_two_per_worker_and_others_their_room() {
        let us = Duration::from_micros;
        assert_eq!(window_per_worker(Some(us(1)), 0), TASKS_PER_WORKER);
        assert_eq!(window_per_worker(Some(us(1)), 4), TASKS_PER_WORKER + 4);
        assert_eq!(window_per_worker(Some(us(1)), 99), MAX_TASKS_PER_WORKER);
        assert_eq!(window_per_worker(None, 14), TASKS_PER_WORKER);
    }

    #[test]
    fn a_large_task_waits_for_an_agent_below_its_first_credits() {
        let t = t0();
        let mut s = Scheduler::new(&[1, 1]);
        s.set_credits(0, 4);
        let mut id = ids();
        for task in 0..5 {
            s.submit(task, None).unwrap();
        }
        let small: Vec<_> = std::iter::from_fn(|| s.next_send(t, &mut id)).collect();
        assert_eq!(
            small.len(),
            5,
            "agent 0 takes four small tasks, agent 1 one"
        );
        s.submit_sized(9, None, true, 0).unwrap();
        assert!(
            s.next_send(t, &mut id).is_none(),
            "none below its first credits"
        );
        // Agent 0 answers three: it still holds one, its first credits.
        for d in small.iter().filter(|d| d.agent == 0).take(3) {
            assert!(s.on_result(t, 0, d.attempt).is_some());
        }
        assert!(
            s.next_send(t, &mut id).is_none(),
            "agent 0 holds 1, its first credits"
        );
        let on_1 = small.iter().find(|d| d.agent == 1).unwrap();
        assert!(s.on_result(t, 1, on_1.attempt).is_some());
        let sent = s.next_send(t, &mut id).unwrap();
        assert_eq!((sent.task, sent.agent), (9, 1));
    }

    #[test]
    fn short_tasks_get_deep_windows_and_long_ones_two_per_worker() {
        use std::time::Duration;
        let per = |us| credits_per_worker(Duration::from_micros(us));
        assert_eq!(per(0), MAX_TASKS_PER_WORKER);
        assert_eq!(per(5), MAX_TASKS_PER_WORKER);
        assert_eq!(per(100), 11);
        assert_eq!(per(1_000), TASKS_PER_WORKER);
        assert_eq!(per(50_000), TASKS_PER_WORKER);
    }

    #[test]
    fn a_result_counts_once_and_only_from_the_agent_it_was_sent_to() {
        let mut s = Scheduler::new(&[1, 1]);
        let mut id = ids();
        s.submit(7, None).unwrap();
        let send = s.next_send(t0(), &mut id).unwrap();
        assert_eq!(s.on_result(t0(), 1 - send.agent, send.attempt), None);
        assert_eq!(s.on_result(t0(), send.agent, send.attempt), Some(7));
        assert_eq!(
            s.on_result(t0(), send.agent, send.attempt),
            None,
            "repeated"
        );
        assert_eq!(s.on_result(t0(), 0, 999), None, "unknown");
    }

    #[test]
    fn a_lost_task_goes_first_and_a_late_result_is_dropped() {
        let mut s = Scheduler::new(&[1, 1]);
        let mut id = ids();
        for t in 0..3 {
            s.submit(t, None).unwrap();
        }
        let a = s.next_send(t0(), &mut id).unwrap();
        let _b = s.next_send(t0(), &mut id).unwrap();
        let down = s.on_down(a.agent);
        assert_eq!(down.again, [a.task]);
        assert_eq!(s.on_result(t0(), a.agent, a.attempt), None, "late");
        assert_eq!(s.out_on(a.agent), 0);
        assert_eq!(s.on_down(a.agent), Down::default(), "once is enough");
        // Agent 1 is busy: the lost task waits first in line.
        assert_eq!(s.waiting(), 2);
        assert_eq!(s.on_result(t0(), 1, 102), Some(1));
        let again = s.next_send(t0(), &mut id).unwrap();
        assert_eq!((again.task, again.agent), (a.task, 1));
    }

    #[test]
    fn a_task_lost_four_times_is_given_up_naming_the_agents() {
        let mut s = Scheduler::new(&[1; 5]);
        let mut id = ids();
        s.submit(9, None).unwrap();
        for round in 0..4 {
            let send = s.next_send(t0(), &mut id).unwrap();
            let down = s.on_down(send.agent);
            if round < 3 {
                assert_eq!(down.again, [9]);
            } else {
                assert_eq!(down.lost, [(9, vec![0, 1, 2, 3])]);
            }
        }
        assert_eq!((s.out(), s.waiting()), (0, 0));
    }

    #[test]
    fn a_home_task_needs_no_credit_and_moves_when_home_is_lost() {
        let mut s = Scheduler::new(&[1, 1]);
        let mut id = ids();
        s.submit(1, None).unwrap();
        s.submit(2, None).unwrap();
        s.next_send(t0(), &mut id).unwrap();
        s.next_send(t0(), &mut id).unwrap();
        s.submit(3, Some(1)).unwrap();
        let home = s.next_send(t0(), &mut id).unwrap();
        assert_eq!((home.task, home.agent), (3, 1), "no credit needed");
        s.on_down(1);
        assert_eq!(s.next_send(t0(), &mut id), None, "agent 0's credit is out");
        assert_eq!(s.on_result(t0(), 0, 101), Some(1));
        let moved: Vec<u64> = std::iter::from_fn(|| s.next_send(t0(), &mut id))
            .map(|x| x.task)
            .collect();
        assert_eq!(moved, [2], "task 2 was lost first");
    }

    #[test]
    fn when_every_agent_is_down_tasks_wait_for_one_until_stranded() {
        let mut s = Scheduler::new(&[1]);
        let mut id = ids();
        s.submit(1, None).unwrap();
        s.submit(2, None).unwrap();
        s.next_send(t0(), &mut id).unwrap();
        let down = s.on_down(0);
        assert!(down.all_down);
        assert_eq!(down.again, [1], "sent again once an agent is back");
        assert!(down.lost.is_empty());
        // Tasks still come while it waits; the agent comes back.
        s.submit(3, None).unwrap();
        s.on_up(0);
        let sent: Vec<u64> = std::iter::from_fn(|| s.next_send(t0(), &mut id))
            .map(|a| a.task)
            .take(3)
            .collect();
        assert_eq!(sent, [1], "one credit: the oldest first");
        // Down again, and none comes back in time: every waiting task is
        // given up, and new ones are refused.
        assert!(s.on_down(0).all_down);
        assert_eq!(s.strand_all(), [1, 2, 3]);
        assert_eq!(s.submit(4, None), Err(4));
        assert!(s.strand_all().is_empty());
    }

    #[test]
    fn a_cancelled_task_is_not_sent_and_its_result_is_not_taken() {
        let mut s = Scheduler::new(&[1]);
        let mut id = ids();
        s.submit(1, None).unwrap();
        s.submit(2, None).unwrap();
        let a = s.next_send(t0(), &mut id).unwrap();
        s.cancel(2);
        s.cancel(1);
        assert_eq!(
            s.on_result(t0(), 0, a.attempt),
            None,
            "its result goes nowhere"
        );
        assert_eq!(s.next_send(t0(), &mut id), None, "task 2 is not sent");
        s.submit(3, None).unwrap();
        assert!(s.next_send(t0(), &mut id).is_some(), "the credit came back");
    }

    /// One simulated job: agents that run what they are sent in any order,
    /// die (`on_down`), or are declared down while they live on and send
    /// late results (a SIGSTOP); callers that give up; kernels that fail.
    /// Checks every task's fate and the scheduler's bounds after each step.
    fn simulate(seed: u64, tally: &mut HashMap<&'static str, usize>) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let agents = rng.random_range(1..=8);
        let mut credits: Vec<usize> = (0..agents).map(|_| rng.random_range(1..=4)).collect();
        // What may be out on an agent: its credits, or more for a while
        // after they shrank.
        let mut ceiling = credits.clone();
        let base = credits.clone();
        let mut large = std::collections::HashSet::new();
        let tasks = rng.random_range(1..=80u64);
        let faults = rng.random_range(0..=agents);
        let mut s = Scheduler::new(&credits);
        // Agents of unlike speeds (kernel times they report), some with
        // two workers: tail copies go to the faster ones.
        let speeds: Vec<u64> = (0..agents).map(|_| rng.random_range(1..=40)).collect();
        for a in 0..agents {
            s.set_workers(a, rng.random_range(1..=2));
        }
        let mut next_id = 0u64;
        // What each agent holds (attempt, task); agents down but running
        // (stopped) keep theirs and answer late.
        let mut held: Vec<Vec<(u64, u64)>> = vec![Vec::new(); agents];
        let mut dead = vec![false; agents];
        let mut declared = vec![false; agents];
        let mut faults_left = faults;
        // Every agent down and the waiting tasks given up, none up since:
        // only then may a submission be refused.
        let mut stranded_since_up = false;
        // In some schedules task 0 hangs every agent it is sent to while
        // faults are left to strike them: a task that kills its agents.
        let poison = rng.random_bool(0.3);
        // Each task's fate: 'd' done, 'f' failed by its kernel, 'l' lost,
        // 's' stranded, 'c' cancelled; and the agents it was lost with.
        let mut fate: HashMap<u64, char> = HashMap::new();
        let mut lost_with: HashMap<u64, Vec<usize>> = HashMap::new();
        let mut home: HashMap<u64, Option<usize>> = HashMap::new();
        let mut submitted = 0u64;
        let settle = |fate: &mut HashMap<u64, char>, t: u64, f: char| {
            let old = fate.insert(t, f);
            assert!(
                old.is_none(),
                "seed {seed}: task {t} ended twice ({old:?}, then {f})"
            );
        };
        // A clock that moves a few milliseconds a step; overdue tasks get
        // copies now and then.
        let mut now = t0();
        let mut sends: HashMap<u64, usize> = HashMap::new();
        for step in 0..20_000 {
            now += Duration::from_millis(rng.random_range(0..=3));
            if rng.random_bool(0.1) {
                *tally.entry("copies").or_default() += s.speculate(now);
                *tally.entry("tail copies waiting").or_default() += s.target.len();
            }
            s.check_copies(seed);
            // Send whatever can go.
            while let Some(send) = s.next_send(now, || {
                next_id += 1;
                next_id
            }) {
                *sends.entry(send.task).or_default() += 1;
                // A large task took a credit only below the first ones.
                if large.contains(&send.task) && home.get(&send.task) == Some(&None) {
                    assert!(
                        s.held_on(send.agent) <= base[send.agent],
                        "seed {seed}: a large task sent past agent {}'s first credits",
                        send.agent
                    );
                }
                assert!(!declared[send.agent], "seed {seed}: sent to a down agent");
                assert!(
                    !fate.contains_key(&send.task),
                    "seed {seed}: finished task sent"
                );
                if let Some(Some(h)) = home.get(&send.task)
                    && !declared[*h]
                {
                    assert_eq!(send.agent, *h, "seed {seed}: a home task left home");
                }
                held[send.agent].push((send.attempt, send.task));
            }
            // Credits bound what is out on each live agent (home tasks
            // aside), once what was out when they shrank has come back.
            for a in 0..agents {
                if !declared[a] {
                    let homed = held[a]
                        .iter()
                        .filter(|(_, t)| home.get(t) == Some(&Some(a)))
                        .count();
                    let out = s.out_on(a) - homed;
                    assert!(
                        out <= ceiling[a],
                        "seed {seed}: agent {a} has {out} out for {} credits",
                        credits[a]
                    );
                    if out <= credits[a] {
                        ceiling[a] = credits[a];
                    }
                }
            }
            // Credits taken are counted right, and each send took one of
            // the least loaded agent.
            s.check_credits(seed);
            // No task waits while a live agent has a free credit it may
            // take (a large one: of an agent below its first credits).
            if s.waiting() > 0 {
                let head_large = s.head_is_large();
                let idle = (0..agents).any(|a| {
                    !declared[a]
                        && s.out_on(a) < credits[a]
                        && (!head_large || s.held_on(a) < base[a])
                });
                assert!(!idle, "seed {seed}: tasks wait beside a free credit");
            }
            let all_in = submitted == tasks;
            let busy = held.iter().any(|h| !h.is_empty());
            if all_in && !busy && s.waiting() == 0 {
                break;
            }
            match rng.random_range(0..100) {
                // A caller submits a task (a pipeline stage's sometimes has
                // a home).
                0..25 if !all_in => {
                    let t = submitted;
                    submitted += 1;
                    let h = rng.random_bool(0.2).then(|| rng.random_range(0..agents));
                    home.insert(t, h);
                    let is_large = rng.random_bool(0.2);
                    if is_large {
                        large.insert(t);
                    }
                    let class = rng.random_range(0..3);
                    if s.submit_sized(t, h, is_large, class).is_err() {
                        assert!(
                            stranded_since_up,
                            "seed {seed}: refused with agents up, or while waiting for one"
                        );
                        settle(&mut fate, t, 's');
                    }
                }
                // A fault: kill (down and silent) or stop (down, then late
                // results).
                25..32 if faults_left > 0 => {
                    faults_left -= 1;
                    // Most faults strike where a poisoned task 0 runs.
                    let host = (0..agents)
                        .find(|&a| poison && !declared[a] && held[a].iter().any(|&(_, t)| t == 0));
                    let a = match host {
                        Some(a) if rng.random_bool(0.8) => a,
                        _ => rng.random_range(0..agents),
                    };
                    let stop = rng.random_bool(0.5);
                    if !stop {
                        dead[a] = true;
                        held[a].clear();
                    }
                    declared[a] = true;
                    let down = s.on_down(a);
                    for (t, agents) in down.lost {
                        // Losses while a copy ran count too.
                        assert!(agents.len() > MAX_REDISPATCH, "seed {seed}");
                        let resent = lost_with.get(&t).map_or(0, Vec::len);
                        assert!(resent < agents.len(), "seed {seed}");
                        settle(&mut fate, t, 'l');
                    }
                    *tally.entry("sent again").or_default() += down.again.len();
                    for t in down.again {
                        lost_with.entry(t).or_default().push(a);
                    }
                    assert_eq!(down.all_down, declared.iter().all(|&d| d), "seed {seed}");
                }
                // Every agent is down and none came back in time: the
                // waiting tasks are given up.
                39..41 if declared.iter().all(|&d| d) => {
                    for t in s.strand_all() {
                        settle(&mut fate, t, 's');
                    }
                    stranded_since_up = true;
                }
                // An agent declared down is connected anew: its old
                // connection, and the results on it, are gone.
                34..36 => {
                    let a = rng.random_range(0..agents);
                    if declared[a] {
                        declared[a] = false;
                        dead[a] = false;
                        held[a].clear();
                        s.on_up(a);
                        stranded_since_up = false;
                        *tally.entry("rejoined").or_default() += 1;
                    }
                }
                // An agent's credits change (its tasks got shorter or
                // longer).
                36..39 => {
                    let a = rng.random_range(0..agents);
                    credits[a] = rng.random_range(1..=6);
                    ceiling[a] = ceiling[a].max(credits[a]);
                    s.set_credits(a, credits[a]);
                    *tally.entry("credits changed").or_default() += 1;
                }
                // A caller gives up on a task not yet finished.
                32..34 if submitted > 0 => {
                    let t = rng.random_range(0..submitted);
                    if !fate.contains_key(&t) {
                        s.cancel(t);
                        settle(&mut fate, t, 'c');
                    }
                }
                // An agent (alive, or stopped and resumed) answers one of
                // its tasks, in any order.
                _ => {
                    let a = rng.random_range(0..agents);
                    if dead[a] || held[a].is_empty() {
                        continue;
                    }
                    let k = rng.random_range(0..held[a].len());
                    if poison && faults_left > 0 && held[a][k].1 == 0 {
                        continue;
                    }
                    let (attempt, t) = held[a].swap_remove(k);
                    // Some kernels fail (on this agent: a copy elsewhere
                    // may still succeed).
                    let f = if rng.random_bool(0.05) { 'f' } else { 'd' };
                    let answered = if f == 'f' {
                        s.on_failed(now, a, attempt)
                    } else {
                        s.on_result(now, a, attempt)
                    };
                    if answered.is_some() && f == 'd' {
                        s.ran(a, 0, Duration::from_millis(speeds[a]));
                    }
                    match answered {
                        Some(task) => {
                            assert!(!declared[a], "seed {seed}: a late result was taken");
                            assert_eq!(task, t, "seed {seed}: result routed to another task");
                            settle(&mut fate, task, f);
                        }
                        None => {
                            // A copy's result after the other copy's, or a
                            // copy's failure while the other runs on.
                            let copied = sends.get(&t).is_some_and(|&n| n > 1);
                            assert!(
                                declared[a] || fate.get(&t) == Some(&'c') || copied,
                                "seed {seed}: step {step}: a live agent's result was dropped"
                            );
                            *tally.entry("late results dropped").or_default() += 1;
                        }
                    }
                    // The same result again (a duplicate) never counts.
                    assert_eq!(s.on_result(now, a, attempt), None, "seed {seed}");
                }
            }
        }
        // Every task ended exactly once (settle checked "at most").
        assert_eq!(
            submitted, tasks,
            "seed {seed}: the simulation ran out of steps"
        );
        for t in 0..tasks {
            assert!(fate.contains_key(&t), "seed {seed}: task {t} never ended");
        }
        assert_eq!((s.out(), s.waiting()), (0, 0), "seed {seed}");
        for f in fate.values() {
            let what = match f {
                'd' => "done",
                'f' => "failed",
                'l' => "given up",
                's' => "stranded",
                _ => "cancelled",
            };
            *tally.entry(what).or_default() += 1;
        }
    }

    /// When the last of `chunks` equal tasks (`work` ms each at speed 1)
    /// has a result, in ms, run through a scheduler on agents of `speeds`
    /// (one worker and two credits each; each runs its tasks in the order
    /// sent, copies that lost included), on a clock of 1 ms steps that
    /// looks for copies every 10 ms as the dispatcher does; and the
    /// copies sent.
    fn makespan(speeds: &[f64], chunks: u64, work: f64) -> (u64, u64) {
        let mut s = Scheduler::new(&vec![2; speeds.len()]);
        for t in 0..chunks {
            s.submit(t, None).unwrap();
        }
        // Each agent's queue: (attempt, task, ms left).
        let mut queues: Vec<VecDeque<(u64, u64, f64)>> = vec![VecDeque::new(); speeds.len()];
        let (mut ids, mut done, mut copies) = (0u64, 0u64, 0u64);
        for ms in 0..1_000_000u64 {
            let now = t0() + Duration::from_millis(ms);
            if ms % 10 == 0 {
                s.speculate(now);
            }
            while let Some(d) = s.next_send(now, || {
                ids += 1;
                ids
            }) {
                copies += u64::from(d.copy);
                queues[d.agent].push_back((d.attempt, d.task, work / speeds[d.agent]));
            }
            for (a, q) in queues.iter_mut().enumerate() {
                let Some(head) = q.front_mut() else { continue };
                head.2 -= 1.0;
                if head.2 > 0.0 {
                    continue;
                }
                let (attempt, ..) = q.pop_front().unwrap();
                if s.on_result(now, a, attempt).is_some() {
                    s.ran(a, 0, Duration::from_secs_f64(work / speeds[a] / 1000.0));
                    done += 1;
                    if done == chunks {
                        return (ms, copies);
                    }
                }
            }
        }
        panic!("{chunks} tasks on {speeds:?} did not end");
    }

    /// The best makespan for `chunks` equal tasks on agents of `speeds`:
    /// each task where it would end first (optimal for equal tasks).
    fn best_makespan(speeds: &[f64], chunks: u64, work: f64) -> f64 {
        let mut load = vec![0u64; speeds.len()];
        for _ in 0..chunks {
            let end = |a: usize| (load[a] + 1) as f64 * work / speeds[a];
            let a = (0..speeds.len())
                .min_by(|&x, &y| end(x).total_cmp(&end(y)))
                .unwrap();
            load[a] += 1;
        }
        (0..speeds.len())
            .map(|a| load[a] as f64 * work / speeds[a])
            .fold(0.0, f64::max)
    }

    /// Equal tasks on pools of unlike agents (2 to 6, one of speed 1, the
    /// others 0.1 to 1), 1 to 40 tasks: against the best makespan, the
    /// median pool ends within 5% and nine in ten within 35%, where
    /// without tail copies the median took 26% longer and one in ten 87%.
    #[test]
    fn a_slow_agents_last_tasks_end_on_faster_agents_in_200_seeded_pools() {
        use rand::{Rng, SeedableRng};
        let mut ratios = Vec::new();
        for seed in 0..200u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let agents = rng.random_range(2..=6);
            let mut speeds: Vec<f64> = (0..agents).map(|_| rng.random_range(0.1..=1.0)).collect();
            speeds[0] = 1.0;
            let chunks = rng.random_range(1..=40u64);
            let work = 100.0;
            let (took, copies) = makespan(&speeds, chunks, work);
            let best = best_makespan(&speeds, chunks, work);
            ratios.push(took as f64 / best);
            // Copies stay within one agent's credits at a time, and a task
            // is copied once at most.
            assert!(
                copies <= chunks,
                "seed {seed}: {copies} copies of {chunks} tasks"
            );
        }
        ratios.sort_by(f64::total_cmp);
        let (median, p90) = (ratios[100], ratios[180]);
        eprintln!(
            "makespan / best: median {median:.3}, p90 {p90:.3}, worst {:.3}",
            ratios[199]
        );
        assert!(median <= 1.05, "median makespan / best {median:.3}");
        assert!(p90 <= 1.35, "p90 makespan / best {p90:.3}");
    }

    /// A slow agent's speed known from an earlier job: its task is copied
    /// to the idle fast agent at the first look; not known, the agent is
    /// not guessed slow that soon.
    #[test]
    fn a_speed_known_from_an_earlier_job_copies_a_slow_agents_task_at_once() {
        let ms = Duration::from_millis;
        for (known, copies) in [(true, 1), (false, 0)] {
            let mut s = Scheduler::new(&[2, 2]);
            s.seed_busy(0, 0, 0.1);
            if known {
                s.seed_busy(1, 0, 0.4);
            }
            let t = t0();
            let mut next = ids();
            s.submit(0, None).unwrap();
            s.submit(1, None).unwrap();
            let first = s.next_send(t, &mut next).unwrap();
            let second = s.next_send(t, &mut next).unwrap();
            assert_eq!((first.agent, second.agent), (0, 1));
            assert!(s.on_result(t + ms(100), 0, first.attempt).is_some());
            assert_eq!(s.speculate(t + ms(110)), copies, "known: {known}");
        }
    }

    /// Pools of nearly equal agents (speeds within 5%): jobs end within
    /// half a task of the best, and tail copies are few (the speed of an
    /// agent that has not answered yet is not guessed slow too soon).
    #[test]
    fn equal_agents_get_few_tail_copies_and_no_longer_jobs() {
        use rand::{Rng, SeedableRng};
        let (mut copies_all, mut tasks_all) = (0, 0);
        for seed in 0..200u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let n = rng.random_range(2..=6);
            let speeds: Vec<f64> = (0..n).map(|_| rng.random_range(0.95..=1.05)).collect();
            let chunks = rng.random_range(1..=40u64);
            let (took, copies) = makespan(&speeds, chunks, 100.0);
            let best = best_makespan(&speeds, chunks, 100.0);
            assert!(
                took as f64 <= best + 50.0,
                "seed {seed}: {chunks} tasks on {speeds:?} took {took} ms, best {best:.0}"
            );
            copies_all += copies;
            tasks_all += chunks;
        }
        eprintln!("{copies_all} copies for {tasks_all} tasks");
        // Guessing an agent that has not answered yet twice as slow as its
        // oldest task's time out made 24 copies here.
        assert!(
            copies_all * 400 <= tasks_all,
            "{copies_all} copies for {tasks_all} tasks"
        );
    }

    #[test]
    fn every_task_ends_exactly_once_under_600_seeded_fault_schedules() {
        let replay: Option<u64> = std::env::var("SKELPI_SCHEDULE_SEED")
            .ok()
            .and_then(|s| s.parse().ok());
        let (first, count) = replay.map_or((0, 600), |seed| (seed, 1));
        let mut tally = HashMap::new();
        for seed in first..first + count {
            simulate(seed, &mut tally);
        }
        eprintln!("{tally:?}");
        if count > 1 {
            // The schedules reach every path, not only the happy one.
            for what in [
                "done",
                "failed",
                "given up",
                "stranded",
                "cancelled",
                "rejoined",
                "credits changed",
                "copies",
                "tail copies waiting",
            ] {
                assert!(
                    tally.get(what).copied().unwrap_or(0) >= 10,
                    "{what}: {tally:?}"
                );
            }
            for what in ["sent again", "late results dropped"] {
                assert!(
                    tally.get(what).copied().unwrap_or(0) >= 100,
                    "{what}: {tally:?}"
                );
            }
        }
    }
}
