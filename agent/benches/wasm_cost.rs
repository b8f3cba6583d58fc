//! What a WebAssembly kernel costs: nanoseconds per `erf` in the example
//! guest's `erf_burn(c)` (wasmi, fuel metered) against the native
//! `erf_burn(c)` (the same libm `erf`), and the fixed cost of one call (a
//! fresh instance, arguments and input copied in and out) on one element.
//!
//! `cargo bench -p skelpi-agent --bench wasm_cost`
//!
//! Inputs are random in [-3, 3) (erf's work depends on the argument's
//! range); results go through `black_box`. Medians of 9 rounds, after a
//! warm-up.

#[path = "../../examples/wasm-guest/locate.rs"]
mod locate;

use rand::Rng;
use skelpi_agent::kernels::wasm::{Limits, Modules, hash};
use skelpi_agent::kernels::{Array, Kernel, Registry};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Elements per call and `erf` calls per element.
const ELEMENTS: usize = 1000;
const C: f64 = 100.0;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The median time of one call of `k`, over 9 rounds of `calls` calls.
fn time(k: &dyn Kernel, args: &[f64], input: &Array, calls: u32) -> Duration {
    black_box(k.call(args, input.clone()).expect("warm-up call"));
    let rounds = (0..9)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..calls {
                black_box(k.call(black_box(args), input.clone()).expect("a call"));
            }
            started.elapsed() / calls
        })
        .collect();
    median(rounds)
}

fn main() {
    let wasm = locate::example_guest();
    let h = hash(&wasm);
    let limits = Limits {
        fuel: u64::MAX / 2,
        ..Limits::default()
    };
    let modules = Modules::new(limits, 16 << 20, None);
    modules
        .store(&h, &wasm)
        .expect("the example guest is a module");
    let guest = modules
        .kernel(&format!("wasm:{h}:erf_burn"))
        .expect("its erf_burn");
    let native = Registry::builtin()
        .get("erf_burn")
        .expect("native erf_burn");

    let mut rng = rand::rng();
    let input = Array::list((0..ELEMENTS).map(|_| rng.random_range(-3.0..3.0)).collect());
    let erfs = ELEMENTS as f64 * C;
    let t_native = time(native.as_ref(), &[C], &input, 20);
    let t_wasm = time(&guest, &[C], &input, 3);
    let ns = |t: Duration| t.as_nanos() as f64 / erfs;
    println!(
        "erf_burn({C}) on {ELEMENTS} random floats ({erfs} erf per call), medians of 9 rounds:"
    );
    println!("  native   {:>8.2} ns per erf", ns(t_native));
    println!("  wasm     {:>8.2} ns per erf", ns(t_wasm));
    println!(
        "  ratio    {:>8.1}x (wasm / native)",
        t_wasm.as_secs_f64() / t_native.as_secs_f64()
    );

    let one = Array::list(vec![rng.random()]);
    let scale = modules
        .kernel(&format!("wasm:{h}:scale"))
        .expect("its scale");
    let native_scale = Registry::builtin().get("scale").expect("native scale");
    let t_call = time(&scale, &[2.0], &one, 200);
    let t_native_call = time(native_scale.as_ref(), &[2.0], &one, 200);
    println!(
        "one call on 1 element (scale(2)): wasm {t_call:.2?} (a fresh instance each), native {t_native_call:.2?}"
    );
}
