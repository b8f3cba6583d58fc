//! Running skeleton trees on the pool.
//!
//! [`dispatch::Dispatcher`] hands kernel calls (tasks) to agents on demand:
//! each agent has `2 × cores` credits, a farm's or map's task takes one and
//! returns it when its result arrives, so faster agents get more work; a
//! pipeline stage placed on an agent (`get_nodes`) runs one call at a time
//! there without a credit. [`eval`] turns a skeleton tree into a graph of
//! bounded streams over that dispatcher: the master holds only what is in
//! flight (a `reduce` holds O(log n) partial results).
//! [`check`] refuses trees the runtime cannot run as written.
//! [`sequential`] evaluates the same tree in this process, one call at a
//! time: the reference semantics, and the "best sequential" baseline of the
//! benchmarks. [`handoff`] keeps the caller's code off a job's thread.

pub mod autonomic;
pub mod check;
pub mod dispatch;
mod error;
pub mod eval;
pub mod handoff;
pub mod job;
pub mod offered;
pub mod schedule;
pub mod sequential;
pub mod stall;
pub mod stream;
pub mod switch;

pub use error::{JobError, TaskError};

/// One element of a stream: an array and its position in its stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Position in the stream it belongs to.
    pub index: u64,
    /// The job input it comes from (a map's chunks, a farm's renumbered
    /// items and a feedback's rounds keep it; a reduction's result says
    /// 0): what a kernel swap's switch point counts.
    pub input: u64,
    /// Where it comes from, for error messages: `item 3`, `item 3 part 1`.
    pub origin: String,
    /// The data.
    pub data: skelpi_proto::Array,
}

/// Splits `data` into `parts` contiguous chunks whose lengths differ by at
/// most one (the first ones longer); fewer chunks if there are fewer
/// elements.
pub fn split(data: &[f64], parts: usize) -> Vec<Vec<f64>> {
    let parts = parts.clamp(1, data.len().max(1));
    let (base, extra) = (data.len() / parts, data.len() % parts);
    let mut out = Vec::with_capacity(parts);
    let mut at = 0;
    for i in 0..parts {
        let n = base + usize::from(i < extra);
        out.push(data[at..at + n].to_vec());
        at += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn split_covers_in_order_with_near_equal_parts() {
        let data: Vec<f64> = (0..10).map(f64::from).collect();
        let parts = split(&data, 3);
        assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [4, 3, 3]);
        assert_eq!(parts.concat(), data);
        assert_eq!(split(&data[..2], 5).len(), 2);
        assert_eq!(split(&[], 4), vec![Vec::<f64>::new()]);
    }
}
