//! The per-volume state machine. Pure: no I/O, no clock; times are passed in.
//!
//! ```text
//!  Pending ──start_attach──> Attaching ──attached──> Attached / Mounted
//!     ^                          │                        │
//!     └──── retry due ──── Failed(attach) <──failed───────┘ start_detach
//!                                                         v
//!   (gone) <──detached── Detaching ──blocked──> DetachBlocked ──retry due / start_detach──┐
//!                           │  └──failed──> Failed(detach) ──────────────────────────────┘
//!                           └─ reassigned while blocked or failed ──> Attached / Mounted
//!
//!  Attached ──start_grow──> Growing ──grown / grow failed (kept, retried)──> Attached
//! ```

use std::time::{Duration, SystemTime};

use thiserror::Error;
use uuid::Uuid;

use crate::backend::{Attachment, ErrorKind};
use crate::protocol::target::SessionKey;
use crate::protocol::{ErrorReport, VolumeState};

/// Milliseconds on the agent's monotonic clock.
pub(crate) type Millis = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Attach,
    Detach,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    Pending,
    Attaching,
    Attached,
    /// Attached, and growing to the target's new size (rescan, then the file system).
    Growing {
        size_bytes: u64,
    },
    Detaching,
    DetachBlocked {
        reason: ErrorReport,
        retry_at: Millis,
    },
    /// `retry_at` is `None` for failures no retry can fix (an invalid target).
    Failed {
        error: ErrorReport,
        during: Operation,
        retry_at: Option<Millis>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Volume {
    pub(crate) target_uuid: Uuid,
    pub(crate) volume_id: String,
    pub(crate) volume_type: String,
    pub(crate) phase: Phase,
    /// Wall-clock time the current phase began, for reports.
    pub(crate) since: SystemTime,
    /// Consecutive failures, for backoff.
    pub(crate) failures: u32,
    /// What the agent attached; `Some` exactly while the volume is the agent's on the host.
    pub(crate) attachment: Option<Attachment>,
    /// Sessions this volume's operations log in to (see `TargetSpec::sessions`).
    pub(crate) sessions: Vec<SessionKey>,
    /// The last grow failed: why, to which size, and when to try again. The volume stays
    /// attached meanwhile.
    pub(crate) grow_failure: Option<GrowFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GrowFailure {
    pub(crate) error: ErrorReport,
    pub(crate) size_bytes: u64,
    pub(crate) retry_at: Millis,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("volume {target}: cannot {event} while {from:?}")]
pub(crate) struct InvalidTransition {
    pub(crate) target: Uuid,
    pub(crate) event: &'static str,
    pub(crate) from: Phase,
}

/// Exponential backoff: `initial * 2^(failures-1)`, capped, then scaled by `jitter` in [0.5, 1].
pub(crate) fn retry_delay(
    failures: u32,
    initial: Duration,
    max: Duration,
    jitter: f64,
) -> Duration {
    let exp = initial.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let capped = exp.min(max);
    capped.mul_f64(jitter.clamp(0.5, 1.0))
}

impl Volume {
    pub(crate) fn new(
        target_uuid: Uuid,
        volume_id: String,
        volume_type: String,
        now: SystemTime,
    ) -> Self {
        Self {
            target_uuid,
            volume_id,
            volume_type,
            phase: Phase::Pending,
            since: now,
            failures: 0,
            attachment: None,
            sessions: Vec::new(),
            grow_failure: None,
        }
    }

    /// A volume found attached on the host at start-up, from the ownership record.
    pub(crate) fn recovered(
        target_uuid: Uuid,
        volume_id: String,
        attachment: Attachment,
        now: SystemTime,
    ) -> Self {
        Self {
            volume_type: attachment.volume_type().to_string(),
            sessions: attachment.sessions(),
            phase: Phase::Attached,
            attachment: Some(attachment),
            ..Self::new(target_uuid, volume_id, String::new(), now)
        }
    }

    /// What an attach interrupted by a crash left on the host, the agent's own: attached
    /// again (completing it) when still assigned, detached otherwise. It waits as a failed
    /// attach due for a retry.
    pub(crate) fn interrupted(
        target_uuid: Uuid,
        volume_id: String,
        attachment: Attachment,
        now: SystemTime,
    ) -> Self {
        let error = ErrorReport {
            kind: ErrorKind::Interrupted.to_string(),
            message: "the host does not have all of this volume: the agent stopped during an \
                      attach or detach, or the node restarted; it attaches it again if assigned, \
                      and removes what is left if not"
                .into(),
        };
        Self {
            volume_type: attachment.volume_type().to_string(),
            sessions: attachment.sessions(),
            phase: Phase::Failed {
                error,
                during: Operation::Attach,
                retry_at: Some(0),
            },
            failures: 1,
            attachment: Some(attachment),
            ..Self::new(target_uuid, volume_id, String::new(), now)
        }
    }

    pub(crate) fn state(&self) -> VolumeState {
        match &self.phase {
            Phase::Pending => VolumeState::Pending,
            Phase::Attaching => VolumeState::Attaching,
            // A volume that grows is still attached (or mounted) and in use.
            Phase::Attached | Phase::Growing { .. }
                if self.attachment.as_ref().is_some_and(|a| a.mount.is_some()) =>
            {
                VolumeState::Mounted
            }
            Phase::Attached | Phase::Growing { .. } => VolumeState::Attached,
            Phase::Detaching => VolumeState::Detaching,
            Phase::DetachBlocked { .. } => VolumeState::DetachBlocked,
            Phase::Failed { .. } => VolumeState::Failed,
        }
    }

    pub(crate) fn is_owned(&self) -> bool {
        self.attachment.is_some()
    }

    pub(crate) fn in_flight(&self) -> bool {
        matches!(
            self.phase,
            Phase::Attaching | Phase::Growing { .. } | Phase::Detaching
        )
    }

    /// When a blocked or failed volume may be retried.
    pub(crate) fn retry_at(&self) -> Option<Millis> {
        match &self.phase {
            Phase::DetachBlocked { retry_at, .. } => Some(*retry_at),
            Phase::Failed { retry_at, .. } => *retry_at,
            _ => None,
        }
    }

    pub(crate) fn error(&self) -> Option<&ErrorReport> {
        match &self.phase {
            Phase::DetachBlocked { reason, .. } => Some(reason),
            Phase::Failed { error, .. } => Some(error),
            Phase::Attached | Phase::Growing { .. } => self.grow_failure.as_ref().map(|g| &g.error),
            _ => None,
        }
    }

    /// The size the attached device has now, as last seen.
    pub(crate) fn size_bytes(&self) -> Option<u64> {
        self.attachment.as_ref().map(|a| a.device.size_bytes)
    }

    fn enter(&mut self, phase: Phase, now: SystemTime) {
        if std::mem::discriminant(&phase) != std::mem::discriminant(&self.phase) {
            self.since = now;
        }
        self.phase = phase;
    }

    fn invalid(&self, event: &'static str) -> InvalidTransition {
        InvalidTransition {
            target: self.target_uuid,
            event,
            from: self.phase.clone(),
        }
    }

    pub(crate) fn start_attach(
        &mut self,
        sessions: Vec<SessionKey>,
        now: SystemTime,
    ) -> Result<(), InvalidTransition> {
        match self.phase {
            Phase::Pending
            | Phase::Failed {
                during: Operation::Attach,
                ..
            } => {
                self.sessions = sessions;
                self.enter(Phase::Attaching, now);
                Ok(())
            }
            _ => Err(self.invalid("start attach")),
        }
    }

    pub(crate) fn attach_succeeded(
        &mut self,
        attachment: Attachment,
        now: SystemTime,
    ) -> Result<(), InvalidTransition> {
        if self.phase != Phase::Attaching {
            return Err(self.invalid("finish attach"));
        }
        let mut attachment = attachment;
        if let Some(previous) = &self.attachment {
            // What an earlier, unfinished attach of this volume made is still the agent's.
            attachment.inherit_ownership(previous);
        }
        self.sessions = attachment.sessions();
        self.attachment = Some(attachment);
        self.failures = 0;
        self.enter(Phase::Attached, now);
        Ok(())
    }

    /// `attachment` is what stayed attached despite the failure (a device that mounted badly).
    pub(crate) fn attach_failed(
        &mut self,
        error: ErrorReport,
        attachment: Option<Attachment>,
        retry_at: Millis,
        now: SystemTime,
    ) -> Result<(), InvalidTransition> {
        if self.phase != Phase::Attaching {
            return Err(self.invalid("fail attach"));
        }
        self.failures += 1;
        self.attachment = attachment;
        self.enter(
            Phase::Failed {
                error,
                during: Operation::Attach,
                retry_at: Some(retry_at),
            },
            now,
        );
        Ok(())
    }

    /// A target the agent cannot act on; only a changed target clears it.
    pub(crate) fn reject(
        &mut self,
        error: ErrorReport,
        now: SystemTime,
    ) -> Result<(), InvalidTransition> {
        if self.in_flight() || self.is_owned() {
            return Err(self.invalid("reject"));
        }
        self.enter(
            Phase::Failed {
                error,
                during: Operation::Attach,
                retry_at: None,
            },
            now,
        );
        Ok(())
    }

    pub(crate) fn start_detach(&mut self, now: SystemTime) -> Result<(), InvalidTransition> {
        let allowed = matches!(
            self.phase,
            Phase::Attached | Phase::DetachBlocked { .. } | Phase::Failed { .. }
        ) && self.is_owned();
        if !allowed {
            return Err(self.invalid("start detach"));
        }
        self.enter(Phase::Detaching, now);
        Ok(())
    }

    /// The volume is gone from the host; the caller drops it.
    pub(crate) fn detach_succeeded(&mut self) -> Result<(), InvalidTransition> {
        if self.phase != Phase::Detaching {
            return Err(self.invalid("finish detach"));
        }
        self.attachment = None;
        Ok(())
    }

    pub(crate) fn detach_blocked(
        &mut self,
        reason: ErrorReport,
        retry_at: Millis,
        now: SystemTime,
    ) -> Result<(), InvalidTransition> {
        if self.phase != Phase::Detaching {
            return Err(self.invalid("block detach"));
        }
        self.enter(Phase::DetachBlocked { reason, retry_at }, now);
        Ok(())
    }

    pub(crate) fn detach_failed(
        &mut self,
        error: ErrorReport,
        retry_at: Millis,
        now: SystemTime,
    ) -> Result<(), InvalidTransition> {
        if self.phase != Phase::Detaching {
            return Err(self.invalid("fail detach"));
        }
        self.failures += 1;
        self.enter(
            Phase::Failed {
                error,
                during: Operation::Detach,
                retry_at: Some(retry_at),
            },
            now,
        );
        Ok(())
    }

    /// The target's volume is larger than the device: grow it. The phase's start time stays:
    /// the volume is attached all along.
    pub(crate) fn start_grow(&mut self, size_bytes: u64) -> Result<(), InvalidTransition> {
        if self.phase != Phase::Attached || !self.is_owned() {
            return Err(self.invalid("start grow"));
        }
        self.phase = Phase::Growing { size_bytes };
        Ok(())
    }

    /// `size_bytes` is the device's size after the grow.
    pub(crate) fn grow_succeeded(&mut self, size_bytes: u64) -> Result<(), InvalidTransition> {
        if !matches!(self.phase, Phase::Growing { .. }) {
            return Err(self.invalid("finish grow"));
        }
        if let Some(attachment) = &mut self.attachment {
            attachment.device.size_bytes = size_bytes;
        }
        self.grow_failure = None;
        self.phase = Phase::Attached;
        Ok(())
    }

    pub(crate) fn grow_failed(
        &mut self,
        error: ErrorReport,
        retry_at: Millis,
    ) -> Result<(), InvalidTransition> {
        let Phase::Growing { size_bytes } = self.phase else {
            return Err(self.invalid("fail grow"));
        };
        self.grow_failure = Some(GrowFailure {
            error,
            size_bytes,
            retry_at,
        });
        self.phase = Phase::Attached;
        Ok(())
    }

    /// Assigned again while a detach was blocked or failed: it stays, as it was.
    pub(crate) fn reassigned(&mut self, now: SystemTime) -> Result<(), InvalidTransition> {
        match self.phase {
            Phase::DetachBlocked { .. }
            | Phase::Failed {
                during: Operation::Detach,
                ..
            } if self.is_owned() => {
                self.failures = 0;
                self.enter(Phase::Attached, now);
                Ok(())
            }
            _ => Err(self.invalid("reassign")),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
