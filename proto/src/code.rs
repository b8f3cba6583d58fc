//! Messages that change the code agents run: WebAssembly modules pushed by
//! the master, and a running stage's kernel replaced while its stream
//! flows (the seed's `{change_code, F1}`).

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// The largest module a master may push: it travels in one frame of the
/// default size, with room for the head.
pub const MAX_MODULE_BYTES: usize = crate::frame::DEFAULT_MAX_FRAME as usize - 4096;

/// Master → agent: store a WebAssembly module under its content hash.
/// Answered with [`ModuleStored`] or an error (hash mismatch, invalid
/// module, guest ABI not followed, no WebAssembly on this agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModulePush {
    /// The SHA-256 of `bytes`, 64 lowercase hex digits. The agent computes
    /// it again and refuses the module when they differ.
    pub hash: String,
    /// The module's binary (`.wasm`), at most [`MAX_MODULE_BYTES`].
    pub bytes: ByteBuf,
}

/// Agent → master: the module is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleStored {
    /// Its hash.
    pub hash: String,
    /// The kernels it offers, as jobs name them: `wasm:<hash>:<export>`.
    pub kernels: Vec<String>,
}

/// Master → agent, on the connection that opened a stage: from its next
/// item on, run this kernel instead. Items the stage has already passed on
/// keep the old kernel's results; none is lost or run twice. Answered with
/// [`StageSwapped`] (saying why, when the agent cannot run the kernel: the
/// stage then keeps its old one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageSwap {
    /// A number the master chose; the answer carries it.
    pub id: u64,
    /// The pipeline.
    pub stream: u64,
    /// The stage.
    pub stage: u32,
    /// The new kernel's name.
    pub kernel: String,
    /// Its arguments.
    pub args: Vec<f64>,
}

/// Agent → master: a stage runs its new kernel from item `from` on (the
/// items before it ran the old one), or refused the swap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSwapped {
    /// The swap's [`StageSwap::id`].
    pub id: u64,
    /// The pipeline.
    pub stream: u64,
    /// The stage.
    pub stage: u32,
    /// The first item the new kernel runs on.
    pub from: u64,
    /// Why the stage keeps its old kernel (the new one is unknown here,
    /// its module not stored, the stage has run all its items); absent
    /// when it swapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}
