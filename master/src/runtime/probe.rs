//! Timing of kernel calls as a job runs, for the benchmarks: which node of
//! the tree called which item, when the call left and when its result came
//! back. Recording costs one `Instant::now()` pair and a push per call.

use std::cell::RefCell;
use std::time::Instant;

/// One kernel call seen from the master.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The node of the tree: `0` for the root, `0.2` for the third stage of
    /// a root pipeline, `0.2.farm` for the workers of a farm there.
    pub node: String,
    /// The item's index in the stream the node reads.
    pub index: u64,
    /// When the call was sent.
    pub start: Instant,
    /// When its result arrived.
    pub end: Instant,
}

/// Collects the calls of one job (in the order they finished).
#[derive(Debug, Default)]
pub struct Probe {
    calls: RefCell<Vec<Call>>,
}

impl Probe {
    /// An empty probe.
    pub fn new() -> Probe {
        Probe::default()
    }

    /// Records one call.
    pub fn record(&self, call: Call) {
        self.calls.borrow_mut().push(call);
    }

    /// The calls recorded so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }
}
