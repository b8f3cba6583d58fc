//! Which agents offer the kernels a tree names. Agents say their kernels
//! in their handshake reply; a job runs only on the agents that offer
//! every kernel it names, and a job naming a kernel no agent offers is
//! refused before anything is sent.

use super::JobError;
use skelpi_proto::AgentInfo;
use skelpi_proto::skeleton::Skeleton;
use std::collections::BTreeSet;

/// Whether an agent offers `kernel`: it lists it, or lists a prefix of it
/// ending in `*` (`port:*`), or lists nothing (an older agent, which did
/// not say: it is given the benefit of the doubt).
pub fn offers(info: &AgentInfo, kernel: &str) -> bool {
    info.kernels.is_empty()
        || info
            .kernels
            .iter()
            .any(|k| k == kernel || k.strip_suffix('*').is_some_and(|p| kernel.starts_with(p)))
}

/// The agents (by position in `infos`) that offer every kernel of `tree`.
/// `Err` names a kernel no agent offers, with what each agent offers, or
/// says that no single agent offers them all.
pub fn able(tree: &Skeleton, infos: &[&AgentInfo]) -> Result<Vec<usize>, JobError> {
    if infos.is_empty() {
        // No agent at all: the job says so itself (`NoAgents`).
        return Ok(Vec::new());
    }
    let names: BTreeSet<&str> = tree
        .kernels()
        .into_iter()
        .map(|k| k.name.as_str())
        .collect();
    let offered = || {
        infos
            .iter()
            .map(|i| match i.kernels.is_empty() {
                true => format!("{} does not say", i.name),
                false => format!("{} has {}", i.name, i.kernels.join(", ")),
            })
            .collect::<Vec<_>>()
    };
    if let Some(missing) = names.iter().find(|n| !infos.iter().any(|i| offers(i, n))) {
        return Err(JobError::NoKernel {
            kernels: vec![(*missing).to_owned()],
            offered: offered(),
        });
    }
    let able: Vec<usize> = (0..infos.len())
        .filter(|&a| names.iter().all(|n| offers(infos[a], n)))
        .collect();
    if able.is_empty() {
        return Err(JobError::NoKernel {
            kernels: names.iter().map(|n| (*n).to_owned()).collect(),
            offered: offered(),
        });
    }
    Ok(able)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, kernels: &[&str]) -> AgentInfo {
        AgentInfo {
            id: "0".into(),
            name: name.into(),
            version: 1,
            arch: "x86_64".into(),
            cores: 1,
            memory_bytes: 0,
            port: 0,
            kernels: kernels.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    #[test]
    fn jobs_go_to_agents_offering_every_kernel_and_none_is_refused_by_name() {
        let (a, b, old) = (
            agent("a", &["square", "celsius"]),
            agent("b", &["square", "port:*"]),
            agent("old", &[]),
        );
        let tree: Skeleton = "pipe(seq(square), seq(celsius))".parse().unwrap();
        assert_eq!(able(&tree, &[&a, &b, &old]).unwrap(), [0, 2]);
        let tree: Skeleton = "farm(seq(port:filter.py))".parse().unwrap();
        assert_eq!(able(&tree, &[&a, &b]).unwrap(), [1]);
        let tree: Skeleton = "seq(nope)".parse().unwrap();
        let e = able(&tree, &[&a, &b]).unwrap_err().to_string();
        assert!(
            e.contains("nope") && e.contains("a has square, celsius; b has"),
            "{e}"
        );
        let tree: Skeleton = "pipe(seq(celsius), seq(port:x))".parse().unwrap();
        let e = able(&tree, &[&a, &b]).unwrap_err().to_string();
        assert!(e.contains("no agent offers all of celsius, port:x"), "{e}");
    }
}
