//! systemd's service protocol (sd_notify(3)) for both daemons, so their units
//! can be `Type=notify` with `WatchdogSec=`: `READY=1` once start-up is done,
//! `WATCHDOG=1` from the main loop at half the watchdog's timeout (a loop that
//! hangs stops the pings and systemd restarts the service), `STOPPING=1` when
//! a clean stop begins. Outside systemd (no `NOTIFY_SOCKET`) every call does
//! nothing; a failed send is logged once and never stops the daemon.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

static SEND_FAILED: AtomicBool = AtomicBool::new(false);

fn send(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state)
        && !SEND_FAILED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(error = %e, "Cannot tell systemd the service's state (NOTIFY_SOCKET); \
            with Type=notify the unit will time out. Said once.");
    }
}

/// Start-up is done: `status` is what `systemctl status` shows.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A clean stop has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The main loop is alive.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often the main loop must call [`watchdog`]: half the unit's
/// `WatchdogSec`, or `None` when the unit has no watchdog for this process.
#[must_use]
pub fn watchdog_every() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero()).map(|d| d / 2)
}
