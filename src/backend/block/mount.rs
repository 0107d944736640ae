//! Mount policy, the same for every volume type: mount only where and how the node allows;
//! format only when asked and the device holds nothing; on detach, unmount only what the agent
//! mounted, and refuse while anything else still holds the device.

use std::path::{Path, PathBuf};

use crate::backend::{Attachment, BlockDevice, BlockHost, ErrorKind, HostError, MountRecord};
use crate::protocol::target::MountSpec;
use crate::protocol::target::mount::{
    DEFAULT_MOUNT_PREFIXES, SUID_DEV_OPTIONS, overlaps, system_tree,
};

/// Where and how this node lets the agent mount (`agent.mount_prefixes`,
/// `agent.mount_allow_suid_dev`), on top of the rules every target passed at parse time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountPolicy {
    /// A mount point must be below one of these (component-wise), never one of them.
    pub(crate) prefixes: Vec<PathBuf>,
    /// Targets may ask for `suid` and `dev`, and `nosuid,nodev` are not added.
    pub(crate) allow_suid_dev: bool,
    /// The agent's state directory: never mounted in, over or above.
    pub(crate) state_dir: PathBuf,
}

impl Default for MountPolicy {
    fn default() -> Self {
        Self {
            prefixes: DEFAULT_MOUNT_PREFIXES.iter().map(PathBuf::from).collect(),
            allow_suid_dev: false,
            state_dir: PathBuf::from("/var/lib/tether"),
        }
    }
}

impl MountPolicy {
    /// Refuses a mount point or an option this node does not allow; otherwise the options to
    /// mount with: the target's, `ro` for a read-only volume, then `nosuid,nodev` unless the
    /// node allows suid and device files.
    pub(crate) fn check(&self, spec: &MountSpec, read_only: bool) -> Result<String, HostError> {
        let path = spec.path.as_path();
        self.check_path(path)
            .map_err(|why| refused(format!("{} {why}", path.display())))?;
        let mut options: Vec<&str> = spec.options.iter().flat_map(|o| o.split(',')).collect();
        if !self.allow_suid_dev
            && let Some(option) = options.iter().find(|o| SUID_DEV_OPTIONS.contains(o))
        {
            return Err(refused(format!(
                "option {option:?} is not allowed on this node: set-user-ID programs or \
                 device files on the volume would take effect; remove it from \
                 extra.mount.options, or set agent.mount_allow_suid_dev = true in the \
                 node's configuration"
            )));
        }
        if read_only {
            // Last, so that it wins over a "rw" in the target's options.
            options.push("ro");
        }
        if !self.allow_suid_dev {
            for option in ["nosuid", "nodev"] {
                if !options.contains(&option) {
                    options.push(option);
                }
            }
        }
        Ok(options.join(","))
    }

    fn check_path(&self, path: &Path) -> Result<(), String> {
        if let Some(tree) = system_tree(path) {
            return Err(format!(
                "is in or over the system directory {tree}, where volumes are never mounted; \
                 choose a path below {}",
                self.shown_prefixes()
            ));
        }
        if overlaps(path, &self.state_dir) {
            return Err(format!(
                "is in or over the agent's state directory {}; choose a path below {}",
                self.state_dir.display(),
                self.shown_prefixes()
            ));
        }
        if let Some(prefix) = self.prefixes.iter().find(|p| path == p.as_path()) {
            return Err(format!(
                "is the mount prefix {} itself, and mounting there would hide everything below \
                 it; choose a path below it, like {}/data",
                prefix.display(),
                prefix.display()
            ));
        }
        if !self.prefixes.iter().any(|p| path.starts_with(p)) {
            return Err(format!(
                "is not below a directory this node mounts in ({}); choose a path below one \
                 of them, or add its directory to agent.mount_prefixes in the node's \
                 configuration",
                self.shown_prefixes()
            ));
        }
        Ok(())
    }

    fn shown_prefixes(&self) -> String {
        if self.prefixes.is_empty() {
            return "none: agent.mount_prefixes is empty".into();
        }
        let shown: Vec<String> = self
            .prefixes
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        shown.join(", ")
    }
}

pub(super) fn refused(message: String) -> HostError {
    HostError::new(ErrorKind::MountRefused, message)
}

/// Mounts the device as `spec` asks, if the node's policy allows it, on a mount point made
/// without following links; formats it only when asked and when it holds nothing.
pub(crate) fn ensure_mounted(
    block: &dyn BlockHost,
    device: &BlockDevice,
    spec: &MountSpec,
    read_only: bool,
    policy: &MountPolicy,
) -> Result<MountRecord, HostError> {
    let options = policy.check(spec, read_only)?;
    let mounts = block.mounts_of(&device.kernel_name)?;
    if mounts.iter().any(|m| m == &spec.path) {
        return Ok(MountRecord {
            path: spec.path.clone(),
            by_agent: true,
        });
    }
    block.prepare_mount_point(&spec.path)?;
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
        crate::failpoints::crash("mount.mkfs_done");
    }
    block.mount(&device.device_path, &spec.path, &spec.fstype, &options)?;
    crate::failpoints::crash("mount.mounted");
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
    if kernel.is_empty() {
        // What an interrupted attach left before its device appeared: nothing to hold.
        return Ok(None);
    }
    if let Some(mount) = attachment.mount.as_ref().filter(|m| m.by_agent)
        && block.mounts_of(kernel)?.contains(&mount.path)
        && let Err(e) = block.unmount(&mount.path)
    {
        return Ok(Some(format!(
            "{} could not be unmounted: {}",
            mount.path.display(),
            e.message
        )));
    }
    if attachment.mount.as_ref().is_some_and(|m| m.by_agent) {
        crate::failpoints::crash("mount.unmounted");
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

    /// `ensure_mounted` under the default policy.
    fn mounted(
        kernel: &SimKernel,
        device: &BlockDevice,
        spec: &MountSpec,
        read_only: bool,
    ) -> Result<MountRecord, HostError> {
        ensure_mounted(kernel, device, spec, read_only, &MountPolicy::default())
    }

    fn spec(mkfs: bool) -> MountSpec {
        MountSpec {
            path: "/srv/data".into(),
            fstype: "ext4".into(),
            options: None,
            mkfs,
            grow: false,
        }
    }

    #[test]
    fn an_empty_device_is_formatted_only_when_asked_and_writable() {
        let (kernel, device) = kernel_with_a_lun();
        let refused = mounted(&kernel, &device, &spec(false), false).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::NoFilesystem);
        assert!(refused.message.contains("set mkfs to true"), "{refused}");
        let read_only = mounted(&kernel, &device, &spec(true), true).unwrap_err();
        assert_eq!(read_only.kind, ErrorKind::NoFilesystem);
        assert_eq!(kernel.stats().mkfs, 0);
        let record = mounted(&kernel, &device, &spec(true), false).unwrap();
        assert_eq!(
            record,
            MountRecord {
                path: "/srv/data".into(),
                by_agent: true
            }
        );
        // Already mounted there: neither formatted nor mounted again.
        mounted(&kernel, &device, &spec(true), false).unwrap();
        assert_eq!(kernel.stats().mkfs, 1);
        assert_eq!(kernel.mounts("sda"), vec![PathBuf::from("/srv/data")]);
    }

    #[test]
    fn release_unmounts_what_the_agent_mounted_and_names_any_other_mount() {
        let (kernel, device) = kernel_with_a_lun();
        let mount = mounted(&kernel, &device, &spec(true), false).unwrap();
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

    fn at(path: &str, options: Option<&str>) -> MountSpec {
        MountSpec {
            path: path.into(),
            fstype: "ext4".into(),
            options: options.map(str::to_string),
            mkfs: true,
            grow: false,
        }
    }

    /// The policy's answer for a mount at `path`: its options, or why it is refused.
    fn check(policy: &MountPolicy, path: &str, options: Option<&str>) -> Result<String, String> {
        policy.check(&at(path, options), false).map_err(|e| {
            assert_eq!(e.kind, ErrorKind::MountRefused, "{e}");
            e.message
        })
    }

    #[test]
    fn the_node_mounts_only_below_its_prefixes() {
        let default = MountPolicy::default();
        for path in ["/srv/data", "/mnt/vol1", "/srv/a/b/c"] {
            check(&default, path, None).unwrap();
        }
        for (path, why) in [
            (
                "/srvx/data",
                "is not below a directory this node mounts in (/srv, /mnt)",
            ),
            ("/opt/data", "add its directory to agent.mount_prefixes"),
            ("/srv", "is the mount prefix /srv itself"),
            ("/mnt", "is the mount prefix /mnt itself"),
        ] {
            let message = check(&default, path, None).unwrap_err();
            assert!(message.starts_with(path), "{message}");
            assert!(message.contains(why), "{path}: {message}");
        }
        let own = MountPolicy {
            prefixes: vec!["/data".into()],
            ..MountPolicy::default()
        };
        check(&own, "/data/x", None).unwrap();
        check(&own, "/srv/x", None).unwrap_err();
        let none = MountPolicy {
            prefixes: Vec::new(),
            ..MountPolicy::default()
        };
        let message = check(&none, "/srv/x", None).unwrap_err();
        assert!(
            message.contains("agent.mount_prefixes is empty"),
            "{message}"
        );
    }

    #[test]
    fn system_paths_and_the_state_dir_are_refused_even_below_a_broad_prefix() {
        let broad = MountPolicy {
            prefixes: vec!["/".into()],
            allow_suid_dev: false,
            state_dir: "/srv/tether-state".into(),
        };
        for path in [
            "/etc/ssh",
            "/usr/bin",
            "/lib",
            "/boot/efi",
            "/var/lib/tether",
            "/var",
        ] {
            let message = check(&broad, path, None).unwrap_err();
            assert!(message.contains("the system directory"), "{message}");
        }
        for path in ["/srv/tether-state", "/srv/tether-state/x", "/srv"] {
            let message = check(&broad, path, None).unwrap_err();
            assert!(
                message.contains("the agent's state directory /srv/tether-state"),
                "{message}"
            );
        }
        check(&broad, "/srv/tether-statex", None).unwrap();
        check(&broad, "/data/x", None).unwrap();
    }

    #[test]
    fn suid_and_dev_are_refused_and_nosuid_nodev_added_unless_the_node_allows_them() {
        let default = MountPolicy::default();
        assert_eq!(check(&default, "/srv/x", None).unwrap(), "nosuid,nodev");
        assert_eq!(
            check(&default, "/srv/x", Some("noatime,nodev")).unwrap(),
            "noatime,nodev,nosuid"
        );
        let read_only = default.check(&at("/srv/x", Some("rw")), true).unwrap();
        assert_eq!(read_only, "rw,ro,nosuid,nodev");
        for option in ["suid", "dev", "noatime,suid"] {
            let message = check(&default, "/srv/x", Some(option)).unwrap_err();
            assert!(message.contains("agent.mount_allow_suid_dev"), "{message}");
        }
        let allowing = MountPolicy {
            allow_suid_dev: true,
            ..MountPolicy::default()
        };
        assert_eq!(check(&allowing, "/srv/x", None).unwrap(), "");
        assert_eq!(
            check(&allowing, "/srv/x", Some("suid,dev")).unwrap(),
            "suid,dev"
        );
    }

    #[test]
    fn a_refused_mount_neither_formats_nor_mounts() {
        let (kernel, device) = kernel_with_a_lun();
        for refused in [at("/opt/x", None), at("/srv/x", Some("suid"))] {
            let error = mounted(&kernel, &device, &refused, false).unwrap_err();
            assert_eq!(error.kind, ErrorKind::MountRefused);
        }
        assert_eq!(kernel.stats().mkfs, 0);
        assert!(kernel.mounts("sda").is_empty());
        mounted(&kernel, &device, &at("/srv/x", Some("noatime")), false).unwrap();
        assert_eq!(
            kernel.mount_options("/srv/x").as_deref(),
            Some("noatime,nosuid,nodev")
        );
    }
}
