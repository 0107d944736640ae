//! systemd notifications, one line each. Without a notification socket (not under systemd)
//! they do nothing.

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// The watchdog's clock: ticks at half of `WatchdogSec=`, on a schedule of its own (events
/// in between do not push it back); never ticks when the watchdog is off.
pub struct Watchdog(Option<tokio::time::Interval>);

impl Watchdog {
    /// Must be called inside the runtime.
    pub fn from_env() -> Self {
        Self(sd_notify::watchdog_enabled().map(|timeout| {
            let mut interval = tokio::time::interval(timeout / 2);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        }))
    }

    pub async fn tick(&mut self) {
        match &mut self.0 {
            Some(interval) => {
                interval.tick().await;
            }
            None => std::future::pending().await,
        }
    }
}
