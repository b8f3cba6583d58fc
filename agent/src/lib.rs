//! skelpi-agent: the node daemon of skelpi, as a library.
//!
//! An agent listens for masters, authenticates them with the cluster key
//! ([`skelpi_wire::handshake`]), announces itself over DNS-SD ([`announce`]) and
//! plays skeleton roles for them ([`roles`]). The `skelpi-agent` binary is a
//! thin shell over [`node::run`]; the master starts in-process agents with
//! [`local::LocalAgent`]. Where these docs say *the seed*, they mean the
//! 2010 talk skelpi succeeds, *Erlang as a framework for
//! parallel/distributed programming*.
//!
//! # Examples
//! An in-process agent on loopback, reached by a master connection:
//! ```
//! use skelpi_agent::local::LocalAgent;
//! use skelpi_wire::{handshake, key::ClusterKey};
//! let key = ClusterKey::generate()?;
//! let agent = LocalAgent::start("doc-agent", key.clone(), Default::default())?;
//! smol::block_on(async {
//!     let stream = async_net::TcpStream::connect(agent.addr()).await?;
//!     let est = handshake::connect(stream, &key, &Default::default()).await?;
//!     assert!(!est.plaintext);
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub mod admission;
pub mod announce;
pub mod cli;
pub mod deploy;
pub mod health;
pub mod identity;
pub mod launch;
/// The kernels the agent runs (the `skelpi-kernels` crate).
pub use skelpi_kernels as kernels;
pub mod local;
pub mod logging;
pub mod node;
pub mod raw_echo;
pub mod roles;
pub mod server;
pub mod service;
pub mod session;
pub mod stages;
pub mod state;
pub mod streams;
pub mod trace;
pub mod workers;
