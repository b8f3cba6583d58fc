//! Slow hosts: a CPU quota per lab host (a Pi 3 next to a Pi 5), as a
//! cgroup of its own (`skelpi-lab<id>-h<n>`) with the host's agent in it.
//! cgroup v2 (`cpu.max`) where the `cpu` controller is there, else v1's
//! `cpu` hierarchy (`cpu.cfs_quota_us`), as on hosts that still mount it.

use super::LabError;
use std::path::{Path, PathBuf};

/// The scheduler period the quota is a share of: short, so that a host
/// runs slowly all the time rather than at full speed then not at all
/// within each period (jobs of a few hundred milliseconds would see that).
const PERIOD_US: u64 = 10_000;

/// Where cgroup hierarchies are mounted.
const ROOT: &str = "/sys/fs/cgroup";

/// A host's quota: `--cpu-quota HOST=PCT`, PCT percent of one core.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// The host, from 1.
    pub host: usize,
    /// Percent of one core (e.g. 25; 200 is two cores).
    pub percent: f64,
}

impl std::str::FromStr for Quota {
    type Err = String;

    fn from_str(s: &str) -> Result<Quota, String> {
        let bad = || format!("{s:?}: expected HOST=PERCENT, e.g. 2=25 (host 2 gets 25% of a core)");
        let (host, pct) = s.split_once('=').ok_or_else(bad)?;
        let host: usize = host.trim().parse().map_err(|_| bad())?;
        let percent: f64 = pct
            .trim()
            .trim_end_matches('%')
            .parse()
            .map_err(|_| bad())?;
        if host == 0 {
            return Err(format!("{s:?}: hosts are numbered from 1"));
        }
        if !(1.0..=100_000.0).contains(&percent) {
            return Err(format!("{s:?}: the percentage must be from 1 to 100000"));
        }
        Ok(Quota { host, percent })
    }
}

/// The cgroup directory of host `n` of lab `id`, in the hierarchy found
/// here (v2 with `cpu`, else v1 `cpu`).
fn group(id: u8, n: usize) -> Result<(PathBuf, bool), LabError> {
    let name = format!("skelpi-lab{id}-h{n}");
    let controllers = std::fs::read_to_string(Path::new(ROOT).join("cgroup.controllers"));
    if controllers.is_ok_and(|c| c.split_whitespace().any(|w| w == "cpu")) {
        return Ok((Path::new(ROOT).join(name), true));
    }
    let v1 = Path::new(ROOT).join("cpu");
    if v1.join("cpu.cfs_quota_us").exists() {
        return Ok((v1.join(name), false));
    }
    Err(LabError::Invalid(
        "--cpu-quota needs the cgroup cpu controller (cgroup v2 with cpu enabled, or v1's \
         cpu hierarchy), which this machine does not mount"
            .into(),
    ))
}

fn write(path: &Path, text: &str) -> Result<(), LabError> {
    std::fs::write(path, text).map_err(|source| LabError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Puts process `pid` (all its threads) in host `n`'s cgroup, limited to
/// `percent` of one core.
pub fn limit(id: u8, n: usize, percent: f64, pid: u32) -> Result<PathBuf, LabError> {
    let (dir, v2) = group(id, n)?;
    std::fs::create_dir_all(&dir).map_err(|source| LabError::Io {
        path: dir.clone(),
        source,
    })?;
    let quota = (PERIOD_US as f64 * percent / 100.0).round() as u64;
    if v2 {
        // The root's children get the cpu controller only if it is enabled.
        let _ = write(&Path::new(ROOT).join("cgroup.subtree_control"), "+cpu");
        write(&dir.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?;
    } else {
        write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
        write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
    }
    write(&dir.join("cgroup.procs"), &pid.to_string())?;
    Ok(dir)
}

/// Removes lab `id`'s cgroups (their processes gone); returns how many.
pub fn remove(id: u8) -> usize {
    let prefix = format!("skelpi-lab{id}-h");
    let mut removed = 0;
    for parent in [Path::new(ROOT).to_owned(), Path::new(ROOT).join("cpu")] {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name
                .strip_prefix(&prefix)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if ours && std::fs::remove_dir(e.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::Quota;

    #[test]
    fn quotas_parse_and_bad_ones_say_what_was_expected() {
        let q: Quota = "2=25".parse().unwrap();
        assert_eq!((q.host, q.percent), (2, 25.0));
        let q: Quota = "1=50%".parse().unwrap();
        assert_eq!(q.percent, 50.0);
        for bad in ["2", "x=25", "2=fast", "0=25", "2=0", "2=-5"] {
            let e = bad.parse::<Quota>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }
}
