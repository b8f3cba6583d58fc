//! skelpi-proto's integration tests, one binary in layers: golden byte
//! vectors that pin the wire format, round-trip properties, hostile input,
//! and the fuzz body run over the saved corpus.
//!
//! `SKELPI_BLESS=1 cargo test -p skelpi-proto --test it golden` rewrites the
//! golden files from the current encoder; review the diff before committing.

mod beat;
mod cases;
mod corpus;
mod golden;
mod hostile;
mod roundtrip;
mod skeleton_text;
