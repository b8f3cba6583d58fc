//! skelpi-kernels: the functions skeletons apply, registered by name.
//!
//! A kernel maps numeric arguments and an input array to an output array.
//! Agents carry a [`Registry`]; a job names kernels, never ships code. Users
//! add kernels by building their own agent with [`Registry::with`]. Besides
//! the built-ins there are port kernels (programs in a directory, see
//! [`port`]) and, with the `wasm` feature, WebAssembly modules masters push
//! ([`wasm`]). [`call`] runs one call, turning panics into failures.
//!
//! The agent daemon runs them on its worker threads; the master library
//! uses the built-ins to evaluate a tree in its own process (the reference
//! results and the sequential baseline), without the daemon.
//!
//! # Examples
//! ```
//! use skelpi_kernels::{Array, Registry};
//! let reg = Registry::builtin();
//! let square = reg.get("square").unwrap();
//! let out = square.call(&[], Array::list(vec![1.0, -2.0, 3.0])).unwrap();
//! assert_eq!(out.data, [1.0, 4.0, 9.0]);
//! ```

mod builtin;
pub mod call;
pub mod port;
#[cfg(feature = "wasm")]
pub mod wasm;

pub use skelpi_proto::Array;
use skelpi_proto::JobId;
use std::collections::BTreeMap;
use std::sync::Arc;
use thiserror::Error;

/// Why a kernel failed: its own words, lower case.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct KernelError(pub String);

/// A kernel: a pure function of its arguments and input.
pub trait Kernel: Send + Sync {
    /// Runs the kernel. It may panic; callers catch that and report it.
    fn call(&self, args: &[f64], input: Array) -> Result<Array, KernelError>;

    /// Runs the kernel for job `job` (agents call this one). A kernel that
    /// keeps resources per job (a port's processes) overrides it; by
    /// default it is [`Kernel::call`].
    fn call_for(&self, job: JobId, args: &[f64], input: Array) -> Result<Array, KernelError> {
        let _ = job;
        self.call(args, input)
    }

    /// Job `job` has ended here (its master started another, or went
    /// away): resources kept for it can go. By default, nothing.
    fn end_job(&self, job: JobId) {
        let _ = job;
    }
}

impl<F> Kernel for F
where
    F: Fn(&[f64], Array) -> Result<Array, KernelError> + Send + Sync,
{
    fn call(&self, args: &[f64], input: Array) -> Result<Array, KernelError> {
        self(args, input)
    }
}

/// Kernels by name. Cheap to clone; fixed once the agent starts, but for
/// the WebAssembly modules masters push (`wasm:<hash>:<export>`, with the
/// `wasm` feature), which clones share.
#[derive(Clone, Default)]
pub struct Registry {
    kernels: BTreeMap<String, Arc<dyn Kernel>>,
    #[cfg(feature = "wasm")]
    modules: Option<wasm::Modules>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kernels.keys()).finish()
    }
}

impl Registry {
    /// The built-in kernels: `identity`, `square`, `sum`, `max`, `scale(f)`,
    /// `above(t)`, `erf_burn(c)`, `matmul_power(c, d)`, `sleep_ms(ms)`,
    /// `fail`, `panic`; and, with the `wasm` feature, an empty store of
    /// WebAssembly modules of its own with the default limits.
    pub fn builtin() -> Registry {
        Registry {
            kernels: builtin::all()
                .into_iter()
                .map(|(name, k)| (name.to_owned(), k))
                .collect(),
            #[cfg(feature = "wasm")]
            modules: Some(wasm::Modules::new(
                wasm::Limits::default(),
                wasm::Modules::DEFAULT_CACHE_BYTES,
                None,
            )),
        }
    }

    /// Runs the `wasm:` kernels of `modules` (`None`: no WebAssembly).
    #[cfg(feature = "wasm")]
    pub fn with_modules(mut self, modules: Option<wasm::Modules>) -> Registry {
        self.modules = modules;
        self
    }

    /// The store of WebAssembly modules, if this registry runs them.
    #[cfg(feature = "wasm")]
    pub fn modules(&self) -> Option<&wasm::Modules> {
        self.modules.as_ref()
    }

    /// Adds (or replaces) a kernel.
    pub fn with(mut self, name: &str, kernel: impl Kernel + 'static) -> Registry {
        self.kernels.insert(name.to_owned(), Arc::new(kernel));
        self
    }

    /// The kernel registered under `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Kernel>> {
        self.find(name).ok()
    }

    /// The kernel named `name`, or why there is none here (in words for
    /// the master: what is missing and what to do). A `wasm:` kernel whose
    /// module left the cache is read back and compiled: call it off an
    /// async executor.
    pub fn find(&self, name: &str) -> Result<Arc<dyn Kernel>, KernelError> {
        if let Some(k) = self.kernels.get(name) {
            return Ok(k.clone());
        }
        #[cfg(feature = "wasm")]
        if let (Some(modules), true) = (&self.modules, name.starts_with("wasm:")) {
            return match modules.kernel(name) {
                Ok(k) => Ok(Arc::new(k)),
                Err(e) => Err(KernelError(e.to_string())),
            };
        }
        Err(KernelError(format!(
            "no kernel {name:?} (it has: {})",
            self.names().join(", ")
        )))
    }

    /// [`Registry::find`], run off the calling (executor) thread when the
    /// kernel may have to be read and compiled first (a WebAssembly module
    /// not in the cache).
    pub async fn find_unblocked(&self, name: &str) -> Result<Arc<dyn Kernel>, KernelError> {
        #[cfg(feature = "wasm")]
        if let Some(modules) = self.modules()
            && name.starts_with("wasm:")
            && !modules.is_cached(name)
        {
            let (kernels, name) = (self.clone(), name.to_owned());
            return smol::unblock(move || kernels.find(&name)).await;
        }
        self.find(name)
    }

    /// The hash of the WebAssembly module `name` needs, if this registry
    /// runs modules and that one is not stored here (see
    /// [`wasm::Modules::missing`]).
    pub fn missing_module(&self, name: &str) -> Option<String> {
        #[cfg(feature = "wasm")]
        if let Some(modules) = self.modules() {
            return modules.missing(name);
        }
        let _ = name;
        None
    }

    /// Registered names, sorted; `wasm:*` when it runs WebAssembly modules.
    pub fn names(&self) -> Vec<&str> {
        let names = self.kernels.keys().map(String::as_str);
        #[cfg(feature = "wasm")]
        let names = names.chain(self.modules.is_some().then_some("wasm:*"));
        names.collect()
    }

    /// Adds `port:NAME` for every executable file `NAME` of `dir` (see
    /// [`port`]), each call answered within `timeout`.
    pub fn with_ports(
        mut self,
        dir: &std::path::Path,
        timeout: std::time::Duration,
    ) -> std::io::Result<Registry> {
        for (name, kernel) in port::scan(dir, timeout)? {
            self.kernels.insert(name, Arc::new(kernel));
        }
        Ok(self)
    }

    /// Tells every kernel that job `job` has ended here.
    pub fn end_job(&self, job: JobId) {
        for k in self.kernels.values() {
            k.end_job(job);
        }
    }
}

/// The SHA-256 of `bytes` in 64 lowercase hex digits: the name of a
/// WebAssembly module (`wasm:<hash>:<export>`).
pub fn module_hash(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads argument `i` of `name` as a non-negative whole number.
pub fn count_arg(name: &str, args: &[f64], i: usize, what: &str) -> Result<u64, KernelError> {
    match args.get(i) {
        Some(&v) if v >= 0.0 && v.fract() == 0.0 && v < 1e15 => Ok(v as u64),
        Some(&v) => Err(KernelError(format!(
            "{name}: argument {what} must be a whole number >= 0, got {v}"
        ))),
        None => Err(KernelError(format!(
            "{name}: missing argument {what} (expected {name}({what}, ...))"
        ))),
    }
}

/// Reads argument `i` of `name` as a float.
pub fn float_arg(name: &str, args: &[f64], i: usize, what: &str) -> Result<f64, KernelError> {
    args.get(i).copied().ok_or_else(|| {
        KernelError(format!(
            "{name}: missing argument {what} (expected {name}({what}, ...))"
        ))
    })
}
