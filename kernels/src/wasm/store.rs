//! The modules an agent holds: compiled, by content hash, in a cache of
//! bounded size (least recently used out first), optionally kept on disk
//! too so that they survive a restart or an eviction.

use super::{Limits, WasmKernel};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use thiserror::Error;
use wasmi::{Config, EnforcedLimits, Engine, ExternType, Module, ValType};

/// Why a module was refused or a `wasm:` kernel cannot run here.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ModuleError {
    /// Larger than the cache holds.
    #[error("module of {size} bytes is larger than this agent's module cache ({bound} bytes)")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The cache's bound.
        bound: usize,
    },
    /// The bytes do not hash to the claimed hash.
    #[error("module refused: its SHA-256 is {actual}, not the claimed {claimed}")]
    HashMismatch {
        /// The hash the master claimed.
        claimed: String,
        /// The bytes' hash.
        actual: String,
    },
    /// A kernel name that is not `wasm:<hash>:<export>`.
    #[error(
        "{0:?} is not a WebAssembly kernel name: expected wasm:<sha-256 in 64 hex digits>:<export>"
    )]
    BadName(String),
    /// Not a valid WebAssembly module.
    #[error("not a valid WebAssembly module: {0}")]
    Invalid(String),
    /// The module does not follow the guest ABI.
    #[error("module does not follow skelpi's guest ABI: {0}")]
    Abi(String),
    /// No module with that hash is stored here.
    #[error(
        "module {hash} is not stored on this agent: push it first (skelpi module push FILE.wasm)"
    )]
    NotStored {
        /// The hash asked for.
        hash: String,
    },
    /// The module has no kernel of that name.
    #[error("module {hash} has no kernel {export:?} (its kernels: {})", kernels.join(", "))]
    NoExport {
        /// The module.
        hash: String,
        /// The export asked for.
        export: String,
        /// Its kernel exports.
        kernels: Vec<String>,
    },
    /// The module directory could not be written or read.
    #[error("module directory {path}: {source}")]
    Disk {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The modules of an agent. Clones share them.
#[derive(Clone)]
pub struct Modules {
    inner: Arc<Inner>,
}

struct Inner {
    limits: Limits,
    bound: usize,
    dir: Option<PathBuf>,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<String, Entry>,
    bytes: usize,
    tick: u64,
}

/// A compiled module with an engine of its own: wasmi's engines keep the
/// code of every module compiled with them until they are dropped, so a
/// shared engine would never give an evicted module's memory back.
struct Entry {
    engine: Engine,
    module: Module,
    size: usize,
    used: u64,
    kernels: Vec<String>,
}

impl std::fmt::Debug for Modules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Modules")
            .field("limits", &self.inner.limits)
            .field("bound", &self.inner.bound)
            .field("dir", &self.inner.dir)
            .field("stored", &self.cache().entries.len())
            .finish()
    }
}

impl Modules {
    /// By default, modules take at most 64 MiB of the agent's memory.
    pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

    /// An empty store: calls run within `limits` (memory at most
    /// [`super::MAX_MEMORY`]), the cache holds at most
    /// `cache_bytes` of modules, and `dir` (if any) keeps every module
    /// stored as `<hash>.wasm` (read back, and checked, when the cache
    /// misses).
    pub fn new(limits: Limits, cache_bytes: usize, dir: Option<PathBuf>) -> Modules {
        Modules {
            inner: Arc::new(Inner {
                limits: Limits {
                    memory: limits.memory.min(super::MAX_MEMORY),
                    ..limits
                },
                bound: cache_bytes,
                dir,
                cache: Mutex::default(),
            }),
        }
    }

    /// What each call may use.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.inner.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a module pushed as `claimed` (its SHA-256): refused if the
    /// bytes hash otherwise, are not a module, or do not follow the guest
    /// ABI. Returns its kernels' names, `wasm:<hash>:<export>`.
    pub fn store(&self, claimed: &str, bytes: &[u8]) -> Result<Vec<String>, ModuleError> {
        let actual = crate::module_hash(bytes);
        if actual != claimed {
            return Err(ModuleError::HashMismatch {
                claimed: claimed.chars().take(80).collect(),
                actual,
            });
        }
        {
            // Stored again: it counts as used now.
            let mut cache = self.cache();
            cache.tick += 1;
            let tick = cache.tick;
            if let Some(e) = cache.entries.get_mut(&actual) {
                e.used = tick;
                return Ok(names(&actual, &e.kernels));
            }
        }
        let entry = self.compile(bytes)?;
        if let Some(dir) = &self.inner.dir {
            let path = dir.join(format!("{actual}.wasm"));
            let tmp = dir.join(format!(".{actual}.wasm.part"));
            std::fs::write(&tmp, bytes)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|source| ModuleError::Disk { path, source })?;
        }
        let kernels = names(&actual, &entry.kernels);
        self.insert(actual, entry);
        Ok(kernels)
    }

    /// The kernel `wasm:<hash>:<export>`.
    pub fn kernel(&self, name: &str) -> Result<WasmKernel, ModuleError> {
        let (hash, export) = parse(name)?;
        let found = self.lookup(hash, export);
        let (engine, module) = match found {
            Some(found) => found?,
            None => {
                let entry = self.load(hash)?;
                let found = (entry.engine.clone(), entry.module.clone());
                let kernels = entry.kernels.clone();
                self.insert(hash.to_owned(), entry);
                if !kernels.iter().any(|k| k == export) {
                    return Err(no_export(hash, export, kernels));
                }
                found
            }
        };
        Ok(WasmKernel {
            name: name.to_owned(),
            engine,
            module,
            export: export.to_owned(),
            limits: self.inner.limits,
        })
    }

    /// The hash of `name`'s module if `name` is a WebAssembly kernel name
    /// whose module is stored neither in the cache nor in the folder (a
    /// master may push it again).
    pub fn missing(&self, name: &str) -> Option<String> {
        let (hash, _) = parse(name).ok()?;
        if self.cache().entries.contains_key(hash) {
            return None;
        }
        let on_disk = |dir: &PathBuf| dir.join(format!("{hash}.wasm")).is_file();
        let stored = self.inner.dir.as_ref().is_some_and(on_disk);
        (!stored).then(|| hash.to_owned())
    }

    /// Whether [`Modules::kernel`] finds `name`'s module in the cache
    /// (then it reads and compiles nothing; a malformed name counts too).
    pub fn is_cached(&self, name: &str) -> bool {
        match parse(name) {
            Ok((hash, _)) => self.cache().entries.contains_key(hash),
            Err(_) => true,
        }
    }

    /// The stored module `hash`'s compiled code, if cached.
    fn lookup(&self, hash: &str, export: &str) -> Option<Result<(Engine, Module), ModuleError>> {
        let mut cache = self.cache();
        cache.tick += 1;
        let tick = cache.tick;
        let entry = cache.entries.get_mut(hash)?;
        entry.used = tick;
        if !entry.kernels.iter().any(|k| k == export) {
            return Some(Err(no_export(hash, export, entry.kernels.clone())));
        }
        Some(Ok((entry.engine.clone(), entry.module.clone())))
    }

    /// Reads a module evicted from the cache back from the directory.
    fn load(&self, hash: &str) -> Result<Entry, ModuleError> {
        let not_stored = || ModuleError::NotStored {
            hash: hash.to_owned(),
        };
        let dir = self.inner.dir.as_ref().ok_or_else(not_stored)?;
        let path = dir.join(format!("{hash}.wasm"));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_stored()),
            Err(source) => return Err(ModuleError::Disk { path, source }),
        };
        if crate::module_hash(&bytes) != hash {
            log::warn!("{}: its content changed; ignored", path.display());
            return Err(not_stored());
        }
        self.compile(&bytes)
    }

    /// Compiles and checks a module against the guest ABI.
    fn compile(&self, bytes: &[u8]) -> Result<Entry, ModuleError> {
        if bytes.len() > self.inner.bound {
            return Err(ModuleError::TooLarge {
                size: bytes.len(),
                bound: self.inner.bound,
            });
        }
        let engine = engine();
        let module =
            Module::new(&engine, bytes).map_err(|e| ModuleError::Invalid(e.to_string()))?;
        let imports: Vec<String> = module
            .imports()
            .map(|i| format!("{}::{}", i.module(), i.name()))
            .collect();
        if !imports.is_empty() {
            return Err(ModuleError::Abi(format!(
                "it imports {} (a guest may import nothing)",
                imports.join(", ")
            )));
        }
        let (mut memory, mut alloc, mut kernels) = (false, false, Vec::new());
        for export in module.exports() {
            match (export.name(), export.ty()) {
                ("memory", ExternType::Memory(_)) => memory = true,
                ("skelpi_alloc", ExternType::Func(f)) => {
                    alloc = f.params() == [ValType::I32] && f.results() == [ValType::I32]
                }
                (name, ExternType::Func(f))
                    if f.params() == [ValType::I32; 4] && f.results() == [ValType::I64] =>
                {
                    kernels.push(name.to_owned())
                }
                _ => {}
            }
        }
        let missing = if !memory {
            Some("it exports no memory named \"memory\"")
        } else if !alloc {
            Some("it exports no skelpi_alloc(i32) -> i32")
        } else if kernels.is_empty() {
            Some("it exports no kernel: a function (i32, i32, i32, i32) -> i64")
        } else {
            None
        };
        if let Some(what) = missing {
            return Err(ModuleError::Abi(what.to_owned()));
        }
        kernels.sort();
        // What it declares at start (memory, tables, a start function)
        // must fit the limits of a call.
        let (mut store, linker) = super::store(&engine, self.inner.limits);
        if let Err(e) = linker.instantiate_and_start(&mut store, &module) {
            return Err(ModuleError::Abi(format!(
                "it cannot start within this agent's limits ({}): {e}",
                self.inner.limits
            )));
        }
        Ok(Entry {
            engine,
            module,
            size: bytes.len(),
            used: 0,
            kernels,
        })
    }

    /// Caches a compiled module, evicting the least recently used others
    /// while the cache is over its bound.
    fn insert(&self, hash: String, mut entry: Entry) {
        let mut cache = self.cache();
        cache.tick += 1;
        entry.used = cache.tick;
        cache.bytes += entry.size;
        if let Some(old) = cache.entries.insert(hash.clone(), entry) {
            cache.bytes -= old.size;
        }
        while cache.bytes > self.inner.bound {
            let Some(oldest) = cache
                .entries
                .iter()
                .filter(|(h, _)| **h != hash)
                .min_by_key(|(_, e)| e.used)
                .map(|(h, _)| h.clone())
            else {
                break;
            };
            if let Some(gone) = cache.entries.remove(&oldest) {
                cache.bytes -= gone.size;
                log::info!("module {oldest} evicted from the cache");
            }
        }
    }

    /// The hashes of the modules in the cache, sorted.
    pub fn cached(&self) -> Vec<String> {
        let mut hashes: Vec<String> = self.cache().entries.keys().cloned().collect();
        hashes.sort();
        hashes
    }
}

/// An engine for one module: fuel metered, one 32-bit memory, and wasmi's
/// strict limits on what a module may declare (functions, globals,
/// segments...), which bound compiling a hostile module.
fn engine() -> Engine {
    let mut config = Config::default();
    config
        .consume_fuel(true)
        .wasm_multi_memory(false)
        .wasm_memory64(false)
        .enforced_limits(EnforcedLimits::strict());
    Engine::new(&config)
}

/// `(hash, export)` of a kernel name `wasm:<hash>:<export>`.
fn parse(name: &str) -> Result<(&str, &str), ModuleError> {
    let bad = || ModuleError::BadName(name.chars().take(200).collect());
    let rest = name.strip_prefix("wasm:").ok_or_else(bad)?;
    let (hash, export) = rest.split_once(':').ok_or_else(bad)?;
    let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    if hash.len() != 64 || !hash.chars().all(hex) || export.is_empty() {
        return Err(bad());
    }
    Ok((hash, export))
}

fn names(hash: &str, exports: &[String]) -> Vec<String> {
    exports.iter().map(|e| format!("wasm:{hash}:{e}")).collect()
}

fn no_export(hash: &str, export: &str, kernels: Vec<String>) -> ModuleError {
    ModuleError::NoExport {
        hash: hash.to_owned(),
        export: export.chars().take(200).collect(),
        kernels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::module_hash as hash;

    /// A guest of about `pad` bytes with one kernel `k` returning nothing.
    fn module(pad: usize, tag: u32) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(module (memory (export "memory") 1)
                (func (export "skelpi_alloc") (param i32) (result i32) (i32.const {tag}))
                (func (export "k") (param i32 i32 i32 i32) (result i64) (i64.const 0))
                (data (i32.const 0) "{}"))"#,
            "x".repeat(pad)
        ))
        .unwrap()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("skelpi-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_least_recently_used_module_goes_first_when_the_cache_is_full() {
        let (a, b, c) = (module(400, 1), module(400, 2), module(400, 3));
        let modules = Modules::new(Limits::default(), a.len() * 2 + 10, None);
        let (ha, hb, hc) = (hash(&a), hash(&b), hash(&c));
        modules.store(&ha, &a).unwrap();
        modules.store(&hb, &b).unwrap();
        // `a` used since `b` was stored: `b` is the one to go.
        modules.kernel(&format!("wasm:{ha}:k")).unwrap();
        modules.store(&hc, &c).unwrap();
        let mut want = vec![ha.clone(), hc.clone()];
        want.sort();
        assert_eq!(modules.cached(), want);
        let e = modules.kernel(&format!("wasm:{hb}:k")).unwrap_err();
        assert!(matches!(e, ModuleError::NotStored { .. }), "{e}");
        // Larger than the whole cache: refused, nothing evicted.
        let huge = module(a.len() * 3, 4);
        let e = modules.store(&hash(&huge), &huge).unwrap_err();
        assert!(matches!(e, ModuleError::TooLarge { .. }), "{e}");
        assert_eq!(modules.cached().len(), 2);
    }

    #[test]
    fn a_module_directory_outlives_the_cache_and_a_changed_file_is_not_run() {
        let dir = scratch("modules-dir");
        let (a, b) = (module(400, 1), module(400, 2));
        let (ha, hb) = (hash(&a), hash(&b));
        let first = Modules::new(Limits::default(), a.len() + 10, Some(dir.clone()));
        first.store(&ha, &a).unwrap();
        first.store(&hb, &b).unwrap();
        assert_eq!(first.cached(), std::slice::from_ref(&hb));
        // Evicted, then read back from the directory.
        first.kernel(&format!("wasm:{ha}:k")).unwrap();
        // A new agent with the same directory (a restart) has them both.
        let again = Modules::new(Limits::default(), 1 << 20, Some(dir.clone()));
        again.kernel(&format!("wasm:{hb}:k")).unwrap();
        // A file whose content no longer matches its name is not run.
        std::fs::write(dir.join(format!("{ha}.wasm")), &b).unwrap();
        let e = again.kernel(&format!("wasm:{ha}:k")).unwrap_err();
        assert!(matches!(e, ModuleError::NotStored { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kernel_names_must_be_wasm_hash_export() {
        let modules = Modules::new(Limits::default(), 1 << 20, None);
        let h = "a".repeat(64);
        for bad in [
            "erf".to_owned(),
            "wasm:".to_owned(),
            format!("wasm:{h}"),
            format!("wasm:{h}:"),
            format!("wasm:{}:k", "A".repeat(64)),
            format!("wasm:{}:k", "a".repeat(63)),
        ] {
            let e = modules.kernel(&bad).unwrap_err();
            assert!(matches!(e, ModuleError::BadName(_)), "{bad}: {e}");
        }
        assert!(matches!(
            modules.kernel(&format!("wasm:{h}:k")),
            Err(ModuleError::NotStored { .. })
        ));
    }
}
