//! The executor: the main loop's state, which applies reconcile's actions through
//! [`apply`](super::apply), runs the host operations they start on blocking threads, and turns
//! their results into outcomes, logs, metrics, the ownership record and the status file.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::apply::{self, HostOp, Outcome, Volumes};
use super::backends::{AttachFailure, Backends};
use super::metrics::{AgentMetrics, DetachResult};
use super::reconcile::{Action, Assignment, Desired};
use super::record::{LocalStatus, OwnedVolume, Record, StateDir};
use super::tasks::{NodeLogin, jitter};
use super::volume::{Millis, Volume, retry_delay};
use super::{AGENT_VERSION, Event};
use crate::backend::{Attachment, DetachOutcome, ErrorKind, HostError};
use crate::config::AgentConfig;
use crate::protocol::{
    Connector, ErrorReport, ForeignAttachment, Heartbeat, VolumeReport, timestamp,
};

/// What a host operation returned.
pub(crate) enum OpResult {
    Attached(Result<Attachment, AttachFailure>),
    Detached(Result<DetachOutcome, HostError>),
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
    pub(crate) node: Option<NodeLogin>,
    pub(crate) metrics: Arc<AgentMetrics>,
}

impl Agent {
    /// The agent before lookup, with the volumes recovered from the record; they show in the
    /// status file and metrics while the conductor is looked up.
    pub(crate) fn new(
        volumes: Volumes,
        backends: Backends,
        config: AgentConfig,
        state: StateDir,
        connectors: Vec<Connector>,
        metrics: Arc<AgentMetrics>,
    ) -> Self {
        let agent = Self {
            volumes,
            desired: Desired::Unknown,
            backends,
            config,
            state,
            foreign: Vec::new(),
            connectors,
            in_flight: 0,
            conductor_note: "not contacted yet".into(),
            node: None,
            metrics,
        };
        agent.persist();
        agent.publish_status(&agent.report());
        agent
            .metrics
            .set_volumes(agent.volumes.values().map(Volume::state));
        agent
    }

    pub(crate) fn looked_up(&mut self, node: NodeLogin) {
        self.node = Some(node);
        self.conductor_note = "lookup succeeded".into();
    }

    /// Makes the current state known: the record, metrics, the heartbeat (when it changed)
    /// and the status file.
    pub(crate) fn publish(&self, reports: &watch::Sender<Heartbeat>) {
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
    }

    /// Applies one of reconcile's actions and starts the host operation it needs.
    pub(crate) fn start(&mut self, action: Action, events: &mpsc::Sender<Event>) {
        let now = SystemTime::now();
        let op = match apply::apply(&mut self.volumes, &self.desired, &action, now) {
            Ok(op) => op,
            Err(e) => {
                tracing::error!(error = %e, ?action, "reconcile asked for an impossible step");
                return;
            }
        };
        let uuid = action.target();
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
            Action::Forget(_) => {}
        }
        if let Some(op) = op {
            self.spawn(uuid, op, events);
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
    }

    /// Writes the ownership record: every volume the agent has on the host.
    fn persist(&self) {
        let record = Record {
            version: 1,
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
        };
        if let Err(e) = self.state.save_record(&record) {
            tracing::error!(error = %e, "cannot write the ownership record");
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

    /// Writes the status file that `tether status` reads.
    fn publish_status(&self, report: &Heartbeat) {
        let status = LocalStatus {
            node_uuid: self.node.as_ref().map(|n| n.uuid),
            node_name: self.node.as_ref().map(|n| n.name.clone()),
            conductor_url: self.config.conductor_url.clone(),
            conductor: self.conductor_note.clone(),
            updated_at: timestamp(SystemTime::now()),
            report: report.clone(),
        };
        if let Err(e) = self.state.save_status(&status) {
            tracing::warn!(error = %e, "cannot write the status file");
        }
    }
}

fn report(e: &HostError) -> ErrorReport {
    ErrorReport {
        kind: e.kind.to_string(),
        message: e.message.clone(),
    }
}
