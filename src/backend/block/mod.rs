//! The real [`BlockHost`]: sysfs, /dev links made by udev, /proc/self/mountinfo, and
//! blkid, mkfs, mount, umount and blockdev.
//!
//! Finding a device is split in two, after kata-containers' per-driver uevent matchers: each
//! backend's [`DeviceMatcher`] knows its own sysfs layout and names the kernel device and the
//! link udev makes for it; this module only waits (udev generation first, then a look, then a
//! sleep past that generation), checks the link and reads size and WWN. The simulated kernel
//! recognises the matcher types it simulates, which is why a matcher is [`Any`].

#[cfg(test)]
pub(crate) mod fixture;
pub(crate) mod mount;
pub(crate) mod mountinfo;
pub(crate) mod mountpoint;
pub(crate) mod udev;

pub(crate) use udev::monitor_restarts;

use std::any::Any;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cmd;
use super::{BlockDevice, BlockHost, ErrorKind, HostError};
use crate::fsutil::read_trimmed;
use udev::DeviceEvents;

/// A device as its backend finds it: the kernel's name and the stable link udev makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located {
    pub(crate) kernel_name: String,
    /// Absolute, e.g. `/dev/rbd/pool/image`.
    pub(crate) link: String,
}

/// How one backend recognises its device. `Display` names it in timeout messages.
pub(crate) trait DeviceMatcher: Any + Display + Send + Sync {
    /// The device, if the kernel has it, read from the sysfs mounted at `sys`.
    fn locate(&self, sys: &Path) -> Result<Option<Located>, HostError>;
}

pub(crate) struct SystemBlock {
    root: PathBuf,
    events: Arc<DeviceEvents>,
}

impl SystemBlock {
    /// Starts listening to udev before anything can wait on a device.
    pub(crate) fn new(root: &Path) -> Result<Self, HostError> {
        let events = Arc::new(DeviceEvents::default());
        udev::start(events.clone()).map_err(|e| {
            HostError::new(
                ErrorKind::UdevUnavailable,
                format!("cannot listen to udev ({e}); is systemd-udevd running?"),
            )
        })?;
        Ok(Self {
            root: root.to_path_buf(),
            events,
        })
    }

    /// A host that hears no udev events: a wait sees only what is there when it looks.
    pub(crate) fn without_udev(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            events: Arc::default(),
        }
    }

    fn sys(&self, rel: &str) -> PathBuf {
        self.root.join("sys").join(rel)
    }

    /// The device, if the kernel has it and udev has made its stable link.
    fn find(&self, what: &dyn DeviceMatcher) -> Result<Option<BlockDevice>, HostError> {
        let Some(Located {
            kernel_name: kernel,
            link,
        }) = what.locate(&self.root.join("sys"))?
        else {
            return Ok(None);
        };
        let target = std::fs::read_link(self.root.join(link.trim_start_matches('/')));
        let linked = target.is_ok_and(|t| t.file_name().is_some_and(|n| n == kernel.as_str()));
        if !linked {
            return Ok(None);
        }
        let sectors: u64 = read_trimmed(&self.sys(&format!("block/{kernel}/size")))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // A SCSI disk's WWID is its device's; an NVMe namespace's is the disk's own; a dm
        // map's is in its uuid, after the "mpath-" prefix.
        let wwn = read_trimmed(&self.sys(&format!("block/{kernel}/device/wwid")))
            .or_else(|| read_trimmed(&self.sys(&format!("block/{kernel}/wwid"))))
            .or_else(|| {
                read_trimmed(&self.sys(&format!("block/{kernel}/dm/uuid")))
                    .and_then(|u| u.strip_prefix("mpath-").map(str::to_string))
            });
        Ok(Some(BlockDevice {
            wwn,
            kernel_name: kernel,
            device_path: link,
            size_bytes: sectors * 512,
        }))
    }

    /// The device and its partitions, by kernel name.
    fn with_partitions(&self, kernel: &str) -> Vec<String> {
        let mut names = vec![kernel.to_string()];
        for entry in std::fs::read_dir(self.sys(&format!("block/{kernel}")))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(kernel) && entry.path().join("partition").exists() {
                names.push(name);
            }
        }
        names
    }

    fn tool(&self, name: &str) -> Result<PathBuf, HostError> {
        cmd::resolve(&self.root, name)
    }
}

impl BlockHost for SystemBlock {
    fn wait_for_device(
        &self,
        what: &dyn DeviceMatcher,
        timeout: Duration,
    ) -> Result<BlockDevice, HostError> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.events.generation();
            if let Some(device) = self.find(what)? {
                return Ok(device);
            }
            if !self.events.wait_past(seen, deadline) {
                if let Some(device) = self.find(what)? {
                    return Ok(device);
                }
                let recent: Vec<String> = self
                    .events
                    .recent()
                    .iter()
                    .map(|e| format!("{} {}", e.action, e.kernel_name))
                    .collect();
                return Err(HostError::new(
                    ErrorKind::DeviceTimeout,
                    format!(
                        "no block device for {what} with its udev link appeared within {}s \
                         (recent udev events: {}); check dmesg and udev",
                        timeout.as_secs(),
                        if recent.is_empty() {
                            "none".to_string()
                        } else {
                            recent.join(", ")
                        }
                    ),
                ));
            }
        }
    }

    fn holders(&self, kernel_name: &str) -> Result<Vec<String>, HostError> {
        let mut holders = Vec::new();
        for name in self.with_partitions(kernel_name) {
            let dir = if name == kernel_name {
                self.sys(&format!("block/{kernel_name}/holders"))
            } else {
                self.sys(&format!("block/{kernel_name}/{name}/holders"))
            };
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                holders.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(holders)
    }

    fn mounts_of(&self, kernel_name: &str) -> Result<Vec<PathBuf>, HostError> {
        let mut numbers = Vec::new();
        for name in self.with_partitions(kernel_name) {
            let dev = if name == kernel_name {
                self.sys(&format!("block/{kernel_name}/dev"))
            } else {
                self.sys(&format!("block/{kernel_name}/{name}/dev"))
            };
            if let Some(number) = read_trimmed(&dev) {
                numbers.push(number);
            }
        }
        let path = self.root.join("proc/self/mountinfo");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            HostError::new(
                ErrorKind::MountsUnreadable,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        Ok(mountinfo::mount_points(&text, &numbers))
    }

    fn flush(&self, kernel_name: &str) -> Result<(), HostError> {
        let out = cmd::run(
            &self.tool("blockdev")?,
            &["--flushbufs", &format!("/dev/{kernel_name}")],
        )?;
        if out.code != 0 {
            return Err(HostError::new(
                ErrorKind::FlushFailed,
                format!("flushing /dev/{kernel_name} failed: {}", out.reason()),
            ));
        }
        Ok(())
    }

    fn has_signature(&self, device_path: &str) -> Result<bool, HostError> {
        // Low-level probing (-p) sees every signature, not only what the cache knows.
        let out = cmd::run(&self.tool("blkid")?, &["-p", "-o", "export", device_path])?;
        match out.code {
            0 => Ok(true),
            2 => Ok(false),
            _ => Err(HostError::new(
                ErrorKind::ProbeFailed,
                format!("blkid could not probe {device_path}: {}", out.reason()),
            )),
        }
    }

    fn mkfs(&self, device_path: &str, fstype: &str) -> Result<(), HostError> {
        let out = cmd::run(&self.tool(&format!("mkfs.{fstype}"))?, &[device_path])?;
        if out.code != 0 {
            return Err(HostError::new(
                ErrorKind::MkfsFailed,
                format!("mkfs.{fstype} {device_path} failed: {}", out.reason()),
            ));
        }
        Ok(())
    }

    fn prepare_mount_point(&self, path: &Path) -> Result<(), HostError> {
        mountpoint::prepare(&self.root, path)
    }

    /// mount(8) finds `path` again by name: [`mountpoint::prepare`] checked that only root can
    /// change any directory on the way, so nobody else can swap one for a link in between.
    fn mount(
        &self,
        device_path: &str,
        path: &Path,
        fstype: &str,
        options: &str,
    ) -> Result<(), HostError> {
        let host_path = self.root.join(path.strip_prefix("/").unwrap_or(path));
        let path = host_path.to_string_lossy();
        let mut args = vec!["-t", fstype];
        if !options.is_empty() {
            args.extend(["-o", options]);
        }
        args.extend([device_path, path.as_ref()]);
        let out = cmd::run(&self.tool("mount")?, &args)?;
        if out.code != 0 {
            return Err(HostError::new(
                ErrorKind::MountFailed,
                format!("mounting {device_path} on {path} failed: {}", out.reason()),
            ));
        }
        Ok(())
    }

    fn unmount(&self, path: &Path) -> Result<(), HostError> {
        let path = path.to_string_lossy();
        let out = cmd::run(&self.tool("umount")?, &[path.as_ref()])?;
        if out.code != 0 {
            return Err(HostError::new(
                ErrorKind::DeviceBusy,
                format!("unmounting {path} failed: {}", out.reason()),
            ));
        }
        Ok(())
    }

    fn size_of(&self, kernel_name: &str) -> Result<u64, HostError> {
        read_trimmed(&self.sys(&format!("block/{kernel_name}/size")))
            .and_then(|s| s.parse::<u64>().ok())
            .map(|sectors| sectors * 512)
            .ok_or_else(|| {
                HostError::new(
                    ErrorKind::Sysfs,
                    format!("cannot read the size of {kernel_name} in sysfs"),
                )
            })
    }

    fn grow_filesystem(
        &self,
        device_path: &str,
        mount_path: &Path,
        fstype: &str,
    ) -> Result<(), HostError> {
        // resize2fs grows a mounted ext file system through its device; xfs_growfs only
        // through its mount point.
        let mount_path = mount_path.to_string_lossy();
        let (tool, arg) = match fstype {
            "ext2" | "ext3" | "ext4" => ("resize2fs", device_path),
            "xfs" => ("xfs_growfs", mount_path.as_ref()),
            other => {
                return Err(HostError::new(
                    ErrorKind::GrowFailed,
                    format!("cannot grow a {other} file system online (ext2/3/4 and XFS only)"),
                ));
            }
        };
        let out = cmd::run(&self.tool(tool)?, &[arg])?;
        if out.code != 0 {
            return Err(HostError::new(
                ErrorKind::GrowFailed,
                format!(
                    "{tool} {arg} failed (exit {}): {}; the device has grown, the file system \
                     has not",
                    out.code,
                    out.reason()
                ),
            ));
        }
        Ok(())
    }
}

/// Polls the device's size until it reaches `size_bytes` (the kernel has read the volume's new
/// size) or `timeout` passes; returns the size seen.
pub(crate) fn wait_for_size(
    block: &dyn BlockHost,
    kernel_name: &str,
    size_bytes: u64,
    timeout: Duration,
) -> Result<u64, HostError> {
    let deadline = Instant::now() + timeout;
    loop {
        let size = block.size_of(kernel_name)?;
        if size >= size_bytes {
            return Ok(size);
        }
        if Instant::now() >= deadline {
            return Err(HostError::new(
                ErrorKind::DeviceTimeout,
                format!(
                    "{kernel_name} is still {size} bytes {}s after a rescan, and the target says \
                     {size_bytes}: check that the volume really grew at the storage",
                    timeout.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::udev::DeviceEvent;
    use super::*;

    /// A matcher that always names sdx, as a backend would once the kernel has the device.
    struct Sdx;

    impl std::fmt::Display for Sdx {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("the test disk")
        }
    }

    impl DeviceMatcher for Sdx {
        fn locate(&self, _sys: &Path) -> Result<Option<Located>, HostError> {
            Ok(Some(Located {
                kernel_name: "sdx".into(),
                link: "/dev/disk/by-id/test-sdx".into(),
            }))
        }
    }

    fn host_with_sdx() -> (tempfile::TempDir, Arc<SystemBlock>) {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("sys/block/sdx")).unwrap();
        std::fs::write(root.path().join("sys/block/sdx/size"), "8\n").unwrap();
        std::fs::create_dir_all(root.path().join("dev/disk/by-id")).unwrap();
        let block = Arc::new(SystemBlock::without_udev(root.path()));
        (root, block)
    }

    #[test]
    fn a_waiter_wakes_when_udev_announces_the_link() {
        let (root, block) = host_with_sdx();
        let waiter = {
            let block = block.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                (
                    block.wait_for_device(&Sdx, Duration::from_secs(60)),
                    started.elapsed(),
                )
            })
        };
        std::os::unix::fs::symlink("../../sdx", root.path().join("dev/disk/by-id/test-sdx"))
            .unwrap();
        block.events.publish(DeviceEvent {
            action: "add".into(),
            kernel_name: "sdx".into(),
        });
        let (device, waited) = waiter.join().unwrap();
        assert_eq!(
            device.unwrap(),
            BlockDevice {
                kernel_name: "sdx".into(),
                device_path: "/dev/disk/by-id/test-sdx".into(),
                size_bytes: 8 * 512,
                wwn: None,
            }
        );
        // Woken by the event, not by the deadline.
        assert!(waited < Duration::from_secs(30), "{waited:?}");
    }

    #[test]
    fn a_timeout_names_the_device_and_the_recent_udev_events() {
        let (_root, block) = host_with_sdx();
        block.events.publish(DeviceEvent {
            action: "add".into(),
            kernel_name: "sdy".into(),
        });
        let error = block.wait_for_device(&Sdx, Duration::ZERO).unwrap_err();
        assert_eq!(error.kind, ErrorKind::DeviceTimeout);
        assert_eq!(
            error.message,
            "no block device for the test disk with its udev link appeared within 0s \
             (recent udev events: add sdy); check dmesg and udev"
        );
    }
}
