//! skelpi: the master library — forms a pool of agents and runs skeleton
//! jobs on them. The `skelpi` command line (benchmarks, job files, images,
//! the lab) is the `skelpi-cli` package over it. A job runs through one
//! builder, [`JobBuilder`], which chooses how ([`jobs`]).
//!
//! skelpi is the Rust successor of the 2010 talk *Erlang as a framework for
//! parallel/distributed programming* (pmap and pipeline on
//! `spawn(Node, M, F, Args)`, a `.hosts.erlang` pool, Inviso tracing);
//! throughout these docs, **the seed** means that talk.
//!
//! # Examples
//! An embedded cluster of two in-process agents, pinged:
//! ```
//! use skelpi::cluster::Cluster;
//! smol::block_on(async {
//!     let mut cluster = Cluster::local(2, &Default::default()).await?;
//!     for agent in cluster.agents_mut() {
//!         let rtt = agent.ping().await?;
//!         assert!(rtt.as_secs() < 5);
//!     }
//!     cluster.close().await;
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub mod client;
pub mod cluster;
pub mod deploy;
pub mod discover;
pub mod dnssd;
pub mod jobs;
pub mod join;
pub mod modules;
pub mod pool;
pub mod runtime;
pub mod sources;
pub mod stats;
pub mod trace;
pub mod watch;

pub use jobs::JobBuilder;
