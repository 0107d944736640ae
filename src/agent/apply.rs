//! Applying reconcile's actions and the host's results to the volume table. Pure: the executor
//! runs the host operations this returns, and the property test's model calls the same code.

use std::collections::BTreeMap;
use std::time::SystemTime;

use thiserror::Error;
use uuid::Uuid;

use super::reconcile::{Action, Desired};
use super::volume::{InvalidTransition, Millis, Volume};
use crate::backend::{Attachment, Ownership};
use crate::protocol::ErrorReport;
use crate::protocol::target::{MountSpec, SessionKey, TargetSpec};

/// Every volume the agent tracks, by target uuid.
pub(crate) type Volumes = BTreeMap<Uuid, Volume>;

/// A host operation an action started; the executor runs it off the main loop.
#[derive(Debug, Clone)]
pub(crate) enum HostOp {
    Attach {
        spec: Box<TargetSpec>,
        ownership: Ownership,
    },
    Detach {
        attachment: Box<Attachment>,
        ownership: Ownership,
    },
    /// Grows the device to `size_bytes`, and the file system when `mount` asks to.
    Grow {
        attachment: Box<Attachment>,
        size_bytes: u64,
        mount: Option<MountSpec>,
    },
}

/// How a host operation ended, in the terms of the state machine.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Attached(Attachment),
    /// `leftover` is what stayed attached despite the failure (a device that did not mount).
    AttachFailed {
        error: ErrorReport,
        leftover: Option<Attachment>,
    },
    /// Gone from the host. Sessions it created that others still use pass to one of them.
    Detached {
        sessions_kept: Vec<SessionKey>,
    },
    DetachBlocked(ErrorReport),
    DetachFailed(ErrorReport),
    /// The device's size after it grew.
    Grown(u64),
    GrowFailed(ErrorReport),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum ApplyError {
    #[error(transparent)]
    Transition(#[from] InvalidTransition),
    #[error("volume {0}: reconcile asked to attach a target that is not assigned and valid")]
    NotAssigned(Uuid),
    #[error("volume {0}: no such volume is tracked")]
    Untracked(Uuid),
    #[error("volume {0}: refusing to forget a volume that is still attached")]
    StillAttached(Uuid),
}

/// Applies one action. Returns the host operation to run, if the action needs one.
pub(crate) fn apply(
    volumes: &mut Volumes,
    desired: &Desired,
    action: &Action,
    now: SystemTime,
) -> Result<Option<HostOp>, ApplyError> {
    match action {
        Action::Attach(uuid) => {
            let spec = desired
                .target(*uuid)
                .and_then(|t| t.spec.as_ref().ok())
                .ok_or(ApplyError::NotAssigned(*uuid))?;
            track(volumes, desired, *uuid, now)?.start_attach(spec.sessions(), now)?;
            Ok(Some(HostOp::Attach {
                spec: Box::new(spec.clone()),
                ownership: ownership_for(volumes, *uuid),
            }))
        }
        Action::Detach(uuid) => {
            let ownership = ownership_for(volumes, *uuid);
            let volume = volumes.get_mut(uuid).ok_or(ApplyError::Untracked(*uuid))?;
            volume.start_detach(now)?;
            let attachment = volume
                .attachment
                .clone()
                .expect("start_detach checks ownership");
            Ok(Some(HostOp::Detach {
                attachment: Box::new(attachment),
                ownership,
            }))
        }
        Action::Forget(uuid) => {
            if volumes.get(uuid).is_some_and(Volume::is_owned) {
                return Err(ApplyError::StillAttached(*uuid));
            }
            volumes.remove(uuid);
            Ok(None)
        }
        Action::Reject(uuid, error) => {
            track(volumes, desired, *uuid, now)?.reject(error.clone(), now)?;
            Ok(None)
        }
        Action::Keep(uuid) => {
            let volume = volumes.get_mut(uuid).ok_or(ApplyError::Untracked(*uuid))?;
            volume.reassigned(now)?;
            Ok(None)
        }
        Action::Grow(uuid) => {
            let spec = desired
                .target(*uuid)
                .and_then(|t| t.spec.as_ref().ok())
                .ok_or(ApplyError::NotAssigned(*uuid))?;
            let size_bytes = spec.size_bytes.ok_or(ApplyError::NotAssigned(*uuid))?;
            let volume = volumes.get_mut(uuid).ok_or(ApplyError::Untracked(*uuid))?;
            volume.start_grow(size_bytes)?;
            let attachment = volume
                .attachment
                .clone()
                .expect("start_grow checks ownership");
            Ok(Some(HostOp::Grow {
                attachment: Box::new(attachment),
                size_bytes,
                mount: spec.mount.clone(),
            }))
        }
    }
}

/// Records how an operation ended. `retry_at` is when a failed or blocked volume is retried.
pub(crate) fn complete(
    volumes: &mut Volumes,
    uuid: Uuid,
    outcome: Outcome,
    retry_at: Millis,
    now: SystemTime,
) -> Result<(), ApplyError> {
    let volume = volumes.get_mut(&uuid).ok_or(ApplyError::Untracked(uuid))?;
    match outcome {
        Outcome::Attached(attachment) => volume.attach_succeeded(attachment, now)?,
        Outcome::AttachFailed { error, leftover } => {
            volume.attach_failed(error, leftover, retry_at, now)?
        }
        Outcome::Detached { sessions_kept } => {
            volume.detach_succeeded()?;
            volumes.remove(&uuid);
            hand_over_sessions(volumes, &sessions_kept);
        }
        Outcome::DetachBlocked(reason) => volume.detach_blocked(reason, retry_at, now)?,
        Outcome::DetachFailed(error) => volume.detach_failed(error, retry_at, now)?,
        Outcome::Grown(size) => volume.grow_succeeded(size)?,
        Outcome::GrowFailed(error) => volume.grow_failed(error, retry_at)?,
    }
    Ok(())
}

/// The volume of a desired target, tracked from now on if it is new.
fn track<'a>(
    volumes: &'a mut Volumes,
    desired: &Desired,
    uuid: Uuid,
    now: SystemTime,
) -> Result<&'a mut Volume, ApplyError> {
    match volumes.entry(uuid) {
        std::collections::btree_map::Entry::Occupied(tracked) => Ok(tracked.into_mut()),
        std::collections::btree_map::Entry::Vacant(new) => {
            let target = desired.target(uuid).ok_or(ApplyError::NotAssigned(uuid))?;
            Ok(new.insert(Volume::new(
                uuid,
                target.volume_id.clone(),
                target.volume_type.clone(),
                now,
            )))
        }
    }
}

/// What a backend must know of the agent's other volumes while it works on `uuid`.
pub(crate) fn ownership_for(volumes: &Volumes, uuid: Uuid) -> Ownership {
    let mut ownership = Ownership::default();
    for (other, volume) in volumes {
        let Some(attachment) = &volume.attachment else {
            continue;
        };
        for (key, created) in attachment.connections() {
            if created {
                ownership.owned_sessions.insert(key.clone());
            }
            if *other != uuid {
                ownership.sessions_used_by_others.insert(key.clone());
            }
        }
    }
    ownership
}

/// A detached volume created sessions that others still use: one of them owns them now.
fn hand_over_sessions(volumes: &mut Volumes, sessions: &[SessionKey]) {
    for key in sessions {
        for volume in volumes.values_mut() {
            let heir = volume.attachment.as_mut();
            if heir.is_some_and(|a| a.take_over_connection(key)) {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::reconcile::{Assignment, DesiredTarget};
    use crate::agent::volume::tests::attachment;
    use crate::backend::BackendAttachment;
    use crate::protocol::VolumeTarget;
    use crate::protocol::target::parse;

    fn uuid(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    fn rbd_target(n: u8) -> DesiredTarget {
        let target: VolumeTarget = serde_json::from_value(serde_json::json!({
            "uuid": uuid(n), "node_uuid": Uuid::nil(), "volume_type": "rbd",
            "volume_id": format!("vol-{n}"),
            "properties": {"name": "rbd/img", "hosts": ["192.0.2.9"], "auth_enabled": false},
        }))
        .unwrap();
        DesiredTarget {
            uuid: target.uuid,
            volume_id: target.volume_id.clone(),
            volume_type: target.volume_type.clone(),
            spec: parse(&target),
        }
    }

    fn desired(targets: Vec<DesiredTarget>) -> Desired {
        Desired::Known(Assignment {
            generation: 1,
            targets,
        })
    }

    #[test]
    fn attach_tracks_the_volume_and_hands_out_its_spec() {
        let mut volumes = Volumes::new();
        let desired = desired(vec![rbd_target(1)]);
        let op = apply(
            &mut volumes,
            &desired,
            &Action::Attach(uuid(1)),
            SystemTime::UNIX_EPOCH,
        );
        let Ok(Some(HostOp::Attach { spec, .. })) = op else {
            panic!("{op:?}")
        };
        assert_eq!(spec.volume_id, "vol-1");
        assert!(volumes[&uuid(1)].in_flight());
    }

    #[test]
    fn steps_that_cannot_be_taken_are_refused_and_change_nothing() {
        let now = SystemTime::UNIX_EPOCH;
        let mut volumes = Volumes::new();
        let none = desired(Vec::new());
        assert_eq!(
            apply(&mut volumes, &none, &Action::Attach(uuid(1)), now).unwrap_err(),
            ApplyError::NotAssigned(uuid(1))
        );
        assert_eq!(
            apply(&mut volumes, &none, &Action::Detach(uuid(1)), now).unwrap_err(),
            ApplyError::Untracked(uuid(1))
        );
        volumes.insert(
            uuid(2),
            Volume::recovered(uuid(2), "vol-2".into(), attachment(), now),
        );
        assert_eq!(
            apply(&mut volumes, &none, &Action::Forget(uuid(2)), now).unwrap_err(),
            ApplyError::StillAttached(uuid(2))
        );
        assert!(matches!(
            apply(&mut volumes, &none, &Action::Keep(uuid(2)), now),
            Err(ApplyError::Transition(_))
        ));
        assert!(volumes[&uuid(2)].is_owned());
        assert_eq!(volumes.len(), 1);
    }

    #[test]
    fn a_detached_volume_hands_its_sessions_to_a_volume_still_using_them() {
        use crate::backend::{IscsiAttachment, IscsiPathAttachment};
        use crate::protocol::target::parse_portal;

        let now = SystemTime::UNIX_EPOCH;
        let session = SessionKey::new(
            &parse_portal("192.0.2.1:3260").unwrap(),
            "iqn.2003-01.org.example:x",
        );
        let on_session = |lun, created| Attachment {
            backend: BackendAttachment::Iscsi(IscsiAttachment {
                paths: vec![IscsiPathAttachment {
                    session: session.clone(),
                    lun,
                    kernel_name: format!("sd{lun}"),
                    session_created: created,
                    device_created: true,
                }],
                multipath: None,
            }),
            ..attachment()
        };
        let mut volumes = Volumes::new();
        volumes.insert(
            uuid(1),
            Volume::recovered(uuid(1), "a".into(), on_session(0, true), now),
        );
        volumes.insert(
            uuid(2),
            Volume::recovered(uuid(2), "b".into(), on_session(1, false), now),
        );
        let ownership = ownership_for(&volumes, uuid(1));
        assert!(ownership.owned_sessions.contains(&session));
        assert!(ownership.sessions_used_by_others.contains(&session));

        apply(
            &mut volumes,
            &desired(Vec::new()),
            &Action::Detach(uuid(1)),
            now,
        )
        .unwrap();
        let kept = Outcome::Detached {
            sessions_kept: vec![session.clone()],
        };
        complete(&mut volumes, uuid(1), kept, 0, now).unwrap();
        assert!(!volumes.contains_key(&uuid(1)));
        let BackendAttachment::Iscsi(heir) =
            &volumes[&uuid(2)].attachment.as_ref().unwrap().backend
        else {
            unreachable!()
        };
        assert!(
            heir.paths[0].session_created,
            "the heir owns the session now"
        );
    }
}
