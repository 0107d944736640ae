//! Mount policy, the same for every volume type: format only when asked and the device holds
//! nothing; on detach, unmount only what the agent mounted, and refuse while anything else
//! still holds the device.

use crate::backend::{Attachment, BlockDevice, BlockHost, ErrorKind, HostError, MountRecord};
use crate::protocol::target::MountSpec;

/// Mounts the device as `spec` asks, formatting it only when asked and when it holds nothing.
pub(crate) fn ensure_mounted(
    block: &dyn BlockHost,
    device: &BlockDevice,
    spec: &MountSpec,
    read_only: bool,
) -> Result<MountRecord, HostError> {
    let mounts = block.mounts_of(&device.kernel_name)?;
    if mounts.iter().any(|m| m == &spec.path) {
        return Ok(MountRecord {
            path: spec.path.clone(),
            by_agent: true,
        });
    }
    if !block.has_signature(&device.device_path)? {
        if !spec.mkfs {
            return Err(HostError::new(
                ErrorKind::NoFilesystem,
                format!(
                    "{} holds no filesystem and extra.mount.mkfs is false; \
                     set mkfs to true to format it",
                    device.device_path
                ),
            ));
        }
        if read_only {
            return Err(HostError::new(
                ErrorKind::NoFilesystem,
                format!(
                    "{} holds no filesystem and is read-only, so it cannot be formatted",
                    device.device_path
                ),
            ));
        }
        block.mkfs(&device.device_path, &spec.fstype)?;
    }
    block.mount(&device.device_path, spec, read_only)?;
    Ok(MountRecord {
        path: spec.path.clone(),
        by_agent: true,
    })
}

/// Unmounts what the agent mounted, then refuses if anything else still holds the device.
/// Returns the holder when the device is in use.
pub(crate) fn release(
    block: &dyn BlockHost,
    attachment: &Attachment,
) -> Result<Option<String>, HostError> {
    let kernel = &attachment.device.kernel_name;
    if let Some(mount) = attachment.mount.as_ref().filter(|m| m.by_agent)
        && block.mounts_of(kernel)?.contains(&mount.path)
    {
        if let Err(e) = block.unmount(&mount.path) {
            return Ok(Some(format!(
                "{} could not be unmounted: {}",
                mount.path.display(),
                e.message
            )));
        }
    }
    if let Some(path) = block.mounts_of(kernel)?.first() {
        return Ok(Some(format!("mounted at {}", path.display())));
    }
    if let Some(holder) = block.holders(kernel)?.first() {
        return Ok(Some(format!(
            "held by {holder} (/sys/block/{kernel}/holders)"
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::backend::simulated::SimKernel;
    use crate::backend::{BackendAttachment, IscsiAttachment};

    fn kernel_with_a_lun() -> (SimKernel, BlockDevice) {
        let kernel = SimKernel::new(Duration::ZERO);
        kernel.login_by_hand("127.0.0.1:3260", "iqn.2003-01.test.tether:m", &[0]);
        let device = BlockDevice {
            kernel_name: "sda".into(),
            device_path:
                "/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-iqn.2003-01.test.tether:m-lun-0".into(),
            size_bytes: 0,
            wwn: None,
        };
        (kernel, device)
    }

    fn spec(mkfs: bool) -> MountSpec {
        MountSpec {
            path: "/srv/data".into(),
            fstype: "ext4".into(),
            options: None,
            mkfs,
        }
    }

    #[test]
    fn an_empty_device_is_formatted_only_when_asked_and_writable() {
        let (kernel, device) = kernel_with_a_lun();
        let refused = ensure_mounted(&kernel, &device, &spec(false), false).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::NoFilesystem);
        assert!(refused.message.contains("set mkfs to true"), "{refused}");
        let read_only = ensure_mounted(&kernel, &device, &spec(true), true).unwrap_err();
        assert_eq!(read_only.kind, ErrorKind::NoFilesystem);
        assert_eq!(kernel.stats().mkfs, 0);
        let record = ensure_mounted(&kernel, &device, &spec(true), false).unwrap();
        assert_eq!(
            record,
            MountRecord {
                path: "/srv/data".into(),
                by_agent: true
            }
        );
        // Already mounted there: neither formatted nor mounted again.
        ensure_mounted(&kernel, &device, &spec(true), false).unwrap();
        assert_eq!(kernel.stats().mkfs, 1);
        assert_eq!(kernel.mounts("sda"), vec![PathBuf::from("/srv/data")]);
    }

    #[test]
    fn release_unmounts_what_the_agent_mounted_and_names_any_other_mount() {
        let (kernel, device) = kernel_with_a_lun();
        let mount = ensure_mounted(&kernel, &device, &spec(true), false).unwrap();
        kernel.mount_by_hand("sda", "/mnt/admin");
        let attachment = Attachment {
            device,
            paths: Vec::new(),
            backend: BackendAttachment::Iscsi(IscsiAttachment {
                paths: Vec::new(),
                multipath: None,
            }),
            mount: Some(mount),
        };
        assert_eq!(
            release(&kernel, &attachment).unwrap().as_deref(),
            Some("mounted at /mnt/admin")
        );
        assert_eq!(kernel.mounts("sda"), vec![PathBuf::from("/mnt/admin")]);
        kernel.unmount_by_hand("/mnt/admin");
        assert_eq!(release(&kernel, &attachment).unwrap(), None);
    }
}
