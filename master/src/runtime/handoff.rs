//! User code off the job's thread. A job's I/O — its connections, the
//! heartbeats on them, the dispatcher — runs on a thread of its own
//! ([`on_own_thread`]); the caller's input iterator and result callback run
//! where the caller awaits the job, handed over bounded channels
//! ([`Inputs`] on the job's side draws from the one, [`Results`] fills the
//! other). A callback that blocks for seconds (a slow disk, a network
//! write) then holds only the caller: the heartbeats go on, and the job
//! waits for room instead of taking more inputs.
//!
//! Code that cannot block (the benchmarks' own checks) may run on the job's
//! thread instead: [`Inputs::here`], [`Results::here`].

use crate::runtime::autonomic::Decision;
use event_listener::Event;
use futures_lite::future;
use skelpi_proto::Array;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Inputs the caller's thread draws ahead of the job's demand.
pub const INPUTS_AHEAD: usize = 16;

/// Results that may wait for the caller before the job waits for it.
pub const RESULTS_WAITING: usize = 64;

/// Results handed on together at most (fewer when the job has no more
/// ready: see [`Results::flush`]).
pub const RESULTS_BATCH: usize = 16;

/// Stack of a job's thread (deep trees nest their nodes' futures).
const JOB_STACK: usize = 8 << 20;

/// A job's inputs, as its I/O draws them: each once, in order; the end once
/// the caller's iterator ends (or an input is larger than a bound set with
/// [`Inputs::limit_bytes`]).
pub struct Inputs<'a> {
    source: Source<'a>,
    peeked: Option<Array>,
    drawn: u64,
    max_bytes: Option<usize>,
    refused: Option<(u64, usize)>,
}

enum Source<'a> {
    /// An iterator run on the job's thread.
    Here(Box<dyn Iterator<Item = Array> + 'a>),
    /// Items the caller's thread draws, and how many wait (it draws more
    /// once at most half of [`INPUTS_AHEAD`] do).
    Caller(async_channel::Receiver<Array>, Arc<Gauge>),
    Ended,
}

impl<'a> Inputs<'a> {
    /// Inputs drawn from `iter` on the job's own thread (it must not block).
    pub fn here(iter: impl IntoIterator<Item = Array> + 'a) -> Inputs<'a> {
        Inputs::new(Source::Here(Box::new(iter.into_iter())))
    }

    fn new(source: Source<'a>) -> Inputs<'a> {
        Inputs {
            source,
            peeked: None,
            drawn: 0,
            max_bytes: None,
            refused: None,
        }
    }

    /// Ends the inputs at the first whose elements take more than `bytes`
    /// (see [`Inputs::refused`]).
    pub fn limit_bytes(&mut self, bytes: usize) {
        self.max_bytes = Some(bytes);
    }

    /// The input that ended them for its size: its index and bytes.
    pub fn refused(&self) -> Option<(u64, usize)> {
        self.refused
    }

    /// The next input; `None` once they ended (and ever after).
    pub async fn next(&mut self) -> Option<Array> {
        match self.peeked.take() {
            Some(a) => Some(a),
            None => self.draw().await,
        }
    }

    /// The next input, left to be taken by [`Inputs::next`].
    pub async fn peek(&mut self) -> Option<&Array> {
        if self.peeked.is_none() {
            self.peeked = self.draw().await;
        }
        self.peeked.as_ref()
    }

    async fn draw(&mut self) -> Option<Array> {
        let got = match &mut self.source {
            Source::Here(iter) => iter.next(),
            Source::Caller(items, queued) => {
                let got = items.recv().await.ok();
                if got.is_some() {
                    queued.sub(1, INPUTS_AHEAD / 2);
                }
                got
            }
            Source::Ended => None,
        };
        let Some(a) = got else {
            self.source = Source::Ended;
            return None;
        };
        let bytes = size_of_val(a.data.as_slice());
        if self.max_bytes.is_some_and(|max| bytes > max) {
            self.refused = Some((self.drawn, bytes));
            self.source = Source::Ended;
            return None;
        }
        self.drawn += 1;
        Some(a)
    }
}

impl std::fmt::Debug for Inputs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs")
            .field("drawn", &self.drawn)
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

/// What the job hands to the caller's thread.
enum Out {
    Results(Vec<(u64, Array)>),
    Decision(Decision),
}

/// Where a job's results go: to the caller's thread (at most
/// [`RESULTS_WAITING`] waiting before [`Room::wait`] waits), or to a
/// callback on the job's thread.
pub struct Results<'a> {
    sink: Sink<'a>,
}

enum Sink<'a> {
    Here(Box<dyn FnMut(u64, Array) + 'a>),
    /// Results go in batches (see [`Results::flush`]).
    Caller {
        tx: async_channel::Sender<Out>,
        room: Room,
        batch: Vec<(u64, Array)>,
    },
}

impl<'a> Results<'a> {
    /// Results handed to `on_result` on the job's own thread (it must not
    /// block).
    pub fn here(on_result: impl FnMut(u64, Array) + 'a) -> Results<'a> {
        Results {
            sink: Sink::Here(Box::new(on_result)),
        }
    }

    /// Hands on the result of input `index`, without waiting: at once on
    /// the job's thread, else with the next [`Results::flush`] (or once
    /// [`RESULTS_BATCH`] are held).
    pub fn push(&mut self, index: u64, data: Array) {
        match &mut self.sink {
            Sink::Here(f) => f(index, data),
            Sink::Caller { batch, .. } => {
                batch.push((index, data));
                if batch.len() >= RESULTS_BATCH {
                    self.flush();
                }
            }
        }
    }

    /// Hands the results held on to the caller's thread, waking it once
    /// for them all.
    pub fn flush(&mut self) {
        if let Sink::Caller { tx, room, batch } = &mut self.sink
            && !batch.is_empty()
        {
            room.took(batch.len());
            // The caller is gone only when the job was dropped.
            let _ = tx.try_send(Out::Results(std::mem::take(batch)));
        }
    }

    /// Where to wait for the caller to take results.
    pub fn room(&self) -> Room {
        match &self.sink {
            Sink::Here(_) => Room(None),
            Sink::Caller { room, .. } => room.clone(),
        }
    }

    /// A manager's decisions, handed to the caller's thread (dropped when
    /// results are handled on the job's thread).
    pub fn decisions(&self) -> impl FnMut(&Decision) + Send + 'static {
        let tx = match &self.sink {
            Sink::Here(_) => None,
            Sink::Caller { tx, .. } => Some(tx.clone()),
        };
        move |d: &Decision| {
            if let Some(tx) = &tx {
                let _ = tx.try_send(Out::Decision(d.clone()));
            }
        }
    }
}

impl Drop for Results<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

impl std::fmt::Debug for Results<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let to = match self.sink {
            Sink::Here(_) => "here",
            Sink::Caller { .. } => "the caller",
        };
        f.debug_struct("Results").field("to", &to).finish()
    }
}

/// Room for results waiting for the caller.
#[derive(Clone, Debug)]
pub struct Room(Option<Arc<Gauge>>);

impl Room {
    /// Waits until fewer than [`RESULTS_WAITING`] results wait.
    pub async fn wait(&self) {
        if let Some(waiting) = &self.0 {
            waiting.below(RESULTS_WAITING).await;
        }
    }

    fn took(&self, n: usize) {
        if let Some(waiting) = &self.0 {
            waiting.add(n);
        }
    }
}

/// A count shared by the two threads, and the event of its going down
/// (or of the caller's being gone).
#[derive(Debug, Default)]
struct Gauge {
    count: AtomicUsize,
    down: Event,
    /// The caller is gone: nobody will take the count down.
    gone: AtomicBool,
}

impl Gauge {
    fn add(&self, n: usize) {
        self.count.fetch_add(n, Ordering::AcqRel);
    }

    /// Takes `n` off; says so to a waiter once the count is at most `low`.
    fn sub(&self, n: usize, low: usize) {
        let before = self.count.fetch_sub(n, Ordering::AcqRel);
        if before.saturating_sub(n) <= low {
            self.down.notify(usize::MAX);
        }
    }

    /// Waits until the count is below `bound`, or the caller is gone.
    async fn below(&self, bound: usize) {
        let low =
            || self.count.load(Ordering::Acquire) < bound || self.gone.load(Ordering::Acquire);
        while !low() {
            let listener = self.down.listen();
            if low() {
                return;
            }
            listener.await;
        }
    }
}

/// Marks the results' gauge when the caller's side of a job ends
/// (finished, dropped or unwinding): a job waiting for room goes on, finds
/// its inputs ended and ends too.
struct CallerGone(Arc<Gauge>);

impl Drop for CallerGone {
    fn drop(&mut self) {
        self.0.gone.store(true, Ordering::Release);
        self.0.down.notify(usize::MAX);
    }
}

/// Runs `job` on a thread of its own, drawing `inputs` and handing each
/// result to `on_result` (a manager's decisions to `on_decision`) here, on
/// the caller's thread; returns what `job` returned once every result was
/// handed on. At most [`INPUTS_AHEAD`] inputs are drawn before the job
/// asks for them. A panic of the job is raised here.
///
/// Dropping the returned future mid-job (or a callback's panic) ends the
/// inputs and frees the job from waiting for room; the job then ends on
/// its thread, and what it owned (its connections) goes with it.
pub async fn on_own_thread<T, F, Fut>(
    inputs: impl IntoIterator<Item = Array>,
    mut on_result: impl FnMut(u64, Array),
    mut on_decision: impl FnMut(&Decision),
    job: F,
) -> T
where
    T: Send + 'static,
    F: FnOnce(Inputs<'static>, Results<'static>) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let (items_tx, items_rx) = async_channel::unbounded();
    let (out_tx, out_rx) = async_channel::unbounded();
    let (done_tx, done_rx) = async_channel::bounded(1);
    let queued = Arc::new(Gauge::default());
    let waiting = Arc::new(Gauge::default());
    let (job_queued, job_waiting) = (queued.clone(), waiting.clone());
    let _gone = CallerGone(waiting.clone());
    let thread = std::thread::Builder::new()
        .name("skelpi-job".into())
        .stack_size(JOB_STACK)
        .spawn(move || {
            let inputs = Inputs::new(Source::Caller(items_rx, job_queued));
            let results = Results {
                sink: Sink::Caller {
                    tx: out_tx,
                    room: Room(Some(job_waiting)),
                    batch: Vec::new(),
                },
            };
            let out = smol::block_on(job(inputs, results));
            let _ = done_tx.send_blocking(out);
        })
        .expect("a thread for the job");
    let feeding = async {
        let mut inputs = inputs.into_iter();
        loop {
            queued.below(INPUTS_AHEAD).await;
            let Some(a) = inputs.next() else {
                break;
            };
            queued.add(1);
            if items_tx.try_send(a).is_err() {
                break;
            }
        }
        drop(items_tx);
        future::pending::<()>().await;
    };
    // Ends once the job dropped its results, all handed on.
    let handing = async {
        while let Ok(out) = out_rx.recv().await {
            match out {
                Out::Results(batch) => {
                    let n = batch.len();
                    for (index, data) in batch {
                        on_result(index, data);
                    }
                    waiting.sub(n, RESULTS_WAITING - 1);
                }
                Out::Decision(d) => on_decision(&d),
            }
        }
    };
    future::or(handing, feeding).await;
    match done_rx.recv().await {
        Ok(out) => out,
        Err(_) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the job's thread ended without its outcome"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::time::Duration;

    fn list(i: u64) -> Array {
        Array::list(vec![i as f64])
    }

    #[test]
    fn every_result_is_handed_on_in_order_and_the_jobs_value_returned() {
        let mut got = Vec::new();
        let job = |mut inputs: Inputs<'static>, mut results: Results<'static>| async move {
            let mut n = 0;
            while let Some(a) = inputs.next().await {
                results.room().wait().await;
                results.push(n, a);
                n += 1;
            }
            n
        };
        let n = smol::block_on(on_own_thread(
            (0..1000).map(list),
            |i, a| got.push((i, a)),
            |_| {},
            job,
        ));
        assert_eq!(n, 1000);
        assert_eq!(got, (0..1000).map(|i| (i, list(i))).collect::<Vec<_>>());
    }

    #[test]
    fn inputs_are_drawn_a_bounded_way_ahead_of_the_job() {
        let drawn = Cell::new(0u64);
        let inputs = (0..10_000).map(|i| {
            drawn.set(drawn.get() + 1);
            list(i)
        });
        // The job takes 3 inputs, then waits a while for nothing.
        let job = |mut inputs: Inputs<'static>, _results: Results<'static>| async move {
            for _ in 0..3 {
                inputs.next().await.unwrap();
            }
            async_io::Timer::after(Duration::from_millis(200)).await;
        };
        smol::block_on(on_own_thread(inputs, |_, _| {}, |_| {}, job));
        assert!(
            drawn.get() <= 3 + INPUTS_AHEAD as u64,
            "{} drawn",
            drawn.get()
        );
    }

    #[test]
    fn the_job_waits_for_a_caller_that_takes_no_results() {
        // The caller blocks in its first result for 300 ms: meanwhile the
        // job holds at most RESULTS_WAITING (and a batch) unhanded.
        let job = |_inputs: Inputs<'static>, mut results: Results<'static>| async move {
            let mut most = 0;
            for i in 0..1000 {
                let room = results.room();
                room.wait().await;
                results.push(i, list(i));
                results.flush();
                most = most.max(room.0.as_ref().unwrap().count.load(Ordering::Acquire));
            }
            most
        };
        let mut first = true;
        let on_result = |_, _| {
            if std::mem::take(&mut first) {
                std::thread::sleep(Duration::from_millis(300));
            }
        };
        let most = smol::block_on(on_own_thread(std::iter::empty(), on_result, |_| {}, job));
        assert!(most <= RESULTS_WAITING, "{most} waited");
    }

    #[test]
    fn a_job_whose_caller_is_gone_ends_instead_of_waiting_for_room() {
        // The result callback panics at once: the caller is gone with
        // results waiting, and nobody will take them.
        let (ended_tx, ended_rx) = std::sync::mpsc::channel();
        let job = move |mut inputs: Inputs<'static>, mut results: Results<'static>| async move {
            for i in 0..1000 {
                results.room().wait().await;
                results.push(i, list(i));
                results.flush();
            }
            while inputs.next().await.is_some() {}
            ended_tx.send(()).unwrap();
        };
        let inputs = (0..).map(list);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let on_result = |_, _| panic!("the caller's own");
            smol::block_on(on_own_thread(inputs, on_result, |_| {}, job));
        }));
        assert!(caught.is_err());
        ended_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the job ended");
    }

    #[test]
    fn a_panic_of_the_job_is_raised_to_the_caller() {
        let job = |_: Inputs<'static>, _: Results<'static>| async { panic!("the job's own") };
        let caught = std::panic::catch_unwind(|| {
            smol::block_on(on_own_thread(std::iter::empty(), |_, _| {}, |_| {}, job));
        });
        let payload = caught.unwrap_err();
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"the job's own"));
    }

    #[test]
    fn inputs_end_at_the_first_too_large_one_and_say_which() {
        let mut inputs = Inputs::here([list(1), Array::list(vec![0.0; 10]), list(2)]);
        inputs.limit_bytes(16);
        smol::block_on(async {
            assert!(inputs.peek().await.is_some());
            assert_eq!(inputs.next().await, Some(list(1)));
            assert_eq!(inputs.next().await, None);
            assert_eq!(inputs.next().await, None);
        });
        assert_eq!(inputs.refused(), Some((1, 80)));
    }
}
