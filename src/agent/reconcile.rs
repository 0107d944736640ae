//! Reconcile: what the conductor wants + what the agent has -> what to do next. Pure.
//!
//! The rules users rely on are decided here and nowhere else:
//! - nothing is detached unless a successful answer from the conductor no longer lists it
//!   ([`Desired::Unknown`] and [`Desired::Remembered`] never detach);
//! - only volumes the agent attached are detached (foreign attachments never become volumes);
//! - a detach never runs beside another operation on the same (portal, iqn), so a logout
//!   cannot pull a session from under an attach; attaches of LUNs that share a session run
//!   together (the backend lets only one of them log in);
//! - failed volumes wait for their retry time without holding up the others.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::volume::{Millis, Operation, Phase, Volume};
use crate::protocol::target::{SessionKey, TargetError, TargetSpec};
use crate::protocol::{ErrorReport, VolumeTarget};

/// The last successful answer from the conductor, or none yet.
#[derive(Debug, Clone, Default)]
pub(crate) enum Desired {
    #[default]
    Unknown,
    /// No answer yet, but the node's cache holds the targets of volumes the agent owned: they
    /// may be attached again (after a reboot), and nothing is detached or forgotten.
    Remembered(Assignment),
    Known(Assignment),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Assignment {
    pub(crate) generation: u64,
    /// In the conductor's order (boot_index first), which is also the attach order.
    pub(crate) targets: Vec<DesiredTarget>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DesiredTarget {
    pub(crate) uuid: Uuid,
    pub(crate) volume_id: String,
    pub(crate) volume_type: String,
    pub(crate) spec: Result<TargetSpec, TargetError>,
    /// The target as the conductor sent it, secrets included: what the node's cache keeps.
    pub(crate) source: VolumeTarget,
}

impl Desired {
    /// The generation of the conductor's last answer; none before one came.
    pub(crate) fn generation(&self) -> Option<u64> {
        match self {
            Self::Unknown | Self::Remembered(_) => None,
            Self::Known(a) => Some(a.generation),
        }
    }

    pub(crate) fn target(&self, uuid: Uuid) -> Option<&DesiredTarget> {
        match self {
            Self::Unknown => None,
            Self::Remembered(a) | Self::Known(a) => a.targets.iter().find(|t| t.uuid == uuid),
        }
    }

    /// Whether the conductor has answered: only then are volumes confirmed, or detached.
    pub(crate) fn is_known(&self) -> bool {
        matches!(self, Self::Known(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Start attaching (tracking the volume first if it is new).
    Attach(Uuid),
    /// Start detaching an owned volume the conductor no longer lists.
    Detach(Uuid),
    /// Drop a volume that is neither desired nor on the host.
    Forget(Uuid),
    /// Mark a target the agent cannot act on as failed, without retry.
    Reject(Uuid, ErrorReport),
    /// Assigned again while its detach was blocked or failed: keep it.
    Keep(Uuid),
    /// The target's volume grew beyond the attached device: grow the device to it.
    Grow(Uuid),
}

impl Action {
    /// The target the action is about.
    pub(crate) fn target(&self) -> Uuid {
        match self {
            Self::Attach(uuid)
            | Self::Detach(uuid)
            | Self::Forget(uuid)
            | Self::Reject(uuid, _)
            | Self::Keep(uuid)
            | Self::Grow(uuid) => *uuid,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) actions: Vec<Action>,
    /// When reconcile must run again even if nothing else happens (a retry falls due).
    pub(crate) next_wake: Option<Millis>,
}

impl Plan {
    /// Reconcile must run again by `at` (the earliest of all such times wins).
    fn wake_at(&mut self, at: Millis) {
        self.next_wake = Some(self.next_wake.map_or(at, |w| w.min(at)));
    }
}

pub(crate) fn error_report(e: &TargetError) -> ErrorReport {
    ErrorReport {
        kind: e.kind().to_string(),
        message: e.to_string(),
    }
}

/// Whether an attached volume must grow now: its target names a size larger than the device,
/// and no failed grow to that size waits for its retry. Volumes never shrink.
fn grow_due(spec: &TargetSpec, volume: &Volume, now: Millis, plan: &mut Plan) -> bool {
    let (Some(wanted), Some(size)) = (spec.size_bytes, volume.size_bytes()) else {
        return false;
    };
    if size >= wanted {
        return false;
    }
    match &volume.grow_failure {
        Some(failure) if failure.size_bytes == wanted && failure.retry_at > now => {
            plan.wake_at(failure.retry_at);
            false
        }
        _ => true,
    }
}

pub(crate) fn reconcile(desired: &Desired, volumes: &BTreeMap<Uuid, Volume>, now: Millis) -> Plan {
    let assignment = match desired {
        // Without an answer nothing is known to be unwanted, and nothing can be attached.
        Desired::Unknown => return Plan::default(),
        Desired::Remembered(a) | Desired::Known(a) => a,
    };
    let mut plan = Plan::default();
    // Sessions with any operation in flight, and those with a detach in flight.
    let mut busy: BTreeSet<SessionKey> = volumes
        .values()
        .filter(|v| v.in_flight())
        .flat_map(|v| v.sessions.iter().cloned())
        .collect();
    let detaching: BTreeSet<&SessionKey> = volumes
        .values()
        .filter(|v| v.phase == Phase::Detaching)
        .flat_map(|v| &v.sessions)
        .collect();

    for target in &assignment.targets {
        let volume = volumes.get(&target.uuid);
        let spec = match &target.spec {
            Ok(spec) => spec,
            Err(e) => {
                let report = error_report(e);
                let needs_reject = volume
                    .is_none_or(|v| !v.is_owned() && !v.in_flight() && v.error() != Some(&report));
                if needs_reject {
                    plan.actions.push(Action::Reject(target.uuid, report));
                }
                continue;
            }
        };
        let due = match volume.map(|v| &v.phase) {
            None | Some(Phase::Pending) => true,
            Some(Phase::Failed {
                during: Operation::Attach,
                retry_at,
                ..
            }) => match retry_at {
                // It was rejected as invalid and is valid now.
                None => true,
                Some(at) if *at <= now => true,
                Some(at) => {
                    plan.wake_at(*at);
                    false
                }
            },
            Some(
                Phase::DetachBlocked { .. }
                | Phase::Failed {
                    during: Operation::Detach,
                    ..
                },
            ) => {
                plan.actions.push(Action::Keep(target.uuid));
                false
            }
            Some(Phase::Attached) => {
                let volume = volume.expect("a phase means a volume");
                if grow_due(spec, volume, now, &mut plan)
                    && spec.sessions().iter().all(|k| !detaching.contains(k))
                {
                    busy.extend(spec.sessions());
                    plan.actions.push(Action::Grow(target.uuid));
                }
                false
            }
            Some(Phase::Attaching | Phase::Growing { .. } | Phase::Detaching) => false,
        };
        if due {
            let sessions = spec.sessions();
            if sessions.iter().all(|k| !detaching.contains(k)) {
                busy.extend(sessions);
                plan.actions.push(Action::Attach(target.uuid));
            }
        }
    }

    if !desired.is_known() {
        // Remembered targets are no answer: what they do not list may still be assigned.
        return plan;
    }
    for (uuid, volume) in volumes {
        if desired.target(*uuid).is_some() || volume.in_flight() {
            continue;
        }
        if !volume.is_owned() {
            plan.actions.push(Action::Forget(*uuid));
            continue;
        }
        if let Some(at) = volume.retry_at()
            && at > now
        {
            plan.wake_at(at);
            continue;
        }
        if volume.sessions.iter().all(|k| !busy.contains(k)) {
            busy.extend(volume.sessions.iter().cloned());
            plan.actions.push(Action::Detach(*uuid));
        }
    }
    plan
}

#[cfg(test)]
mod tests;
