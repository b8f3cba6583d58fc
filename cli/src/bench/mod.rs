//! The benchmark suite of the seed, run by `skelpi bench`: the round-trip
//! table ([`rtt`], against a raw-TCP [`baseline`] in the same process), the
//! pmap speedup table ([`pmap`], against the sequential kernel in this
//! process), farm dispatch overhead ([`farm`]) and the pipeline's service
//! times ([`pipeline`]); tables, CSV and JSON in [`report`], SVG plots in
//! [`plot`]. Apart from the suite, asked by name: rolling upgrades
//! ([`roll`]).

pub mod baseline;
pub mod farm;
pub mod pipeline;
pub mod plot;
pub mod pmap;
pub mod report;
pub mod roll;
pub mod rtt;
