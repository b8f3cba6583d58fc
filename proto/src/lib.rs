//! skelpi-proto: skelpi's wire protocol as a sans-IO crate — frames,
//! messages, typed `f64` arrays and the handshake preamble. It opens no
//! socket and reads no clock; the agent and master wrap it in their runtime.
//!
//! # Examples
//! A ping and a chunk of an echoed array, encoded and decoded:
//! ```
//! use skelpi_proto::{codec, frame::DEFAULT_MAX_FRAME, Chunk, Message, Shape};
//! let data = [1.5, -2.0, 3.25];
//! let mut wire = Vec::new();
//! let msg = Message::Echo(Chunk { id: 1, offset: 0, total: 3 });
//! codec::encode_frame(&msg, Some((Shape::List(3), &data)), DEFAULT_MAX_FRAME, &mut wire)?;
//! // 4 B prefix + 3 B [kind, ...] + a small map + descriptor + 24 payload bytes.
//! let mut floats = Vec::new();
//! let codec::Decoded::Frame { msg: got, bulk, .. } =
//!     codec::decode_frame(&wire, DEFAULT_MAX_FRAME, &mut floats)? else { unreachable!() };
//! assert_eq!(got, msg);
//! assert_eq!(bulk, Some(Shape::List(3)));
//! assert_eq!(floats, data);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Implementation
//! A frame is a big-endian `u32` length and one CBOR item `[kind, body,
//! bulk]`. `bulk` is null or an RFC 8746 typed array (tag 86, `f64` little
//! endian; wrapped in tag 40 with its shape for a matrix) whose bytes end the
//! frame, so a receiver decodes the head from the first bytes and then reads
//! the payload straight into an aligned `Vec<f64>`.
#![forbid(unsafe_code)]

mod array;
pub mod beat;
pub mod bulk;
pub mod code;
pub mod codec;
pub mod deploy;
pub mod dnssd;
mod error;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
mod info;
pub mod job;
mod message;
pub mod preamble;
pub mod skeleton;
pub mod skeleton_text;
pub mod text;
pub mod trace;

pub use array::Array;
pub use bulk::Shape;
pub use error::{DecodeError, EncodeError};
pub use info::AgentInfo;
pub use job::{BadJobId, JobId};
pub use message::{
    Chunk, ErrorCode, ErrorReply, Hello, Message, Ping, RawEchoReady, StageFailed, StageNext,
    StageOpen, StageProgress, StageStats, StreamItem, StreamRef, TaskDone, TaskFailed, TaskHead,
    kind_name,
};

/// The wire protocol version this crate speaks (2: pipeline stages that
/// stream agent to agent).
pub const PROTOCOL_VERSION: u16 = 2;

/// Tasks a master keeps out per agent worker thread at first and for
/// long tasks: one running, one queued behind it, so no core idles during
/// a round trip.
pub const TASKS_PER_WORKER: usize = 2;

/// Tasks a master may keep out per agent worker thread when they are
/// small and short (see [`SMALL_TASK_BYTES`]): enough to cover a round
/// trip of tasks of a few microseconds, so that they travel many to a
/// socket write. An agent queues those beyond [`TASKS_PER_WORKER`] in
/// its session (an older agent stops reading instead: nothing is lost).
pub const MAX_TASKS_PER_WORKER: usize = 16;

/// The work a window of credits aims to keep queued behind each agent
/// worker's running task: a round trip's worth and more on a LAN, yet
/// short enough that a queue on a stalled agent holds little. An agent
/// alone with one job's short tasks puts as many of them on its workers.
pub const WINDOW_WORK: std::time::Duration = std::time::Duration::from_millis(1);

/// Tasks per worker for kernels that run `busy` on average: one running
/// and enough queued behind it to make [`WINDOW_WORK`], from
/// [`TASKS_PER_WORKER`] (long tasks) to [`MAX_TASKS_PER_WORKER`] (tasks of
/// microseconds, which then travel many to a write).
pub fn credits_per_worker(busy: std::time::Duration) -> usize {
    let behind = WINDOW_WORK.as_nanos().div_ceil(busy.as_nanos().max(1));
    let behind = usize::try_from(behind).unwrap_or(usize::MAX);
    behind
        .saturating_add(1)
        .clamp(TASKS_PER_WORKER, MAX_TASKS_PER_WORKER)
}

/// Largest *small* task ([`task_bytes`]), which an agent may queue in its
/// session beyond [`TASKS_PER_WORKER`]: the queue holds at most
/// `MAX_TASKS_PER_WORKER - TASKS_PER_WORKER` of them per worker, under
/// 1 MiB per worker (and, while the agent puts short ones deeper onto its
/// workers, as many again there). A master sends a larger task to an
/// agent only while it has fewer than [`TASKS_PER_WORKER`] per worker out
/// there, so the agent never stops reading for want of room.
pub const SMALL_TASK_BYTES: usize = 64 << 10;

/// The bytes a task holds while it waits on an agent, as
/// [`SMALL_TASK_BYTES`] counts them: its kernel's name, `args` arguments
/// and `input` floats of input.
pub fn task_bytes(kernel: &str, args: usize, input: usize) -> usize {
    let floats = args.saturating_add(input);
    kernel.len().saturating_add(floats.saturating_mul(8))
}
