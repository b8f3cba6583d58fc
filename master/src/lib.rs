//! skelpi: the master library — forms a pool of agents, runs skeleton jobs
//! and the seed's benchmark suite on them.
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

pub mod bench;
pub mod client;
pub mod cluster;
pub mod discover;
pub mod image;
pub mod jobfile;
pub mod lab;
pub mod modules;
pub mod pool;
pub mod runtime;
pub mod stats;
pub mod trace;
