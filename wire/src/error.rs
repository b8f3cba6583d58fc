//! Errors of the connection layer.

use skelpi_proto::{DecodeError, EncodeError};
use thiserror::Error;

/// Why a connection failed or a frame was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WireError {
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// The peer's frame could not be decoded. If `skipped` the frame was
    /// passed over and the connection is still usable.
    #[error("bad frame from peer: {source}")]
    BadFrame {
        /// What was wrong.
        source: DecodeError,
        /// Whether the frame was skipped, leaving the stream in sync.
        skipped: bool,
    },
    /// Our own message could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A Noise transport message failed to decrypt: tampering or a broken peer.
    #[error("decryption failed: the stream was corrupted or tampered with")]
    Decrypt,
    /// The receiver's buffer for a bulk array does not fit the array.
    #[error("bulk array of {got} elements does not fit the {want} elements expected")]
    BulkSize {
        /// Elements that arrived.
        got: usize,
        /// Elements the destination holds.
        want: usize,
    },
}

impl WireError {
    /// Whether the connection can go on after this error.
    pub fn is_recoverable(&self) -> bool {
        matches!(self, WireError::BadFrame { skipped: true, .. })
    }

    /// Whether the connection itself failed (its peer or the path to it),
    /// rather than what was sent or received on it.
    pub fn is_link(&self) -> bool {
        matches!(self, WireError::Io(_) | WireError::Closed)
    }
}
