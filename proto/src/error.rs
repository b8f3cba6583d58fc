//! Errors of decoding and encoding frames.

use thiserror::Error;

/// Why a frame could not be decoded.
///
/// Every variant names what was wrong, so a peer's bad bytes can be reported
/// and the connection dropped without guessing.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length prefix announces more bytes than the receiver accepts.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced frame length.
        len: u64,
        /// The receiver's limit.
        max: u32,
    },
    /// The frame is shorter than the smallest possible message.
    #[error("frame of {len} bytes is too short to hold a message")]
    TooShort {
        /// Announced frame length.
        len: u32,
    },
    /// The bytes are not the CBOR shape of a skelpi message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The message kind number is not one this version knows.
    #[error("unknown message kind {0}")]
    UnknownKind(u64),
    /// The frame's payload area disagrees with its declared shape or length.
    #[error("bad bulk array: {0}")]
    BadBulk(String),
    /// A message that carries no array came with one, or the reverse.
    #[error("message {kind} {what}")]
    BulkMismatch {
        /// Message kind name.
        kind: &'static str,
        /// What was wrong.
        what: &'static str,
    },
}

/// Why a message could not be encoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded frame would exceed the frame limit; send the array in chunks.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes; send the array in chunks")]
    TooLarge {
        /// Length the frame would have.
        len: u64,
        /// The limit.
        max: u32,
    },
    /// The message body could not be serialised.
    #[error("cannot encode message body: {0}")]
    Body(String),
    /// The array's shape does not match its number of elements.
    #[error("shape {shape:?} does not hold {elements} elements")]
    ShapeMismatch {
        /// The shape given.
        shape: crate::Shape,
        /// The number of elements given.
        elements: usize,
    },
    /// The message kind cannot carry an array (or must carry one).
    #[error("message {kind} {what}")]
    BulkMismatch {
        /// Message kind name.
        kind: &'static str,
        /// What was wrong.
        what: &'static str,
    },
}
