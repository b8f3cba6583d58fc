//! WebAssembly kernels: `wasm:<hash>:<export>`, functions of modules that
//! masters push at run time (`skelpi module push FILE.wasm`), run by the
//! [wasmi](https://docs.rs/wasmi) interpreter with fuel and a memory limit.
//!
//! Modules are stored by the SHA-256 of their bytes ([`Modules`]); an
//! agent never stores a module whose hash is not the one claimed, and a
//! job names a module only by that hash, so a name always means the same
//! code on every agent.
//!
//! # The guest ABI
//! A module imports nothing and exports:
//! - `memory`, its linear memory;
//! - `skelpi_alloc(len: i32) -> i32`: room for `len` bytes (8-aligned),
//!   where the agent writes a call's arguments and input;
//! - one function per kernel, `export(args: i32, nargs: i32, data: i32,
//!   n: i32) -> i64`: `nargs` arguments and `n` input elements, each an
//!   8-byte little-endian float, at `args` and `data`. It returns
//!   `(ptr << 32) | count` for an output of `count` floats at `ptr`, or
//!   `-((ptr << 32) | len)` for a call that fails with the UTF-8 message
//!   of `len` bytes at `ptr` (not empty: an empty message at 0 reads as an
//!   empty output). The output has the input's shape when it has as many
//!   elements, else it is a list. Memory stays below 2 GiB
//!   ([`Limits::memory`]), so a pointer never sets the sign bit.
//!
//! A module has at most one memory (32-bit) and one table; what it
//! declares at start must fit the limits (checked when it is stored), and
//! wasmi's strict limits on functions, globals and segments bound the
//! cost of compiling it.
//!
//! Only functions of exactly that type are kernels; a module without
//! `memory`, `skelpi_alloc` or any kernel is refused when pushed.
//!
//! Every call gets a fresh instance (nothing survives between calls, so a
//! call cannot see another job's data), at most [`Limits::fuel`] units of
//! fuel (about one per instruction) and [`Limits::memory`] bytes of memory.
//! A guest that traps, runs out of fuel (an endless loop) or grows its
//! memory past the limit fails its task with a message saying which; the
//! agent serves on.
//!
//! `examples/wasm-guest` is a guest in Rust (built for
//! `wasm32-unknown-unknown`).

mod store;

pub use crate::module_hash as hash;
pub use store::{ModuleError, Modules};

use super::{Array, Kernel, KernelError};
use skelpi_proto::Shape;
use wasmi::{Engine, Linker, Module, Store, StoreLimits, StoreLimitsBuilder, TrapCode};

/// What one call of a guest may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fuel per call (wasmi charges about one unit per instruction).
    pub fuel: u64,
    /// Linear memory per call, bytes (below 2 GiB: see the guest ABI).
    pub memory: usize,
}

impl std::fmt::Display for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} units of fuel, {} MiB of memory, tables of {TABLE_ELEMENTS} elements",
            self.fuel,
            self.memory >> 20
        )
    }
}

/// The most memory a call may have: 2047 MiB (a pointer then never sets
/// the sign bit of the packed result).
pub const MAX_MEMORY: usize = 2047 << 20;

/// Elements a guest's table may hold (function pointers: Rust guests
/// have a few hundred).
pub const TABLE_ELEMENTS: usize = 65_536;

/// A store for one call within `limits` (fuel set), and a linker with no
/// imports.
fn store(engine: &Engine, limits: Limits) -> (Store<StoreLimits>, Linker<StoreLimits>) {
    let limiter = StoreLimitsBuilder::new()
        .memory_size(limits.memory)
        .memories(1)
        .tables(1)
        .table_elements(TABLE_ELEMENTS)
        .instances(1)
        .trap_on_grow_failure(true)
        .build();
    let mut store = Store::new(engine, limiter);
    store.limiter(|l: &mut StoreLimits| l);
    // Fuel metering is on in every engine of `Modules`.
    store.set_fuel(limits.fuel).expect("fuel metering is on");
    (store, Linker::new(engine))
}

impl Default for Limits {
    /// 10⁹ fuel (a few seconds of guest code on a board) and 128 MiB.
    fn default() -> Limits {
        Limits {
            fuel: 1_000_000_000,
            memory: 128 << 20,
        }
    }
}

/// The type every kernel export has: `(args, nargs, data, n) -> packed`.
type KernelFn = (i32, i32, i32, i32);

/// One export of a stored module, as a kernel.
#[derive(Clone)]
pub struct WasmKernel {
    name: String,
    engine: Engine,
    module: Module,
    export: String,
    limits: Limits,
}

impl std::fmt::Debug for WasmKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmKernel")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Kernel for WasmKernel {
    fn call(&self, args: &[f64], input: Array) -> Result<Array, KernelError> {
        let fail = |what: String| KernelError(format!("{}: {what}", self.name));
        let (mut store, linker) = store(&self.engine, self.limits);
        let trapped = |e: wasmi::Error| fail(self.explain(&e));
        let instance = linker
            .instantiate_and_start(&mut store, &self.module)
            .map_err(trapped)?;
        // Checked when the module was stored.
        let memory = instance
            .get_memory(&store, "memory")
            .ok_or_else(|| fail("no memory".into()))?;
        let alloc = instance
            .get_typed_func::<i32, i32>(&store, "skelpi_alloc")
            .map_err(|e| fail(e.to_string()))?;
        let kernel = instance
            .get_typed_func::<KernelFn, i64>(&store, &self.export)
            .map_err(|e| fail(e.to_string()))?;
        let place = |store: &mut Store<StoreLimits>, floats: &[f64]| {
            let len = i32::try_from(floats.len() * 8)
                .map_err(|_| fail(format!("{} floats do not fit a guest", floats.len())))?;
            let at = alloc.call(&mut *store, len).map_err(trapped)?;
            let outside = || fail(format!("skelpi_alloc({len}) gave {at}, outside its memory"));
            let room = memory
                .data_mut(&mut *store)
                .get_mut(at as u32 as usize..)
                .and_then(|m| m.get_mut(..len as usize))
                .ok_or_else(outside)?;
            for (to, x) in room.chunks_exact_mut(8).zip(floats) {
                to.copy_from_slice(&x.to_le_bytes());
            }
            Ok::<i32, KernelError>(at)
        };
        let args_at = place(&mut store, args)?;
        let data_at = place(&mut store, &input.data)?;
        let (nargs, n) = (args.len() as i32, input.data.len() as i32);
        let packed = kernel
            .call(&mut store, (args_at, nargs, data_at, n))
            .map_err(trapped)?;
        let (at, len) = split(packed.unsigned_abs());
        // 32-bit boards: `len * 8` may not fit a usize.
        let bytes_len = if packed < 0 {
            Some(len)
        } else {
            len.checked_mul(8)
        };
        let mem = memory.data(&store);
        let found = bytes_len.and_then(|n| mem.get(at..).and_then(|m| m.get(..n)));
        let Some(bytes) = found else {
            return Err(fail(format!(
                "returned {} at {at}, outside its memory of {} bytes",
                match bytes_len {
                    Some(n) => format!("{n} bytes"),
                    None => format!("{len} floats"),
                },
                mem.len()
            )));
        };
        if packed < 0 {
            let message = String::from_utf8_lossy(&bytes[..bytes.len().min(1024)]);
            return Err(fail(message.into_owned()));
        }
        let data: Vec<f64> = bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect();
        let shape = if data.len() == input.data.len() {
            input.shape
        } else {
            Shape::List(data.len() as u64)
        };
        Ok(Array { shape, data })
    }
}

impl WasmKernel {
    /// Why a call stopped, in a user's words.
    fn explain(&self, e: &wasmi::Error) -> String {
        match e.as_trap_code() {
            Some(TrapCode::OutOfFuel) => format!(
                "used all its fuel ({} units) — an endless loop, or more work than \
                 skelpi-agent --wasm-fuel allows",
                self.limits.fuel
            ),
            Some(TrapCode::GrowthOperationLimited) => format!(
                "grew its memory past the limit of {} MiB (skelpi-agent --wasm-memory), \
                 or a table past {TABLE_ELEMENTS} elements",
                self.limits.memory >> 20
            ),
            Some(code) => format!("trapped: {code}"),
            None => e.to_string(),
        }
    }
}

/// `(ptr, len)` of a packed result.
fn split(packed: u64) -> (usize, usize) {
    ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize)
}
