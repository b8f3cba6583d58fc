//! Fuzz target: every decoder of skelpi-proto on arbitrary bytes (frames,
//! heads, preambles, handshake lengths). It must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    skelpi_proto::fuzzing::decode_bytes(data);
});
