//! The udev monitor, on a thread of its own: every processed block event bumps a generation
//! counter that waiters sleep on. A waiter reads the counter, then looks at sysfs and /dev, then
//! sleeps until the counter moves: an event between the look and the sleep cannot be lost.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// An owned summary of one udev event, kept for error messages and debugging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceEvent {
    pub(crate) action: String,
    pub(crate) kernel_name: String,
}

const RECENT: usize = 16;

#[derive(Default)]
pub(crate) struct DeviceEvents {
    state: Mutex<(u64, VecDeque<DeviceEvent>)>,
    changed: Condvar,
}

impl DeviceEvents {
    pub(crate) fn generation(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    pub(crate) fn publish(&self, event: DeviceEvent) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 += 1;
        if state.1.len() == RECENT {
            state.1.pop_front();
        }
        state.1.push_back(event);
        self.changed.notify_all();
    }

    /// Sleeps until the generation moves past `seen` or `deadline` passes. Returns false on
    /// timeout.
    pub(crate) fn wait_past(&self, seen: u64, deadline: Instant) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let timeout = deadline.saturating_duration_since(Instant::now());
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |s| s.0 == seen)
            .unwrap_or_else(|e| e.into_inner());
        state.0 != seen
    }

    pub(crate) fn recent(&self) -> Vec<DeviceEvent> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .iter()
            .cloned()
            .collect()
    }
}

/// Starts the monitor thread and returns once it is listening.
pub(crate) fn start(events: Arc<DeviceEvents>) -> std::io::Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    std::thread::Builder::new().name("udev-monitor".into()).spawn(move || {
        let socket = match udev::MonitorBuilder::new()
            .and_then(|b| b.match_subsystem("block"))
            .and_then(|b| b.listen())
        {
            Ok(socket) => socket,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let _ = ready_tx.send(Ok(()));
        loop {
            let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
            if let Err(e) = poll(&mut fds, PollTimeout::NONE) {
                if e == nix::errno::Errno::EINTR {
                    continue;
                }
                tracing::error!(error = %e, "the udev monitor failed; device waits will time out");
                return;
            }
            for event in socket.iter() {
                let summary = DeviceEvent {
                    action: event.event_type().to_string(),
                    kernel_name: event.sysname().to_string_lossy().into_owned(),
                };
                tracing::trace!(
                    action = %summary.action,
                    device = %summary.kernel_name,
                    "udev event"
                );
                events.publish(summary);
            }
        }
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| std::io::Error::other("the udev monitor thread did not start"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_wakes_on_an_event_published_after_it_looked() {
        let events = Arc::new(DeviceEvents::default());
        let seen = events.generation();
        let publisher = events.clone();
        let thread = std::thread::spawn(move || {
            publisher.publish(DeviceEvent {
                action: "add".into(),
                kernel_name: "sdb".into(),
            })
        });
        assert!(events.wait_past(seen, Instant::now() + Duration::from_secs(5)));
        thread.join().unwrap();
        assert_eq!(events.recent()[0].kernel_name, "sdb");
        // Already past: returns at once, without sleeping.
        assert!(events.wait_past(seen, Instant::now()));
        assert!(!events.wait_past(
            events.generation(),
            Instant::now() + Duration::from_millis(10)
        ));
    }
}
