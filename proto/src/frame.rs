//! Frames: a big-endian `u32` length, then exactly that many bytes holding
//! one CBOR item.
//!
//! The length is checked against a limit before anything is allocated for
//! the frame, so a peer announcing 4 GiB costs the receiver four bytes.

use crate::DecodeError;

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Default frame limit: 1 MiB. Arrays larger than that travel in chunks.
pub const DEFAULT_MAX_FRAME: u32 = 1 << 20;

/// Hard frame limit: 16 MiB. No configuration may raise a limit above it.
pub const HARD_MAX_FRAME: u32 = 16 << 20;

/// Smallest possible frame: a 3-element array header, a kind, an empty body
/// and a null bulk marker.
pub const MIN_FRAME: u32 = 4;

/// Elements of `f64` per chunk when an array is larger than one frame
/// holds: 64 Ki elements, 512 KiB of payload per frame.
pub const CHUNK_ELEMENTS: usize = 64 * 1024;

/// Reads a length prefix and checks it against `max` (clamped to
/// [`HARD_MAX_FRAME`]) and [`MIN_FRAME`].
///
/// # Examples
/// ```
/// use skelpi_proto::frame::{frame_len, DEFAULT_MAX_FRAME};
/// assert_eq!(frame_len([0, 0, 1, 0], DEFAULT_MAX_FRAME), Ok(256));
/// assert!(frame_len([0xff, 0xff, 0xff, 0xff], DEFAULT_MAX_FRAME).is_err());
/// ```
pub fn frame_len(prefix: [u8; LEN_PREFIX], max: u32) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(prefix);
    let max = max.min(HARD_MAX_FRAME);
    if len > max {
        return Err(DecodeError::TooLarge {
            len: len.into(),
            max,
        });
    }
    if len < MIN_FRAME {
        return Err(DecodeError::TooShort { len });
    }
    Ok(len as usize)
}
