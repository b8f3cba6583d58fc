//! The board's health for `skelpi health`: read from `/proc` and `/sys`
//! (under a root directory, so tests read fixture files), and the agent's
//! own load. What the board does not expose is absent, never zero.

use crate::state::AgentState;
use skelpi_proto::health::HealthReport;
use std::path::Path;

/// What is read from the board's files.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Board {
    /// `/proc/device-tree/model`, else the DMI product name.
    pub model: Option<String>,
    /// Seconds since boot (`/proc/uptime`).
    pub uptime_s: Option<u64>,
    /// The 1-minute load average (`/proc/loadavg`).
    pub load_1m: Option<f64>,
    /// `MemTotal` and `MemAvailable` of `/proc/meminfo`, bytes.
    pub memory: (Option<u64>, Option<u64>),
    /// The CPU's thermal zone (`/sys/class/thermal`), degrees Celsius.
    pub cpu_temp_c: Option<f64>,
    /// The Raspberry Pi's under-voltage alarm, as bit 0 of the firmware's
    /// `get_throttled` word (its `rpi_volt` hwmon sensor).
    pub throttled: Option<u32>,
}

/// Files read at most this long (none of them is longer).
const MAX_FILE: u64 = 64 << 10;

fn read(root: &Path, path: &str) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(root.join(path))
        .ok()?
        .take(MAX_FILE)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// Reads the board's figures under `root` (`/` on a board).
pub fn read_board(root: &Path) -> Board {
    Board {
        model: model(root),
        uptime_s: first_number(root, "proc/uptime").map(|s| s as u64),
        load_1m: first_number(root, "proc/loadavg"),
        memory: (meminfo(root, "MemTotal:"), meminfo(root, "MemAvailable:")),
        cpu_temp_c: cpu_temp(root),
        throttled: under_voltage(root),
    }
}

/// The Pi's under-voltage alarm (`in0_lcrit_alarm` of the hwmon sensor
/// named `rpi_volt`) as bit 0 of a `get_throttled` word. Not the
/// firmware's own `get_throttled` file: reading it asks the firmware
/// and, on many kernels, logs a deprecation warning that taints them.
fn under_voltage(root: &Path) -> Option<u32> {
    let dir = root.join("sys/class/hwmon");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| std::fs::read_to_string(p.join("name")).is_ok_and(|n| n.trim() == "rpi_volt"))
        .and_then(|p| std::fs::read_to_string(p.join("in0_lcrit_alarm")).ok())
        .and_then(|t| t.trim().parse::<u32>().ok())
        .map(|alarm| u32::from(alarm != 0))
}

fn model(root: &Path) -> Option<String> {
    ["proc/device-tree/model", "sys/class/dmi/id/product_name"]
        .iter()
        .filter_map(|p| read(root, p))
        .map(|t| {
            t.trim_matches(|c: char| c == '\0' || c.is_whitespace())
                .to_owned()
        })
        .find(|t| !t.is_empty())
}

fn first_number(root: &Path, path: &str) -> Option<f64> {
    read(root, path)?.split_whitespace().next()?.parse().ok()
}

fn meminfo(root: &Path, key: &str) -> Option<u64> {
    let text = read(root, "proc/meminfo")?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The temperature of the thermal zone whose type names the CPU
/// (`cpu-thermal` on a Pi, `x86_pkg_temp` on a PC), else of the first.
fn cpu_temp(root: &Path) -> Option<f64> {
    let dir = root.join("sys/class/thermal");
    let mut zones: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("thermal_zone"))
        })
        .collect();
    zones.sort();
    let temp = |zone: &Path| -> Option<f64> {
        let milli: f64 = std::fs::read_to_string(zone.join("temp"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(milli / 1000.0)
    };
    let is_cpu = |zone: &&std::path::PathBuf| {
        std::fs::read_to_string(zone.join("type"))
            .is_ok_and(|t| t.contains("cpu") || t.contains("x86_pkg"))
    };
    zones
        .iter()
        .find(is_cpu)
        .and_then(|z| temp(z))
        .or_else(|| zones.iter().find_map(|z| temp(z)))
}

/// The report for a master: the board's figures (see [`read_board`])
/// and the agent's own.
pub fn report(state: &AgentState, board: Board) -> HealthReport {
    let (busy, queued) = state.workers.load();
    HealthReport {
        model: board.model,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_s: board.uptime_s,
        agent_uptime_s: state.started.elapsed().as_secs(),
        workers: state.workers.len() as u32,
        busy_workers: busy as u32,
        queued_calls: queued as u32,
        sessions: state.masters() as u32,
        load_1m: board.load_1m,
        memory_total: board.memory.0,
        memory_available: board.memory.1,
        cpu_temp_c: board.cpu_temp_c,
        throttled: board.throttled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(files: &[(&str, &str)]) -> std::path::PathBuf {
        let mut tag = [0u8; 6];
        getrandom::fill(&mut tag).unwrap();
        let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        let root = std::env::temp_dir().join(format!("skelpi-health-{tag}"));
        for (path, text) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        std::fs::create_dir_all(&root).unwrap();
        root
    }

    #[test]
    fn a_pi_s_files_read_as_its_figures() {
        let root = fixture(&[
            ("proc/device-tree/model", "Raspberry Pi 4 Model B Rev 1.4\0"),
            ("proc/uptime", "12345.67 40000.00\n"),
            ("proc/loadavg", "1.25 0.80 0.40 2/180 999\n"),
            (
                "proc/meminfo",
                "MemTotal:        3884096 kB\nMemFree:  100 kB\nMemAvailable:    3012000 kB\n",
            ),
            ("sys/class/thermal/thermal_zone0/type", "cpu-thermal\n"),
            ("sys/class/thermal/thermal_zone0/temp", "61834\n"),
            ("sys/class/hwmon/hwmon0/name", "cpu_thermal\n"),
            ("sys/class/hwmon/hwmon1/name", "rpi_volt\n"),
            ("sys/class/hwmon/hwmon1/in0_lcrit_alarm", "1\n"),
        ]);
        let b = read_board(&root);
        assert_eq!(b.model.as_deref(), Some("Raspberry Pi 4 Model B Rev 1.4"));
        assert_eq!(b.uptime_s, Some(12345));
        assert_eq!(b.load_1m, Some(1.25));
        assert_eq!(b.memory, (Some(3_884_096 * 1024), Some(3_012_000 * 1024)));
        assert_eq!(b.cpu_temp_c, Some(61.834));
        assert_eq!(b.throttled, Some(1), "under-voltage now");
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn what_a_board_lacks_is_absent_not_zero() {
        let root = fixture(&[
            (
                "sys/class/dmi/id/product_name",
                "Standard PC (Q35 + ICH9, 2009)\n",
            ),
            ("sys/class/thermal/thermal_zone0/type", "acpitz\n"),
            ("sys/class/thermal/thermal_zone1/type", "x86_pkg_temp\n"),
            ("sys/class/thermal/thermal_zone1/temp", "45000\n"),
            ("proc/meminfo", "MemTotal: 1000 kB\n"),
        ]);
        let b = read_board(&root);
        assert_eq!(b.model.as_deref(), Some("Standard PC (Q35 + ICH9, 2009)"));
        assert_eq!(b.cpu_temp_c, Some(45.0), "the CPU's zone, not the first");
        assert_eq!(b.memory, (Some(1000 * 1024), None));
        assert_eq!((b.uptime_s, b.load_1m, b.throttled), (None, None, None));
        let empty = fixture(&[]);
        assert_eq!(read_board(&empty), Board::default());
        let _ = std::fs::remove_dir_all(root);
        let _ = std::fs::remove_dir_all(empty);
    }

    #[test]
    fn this_machine_has_an_uptime_and_memory() {
        let b = read_board(Path::new("/"));
        assert!(b.uptime_s.is_some_and(|u| u > 0), "{b:?}");
        assert!(b.memory.0.is_some_and(|m| m > 64 << 20), "{b:?}");
        assert!(b.memory.1.is_some(), "{b:?}");
        assert!(b.load_1m.is_some(), "{b:?}");
    }
}
