//! Host backends: how a validated target becomes a block device on this node and back.
//!
//! Each volume type has a [`VolumeBackend`]. Backends are written against small host traits
//! ([`iscsi::IscsiHost`], [`rbd::RbdHost`], [`BlockHost`]) so that the same logic runs on the
//! real kernel and on the [`simulated`] one used by tests, demos and benchmarks.

pub mod block;
pub mod cmd;
mod error;
pub mod iscsi;
pub mod rbd;
pub mod simulated;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::ForeignAttachment;
use crate::protocol::target::{MountSpec, TargetSpec};
use block::DeviceMatcher;
pub use error::{ErrorKind, HostError};

/// A block device as the agent reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name, e.g. `sdb` or `rbd0`.
    pub kernel_name: String,
    /// The stable udev path, e.g. `/dev/disk/by-path/ip-…-lun-0` or `/dev/rbd/pool/image`.
    pub device_path: String,
    pub size_bytes: u64,
    #[serde(default)]
    pub wwn: Option<String>,
}

/// What the agent attached: kept in the ownership record (no secrets), enough to detach it
/// after a restart and to recognise it on the host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    pub device: BlockDevice,
    /// Every path's device path (one for a single-path volume).
    pub paths: Vec<String>,
    pub handle: Handle,
    #[serde(default)]
    pub mount: Option<MountRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Handle {
    Iscsi {
        paths: Vec<IscsiPathHandle>,
        /// The dm-multipath map over the paths, when multipathd made one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        multipath: Option<MultipathHandle>,
    },
    Rbd(RbdHandle),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MultipathHandle {
    /// The map's name, as `multipath -f` takes it and /dev/mapper shows it. The map itself
    /// is the attachment's device.
    pub name: String,
    /// The agent put the WWID into multipath's wwids file (so it removes it on detach).
    pub wwid_registered: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IscsiPathHandle {
    pub portal: String,
    pub iqn: String,
    pub lun: u16,
    pub kernel_name: String,
    /// The agent logged this session in (so it may log it out when no owned LUN uses it).
    pub session_created: bool,
    /// The agent made this LUN's SCSI device appear (so it may delete it).
    pub device_created: bool,
}

impl IscsiPathHandle {
    pub fn session_key(&self) -> SessionKey {
        SessionKey {
            portal: self.portal.clone(),
            iqn: self.iqn.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RbdHandle {
    pub device_id: u32,
    pub pool: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub image: String,
    /// The agent mapped it (so it may unmap it).
    pub mapped_by_agent: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountRecord {
    pub path: PathBuf,
    /// Only mounts the agent made are unmounted by it.
    pub by_agent: bool,
}

/// One iSCSI session, named the way the agent keys logins: (portal, iqn).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionKey {
    pub portal: String,
    pub iqn: String,
}

impl std::fmt::Display for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{}", self.portal, self.iqn)
    }
}

impl Attachment {
    /// Sessions this volume's paths run over.
    pub fn sessions(&self) -> Vec<SessionKey> {
        match &self.handle {
            Handle::Iscsi { paths, .. } => paths.iter().map(IscsiPathHandle::session_key).collect(),
            Handle::Rbd(_) => Vec::new(),
        }
    }

    /// Login keys, in the same form as [`TargetSpec::login_keys`].
    pub fn login_keys(&self) -> Vec<String> {
        self.sessions().iter().map(ToString::to_string).collect()
    }

    pub fn volume_type(&self) -> &'static str {
        match self.handle {
            Handle::Iscsi { .. } => "iscsi",
            Handle::Rbd(_) => "rbd",
        }
    }
}

/// What a backend knows of the agent's other volumes while it attaches or detaches one.
#[derive(Debug, Clone, Default)]
pub struct Ownership {
    /// Sessions the agent logged in (any owned volume's path has `session_created`).
    pub owned_sessions: BTreeSet<SessionKey>,
    /// Sessions used by owned volumes other than the one being worked on.
    pub sessions_used_by_others: BTreeSet<SessionKey>,
}

pub enum DetachOutcome {
    Detached {
        /// Sessions this volume had created but that other volumes still use: their
        /// `session_created` flag moves to one of those volumes.
        sessions_kept: Vec<SessionKey>,
    },
    /// Something still uses the device; nothing was changed.
    Blocked { holder: String },
}

/// One volume type's attach and detach.
pub trait VolumeBackend: Send + Sync {
    fn attach(
        &self,
        spec: &TargetSpec,
        ownership: &Ownership,
        timeout: Duration,
    ) -> Result<Attachment, HostError>;
    fn detach(
        &self,
        attachment: &Attachment,
        ownership: &Ownership,
    ) -> Result<DetachOutcome, HostError>;
    /// Whether the attachment is still on the host (after a restart, say).
    fn is_present(&self, attachment: &Attachment) -> Result<bool, HostError>;
    /// Attachments of this type on the host that none of `owned` accounts for.
    fn foreign(&self, owned: &[&Attachment]) -> Result<Vec<ForeignAttachment>, HostError>;
}

/// Block devices, udev and mounts: shared by every backend and by the mount step.
pub trait BlockHost: Send + Sync {
    /// Waits until `what` finds its device and udev's stable link to it exists.
    fn wait_for_device(
        &self,
        what: &dyn DeviceMatcher,
        timeout: Duration,
    ) -> Result<BlockDevice, HostError>;
    /// Kernel names under /sys/block/<dev>/holders (device-mapper, md, …).
    fn holders(&self, kernel_name: &str) -> Result<Vec<String>, HostError>;
    /// Where the device is mounted, from /proc/self/mountinfo.
    fn mounts_of(&self, kernel_name: &str) -> Result<Vec<PathBuf>, HostError>;
    fn flush(&self, kernel_name: &str) -> Result<(), HostError>;
    /// Whether blkid finds any signature (filesystem, partition table, LVM…) on the device.
    fn has_signature(&self, device_path: &str) -> Result<bool, HostError>;
    fn mkfs(&self, device_path: &str, fstype: &str) -> Result<(), HostError>;
    fn mount(&self, device_path: &str, spec: &MountSpec, read_only: bool) -> Result<(), HostError>;
    fn unmount(&self, path: &Path) -> Result<(), HostError>;
}

impl<T: BlockHost + ?Sized> BlockHost for std::sync::Arc<T> {
    fn wait_for_device(
        &self,
        what: &dyn DeviceMatcher,
        timeout: Duration,
    ) -> Result<BlockDevice, HostError> {
        (**self).wait_for_device(what, timeout)
    }
    fn holders(&self, kernel_name: &str) -> Result<Vec<String>, HostError> {
        (**self).holders(kernel_name)
    }
    fn mounts_of(&self, kernel_name: &str) -> Result<Vec<PathBuf>, HostError> {
        (**self).mounts_of(kernel_name)
    }
    fn flush(&self, kernel_name: &str) -> Result<(), HostError> {
        (**self).flush(kernel_name)
    }
    fn has_signature(&self, device_path: &str) -> Result<bool, HostError> {
        (**self).has_signature(device_path)
    }
    fn mkfs(&self, device_path: &str, fstype: &str) -> Result<(), HostError> {
        (**self).mkfs(device_path, fstype)
    }
    fn mount(&self, device_path: &str, spec: &MountSpec, read_only: bool) -> Result<(), HostError> {
        (**self).mount(device_path, spec, read_only)
    }
    fn unmount(&self, path: &Path) -> Result<(), HostError> {
        (**self).unmount(path)
    }
}

/// A volume type this node cannot serve (its tools are missing): every volume of that type
/// fails with the reason, and nothing recorded is ever taken for gone.
pub struct Unavailable(pub HostError);

impl VolumeBackend for Unavailable {
    fn attach(&self, _: &TargetSpec, _: &Ownership, _: Duration) -> Result<Attachment, HostError> {
        Err(self.0.clone())
    }
    fn detach(&self, _: &Attachment, _: &Ownership) -> Result<DetachOutcome, HostError> {
        Err(self.0.clone())
    }
    fn is_present(&self, _: &Attachment) -> Result<bool, HostError> {
        Err(self.0.clone())
    }
    fn foreign(&self, _: &[&Attachment]) -> Result<Vec<ForeignAttachment>, HostError> {
        Ok(Vec::new())
    }
}
