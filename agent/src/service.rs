//! Telling systemd how the agent is doing (`Type=notify`): ready once it
//! listens, watchdog pings while its executor runs, stopping on shutdown.
//! Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.

use sd_notify::NotifyState;
use std::time::Duration;

/// Reports readiness, with a status line for `systemctl status`.
pub fn ready(status: &str) {
    if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(status)]) {
        log::warn!("cannot notify systemd: {e}");
    }
}

/// Reports that a clean shutdown has begun.
pub fn stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

/// Pings the watchdog once (before the agent replaces itself with
/// another binary, which pings it on its own once it runs).
pub fn watchdog_ping() {
    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
}

/// The interval at which the watchdog wants pings (half its timeout), if
/// systemd enabled one for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec) / 2)
    } else {
        None
    }
}

/// Pings the watchdog forever from the executor that serves masters: if it
/// stalls, systemd restarts the agent. Never completes; does nothing
/// without a watchdog.
pub async fn watchdog() {
    let Some(every) = watchdog_interval() else {
        return std::future::pending().await;
    };
    loop {
        let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
        async_io::Timer::after(every).await;
    }
}
