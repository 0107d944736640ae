//! Host backends: how a validated target becomes a block device on this node and back.
//!
//! Each volume type has a [`VolumeBackend`]. Backends are written against small host traits
//! ([`iscsi::IscsiHost`], [`rbd::RbdHost`], [`BlockHost`]) so that the same logic runs on the
//! real kernel and on the [`simulated`] one used by tests, demos and benchmarks.

pub(crate) mod block;
pub(crate) mod cmd;
mod error;
pub(crate) mod iscsi;
pub(crate) mod nvme;
pub(crate) mod rbd;
pub mod simulated;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::ForeignAttachment;
use crate::protocol::target::{NamespaceId, Portal, SessionKey, VolumeType, parse_portal};
use block::DeviceMatcher;
pub use error::{ErrorKind, HostError};

/// A block device as the agent reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct BlockDevice {
    /// Kernel name, e.g. `sdb` or `rbd0`.
    pub(crate) kernel_name: String,
    /// The stable udev path, e.g. `/dev/disk/by-path/ip-…-lun-0` or `/dev/rbd/pool/image`.
    pub(crate) device_path: String,
    pub(crate) size_bytes: u64,
    #[serde(default)]
    pub(crate) wwn: Option<String>,
}

impl BlockDevice {
    /// No device: what an interrupted attach left before its device appeared.
    pub(crate) fn none() -> Self {
        Self {
            kernel_name: String::new(),
            device_path: String::new(),
            size_bytes: 0,
            wwn: None,
        }
    }
}

/// What the agent attached: kept in the ownership record (no secrets), enough to detach it
/// after a restart and to recognise it on the host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Attachment {
    pub(crate) device: BlockDevice,
    /// Every path's device path (one for a single-path volume).
    pub(crate) paths: Vec<String>,
    /// Named `handle` in records written before the rename.
    #[serde(rename = "handle")]
    pub(crate) backend: BackendAttachment,
    #[serde(default)]
    pub(crate) mount: Option<MountRecord>,
}

/// The part of an attachment only its backend understands; one variant per volume type, as
/// [`BackendSpec`](crate::protocol::target::BackendSpec) has.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum BackendAttachment {
    Iscsi(IscsiAttachment),
    Rbd(RbdAttachment),
    Nvmeof(NvmeAttachment),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct IscsiAttachment {
    pub(crate) paths: Vec<IscsiPathAttachment>,
    /// The dm-multipath map over the paths, when multipathd made one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) multipath: Option<MultipathMap>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct MultipathMap {
    /// The map's name, as `multipath -f` takes it and /dev/mapper shows it. The map itself
    /// is the attachment's device.
    pub(crate) name: String,
    /// The agent put the WWID into multipath's wwids file (so it removes it on detach).
    pub(crate) wwid_registered: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct IscsiPathAttachment {
    /// Recorded as `portal` and `iqn`.
    #[serde(flatten)]
    pub(crate) session: SessionKey,
    pub(crate) lun: u16,
    pub(crate) kernel_name: String,
    /// The agent logged this session in (so it may log it out when no owned LUN uses it).
    pub(crate) session_created: bool,
    /// The agent made this LUN's SCSI device appear (so it may delete it).
    pub(crate) device_created: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct RbdAttachment {
    pub(crate) device_id: u32,
    pub(crate) pool: String,
    #[serde(default)]
    pub(crate) namespace: Option<String>,
    pub(crate) image: String,
    /// The agent mapped it (so it may unmap it).
    pub(crate) mapped_by_agent: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct NvmeAttachment {
    /// One per portal; the namespace's device is shared by them (native NVMe multipath).
    pub(crate) controllers: Vec<NvmeControllerAttachment>,
    pub(crate) namespace: NamespaceId,
}

/// One NVMe-oF controller, recorded as `portal`, `subsys_nqn`, `controller` and `created`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(try_from = "NvmeControllerRecord", into = "NvmeControllerRecord")]
pub(crate) struct NvmeControllerAttachment {
    /// (portal, subsystem NQN).
    pub(crate) key: SessionKey,
    /// `nvmeN` when it was connected; the kernel may give another number after a reconnect,
    /// so the key, not the name, identifies it.
    pub(crate) controller: String,
    /// The agent connected it (so it may disconnect it when no owned namespace uses it).
    pub(crate) created: bool,
}

#[derive(Serialize, Deserialize)]
struct NvmeControllerRecord {
    portal: String,
    subsys_nqn: String,
    controller: String,
    created: bool,
}

impl TryFrom<NvmeControllerRecord> for NvmeControllerAttachment {
    type Error = String;
    fn try_from(r: NvmeControllerRecord) -> Result<Self, String> {
        let portal = parse_portal(&r.portal).map_err(|e| e.to_string())?;
        Ok(Self {
            key: SessionKey::new(&portal, &r.subsys_nqn),
            controller: r.controller,
            created: r.created,
        })
    }
}

impl From<NvmeControllerAttachment> for NvmeControllerRecord {
    fn from(a: NvmeControllerAttachment) -> Self {
        Self {
            portal: a.key.portal().to_string(),
            subsys_nqn: a.key.iqn().to_string(),
            controller: a.controller,
            created: a.created,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct MountRecord {
    pub(crate) path: PathBuf,
    /// Only mounts the agent made are unmounted by it.
    pub(crate) by_agent: bool,
}

/// The parts of a target that an attach may create, because the host lacked them when it
/// began. The agent records them before the attach starts: after a crash, those the host has
/// are the agent's own, and nothing else is.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Creations {
    /// iSCSI sessions, or NVMe-oF controllers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) sessions: Vec<SessionKey>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) luns: Vec<LunRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) image: Option<RbdImage>,
    /// The NVMe namespace the controllers in `sessions` were connected for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) namespace: Option<NamespaceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) mount: Option<PathBuf>,
}

/// One LUN of one session, recorded as `portal`, `iqn` and `lun`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct LunRef {
    #[serde(flatten)]
    pub(crate) session: SessionKey,
    pub(crate) lun: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct RbdImage {
    pub(crate) pool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) namespace: Option<String>,
    pub(crate) image: String,
}

impl Attachment {
    /// Keeps what `previous`, an earlier attachment of the same volume, says the agent made: an
    /// attach that completes one that failed halfway, or that a crash interrupted, finds those
    /// parts on the host and would otherwise take them for someone else's, and never remove them.
    pub(crate) fn inherit_ownership(&mut self, previous: &Attachment) {
        match (&mut self.backend, &previous.backend) {
            (BackendAttachment::Iscsi(now), BackendAttachment::Iscsi(before)) => {
                for path in &mut now.paths {
                    for old in before.paths.iter().filter(|o| o.session == path.session) {
                        path.session_created |= old.session_created;
                        if old.lun == path.lun {
                            path.device_created |= old.device_created;
                        }
                    }
                }
            }
            (BackendAttachment::Nvmeof(now), BackendAttachment::Nvmeof(before)) => {
                for controller in &mut now.controllers {
                    controller.created |= before
                        .controllers
                        .iter()
                        .any(|old| old.key == controller.key && old.created);
                }
            }
            (BackendAttachment::Rbd(now), BackendAttachment::Rbd(before))
                if (&now.pool, &now.namespace, &now.image)
                    == (&before.pool, &before.namespace, &before.image) =>
            {
                now.mapped_by_agent |= before.mapped_by_agent;
            }
            _ => {}
        }
        if let (Some(now), Some(before)) = (&mut self.mount, &previous.mount)
            && now.path == before.path
        {
            now.by_agent |= before.by_agent;
        }
    }

    /// Whether the agent may have left something of this attachment on the host when the host
    /// no longer shows it whole: a session it logged in keeps its node record (and CHAP secret)
    /// in /etc/iscsi across a logout that did not finish, and across a reboot. A controller is
    /// kernel state only: nothing of it outlives its disconnect.
    pub(crate) fn may_leave_traces(&self) -> bool {
        match &self.backend {
            BackendAttachment::Iscsi(iscsi) => iscsi.paths.iter().any(|p| p.session_created),
            BackendAttachment::Rbd(_) | BackendAttachment::Nvmeof(_) => false,
        }
    }

    /// The shared connections (iSCSI sessions, NVMe-oF controllers) this volume runs over, each
    /// with whether the agent made it.
    pub(crate) fn connections(&self) -> Vec<(&SessionKey, bool)> {
        match &self.backend {
            BackendAttachment::Iscsi(iscsi) => iscsi
                .paths
                .iter()
                .map(|p| (&p.session, p.session_created))
                .collect(),
            BackendAttachment::Nvmeof(nvme) => nvme
                .controllers
                .iter()
                .map(|c| (&c.key, c.created))
                .collect(),
            BackendAttachment::Rbd(_) => Vec::new(),
        }
    }

    /// Marks the connection `key` as the agent's, when this volume runs over it: a detached
    /// volume made it and this one inherits it. Whether it did.
    pub(crate) fn take_over_connection(&mut self, key: &SessionKey) -> bool {
        match &mut self.backend {
            BackendAttachment::Iscsi(iscsi) => iscsi
                .paths
                .iter_mut()
                .find(|p| p.session == *key)
                .map(|p| p.session_created = true)
                .is_some(),
            BackendAttachment::Nvmeof(nvme) => nvme
                .controllers
                .iter_mut()
                .find(|c| c.key == *key)
                .map(|c| c.created = true)
                .is_some(),
            BackendAttachment::Rbd(_) => false,
        }
    }

    /// Sessions (or controllers) this volume's paths run over.
    pub(crate) fn sessions(&self) -> Vec<SessionKey> {
        self.connections()
            .into_iter()
            .map(|(key, _)| key.clone())
            .collect()
    }

    pub(crate) fn volume_type(&self) -> VolumeType {
        match self.backend {
            BackendAttachment::Iscsi(_) => VolumeType::Iscsi,
            BackendAttachment::Rbd(_) => VolumeType::Rbd,
            BackendAttachment::Nvmeof(_) => VolumeType::Nvmeof,
        }
    }
}

/// What a backend made: the device, every path's device path, and its own record.
#[derive(Debug, PartialEq)]
pub(crate) struct Attached<R> {
    pub(crate) device: BlockDevice,
    pub(crate) paths: Vec<String>,
    pub(crate) record: R,
}

impl<R> Attached<R> {
    pub(crate) fn into_attachment(
        self,
        variant: impl FnOnce(R) -> BackendAttachment,
    ) -> Attachment {
        Attachment {
            device: self.device,
            paths: self.paths,
            backend: variant(self.record),
            mount: None,
        }
    }
}

/// What a backend knows of the agent's other volumes while it attaches or detaches one.
/// Sessions here are iSCSI sessions and NVMe-oF controllers alike.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ownership {
    /// Sessions the agent made (any owned volume's path has `session_created`).
    pub(crate) owned_sessions: BTreeSet<SessionKey>,
    /// Sessions used by owned volumes other than the one being worked on.
    pub(crate) sessions_used_by_others: BTreeSet<SessionKey>,
}

pub(crate) enum DetachOutcome {
    Detached {
        /// Sessions this volume had created but that other volumes still use: their
        /// `session_created` flag moves to one of those volumes.
        sessions_kept: Vec<SessionKey>,
    },
    /// Something still uses the device; nothing was changed.
    Blocked { holder: String },
}

/// One volume type's attach and detach. `Spec` and `Record` tie a backend to its own variant
/// of [`BackendSpec`](crate::protocol::target::BackendSpec) and [`BackendAttachment`], so a
/// target cannot reach the wrong backend.
pub(crate) trait VolumeBackend: Send + Sync {
    type Spec;
    type Record;
    fn attach(
        &self,
        spec: &Self::Spec,
        read_only: bool,
        ownership: &Ownership,
        timeout: Duration,
    ) -> Result<Attached<Self::Record>, HostError>;
    fn detach(
        &self,
        device: &BlockDevice,
        record: &Self::Record,
        ownership: &Ownership,
    ) -> Result<DetachOutcome, HostError>;
    /// Whether the attachment is still on the host (after a restart, say).
    fn is_present(&self, record: &Self::Record) -> Result<bool, HostError>;
    /// The attachment's paths that are down now, each said in a sentence; empty while every
    /// path is up, or where the backend cannot tell (the kernel's RBD client shows no health).
    fn paths_down(&self, _record: &Self::Record) -> Result<Vec<String>, HostError> {
        Ok(Vec::new())
    }
    /// Asks the kernel to read the volume's size again (the volume grew at the storage). The
    /// default does nothing: the kernel's RBD client learns of a resize by itself.
    fn rescan(&self, _device: &BlockDevice, _record: &Self::Record) -> Result<(), HostError> {
        Ok(())
    }
    /// Attachments of this type on the host that none of `owned` accounts for.
    fn foreign(&self, owned: &[&Self::Record]) -> Result<Vec<ForeignAttachment>, HostError>;
    /// The parts of `spec` the host lacks now: what an attach of it may create.
    fn creations(&self, spec: &Self::Spec) -> Result<Creations, HostError>;
    /// What of an interrupted attach's `creations` the host has, as an attachment whose flags
    /// mark exactly those parts as the agent's; `None` when the host has none of them.
    fn leftover(&self, creations: &Creations) -> Result<Option<Attached<Self::Record>>, HostError>;
}

/// Block devices, udev and mounts: shared by every backend and by the mount step.
pub(crate) trait BlockHost: Send + Sync {
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
    /// Makes `path` (absolute on the host) ready to mount on, or refuses it
    /// ([`ErrorKind::MountRefused`]): every directory on the way is one (never a link), only
    /// root can change it, missing ones are made (mode 0755), and the last one is empty.
    fn prepare_mount_point(&self, path: &Path) -> Result<(), HostError>;
    /// Mounts the device on `path` with exactly `options` (comma-separated, may be empty).
    fn mount(
        &self,
        device_path: &str,
        path: &Path,
        fstype: &str,
        options: &str,
    ) -> Result<(), HostError>;
    fn unmount(&self, path: &Path) -> Result<(), HostError>;
    /// The device's size in bytes, as the kernel has it now.
    fn size_of(&self, kernel_name: &str) -> Result<u64, HostError>;
    /// Grows the file system on `device_path`, mounted at `mount_path`, to fill the device.
    fn grow_filesystem(
        &self,
        device_path: &str,
        mount_path: &Path,
        fstype: &str,
    ) -> Result<(), HostError>;
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
    fn prepare_mount_point(&self, path: &Path) -> Result<(), HostError> {
        (**self).prepare_mount_point(path)
    }
    fn mount(
        &self,
        device_path: &str,
        path: &Path,
        fstype: &str,
        options: &str,
    ) -> Result<(), HostError> {
        (**self).mount(device_path, path, fstype, options)
    }
    fn unmount(&self, path: &Path) -> Result<(), HostError> {
        (**self).unmount(path)
    }
    fn size_of(&self, kernel_name: &str) -> Result<u64, HostError> {
        (**self).size_of(kernel_name)
    }
    fn grow_filesystem(
        &self,
        device_path: &str,
        mount_path: &Path,
        fstype: &str,
    ) -> Result<(), HostError> {
        (**self).grow_filesystem(device_path, mount_path, fstype)
    }
}

/// A portal given by DNS name, resolved to the address the kernel will connect to.
pub(crate) fn resolve_portal(portal: &Portal) -> Result<Portal, HostError> {
    use std::net::{IpAddr, ToSocketAddrs};
    if portal.host.parse::<IpAddr>().is_ok() {
        return Ok(portal.clone());
    }
    let addr = (portal.host.as_str(), portal.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            HostError::new(
                ErrorKind::PortalUnreachable,
                format!(
                    "cannot resolve the portal's host name {:?}; check DNS or give an address",
                    portal.host
                ),
            )
        })?;
    Ok(Portal {
        host: addr.ip().to_string(),
        port: portal.port,
    })
}
