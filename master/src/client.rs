//! One authenticated connection from the master to an agent.

use crate::bench::baseline::RawClient;
use async_net::TcpStream;
use futures_lite::future;
use skelpi_agent::key::ClusterKey;
use skelpi_agent::wire::handshake::{self, ConnectOptions, HandshakeError};
use skelpi_agent::wire::{Receiver, Sender, WireError, WireStats};
use skelpi_proto::frame::CHUNK_ELEMENTS;
use skelpi_proto::preamble::Cipher;
use skelpi_proto::{AgentInfo, Chunk, Hello, Message, Ping, Shape};
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
    /// The agent did not answer in time.
    #[error("agent at {addr} did not answer within {limit:?}")]
    Timeout {
        /// The agent's address.
        addr: SocketAddr,
        /// The limit.
        limit: Duration,
    },
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
}

impl AgentConn {
    /// Connects, authenticates and greets the agent at `addr`.
    pub async fn connect(
        addr: SocketAddr,
        key: &ClusterKey,
        opts: &ConnectOptions,
    ) -> Result<AgentConn, ClientError> {
        let limit = opts.timeout;
        let stream = future::or(async { TcpStream::connect(addr).await.map(Some) }, async {
            async_io::Timer::after(limit).await;
            Ok(None)
        })
        .await
        .map_err(|source| ClientError::Connect { addr, source })?
        .ok_or(ClientError::Timeout { addr, limit })?;
        let est = handshake::connect(stream, key, opts)
            .await
            .map_err(|source| ClientError::Handshake { addr, source })?;
        let mut sender = est.sender;
        let mut receiver = est.receiver;
        let wire = |source| ClientError::Wire { addr, source };
        sender
            .send(&Message::Hello(Hello {
                master: skelpi_agent::identity::default_name(),
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
        })
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

    /// One ping round trip; returns its duration.
    pub async fn ping(&mut self) -> Result<Duration, ClientError> {
        let nonce = self.next_id;
        self.next_id += 1;
        let start = Instant::now();
        self.sender
            .send(&Message::Ping(Ping { nonce }))
            .await
            .map_err(|source| self.wire(source))?;
        let got = self.receiver.recv(&mut self.scratch).await;
        let rtt = start.elapsed();
        match got
            .map_err(|source| ClientError::Wire {
                addr: self.addr,
                source,
            })?
            .msg
        {
            Message::Pong(p) if p.nonce == nonce => Ok(rtt),
            other => Err(unexpected(self.addr, other, "answering ping")),
        }
    }

    /// Sends `data` (of `shape`) to the agent's echo role and reads the
    /// echo into `out`. Arrays larger than a frame go as chunks; sending and
    /// receiving overlap, as on a real link.
    pub async fn echo(
        &mut self,
        shape: Shape,
        data: &[f64],
        out: &mut Vec<f64>,
    ) -> Result<(), ClientError> {
        let addr = self.addr;
        let total = data.len();
        if shape.elements() != Some(total as u64) {
            return Err(ClientError::Protocol {
                addr,
                what: format!("shape {shape:?} does not hold {total} elements"),
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        out.clear();
        out.resize(total, 0.0);
        let plan = chunk_plan(shape);
        let sender = &mut self.sender;
        let receiver = &mut self.receiver;
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
            let mut got = 0usize;
            while got < total {
                let mut refused = None;
                let out_ref: &mut [f64] = &mut out[..];
                let r = receiver
                    .recv_with(|msg, s| {
                        let n = s.elements().unwrap_or(0) as usize;
                        match msg {
                            Message::EchoReply(c)
                                if c.id == id && (c.offset as usize).saturating_add(n) <= total =>
                            {
                                let o = c.offset as usize;
                                Ok(&mut out_ref[o..o + n])
                            }
                            other => {
                                refused =
                                    Some(format!("unexpected {} during echo", other.kind_name()));
                                Err(WireError::BulkSize { got: n, want: 0 })
                            }
                        }
                    })
                    .await;
                match r {
                    Ok(rec) => match rec.msg {
                        Message::EchoReply(_) => {
                            got += rec.bulk.and_then(|s| s.elements()).unwrap_or(0) as usize
                        }
                        other => return Err(unexpected(addr, other, "during echo")),
                    },
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
        future::try_zip(send, recv).await?;
        Ok(())
    }

    /// Asks the agent for a raw TCP echo socket (the benchmark baseline)
    /// and connects to it.
    pub async fn open_raw_echo(&mut self) -> Result<RawClient, ClientError> {
        let addr = self.addr;
        self.sender
            .send(&Message::RawEchoOpen)
            .await
            .map_err(|source| ClientError::Wire { addr, source })?;
        let reply = self.receiver.recv(&mut self.scratch).await;
        let port = match reply
            .map_err(|source| ClientError::Wire { addr, source })?
            .msg
        {
            Message::RawEchoReady(r) => r.port,
            other => return Err(unexpected(addr, other, "answering raw-echo-open")),
        };
        let raw = SocketAddr::new(addr.ip(), port);
        RawClient::connect(raw)
            .await
            .map_err(|source| ClientError::Connect { addr: raw, source })
    }

    /// Says goodbye and closes the connection.
    pub async fn close(mut self) {
        let _ = self.sender.send(&Message::Bye).await;
        self.sender.close();
    }

    fn wire(&self, source: WireError) -> ClientError {
        ClientError::Wire {
            addr: self.addr,
            source,
        }
    }
}

/// The error for a message that is not the expected answer: the agent's
/// own error report, or a protocol violation naming what came instead.
fn unexpected(addr: SocketAddr, msg: Message, context: &str) -> ClientError {
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
    let total = shape.elements().unwrap_or(0) as usize;
    let mut plan = Vec::new();
    match shape {
        Shape::Matrix { rows, cols } if cols as usize <= CHUNK_ELEMENTS && cols > 0 => {
            let band = (CHUNK_ELEMENTS / cols as usize).max(1);
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
                let n = CHUNK_ELEMENTS.min(total - off);
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
