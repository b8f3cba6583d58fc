//! `skelpi-agent`: the skelpi node daemon with the built-in kernels (see
//! [`skelpi_agent::cli`] to build one with your own).

fn main() -> std::process::ExitCode {
    skelpi_agent::cli::main(skelpi_agent::kernels::Registry::builtin())
}
