//! dm-multipath over a volume's iSCSI paths. multipathd builds the map; the agent asks it to,
//! waits for the map through udev like any other device, and flushes it on detach.

use std::path::{Path, PathBuf};

use crate::backend::cmd;
use crate::backend::{ErrorKind, HostError};

/// multipath-tools on the host.
pub trait MultipathHost: Send + Sync {
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
}

pub struct SystemMultipath {
    multipath: PathBuf,
    multipathd: PathBuf,
    /// multipath's default `wwids_file`.
    wwids_file: PathBuf,
}

impl SystemMultipath {
    /// None when multipath-tools is not installed.
    pub fn new(root: &Path) -> Option<Self> {
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
fn added_wwid(stdout: &str) -> Option<&str> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("wwid '")?.strip_suffix("' added"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
