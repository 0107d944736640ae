//! Path health of attached volumes. A session that lost its connection is not a detach: the
//! kernel keeps it and logs in again when the target answers, so the volume stays attached and
//! is reported degraded meanwhile, with what is down.

use std::collections::BTreeMap;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::Event;
use super::backends::Backends;
use super::executor::Agent;
use crate::backend::{Attachment, HostError};
use crate::protocol::{ErrorReport, VolumeState};

/// How often attached volumes' paths are looked at (sysfs reads only).
pub(crate) const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// What one look found, per attached volume: why it is degraded, `None` when every path is up,
/// or why its paths could not be read.
pub(crate) type Health = BTreeMap<Uuid, Result<Option<HostError>, HostError>>;

/// The attached volumes whose paths the watcher looks at, as the main loop last saw them.
pub(crate) type Watched = Vec<(Uuid, Attachment)>;

fn is_attached(state: VolumeState) -> bool {
    matches!(state, VolumeState::Attached | VolumeState::Mounted)
}

/// Starts the path watcher: a thread of its own, so that a sysfs read that hangs stops the
/// watcher and never the main loop. It looks every `interval` and wakes the main loop only
/// when what it found differs from its last look: an idle agent's loop sleeps through it.
/// Ends once the main loop is gone.
pub(crate) fn watch_paths(
    backends: Backends,
    watched: watch::Receiver<Watched>,
    events: mpsc::Sender<Event>,
    interval: Duration,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("path-health".into())
        .spawn(move || {
            let mut last = Health::new();
            loop {
                std::thread::sleep(interval);
                if events.is_closed() {
                    return;
                }
                // A copy: the main loop must never wait for a look to finish.
                let volumes = watched.borrow().clone();
                let found: Health = volumes
                    .iter()
                    .map(|(uuid, attachment)| (*uuid, backends.degraded(attachment)))
                    .collect();
                if found == last {
                    continue;
                }
                if events.blocking_send(Event::Health(found.clone())).is_err() {
                    return;
                }
                last = found;
            }
        })
}

impl Agent {
    /// The attached volumes, for the path watcher.
    pub(crate) fn watched(&self) -> Watched {
        self.attached().map(|(uuid, a)| (uuid, a.clone())).collect()
    }

    /// Tells the path watcher of a change in the attached volumes; copies them only then.
    pub(crate) fn publish_watched(&self, watched: &watch::Sender<Watched>) {
        watched.send_if_modified(|w| {
            let same = w.iter().map(|(uuid, a)| (*uuid, a)).eq(self.attached());
            if !same {
                *w = self.watched();
            }
            !same
        });
    }

    fn attached(&self) -> impl Iterator<Item = (Uuid, &Attachment)> {
        self.volumes
            .values()
            .filter(|v| is_attached(v.state()))
            .filter_map(|v| Some((v.target_uuid, v.attachment.as_ref()?)))
    }

    /// Takes in what a look found; says each change in the log once. Returns whether a
    /// volume's health changed.
    pub(crate) fn health_found(&mut self, found: Health) -> bool {
        let before = self.degraded.clone();
        for (uuid, result) in found {
            let Some(volume) = self.volumes.get(&uuid) else {
                continue;
            };
            let volume_id = volume.volume_id.clone();
            match result {
                Ok(Some(why)) => {
                    let report = ErrorReport {
                        kind: why.kind.to_string(),
                        message: why.message.clone(),
                    };
                    if self.degraded.get(&uuid) != Some(&report) {
                        tracing::warn!(
                            target_uuid = %uuid,
                            volume_id,
                            kind = %why.kind,
                            reason = %why,
                            "volume degraded; it stays attached"
                        );
                    }
                    self.degraded.insert(uuid, report);
                }
                Ok(None) => {
                    if self.degraded.remove(&uuid).is_some() {
                        tracing::info!(
                            target_uuid = %uuid,
                            volume_id,
                            "every path of the volume is up again",
                        );
                    }
                }
                Err(e) => tracing::debug!(
                    target_uuid = %uuid,
                    kind = %e.kind,
                    error = %e,
                    "cannot read the volume's paths; its health is left as it was"
                ),
            }
        }
        let volumes = &self.volumes;
        self.degraded
            .retain(|uuid, _| volumes.get(uuid).is_some_and(|v| is_attached(v.state())));
        self.metrics.set_degraded(self.degraded.len());
        self.degraded != before
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::simulated::SimKernel;
    use crate::backend::{BackendAttachment, BlockDevice, IscsiAttachment, IscsiPathAttachment};
    use crate::protocol::target::{SessionKey, parse_portal};

    const PORTAL: &str = "192.0.2.10:3260";
    const IQN: &str = "iqn.2003-01.org.example:health";

    fn one_lun() -> Attachment {
        let path = IscsiPathAttachment {
            session: SessionKey::new(&parse_portal(PORTAL).unwrap(), IQN),
            lun: 0,
            kernel_name: "sdb".into(),
            session_created: true,
            device_created: false,
        };
        Attachment {
            device: BlockDevice::none(),
            paths: vec!["/dev/sdb".into()],
            backend: BackendAttachment::Iscsi(IscsiAttachment {
                paths: vec![path],
                multipath: None,
            }),
            mount: None,
        }
    }

    /// The next health event within `within`, or `None`.
    fn next(events: &mut mpsc::Receiver<Event>, within: Duration) -> Option<Health> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            match events.try_recv() {
                Ok(Event::Health(found)) => return Some(found),
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        None
    }

    #[test]
    fn the_watcher_wakes_the_loop_only_when_what_it_finds_changes() {
        let kernel = Arc::new(SimKernel::default());
        let uuid = Uuid::new_v4();
        let (watched_tx, watched) = watch::channel(vec![(uuid, one_lun())]);
        let (events_tx, mut events) = mpsc::channel(16);
        let interval = Duration::from_millis(20);
        let backends = Backends::simulated(kernel.clone());
        let thread = watch_paths(backends, watched, events_tx, interval).unwrap();

        let found = next(&mut events, Duration::from_secs(5)).expect("the first look is news");
        let degraded = found[&uuid]
            .as_ref()
            .unwrap()
            .as_ref()
            .expect("no session: degraded");
        assert!(degraded.message.contains(IQN), "{}", degraded.message);
        // Ten looks that find the same: the loop is not woken.
        assert_eq!(next(&mut events, interval * 10), None);

        kernel.login_by_hand(PORTAL, IQN, &[0]);
        let found = next(&mut events, Duration::from_secs(5)).expect("the path is back");
        assert_eq!(found[&uuid], Ok(None));
        assert_eq!(next(&mut events, interval * 10), None);

        watched_tx.send_replace(Vec::new());
        let found = next(&mut events, Duration::from_secs(5)).expect("nothing attached");
        assert!(found.is_empty());

        drop(events);
        thread
            .join()
            .expect("the watcher ends once the main loop is gone");
    }
}
