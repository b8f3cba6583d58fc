//! Integration tests of skelpi-agent: the real server on loopback, and the
//! real `skelpi-agent` binary.

mod daemon;
mod handshake;
mod journal;
mod session;
mod stages;
mod support;
mod systemd;
mod trace;
