//! Builds the example guest for tests and benchmarks (`#[path]`-included):
//! `cargo build --release --target wasm32-unknown-unknown` on its manifest,
//! then the module's bytes. Needs the rustup target (scripts/test.sh adds it).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The example guest's `.wasm`, built if needed.
pub fn example_guest() -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/wasm-guest")
        .canonicalize()
        .expect("examples/wasm-guest exists");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
        ])
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        // Not the outer build's target directory or flags.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cannot build examples/wasm-guest for wasm32-unknown-unknown \
         (rustup target add wasm32-unknown-unknown; scripts/test.sh does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm: PathBuf = dir.join("target/wasm32-unknown-unknown/release/skelpi_wasm_guest.wasm");
    std::fs::read(&wasm).unwrap_or_else(|e| panic!("{}: {e}", wasm.display()))
}
