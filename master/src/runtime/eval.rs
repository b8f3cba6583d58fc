//! Skeleton trees as graphs of bounded streams over the dispatcher.
//!
//! Every node reads a stream of items and writes one; channels hold at most
//! [`STREAM_BUFFER`] items, so a slow stage holds back its producers. An
//! error travels down the stream as an `Err` item and ends the job.

use super::dispatch::{CREDITS_PER_WORKER, Dispatcher, MAX_TASKS_PER_WORKER};
use super::sequential::concat;
use super::switch::Switches;
use super::{Item, JobError, split};
use skelpi_proto::Array;
use skelpi_proto::skeleton::{Kernel, Skeleton};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

/// Items a stream buffers between two nodes.
pub const STREAM_BUFFER: usize = 8;

/// A stream of items (or the error that ended it).
pub type Stream = async_channel::Receiver<Result<Item, JobError>>;
type Sink = async_channel::Sender<Result<Item, JobError>>;

/// A future that a node wants run next to it.
pub type Spawned<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// Starts futures on the job's executor. Nodes own a clone; the job's
/// driver receives the futures and spawns them, so no node borrows the
/// executor. (The queue holds only futures not yet started: it is emptied
/// as fast as nodes fill it.)
#[derive(Clone)]
pub struct Spawner<'a>(pub async_channel::Sender<Spawned<'a>>);

impl std::fmt::Debug for Spawner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Spawner")
    }
}

impl<'a> Spawner<'a> {
    /// Runs `f` next to the caller.
    pub fn spawn(&self, f: impl Future<Output = ()> + 'a) {
        let _ = self.0.try_send(Box::pin(f));
    }

    /// Runs `f` next to the caller; the returned future yields its output
    /// (`None` if the job was cancelled first).
    pub fn spawn_with<T: 'a>(
        &self,
        f: impl Future<Output = T> + 'a,
    ) -> impl Future<Output = Option<T>> + 'a {
        let (tx, rx) = async_channel::bounded(1);
        self.spawn(async move {
            let _ = tx.send(f.await).await;
        });
        async move { rx.recv().await.ok() }
    }
}

/// What evaluation needs: where to start nodes, where to send tasks, and
/// the default farm width.
#[derive(Clone)]
pub struct Ctx<'a, 'c> {
    /// Starts the nodes.
    pub spawner: Spawner<'a>,
    /// Task dispatch.
    pub d: &'a Dispatcher<'c>,
    /// Worker threads of the pool (a farm that does not say how many
    /// replicas it has gets one per credit it may have:
    /// [`MAX_TASKS_PER_WORKER`] per core).
    pub cores: usize,
    /// The agent a `seq` runs on when it is a pipeline stage (`None`: on
    /// demand, wherever a credit is free).
    pub home: Option<usize>,
    /// Inside a farm or a map, whose replicas take any agent on demand:
    /// pipelines there are not placed.
    pub replicated: bool,
    /// Replicas this part of the tree may start in all: a farm or a map
    /// starts at most that many and shares the rest out among them, so a
    /// tree's memory is bounded by the pool ([`replica_budget`]), not by
    /// how deep its farms nest. Fewer replicas than asked change no result
    /// (farms keep order); the pool's credits bound what runs at once
    /// anyway.
    pub budget: usize,
    /// The job's kernel swaps, if it may have any.
    pub switches: Option<&'a Switches>,
    /// The stage number of this part's first `seq` (a tree's `seq` nodes
    /// are numbered in the order written: [`Skeleton::seqs`]).
    pub stage: usize,
}

/// Replicas a job may start in all, for a pool of `cores` worker threads:
/// four per task credit it may have, and at least 64.
pub fn replica_budget(cores: usize) -> usize {
    (4 * MAX_TASKS_PER_WORKER * cores).max(64)
}

impl<'a, 'c> Ctx<'a, 'c> {
    fn at(&self, home: Option<usize>) -> Ctx<'a, 'c> {
        Ctx {
            home,
            ..self.clone()
        }
    }

    /// The context of each of `n` replicas: placed nowhere, sharing this
    /// part's budget.
    fn replicas(&self, n: usize) -> Ctx<'a, 'c> {
        Ctx {
            home: None,
            replicated: true,
            budget: (self.budget / n.max(1)).max(1),
            ..self.clone()
        }
    }

    /// At most `n` replicas within the budget (at least one).
    fn within_budget(&self, n: usize) -> usize {
        n.clamp(1, self.budget.max(1))
    }
}

/// The seed's `get_nodes(n)`: `n` agents for `n` stages, spread over the
/// pool and wrapping, so consecutive stages share an agent only when agents
/// are fewer than stages.
pub fn get_nodes(n: usize, agents: usize) -> Vec<usize> {
    (0..n).map(|i| i % agents.max(1)).collect()
}

impl std::fmt::Debug for Ctx<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("cores", &self.cores).finish()
    }
}

pub(crate) fn channel() -> (Sink, Stream) {
    async_channel::bounded(STREAM_BUFFER)
}

/// Spawns the graph of `skel` reading `input`; returns its output stream.
pub fn eval<'a, 'c: 'a>(cx: Ctx<'a, 'c>, skel: &'a Skeleton, input: Stream) -> Stream {
    match skel {
        Skeleton::Seq(k) => seq(cx, k, input),
        Skeleton::Pipe(stages) => {
            let homes = get_nodes(stages.len(), cx.d.agents());
            let mut first = cx.stage;
            stages.iter().zip(homes).fold(input, |s, (stage, home)| {
                let placed = (!cx.replicated).then_some(home);
                let at = Ctx {
                    stage: first,
                    ..cx.at(placed)
                };
                first += stage.seq_count();
                eval(at, stage, s)
            })
        }
        Skeleton::Farm {
            worker,
            replicas,
            ordered,
        } => {
            // One replica per credit the pool may give by default: every
            // core has a task running and one or more queued behind it
            // (more for short tasks), so no core idles during a round
            // trip. The farm keeps to the credits given now (see `farm`).
            let n =
                cx.within_budget(replicas.map_or(cx.cores * MAX_TASKS_PER_WORKER, |r| r as usize));
            farm(cx.replicas(n), worker, n, *ordered, input)
        }
        Skeleton::Map { parts, worker } => map(cx, *parts as usize, worker, input),
        Skeleton::Reduce(k) => reduce(cx, k, input),
        Skeleton::Feedback {
            body,
            until,
            max_rounds,
        } => feedback(cx, body, until, *max_rounds, input),
        other => {
            let (tx, rx) = channel();
            let _ = tx.try_send(Err(JobError::Invalid(format!(
                "unsupported skeleton {other}"
            ))));
            rx
        }
    }
}

/// Feeds `items` into a new stream, as fast as the stream takes them.
pub fn source<'a>(spawner: &Spawner<'a>, items: impl IntoIterator<Item = Item> + 'a) -> Stream {
    let (tx, rx) = channel();
    spawner.spawn(async move {
        for item in items {
            if tx.send(Ok(item)).await.is_err() {
                return;
            }
        }
    });
    rx
}

fn seq<'a, 'c: 'a>(cx: Ctx<'a, 'c>, k: &'a Kernel, input: Stream) -> Stream {
    let (tx, rx) = channel();
    cx.spawner.clone().spawn(async move {
        while let Ok(next) = input.recv().await {
            let out = match next {
                Ok(item) => {
                    let meta = item_meta(&item);
                    let swapped = cx
                        .switches
                        .and_then(|s| s.kernel(cx.stage, item.input, |k| cx.d.lacking(k)));
                    let k = swapped.as_deref().unwrap_or(k);
                    let done = match cx.home {
                        Some(home) => cx.d.call_at(home, &item.origin, k, item.data).await,
                        None => cx.d.call(&item.origin, k, item.data).await,
                    };
                    done.map(|data| Item { data, ..meta })
                }
                Err(e) => Err(e),
            };
            let failed = out.is_err();
            if tx.send(out).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// `item` without its data.
fn item_meta(item: &Item) -> Item {
    Item {
        index: item.index,
        input: item.input,
        origin: item.origin.clone(),
        data: Array::list(Vec::new()),
    }
}

/// `n` replicas of `worker` pulling items on demand from one queue; the
/// collector restores input order if `ordered`. At most `4 n` items are
/// between the emitter and the collector at any time.
fn farm<'a, 'c: 'a>(
    cx: Ctx<'a, 'c>,
    worker: &'a Skeleton,
    n: usize,
    ordered: bool,
    input: Stream,
) -> Stream {
    let window = 4 * n;
    let (credit_tx, credit_rx) = async_channel::bounded::<()>(window);
    for _ in 0..window {
        let _ = credit_tx.try_send(());
    }
    // Told when an item leaves the farm.
    let returned = Arc::new(event_listener::Event::new());
    let returning = returned.clone();
    let (work_tx, work_rx) = async_channel::bounded(n);
    let (merge_tx, merge_rx) = channel();
    let (out_tx, out_rx) = channel();
    let (index_tx, index_rx) = async_channel::unbounded::<(u64, u64)>();
    // Emitter: number the items 0, 1, 2... (the collector maps them back).
    cx.spawner.clone().spawn(async move {
        let mut seq = 0u64;
        while let Ok(next) = input.recv().await {
            match next {
                Ok(mut item) => {
                    if credit_rx.recv().await.is_err() {
                        return;
                    }
                    // At most four items per credit the pool gives now:
                    // two per worker for long or large tasks, so their
                    // items do not pile up in this process.
                    loop {
                        let listener = returned.listen();
                        let in_farm = window - credit_rx.len();
                        if in_farm <= 4 * cx.d.credit_window().max(1) {
                            break;
                        }
                        listener.await;
                    }
                    let _ = index_tx.try_send((seq, item.index));
                    item.index = seq;
                    seq += 1;
                    if work_tx.send(Ok(item)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = work_tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    for _ in 0..n {
        let out = eval(cx.clone(), worker, work_rx.clone());
        let merge = merge_tx.clone();
        cx.spawner.spawn(async move {
            while let Ok(r) = out.recv().await {
                if merge.send(r).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(merge_tx);
    // Collector.
    cx.spawner.clone().spawn(async move {
        let mut original = BTreeMap::new();
        let mut held = BTreeMap::new();
        let mut next = 0u64;
        while let Ok(r) = merge_rx.recv().await {
            let item = match r {
                Ok(item) => item,
                Err(e) => {
                    let _ = out_tx.send(Err(e)).await;
                    return;
                }
            };
            while let Ok((seq, index)) = index_rx.try_recv() {
                original.insert(seq, index);
            }
            let ready: Vec<Item> = if ordered {
                held.insert(item.index, item);
                let mut ready = Vec::new();
                while let Some(item) = held.remove(&next) {
                    ready.push(item);
                    next += 1;
                }
                ready
            } else {
                vec![item]
            };
            for mut item in ready {
                let Some(index) = original.remove(&item.index) else {
                    let what = format!(
                        "farm: a replica returned item {} twice or unasked",
                        item.index
                    );
                    let _ = out_tx.send(Err(JobError::Invalid(what))).await;
                    return;
                };
                item.index = index;
                let _ = credit_tx.try_send(());
                returning.notify(1);
                if out_tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
        }
    });
    out_rx
}

/// Per item: split into `parts` chunks, run them through a farm of
/// `worker` (one replica per chunk), concatenate in chunk order.
fn map<'a, 'c: 'a>(cx: Ctx<'a, 'c>, parts: usize, worker: &'a Skeleton, input: Stream) -> Stream {
    let (tx, rx) = channel();
    cx.spawner.clone().spawn(async move {
        while let Ok(next) = input.recv().await {
            let out = match next {
                Ok(item) => map_one(cx.clone(), parts, worker, item).await,
                Err(e) => Err(e),
            };
            let failed = out.is_err();
            if tx.send(out).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

async fn map_one<'a, 'c: 'a>(
    cx: Ctx<'a, 'c>,
    parts: usize,
    worker: &'a Skeleton,
    item: Item,
) -> Result<Item, JobError> {
    let chunks: Vec<Item> = split(&item.data.data, parts)
        .into_iter()
        .enumerate()
        .map(|(j, data)| Item {
            index: j as u64,
            input: item.input,
            origin: format!("{} part {j}", item.origin),
            data: Array::list(data),
        })
        .collect();
    let n = cx.within_budget(chunks.len());
    let spawner = cx.spawner.clone();
    let out = farm(cx.replicas(n), worker, n, true, source(&spawner, chunks));
    let mut data = Vec::with_capacity(item.data.data.len());
    while let Ok(r) = out.recv().await {
        data.extend_from_slice(&r?.data.data);
    }
    Ok(Item {
        data: Array::list(data),
        ..item
    })
}

/// A partial result of a reduction: ready, or being combined.
type Partial<'a> = Pin<Box<dyn Future<Output = Result<Array, JobError>> + 'a>>;

/// Combines pairs as the stream flows, like a binary counter: a partial at
/// level L stands for 2^L consecutive items, and two partials of the same
/// level are combined (concurrently with the rest) as soon as both exist.
/// At the end the partials left are combined from the right. This pairs
/// items exactly as the level-by-level reduction of [`super::sequential`],
/// holds O(log n) partials, and emits one item (none for an empty stream).
fn reduce<'a, 'c: 'a>(cx: Ctx<'a, 'c>, k: &'a Kernel, input: Stream) -> Stream {
    let (tx, rx) = channel();
    cx.spawner.clone().spawn(async move {
        let mut stack: Vec<(u32, Partial<'a>)> = Vec::new();
        let mut pairs: Vec<u64> = Vec::new();
        let mut count = 0u64;
        // Combinations started and not finished are bounded: reading the
        // input waits for one to finish, so a fast input cannot pile up
        // arrays in front of slow agents.
        let limit = cx.cores * CREDITS_PER_WORKER + 8;
        let running = Arc::new(smol::lock::Semaphore::new(limit));
        while let Ok(next) = input.recv().await {
            let item = match next {
                Ok(item) => item,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            count += 1;
            let data = item.data;
            let mut top: (u32, Partial<'a>) = (0, Box::pin(async move { Ok(data) }));
            while stack.last().is_some_and(|(level, _)| *level == top.0) {
                let (level, left) = stack.pop().expect("checked");
                let permit = running.acquire_arc().await;
                let joined = combine(&cx, k, &mut pairs, level, left, top.1, permit);
                top = (level + 1, joined);
            }
            stack.push(top);
        }
        let out = match stack.len() {
            0 => return,
            // A single item is still passed through the kernel once.
            1 if count == 1 => match stack.pop() {
                Some((_, only)) => match only.await {
                    Ok(only) => cx.d.call("reduce level 0 pair 0", k, only).await,
                    Err(e) => Err(e),
                },
                None => return,
            },
            _ => {
                while stack.len() > 1 {
                    let (_, right) = stack.pop().expect("two or more");
                    let (level, left) = stack.pop().expect("two or more");
                    let permit = running.acquire_arc().await;
                    let joined = combine(&cx, k, &mut pairs, level, left, right, permit);
                    stack.push((level + 1, joined));
                }
                match stack.pop() {
                    Some((_, last)) => last.await,
                    None => return,
                }
            }
        };
        let _ = tx
            .send(out.map(|data| Item {
                index: 0,
                input: 0,
                origin: "reduce".into(),
                data,
            }))
            .await;
    });
    rx
}

/// Starts `k(left ++ right)` as soon as both are ready, holding `permit`
/// until it is done.
fn combine<'a, 'c: 'a>(
    cx: &Ctx<'a, 'c>,
    k: &'a Kernel,
    pairs: &mut Vec<u64>,
    level: u32,
    left: Partial<'a>,
    right: Partial<'a>,
    permit: smol::lock::SemaphoreGuardArc,
) -> Partial<'a> {
    let level = level as usize;
    if pairs.len() <= level {
        pairs.resize(level + 1, 0);
    }
    let origin = format!("reduce level {level} pair {}", pairs[level]);
    pairs[level] += 1;
    let d = cx.d;
    let done = cx.spawner.spawn_with(async move {
        let _permit = permit;
        let (a, b) = futures_lite::future::zip(left, right).await;
        d.call(&origin, k, concat(a?, b?)).await
    });
    Box::pin(async move { done.await.ok_or(JobError::Cancelled)? })
}

/// Per item: run `body`, then `until`; go round again while `until`'s first
/// element is > 0, at most `max_rounds` times.
fn feedback<'a, 'c: 'a>(
    cx: Ctx<'a, 'c>,
    body: &'a Skeleton,
    until: &'a Kernel,
    max_rounds: u32,
    input: Stream,
) -> Stream {
    let (tx, rx) = channel();
    cx.spawner.clone().spawn(async move {
        while let Ok(next) = input.recv().await {
            let out = match next {
                Ok(item) => feedback_one(cx.clone(), body, until, max_rounds, item).await,
                Err(e) => Err(e),
            };
            let failed = out.is_err();
            if tx.send(out).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

async fn feedback_one<'a, 'c: 'a>(
    cx: Ctx<'a, 'c>,
    body: &'a Skeleton,
    until: &'a Kernel,
    max_rounds: u32,
    mut item: Item,
) -> Result<Item, JobError> {
    let origin = item.origin.clone();
    for round in 0..max_rounds {
        let mut one = item;
        one.origin = format!("{origin} round {round}");
        let out = eval(cx.clone(), body, source(&cx.spawner, vec![one]));
        let mut results = Vec::new();
        while let Ok(r) = out.recv().await {
            results.push(r?);
        }
        let [done] =
            <[Item; 1]>::try_from(results).map_err(|r| JobError::feedback_count(body, r.len()))?;
        let verdict = cx.d.call(&done.origin, until, done.data.clone()).await?;
        item = Item {
            origin: origin.clone(),
            ..done
        };
        if verdict.data.first().is_none_or(|&v| v <= 0.0) {
            return Ok(item);
        }
    }
    Err(JobError::feedback_endless(&origin, max_rounds, body, until))
}
