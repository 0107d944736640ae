//! iSCSI sessions as sysfs shows them: the source of truth for what is logged in.
//!
//! `/sys/class/iscsi_session/sessionN/targetname`, the portal from
//! `/sys/class/iscsi_connection/connectionN:0/persistent_{address,port}`, the SCSI host from the
//! session's device path (`…/hostH/sessionN`), and each LUN's block device under
//! `sessionN/device/targetH:C:T/H:C:T:L/block/<name>`. udev links that block device as
//! `/dev/disk/by-path/ip-<portal>-iscsi-<iqn>-lun-<lun>`.

use std::fmt;
use std::path::Path;

use super::Session;
use crate::backend::block::{DeviceMatcher, Located};
use crate::backend::{ErrorKind, HostError};
use crate::fsutil::read_trimmed;
use crate::protocol::target::{Portal, SessionKey};

/// One LUN's block device, found through its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LunMatcher {
    pub(crate) session: SessionKey,
    pub(crate) lun: u16,
}

impl LunMatcher {
    /// The LUN among `sessions`, as sysfs or the simulated kernel lists them.
    pub(crate) fn among(&self, sessions: &[Session]) -> Option<Located> {
        let kernel_name = sessions
            .iter()
            .find(|s| s.key == self.session)?
            .lun_device(self.lun)?
            .to_string();
        Some(Located {
            kernel_name,
            link: format!(
                "/dev/disk/by-path/ip-{}-iscsi-{}-lun-{}",
                self.session.portal(),
                self.session.iqn(),
                self.lun
            ),
        })
    }
}

impl fmt::Display for LunMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (iqn, portal) = (self.session.iqn(), self.session.portal());
        write!(f, "LUN {} of {iqn} at {portal}", self.lun)
    }
}

impl DeviceMatcher for LunMatcher {
    fn locate(&self, sys: &Path) -> Result<Option<Located>, HostError> {
        Ok(self.among(&read_sessions(sys)?))
    }
}

pub(crate) fn read_sessions(sys: &Path) -> Result<Vec<Session>, HostError> {
    let class = sys.join("class/iscsi_session");
    let entries = match std::fs::read_dir(&class) {
        Ok(entries) => entries,
        // No iscsi_transport module loaded yet: no sessions.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(sysfs_error(&class, e)),
    };
    let mut sessions = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(sid) = name
            .strip_prefix("session")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A session being torn down loses its files under our feet: skip it.
        if let Some(session) = read_session(sys, sid)? {
            sessions.push(session);
        }
    }
    sessions.sort_by_key(|s| s.sid);
    Ok(sessions)
}

fn read_session(sys: &Path, sid: u32) -> Result<Option<Session>, HostError> {
    let dir = sys.join(format!("class/iscsi_session/session{sid}"));
    let Some(iqn) = read_trimmed(&dir.join("targetname")) else {
        return Ok(None);
    };
    let conn = sys.join(format!("class/iscsi_connection/connection{sid}:0"));
    let address = read_trimmed(&conn.join("persistent_address"))
        .or_else(|| read_trimmed(&conn.join("address")));
    let port =
        read_trimmed(&conn.join("persistent_port")).or_else(|| read_trimmed(&conn.join("port")));
    let (Some(host), Some(Ok(port))) = (address, port.map(|p| p.parse::<u16>())) else {
        return Ok(None);
    };
    let key = SessionKey::new(&Portal { host, port }, &iqn);
    let real = std::fs::canonicalize(&dir).map_err(|e| sysfs_error(&dir, e))?;
    let host_no = real
        .components()
        .filter_map(|c| {
            c.as_os_str()
                .to_str()?
                .strip_prefix("host")?
                .parse::<u32>()
                .ok()
        })
        .next()
        .ok_or_else(|| {
            HostError::new(
                ErrorKind::Sysfs,
                format!("{} is not under a SCSI host", real.display()),
            )
        })?;
    Ok(Some(Session {
        sid,
        key,
        host_no,
        luns: read_luns(&dir.join("device"))?,
        state: read_trimmed(&dir.join("state")),
    }))
}

/// (LUN, block device) pairs under a session's device directory.
fn read_luns(device: &Path) -> Result<Vec<(u16, String)>, HostError> {
    let mut luns = Vec::new();
    for target in read_dir_names(device)
        .into_iter()
        .filter(|n| n.starts_with("target"))
    {
        let target_dir = device.join(&target);
        for hctl in read_dir_names(&target_dir) {
            let Some(lun) = hctl.rsplit(':').next().and_then(|l| l.parse::<u16>().ok()) else {
                continue;
            };
            if hctl.split(':').count() != 4 {
                continue;
            }
            if let Some(block) = read_dir_names(&target_dir.join(&hctl).join("block"))
                .into_iter()
                .next()
            {
                luns.push((lun, block));
            }
        }
    }
    luns.sort();
    Ok(luns)
}

/// The names in `dir`, sorted; none when it cannot be read.
pub(super) fn read_dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn sysfs_error(path: &Path, e: std::io::Error) -> HostError {
    HostError::new(
        ErrorKind::Sysfs,
        format!("cannot read {}: {e}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backend::block::SystemBlock;
    use crate::backend::block::fixture::{assert_not_there, materialize};
    use crate::backend::{BlockDevice, BlockHost};

    const IQN: &str = "iqn.2003-01.test.tether:fixture";

    /// The captured session (portal 127.0.0.1:3260, LUN 0 on sda, LUN 1 on sdb).
    fn captured() -> tempfile::TempDir {
        let dump = include_str!("../../../tests/fixtures/iscsi/sysfs-session-2luns.txt");
        let root = tempfile::tempdir().unwrap();
        materialize(dump, root.path());
        root
    }

    fn lun(portal: &str, iqn: &str, lun: u16) -> LunMatcher {
        let portal = crate::protocol::target::parse_portal(portal).unwrap();
        LunMatcher {
            session: SessionKey::new(&portal, iqn),
            lun,
        }
    }

    #[test]
    fn reads_a_session_with_two_luns_from_a_captured_tree() {
        let root = captured();
        let sessions = read_sessions(&root.path().join("sys")).unwrap();
        assert_eq!(sessions.len(), 1, "{sessions:?}");
        let s = &sessions[0];
        assert_eq!(s.sid, 1);
        assert_eq!(s.key.portal(), "127.0.0.1:3260");
        assert!(
            s.key.iqn().starts_with("iqn.2003-01.test.tether:"),
            "{}",
            s.key
        );
        assert_eq!(s.host_no, 0);
        assert_eq!(s.luns, vec![(0, "sda".to_string()), (1, "sdb".to_string())]);
    }

    #[test]
    fn no_iscsi_module_means_no_sessions() {
        let root = tempfile::tempdir().unwrap();
        assert!(read_sessions(root.path()).unwrap().is_empty());
    }

    #[test]
    fn a_lun_is_located_through_its_session_in_a_captured_tree() {
        let root = captured();
        let sys = root.path().join("sys");
        assert_eq!(
            lun("127.0.0.1:3260", IQN, 1).locate(&sys).unwrap(),
            Some(Located {
                kernel_name: "sdb".into(),
                link: format!("/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-{IQN}-lun-1"),
            })
        );
        // A LUN not scanned, another target, another portal.
        for other in [
            lun("127.0.0.1:3260", IQN, 2),
            lun("127.0.0.1:3260", "iqn.2003-01.test.tether:other", 0),
            lun("127.0.0.2:3260", IQN, 0),
        ] {
            assert_eq!(other.locate(&sys).unwrap(), None, "{other}");
        }
    }

    #[test]
    fn a_captured_lun_is_the_device_once_udev_linked_it() {
        let root = captured();
        // As dev-disk-by-path.txt shows it, for LUN 0 only.
        let by_path = root.path().join("dev/disk/by-path");
        std::fs::create_dir_all(&by_path).unwrap();
        let link = format!("ip-127.0.0.1:3260-iscsi-{IQN}-lun-0");
        std::os::unix::fs::symlink("../../sda", by_path.join(&link)).unwrap();
        let block = SystemBlock::without_udev(root.path());
        let device = block
            .wait_for_device(&lun("127.0.0.1:3260", IQN, 0), Duration::ZERO)
            .unwrap();
        assert_eq!(
            device,
            BlockDevice {
                kernel_name: "sda".into(),
                device_path: format!("/dev/disk/by-path/{link}"),
                size_bytes: 64 << 20,
                wwn: Some("naa.600140581be12ed07944f6f8cb7c66c6".into()),
            }
        );
        assert_not_there(
            &block,
            &lun("127.0.0.1:3260", IQN, 1),
            &format!("LUN 1 of {IQN} at 127.0.0.1:3260"),
        );
    }
}
