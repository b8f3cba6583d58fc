//! The built-in kernels: the seed's benchmark kernels and small ones for
//! tests and examples.

use super::{Array, Kernel, KernelError, count_arg, float_arg};
use crate::call::{keep_going, reserve_memory};
use std::hint::black_box;
use std::sync::Arc;

/// Most `erf` evaluations one `erf_burn` call may ask for (its `c` times
/// its input's length): about 20 s on a laptop core, a minute on a Pi.
pub const MAX_ERF_CALLS: u64 = 1_000_000_000;

/// Most multiply-adds one `matmul_power(c, d)` call may ask for
/// (`(c - 1) d³`): about a minute on a laptop core.
pub const MAX_MULTIPLY_ADDS: u64 = 50_000_000_000;

/// How often a long built-in asks whether to go on (see [`keep_going`]).
const CHECK_EVERY: u64 = 1 << 14;

type Entry = (&'static str, Arc<dyn Kernel>);

fn entry<F>(name: &'static str, f: F) -> Entry
where
    F: Fn(&[f64], Array) -> Result<Array, KernelError> + Send + Sync + 'static,
{
    (name, Arc::new(f))
}

pub(super) fn all() -> Vec<Entry> {
    vec![
        entry("identity", |_, x| Ok(x)),
        entry("square", |_, mut x| {
            x.data.iter_mut().for_each(|v| *v *= *v);
            Ok(x)
        }),
        entry("sum", |_, x| Ok(Array::list(vec![x.data.iter().sum()]))),
        entry("max", |_, x| {
            Ok(Array::list(
                x.data
                    .iter()
                    .copied()
                    .reduce(f64::max)
                    .into_iter()
                    .collect(),
            ))
        }),
        entry("scale", |args, mut x| {
            let f = float_arg("scale", args, 0, "factor")?;
            x.data.iter_mut().for_each(|v| *v *= f);
            Ok(x)
        }),
        entry("above", |args, x| {
            let t = float_arg("above", args, 0, "threshold")?;
            let any = x.data.iter().any(|&v| v > t);
            Ok(Array::list(vec![if any { 1.0 } else { 0.0 }]))
        }),
        entry("erf_burn", |args, x| {
            let c = count_arg("erf_burn", args, 0, "c")?;
            let calls = c.saturating_mul(x.data.len() as u64);
            if calls > MAX_ERF_CALLS {
                return Err(KernelError(format!(
                    "erf_burn: {c} times {} elements is {calls} erf calls, more than one call \
                     may make ({MAX_ERF_CALLS}); split the input (map) or lower c",
                    x.data.len()
                )));
            }
            erf_burn(c, &x.data)?;
            Ok(x)
        }),
        entry("matmul_power", |args, x| {
            let c = count_arg("matmul_power", args, 0, "c")?;
            let d = count_arg("matmul_power", args, 1, "d")?;
            if d > 4096 {
                return Err(KernelError(format!(
                    "matmul_power: d = {d} is too large (at most 4096)"
                )));
            }
            let work = c.saturating_sub(1).saturating_mul(d * d * d);
            if work > MAX_MULTIPLY_ADDS {
                return Err(KernelError(format!(
                    "matmul_power: {c} products of {d}x{d} matrices are {work} multiply-adds, \
                     more than one call may make ({MAX_MULTIPLY_ADDS})"
                )));
            }
            // Three d×d matrices of floats.
            let what = format!("matmul_power({c}, {d})");
            let _memory = reserve_memory(3 * 8 * d * d, &what)?;
            black_box(matmul_power(c as usize, d as usize)?);
            Ok(x)
        }),
        entry("sleep_ms", |args, x| {
            // Fractions allowed (`sleep_ms(0.05)`: 50 µs), at most a minute.
            let ms = float_arg("sleep_ms", args, 0, "ms")?;
            if !(0.0..=60_000.0).contains(&ms) {
                return Err(KernelError(format!(
                    "sleep_ms: argument ms must be between 0 and 60000, got {ms}"
                )));
            }
            // In slices, so that a call whose caller went stops soon.
            let end = std::time::Instant::now() + std::time::Duration::from_secs_f64(ms / 1e3);
            while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
                keep_going()?;
                std::thread::sleep(left.min(std::time::Duration::from_millis(50)));
            }
            Ok(x)
        }),
        entry("fail", |_, _| {
            Err(KernelError("the fail kernel fails, as asked".into()))
        }),
        entry("panic", |_, _| panic!("the panic kernel panics, as asked")),
    ]
}

/// The seed's CPU load: `erf` applied `c` times to every element; the
/// results are consumed so that no call is optimised away. Stops early if
/// the call is to stop ([`keep_going`]).
pub fn erf_burn(c: u64, data: &[f64]) -> Result<(), KernelError> {
    let mut since_check = 0u64;
    for &x in data {
        for _ in 0..c {
            black_box(libm::erf(black_box(x)));
            since_check += 1;
            if since_check == CHECK_EVERY {
                since_check = 0;
                keep_going()?;
            }
        }
    }
    Ok(())
}

/// The seed's pipeline load: the product of `c` copies of a `d × d` matrix
/// of 2.0 (row-major), computed with a cache-friendly i-k-j loop. Stops
/// early, between two rows, if the call is to stop ([`keep_going`]).
pub fn matmul_power(c: usize, d: usize) -> Result<Vec<f64>, KernelError> {
    let base = vec![2.0; d * d];
    let mut acc = base.clone();
    let mut next = vec![0.0; d * d];
    for _ in 1..c.max(1) {
        next.iter_mut().for_each(|v| *v = 0.0);
        for i in 0..d {
            keep_going()?;
            for k in 0..d {
                let a = acc[i * d + k];
                let row = &base[k * d..(k + 1) * d];
                let out = &mut next[i * d..(i + 1) * d];
                for (o, b) in out.iter_mut().zip(row) {
                    *o += a * b;
                }
            }
        }
        std::mem::swap(&mut acc, &mut next);
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::super::Registry;
    use super::*;

    #[test]
    fn matmul_power_of_twos_is_known() {
        // 2x2 of 2.0: M^2 has entries 2*2*2 = 8; M^3 entries 8*2*2 = 32.
        assert_eq!(matmul_power(1, 2).unwrap(), vec![2.0; 4]);
        assert_eq!(matmul_power(2, 2).unwrap(), vec![8.0; 4]);
        assert_eq!(matmul_power(3, 2).unwrap(), vec![32.0; 4]);
    }

    #[test]
    fn kernels_pass_their_inputs_or_compute() {
        let reg = Registry::builtin();
        let x = Array::list(vec![0.5, -1.0, 2.0]);
        let call = |n: &str, args: &[f64]| reg.get(n).unwrap().call(args, x.clone());
        assert_eq!(call("erf_burn", &[10.0]).unwrap(), x);
        assert_eq!(call("matmul_power", &[3.0, 8.0]).unwrap(), x);
        assert_eq!(call("sum", &[]).unwrap().data, [1.5]);
        assert_eq!(call("max", &[]).unwrap().data, [2.0]);
        assert_eq!(call("scale", &[2.0]).unwrap().data, [1.0, -2.0, 4.0]);
        assert_eq!(call("above", &[1.5]).unwrap().data, [1.0]);
        assert_eq!(call("above", &[2.0]).unwrap().data, [0.0]);
        assert!(call("fail", &[]).is_err());
    }

    #[test]
    fn bad_arguments_are_named() {
        let reg = Registry::builtin();
        let x = Array::list(vec![1.0]);
        let err = reg
            .get("erf_burn")
            .unwrap()
            .call(&[], x.clone())
            .unwrap_err();
        assert!(err.0.contains("missing argument c"), "{err}");
        let err = reg.get("erf_burn").unwrap().call(&[-1.0], x).unwrap_err();
        assert!(err.0.contains("whole number"), "{err}");
    }
}
