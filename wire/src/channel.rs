//! Message channels: typed messages and bulk arrays over a byte stream.

use crate::WireError;
use crate::stream::{ByteReader, ByteWriter, WireStats};
use skelpi_proto::bulk::{f64_bytes, f64_bytes_mut};
use skelpi_proto::codec::{self, Head};
use skelpi_proto::frame::{self, LEN_PREFIX};
use skelpi_proto::{Message, Shape};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bytes read before the first attempt to decode a frame's head.
const HEAD_PROBE: usize = 4096;
/// Arrays up to this size are copied next to their head and sent in one write.
const COALESCE: usize = 16 * 1024;

/// The sending half of a connection.
pub struct Sender {
    w: ByteWriter,
    head: Vec<u8>,
    max_frame: u32,
    stats: Arc<WireStats>,
    last_frame: usize,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("max_frame", &self.max_frame)
            .finish()
    }
}

impl Sender {
    pub(crate) fn new(w: ByteWriter, max_frame: u32, stats: Arc<WireStats>) -> Self {
        Sender {
            w,
            head: Vec::with_capacity(256),
            max_frame,
            stats,
            last_frame: 0,
        }
    }

    /// Sends a message that carries no array.
    pub async fn send(&mut self, msg: &Message) -> Result<(), WireError> {
        self.queue(msg).await?;
        self.w.flush().await
    }

    /// Queues a message that carries no array: it goes with the next
    /// [`Sender::flush`] (or earlier, once the buffer fills), so frames
    /// queued together share one socket write.
    pub async fn queue(&mut self, msg: &Message) -> Result<(), WireError> {
        self.head.clear();
        codec::encode_head(msg, None, self.max_frame, &mut self.head)?;
        self.last_frame = self.head.len();
        self.w.write(&self.head).await
    }

    /// Writes every frame queued to the socket.
    pub async fn flush(&mut self) -> Result<(), WireError> {
        self.w.flush().await
    }

    /// Sends a message with its array. `data` must hold exactly the
    /// elements of `shape`, and the frame must fit the frame limit: larger
    /// arrays are sent as chunks by the caller.
    pub async fn send_bulk(
        &mut self,
        msg: &Message,
        shape: Shape,
        data: &[f64],
    ) -> Result<(), WireError> {
        self.queue_bulk(msg, shape, data).await?;
        self.w.flush().await
    }

    /// Queues a message with its array, as [`Sender::send_bulk`] sends it:
    /// it goes with the next [`Sender::flush`] (or earlier, once the
    /// buffer fills). Nothing is queued if it cannot be encoded.
    pub async fn queue_bulk(
        &mut self,
        msg: &Message,
        shape: Shape,
        data: &[f64],
    ) -> Result<(), WireError> {
        if shape.elements() != Some(data.len() as u64) {
            return Err(skelpi_proto::EncodeError::ShapeMismatch {
                shape,
                elements: data.len(),
            }
            .into());
        }
        self.head.clear();
        codec::encode_head(msg, Some(shape), self.max_frame, &mut self.head)?;
        let bytes = f64_bytes(data);
        self.last_frame = self.head.len() + bytes.len();
        if bytes.len() <= COALESCE {
            self.head.extend_from_slice(bytes);
            self.w.write(&self.head).await?;
        } else {
            self.w.write(&self.head).await?;
            self.w.write(bytes).await?;
        }
        Ok(())
    }

    /// The bytes of the last frame sent (or being sent), length prefix
    /// included.
    pub fn last_frame_len(&self) -> usize {
        self.last_frame
    }

    /// Byte counters of this connection (shared with its receiver).
    pub fn stats(&self) -> &Arc<WireStats> {
        &self.stats
    }

    /// Closes the write direction; the peer sees end of stream.
    pub fn close(&self) {
        self.w.shutdown();
    }

    /// What closes this connection's sending half from elsewhere, without
    /// the sender (which a writer may hold).
    pub fn closer(&self) -> Closer {
        Closer(self.w.socket())
    }
}

/// Closes a connection's sending half (the peer reads its end), from
/// wherever: see [`Sender::closer`].
#[derive(Debug, Clone)]
pub struct Closer(async_net::TcpStream);

impl Closer {
    /// Shuts the sending half; a frame being written is cut (the peer is
    /// being dropped anyway).
    pub fn close(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Write);
    }
}

/// A message as received, with the shape of the array that came with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The message.
    pub msg: Message,
    /// The array's shape, if the message carried one.
    pub bulk: Option<Shape>,
    /// The frame's bytes, length prefix included.
    pub frame_len: usize,
    /// When its length prefix had been read: the frame's first bytes were
    /// in (for traces).
    pub started: Instant,
}

/// Bytes of a frame's bulk read between two marks of its sender's
/// liveness: 5 ms at 100 Mb/s, and under the 2 s a peer may be silent
/// (4 beats of the default 500 ms) down to 0.3 Mb/s, so a long frame on a
/// slow link never passes for silence.
const ALIVE_EVERY: usize = 64 << 10;

/// When a connection last heard from its peer: shared, so that a
/// watchdog can see it while the receiver waits for the next frame.
#[derive(Debug)]
pub struct Liveness {
    epoch: Instant,
    last_ns: AtomicU64,
    beats: AtomicU64,
}

impl Liveness {
    fn new() -> Liveness {
        Liveness {
            epoch: Instant::now(),
            last_ns: AtomicU64::new(0),
            beats: AtomicU64::new(0),
        }
    }

    /// Heartbeats received so far: a peer that sent one keeps sending them.
    pub fn beats(&self) -> u64 {
        self.beats.load(Ordering::Relaxed)
    }

    fn heard(&self, at: Instant) {
        let since = at.saturating_duration_since(self.epoch);
        let ns = since.as_nanos().try_into().unwrap_or(u64::MAX);
        self.last_ns.store(ns, Ordering::Relaxed);
    }

    /// How long since the last frame (a heartbeat or any other) began to
    /// arrive, or since the connection was set up.
    pub fn silent_for(&self) -> Duration {
        let last = Duration::from_nanos(self.last_ns.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Whether the peer, asked for a heartbeat every `beat`, is down now
    /// ([`skelpi_proto::beat::is_down`]).
    pub fn is_down(&self, beat: Duration) -> bool {
        skelpi_proto::beat::is_down(beat, self.beats(), self.silent_for())
    }

    /// Returns once the peer, asked for a heartbeat every `beat`, has sent
    /// one and then nothing for [`DOWN_AFTER_BEATS`] of them — it is down;
    /// never if `beat` is zero, nor while it never beat (an older peer, its
    /// connection alone tells). Checks four times a beat.
    ///
    /// [`DOWN_AFTER_BEATS`]: crate::handshake::DOWN_AFTER_BEATS
    pub async fn silent_past(&self, beat: Duration) {
        if beat.is_zero() {
            return std::future::pending().await;
        }
        loop {
            async_io::Timer::after(beat / 4).await;
            if self.is_down(beat) {
                return;
            }
        }
    }
}

/// Results nobody waits for that a [`Receiver`] remembers, at most: the
/// oldest are forgotten past it (their tasks' agents were lost, or stalled
/// for good, and the connection is made anew anyway).
pub const MAX_UNCLAIMED: usize = 4096;

/// Where [`Receiver::recv_frame`] puts an array: `bulk`, resized to it.
fn resized<'a>(
    bulk: &'a mut Vec<f64>,
) -> impl FnOnce(&Message, Shape) -> Result<&'a mut [f64], WireError> {
    move |_, shape| {
        let n = shape.elements().unwrap_or(0) as usize;
        bulk.clear();
        bulk.resize(n, 0.0);
        Ok(&mut bulk[..])
    }
}

/// The receiving half of a connection.
pub struct Receiver {
    r: ByteReader,
    head: Vec<u8>,
    max_frame: u32,
    liveness: Arc<Liveness>,
    /// Ids of tasks whose results nobody waits for: skipped when they come
    /// (see [`Receiver::leave_results`]).
    unclaimed: std::collections::VecDeque<u64>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("max_frame", &self.max_frame)
            .finish()
    }
}

impl Receiver {
    pub(crate) fn new(r: ByteReader, max_frame: u32) -> Self {
        Receiver {
            r,
            head: Vec::with_capacity(HEAD_PROBE),
            max_frame,
            liveness: Arc::new(Liveness::new()),
            unclaimed: std::collections::VecDeque::new(),
        }
    }

    /// Leaves the results of tasks `ids` to this receiver: whenever one
    /// comes (`TaskDone` or `TaskFailed`, once each), it is skipped, array
    /// and all, as heartbeats are. A job that ends with copies of its tasks
    /// still running (another copy finished first) leaves them so, and the
    /// next reader of the connection never sees them.
    pub fn leave_results(&mut self, ids: impl IntoIterator<Item = u64>) {
        self.unclaimed.extend(ids);
        let over = self.unclaimed.len().saturating_sub(MAX_UNCLAIMED);
        self.unclaimed.drain(..over);
    }

    /// How many results left to this receiver have not come yet.
    pub fn results_left(&self) -> usize {
        self.unclaimed.len()
    }

    /// Whether `msg` is a result left to this receiver; if so it is
    /// forgotten (a result comes once).
    fn is_unclaimed(&mut self, msg: &Message) -> bool {
        let id = match msg {
            Message::TaskDone(d) => d.id,
            Message::TaskFailed(f) => f.id,
            _ => return false,
        };
        match self.unclaimed.iter().position(|&u| u == id) {
            Some(at) => {
                self.unclaimed.remove(at);
                true
            }
            None => false,
        }
    }

    /// When this connection last heard from its peer.
    pub fn liveness(&self) -> Arc<Liveness> {
        self.liveness.clone()
    }

    /// Receives the next message; an array that comes with it is read into
    /// `bulk` (resized, its capacity reused). On error `bulk` is emptied.
    pub async fn recv(&mut self, bulk: &mut Vec<f64>) -> Result<Received, WireError> {
        loop {
            if let Some(got) = self.recv_frame(bulk).await? {
                return Ok(got);
            }
        }
    }

    /// Reads one frame, as [`Receiver::recv`]: `None` if it was a
    /// heartbeat or a result left to this receiver (then skipped). A
    /// reader that must stop between frames waits with
    /// [`Receiver::frame_begun`], then reads one frame with this.
    pub async fn recv_frame(&mut self, bulk: &mut Vec<f64>) -> Result<Option<Received>, WireError> {
        let got = match self.next_head().await {
            Ok(Some((len, started, head))) => {
                self.read_rest(len, started, head, resized(bulk)).await
            }
            Ok(None) => return Ok(None),
            Err(e) => Err(e),
        };
        if got.is_err() {
            bulk.clear();
        }
        got.map(Some)
    }

    /// Waits until a byte of the next frame is here, taking none of it.
    /// Unlike the `recv` calls, it may be dropped midway without losing
    /// anything: a reader can stop between frames.
    pub async fn frame_begun(&mut self) -> Result<(), WireError> {
        self.r.readable().await
    }

    /// Receives the next message. If it carries an array, `place` is asked
    /// where to put it and the payload is read from the socket straight
    /// into that slice, which must have exactly the array's length.
    /// Heartbeats are taken as signs of life ([`Receiver::liveness`]) and
    /// not returned.
    ///
    /// If `place` refuses, the payload is skipped and its error returned;
    /// the connection stays in sync. If this returns an error after `place`
    /// accepted, the slice's contents are unspecified (possibly bytes that
    /// failed authentication): discard them.
    pub async fn recv_with<'a, F>(&mut self, place: F) -> Result<Received, WireError>
    where
        F: FnOnce(&Message, Shape) -> Result<&'a mut [f64], WireError>,
    {
        let (len, started, head) = loop {
            if let Some(next) = self.next_head().await? {
                break next;
            }
        };
        self.read_rest(len, started, head, place).await
    }

    /// Reads the next frame's length and head: `None` if the frame was a
    /// heartbeat (a sign of life) or a result left to this receiver
    /// (skipped whole).
    async fn next_head(&mut self) -> Result<Option<(usize, Instant, Head)>, WireError> {
        let len = self.read_len().await?;
        let started = Instant::now();
        self.liveness.heard(started);
        let head = self.read_head(len).await?;
        if matches!(head.msg, Message::Heartbeat) {
            self.liveness.beats.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        if !self.unclaimed.is_empty() && self.is_unclaimed(&head.msg) {
            // A long frame keeps its sender alive while its bytes arrive.
            let mut rest = len - self.head.len();
            while rest > 0 {
                let chunk = rest.min(ALIVE_EVERY);
                self.r.skip(chunk).await?;
                self.liveness.heard(Instant::now());
                rest -= chunk;
            }
            return Ok(None);
        }
        Ok(Some((len, started, head)))
    }

    /// Reads the rest of a frame of `len` bytes whose head came (see
    /// [`Receiver::recv_with`]).
    async fn read_rest<'a, F>(
        &mut self,
        len: usize,
        started: Instant,
        head: Head,
        place: F,
    ) -> Result<Received, WireError>
    where
        F: FnOnce(&Message, Shape) -> Result<&'a mut [f64], WireError>,
    {
        let frame_len = len + LEN_PREFIX;
        let Some(bulk) = head.bulk else {
            return Ok(Received {
                msg: head.msg,
                bulk: None,
                frame_len,
                started,
            });
        };
        let already = self.head.len() - bulk.offset;
        let rest = len - self.head.len();
        let dst = match place(&head.msg, bulk.shape) {
            Ok(dst) if dst.len() == bulk.elements() => dst,
            Ok(dst) => {
                let want = dst.len();
                self.r.skip(rest).await?;
                return Err(WireError::BulkSize {
                    got: bulk.elements(),
                    want,
                });
            }
            Err(e) => {
                self.r.skip(rest).await?;
                return Err(e);
            }
        };
        let bytes = f64_bytes_mut(dst);
        bytes[..already].copy_from_slice(&self.head[bulk.offset..]);
        // A long frame keeps its sender alive while its bytes arrive.
        for chunk in bytes[already..].chunks_mut(ALIVE_EVERY) {
            self.r.read_exact(chunk).await?;
            self.liveness.heard(Instant::now());
        }
        Ok(Received {
            msg: head.msg,
            bulk: Some(bulk.shape),
            frame_len,
            started,
        })
    }

    async fn read_len(&mut self) -> Result<usize, WireError> {
        let mut prefix = [0u8; LEN_PREFIX];
        self.r.read_exact(&mut prefix).await?;
        frame::frame_len(prefix, self.max_frame).map_err(|source| WireError::BadFrame {
            source,
            skipped: false,
        })
    }

    /// Reads the head of a frame of `len` bytes into `self.head`; bytes of
    /// the payload read along with it stay at the end of `self.head`.
    async fn read_head(&mut self, len: usize) -> Result<Head, WireError> {
        self.head.clear();
        self.head.resize(len.min(HEAD_PROBE), 0);
        let mut have = 0;
        while have < self.head.len() {
            have += self.r.read_some(&mut self.head[have..]).await?;
            match codec::decode_head(&self.head[..have], len) {
                Ok(Some(head)) => {
                    self.head.truncate(have);
                    return Ok(head);
                }
                Ok(None) => {}
                Err(source) => {
                    self.r.skip(len - have).await?;
                    return Err(WireError::BadFrame {
                        source,
                        skipped: true,
                    });
                }
            }
        }
        // A head larger than the probe: read the whole frame (bounded by the
        // frame limit) and decode once.
        self.head.resize(len, 0);
        self.r.read_exact(&mut self.head[have..]).await?;
        match codec::decode_head(&self.head, len) {
            Ok(Some(head)) => Ok(head),
            Ok(None) => Err(WireError::BadFrame {
                source: skelpi_proto::DecodeError::Malformed(
                    "head incomplete in a whole frame".into(),
                ),
                skipped: true,
            }),
            Err(source) => Err(WireError::BadFrame {
                source,
                skipped: true,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{AcceptOptions, ConnectOptions, Established, accept, connect};
    use crate::key::ClusterKey;
    use skelpi_proto::{Ping, TaskDone, TaskFailed};

    /// A master's and an agent's ends of one loopback connection.
    async fn pair(plaintext: bool) -> (Established, Established) {
        let key = ClusterKey::generate().unwrap();
        let listener = async_net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let agent = async {
            let (stream, _) = listener.accept().await.unwrap();
            let opts = AcceptOptions {
                allow_plaintext: true,
                ..Default::default()
            };
            accept(stream, &key, &opts).await.unwrap()
        };
        let master = async {
            let stream = async_net::TcpStream::connect(addr).await.unwrap();
            let opts = ConnectOptions {
                plaintext,
                ..Default::default()
            };
            connect(stream, &key, &opts).await.unwrap()
        };
        futures_lite::future::zip(master, agent).await
    }

    fn done(id: u64) -> Message {
        Message::TaskDone(TaskDone { id, busy_ns: None })
    }

    #[test]
    fn results_left_to_a_receiver_are_skipped_whole_and_the_rest_comes_in_frame() {
        for plaintext in [false, true] {
            smol::block_on(async {
                let (mut master, mut agent) = pair(plaintext).await;
                master.receiver.leave_results([7, 8, 42]);
                // A large result left (many reads), a failure left, a
                // result not left, then a pong.
                let big: Vec<f64> = (0..300_000).map(f64::from).collect();
                let small = [1.0, 2.0, 3.0];
                let a = &mut agent.sender;
                a.send_bulk(&done(7), Shape::List(big.len() as u64), &big)
                    .await
                    .unwrap();
                let failed = TaskFailed {
                    id: 8,
                    error: "no".into(),
                    panicked: false,
                    missing_module: None,
                };
                a.send(&Message::TaskFailed(failed)).await.unwrap();
                a.send_bulk(&done(9), Shape::List(3), &small).await.unwrap();
                a.send(&Message::Pong(Ping { nonce: 5 })).await.unwrap();
                let mut bulk = Vec::new();
                let got = master.receiver.recv(&mut bulk).await.unwrap();
                assert_eq!(got.msg, done(9), "plaintext {plaintext}");
                assert_eq!(bulk, small);
                let got = master.receiver.recv(&mut bulk).await.unwrap();
                assert_eq!(got.msg, Message::Pong(Ping { nonce: 5 }));
                assert_eq!(master.receiver.results_left(), 1, "42 never came");
                // Once each: a second result 7 is the reader's.
                let a = &mut agent.sender;
                a.send_bulk(&done(7), Shape::List(3), &small).await.unwrap();
                let got = master.receiver.recv(&mut bulk).await.unwrap();
                assert_eq!(got.msg, done(7));
            });
        }
    }
}
