//! A skelpi guest: kernels compiled to WebAssembly, pushed to agents at
//! run time (`skelpi module push`), named `wasm:<hash>:erf` and so on.
//!
//! The guest ABI (`skelpi_agent::kernels::wasm`): the agent asks
//! `skelpi_alloc` for room, writes the arguments and the input there as
//! little-endian f64, calls a kernel `(args, nargs, data, n) -> i64`, and
//! reads `(ptr << 32) | count` floats back, or `-((ptr << 32) | len)`, an
//! error message. Each call runs in a fresh instance, so memory handed out
//! is never freed: the instance goes away with it.
//!
//! `unsafe` is the ABI's: the agent hands over addresses in this module's
//! memory, which only raw pointers can read. It is confined to [`floats`].

/// Room for `len` bytes, 8-aligned, for the agent to write into.
#[unsafe(no_mangle)]
pub extern "C" fn skelpi_alloc(len: i32) -> i32 {
    let words = (len.max(0) as usize).div_ceil(8);
    let room: &'static mut [u64] = Vec::leak(vec![0u64; words]);
    room.as_mut_ptr() as i32
}

/// The `n` floats the agent wrote at `at`.
fn floats(at: i32, n: i32) -> &'static mut [f64] {
    if n <= 0 {
        return &mut [];
    }
    // SAFETY: the agent wrote `n` floats at `at`, a block skelpi_alloc
    // handed out (8-aligned, `8 * n` bytes, never freed); nothing else
    // refers to it during this call.
    unsafe { core::slice::from_raw_parts_mut(at as *mut f64, n as usize) }
}

/// The packed answer for an output.
fn ok(out: &[f64]) -> i64 {
    ((out.as_ptr() as i64) << 32) | out.len() as i64
}

/// The packed answer for a failure.
fn fail(message: &'static str) -> i64 {
    -(((message.as_ptr() as i64) << 32) | message.len() as i64)
}

/// `erf` of every element.
#[unsafe(no_mangle)]
pub extern "C" fn erf(_args: i32, _nargs: i32, data: i32, n: i32) -> i64 {
    let x = floats(data, n);
    for v in x.iter_mut() {
        *v = libm::erf(*v);
    }
    ok(x)
}

/// The seed's CPU load, as the agent's native `erf_burn(c)`: `erf` applied
/// `c` times to every element; the input comes back unchanged.
#[unsafe(no_mangle)]
pub extern "C" fn erf_burn(args: i32, nargs: i32, data: i32, n: i32) -> i64 {
    let args = floats(args, nargs);
    let Some(&c) = args.first() else {
        return fail("erf_burn: missing argument c (expected erf_burn(c))");
    };
    if !(c >= 0.0 && c.fract() == 0.0) {
        return fail("erf_burn: argument c must be a whole number >= 0");
    }
    let x = floats(data, n);
    for &v in x.iter() {
        for _ in 0..c as u64 {
            core::hint::black_box(libm::erf(core::hint::black_box(v)));
        }
    }
    ok(x)
}

/// Every element times `f`.
#[unsafe(no_mangle)]
pub extern "C" fn scale(args: i32, nargs: i32, data: i32, n: i32) -> i64 {
    let Some(&f) = floats(args, nargs).first() else {
        return fail("scale: missing argument f (expected scale(f))");
    };
    let x = floats(data, n);
    x.iter_mut().for_each(|v| *v *= f);
    ok(x)
}
