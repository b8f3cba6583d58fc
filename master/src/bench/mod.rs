//! The benchmark suite of the seed, run by `skelpi bench`: for now the
//! round-trip table ([`rtt`]), measured against a raw-TCP [`baseline`] in
//! the same process.

pub mod baseline;
pub mod report;
pub mod rtt;
