//! The node's backends, wired to the real system or to the simulated kernel, and the one place
//! that sends a target to the backend of its type.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::block::mount::MountPolicy;
use crate::backend::iscsi::IscsiBackend;
use crate::backend::iscsi::iscsiadm::SystemIscsi;
use crate::backend::iscsi::multipath::{MultipathHost, SystemMultipath};
use crate::backend::nvme::NvmeBackend;
use crate::backend::nvme::system::SystemNvme;
use crate::backend::rbd::RbdBackend;
use crate::backend::rbd::system::SystemRbd;
use crate::backend::simulated::SimKernel;
use crate::backend::{
    self, Attachment, BackendAttachment, BlockHost, Creations, DetachOutcome, ErrorKind, HostError,
    IscsiAttachment, MountRecord, NvmeAttachment, Ownership, RbdAttachment, VolumeBackend,
};
use crate::protocol::ForeignAttachment;
use crate::protocol::target::{
    BackendSpec, IscsiSpec, MountSpec, NvmeofSpec, RbdSpec, TargetSpec, VolumeType,
};

type Iscsi = dyn VolumeBackend<Spec = IscsiSpec, Record = IscsiAttachment>;
type Rbd = dyn VolumeBackend<Spec = RbdSpec, Record = RbdAttachment>;
type Nvme = dyn VolumeBackend<Spec = NvmeofSpec, Record = NvmeAttachment>;

/// One backend per volume type, plus block devices and mounts.
#[derive(Clone)]
pub struct Backends {
    /// An error when this node cannot serve the type (its tools are missing): every volume of
    /// that type fails with it, and nothing recorded is ever taken for gone.
    iscsi: Result<Arc<Iscsi>, HostError>,
    rbd: Result<Arc<Rbd>, HostError>,
    nvme: Result<Arc<Nvme>, HostError>,
    block: Arc<dyn BlockHost>,
    /// Where and how the node lets volumes be mounted.
    mount_policy: MountPolicy,
}

/// An attach that failed, with what stayed attached despite it (a device that did not mount).
pub(crate) struct AttachFailure {
    pub(crate) error: HostError,
    pub(crate) leftover: Option<Box<Attachment>>,
}

impl Backends {
    /// The whole host simulated in memory.
    pub fn simulated(kernel: Arc<SimKernel>) -> Self {
        Self {
            iscsi: Ok(Arc::new(IscsiBackend::new(kernel.clone(), kernel.clone()))),
            rbd: Ok(Arc::new(RbdBackend::new(kernel.clone(), kernel.clone()))),
            nvme: Ok(Arc::new(NvmeBackend::new(kernel.clone(), kernel.clone()))),
            block: Arc::new(kernel),
            mount_policy: MountPolicy::default(),
        }
    }

    /// The host's open-iscsi, rbd, udev and mount tools under `root` (`/` on a real node).
    pub fn system(root: &Path) -> Result<Self, HostError> {
        let block = Arc::new(backend::block::SystemBlock::new(root)?);
        let missing = backend::cmd::missing(root, &["blkid", "blockdev", "mount", "umount"]);
        if !missing.is_empty() {
            tracing::warn!(
                tools = ?missing,
                "tools for mounts and detach are missing; volumes that need them will fail"
            );
        }
        let iscsi = SystemIscsi::new(root).map(|host| {
            let multipath =
                SystemMultipath::new(root).map(|m| Box::new(m) as Box<dyn MultipathHost>);
            Arc::new(IscsiBackend::new(host, block.clone()).with_multipath(multipath)) as Arc<Iscsi>
        });
        if let Err(e) = &iscsi {
            tracing::warn!(
                kind = %e.kind,
                error = %e,
                "iSCSI volumes cannot be attached on this node"
            );
        }
        let rbd = SystemRbd::new(root, &root.join("run/tether"));
        let nvme = SystemNvme::new(root)
            .map(|host| Arc::new(NvmeBackend::new(host, block.clone())) as Arc<Nvme>);
        if let Err(e) = &nvme {
            tracing::warn!(
                kind = %e.kind,
                error = %e,
                "NVMe-oF volumes cannot be attached on this node"
            );
        }
        Ok(Self {
            iscsi,
            rbd: Ok(Arc::new(RbdBackend::new(rbd, block.clone()))),
            nvme,
            block,
            mount_policy: MountPolicy::default(),
        })
    }

    /// The node's mount rules (`agent.mount_prefixes`, `agent.mount_allow_suid_dev`) and the
    /// state directory no mount may cover, in place of the defaults.
    pub(crate) fn set_mount_policy(
        &mut self,
        prefixes: Vec<PathBuf>,
        allow_suid_dev: bool,
        state_dir: PathBuf,
    ) {
        self.mount_policy = MountPolicy {
            prefixes,
            allow_suid_dev,
            state_dir,
        };
    }

    fn iscsi(&self) -> Result<&Iscsi, HostError> {
        self.iscsi.as_deref().map_err(Clone::clone)
    }

    fn rbd(&self) -> Result<&Rbd, HostError> {
        self.rbd.as_deref().map_err(Clone::clone)
    }

    fn nvme(&self) -> Result<&Nvme, HostError> {
        self.nvme.as_deref().map_err(Clone::clone)
    }

    /// Attaches the target's device, then mounts it if the target asks for a mount.
    pub(crate) fn attach(
        &self,
        spec: &TargetSpec,
        ownership: &Ownership,
        timeout: Duration,
    ) -> Result<Attachment, AttachFailure> {
        let read_only = spec.read_only;
        let attached = match &spec.backend {
            BackendSpec::Iscsi(s) => self
                .iscsi()
                .and_then(|b| b.attach(s, read_only, ownership, timeout))
                .map(|a| a.into_attachment(BackendAttachment::Iscsi)),
            BackendSpec::Rbd(s) => self
                .rbd()
                .and_then(|b| b.attach(s, read_only, ownership, timeout))
                .map(|a| a.into_attachment(BackendAttachment::Rbd)),
            BackendSpec::Nvmeof(s) => self
                .nvme()
                .and_then(|b| b.attach(s, read_only, ownership, timeout))
                .map(|a| a.into_attachment(BackendAttachment::Nvmeof)),
        };
        let mut attachment = attached.map_err(|error| AttachFailure {
            error,
            leftover: None,
        })?;
        if let Some(mount) = &spec.mount {
            match backend::block::mount::ensure_mounted(
                self.block.as_ref(),
                &attachment.device,
                mount,
                read_only,
                &self.mount_policy,
            ) {
                Ok(record) => attachment.mount = Some(record),
                // The device stays attached and owned; the mount is retried with the volume.
                Err(error) => {
                    return Err(AttachFailure {
                        error,
                        leftover: Some(Box::new(attachment)),
                    });
                }
            }
        }
        Ok(attachment)
    }

    /// Unmounts what the agent mounted, refuses while anything else holds the device, then
    /// detaches it.
    pub(crate) fn detach(
        &self,
        attachment: &Attachment,
        ownership: &Ownership,
    ) -> Result<DetachOutcome, HostError> {
        if let Some(holder) = backend::block::mount::release(self.block.as_ref(), attachment)? {
            return Ok(DetachOutcome::Blocked { holder });
        }
        let device = &attachment.device;
        match &attachment.backend {
            BackendAttachment::Iscsi(r) => self.iscsi()?.detach(device, r, ownership),
            BackendAttachment::Rbd(r) => self.rbd()?.detach(device, r, ownership),
            BackendAttachment::Nvmeof(r) => self.nvme()?.detach(device, r, ownership),
        }
    }

    /// Grows the attached device to at least `size_bytes`: the backend has the kernel read the
    /// volume's size again, then the file system grows when `mount` asks for it. Returns the
    /// device's new size.
    pub(crate) fn grow(
        &self,
        attachment: &Attachment,
        size_bytes: u64,
        mount: Option<&MountSpec>,
        timeout: Duration,
    ) -> Result<u64, HostError> {
        let device = &attachment.device;
        match &attachment.backend {
            BackendAttachment::Iscsi(r) => self.iscsi()?.rescan(device, r)?,
            BackendAttachment::Rbd(r) => self.rbd()?.rescan(device, r)?,
            BackendAttachment::Nvmeof(r) => self.nvme()?.rescan(device, r)?,
        }
        let size = backend::block::wait_for_size(
            self.block.as_ref(),
            &device.kernel_name,
            size_bytes,
            timeout,
        )?;
        if let (Some(spec), Some(mounted)) = (mount.filter(|m| m.grow), &attachment.mount) {
            self.block
                .grow_filesystem(&device.device_path, &mounted.path, &spec.fstype)?;
        }
        Ok(size)
    }

    /// What an attach of `spec` may create: the parts the host lacks now, and its mount.
    pub(crate) fn creations(&self, spec: &TargetSpec) -> Result<Creations, HostError> {
        let mut creations = match &spec.backend {
            BackendSpec::Iscsi(s) => self.iscsi()?.creations(s)?,
            BackendSpec::Rbd(s) => self.rbd()?.creations(s)?,
            BackendSpec::Nvmeof(s) => self.nvme()?.creations(s)?,
        };
        // A mount at this path of this volume's device is only ever the agent's.
        creations.mount = spec.mount.as_ref().map(|m| m.path.clone());
        Ok(creations)
    }

    /// What an interrupted attach of `volume_type` left of `creations` on the host, as an
    /// attachment that marks exactly those parts as the agent's.
    pub(crate) fn leftover(
        &self,
        volume_type: VolumeType,
        creations: &Creations,
    ) -> Result<Option<Attachment>, HostError> {
        let attached = match volume_type {
            VolumeType::Iscsi => self
                .iscsi()?
                .leftover(creations)?
                .map(|a| a.into_attachment(BackendAttachment::Iscsi)),
            VolumeType::Rbd => self
                .rbd()?
                .leftover(creations)?
                .map(|a| a.into_attachment(BackendAttachment::Rbd)),
            VolumeType::Nvmeof => self
                .nvme()?
                .leftover(creations)?
                .map(|a| a.into_attachment(BackendAttachment::Nvmeof)),
        };
        let Some(mut attachment) = attached else {
            return Ok(None);
        };
        let kernel = &attachment.device.kernel_name;
        if let Some(path) = &creations.mount
            && !kernel.is_empty()
            && self.block.mounts_of(kernel)?.contains(path)
        {
            attachment.mount = Some(MountRecord {
                path: path.clone(),
                by_agent: true,
            });
        }
        Ok(Some(attachment))
    }

    /// Whether the mount an attachment records is still there. A volume can outlive its mount:
    /// the initramfs's mounts outside the new root do not survive switch-root, and an operator
    /// may unmount by hand. `true` when nothing is recorded as mounted.
    pub(crate) fn mount_kept(&self, attachment: &Attachment) -> Result<bool, HostError> {
        let (Some(mount), kernel) = (&attachment.mount, &attachment.device.kernel_name) else {
            return Ok(true);
        };
        if kernel.is_empty() {
            return Ok(false);
        }
        Ok(self.block.mounts_of(kernel)?.contains(&mount.path))
    }

    /// Why the attached volume is degraded (some of its paths are down), or `None`.
    pub(crate) fn degraded(&self, attachment: &Attachment) -> Result<Option<HostError>, HostError> {
        let down = match &attachment.backend {
            BackendAttachment::Iscsi(r) => self.iscsi()?.paths_down(r)?,
            BackendAttachment::Rbd(r) => self.rbd()?.paths_down(r)?,
            BackendAttachment::Nvmeof(r) => self.nvme()?.paths_down(r)?,
        };
        if down.is_empty() {
            return Ok(None);
        }
        let paths = attachment.paths.len().max(down.len());
        let message = match down.len() == paths {
            true => format!(
                "no path is up ({}): I/O waits until the target answers again (and fails after \
                 open-iscsi's replacement_timeout); the volume stays attached",
                down.join("; ")
            ),
            false => format!(
                "{} of {paths} paths down ({}): I/O goes through the others",
                down.len(),
                down.join("; ")
            ),
        };
        Ok(Some(HostError::new(ErrorKind::PathDown, message)))
    }

    pub(crate) fn is_present(&self, attachment: &Attachment) -> Result<bool, HostError> {
        match &attachment.backend {
            BackendAttachment::Iscsi(r) => self.iscsi()?.is_present(r),
            BackendAttachment::Rbd(r) => self.rbd()?.is_present(r),
            BackendAttachment::Nvmeof(r) => self.nvme()?.is_present(r),
        }
    }

    /// Attachments on the host that none of `owned` accounts for. A backend that cannot list
    /// them is logged and skipped.
    pub(crate) fn foreign(&self, owned: &[Attachment]) -> Vec<ForeignAttachment> {
        let mut iscsi = Vec::new();
        let mut rbd = Vec::new();
        let mut nvme = Vec::new();
        for attachment in owned {
            match &attachment.backend {
                BackendAttachment::Iscsi(r) => iscsi.push(r),
                BackendAttachment::Rbd(r) => rbd.push(r),
                BackendAttachment::Nvmeof(r) => nvme.push(r),
            }
        }
        let found = [
            self.iscsi().ok().map(|b| b.foreign(&iscsi)),
            self.rbd().ok().map(|b| b.foreign(&rbd)),
            self.nvme().ok().map(|b| b.foreign(&nvme)),
        ];
        let mut all = Vec::new();
        for result in found.into_iter().flatten() {
            match result {
                Ok(found) => all.extend(found),
                Err(e) => {
                    tracing::warn!(
                        kind = %e.kind,
                        error = %e,
                        "cannot list attachments on the host"
                    )
                }
            }
        }
        all
    }
}
