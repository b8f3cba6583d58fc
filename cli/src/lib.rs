//! skelpi-cli: the `skelpi` command line over the [`skelpi`] library — the
//! benchmark suite of the seed (the 2010 talk skelpi succeeds), job files,
//! board images and the network-namespace lab. `main.rs` only parses the
//! command line and calls [`cmd`].
#![forbid(unsafe_code)]

pub mod bench;
pub mod cmd;
pub mod failure;
pub mod image;
pub mod jobfile;
pub mod lab;
pub mod pools;
