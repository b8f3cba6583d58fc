//! skelpi: the master library.
#![forbid(unsafe_code)]

pub mod discover;
