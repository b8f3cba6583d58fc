//! A board's health, as its agent reports it to an authenticated master
//! (`skelpi health`): what board it is, how busy, how hot, whether its
//! firmware throttles it. A figure the board does not expose is absent,
//! never zero.

use serde::{Deserialize, Serialize};

/// What an agent says about its board and itself, answering
/// [`crate::Message::HealthQuery`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    /// The board's model (`/proc/device-tree/model`, e.g. "Raspberry Pi 4
    /// Model B Rev 1.4", or the DMI product name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The agent's version.
    pub version: String,
    /// Seconds since the board booted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_s: Option<u64>,
    /// Seconds since the agent started.
    pub agent_uptime_s: u64,
    /// Worker threads.
    pub workers: u32,
    /// Worker threads running a kernel now.
    pub busy_workers: u32,
    /// Kernel calls waiting for a worker.
    pub queued_calls: u32,
    /// Sessions open now: masters (the one asking included) and the
    /// pipeline stages of other agents sending to this one.
    pub sessions: u32,
    /// The 1-minute load average.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_1m: Option<f64>,
    /// Memory, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_total: Option<u64>,
    /// Memory available to new work, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_available: Option<u64>,
    /// The CPU's temperature, degrees Celsius.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_temp_c: Option<f64>,
    /// The Raspberry Pi firmware's flags in the bits of its
    /// `get_throttled` word (see [`Throttled`]), where the board exposes
    /// them: today the under-voltage alarm of its `rpi_volt` hwmon sensor
    /// (bit 0), which the kernel keeps without asking the firmware.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled: Option<u32>,
}

/// The bits of a Raspberry Pi's `get_throttled` word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled(pub u32);

impl Throttled {
    /// What the flags say, now and since boot, in words; empty when none
    /// is set.
    pub fn describe(self) -> Vec<&'static str> {
        const BITS: [(u32, &str); 8] = [
            (0, "under-voltage now"),
            (1, "frequency capped now"),
            (2, "throttled now"),
            (3, "soft temperature limit now"),
            (16, "under-voltage since boot"),
            (17, "frequency capped since boot"),
            (18, "throttled since boot"),
            (19, "soft temperature limit since boot"),
        ];
        BITS.iter()
            .filter(|(bit, _)| self.0 & (1 << bit) != 0)
            .map(|(_, what)| *what)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_flags_read_as_words() {
        assert!(Throttled(0).describe().is_empty());
        assert_eq!(
            Throttled(0x50005).describe(),
            [
                "under-voltage now",
                "throttled now",
                "under-voltage since boot",
                "throttled since boot"
            ]
        );
    }
}
