//! A custom skelpi agent: the built-in kernels plus `celsius` (Fahrenheit
//! to Celsius, element by element). Same flags as `skelpi-agent`.

use skelpi_agent::kernels::{Array, KernelError, Registry};

fn main() -> std::process::ExitCode {
    let kernels = Registry::builtin().with("celsius", |_: &[f64], x: Array| {
        let data = x.data.iter().map(|f| (f - 32.0) * 5.0 / 9.0).collect();
        Ok::<_, KernelError>(Array { data, ..x })
    });
    skelpi_agent::cli::main(kernels)
}
