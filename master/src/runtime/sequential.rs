//! The skeleton semantics, evaluated in this process one kernel call at a
//! time: the reference the distributed runtime must agree with, and the
//! "best sequential" baseline of the benchmarks.
//!
//! It pairs reductions exactly as [`super::eval`] does, so that results are
//! identical to the last bit, not merely close.

use super::{Item, JobError, TaskError, split};
use skelpi_kernels::Registry;
use skelpi_kernels::call::call_kernel;
use skelpi_proto::Array;
use skelpi_proto::Shape;
use skelpi_proto::skeleton::{Kernel, Skeleton};

/// Evaluates `skel` on `inputs` with the kernels of `kernels`.
pub fn run(
    kernels: &Registry,
    skel: &Skeleton,
    inputs: Vec<Array>,
) -> Result<Vec<Array>, JobError> {
    let items = inputs
        .into_iter()
        .enumerate()
        .map(|(i, data)| Item {
            index: i as u64,
            input: i as u64,
            origin: format!("item {i}"),
            data,
        })
        .collect();
    Ok(eval(kernels, skel, items)?
        .into_iter()
        .map(|i| i.data)
        .collect())
}

fn eval(reg: &Registry, skel: &Skeleton, items: Vec<Item>) -> Result<Vec<Item>, JobError> {
    match skel {
        Skeleton::Seq(k) => items
            .into_iter()
            .map(|item| {
                let data = call(reg, &item.origin, k, item.data)?;
                Ok(Item { data, ..item })
            })
            .collect(),
        Skeleton::Pipe(stages) => stages
            .iter()
            .try_fold(items, |items, s| eval(reg, s, items)),
        Skeleton::Farm { worker, .. } => eval(reg, worker, items),
        Skeleton::Map { parts, worker } => items
            .into_iter()
            .map(|item| {
                let chunks = split(&item.data.data, *parts as usize)
                    .into_iter()
                    .enumerate()
                    .map(|(j, data)| Item {
                        index: j as u64,
                        input: item.input,
                        origin: format!("{} part {j}", item.origin),
                        data: Array::list(data),
                    })
                    .collect();
                let data: Vec<f64> = eval(reg, worker, chunks)?
                    .into_iter()
                    .flat_map(|c| c.data.data)
                    .collect();
                Ok(Item {
                    data: Array::list(data),
                    ..item
                })
            })
            .collect(),
        Skeleton::Reduce(k) => {
            let mut level: Vec<Array> = items.into_iter().map(|i| i.data).collect();
            if level.is_empty() {
                return Ok(Vec::new());
            }
            let mut depth = 0;
            loop {
                let single = level.len() == 1;
                let mut next = Vec::with_capacity(level.len().div_ceil(2));
                let mut it = level.into_iter();
                let mut pair = 0;
                while let Some(a) = it.next() {
                    match it.next() {
                        Some(b) => {
                            let origin = format!("reduce level {depth} pair {pair}");
                            next.push(call(reg, &origin, k, concat(a, b))?);
                            pair += 1;
                        }
                        None if single => {
                            let origin = format!("reduce level {depth} pair {pair}");
                            next.push(call(reg, &origin, k, a)?);
                        }
                        None => next.push(a),
                    }
                }
                if next.len() == 1 {
                    let data = next.pop().expect("one left");
                    return Ok(vec![Item {
                        index: 0,
                        input: 0,
                        origin: "reduce".into(),
                        data,
                    }]);
                }
                level = next;
                depth += 1;
            }
        }
        Skeleton::Feedback {
            body,
            until,
            max_rounds,
        } => items
            .into_iter()
            .map(|mut item| {
                let origin = item.origin.clone();
                for round in 0..*max_rounds {
                    let one = Item {
                        origin: format!("{origin} round {round}"),
                        ..item
                    };
                    let mut out = eval(reg, body, vec![one])?;
                    if out.len() != 1 {
                        return Err(JobError::feedback_count(body, out.len()));
                    }
                    let done = out.pop().expect("one item");
                    let verdict = call(reg, &done.origin, until, done.data.clone())?;
                    item = Item {
                        origin: origin.clone(),
                        ..done
                    };
                    if verdict.data.first().is_none_or(|&v| v <= 0.0) {
                        return Ok(item);
                    }
                }
                Err(JobError::feedback_endless(
                    &origin,
                    *max_rounds,
                    body,
                    until,
                ))
            })
            .collect(),
        other => Err(JobError::Invalid(format!("unsupported skeleton {other}"))),
    }
}

fn call(reg: &Registry, task: &str, k: &Kernel, input: Array) -> Result<Array, JobError> {
    let fail = |message: String, panicked: bool| {
        JobError::Task(TaskError {
            job: None,
            task: task.to_owned(),
            kernel: k.name.clone(),
            agent: "this process".into(),
            message,
            panicked,
        })
    };
    let kernel = reg
        .get(&k.name)
        .ok_or_else(|| fail(format!("no kernel {:?}", k.name), false))?;
    call_kernel(&*kernel, &k.args, input).map_err(|f| fail(f.message, f.panicked))
}

/// `a` followed by `b`, as a list.
pub(super) fn concat(mut a: Array, b: Array) -> Array {
    a.data.extend_from_slice(&b.data);
    a.shape = Shape::List(a.data.len() as u64);
    a
}
