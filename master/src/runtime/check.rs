//! Checks a tree before a job sends anything: shapes the runtime cannot run
//! correctly are refused with the reason.

use super::JobError;
use skelpi_proto::skeleton::Skeleton;

/// Most replicas a farm may ask for.
pub const MAX_REPLICAS: u32 = 4096;
/// Most chunks a map may split an item into.
pub const MAX_PARTS: u32 = 1 << 20;
/// Deepest nesting of skeletons.
pub const MAX_DEPTH: usize = 64;

/// Refuses trees the runtime cannot run as written.
pub fn check(tree: &Skeleton) -> Result<(), JobError> {
    walk(tree, 0, None)
}

fn walk(tree: &Skeleton, depth: usize, replicated_by: Option<&str>) -> Result<(), JobError> {
    let invalid = |m: String| Err(JobError::Invalid(m));
    if depth > MAX_DEPTH {
        return invalid(format!("the tree nests deeper than {MAX_DEPTH} skeletons"));
    }
    match tree {
        Skeleton::Seq(_) => Ok(()),
        Skeleton::Reduce(k) => match replicated_by {
            Some(by) => invalid(format!(
                "reduce({k}) inside a {by}: each replica would reduce only the items it \
                 happens to get; put the reduce after the {by}"
            )),
            None => Ok(()),
        },
        Skeleton::Pipe(stages) => {
            if stages.is_empty() {
                return invalid("pipe() has no stages".into());
            }
            stages
                .iter()
                .try_for_each(|s| walk(s, depth + 1, replicated_by))
        }
        Skeleton::Farm {
            worker, replicas, ..
        } => {
            match replicas {
                Some(0) => return invalid(format!("{tree}: a farm needs at least one replica")),
                Some(n) if *n > MAX_REPLICAS => {
                    return invalid(format!("{tree}: at most {MAX_REPLICAS} replicas"));
                }
                _ => {}
            }
            walk(worker, depth + 1, Some("farm"))
        }
        Skeleton::Map { parts, worker } => {
            if *parts == 0 || *parts > MAX_PARTS {
                return invalid(format!("{tree}: a map splits into 1 to {MAX_PARTS} parts"));
            }
            walk(worker, depth + 1, Some("map"))
        }
        Skeleton::Feedback {
            body, max_rounds, ..
        } => {
            if *max_rounds == 0 {
                return invalid(format!("{tree}: feedback needs at least one round"));
            }
            walk(body, depth + 1, replicated_by.or(Some("feedback")))
        }
        other => invalid(format!("unsupported skeleton {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> String {
        let tree: Skeleton = text.parse().unwrap();
        check(&tree).unwrap_err().to_string()
    }

    #[test]
    fn refuses_what_would_hang_or_mislead() {
        assert!(refused("farm(reduce(sum), 1)").contains("put the reduce after the farm"));
        assert!(refused("map(4, pipe(seq(square), reduce(sum)))").contains("after the map"));
        assert!(refused("feedback(reduce(sum), above(1))").contains("feedback"));
        assert!(refused("farm(seq(x), 5000)").contains("at most 4096"));
        assert!(refused("map(0, seq(x))").contains("1 to"));
        let seq = Skeleton::seq(skelpi_proto::skeleton::Kernel::new("x", []));
        let deep = (0..70).fold(seq, |t, _| Skeleton::pipe([t]));
        assert!(check(&deep).unwrap_err().to_string().contains("deeper"));
        for ok in [
            "pipe(farm(seq(square)), reduce(sum))",
            "map(3, map(2, seq(square)))",
            "farm(feedback(seq(scale(0.5)), above(1)))",
        ] {
            check(&ok.parse().unwrap()).unwrap();
        }
    }
}
