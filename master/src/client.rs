//! One authenticated connection from the master to an agent.

use futures_lite::future;
use skelpi_proto::frame::CHUNK_ELEMENTS;
use skelpi_proto::preamble::Cipher;
use skelpi_proto::{AgentInfo, Chunk, Hello, Message, Ping, Shape};
use skelpi_wire::handshake::{self, ConnectOptions, HandshakeError};
use skelpi_wire::key::ClusterKey;
use skelpi_wire::{DialError, Liveness, Receiver, Sender, WireError, WireStats};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why talking to an agent failed. Every variant names the agent.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TCP connection could not be opened.
    #[error("cannot connect to agent at {addr}: {source}")]
    Connect {
        /// The agent's address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The handshake failed (wrong key, version, not an agent...).
    #[error("handshake with agent at {addr} failed: {source}")]
    Handshake {
        /// The agent's address.
        addr: SocketAddr,
        /// The cause.
        source: HandshakeError,
    },
    /// The connection failed after the handshake.
    #[error("connection to agent at {addr} failed: {source}")]
    Wire {
        /// The agent's address.
        addr: SocketAddr,
        /// The cause.
        source: WireError,
    },
    /// The agent answered with an error.
    #[error("agent at {addr} reported: {message}")]
    Agent {
        /// The agent's address.
        addr: SocketAddr,
        /// Its message.
        message: String,
    },
    /// The agent sent something the protocol does not allow here.
    #[error("agent at {addr} broke the protocol: {what}")]
    Protocol {
        /// The agent's address.
        addr: SocketAddr,
        /// What it did.
        what: String,
    },
    /// The agent was given up without breaking anything: it fell silent
    /// (a stopped or overloaded board), or its tasks did not come back.
    #[error("agent at {addr} {what}")]
    GivenUp {
        /// The agent's address.
        addr: SocketAddr,
        /// What happened, from a verb: "fell silent for 4.2s ...".
        what: String,
    },
    /// The agent did not answer in time.
    #[error("agent at {addr} did not answer within {limit:?}")]
    Timeout {
        /// The agent's address.
        addr: SocketAddr,
        /// The limit.
        limit: Duration,
    },
    /// An earlier request failed halfway, so the connection's framing can
    /// no longer be trusted.
    #[error("connection to agent at {addr} is unusable after an earlier failure: {why}")]
    Broken {
        /// The agent's address.
        addr: SocketAddr,
        /// The earlier failure.
        why: String,
    },
    /// The raw TCP baseline socket of an agent failed.
    #[error("raw echo baseline at {addr} failed: {source}")]
    Baseline {
        /// The raw socket's address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// In-process agents could not be started.
    #[error("cannot start in-process agents: {0}")]
    LocalStart(std::io::Error),
}

impl ClientError {
    /// The agent's address (none for an embedded agent that did not
    /// start).
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            ClientError::Connect { addr, .. }
            | ClientError::Handshake { addr, .. }
            | ClientError::Wire { addr, .. }
            | ClientError::Agent { addr, .. }
            | ClientError::Protocol { addr, .. }
            | ClientError::GivenUp { addr, .. }
            | ClientError::Timeout { addr, .. }
            | ClientError::Broken { addr, .. }
            | ClientError::Baseline { addr, .. } => Some(*addr),
            ClientError::LocalStart(_) => None,
        }
    }
}

/// A connection to one agent.
#[derive(Debug)]
pub struct AgentConn {
    addr: SocketAddr,
    info: AgentInfo,
    sender: Sender,
    receiver: Receiver,
    stats: Arc<WireStats>,
    cipher: Cipher,
    plaintext: bool,
    next_id: u64,
    scratch: Vec<f64>,
    request_timeout: Duration,
    broken: Option<String>,
    broken_at: Option<Instant>,
    echo_chunk: usize,
    /// The heartbeat interval asked of the agent (zero: none).
    heartbeat: Duration,
    /// WebAssembly modules pushed on this connection (hash, bytes): pushed
    /// again when the agent says it no longer has one.
    pushed: Vec<(String, Arc<[u8]>)>,
    /// The key and options it was made with, to make it again.
    made_with: Arc<(ClusterKey, ConnectOptions)>,
    /// Each time a job lost the agent (its connection failed or it fell
    /// silent), and why, oldest first.
    losses: Vec<(String, Instant)>,
    /// What its kernels took there (see [`KernelTimes`]), kept across jobs.
    kernel_times: KernelTimes,
}

/// The mean kernel time of each kernel (name and arguments) on one agent,
/// seconds, as its jobs measured it: a job starts knowing how fast each
/// agent is at what it ran before (see `runtime::schedule`'s tail copies).
pub type KernelTimes = Arc<std::sync::Mutex<std::collections::HashMap<String, f64>>>;

/// How to connect again to an agent whose connection failed (see
/// [`AgentConn::redial`]).
#[derive(Debug, Clone)]
pub struct Redial {
    addr: SocketAddr,
    made_with: Arc<(ClusterKey, ConnectOptions)>,
    pushed: Vec<(String, Arc<[u8]>)>,
}

impl Redial {
    /// A new connection to the agent, made as the first was (its
    /// handshake bounded by `timeout` at most), with the modules pushed on
    /// the first pushed again.
    pub async fn connect(&self, timeout: Duration) -> Result<AgentConn, ClientError> {
        let (key, opts) = &*self.made_with;
        let opts = ConnectOptions {
            timeout: opts.timeout.min(timeout),
            ..opts.clone()
        };
        let mut conn = AgentConn::connect(self.addr, key, &opts).await?;
        for (hash, bytes) in &self.pushed {
            crate::modules::push(&mut conn, hash, bytes).await?;
        }
        Ok(conn)
    }
}

/// Time an agent has to answer a ping or a raw echo request, and to move
/// each chunk of an echo.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Handshakes the agent closed without a verdict that are tried again.
/// An agent flooded with idle connections from the master's own address
/// evicts a handshake that has sent nothing (see its `admission`): a
/// master whose first bytes were late (descheduled between its connect and
/// its first write) can be taken for one of them. Such an eviction comes
/// at once; a close later in the handshake is the agent's answer, not
/// retried.
const HANDSHAKE_RETRIES: u32 = 2;

/// How soon after connecting a close counts as an eviction worth a retry.
const EVICTED_WITHIN: Duration = Duration::from_millis(500);

/// Connects to the agent at `addr` and runs the handshake, trying again
/// (after a short pause) if the agent closed it at once without a verdict.
async fn authenticate(
    addr: SocketAddr,
    key: &ClusterKey,
    opts: &ConnectOptions,
) -> Result<skelpi_wire::handshake::Established, ClientError> {
    let limit = opts.timeout;
    let mut retries = HANDSHAKE_RETRIES;
    loop {
        let started = Instant::now();
        let stream = skelpi_wire::dial(addr, limit).await.map_err(|e| match e {
            DialError::Connect { source, .. } => ClientError::Connect { addr, source },
            DialError::Timeout { .. } => ClientError::Timeout { addr, limit },
        })?;
        match handshake::connect(stream, key, opts).await {
            Err(HandshakeError::Closed) if retries > 0 && started.elapsed() < EVICTED_WITHIN => {
                retries -= 1;
                log::debug!("agent {addr} closed the handshake at once (evicted?); trying again");
                async_io::Timer::after(Duration::from_millis(20)).await;
            }
            done => return done.map_err(|source| ClientError::Handshake { addr, source }),
        }
    }
}

impl AgentConn {
    /// Connects, authenticates and greets the agent at `addr`.
    pub async fn connect(
        addr: SocketAddr,
        key: &ClusterKey,
        opts: &ConnectOptions,
    ) -> Result<AgentConn, ClientError> {
        // On the heap: a handshake's state is large, and callers deep in a
        // job's future (the stall watchdog's probes) run on small stacks.
        let est = Box::pin(authenticate(addr, key, opts)).await?;
        let mut sender = est.sender;
        let mut receiver = est.receiver;
        let wire = |source| ClientError::Wire { addr, source };
        sender
            .send(&Message::Hello(Hello {
                master: skelpi_wire::host_name(),
                heartbeat_ms: opts.heartbeat.as_millis().try_into().unwrap_or(u32::MAX),
            }))
            .await
            .map_err(wire)?;
        let mut scratch = Vec::new();
        let info = match receiver.recv(&mut scratch).await.map_err(wire)?.msg {
            Message::Welcome(info) => info,
            other => return Err(unexpected(addr, other, "answering hello")),
        };
        Ok(AgentConn {
            addr,
            info,
            sender,
            receiver,
            stats: est.stats,
            cipher: est.cipher,
            plaintext: est.plaintext,
            next_id: 1,
            scratch,
            request_timeout: REQUEST_TIMEOUT,
            broken: None,
            broken_at: None,
            echo_chunk: CHUNK_ELEMENTS,
            heartbeat: opts.heartbeat,
            pushed: Vec::new(),
            made_with: Arc::new((key.clone(), opts.clone())),
            losses: Vec::new(),
            kernel_times: KernelTimes::default(),
        })
    }

    /// Each time a job lost this agent (its connection failed or it fell
    /// silent, including times it came back within the job), and why,
    /// oldest first.
    pub fn losses(&self) -> &[(String, Instant)] {
        &self.losses
    }

    /// Records losses of this agent (kept across the connections a job
    /// made anew to it).
    pub(crate) fn add_losses(&mut self, losses: impl IntoIterator<Item = (String, Instant)>) {
        self.losses.extend(losses);
    }

    /// How to connect to this agent again, as this connection was made.
    pub fn redial(&self) -> Redial {
        Redial {
            addr: self.addr,
            made_with: self.made_with.clone(),
            pushed: self.pushed.clone(),
        }
    }

    /// The agent's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the agent said about itself.
    pub fn info(&self) -> &AgentInfo {
        &self.info
    }

    /// Bytes (sent, received) on this connection's socket so far.
    pub fn wire_bytes(&self) -> (u64, u64) {
        (self.stats.sent(), self.stats.received())
    }

    /// The transport: `"plaintext"`, `"chachapoly"` or `"aesgcm"`.
    pub fn transport(&self) -> &'static str {
        match (self.plaintext, self.cipher) {
            (true, _) => "plaintext",
            (false, Cipher::ChaChaPoly) => "chachapoly",
            (false, Cipher::AesGcm) => "aesgcm",
        }
    }

    /// Runs one request with a deadline; any failure marks the connection
    /// broken, since a request abandoned halfway leaves its framing unknown.
    async fn guarded<T>(
        &mut self,
        limit: Duration,
        request: impl AsyncFnOnce(&mut Self) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let addr = self.addr;
        if let Some(why) = &self.broken {
            return Err(ClientError::Broken {
                addr,
                why: why.clone(),
            });
        }
        let result = skelpi_wire::within(limit, request(self))
            .await
            .unwrap_or(Err(ClientError::Timeout { addr, limit }));
        if let Err(e) = &result {
            self.mark_broken_at(e.to_string(), Instant::now());
        }
        result
    }

    /// A fresh request number (for nonces and echo ids).
    pub fn next_nonce(&mut self) -> u64 {
        let n = self.next_id;
        self.next_id += 1;
        n
    }

    /// One request: sends `ask`, then hands each reply to `read` until it
    /// returns [`Reply::Done`], all within the request deadline. Any
    /// failure, `read`'s included, marks the connection broken (a request
    /// abandoned halfway leaves its framing unknown). Features build their
    /// requests on this (`trace`, `modules`, `bench::baseline`...).
    pub async fn request<T>(
        &mut self,
        ask: &Message,
        mut read: impl FnMut(Message) -> Result<Reply<T>, ClientError>,
    ) -> Result<T, ClientError> {
        let limit = self.request_timeout;
        self.guarded(limit, async |c: &mut Self| {
            let addr = c.addr;
            let wire = |source| ClientError::Wire { addr, source };
            c.sender.send(ask).await.map_err(wire)?;
            loop {
                let got = c.receiver.recv(&mut c.scratch).await.map_err(wire)?;
                if let Reply::Done(answer) = read(got.msg)? {
                    return Ok(answer);
                }
            }
        })
        .await
    }

    /// Sends one message that has no answer of its own (a deploy's chunk),
    /// within the request deadline; a failure marks the connection broken.
    pub async fn send_only(&mut self, msg: &Message) -> Result<(), ClientError> {
        let limit = self.request_timeout;
        self.guarded(limit, async |c: &mut Self| {
            let addr = c.addr;
            c.sender
                .send(msg)
                .await
                .map_err(|source| ClientError::Wire { addr, source })
        })
        .await
    }

    /// Bounds each later request on this connection (ping, health,
    /// ...) by `limit` instead of [`REQUEST_TIMEOUT`]: one that takes
    /// longer fails and breaks the connection.
    pub fn set_request_timeout(&mut self, limit: Duration) {
        self.request_timeout = limit;
    }

    /// The agent's report on its board's health (`skelpi health`).
    pub async fn health(&mut self) -> Result<skelpi_proto::health::HealthReport, ClientError> {
        let addr = self.addr;
        self.request(&Message::HealthQuery, |got| match got {
            Message::Health(report) => Ok(Reply::Done(*report)),
            other => Err(unexpected(addr, other, "asked for its health")),
        })
        .await
    }

    /// One ping round trip; returns its duration.
    pub async fn ping(&mut self) -> Result<Duration, ClientError> {
        let (addr, nonce) = (self.addr, self.next_nonce());
        let sent = Instant::now();
        self.request(&Message::Ping(Ping { nonce }), |got| match got {
            Message::Pong(p) if p.nonce == nonce => Ok(Reply::Done(sent.elapsed())),
            other => Err(unexpected(addr, other, "answering ping")),
        })
        .await
    }

    /// Sends `data` (of `shape`) to the agent's echo role and reads the
    /// echo into `out`. Arrays larger than a frame go as chunks; sending and
    /// receiving overlap, as on a real link. Every chunk must come back once,
    /// in order, with its offset and shape.
    pub async fn echo(
        &mut self,
        shape: Shape,
        data: &[f64],
        out: &mut Vec<f64>,
    ) -> Result<(), ClientError> {
        let total = data.len();
        if shape.elements() != Some(total as u64) {
            return Err(ClientError::Protocol {
                addr: self.addr,
                what: format!("shape {shape:?} does not hold {total} elements"),
            });
        }
        let plan = chunk_plan_of(shape, self.echo_chunk);
        let limit = self.request_timeout.saturating_mul(plan.len() as u32);
        // Every element is overwritten by the echo; only resize.
        if out.len() != total {
            out.resize(total, 0.0);
        }
        self.guarded(limit, async |c: &mut Self| {
            let addr = c.addr;
            let id = c.next_nonce();
            let sender = &mut c.sender;
            let receiver = &mut c.receiver;
            let send = async {
                for &(chunk_shape, offset, len) in &plan {
                    let msg = Message::Echo(Chunk {
                        id,
                        offset: offset as u64,
                        total: total as u64,
                    });
                    sender
                        .send_bulk(&msg, chunk_shape, &data[offset..offset + len])
                        .await
                        .map_err(|source| ClientError::Wire { addr, source })?;
                }
                Ok(())
            };
            let recv = async {
                for &(chunk_shape, offset, len) in &plan {
                    let mut refused = None;
                    let dst = &mut out[offset..offset + len];
                    let r = receiver
                        .recv_with(|msg, s| match msg {
                            Message::EchoReply(c)
                                if c.id == id && c.offset == offset as u64 && s == chunk_shape =>
                            {
                                Ok(dst)
                            }
                            other => {
                                refused = Some(match other {
                                    Message::EchoReply(c) => format!(
                                        "echoed chunk (id {}, offset {}, {s:?}) where (id {id}, offset {offset}, {chunk_shape:?}) was due",
                                        c.id, c.offset
                                    ),
                                    other => format!("sent {} during echo", other.kind_name()),
                                });
                                Err(WireError::BulkSize { got: 0, want: len })
                            }
                        })
                        .await;
                    match r {
                        Ok(rec) if matches!(rec.msg, Message::EchoReply(_)) => {}
                        Ok(rec) => return Err(unexpected(addr, rec.msg, "during echo")),
                        Err(source) => {
                            return Err(match refused {
                                Some(what) => ClientError::Protocol { addr, what },
                                None => ClientError::Wire { addr, source },
                            });
                        }
                    }
                }
                Ok(())
            };
            future::try_zip(send, recv).await.map(|_| ())
        })
        .await
    }

    /// Sends echoes in chunks of at most `elements` floats (default and
    /// most [`CHUNK_ELEMENTS`]). The agent echoes a chunk once it has all
    /// of it, so on a slow link smaller chunks overlap the two directions
    /// sooner; on loopback larger ones cost fewer frames.
    pub fn set_echo_chunk(&mut self, elements: usize) {
        self.echo_chunk = elements.clamp(1, CHUNK_ELEMENTS);
    }

    /// Marks the connection unusable (a job saw it fail).
    /// Marks the connection broken by what happened at `when`.
    pub(crate) fn mark_broken_at(&mut self, why: String, when: Instant) {
        if self.broken.is_none() {
            self.broken = Some(why);
            self.broken_at = Some(when);
        }
    }

    /// Why and since when the connection is broken, if it is.
    pub fn broken(&self) -> Option<(&str, Instant)> {
        Some((self.broken.as_deref()?, self.broken_at?))
    }

    /// Whether an earlier failure made the connection unusable.
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// Between jobs: reads what has come on this connection since the last
    /// job without waiting for more — heartbeats, and late results a job
    /// left ([`AgentConn::results_left`]), which are skipped — and marks it
    /// broken if the agent closed it (an agent finishing copies that lost
    /// takes a master that no longer beats for gone, and frees their work)
    /// or sent anything else. [`crate::cluster::Cluster::rejoin`] then
    /// connects it again before the next job.
    pub async fn settle(&mut self) {
        let limit = self.request_timeout;
        let _ = self
            .guarded(limit, async |c: &mut Self| {
                let addr = c.addr;
                loop {
                    match futures_lite::future::poll_once(c.receiver.frame_begun()).await {
                        None => return Ok(()),
                        Some(Err(source)) => return Err(ClientError::Wire { addr, source }),
                        Some(Ok(())) => {}
                    }
                    let got = c.receiver.recv_frame(&mut c.scratch).await;
                    match got.map_err(|source| ClientError::Wire { addr, source })? {
                        None => continue,
                        Some(other) => {
                            return Err(unexpected(addr, other.msg, "between jobs"));
                        }
                    }
                }
            })
            .await;
    }

    /// Results of tasks that a job left on this connection when it ended
    /// (copies of tasks another copy finished first) and that have not
    /// come yet: they are skipped when they come.
    pub fn results_left(&self) -> usize {
        self.receiver.results_left()
    }

    /// What its kernels took on this agent in earlier jobs.
    pub(crate) fn kernel_times(&self) -> KernelTimes {
        self.kernel_times.clone()
    }

    /// The connection's two halves, for a job's dispatcher.
    pub(crate) fn halves(&mut self) -> (&mut Sender, &mut Receiver) {
        (&mut self.sender, &mut self.receiver)
    }

    /// The heartbeat interval asked of the agent (zero: none), and when the
    /// connection last heard from it.
    pub fn heartbeat(&self) -> (Duration, Arc<Liveness>) {
        (self.heartbeat, self.receiver.liveness())
    }

    /// The WebAssembly modules pushed on this connection (hash, bytes).
    pub fn pushed_modules(&self) -> &[(String, Arc<[u8]>)] {
        &self.pushed
    }

    /// Remembers that module `hash` was stored through this connection.
    pub(crate) fn pushed_module(&mut self, hash: &str, bytes: &[u8]) {
        if !self.pushed.iter().any(|(h, _)| h == hash) {
            self.pushed.push((hash.to_owned(), Arc::from(bytes)));
        }
    }

    /// Says goodbye and closes the connection.
    pub async fn close(mut self) {
        let _ = self.sender.send(&Message::Bye).await;
        self.sender.close();
    }
}

/// What a request's reader made of one reply ([`AgentConn::request`]).
#[derive(Debug)]
pub enum Reply<T> {
    /// The answer: the request is over.
    Done(T),
    /// A part of it: read the next reply.
    More,
}

/// The error for a message that is not the expected answer: the agent's
/// own error report, or a protocol violation naming what came instead.
pub fn unexpected(addr: SocketAddr, msg: Message, context: &str) -> ClientError {
    match msg {
        Message::Error(e) => ClientError::Agent {
            addr,
            message: e.message,
        },
        other => ClientError::Protocol {
            addr,
            what: format!("sent {} when {context}", other.kind_name()),
        },
    }
}

/// Splits an array into frame-sized chunks: runs of a list, bands of whole
/// rows of a matrix (runs of a list when one row is larger than a chunk).
/// Returns (shape of the chunk, first element, elements).
pub fn chunk_plan(shape: Shape) -> Vec<(Shape, usize, usize)> {
    chunk_plan_of(shape, CHUNK_ELEMENTS)
}

/// [`chunk_plan`] with chunks of at most `chunk` elements (1 to
/// [`CHUNK_ELEMENTS`]).
pub fn chunk_plan_of(shape: Shape, chunk: usize) -> Vec<(Shape, usize, usize)> {
    let chunk = chunk.clamp(1, CHUNK_ELEMENTS);
    let total = shape.elements().unwrap_or(0) as usize;
    let mut plan = Vec::new();
    match shape {
        Shape::Matrix { rows, cols } if cols as usize <= chunk && cols > 0 => {
            let band = (chunk / cols as usize).max(1);
            let mut row = 0usize;
            while row < rows as usize {
                let n = band.min(rows as usize - row);
                plan.push((
                    Shape::Matrix {
                        rows: n as u64,
                        cols,
                    },
                    row * cols as usize,
                    n * cols as usize,
                ));
                row += n;
            }
        }
        _ => {
            let mut off = 0;
            while off < total {
                let n = chunk.min(total - off);
                plan.push((Shape::List(n as u64), off, n));
                off += n;
            }
        }
    }
    if plan.is_empty() {
        plan.push((Shape::List(0), 0, 0));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_plans_cover_every_element_once() {
        for shape in [
            Shape::List(0),
            Shape::List(1),
            Shape::List(CHUNK_ELEMENTS as u64 * 3 + 5),
            Shape::Matrix {
                rows: 1000,
                cols: 1000,
            },
            Shape::Matrix {
                rows: 3,
                cols: CHUNK_ELEMENTS as u64 + 1,
            },
        ] {
            let plan = chunk_plan(shape);
            let mut next = 0;
            for (s, off, n) in &plan {
                assert_eq!(*off, next);
                assert_eq!(s.elements(), Some(*n as u64));
                assert!(*n <= CHUNK_ELEMENTS);
                next += n;
            }
            assert_eq!(next as u64, shape.elements().unwrap());
        }
    }
}
