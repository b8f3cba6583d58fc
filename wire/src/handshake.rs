//! The connection handshake: the preamble (version, cipher choice), then a
//! Noise `NNpsk0` handshake keyed by the cluster key.
//!
//! `NNpsk0` mixes the pre-shared key into the very first message, so a peer
//! without the key is refused after 48 bytes, before anything else is
//! processed. That first message can be replayed, though, so the agent
//! counts a master as authenticated only once it has also decrypted a key
//! confirmation under the fresh session keys (the master's first transport
//! message, which depends on the agent's new ephemeral key). Both preambles
//! are the Noise prologue: rewriting them breaks the handshake.

use crate::channel::{Receiver, Sender};
use crate::key::ClusterKey;
use crate::stream::{ByteReader, ByteWriter, WireStats};
use async_net::TcpStream;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use skelpi_proto::PROTOCOL_VERSION;
use skelpi_proto::preamble::{
    self, Cipher, ClientPreamble, MAX_HANDSHAKE_MSG, PREAMBLE_LEN, PreambleError, ServerPreamble,
    Verdict,
};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Sent by an agent in place of its handshake reply when the master's first
/// Noise message did not authenticate: a zero length.
const AUTH_REJECTED: [u8; 2] = [0, 0];

/// The master's key confirmation: the first transport message (nonce 0),
/// sent even when the transport then goes plaintext.
const CONFIRM: &[u8; 16] = b"skelpi-confirm/1";

/// How a master connects.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Ask for a plaintext transport after authentication (benchmark
    /// networks only; the agent must allow it).
    pub plaintext: bool,
    /// Largest frame accepted from the agent (default: the 16 MiB hard cap;
    /// task arrays travel in one frame, echo arrays in chunks).
    pub max_frame: u32,
    /// Time allowed for the whole handshake.
    pub timeout: Duration,
    /// How often a master asks the agent for a heartbeat once connected
    /// (zero: never); it declares the agent down after
    /// [`DOWN_AFTER_BEATS`] beats of silence. The default, 500 ms, declares
    /// a stopped agent down about 2 s after it stopped (measured by `cargo
    /// bench -p skelpi --bench detect`), and tolerates 2 s with no byte from
    /// a live one — a saturated board still sends its beats, from a thread
    /// that runs no kernel.
    pub heartbeat: Duration,
}

pub use skelpi_proto::beat::DOWN_AFTER_BEATS;

/// The heartbeat a master asks for unless told otherwise.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(500);

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            plaintext: false,
            max_frame: skelpi_proto::frame::HARD_MAX_FRAME,
            timeout: Duration::from_secs(5),
            heartbeat: DEFAULT_HEARTBEAT,
        }
    }
}

/// How an agent accepts.
#[derive(Debug, Clone)]
pub struct AcceptOptions {
    /// Grant a master's request for a plaintext transport.
    pub allow_plaintext: bool,
    /// Largest frame accepted from the master once it has authenticated
    /// (default: the 16 MiB hard cap).
    pub max_frame: u32,
    /// Time a peer has to complete the handshake.
    pub timeout: Duration,
    /// Time a peer has to send its first bytes (its preamble): a master
    /// sends them as soon as it is connected, so a socket silent for
    /// longer is idle and gives its slot back early.
    pub first_bytes: Duration,
}

impl Default for AcceptOptions {
    fn default() -> Self {
        AcceptOptions {
            allow_plaintext: false,
            max_frame: skelpi_proto::frame::HARD_MAX_FRAME,
            timeout: Duration::from_secs(5),
            first_bytes: Duration::from_secs(1),
        }
    }
}

/// An authenticated connection.
#[derive(Debug)]
pub struct Established {
    /// Sending half.
    pub sender: Sender,
    /// Receiving half.
    pub receiver: Receiver,
    /// The cipher the handshake used.
    pub cipher: Cipher,
    /// Whether frames now travel unencrypted.
    pub plaintext: bool,
    /// Socket byte counters, handshake included.
    pub stats: Arc<WireStats>,
    /// This end's socket address.
    pub local_addr: std::net::SocketAddr,
}

/// Why a handshake failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The socket failed.
    #[error("i/o error during handshake: {0}")]
    Io(#[from] std::io::Error),
    /// The peer took too long.
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection during the handshake.
    #[error("peer closed the connection during the handshake")]
    Closed,
    /// The peer is not a skelpi peer, or sent a malformed preamble.
    #[error("not a skelpi handshake: {0}")]
    Preamble(#[from] PreambleError),
    /// The two sides speak different protocol versions.
    #[error(
        "protocol version mismatch: this side speaks {ours}, the peer speaks {theirs}; upgrade the older side"
    )]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// The master asked for plaintext and the agent does not allow it.
    #[error("the agent refuses a plaintext connection (start it with --allow-plaintext)")]
    PlaintextRefused,
    /// The agent rejected our key.
    #[error(
        "the handshake failed: the agent rejected our cluster key (the two key files \
         differ, or the handshake was altered on the way)"
    )]
    KeyRejected,
    /// The peer failed to prove it holds the cluster key.
    #[error("peer failed authentication (wrong cluster key or not a skelpi master)")]
    AuthFailed,
    /// The Noise library refused an operation.
    #[error("noise handshake failed: {0}")]
    Noise(String),
}

/// Whether this CPU has AES instructions that ring uses.
pub fn has_aes_hw() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Runs the master's side of the handshake on a connected socket.
pub async fn connect(
    stream: TcpStream,
    key: &ClusterKey,
    opts: &ConnectOptions,
) -> Result<Established, HandshakeError> {
    with_timeout(opts.timeout, connect_inner(stream, key, opts)).await
}

/// Runs the agent's side of the handshake on an accepted socket.
pub async fn accept(
    stream: TcpStream,
    key: &ClusterKey,
    opts: &AcceptOptions,
) -> Result<Established, HandshakeError> {
    accept_noting(stream, key, opts, || {}).await
}

/// [`accept`], calling `spoke` once the peer's preamble (its first 8
/// bytes) is in: admission spares a peer that has spoken, which is not an
/// idle socket.
pub async fn accept_noting(
    stream: TcpStream,
    key: &ClusterKey,
    opts: &AcceptOptions,
    spoke: impl FnOnce(),
) -> Result<Established, HandshakeError> {
    with_timeout(opts.timeout, accept_inner(stream, key, opts, spoke)).await
}

async fn with_timeout<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, HandshakeError>>,
) -> Result<T, HandshakeError> {
    crate::within(limit, fut)
        .await
        .unwrap_or(Err(HandshakeError::Timeout(limit)))
}

async fn connect_inner(
    mut stream: TcpStream,
    key: &ClusterKey,
    opts: &ConnectOptions,
) -> Result<Established, HandshakeError> {
    stream.set_nodelay(true)?;
    let stats = Arc::new(WireStats::default());
    let hello = ClientPreamble {
        version: PROTOCOL_VERSION,
        aes_hw: has_aes_hw(),
        plaintext: opts.plaintext,
    }
    .encode();
    write(&mut stream, &stats, &hello).await?;
    let mut reply = [0u8; PREAMBLE_LEN];
    read(&mut stream, &stats, &mut reply).await?;
    let answer = ServerPreamble::decode(reply)?;
    let (cipher, plaintext) = match answer.verdict {
        Verdict::Accept { cipher, plaintext } => (cipher, plaintext),
        Verdict::VersionMismatch => {
            return Err(HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: answer.version,
            });
        }
        Verdict::PlaintextRefused => return Err(HandshakeError::PlaintextRefused),
        other => return Err(noise_err(format!("unknown verdict {other:?}"))),
    };
    if plaintext != opts.plaintext {
        return Err(HandshakeError::Noise(
            "agent changed the transport mode".into(),
        ));
    }
    let prologue = preamble::prologue(&hello, &reply);
    let mut noise = builder(cipher, key, &prologue)?
        .build_initiator()
        .map_err(noise_err)?;
    let mut buf = [0u8; MAX_HANDSHAKE_MSG];
    let n = noise.write_message(&[], &mut buf).map_err(noise_err)?;
    write(&mut stream, &stats, &framed(&buf[..n])).await?;
    let mut len = [0u8; 2];
    read(&mut stream, &stats, &mut len).await?;
    if len == AUTH_REJECTED {
        return Err(HandshakeError::KeyRejected);
    }
    let len = preamble::handshake_len(len)?;
    read(&mut stream, &stats, &mut buf[..len]).await?;
    let mut payload = [0u8; MAX_HANDSHAKE_MSG];
    noise
        .read_message(&buf[..len], &mut payload)
        .map_err(|_| HandshakeError::AuthFailed)?;
    let transport = noise.into_stateless_transport_mode().map_err(noise_err)?;
    let n = transport
        .write_message(0, CONFIRM, &mut buf)
        .map_err(noise_err)?;
    write(&mut stream, &stats, &framed(&buf[..n])).await?;
    finish(
        stream,
        transport,
        Side::Initiator,
        cipher,
        plaintext,
        opts.max_frame,
        stats,
    )
}

async fn accept_inner(
    mut stream: TcpStream,
    key: &ClusterKey,
    opts: &AcceptOptions,
    spoke: impl FnOnce(),
) -> Result<Established, HandshakeError> {
    stream.set_nodelay(true)?;
    let stats = Arc::new(WireStats::default());
    let mut hello = [0u8; PREAMBLE_LEN];
    with_timeout(opts.first_bytes, read(&mut stream, &stats, &mut hello)).await?;
    spoke();
    let client = ClientPreamble::decode(hello)?;
    let answer = preamble::answer(
        &client,
        PROTOCOL_VERSION,
        has_aes_hw(),
        opts.allow_plaintext,
    );
    let reply = answer.encode();
    write(&mut stream, &stats, &reply).await?;
    let (cipher, plaintext) = match answer.verdict {
        Verdict::Accept { cipher, plaintext } => (cipher, plaintext),
        Verdict::PlaintextRefused => return Err(HandshakeError::PlaintextRefused),
        _ => {
            return Err(HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: client.version,
            });
        }
    };
    let prologue = preamble::prologue(&hello, &reply);
    let mut noise = builder(cipher, key, &prologue)?
        .build_responder()
        .map_err(noise_err)?;
    let mut len = [0u8; 2];
    read(&mut stream, &stats, &mut len).await?;
    let len = preamble::handshake_len(len)?;
    let mut buf = [0u8; MAX_HANDSHAKE_MSG];
    read(&mut stream, &stats, &mut buf[..len]).await?;
    let mut payload = [0u8; MAX_HANDSHAKE_MSG];
    if noise.read_message(&buf[..len], &mut payload).is_err() {
        let _ = write(&mut stream, &stats, &AUTH_REJECTED).await;
        return Err(HandshakeError::AuthFailed);
    }
    let n = noise.write_message(&[], &mut buf).map_err(noise_err)?;
    write(&mut stream, &stats, &framed(&buf[..n])).await?;
    let transport = noise.into_stateless_transport_mode().map_err(noise_err)?;
    let mut len = [0u8; 2];
    read(&mut stream, &stats, &mut len).await?;
    let len = preamble::handshake_len(len)?;
    read(&mut stream, &stats, &mut buf[..len]).await?;
    let confirmed = transport
        .read_message(0, &buf[..len], &mut payload)
        .is_ok_and(|n| &payload[..n] == CONFIRM);
    if !confirmed {
        return Err(HandshakeError::AuthFailed);
    }
    finish(
        stream,
        transport,
        Side::Responder,
        cipher,
        plaintext,
        opts.max_frame,
        stats,
    )
}

fn builder<'a>(
    cipher: Cipher,
    key: &'a ClusterKey,
    prologue: &'a [u8],
) -> Result<snow::Builder<'a>, HandshakeError> {
    let params = cipher.noise_params().parse().map_err(noise_err)?;
    snow::Builder::new(params)
        .psk(0, key.as_bytes())
        .and_then(|b| b.prologue(prologue))
        .map_err(noise_err)
}

/// Which end of the handshake this is: the master's key confirmation used
/// nonce 0 of the master-to-agent direction.
enum Side {
    Initiator,
    Responder,
}

/// A Noise handshake message with its u16 length prefix.
fn framed(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

fn finish(
    stream: TcpStream,
    transport: snow::StatelessTransportState,
    side: Side,
    cipher: Cipher,
    plaintext: bool,
    max_frame: u32,
    stats: Arc<WireStats>,
) -> Result<Established, HandshakeError> {
    let local_addr = stream.local_addr()?;
    let shared = if plaintext {
        None
    } else {
        Some(Arc::new(transport))
    };
    let (read_nonce, write_nonce) = match side {
        Side::Initiator => (0, 1),
        Side::Responder => (1, 0),
    };
    let reader = ByteReader::new(stream.clone(), shared.clone(), read_nonce, stats.clone());
    let writer = ByteWriter::new(stream, shared, write_nonce, stats.clone());
    Ok(Established {
        sender: Sender::new(writer, max_frame, stats.clone()),
        receiver: Receiver::new(reader, max_frame),
        cipher,
        plaintext,
        stats,
        local_addr,
    })
}

fn noise_err(e: impl std::fmt::Display) -> HandshakeError {
    HandshakeError::Noise(e.to_string())
}

async fn read(
    stream: &mut TcpStream,
    stats: &WireStats,
    buf: &mut [u8],
) -> Result<(), HandshakeError> {
    stream.read_exact(buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            HandshakeError::Closed
        } else {
            HandshakeError::Io(e)
        }
    })?;
    stats.add_received(buf.len());
    Ok(())
}

async fn write(
    stream: &mut TcpStream,
    stats: &WireStats,
    buf: &[u8],
) -> Result<(), HandshakeError> {
    stream.write_all(buf).await?;
    stats.add_sent(buf.len());
    Ok(())
}
