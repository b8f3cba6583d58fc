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
    offers_any(&info.kernels, kernel)
}

/// [`offers`], for an agent that listed `kernels`.
pub fn offers_any(kernels: &[String], kernel: &str) -> bool {
    kernels.is_empty()
        || kernels
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
    let offered = || offered_by(infos);
    if let Some(missing) = names.iter().find(|n| !infos.iter().any(|i| offers(i, n))) {
        return Err(JobError::NoKernel {
            kernels: vec![(*missing).to_owned()],
            offered: offered(),
            suggestion: closest(missing, infos),
        });
    }
    let able: Vec<usize> = (0..infos.len())
        .filter(|&a| names.iter().all(|n| offers(infos[a], n)))
        .collect();
    if able.is_empty() {
        return Err(JobError::NoKernel {
            kernels: names.iter().map(|n| (*n).to_owned()).collect(),
            offered: offered(),
            suggestion: None,
        });
    }
    Ok(able)
}

/// What the agents offer, once per set of kernels: `a, b and c offer k1,
/// k2` (at most three agents named, then how many more).
fn offered_by(infos: &[&AgentInfo]) -> Vec<String> {
    let mut groups: Vec<(&[String], Vec<&str>)> = Vec::new();
    for info in infos {
        match groups
            .iter_mut()
            .find(|(k, _)| *k == info.kernels.as_slice())
        {
            Some((_, names)) => names.push(&info.name),
            None => groups.push((&info.kernels, vec![&info.name])),
        }
    }
    groups
        .into_iter()
        .map(|(kernels, names)| {
            let who = match names.as_slice() {
                [one] => (*one).to_owned(),
                [rest @ .., last] if names.len() <= 3 => format!("{} and {last}", rest.join(", ")),
                _ => format!("{} and {} more", names[..3].join(", "), names.len() - 3),
            };
            match (kernels.is_empty(), names.len()) {
                (true, 1) => format!("{who} does not say what it offers"),
                (true, _) => format!("{who} do not say what they offer"),
                (false, 1) => format!("{who} offers {}", kernels.join(", ")),
                (false, _) => format!("{who} offer {}", kernels.join(", ")),
            }
        })
        .collect()
}

/// The offered kernel whose name is closest to `missing`, if one is close
/// (as clap suggests subcommands: Jaro similarity above 0.7).
fn closest(missing: &str, infos: &[&AgentInfo]) -> Option<String> {
    infos
        .iter()
        .flat_map(|i| &i.kernels)
        .map(|k| (strsim::jaro(missing, k), k))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.clone())
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
            build: None,
            queued_per_worker: 0,
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
            e.contains("nope") && e.contains("a offers square, celsius; b offers"),
            "{e}"
        );
        assert!(!e.contains("did you mean"), "{e}");
        let tree: Skeleton = "pipe(seq(celsius), seq(port:x))".parse().unwrap();
        let e = able(&tree, &[&a, &b]).unwrap_err().to_string();
        assert!(e.contains("no agent offers all of celsius, port:x"), "{e}");
    }

    #[test]
    fn a_kernel_typo_gets_the_closest_name_and_the_kernels_once_per_set() {
        let same = ["above", "square", "sum"];
        let pool: Vec<AgentInfo> = (0..5).map(|i| agent(&format!("pi-{i}"), &same)).collect();
        let other = agent("x86", &["square", "celsius"]);
        let mut infos: Vec<&AgentInfo> = pool.iter().collect();
        let tree: Skeleton = "farm(seq(sqare))".parse().unwrap();
        let e = able(&tree, &infos).unwrap_err().to_string();
        assert_eq!(
            e,
            "no agent of the pool offers kernel sqare (did you mean square?): \
             pi-0, pi-1, pi-2 and 2 more offer above, square, sum"
        );
        infos.truncate(2);
        infos.push(&other);
        let tree: Skeleton = "seq(celsus)".parse().unwrap();
        let e = able(&tree, &infos).unwrap_err().to_string();
        assert_eq!(
            e,
            "no agent of the pool offers kernel celsus (did you mean celsius?): \
             pi-0 and pi-1 offer above, square, sum; x86 offers square, celsius"
        );
    }
}
