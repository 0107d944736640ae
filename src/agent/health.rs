//! Path health of attached volumes. A session that lost its connection is not a detach: the
//! kernel keeps it and logs in again when the target answers, so the volume stays attached and
//! is reported degraded meanwhile, with what is down.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::Event;
use super::executor::Agent;
use crate::backend::{Attachment, HostError};
use crate::protocol::{ErrorReport, VolumeState};

/// How often attached volumes' paths are looked at (sysfs reads only).
pub(crate) const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// What one look found, per attached volume: why it is degraded, `None` when every path is up,
/// or why its paths could not be read.
pub(crate) type Health = BTreeMap<Uuid, Result<Option<HostError>, HostError>>;

fn is_attached(state: VolumeState) -> bool {
    matches!(state, VolumeState::Attached | VolumeState::Mounted)
}

impl Agent {
    /// Looks at the paths of every attached volume, off the main loop; one look at a time.
    /// Returns whether the volumes' health changed (none attached: nothing is degraded).
    pub(crate) fn check_health(&mut self, events: &mpsc::Sender<Event>) -> bool {
        if self.health_checking {
            return false;
        }
        let attached: Vec<(Uuid, Attachment)> = self
            .volumes
            .values()
            .filter(|v| is_attached(v.state()))
            .filter_map(|v| Some((v.target_uuid, v.attachment.clone()?)))
            .collect();
        if attached.is_empty() {
            let changed = !self.degraded.is_empty();
            self.degraded.clear();
            return changed;
        }
        self.health_checking = true;
        let backends = self.backends.clone();
        let events = events.clone();
        tokio::task::spawn_blocking(move || {
            let found = attached
                .iter()
                .map(|(uuid, a)| (*uuid, backends.degraded(a)))
                .collect();
            let _ = events.blocking_send(Event::Health(found));
        });
        false
    }

    /// Takes in what a look found; says each change in the log once. Returns whether a
    /// volume's health changed.
    pub(crate) fn health_found(&mut self, found: Health) -> bool {
        self.health_checking = false;
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
