//! The connection layer: the authenticated handshake and framed, optionally
//! encrypted message channels over TCP.
//!
//! After [`handshake::connect`] or [`handshake::accept`] a connection is two
//! independent halves, a [`Sender`] and a [`Receiver`], so one task can
//! stream chunks out while another reads replies. Each half counts the bytes
//! it moved on the socket in a shared [`WireStats`].

mod channel;
mod error;
pub mod handshake;
mod stream;

pub use channel::{Liveness, Received, Receiver, Sender};
pub use error::WireError;
pub use stream::WireStats;
