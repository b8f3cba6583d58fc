//! Encoding and decoding whole frames, split so that bulk payloads never pass
//! through an intermediate buffer.
//!
//! A sender calls [`encode_head`] and then writes the payload bytes
//! ([`crate::bulk::f64_bytes`]) itself. A receiver reads the length prefix
//! ([`crate::frame::frame_len`]), a first slice of the frame, calls
//! [`decode_head`], and reads the rest of the frame — the payload — straight
//! into its `Vec<f64>`. [`encode_frame`] and [`decode_frame`] do the same on
//! one buffer, for tests, fuzzing and small messages.

use crate::bulk::{self, Descriptor, Shape};
use crate::frame::{self, LEN_PREFIX};
use crate::message::{
    Chunk, ErrorReply, Hello, Ping, RawEchoReady, StageFailed, StageOpen, StageProgress,
    StageStats, StreamItem, StreamRef, TaskDone, TaskFailed, TaskHead, kind_name,
};
use crate::trace::{ClockReading, TraceBatch, TraceRequest};
use crate::{AgentInfo, DecodeError, EncodeError, Message};
use ciborium_ll::{Decoder, Encoder, Header};
use serde::de::DeserializeOwned;

/// The decoded start of a frame: the message, and where its payload lies.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// The message.
    pub msg: Message,
    /// The bulk array that fills the rest of the frame, if any.
    pub bulk: Option<BulkHeader>,
}

/// Where a frame's bulk payload lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkHeader {
    /// Shape of the array.
    pub shape: Shape,
    /// Offset of the first payload byte from the start of the frame body
    /// (just after the length prefix).
    pub offset: usize,
    /// Payload bytes: 8 per element, running to the end of the frame.
    pub byte_len: usize,
}

impl BulkHeader {
    /// Number of `f64` elements.
    pub fn elements(&self) -> usize {
        self.byte_len / 8
    }
}

/// Appends a frame's length prefix and head to `out`; the caller then writes
/// `shape.byte_len()` payload bytes. Returns the number of payload bytes
/// expected. On error `out` is left as it was.
pub fn encode_head(
    msg: &Message,
    shape: Option<Shape>,
    max: u32,
    out: &mut Vec<u8>,
) -> Result<usize, EncodeError> {
    if msg.carries_bulk() != shape.is_some() {
        return Err(EncodeError::BulkMismatch {
            kind: msg.kind_name(),
            what: if shape.is_some() {
                "cannot carry an array"
            } else {
                "must carry an array"
            },
        });
    }
    let start = out.len();
    let res = write_head(msg, shape, out);
    let payload = match res {
        Ok(p) => p,
        Err(e) => {
            out.truncate(start);
            return Err(e);
        }
    };
    let len = (out.len() - start - LEN_PREFIX) as u64 + payload;
    let max = max.min(frame::HARD_MAX_FRAME);
    if len > max.into() {
        out.truncate(start);
        return Err(EncodeError::TooLarge { len, max });
    }
    out[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(payload as usize)
}

fn write_head(msg: &Message, shape: Option<Shape>, out: &mut Vec<u8>) -> Result<u64, EncodeError> {
    let io = |e: std::io::Error| EncodeError::Body(e.to_string());
    out.extend_from_slice(&[0; LEN_PREFIX]);
    let mut enc = Encoder::from(&mut *out);
    enc.push(Header::Array(Some(3))).map_err(io)?;
    enc.push(Header::Positive(msg.kind().into())).map_err(io)?;
    let body = match msg {
        Message::Hello(b) => ciborium::into_writer(b, &mut *out),
        Message::Welcome(b) => ciborium::into_writer(b, &mut *out),
        Message::Ping(b) | Message::Pong(b) => ciborium::into_writer(b, &mut *out),
        Message::Echo(b) | Message::EchoReply(b) => ciborium::into_writer(b, &mut *out),
        Message::Error(b) => ciborium::into_writer(b, &mut *out),
        Message::Bye
        | Message::RawEchoOpen
        | Message::Heartbeat
        | Message::DeployAccepted
        | Message::DeployFinish
        | Message::DeployRestart
        | Message::DeployRestarting
        | Message::DeployCommitted
        | Message::HealthQuery => ciborium::into_writer(&(), &mut *out),
        Message::Health(b) => ciborium::into_writer(b, &mut *out),
        Message::DeployCommit(b) | Message::DeployAbort(b) => ciborium::into_writer(b, &mut *out),
        Message::RawEchoReady(b) => ciborium::into_writer(b, &mut *out),
        Message::Task(b) => ciborium::into_writer(b, &mut *out),
        Message::TaskDone(b) => ciborium::into_writer(b, &mut *out),
        Message::TaskFailed(b) => ciborium::into_writer(b, &mut *out),
        Message::StageOpen(b) => ciborium::into_writer(b, &mut *out),
        Message::StageReady(b) | Message::StreamEnd(b) | Message::StageQuery(b) => {
            ciborium::into_writer(b, &mut *out)
        }
        Message::StreamItem(b) => ciborium::into_writer(b, &mut *out),
        Message::StageFailed(b) => ciborium::into_writer(b, &mut *out),
        Message::StageStats(b) => ciborium::into_writer(b, &mut *out),
        Message::ClockProbe(b) => ciborium::into_writer(b, &mut *out),
        Message::ClockReading(b) => ciborium::into_writer(b, &mut *out),
        Message::TraceCollect(b) => ciborium::into_writer(b, &mut *out),
        Message::TraceBatch(b) => ciborium::into_writer(b, &mut *out),
        Message::ModulePush(b) => ciborium::into_writer(b, &mut *out),
        Message::ModuleStored(b) => ciborium::into_writer(b, &mut *out),
        Message::StageSwap(b) => ciborium::into_writer(b, &mut *out),
        Message::StageSwapped(b) => ciborium::into_writer(b, &mut *out),
        Message::StageProgress(b) => ciborium::into_writer(b, &mut *out),
        Message::DeployOffer(b) => ciborium::into_writer(b, &mut *out),
        Message::DeployChunk(b) => ciborium::into_writer(b, &mut *out),
        Message::DeployStaged(b) => ciborium::into_writer(b, &mut *out),
    };
    body.map_err(|e| EncodeError::Body(e.to_string()))?;
    bulk::write_descriptor(&mut Encoder::from(&mut *out), shape).map_err(io)?;
    match shape {
        None => Ok(0),
        Some(s) => s.byte_len().ok_or(EncodeError::TooLarge {
            len: u64::MAX,
            max: frame::HARD_MAX_FRAME,
        }),
    }
}

/// Decodes the head of a frame from `body`, the first bytes of the frame
/// after its length prefix (`frame_len` bytes in all).
///
/// Returns `Ok(None)` when `body` is shorter than the frame and ends inside
/// the head: read more and call again. Once the head is complete the payload
/// need not be present.
pub fn decode_head(body: &[u8], frame_len: usize) -> Result<Option<Head>, DecodeError> {
    let complete = body.len() >= frame_len;
    let body = &body[..body.len().min(frame_len)];
    let incomplete = || {
        if complete {
            Err(DecodeError::Malformed(format!(
                "frame of {frame_len} bytes ends inside its head"
            )))
        } else {
            Ok(None)
        }
    };
    let mut rest = body;
    let mut dec = Decoder::from(&mut rest);
    let kind = match pull_kind(&mut dec) {
        Ok(kind) => kind,
        Err(None) => return incomplete(),
        Err(Some(e)) => return Err(e),
    };
    let after_kind = dec.offset();
    let mut rest = &body[after_kind..];
    let msg = match decode_body(kind, &mut rest) {
        Ok(msg) => msg,
        Err(None) => return incomplete(),
        Err(Some(e)) => return Err(e),
    };
    let after_body = body.len() - rest.len();
    let mut dec = Decoder::from(&mut rest);
    let descriptor = match bulk::read_descriptor(&mut dec) {
        Ok(d) => d,
        Err(None) => return incomplete(),
        Err(Some(e)) => return Err(DecodeError::BadBulk(e)),
    };
    let offset = after_body + dec.offset();
    let bulk = match descriptor {
        Descriptor::None if offset != frame_len => {
            return Err(DecodeError::Malformed(format!(
                "{} trailing bytes after the message",
                frame_len - offset
            )));
        }
        Descriptor::None => None,
        Descriptor::Array(shape) => {
            let byte_len = shape.byte_len().unwrap_or(u64::MAX);
            // A peer's byte-string length may be near 2^64: add with a check.
            let end = (offset as u64).checked_add(byte_len);
            if end != Some(frame_len as u64) {
                return Err(DecodeError::BadBulk(format!(
                    "payload of {byte_len} bytes at offset {offset} does not end the frame of {frame_len} bytes"
                )));
            }
            Some(BulkHeader {
                shape,
                offset,
                byte_len: byte_len as usize,
            })
        }
    };
    if msg.carries_bulk() != bulk.is_some() {
        return Err(DecodeError::BulkMismatch {
            kind: msg.kind_name(),
            what: if bulk.is_some() {
                "cannot carry an array"
            } else {
                "must carry an array"
            },
        });
    }
    Ok(Some(Head { msg, bulk }))
}

fn pull_kind(dec: &mut Decoder<&mut &[u8]>) -> Result<u64, Option<DecodeError>> {
    let mut pull = || {
        dec.pull().map_err(|e| match e {
            ciborium_ll::Error::Io(_) => None,
            ciborium_ll::Error::Syntax(at) => {
                Some(DecodeError::Malformed(format!("invalid CBOR at byte {at}")))
            }
        })
    };
    match pull()? {
        Header::Array(Some(3)) => {}
        other => {
            return Err(Some(DecodeError::Malformed(format!(
                "expected an array of 3 items, found {other:?}"
            ))));
        }
    }
    match pull()? {
        Header::Positive(kind) => Ok(kind),
        other => Err(Some(DecodeError::Malformed(format!(
            "expected a message kind number, found {other:?}"
        )))),
    }
}

fn decode_body(kind: u64, rest: &mut &[u8]) -> Result<Message, Option<DecodeError>> {
    Ok(match kind {
        1 => Message::Hello(body::<Hello>(kind, rest)?),
        2 => Message::Welcome(body::<AgentInfo>(kind, rest)?),
        3 => Message::Ping(body::<Ping>(kind, rest)?),
        4 => Message::Pong(body::<Ping>(kind, rest)?),
        5 => Message::Echo(body::<Chunk>(kind, rest)?),
        6 => Message::EchoReply(body::<Chunk>(kind, rest)?),
        7 => Message::Error(body::<ErrorReply>(kind, rest)?),
        8 => {
            body::<()>(kind, rest)?;
            Message::Bye
        }
        9 => {
            body::<()>(kind, rest)?;
            Message::RawEchoOpen
        }
        10 => Message::RawEchoReady(body::<RawEchoReady>(kind, rest)?),
        11 => Message::Task(body::<TaskHead>(kind, rest)?),
        12 => Message::TaskDone(body::<TaskDone>(kind, rest)?),
        13 => Message::TaskFailed(body::<TaskFailed>(kind, rest)?),
        14 => Message::StageOpen(body::<StageOpen>(kind, rest)?),
        15 => Message::StageReady(body::<StreamRef>(kind, rest)?),
        16 => Message::StreamItem(body::<StreamItem>(kind, rest)?),
        17 => Message::StreamEnd(body::<StreamRef>(kind, rest)?),
        18 => Message::StageFailed(body::<StageFailed>(kind, rest)?),
        19 => Message::StageStats(body::<StageStats>(kind, rest)?),
        20 => Message::ClockProbe(body::<Ping>(kind, rest)?),
        21 => Message::ClockReading(body::<ClockReading>(kind, rest)?),
        22 => Message::TraceCollect(body::<TraceRequest>(kind, rest)?),
        23 => Message::TraceBatch(body::<TraceBatch>(kind, rest)?),
        24 => {
            body::<()>(kind, rest)?;
            Message::Heartbeat
        }
        25 => Message::ModulePush(body::<crate::code::ModulePush>(kind, rest)?),
        26 => Message::ModuleStored(body::<crate::code::ModuleStored>(kind, rest)?),
        27 => Message::StageSwap(body::<crate::code::StageSwap>(kind, rest)?),
        28 => Message::StageSwapped(body::<crate::code::StageSwapped>(kind, rest)?),
        29 => Message::StageQuery(body::<StreamRef>(kind, rest)?),
        30 => Message::StageProgress(body::<StageProgress>(kind, rest)?),
        31 => Message::DeployOffer(body::<crate::deploy::DeployOffer>(kind, rest)?),
        32 => unit(kind, rest, Message::DeployAccepted)?,
        33 => Message::DeployChunk(body::<crate::deploy::DeployChunk>(kind, rest)?),
        34 => unit(kind, rest, Message::DeployFinish)?,
        35 => Message::DeployStaged(body::<crate::deploy::DeployStaged>(kind, rest)?),
        36 => unit(kind, rest, Message::DeployRestart)?,
        37 => unit(kind, rest, Message::DeployRestarting)?,
        38 => Message::DeployCommit(body::<crate::deploy::DeployRef>(kind, rest)?),
        39 => unit(kind, rest, Message::DeployCommitted)?,
        40 => unit(kind, rest, Message::HealthQuery)?,
        42 => Message::DeployAbort(body::<crate::deploy::DeployRef>(kind, rest)?),
        41 => Message::Health(Box::new(body::<crate::health::HealthReport>(kind, rest)?)),
        other => return Err(Some(DecodeError::UnknownKind(other))),
    })
}

/// A message without a body (its body is CBOR null).
fn unit(kind: u64, rest: &mut &[u8], msg: Message) -> Result<Message, Option<DecodeError>> {
    body::<()>(kind, rest)?;
    Ok(msg)
}

fn body<T: DeserializeOwned>(kind: u64, rest: &mut &[u8]) -> Result<T, Option<DecodeError>> {
    ciborium::from_reader::<T, _>(&mut *rest).map_err(|e| match e {
        ciborium::de::Error::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => None,
        other => Some(DecodeError::Malformed(format!(
            "bad {} body: {other}",
            kind_name(kind)
        ))),
    })
}

/// Appends one whole frame — prefix, head and payload — to `out`.
///
/// # Examples
/// ```
/// use skelpi_proto::{codec, frame, Message, Ping};
/// let mut wire = Vec::new();
/// codec::encode_frame(&Message::Ping(Ping { nonce: 7 }), None, frame::DEFAULT_MAX_FRAME, &mut wire).unwrap();
/// let mut floats = Vec::new();
/// match codec::decode_frame(&wire, frame::DEFAULT_MAX_FRAME, &mut floats).unwrap() {
///     codec::Decoded::Frame { msg, consumed, .. } => {
///         assert_eq!(msg, Message::Ping(Ping { nonce: 7 }));
///         assert_eq!(consumed, wire.len());
///     }
///     codec::Decoded::NeedMore(_) => unreachable!(),
/// }
/// ```
pub fn encode_frame(
    msg: &Message,
    bulk: Option<(Shape, &[f64])>,
    max: u32,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    if let Some((shape, data)) = bulk
        && shape.elements() != Some(data.len() as u64)
    {
        return Err(EncodeError::ShapeMismatch {
            shape,
            elements: data.len(),
        });
    }
    encode_head(msg, bulk.map(|b| b.0), max, out)?;
    if let Some((_, data)) = bulk {
        out.extend_from_slice(bulk::f64_bytes(data));
    }
    Ok(())
}

/// Result of [`decode_frame`].
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// The buffer holds no whole frame yet; at least this many more bytes are needed.
    NeedMore(usize),
    /// One frame was decoded.
    Frame {
        /// The message.
        msg: Message,
        /// The shape of the array now in `bulk_out`, if the message carried one.
        bulk: Option<Shape>,
        /// Bytes of `buf` the frame occupied.
        consumed: usize,
    },
}

/// Decodes the first frame in `buf`. A bulk payload is copied into
/// `bulk_out`, which is resized (its capacity reused).
///
/// Distinguishes "need more bytes" ([`Decoded::NeedMore`]) from "bad bytes"
/// (`Err`); the length limit is checked before anything else.
pub fn decode_frame(buf: &[u8], max: u32, bulk_out: &mut Vec<f64>) -> Result<Decoded, DecodeError> {
    let Some(prefix) = buf.first_chunk::<LEN_PREFIX>() else {
        return Ok(Decoded::NeedMore(LEN_PREFIX - buf.len()));
    };
    let len = frame::frame_len(*prefix, max)?;
    let body = &buf[LEN_PREFIX..];
    if body.len() < len {
        return Ok(Decoded::NeedMore(len - body.len()));
    }
    let head = decode_head(&body[..len], len)?
        .ok_or_else(|| DecodeError::Malformed("complete frame reported as incomplete".into()))?;
    let bulk = head.bulk.map(|b| {
        bulk_out.clear();
        bulk_out.resize(b.elements(), 0.0);
        bulk::f64_bytes_mut(bulk_out).copy_from_slice(&body[b.offset..len]);
        b.shape
    });
    Ok(Decoded::Frame {
        msg: head.msg,
        bulk,
        consumed: LEN_PREFIX + len,
    })
}
