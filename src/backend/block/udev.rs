//! The udev monitor, on a thread of its own: every processed block event bumps a generation
//! counter that waiters sleep on. A waiter reads the counter, then looks at sysfs and /dev, then
//! sleeps until the counter moves: an event between the look and the sleep cannot be lost.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// How often the monitor was opened again after it failed, since the agent started.
static MONITOR_RESTARTS: AtomicU64 = AtomicU64::new(0);

/// Restarts of the udev monitor since the agent started (`tether_agent_udev_monitor_restarts`).
pub fn monitor_restarts() -> u64 {
    MONITOR_RESTARTS.load(Ordering::Relaxed)
}

/// Where the monitor thread reads events from: udev's netlink socket, or a test's script.
trait EventSource {
    /// Blocks until events arrive; an error means the source is broken and must be reopened.
    fn next_events(&mut self) -> std::io::Result<Vec<DeviceEvent>>;
}

impl EventSource for udev::MonitorSocket {
    fn next_events(&mut self) -> std::io::Result<Vec<DeviceEvent>> {
        loop {
            let mut fds = [PollFd::new(self.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self
            .iter()
            .map(|event| DeviceEvent {
                action: event.event_type().to_string(),
                kernel_name: event.sysname().to_string_lossy().into_owned(),
            })
            .collect())
    }
}

fn open_udev() -> std::io::Result<udev::MonitorSocket> {
    udev::MonitorBuilder::new()
        .and_then(|b| b.match_subsystem("block"))
        .and_then(|b| b.listen())
}

/// Starts the monitor thread and returns once it is listening.
pub(crate) fn start(events: Arc<DeviceEvents>) -> std::io::Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    std::thread::Builder::new()
        .name("udev-monitor".into())
        .spawn(move || match open_udev() {
            Ok(socket) => {
                let _ = ready_tx.send(Ok(()));
                monitor(socket, open_udev, &events, RESTART_PAUSE_MAX);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })?;
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| std::io::Error::other("the udev monitor thread did not start"))?
}

/// The longest pause between two attempts to open the monitor again.
const RESTART_PAUSE_MAX: Duration = Duration::from_secs(5);

/// Publishes the source's events for ever. A failed source is opened again (after a pause that
/// grows to `pause_max` while opening fails), each restart logged and counted; the generation is
/// bumped after it, because events may have been lost meanwhile and waiters must look again.
fn monitor<S: EventSource>(
    mut source: S,
    mut open: impl FnMut() -> std::io::Result<S>,
    events: &DeviceEvents,
    pause_max: Duration,
) {
    loop {
        let error = loop {
            match source.next_events() {
                Ok(batch) => {
                    for event in batch {
                        tracing::trace!(
                            action = %event.action,
                            device = %event.kernel_name,
                            "udev event"
                        );
                        events.publish(event);
                    }
                }
                Err(e) => break e,
            }
        };
        let restarts = MONITOR_RESTARTS.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::error!(
            error = %error,
            restarts,
            "the udev monitor failed; opening it again"
        );
        let mut pause = Duration::from_millis(50).min(pause_max);
        source = loop {
            std::thread::sleep(pause);
            match open() {
                Ok(source) => break source,
                Err(e) => {
                    tracing::error!(error = %e, "cannot open the udev monitor again");
                    pause = (pause * 2).min(pause_max);
                }
            }
        };
        tracing::info!(restarts, "the udev monitor listens again");
        events.publish(DeviceEvent {
            action: "monitor-restarted".into(),
            kernel_name: String::new(),
        });
    }
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

    /// A scripted source: its events, then an error, as a broken netlink socket gives.
    struct Script(Vec<std::io::Result<Vec<DeviceEvent>>>);

    impl EventSource for Script {
        fn next_events(&mut self) -> std::io::Result<Vec<DeviceEvent>> {
            if self.0.is_empty() {
                // The last source: park, as a quiet socket does.
                std::thread::sleep(Duration::from_secs(3600));
            }
            self.0.remove(0)
        }
    }

    fn add(name: &str) -> DeviceEvent {
        DeviceEvent {
            action: "add".into(),
            kernel_name: name.into(),
        }
    }

    #[test]
    fn a_failed_monitor_is_opened_again_and_counted() {
        let events = Arc::new(DeviceEvents::default());
        let before = monitor_restarts();
        let first = Script(vec![
            Ok(vec![add("sdb")]),
            Err(std::io::Error::other("ENOBUFS")),
        ]);
        // Opening fails once, then gives a source that delivers sdc.
        let mut opens = vec![
            Err(std::io::Error::other("no netlink")),
            Ok(Script(vec![Ok(vec![add("sdc")])])),
        ];
        let watched = events.clone();
        std::thread::spawn(move || {
            monitor(
                first,
                move || opens.remove(0),
                &watched,
                Duration::from_millis(20),
            )
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while !events.recent().iter().any(|e| e.kernel_name == "sdc") {
            assert!(
                Instant::now() < deadline,
                "no event after the restart: {:?}",
                events.recent()
            );
            events.wait_past(
                events.generation(),
                Instant::now() + Duration::from_millis(50),
            );
        }
        let names: Vec<_> = events
            .recent()
            .into_iter()
            .map(|e| e.action + ":" + &e.kernel_name)
            .collect();
        assert_eq!(names, ["add:sdb", "monitor-restarted:", "add:sdc"]);
        assert!(monitor_restarts() > before);
    }
}
