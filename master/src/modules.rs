//! WebAssembly modules on the pool: `Cluster::push_module` stores a module
//! on every connected agent (they check its hash and the guest ABI; see
//! `skelpi_kernels::wasm`), and job files may name a local module
//! file in a kernel (`wasm:FILE.wasm:export`), pushed before the job.

use crate::client::{AgentConn, ClientError, Reply, unexpected};
use crate::cluster::Cluster;
use skelpi_proto::code::MAX_MODULE_BYTES;
use skelpi_proto::skeleton::Skeleton;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// A module stored on the pool.
#[derive(Debug)]
pub struct Pushed {
    /// Its SHA-256, the middle of its kernels' names.
    pub hash: String,
    /// Its kernels, `wasm:<hash>:<export>`.
    pub kernels: Vec<String>,
    /// The agents that stored it, by name.
    pub stored_on: Vec<String>,
    /// The agents that did not, and why.
    pub refused: Vec<(String, ClientError)>,
}

/// Why a module could not be stored on any agent.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PushError {
    /// The module cannot travel in one frame.
    #[error(
        "module of {size} bytes is larger than the {max} bytes a push carries \
         (build it with opt-level \"s\", strip = true, or run wasm-opt)"
    )]
    TooLarge {
        /// Its size.
        size: usize,
        /// The most a push carries.
        max: usize,
    },
    /// The pool has no agent.
    #[error("no agent to push the module to")]
    NoAgents,
    /// Every agent refused it.
    #[error("no agent stored module {hash}: {}", reasons.join("; "))]
    Refused {
        /// The module.
        hash: String,
        /// Each agent's answer.
        reasons: Vec<String>,
    },
    /// A module file named by a job could not be read.
    #[error("cannot read module file {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl Cluster {
    /// Stores the module `bytes` on every connected agent; it is pushed
    /// again to agents that rejoin. Fails when no agent stored it.
    ///
    /// # Examples
    /// ```
    /// use skelpi::cluster::Cluster;
    /// use skelpi_proto::Array;
    ///
    /// fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     smol::block_on(async {
    ///         let mut cluster = Cluster::local(2, &Default::default()).await?;
    ///         // Doubles its input: (args, nargs, data, n) -> (data << 32) | n.
    ///         let module = wat::parse_str(r#"(module
    ///             (memory (export "memory") 1)
    ///             (global $top (mut i32) (i32.const 1024))
    ///             (func (export "skelpi_alloc") (param $len i32) (result i32)
    ///               (global.get $top)
    ///               (global.set $top (i32.add (global.get $top) (local.get $len))))
    ///             (func (export "double") (param i32 i32 i32 i32) (result i64)
    ///               (local $i i32)
    ///               (block $done (loop $next
    ///                 (br_if $done (i32.ge_u (local.get $i) (local.get 3)))
    ///                 (f64.store (i32.add (local.get 2) (i32.shl (local.get $i) (i32.const 3)))
    ///                   (f64.mul (f64.const 2)
    ///                     (f64.load (i32.add (local.get 2) (i32.shl (local.get $i) (i32.const 3))))))
    ///                 (local.set $i (i32.add (local.get $i) (i32.const 1)))
    ///                 (br $next)))
    ///               (i64.or (i64.shl (i64.extend_i32_u (local.get 2)) (i64.const 32))
    ///                       (i64.extend_i32_u (local.get 3)))))"#)?;
    ///         let pushed = cluster.push_module(&module).await?;
    ///         let tree = format!("farm(seq({}))", pushed.kernels[0]).parse()?;
    ///         let out = cluster.run(&tree, [Array::list(vec![1.5, -2.0])]).await?;
    ///         assert_eq!(out[0].data, [3.0, -4.0]);
    ///         Ok(())
    ///     })
    /// }
    /// ```
    pub async fn push_module(&mut self, bytes: &[u8]) -> Result<Pushed, PushError> {
        if bytes.len() > MAX_MODULE_BYTES {
            return Err(PushError::TooLarge {
                size: bytes.len(),
                max: MAX_MODULE_BYTES,
            });
        }
        if self.agents().is_empty() {
            return Err(PushError::NoAgents);
        }
        let hash = skelpi_kernels::module_hash(bytes);
        let (mut kernels, mut stored_on, mut refused) = (Vec::new(), Vec::new(), Vec::new());
        for conn in self.agents_mut() {
            let name = conn.info().name.clone();
            match push(conn, &hash, bytes).await {
                Ok(k) => {
                    kernels = k;
                    stored_on.push(name);
                }
                Err(e) => refused.push((name, e)),
            }
        }
        if stored_on.is_empty() {
            let reasons = refused.iter().map(|(_, e)| e.to_string()).collect();
            return Err(PushError::Refused { hash, reasons });
        }
        if !self.modules.iter().any(|(h, _)| *h == hash) {
            self.modules.push((hash.clone(), Arc::from(bytes)));
        }
        Ok(Pushed {
            hash,
            kernels,
            stored_on,
            refused,
        })
    }

    /// Pushes the module files a tree names (`wasm:FILE.wasm:export`,
    /// relative to `base`) and returns the tree with those kernels named
    /// by hash, and what was pushed.
    pub async fn push_named_modules(
        &mut self,
        tree: &Skeleton,
        base: &Path,
    ) -> Result<(Skeleton, Vec<Pushed>), PushError> {
        let mut tree = tree.clone();
        let mut pushed: Vec<(String, Pushed)> = Vec::new();
        let files: Vec<String> = tree
            .kernels()
            .iter()
            .filter_map(|k| module_file(&k.name).map(|(file, _)| file))
            .collect();
        for file in files {
            if pushed.iter().any(|(f, _)| *f == file) {
                continue;
            }
            let bytes = read_module(&base.join(&file))?;
            let p = self.push_module(&bytes).await?;
            pushed.push((file, p));
        }
        for kernel in tree.kernels_mut() {
            if let Some((file, export)) = module_file(&kernel.name)
                && let Some((_, p)) = pushed.iter().find(|(f, _)| *f == file)
            {
                kernel.name = format!("wasm:{}:{export}", p.hash);
            }
        }
        Ok((tree, pushed.into_iter().map(|(_, p)| p).collect()))
    }
}

/// Stores a WebAssembly module on `conn`'s agent under `hash` (its
/// SHA-256); returns the kernels it offers there. An agent that refuses
/// it (hash, module or ABI wrong; no WebAssembly) answers
/// [`ClientError::Agent`] and stays connected.
pub async fn push(
    conn: &mut AgentConn,
    hash: &str,
    bytes: &[u8],
) -> Result<Vec<String>, ClientError> {
    let ask = skelpi_proto::Message::ModulePush(skelpi_proto::code::ModulePush {
        hash: hash.to_owned(),
        bytes: bytes.to_vec().into(),
    });
    let answer = conn.request(&ask, |got| Ok(Reply::Done(got))).await?;
    match answer {
        skelpi_proto::Message::ModuleStored(s) if s.hash == hash => {
            conn.pushed_module(hash, bytes);
            Ok(s.kernels)
        }
        other => {
            let e = unexpected(conn.addr(), other, "answering a module push");
            if !matches!(e, ClientError::Agent { .. }) {
                conn.mark_broken_at(e.to_string(), std::time::Instant::now());
            }
            Err(e)
        }
    }
}

/// Reads a module file, refusing one too large to push before reading it.
pub fn read_module(path: &Path) -> Result<Vec<u8>, PushError> {
    let file = |source| PushError::File {
        path: path.to_owned(),
        source,
    };
    let size = std::fs::metadata(path).map_err(file)?.len();
    if size > MAX_MODULE_BYTES as u64 {
        return Err(PushError::TooLarge {
            size: usize::try_from(size).unwrap_or(usize::MAX),
            max: MAX_MODULE_BYTES,
        });
    }
    std::fs::read(path).map_err(file)
}

/// The module hash of a kernel named `wasm:HASH:export` (one pushed
/// already, named by its hash rather than by its file).
pub fn module_hash(name: &str) -> Option<&str> {
    let (module, _) = name.strip_prefix("wasm:")?.rsplit_once(':')?;
    (!module.ends_with(".wasm")).then_some(module)
}

/// `(file, export)` of a kernel named `wasm:FILE.wasm:export`.
pub fn module_file(name: &str) -> Option<(String, String)> {
    let rest = name.strip_prefix("wasm:")?;
    let (file, export) = rest.rsplit_once(':')?;
    file.ends_with(".wasm")
        .then(|| (file.to_owned(), export.to_owned()))
}
