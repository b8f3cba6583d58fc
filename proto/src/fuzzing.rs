//! Fuzz bodies: plain functions that the `cargo fuzz` targets call and that a
//! stable `#[test]` runs over the saved corpus. They must never panic.

use crate::{codec, frame, preamble};

/// Decodes as many frames as `data` holds, then tries every prefix-sized
/// view as a head and as preambles.
pub fn decode_bytes(data: &[u8]) {
    let mut floats = Vec::new();
    let mut rest = data;
    while let Ok(codec::Decoded::Frame { consumed, .. }) =
        codec::decode_frame(rest, frame::DEFAULT_MAX_FRAME, &mut floats)
    {
        rest = &rest[consumed..];
    }
    for cut in [data.len() / 2, data.len()] {
        let _ = codec::decode_head(&data[..cut], data.len());
    }
    if let Some(p) = data.first_chunk::<{ preamble::PREAMBLE_LEN }>() {
        let _ = preamble::ClientPreamble::decode(*p);
        let _ = preamble::ServerPreamble::decode(*p);
    }
    if let Some(p) = data.first_chunk::<2>() {
        let _ = preamble::handshake_len(*p);
    }
}
