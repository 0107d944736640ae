//! The executor: the main loop's state, which applies reconcile's actions through
//! [`apply`](super::apply), runs the host operations they start on blocking threads, and turns
//! their results into outcomes, logs, metrics, the ownership record and the status file.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::apply::{self, HostOp, Outcome, Volumes};
use super::backends::{AttachFailure, Backends};
use super::client::InUse;
use super::metrics::{AgentMetrics, DetachResult};
use super::reconcile::{Action, Assignment, Desired, DesiredTarget};
use super::record::{Intent, LocalStatus, OwnedVolume, Record, StateDir};
use super::recovery::Recovered;
use super::target_cache::TargetCache;
use super::tasks::{NodeLogin, jitter};
use super::volume::{Millis, Volume, retry_delay};
use super::{AGENT_VERSION, Event};
use crate::backend::{Attachment, Creations, DetachOutcome, ErrorKind, HostError};
use crate::config::AgentConfig;
use crate::protocol::target::TargetSpec;
use crate::protocol::{
    Connector, ErrorReport, ForeignAttachment, Heartbeat, VolumeReport, VolumeTarget, timestamp,
};

/// What a host operation returned.
pub(crate) enum OpResult {
    Attached(Result<Attachment, AttachFailure>),
    Detached(Result<DetachOutcome, HostError>),
    /// The device's new size, or why it did not grow to `size_bytes`.
    Grown {
        result: Result<u64, HostError>,
        size_bytes: u64,
    },
}

pub(crate) struct Agent {
    pub(crate) volumes: Volumes,
    pub(crate) desired: Desired,
    pub(crate) backends: Backends,
    pub(crate) config: AgentConfig,
    pub(crate) state: StateDir,
    pub(crate) foreign: Vec<ForeignAttachment>,
    pub(crate) connectors: Vec<Connector>,
    /// Host operations started and not yet finished.
    pub(crate) in_flight: usize,
    pub(crate) conductor_note: String,
    /// The conductor the HTTP client talks to, for the status file.
    pub(crate) conductor: InUse,
    pub(crate) node: Option<NodeLogin>,
    pub(crate) metrics: Arc<AgentMetrics>,
    /// Set while the ownership record cannot be written: no attach starts meanwhile, since
    /// what it attached could not be recorded as the agent's.
    record_unwritable: Option<String>,
    /// Attaches under way, each recorded before it starts with what it may create.
    intents: BTreeMap<Uuid, Intent>,
    /// What was last written, so that a pass that changed nothing writes nothing.
    written_record: Option<Record>,
    written_status: Option<(String, InUse, Heartbeat)>,
    /// The crash point of the fault matrix to reach once the next record write is done.
    crash_after_write: Option<&'static str>,
    /// Attached volumes with a path down, and why (see [`super::health`]).
    pub(crate) degraded: BTreeMap<Uuid, ErrorReport>,
    /// The node's cache of its volumes' targets; `None` when `offline_reattach` is off.
    target_cache: Option<TargetCache>,
    /// What the cache holds, so that an unchanged target is not written again.
    cached: BTreeMap<Uuid, VolumeTarget>,
    /// Attaches of remembered targets started before the conductor answered and not finished:
    /// the agent is ready (for units ordered after it) once there are none.
    pub(crate) offline_pending: BTreeSet<Uuid>,
}

impl Agent {
    /// The agent before lookup, with the volumes recovered from the record; they show in the
    /// status file and metrics while the conductor is looked up.
    pub(crate) fn new(
        recovered: Recovered,
        backends: Backends,
        config: AgentConfig,
        state: StateDir,
        connectors: Vec<Connector>,
        metrics: Arc<AgentMetrics>,
        conductor: InUse,
    ) -> Self {
        let mut agent = Self {
            volumes: recovered.volumes,
            desired: Desired::Unknown,
            backends,
            config,
            state,
            foreign: Vec::new(),
            connectors,
            in_flight: 0,
            conductor_note: "not contacted yet".into(),
            conductor,
            node: None,
            metrics,
            record_unwritable: None,
            intents: recovered.unresolved,
            written_record: None,
            written_status: None,
            crash_after_write: None,
            degraded: BTreeMap::new(),
            target_cache: None,
            cached: BTreeMap::new(),
            offline_pending: BTreeSet::new(),
        };
        let cache = TargetCache::new(&agent.config.state_dir);
        if agent.config.offline_reattach {
            agent.target_cache = Some(cache);
        } else if let Err(e) = cache.clear() {
            tracing::error!(
                error = %e,
                "agent.offline_reattach is off, but the target cache cannot be removed; \
                 remove it by hand"
            );
        }
        agent.persist();
        let report = agent.report();
        agent.publish_status(&report);
        agent
            .metrics
            .set_volumes(agent.volumes.values().map(Volume::state));
        agent
    }

    /// Starts with the targets the node's cache remembers for the volumes the agent owned:
    /// those that are gone from the host attach again before the conductor answers.
    pub(crate) fn remember(&mut self, targets: Vec<DesiredTarget>) {
        if targets.is_empty() {
            return;
        }
        tracing::info!(
            volumes = targets.len(),
            "attaching the volumes this node had again, from its target cache, before the \
             conductor answers; they stay unconfirmed until it does"
        );
        self.cached = targets.iter().map(|t| (t.uuid, t.source.clone())).collect();
        self.conductor_note =
            "not answering yet; volumes attached again from the node's target cache".into();
        self.desired = Desired::Remembered(Assignment {
            generation: 0,
            targets,
        });
    }

    /// Keeps the assigned target of an owned volume in the node's cache, when it changed.
    fn cache_target(&mut self, uuid: Uuid) {
        let Some(cache) = &self.target_cache else {
            return;
        };
        let Some(target) = self.desired.target(uuid) else {
            return;
        };
        if self.cached.get(&uuid) == Some(&target.source) {
            return;
        }
        match cache.save(&target.source) {
            Ok(()) => {
                self.cached.insert(uuid, target.source.clone());
            }
            Err(e) => tracing::warn!(
                target_uuid = %uuid,
                error = %e,
                "cannot keep the target in the node's target cache; after a reboot this volume \
                 attaches once the conductor answers"
            ),
        }
    }

    /// Removes a volume the agent no longer has from the node's cache.
    fn uncache_target(&mut self, uuid: Uuid) {
        self.cached.remove(&uuid);
        let Some(cache) = &self.target_cache else {
            return;
        };
        if let Err(e) = cache.remove(uuid) {
            tracing::warn!(
                target_uuid = %uuid,
                error = %e,
                "cannot remove a detached volume's target from the node's target cache"
            );
        }
    }

    pub(crate) fn looked_up(&mut self, node: NodeLogin) {
        self.node = Some(node);
        self.conductor_note = "lookup succeeded".into();
    }

    /// Makes the current state known: the record, metrics, the heartbeat (when it changed)
    /// and the status file.
    pub(crate) fn publish(&mut self, reports: &watch::Sender<Heartbeat>) {
        self.persist();
        self.metrics
            .set_volumes(self.volumes.values().map(Volume::state));
        let report = self.report();
        reports.send_if_modified(|current| {
            let changed = *current != report;
            *current = report.clone();
            changed
        });
        self.publish_status(&report);
    }

    pub(crate) fn apply_assignment(&mut self, assignment: Assignment) {
        tracing::info!(
            generation = assignment.generation,
            targets = assignment.targets.len(),
            "assignment received"
        );
        self.conductor_note = format!("assignment generation {}", assignment.generation);
        self.desired = Desired::Known(assignment);
        // A target changed while attached (a new secret) is what a re-attach must use.
        let owned: Vec<Uuid> = self
            .volumes
            .values()
            .filter(|v| v.is_owned())
            .map(|v| v.target_uuid)
            .collect();
        for uuid in owned {
            self.cache_target(uuid);
        }
    }

    /// Applies one of reconcile's actions and starts the host operation it needs.
    pub(crate) fn start(&mut self, action: Action, events: &mpsc::Sender<Event>, now_ms: Millis) {
        let now = SystemTime::now();
        let op = match apply::apply(&mut self.volumes, &self.desired, &action, now) {
            Ok(op) => op,
            Err(e) => {
                tracing::error!(error = %e, ?action, "reconcile asked for an impossible step");
                return;
            }
        };
        let uuid = action.target();
        if let Action::Detach(_) | Action::Forget(_) = action {
            // Unassigned: from now on a reboot must not attach it again, even if this detach
            // stops halfway.
            self.uncache_target(uuid);
        }
        let Some(volume) = self.volumes.get(&uuid) else {
            return;
        };
        let volume_id = &volume.volume_id;
        match &action {
            Action::Attach(_) => {
                tracing::info!(
                    target_uuid = %uuid,
                    volume_id = %volume_id,
                    volume_type = %volume.volume_type,
                    state = "attaching",
                    "attaching"
                )
            }
            Action::Detach(_) => {
                tracing::info!(
                    target_uuid = %uuid,
                    volume_id = %volume_id,
                    state = "detaching",
                    "detaching: the conductor no longer assigns it"
                )
            }
            Action::Reject(_, error) => {
                tracing::warn!(
                    target_uuid = %uuid,
                    volume_id = %volume_id,
                    kind = %error.kind,
                    error = %error.message,
                    state = "failed",
                    "target rejected"
                );
                self.metrics.rejected(&volume.volume_type, &error.kind);
            }
            Action::Keep(_) => {
                tracing::info!(
                    target_uuid = %uuid,
                    volume_id = %volume_id,
                    "assigned again; keeping it attached"
                )
            }
            Action::Grow(_) => {
                tracing::info!(
                    target_uuid = %uuid,
                    volume_id = %volume_id,
                    size_bytes = volume.size_bytes().unwrap_or_default(),
                    "the volume grew at the storage; growing the device"
                )
            }
            Action::Forget(_) => {}
        }
        let Some(op) = op else {
            return;
        };
        if matches!(action, Action::Attach(_)) && !self.desired.is_known() {
            self.offline_pending.insert(uuid);
        }
        if let HostOp::Attach { spec, .. } = &op
            && let Err(why) = self.record_intent(uuid, spec)
        {
            let error = HostError::new(
                ErrorKind::RecordUnwritable,
                format!(
                    "the ownership record in {} cannot be written ({why}); no attach starts \
                     until it can, so that nothing is attached that the agent would not know \
                     as its own",
                    self.state.path.display()
                ),
            );
            self.in_flight += 1;
            let failed = OpResult::Attached(Err(AttachFailure {
                error,
                leftover: None,
            }));
            self.finish(uuid, failed, Duration::ZERO, now_ms);
            return;
        }
        self.spawn(uuid, op, events);
    }

    /// Writes the intent of an attach of `uuid` before anything is created, so that after a
    /// crash the agent knows what of the host it made. `Err` (the write's error) when the
    /// record cannot be written: the attach must not start.
    fn record_intent(&mut self, uuid: Uuid, spec: &TargetSpec) -> Result<(), String> {
        let creates = self.backends.creations(spec).unwrap_or_else(|e| {
            tracing::warn!(
                target_uuid = %uuid,
                kind = %e.kind,
                error = %e,
                "cannot see what the host has before an attach; recording no intent"
            );
            Creations::default()
        });
        let volume = &self.volumes[&uuid];
        let intent = Intent {
            volume_id: volume.volume_id.clone(),
            volume_type: volume.volume_type.clone(),
            creates,
        };
        self.intents.insert(uuid, intent);
        // Written even if nothing else changed: this write is the proof that the next one can be.
        self.write_record(true);
        match self.record_unwritable.clone() {
            Some(why) => {
                self.intents.remove(&uuid);
                Err(why)
            }
            None => Ok(()),
        }
    }

    fn spawn(&mut self, uuid: Uuid, op: HostOp, events: &mpsc::Sender<Event>) {
        self.in_flight += 1;
        let backends = self.backends.clone();
        let timeout = self.config.device_timeout;
        let events = events.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let result = match op {
                HostOp::Attach { spec, ownership } => {
                    OpResult::Attached(backends.attach(&spec, &ownership, timeout))
                }
                HostOp::Detach {
                    attachment,
                    ownership,
                } => OpResult::Detached(backends.detach(&attachment, &ownership)),
                HostOp::Grow {
                    attachment,
                    size_bytes,
                    mount,
                } => OpResult::Grown {
                    result: backends.grow(&attachment, size_bytes, mount.as_ref(), timeout),
                    size_bytes,
                },
            };
            let took = started.elapsed();
            let _ = events.blocking_send(Event::Done(uuid, Box::new(result), took));
        });
    }

    /// Lists what is on the host that the agent did not attach, off the main loop.
    pub(crate) fn refresh_foreign(&self, events: &mpsc::Sender<Event>) {
        let owned: Vec<Attachment> = self
            .volumes
            .values()
            .filter_map(|v| v.attachment.clone())
            .collect();
        let backends = self.backends.clone();
        let events = events.clone();
        tokio::task::spawn_blocking(move || {
            let _ = events.blocking_send(Event::Foreign(backends.foreign(&owned)));
        });
    }

    fn retry_at(&self, failures: u32, now: Millis) -> Millis {
        let delay = retry_delay(
            failures + 1,
            self.config.retry_initial,
            self.config.retry_max,
            jitter(),
        );
        now + delay.as_millis() as Millis
    }

    /// Records how a host operation ended: logs, metrics, then the volume's new state.
    pub(crate) fn finish(&mut self, uuid: Uuid, result: OpResult, took: Duration, now_ms: Millis) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if matches!(result, OpResult::Attached(_)) {
            // Its result, recorded below in the same write, says what it made.
            self.intents.remove(&uuid);
        }
        self.crash_after_write = match result {
            OpResult::Attached(_) => Some("agent.attach_recorded"),
            OpResult::Detached(_) => Some("agent.detach_recorded"),
            OpResult::Grown { .. } => None,
        };
        let Some(volume) = self.volumes.get(&uuid) else {
            return;
        };
        let retry_at = self.retry_at(volume.failures, now_ms);
        let retry_in = retry_at.saturating_sub(now_ms);
        let volume_id = &volume.volume_id;
        let volume_type = volume.volume_type.as_str();
        let metrics = &self.metrics;
        let outcome = match result {
            OpResult::Attached(Ok(attachment)) => {
                metrics.attached(volume_type, took, None);
                tracing::info!(
                    target_uuid = %uuid,
                    volume_id = %volume_id,
                    device = %attachment.device.device_path,
                    mountpoint = ?attachment.mount.as_ref().map(|m| &m.path),
                    state = "attached",
                    "attached"
                );
                Outcome::Attached(attachment)
            }
            OpResult::Attached(Err(AttachFailure { error, leftover })) => {
                tracing::warn!(
                    target_uuid = %uuid,
                    volume_id = %volume_id,
                    kind = %error.kind,
                    error = %error.message,
                    retry_in_ms = retry_in,
                    state = "failed",
                    "attach failed"
                );
                metrics.attached(volume_type, took, Some(error.kind.as_str()));
                Outcome::AttachFailed {
                    error: report(&error),
                    leftover: leftover.map(|a| *a),
                }
            }
            OpResult::Detached(Ok(DetachOutcome::Detached { sessions_kept })) => {
                tracing::info!(target_uuid = %uuid, volume_id = %volume_id, "detached");
                metrics.detached(volume_type, took, DetachResult::Ok, None);
                Outcome::Detached { sessions_kept }
            }
            OpResult::Detached(Ok(DetachOutcome::Blocked { holder })) => {
                tracing::warn!(
                    target_uuid = %uuid,
                    volume_id = %volume_id,
                    holder = %holder,
                    state = "detach_blocked",
                    "not detaching: the device is in use"
                );
                let kind = ErrorKind::DeviceInUse;
                metrics.detached(
                    volume_type,
                    took,
                    DetachResult::Blocked,
                    Some(kind.as_str()),
                );
                Outcome::DetachBlocked(ErrorReport {
                    kind: kind.to_string(),
                    message: format!(
                        "the device is in use ({holder}); stop using it and the agent detaches it"
                    ),
                })
            }
            OpResult::Detached(Err(error)) => {
                tracing::warn!(
                    target_uuid = %uuid,
                    volume_id = %volume_id,
                    kind = %error.kind,
                    error = %error.message,
                    state = "failed",
                    "detach failed"
                );
                metrics.detached(
                    volume_type,
                    took,
                    DetachResult::Failed,
                    Some(error.kind.as_str()),
                );
                Outcome::DetachFailed(report(&error))
            }
            OpResult::Grown {
                result: Ok(size),
                size_bytes,
            } => {
                tracing::info!(
                    target_uuid = %uuid,
                    volume_id = %volume_id,
                    size_bytes = size,
                    wanted = size_bytes,
                    took_ms = took.as_millis() as u64,
                    "grown"
                );
                metrics.grown(volume_type, None);
                Outcome::Grown(size)
            }
            OpResult::Grown {
                result: Err(error),
                size_bytes,
            } => {
                tracing::warn!(
                    target_uuid = %uuid,
                    volume_id = %volume_id,
                    wanted = size_bytes,
                    kind = %error.kind,
                    error = %error.message,
                    retry_in_ms = retry_in,
                    "grow failed; the volume stays attached at its old size"
                );
                metrics.grown(volume_type, Some(error.kind.as_str()));
                Outcome::GrowFailed(report(&error))
            }
        };
        let done = apply::complete(
            &mut self.volumes,
            uuid,
            outcome,
            retry_at,
            SystemTime::now(),
        );
        if let Err(e) = done {
            tracing::error!(error = %e, "an operation finished in an unexpected state");
        }
        self.offline_pending.remove(&uuid);
        match self.volumes.get(&uuid) {
            Some(v) if v.is_owned() && v.phase == super::volume::Phase::Attached => {
                self.cache_target(uuid)
            }
            Some(_) => {}
            None => self.uncache_target(uuid),
        }
    }

    /// Writes the ownership record, every volume the agent has on the host, when it changed or
    /// the last write failed.
    fn persist(&mut self) {
        self.write_record(false);
    }

    /// Writes the ownership record; unless `always`, only when it changed or the last write
    /// failed.
    fn write_record(&mut self, always: bool) {
        let record = Record {
            version: super::record::RECORD_VERSION,
            volumes: self
                .volumes
                .iter()
                .filter_map(|(uuid, v)| {
                    let attachment = v.attachment.clone()?;
                    let volume_id = v.volume_id.clone();
                    Some((
                        *uuid,
                        OwnedVolume {
                            volume_id,
                            attachment,
                        },
                    ))
                })
                .collect(),
            intents: self.intents.clone(),
        };
        let unchanged = self.written_record.as_ref() == Some(&record);
        if !always && self.record_unwritable.is_none() && unchanged {
            return;
        }
        match self.state.save_record(&record) {
            Ok(()) => {
                if self.record_unwritable.take().is_some() {
                    tracing::info!("the ownership record can be written again; attaches resume");
                }
                self.metrics.set_record_writable(true);
                self.written_record = Some(record);
                if let Some(point) = self.crash_after_write.take() {
                    crate::failpoints::crash(point);
                }
            }
            Err(e) => {
                if self.record_unwritable.is_none() {
                    tracing::error!(
                        kind = ErrorKind::RecordUnwritable.as_str(),
                        path = %self.state.path.display(),
                        error = %e,
                        "cannot write the ownership record; no attach starts until it can"
                    );
                }
                self.metrics.set_record_writable(false);
                self.record_unwritable = Some(e.to_string());
            }
        }
    }

    pub(crate) fn report(&self) -> Heartbeat {
        let volumes = self
            .volumes
            .values()
            .map(|v| {
                let attachment = v.attachment.as_ref();
                VolumeReport {
                    target_uuid: v.target_uuid,
                    volume_id: v.volume_id.clone(),
                    volume_type: v.volume_type.clone(),
                    state: v.state(),
                    device_path: attachment.map(|a| a.device.device_path.clone()),
                    paths: attachment.map(|a| a.paths.clone()).unwrap_or_default(),
                    size_bytes: attachment.map(|a| a.device.size_bytes),
                    wwn: attachment.and_then(|a| a.device.wwn.clone()),
                    mountpoint: attachment
                        .and_then(|a| a.mount.as_ref())
                        .map(|m| m.path.display().to_string()),
                    error: v.error().cloned(),
                    degraded: self.degraded.get(&v.target_uuid).cloned(),
                    unconfirmed: !self.desired.is_known(),
                    since: timestamp(v.since),
                }
            })
            .collect();
        let mut report = Heartbeat {
            agent_version: AGENT_VERSION.to_string(),
            generation: self.desired.generation(),
            connectors: self.connectors.clone(),
            volumes,
            foreign: self.foreign.clone(),
        };
        // Host tools' messages and names read from sysfs may hold control characters, which
        // a conductor refuses: they are escaped here.
        crate::protocol::report::make_sendable(&mut report);
        report
    }

    /// Writes the status file that `tether status` reads, when what it says changed.
    fn publish_status(&mut self, report: &Heartbeat) {
        let said = (
            self.conductor_note.clone(),
            self.conductor.clone(),
            report.clone(),
        );
        if self.written_status.as_ref() == Some(&said) {
            return;
        }
        let status = LocalStatus {
            node_uuid: self.node.as_ref().map(|n| n.uuid),
            node_name: self.node.as_ref().map(|n| n.name.clone()),
            conductor_url: self.conductor.url.clone(),
            conductor_address: self.conductor.address.clone(),
            conductors: self.conductor.configured.clone(),
            conductor: self.conductor_note.clone(),
            updated_at: timestamp(SystemTime::now()),
            report: report.clone(),
        };
        match self.state.save_status(&status) {
            Ok(()) => self.written_status = Some(said),
            Err(e) => {
                // Written again at the next pass, even one that changed nothing.
                self.written_status = None;
                tracing::warn!(error = %e, "cannot write the status file")
            }
        }
    }

    /// Whether the record or the status file could not be written last time: the main loop
    /// then publishes after any wake-up, so that the write is tried again.
    pub(crate) fn owes_a_write(&self) -> bool {
        self.record_unwritable.is_some() || self.written_status.is_none()
    }
}

fn report(e: &HostError) -> ErrorReport {
    ErrorReport {
        kind: e.kind.to_string(),
        message: e.message.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    use super::*;
    use crate::agent::reconcile::{DesiredTarget, reconcile};
    use crate::agent::record::{RECORD_FILE, STATUS_FILE};
    use crate::backend::simulated::SimKernel;
    use crate::protocol::VolumeState;

    fn agent(dir: &Path) -> Agent {
        let config = AgentConfig {
            state_dir: dir.to_path_buf(),
            ..AgentConfig::default()
        };
        Agent::new(
            Recovered::default(),
            Backends::simulated(Arc::new(SimKernel::default())),
            config,
            StateDir::new(dir),
            Vec::new(),
            Arc::new(AgentMetrics::new()),
            InUse {
                url: "https://192.0.2.1:6387".into(),
                address: None,
                configured: vec!["https://192.0.2.1:6387".into()],
            },
        )
    }

    fn inode(dir: &Path, name: &str) -> u64 {
        std::fs::metadata(dir.join(name)).unwrap().ino()
    }

    /// Every pass of the main loop, a watchdog tick included, rewrote and fsynced both files.
    #[test]
    fn a_pass_that_changes_nothing_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut agent = agent(dir.path());
        let (reports, _) = watch::channel(agent.report());
        agent.publish(&reports);
        let (record, status) = (
            inode(dir.path(), RECORD_FILE),
            inode(dir.path(), STATUS_FILE),
        );
        for _ in 0..5 {
            agent.publish(&reports);
        }
        // Written atomically (a new file renamed over the old): a write changes the inode.
        assert_eq!(inode(dir.path(), RECORD_FILE), record, "record rewritten");
        assert_eq!(inode(dir.path(), STATUS_FILE), status, "status rewritten");
        agent.conductor_note = "assignment generation 7".into();
        agent.publish(&reports);
        assert_ne!(
            inode(dir.path(), STATUS_FILE),
            status,
            "a change is written"
        );
        assert_eq!(inode(dir.path(), RECORD_FILE), record);
    }

    fn assignment() -> Assignment {
        let target = crate::protocol::VolumeTarget {
            uuid: Uuid::new_v4(),
            node_uuid: Uuid::new_v4(),
            volume_type: "iscsi".into(),
            volume_id: "vol-1".into(),
            boot_index: None,
            properties: serde_json::json!({
                "target_portal": "192.0.2.1:3260",
                "target_iqn": "iqn.2003-01.org.example:t",
                "target_lun": 0
            })
            .as_object()
            .unwrap()
            .clone(),
            extra: Default::default(),
            size_bytes: None,
        };
        Assignment {
            generation: 1,
            targets: vec![DesiredTarget {
                uuid: target.uuid,
                volume_id: target.volume_id.clone(),
                volume_type: target.volume_type.clone(),
                spec: crate::protocol::target::parse(&target),
                source: target,
            }],
        }
    }

    /// A failed write of the record was only logged while attaches went on.
    #[tokio::test]
    async fn no_attach_starts_while_the_record_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut agent = agent(dir.path());
        let (events, mut done) = mpsc::channel(4);
        // A directory where the record goes: renaming a file over it fails, even for root.
        std::fs::remove_file(dir.path().join(RECORD_FILE)).unwrap();
        std::fs::create_dir_all(dir.path().join(RECORD_FILE).join("blocker")).unwrap();
        agent.apply_assignment(assignment());
        let plan = reconcile(&agent.desired, &agent.volumes, 0);
        assert_eq!(plan.actions.len(), 1, "{:?}", plan.actions);
        for action in plan.actions {
            agent.start(action, &events, 0);
        }
        let volume = agent.volumes.values().next().unwrap();
        assert_eq!(volume.state(), VolumeState::Failed);
        assert_eq!(volume.error().unwrap().kind, "record_unwritable");
        assert!(done.try_recv().is_err(), "nothing ran on the host");
        assert_eq!(agent.in_flight, 0);
        let report = agent.report();
        assert_eq!(
            report.volumes[0].error.as_ref().unwrap().kind,
            "record_unwritable"
        );

        // Writable again: the retry attaches.
        std::fs::remove_dir_all(dir.path().join(RECORD_FILE)).unwrap();
        let retry_at = agent.volumes.values().next().unwrap().retry_at().unwrap();
        let plan = reconcile(&agent.desired, &agent.volumes, retry_at);
        for action in plan.actions {
            agent.start(action, &events, retry_at);
        }
        assert_eq!(agent.in_flight, 1, "the attach runs");
        assert!(dir.path().join(RECORD_FILE).is_file());
    }
}
