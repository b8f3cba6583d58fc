//! Skeleton trees as data: what a job computes, independent of where it
//! runs. The master places the tree on the pool; kernels are referred to by
//! name, never by pointer.
//!
//! # Examples
//! The seed's pmap — D floats in N chunks, `erf` applied C times — and a
//! pipeline of two farms:
//! ```
//! use skelpi_proto::skeleton::{Kernel, Skeleton};
//! let pmap = Skeleton::map(4, Skeleton::seq(Kernel::new("erf_burn", [50.0])));
//! let pipe = Skeleton::pipe([
//!     Skeleton::farm(Skeleton::seq(Kernel::new("square", [])), None),
//!     Skeleton::farm(Skeleton::seq(Kernel::new("identity", [])), Some(2)),
//! ]);
//! assert_eq!(pmap.to_string(), "map(4, seq(erf_burn(50)))");
//! assert_eq!(pipe.to_string(), "pipe(farm(seq(square)), farm(seq(identity), 2))");
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;

/// A kernel by name, with its numeric arguments (`erf_burn(c)`,
/// `matmul_power(c, d)`, `sleep_ms(ms)`...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kernel {
    /// Name the agents register it under.
    pub name: String,
    /// Numeric arguments.
    #[serde(default)]
    pub args: Vec<f64>,
}

impl Kernel {
    /// A kernel reference.
    pub fn new(name: &str, args: impl IntoIterator<Item = f64>) -> Kernel {
        Kernel {
            name: name.to_owned(),
            args: args.into_iter().collect(),
        }
    }
}

/// A skeleton tree. Every skeleton transforms a stream of arrays into a
/// stream of arrays; they nest arbitrarily.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Skeleton {
    /// Apply a kernel to each item, one item at a time.
    Seq(Kernel),
    /// Stages in sequence: each stage's output stream feeds the next.
    Pipe(Vec<Skeleton>),
    /// Replicas of a skeleton that take items on demand.
    Farm {
        /// What each replica computes.
        worker: Box<Skeleton>,
        /// Number of replicas; `None`: one per core of the pool, and one
        /// more per core queued behind it so no core idles between tasks.
        #[serde(default)]
        replicas: Option<u32>,
        /// Emit results in input order (otherwise as they finish).
        #[serde(default = "yes")]
        ordered: bool,
    },
    /// The seed's pmap, per item: split it into `parts` chunks, compute
    /// every chunk with `worker` in parallel, concatenate the results in
    /// chunk order.
    Map {
        /// Number of chunks each item is split into.
        parts: u32,
        /// What computes each chunk.
        worker: Box<Skeleton>,
    },
    /// Combine the whole stream into one array with a kernel `k` such that
    /// `k(x ++ y) = k(k(x) ++ k(y))` (sum, min, max, ...): a tree reduction.
    Reduce(Kernel),
    /// Send each item through `body` again while `until` says so: `until`
    /// maps an item to an array whose first element is > 0 to go round once
    /// more.
    Feedback {
        /// The loop body.
        body: Box<Skeleton>,
        /// The loop condition.
        until: Kernel,
        /// Safety bound on rounds per item.
        #[serde(default = "default_rounds")]
        max_rounds: u32,
    },
}

fn yes() -> bool {
    true
}

fn default_rounds() -> u32 {
    1000
}

impl Skeleton {
    /// `seq(k)`.
    pub fn seq(k: Kernel) -> Skeleton {
        Skeleton::Seq(k)
    }

    /// `pipe([..])`.
    pub fn pipe(stages: impl IntoIterator<Item = Skeleton>) -> Skeleton {
        Skeleton::Pipe(stages.into_iter().collect())
    }

    /// An ordered `farm(s, n)`.
    pub fn farm(worker: Skeleton, replicas: Option<u32>) -> Skeleton {
        Skeleton::Farm {
            worker: Box::new(worker),
            replicas,
            ordered: true,
        }
    }

    /// `map(parts, s)`.
    pub fn map(parts: u32, worker: Skeleton) -> Skeleton {
        Skeleton::Map {
            parts,
            worker: Box::new(worker),
        }
    }

    /// `reduce(k)`.
    pub fn reduce(k: Kernel) -> Skeleton {
        Skeleton::Reduce(k)
    }

    /// `feedback(body, until)`.
    pub fn feedback(body: Skeleton, until: Kernel) -> Skeleton {
        Skeleton::Feedback {
            body: Box::new(body),
            until,
            max_rounds: default_rounds(),
        }
    }

    /// Every kernel the tree names, in tree order.
    pub fn kernels(&self) -> Vec<&Kernel> {
        let mut out = Vec::new();
        self.visit_kernels(&mut out);
        out
    }

    /// The kernels of its `seq` nodes, in the order written: the stages a
    /// kernel swap names (stage 0 is the first `seq`). A reduction's or a
    /// feedback condition's kernel is not among them.
    pub fn seqs(&self) -> Vec<&Kernel> {
        let mut out = Vec::new();
        self.visit_seqs(&mut out);
        out
    }

    /// How many `seq` nodes it has (`seqs().len()`, without a vector).
    pub fn seq_count(&self) -> usize {
        match self {
            Skeleton::Seq(_) => 1,
            Skeleton::Reduce(_) => 0,
            Skeleton::Pipe(stages) => stages.iter().map(Skeleton::seq_count).sum(),
            Skeleton::Farm { worker: body, .. }
            | Skeleton::Map { worker: body, .. }
            | Skeleton::Feedback { body, .. } => body.seq_count(),
        }
    }

    fn visit_seqs<'a>(&'a self, out: &mut Vec<&'a Kernel>) {
        match self {
            Skeleton::Seq(k) => out.push(k),
            Skeleton::Reduce(_) => {}
            Skeleton::Pipe(stages) => stages.iter().for_each(|s| s.visit_seqs(out)),
            Skeleton::Farm { worker: body, .. }
            | Skeleton::Map { worker: body, .. }
            | Skeleton::Feedback { body, .. } => body.visit_seqs(out),
        }
    }

    /// Every kernel the tree names, in tree order, to rename or re-argue.
    pub fn kernels_mut(&mut self) -> Vec<&mut Kernel> {
        let mut out = Vec::new();
        self.visit_kernels_mut(&mut out);
        out
    }

    fn visit_kernels_mut<'a>(&'a mut self, out: &mut Vec<&'a mut Kernel>) {
        match self {
            Skeleton::Seq(k) | Skeleton::Reduce(k) => out.push(k),
            Skeleton::Pipe(stages) => stages.iter_mut().for_each(|s| s.visit_kernels_mut(out)),
            Skeleton::Farm { worker, .. } | Skeleton::Map { worker, .. } => {
                worker.visit_kernels_mut(out)
            }
            Skeleton::Feedback { body, until, .. } => {
                body.visit_kernels_mut(out);
                out.push(until);
            }
        }
    }

    fn visit_kernels<'a>(&'a self, out: &mut Vec<&'a Kernel>) {
        match self {
            Skeleton::Seq(k) | Skeleton::Reduce(k) => out.push(k),
            Skeleton::Pipe(stages) => stages.iter().for_each(|s| s.visit_kernels(out)),
            Skeleton::Farm { worker, .. } | Skeleton::Map { worker, .. } => {
                worker.visit_kernels(out)
            }
            Skeleton::Feedback { body, until, .. } => {
                body.visit_kernels(out);
                out.push(until);
            }
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.args.is_empty() {
            let args: Vec<String> = self.args.iter().map(|a| a.to_string()).collect();
            write!(f, "({})", args.join(", "))?;
        }
        Ok(())
    }
}

impl fmt::Display for Skeleton {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skeleton::Seq(k) => write!(f, "seq({k})"),
            Skeleton::Pipe(stages) => {
                let s: Vec<String> = stages.iter().map(|s| s.to_string()).collect();
                write!(f, "pipe({})", s.join(", "))
            }
            Skeleton::Farm {
                worker,
                replicas,
                ordered,
            } => {
                write!(f, "farm({worker}")?;
                if let Some(n) = replicas {
                    write!(f, ", {n}")?;
                }
                if !ordered {
                    f.write_str(", unordered")?;
                }
                f.write_str(")")
            }
            Skeleton::Map { parts, worker } => write!(f, "map({parts}, {worker})"),
            Skeleton::Reduce(k) => write!(f, "reduce({k})"),
            Skeleton::Feedback {
                body,
                until,
                max_rounds,
            } => {
                write!(f, "feedback({body}, {until}")?;
                if *max_rounds != default_rounds() {
                    write!(f, ", {max_rounds}")?;
                }
                f.write_str(")")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested() -> Skeleton {
        Skeleton::pipe([
            Skeleton::farm(
                Skeleton::pipe([
                    Skeleton::seq(Kernel::new("square", [])),
                    Skeleton::map(3, Skeleton::seq(Kernel::new("erf_burn", [2.0]))),
                ]),
                Some(4),
            ),
            Skeleton::feedback(
                Skeleton::seq(Kernel::new("identity", [])),
                Kernel::new("fail", []),
            ),
            Skeleton::reduce(Kernel::new("sum", [])),
        ])
    }

    #[test]
    fn trees_survive_cbor() {
        let tree = nested();
        let mut bytes = Vec::new();
        ciborium::into_writer(&tree, &mut bytes).unwrap();
        let back: Skeleton = ciborium::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(back, tree);
    }

    #[test]
    fn kernels_are_listed_in_tree_order() {
        let tree = nested();
        let names: Vec<&str> = tree.kernels().iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["square", "erf_burn", "identity", "fail", "sum"]);
    }
}
