//! dm-multipath over a volume's iSCSI paths. multipathd builds the map; the agent asks it to,
//! waits for the map through udev like any other device, and flushes it on detach.
//!
//! In sysfs the map is a device-mapper holder of each path (`/sys/block/dm-N`, with a
//! `dm/uuid` of `mpath-<wwid>` and the paths under `slaves/`); udev links it as
//! `/dev/mapper/<dm/name>`.

use std::fmt;
use std::path::{Path, PathBuf};

use super::sysfs::read_dir_names;
use crate::backend::block::{DeviceMatcher, Located};
use crate::backend::cmd;
use crate::backend::{ErrorKind, HostError};
use crate::fsutil::read_trimmed;

/// The multipath map whose slaves are exactly these path devices (kernel names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MultipathMatcher {
    pub(crate) paths: Vec<String>,
}

impl fmt::Display for MultipathMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the multipath map over {}", self.paths.join(", "))
    }
}

impl DeviceMatcher for MultipathMatcher {
    fn locate(&self, sys: &Path) -> Result<Option<Located>, HostError> {
        let Some(first) = self.paths.first() else {
            return Ok(None);
        };
        let mut wanted = self.paths.clone();
        wanted.sort();
        let block = sys.join("block");
        for dm in read_dir_names(&block.join(first).join("holders")) {
            // Other holders (LVM, md, …) are not the map.
            let uuid = read_trimmed(&block.join(&dm).join("dm/uuid"));
            if !uuid.is_some_and(|u| u.starts_with("mpath-")) {
                continue;
            }
            if read_dir_names(&block.join(&dm).join("slaves")) != wanted {
                continue;
            }
            let Some(name) = read_trimmed(&block.join(&dm).join("dm/name")) else {
                return Ok(None);
            };
            return Ok(Some(Located {
                kernel_name: dm,
                link: format!("/dev/mapper/{name}"),
            }));
        }
        Ok(None)
    }
}

/// multipath-tools on the host.
pub(crate) trait MultipathHost: Send + Sync {
    /// Whether multipathd runs: without it no map is made, and the paths are reported alone.
    fn available(&self) -> bool;
    /// Has multipathd take the path devices into a map: registers their WWID (which
    /// `find_multipaths strict` requires) and adds each path. Returns whether the WWID was new
    /// to the wwids file, so that detach removes only what the agent added.
    fn claim(&self, path_devices: &[String]) -> Result<bool, HostError>;
    /// Removes the map. A map that is still open fails with kind `device_busy`.
    fn flush(&self, map_name: &str) -> Result<(), HostError>;
    /// Removes the WWID of a path device from the wwids file.
    fn forget(&self, path_device: &str) -> Result<(), HostError>;
    /// Has multipathd take the map to its paths' new size, once they have it.
    fn resize(&self, map_name: &str) -> Result<(), HostError>;
}

pub(crate) struct SystemMultipath {
    multipath: PathBuf,
    multipathd: PathBuf,
    /// multipath's default `wwids_file`.
    wwids_file: PathBuf,
}

impl SystemMultipath {
    /// None when multipath-tools is not installed.
    pub(crate) fn new(root: &Path) -> Option<Self> {
        Some(Self {
            multipath: cmd::resolve(root, "multipath").ok()?,
            multipathd: cmd::resolve(root, "multipathd").ok()?,
            wwids_file: root.join("etc/multipath/wwids"),
        })
    }

    fn failed(&self, doing: &str, out: &cmd::Output) -> HostError {
        HostError::new(
            ErrorKind::MultipathFailed,
            format!("{doing} failed (exit {}: {})", out.code, out.reason()),
        )
    }
}

impl MultipathHost for SystemMultipath {
    fn available(&self) -> bool {
        // Asks the daemon over its socket: exit 0 only when it answers.
        cmd::run(&self.multipathd, &["show", "daemon"]).is_ok_and(|out| out.code == 0)
    }

    fn claim(&self, path_devices: &[String]) -> Result<bool, HostError> {
        let Some(first) = path_devices.first() else {
            return Ok(false);
        };
        let wwids_before = std::fs::read_to_string(&self.wwids_file).unwrap_or_default();
        let added = cmd::run(&self.multipath, &["-a", &format!("/dev/{first}")])?;
        if added.code != 0 {
            return Err(self.failed(&format!("multipath -a /dev/{first}"), &added));
        }
        for dev in path_devices {
            let out = cmd::run(&self.multipathd, &["add", "path", dev])?;
            if out.code != 0 || out.stdout.trim() != "ok" {
                return Err(self.failed(&format!("multipathd add path {dev}"), &out));
            }
        }
        // The wwids file lists each registered WWID as "/ID/".
        Ok(added_wwid(&added.stdout)
            .is_some_and(|wwid| !wwids_before.lines().any(|l| l == format!("/{wwid}/"))))
    }

    fn resize(&self, map_name: &str) -> Result<(), HostError> {
        let out = cmd::run(&self.multipathd, &["resize", "map", map_name])?;
        if out.code != 0 || out.stdout.trim() != "ok" {
            return Err(self.failed(&format!("multipathd resize map {map_name}"), &out));
        }
        Ok(())
    }

    fn flush(&self, map_name: &str) -> Result<(), HostError> {
        let out = cmd::run(&self.multipath, &["-f", map_name])?;
        if out.code == 0 {
            return Ok(());
        }
        let kind = if out.reason().contains("in use") {
            ErrorKind::DeviceBusy
        } else {
            ErrorKind::MultipathFailed
        };
        Err(HostError::new(
            kind,
            format!(
                "multipath -f {map_name} failed (exit {}: {})",
                out.code,
                out.reason()
            ),
        ))
    }

    fn forget(&self, path_device: &str) -> Result<(), HostError> {
        let out = cmd::run(&self.multipath, &["-w", &format!("/dev/{path_device}")])?;
        if out.code != 0 {
            return Err(self.failed(&format!("multipath -w /dev/{path_device}"), &out));
        }
        Ok(())
    }
}

/// The WWID in `multipath -a`'s "wwid 'ID' added".
pub(crate) fn added_wwid(stdout: &str) -> Option<&str> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("wwid '")?.strip_suffix("' added"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backend::block::SystemBlock;
    use crate::backend::block::fixture::assert_not_there;
    use crate::backend::{BlockDevice, BlockHost};

    /// sysfs with the map dm-0 over sdc and sdd, and an LVM volume dm-1 on sdc alone.
    fn two_path_map() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let block = root.path().join("sys/block");
        let write = |rel: &str, value: &str| {
            let file = block.join(rel);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, value).unwrap();
        };
        let dir = |rel: String| std::fs::create_dir_all(block.join(rel)).unwrap();
        write("dm-0/dm/uuid", "mpath-36001405aa\n");
        write("dm-0/dm/name", "mpatha\n");
        write("dm-0/size", "2048\n");
        for path in ["sdc", "sdd"] {
            dir(format!("{path}/holders/dm-0"));
            dir(format!("dm-0/slaves/{path}"));
        }
        write("dm-1/dm/uuid", "LVM-x0Yq\n");
        write("dm-1/dm/name", "vg-lv\n");
        dir("sdc/holders/dm-1".into());
        dir("dm-1/slaves/sdc".into());
        root
    }

    fn over(paths: &[&str]) -> MultipathMatcher {
        MultipathMatcher {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn the_map_is_the_multipath_holder_over_exactly_the_paths() {
        let root = two_path_map();
        let sys = root.path().join("sys");
        assert_eq!(
            over(&["sdd", "sdc"]).locate(&sys).unwrap(),
            Some(Located {
                kernel_name: "dm-0".into(),
                link: "/dev/mapper/mpatha".into(),
            })
        );
        // dm-1 holds exactly sdc but is no multipath map; dm-0 holds more than sdc.
        for other in [
            over(&["sdc"]),
            over(&["sdc", "sdd", "sde"]),
            over(&["sde"]),
            over(&[]),
        ] {
            assert_eq!(other.locate(&sys).unwrap(), None, "{other}");
        }
        std::fs::remove_file(sys.join("block/dm-0/dm/name")).unwrap();
        assert_eq!(over(&["sdc", "sdd"]).locate(&sys).unwrap(), None);
    }

    #[test]
    fn the_map_is_the_device_once_udev_linked_it_and_its_uuid_gives_the_wwn() {
        let root = two_path_map();
        let block = SystemBlock::without_udev(root.path());
        assert_not_there(
            &block,
            &over(&["sdc", "sdd"]),
            "the multipath map over sdc, sdd",
        );
        let mapper = root.path().join("dev/mapper");
        std::fs::create_dir_all(&mapper).unwrap();
        std::os::unix::fs::symlink("../dm-0", mapper.join("mpatha")).unwrap();
        assert_eq!(
            block
                .wait_for_device(&over(&["sdc", "sdd"]), Duration::ZERO)
                .unwrap(),
            BlockDevice {
                kernel_name: "dm-0".into(),
                device_path: "/dev/mapper/mpatha".into(),
                size_bytes: 2048 * 512,
                wwn: Some("36001405aa".into()),
            }
        );
    }

    #[test]
    fn the_added_wwid_is_read_from_multipath_output() {
        // As multipath-tools 0.9.4 prints it in the test guest.
        assert_eq!(
            added_wwid("wwid '36001405a4ea526c8fad41e491c064de2' added\n"),
            Some("36001405a4ea526c8fad41e491c064de2")
        );
        assert_eq!(added_wwid("wwid '3600' removed\n"), None);
        assert_eq!(added_wwid(""), None);
    }
}
