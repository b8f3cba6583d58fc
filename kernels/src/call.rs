//! Calling a kernel: panics turned into failures, and what a running call
//! may ask of whoever runs it — whether to go on ([`keep_going`]) and a
//! share of a memory budget ([`reserve_memory`]).
//!
//! The runner (an agent's worker thread) enters a [`CallScope`] for each
//! call with [`enter`]; kernels ask through the free functions, which
//! answer "go on" and "granted" outside any scope (a master evaluating a
//! tree in its own process).

use crate::{Array, Kernel, KernelError};
use skelpi_proto::JobId;
use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// How a kernel call ended badly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong.
    pub message: String,
    /// The kernel panicked.
    pub panicked: bool,
}

/// Calls `kernel`, turning a panic into a [`Failure`].
pub fn call_kernel(kernel: &dyn Kernel, args: &[f64], input: Array) -> Result<Array, Failure> {
    call_kernel_for(kernel, JobId::default(), args, input)
}

/// [`call_kernel`] for job `job` ([`Kernel::call_for`]).
pub fn call_kernel_for(
    kernel: &dyn Kernel,
    job: JobId,
    args: &[f64],
    input: Array,
) -> Result<Array, Failure> {
    match catch_unwind(AssertUnwindSafe(|| kernel.call_for(job, args, input))) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(Failure {
            message: e.0,
            panicked: false,
        }),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(Failure {
                message: format!("kernel panicked: {what}"),
                panicked: true,
            })
        }
    }
}

/// What the runner of a call tells the kernel it runs.
pub trait CallScope {
    /// Why the call should stop now (its caller went away, its deadline
    /// passed, the runner is shutting down), or `None` to go on.
    fn stop(&self) -> Option<KernelError>;

    /// The budget the call's memory comes from, if any.
    fn memory(&self) -> Option<&Arc<MemoryBudget>>;
}

thread_local! {
    /// The scope of the call this thread runs, if any.
    static CALL: RefCell<Option<Box<dyn CallScope>>> = const { RefCell::new(None) };
}

/// The scope of the call running on this thread; left when dropped.
#[derive(Debug)]
#[must_use = "the scope ends when this is dropped"]
pub struct Entered(());

impl Drop for Entered {
    fn drop(&mut self) {
        CALL.set(None);
    }
}

/// Runs the calls on this thread in `scope` until the guard is dropped.
pub fn enter(scope: Box<dyn CallScope>) -> Entered {
    CALL.set(Some(scope));
    Entered(())
}

/// Whether the kernel call running on this thread should go on: an error
/// if its scope says stop (see [`CallScope::stop`]). Long kernels ask now
/// and then and return the error (the built-ins do); outside a scope,
/// always `Ok`.
pub fn keep_going() -> Result<(), KernelError> {
    CALL.with_borrow(|call| match call.as_ref().and_then(|c| c.stop()) {
        Some(e) => Err(e),
        None => Ok(()),
    })
}

/// Bytes the kernel calls of one runner may hold at once.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: AtomicU64,
    used: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `limit` bytes, none in use.
    pub fn new(limit: u64) -> MemoryBudget {
        MemoryBudget {
            limit: AtomicU64::new(limit),
            used: AtomicU64::new(0),
        }
    }

    /// Sets the bytes calls may hold at once (reservations already made
    /// stay).
    pub fn set_limit(&self, bytes: u64) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    /// Reserves `bytes`, or says why not (`what` names what needs them).
    pub fn reserve(self: &Arc<Self>, bytes: u64, what: &str) -> Result<Reservation, KernelError> {
        let limit = self.limit.load(Ordering::Relaxed);
        let taken = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= limit)
            });
        match taken {
            Ok(_) => Ok(Reservation {
                budget: Some(self.clone()),
                bytes,
            }),
            Err(used) => Err(KernelError(format!(
                "{what} needs {} MiB; this agent allows {} MiB for kernels at once ({} MiB in \
                 use; skelpi-agent --kernel-memory sets it)",
                bytes.div_ceil(1 << 20),
                limit >> 20,
                used.div_ceil(1 << 20)
            ))),
        }
    }
}

/// Kernel memory held by a call; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Option<Arc<MemoryBudget>>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.used.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

/// Reserves `bytes` of the memory budget of the call running on this
/// thread, or says why not (`what` names what needs it). Outside a scope
/// with a budget, always granted.
pub fn reserve_memory(bytes: u64, what: &str) -> Result<Reservation, KernelError> {
    let budget = CALL.with_borrow(|call| call.as_ref().and_then(|c| c.memory().cloned()));
    match budget {
        Some(budget) => budget.reserve(bytes, what),
        None => Ok(Reservation {
            budget: None,
            bytes,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Stopped(Arc<MemoryBudget>);

    impl CallScope for Stopped {
        fn stop(&self) -> Option<KernelError> {
            Some(KernelError("stopped: told to".into()))
        }
        fn memory(&self) -> Option<&Arc<MemoryBudget>> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_scope_answers_for_its_call_and_nothing_outside_it() {
        assert_eq!(keep_going(), Ok(()));
        assert!(reserve_memory(u64::MAX, "huge").is_ok());
        let budget = Arc::new(MemoryBudget::new(10));
        {
            let _in = enter(Box::new(Stopped(budget.clone())));
            assert_eq!(keep_going().unwrap_err().0, "stopped: told to");
            let held = reserve_memory(8, "eight").unwrap();
            let err = reserve_memory(4, "four").unwrap_err().0;
            assert!(err.starts_with("four needs 1 MiB"), "{err}");
            drop(held);
            assert!(reserve_memory(10, "ten").is_ok());
        }
        assert_eq!(keep_going(), Ok(()));
    }

    #[test]
    fn a_panic_is_a_failure_that_says_so() {
        let boom = |_: &[f64], _: Array| -> Result<Array, KernelError> { panic!("boom") };
        let f = call_kernel(&boom, &[], Array::list(vec![])).unwrap_err();
        assert_eq!(f.message, "kernel panicked: boom");
        assert!(f.panicked);
    }
}
