//! The pipeline stages running on one agent, by `(stream, stage)`: each
//! one's bounded inbox, its counts, and how an item arriving on any
//! session reaches it ([`Streams::deliver`]) or a broken link cuts it
//! ([`Streams::cut`]). The stages themselves are in [`crate::stages`].

use crate::kernels::Array;
use crate::trace::Recorder;
use skelpi_proto::trace::TraceKind;
use skelpi_proto::{JobId, StageProgress, StreamItem};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Items an inbox holds before its producer waits.
pub const INBOX: usize = 8;

/// One item on its way into a stage.
#[derive(Debug)]
pub struct StageItem {
    /// Its position in the pipeline's input.
    pub index: u64,
    /// The data.
    pub data: Array,
    /// When its frame had been read, before it waited for room in the
    /// inbox.
    pub arrived: Instant,
}

/// How a stream item's frame arrived.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// The connection's number in traces.
    pub conn: u32,
    /// When its first bytes were in.
    pub started: Instant,
    /// Its bytes.
    pub frame_len: usize,
}

type Key = (u64, u32);

/// Why a stage's input ended before the end of its stream, once it did.
type Cut = Arc<std::sync::OnceLock<String>>;

/// How far a stage has got, for [`Streams::progress`].
#[derive(Debug, Default)]
pub struct Counts {
    arrived: AtomicU64,
    done: AtomicU64,
    sent: AtomicU64,
    busy_ns: AtomicU64,
    input_ended: AtomicBool,
}

impl Counts {
    /// One more item arrived.
    fn arrived(&self) {
        self.arrived.fetch_add(1, Ordering::Relaxed);
    }

    /// One more item run by the stage's kernel, for `busy`.
    pub fn ran(&self, busy: Duration) {
        let ns = u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX);
        self.busy_ns.fetch_add(ns, Ordering::Relaxed);
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    /// One more result passed on.
    pub fn passed_on(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// A stage's inbox, whether its stream is traced, why its input was cut,
/// and its counts.
#[derive(Debug, Clone)]
struct Inbox {
    tx: async_channel::Sender<StageItem>,
    traced: bool,
    cut: Cut,
    counts: Arc<Counts>,
}

/// What a stage reads: its items, why they stopped before the end of the
/// stream (set by [`Streams::cut`]), and the counts it keeps.
#[derive(Debug)]
pub struct StageInput {
    /// The items, in order; closed after the last.
    pub items: async_channel::Receiver<StageItem>,
    /// Set when the connection that carried them ended first.
    pub cut: Cut,
    /// Items in, run, passed on.
    pub counts: Arc<Counts>,
}

/// The stages this agent runs, by `(stream, stage)`.
#[derive(Debug, Default)]
pub struct Streams {
    inboxes: std::sync::Mutex<HashMap<Key, Inbox>>,
}

/// Removes a stage's inbox when the stage ends.
#[derive(Debug)]
pub struct Registration<'s> {
    streams: &'s Streams,
    key: Key,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.streams.lock().remove(&self.key);
    }
}

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Inbox>> {
        self.inboxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a stage's inbox (`traced`: record its items' arrivals);
    /// refused if that stage already runs here.
    pub fn register(
        &self,
        stream: u64,
        stage: u32,
        traced: bool,
    ) -> Result<(StageInput, Registration<'_>), String> {
        let mut map = self.lock();
        if map.contains_key(&(stream, stage)) {
            return Err(format!(
                "stage {stage} of job {} already runs here",
                JobId(stream)
            ));
        }
        let (tx, rx) = async_channel::bounded(INBOX);
        let inbox = Inbox {
            tx,
            traced,
            cut: Cut::default(),
            counts: Arc::default(),
        };
        let input = StageInput {
            items: rx,
            cut: inbox.cut.clone(),
            counts: inbox.counts.clone(),
        };
        map.insert((stream, stage), inbox);
        let key = (stream, stage);
        Ok((input, Registration { streams: self, key }))
    }

    /// The inbox of a stage running here.
    fn inbox(&self, stream: u64, stage: u32) -> Option<Inbox> {
        self.lock().get(&(stream, stage)).cloned()
    }

    /// How far a stage running here has got.
    pub fn progress(&self, stream: u64, stage: u32) -> Option<StageProgress> {
        let map = self.lock();
        let counts = &map.get(&(stream, stage))?.counts;
        Some(StageProgress {
            stream,
            stage,
            arrived: counts.arrived.load(Ordering::Relaxed),
            done: counts.done.load(Ordering::Relaxed),
            sent: counts.sent.load(Ordering::Relaxed),
            busy_ns: counts.busy_ns.load(Ordering::Relaxed),
            input_ended: counts.input_ended.load(Ordering::Relaxed),
        })
    }

    /// Ends a stage's input: once the items already in its inbox are done,
    /// the stage finishes. Returns whether the stage runs here.
    pub fn end(&self, stream: u64, stage: u32) -> bool {
        match self.lock().get(&(stream, stage)) {
            Some(inbox) => {
                inbox.counts.input_ended.store(true, Ordering::Relaxed);
                inbox.tx.close();
                true
            }
            None => false,
        }
    }

    /// Ends a stage's input early, `why`: the connection that carried its
    /// items ended before the end of the stream. The stage runs the items
    /// already in its inbox, then fails with [`ErrorCode::InputLost`](skelpi_proto::ErrorCode::InputLost)
    /// instead of waiting for items that can no longer come.
    pub fn cut(&self, stream: u64, stage: u32, why: &str) {
        if let Some(inbox) = self.lock().get(&(stream, stage)) {
            let _ = inbox.cut.set(why.to_owned());
            inbox.tx.close();
        }
    }

    /// Hands a received stream item to its stage, waiting while the
    /// stage's inbox is full (its arrival traced on `recorder` if the stage
    /// is traced). An error names an item no stage here expects.
    pub async fn deliver(
        &self,
        item: StreamItem,
        data: Array,
        arrival: Arrival,
        recorder: &Recorder,
    ) -> Result<(), String> {
        let Some(inbox) = self.inbox(item.stream, item.stage) else {
            return Err(format!(
                "no stage {} of job {} runs on this agent",
                item.stage,
                JobId(item.stream),
            ));
        };
        let index = item.index;
        if inbox.traced {
            let (job, kind) = (JobId(item.stream), TraceKind::ItemRecv);
            let (at, bytes) = (arrival.started, arrival.frame_len);
            recorder.frame(job, kind, arrival.conn, index, item.stage, at, bytes);
        }
        let arrived = Instant::now();
        let item_in = StageItem {
            index,
            data,
            arrived,
        };
        inbox.tx.send(item_in).await.map_err(|_| {
            format!(
                "stage {} of job {} has ended; item {index} is late",
                item.stage,
                JobId(item.stream)
            )
        })?;
        inbox.counts.arrived();
        Ok(())
    }
}
