//! The real [`BlockHost`]: sysfs, /dev links made by udev, /proc/self/mountinfo, and
//! blkid, mkfs, mount, umount and blockdev.

pub mod mount;
pub mod mountinfo;
pub mod udev;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cmd;
use super::iscsi::sysfs::read_sessions;
use super::{BlockDevice, BlockHost, DeviceMatch, ErrorKind, HostError};
use crate::fsutil::read_trimmed;
use crate::protocol::target::MountSpec;
use udev::DeviceEvents;

pub struct SystemBlock {
    root: PathBuf,
    events: Arc<DeviceEvents>,
}

impl SystemBlock {
    /// Starts listening to udev before anything can wait on a device.
    pub fn new(root: &Path) -> Result<Self, HostError> {
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

    fn sys(&self, rel: &str) -> PathBuf {
        self.root.join("sys").join(rel)
    }

    /// The device, if the kernel has it and udev has made its stable link.
    fn find(&self, what: &DeviceMatch) -> Result<Option<BlockDevice>, HostError> {
        let (kernel, link) = match what {
            DeviceMatch::IscsiLun { portal, iqn, lun } => {
                let sessions = read_sessions(&self.root.join("sys"))?;
                let Some(kernel) = sessions
                    .iter()
                    .find(|s| s.portal == *portal && s.iqn == *iqn)
                    .and_then(|s| s.lun_device(*lun))
                else {
                    return Ok(None);
                };
                (
                    kernel.to_string(),
                    format!("/dev/disk/by-path/ip-{portal}-iscsi-{iqn}-lun-{lun}"),
                )
            }
            DeviceMatch::Rbd { device_id } => {
                let dir = self.sys(&format!("bus/rbd/devices/{device_id}"));
                let (Some(pool), Some(image)) = (
                    read_trimmed(&dir.join("pool")),
                    read_trimmed(&dir.join("name")),
                ) else {
                    return Ok(None);
                };
                let link = match read_trimmed(&dir.join("pool_ns")) {
                    Some(ns) => format!("/dev/rbd/{pool}/{ns}/{image}"),
                    None => format!("/dev/rbd/{pool}/{image}"),
                };
                (format!("rbd{device_id}"), link)
            }
            DeviceMatch::Multipath { paths } => match self.find_map(paths) {
                Some(found) => found,
                None => return Ok(None),
            },
        };
        let target = std::fs::read_link(self.root.join(link.trim_start_matches('/')));
        let linked = target.is_ok_and(|t| t.file_name().is_some_and(|n| n == kernel.as_str()));
        if !linked {
            return Ok(None);
        }
        let sectors: u64 = read_trimmed(&self.sys(&format!("block/{kernel}/size")))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // A dm map's WWID is in its uuid, after the "mpath-" prefix.
        let wwn = read_trimmed(&self.sys(&format!("block/{kernel}/device/wwid"))).or_else(|| {
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

    /// The multipath map whose slaves are exactly `paths`: its kernel name and /dev/mapper link.
    fn find_map(&self, paths: &[String]) -> Option<(String, String)> {
        let first = paths.first()?;
        let holders = std::fs::read_dir(self.sys(&format!("block/{first}/holders"))).ok()?;
        for holder in holders.flatten() {
            let dm = holder.file_name().to_string_lossy().into_owned();
            let uuid = read_trimmed(&self.sys(&format!("block/{dm}/dm/uuid")));
            if !uuid.is_some_and(|u| u.starts_with("mpath-")) {
                continue;
            }
            let mut slaves: Vec<String> =
                std::fs::read_dir(self.sys(&format!("block/{dm}/slaves")))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
            let mut wanted = paths.to_vec();
            slaves.sort();
            wanted.sort();
            if slaves != wanted {
                continue;
            }
            let name = read_trimmed(&self.sys(&format!("block/{dm}/dm/name")))?;
            return Some((dm, format!("/dev/mapper/{name}")));
        }
        None
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
        what: &DeviceMatch,
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
                        "no block device for {what} with its udev link appeared within {}s (recent udev events: {}); check dmesg and udev",
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

    fn mount(&self, device_path: &str, spec: &MountSpec, read_only: bool) -> Result<(), HostError> {
        std::fs::create_dir_all(&spec.path).map_err(|e| {
            HostError::new(
                ErrorKind::MountFailed,
                format!("cannot create {}: {e}", spec.path.display()),
            )
        })?;
        let mut options: Vec<&str> = spec.options.iter().map(String::as_str).collect();
        if read_only {
            options.push("ro");
        }
        let joined = options.join(",");
        let path = spec.path.to_string_lossy();
        let mut args = vec!["-t", spec.fstype.as_str()];
        if !joined.is_empty() {
            args.extend(["-o", joined.as_str()]);
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
}
