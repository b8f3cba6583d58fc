//! `skelpi module`: WebAssembly modules on the agents.

use super::pool_args::PoolArgs;
use anyhow::Context;
use clap::Subcommand;
use skelpi::modules::read_module;
use skelpi::pool;
use std::path::PathBuf;

/// What to do with modules.
#[derive(Debug, Subcommand)]
pub enum ModuleCommand {
    /// Store WebAssembly modules on every agent of the pool and print the
    /// kernels each offers (`wasm:<sha-256>:<export>`, names to use in
    /// jobs). Agents check each module's hash and the guest ABI (see the
    /// README's "Bringing your code to the boards") and keep it in memory
    /// (and in their --modules directory, if they have one); a job file may
    /// also name a module file directly (`wasm:FILE.wasm:export`), which
    /// `skelpi run` pushes first.
    Push {
        /// The modules (`.wasm` binaries, at most ~1 MiB each).
        #[arg(required = true, value_name = "FILE.wasm")]
        files: Vec<PathBuf>,
        /// The agents to push to.
        #[command(flatten)]
        pool: PoolArgs,
    },
}

/// Runs a `skelpi module` command.
pub fn run(command: &ModuleCommand) -> anyhow::Result<()> {
    let ModuleCommand::Push { files, pool } = command;
    let modules = files
        .iter()
        .map(|f| read_module(f).with_context(|| format!("cannot push {}", f.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    smol::block_on(async {
        let mut pool = pool::connect(&pool.options(false)?).await?;
        eprintln!("{}", pool.origin);
        for (file, bytes) in files.iter().zip(&modules) {
            let pushed = pool
                .cluster
                .push_module(bytes)
                .await
                .with_context(|| format!("cannot push {}", file.display()))?;
            eprintln!(
                "{}: stored on {} ({} bytes, sha-256 {})",
                file.display(),
                pushed.stored_on.join(", "),
                bytes.len(),
                pushed.hash
            );
            for (agent, why) in &pushed.refused {
                eprintln!("  not on {agent}: {why}");
            }
            for kernel in &pushed.kernels {
                println!("{kernel}");
            }
        }
        pool.cluster.close().await;
        Ok(())
    })
}
