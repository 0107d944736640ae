//! iSCSI sessions as sysfs shows them: the source of truth for what is logged in.
//!
//! `/sys/class/iscsi_session/sessionN/targetname`, the portal from
//! `/sys/class/iscsi_connection/connectionN:0/persistent_{address,port}`, the SCSI host from the
//! session's device path (`…/hostH/sessionN`), and each LUN's block device under
//! `sessionN/device/targetH:C:T/H:C:T:L/block/<name>`.

use std::path::Path;

use super::Session;
use crate::backend::{ErrorKind, HostError};
use crate::fsutil::read_trimmed;
use crate::protocol::target::{Portal, SessionKey};

pub fn read_sessions(sys: &Path) -> Result<Vec<Session>, HostError> {
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

fn read_dir_names(dir: &Path) -> Vec<String> {
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
pub mod tests {
    use std::path::Path;

    use super::*;

    /// Rebuilds a sysfs tree from a dump captured in the VM (tests/fixtures/iscsi/README.md).
    pub fn materialize(dump: &str, root: &Path) {
        for line in dump.lines() {
            let Some((kind, rest)) = line.split_once(' ') else {
                continue;
            };
            let local = |p: &str| root.join(p.trim_start_matches('/'));
            match kind {
                "d" => std::fs::create_dir_all(local(rest)).unwrap(),
                "l" => {
                    let (link, target) = rest.split_once(" -> ").unwrap();
                    let link = local(link);
                    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
                    let _ = std::os::unix::fs::symlink(target, &link);
                }
                "f" => {
                    let Some((file, value)) = rest.split_once(" = ") else {
                        continue;
                    };
                    let file = local(file);
                    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                    std::fs::write(file, value.replace("\\n", "\n")).unwrap();
                }
                _ => {}
            }
        }
    }

    #[test]
    fn reads_a_session_with_two_luns_from_a_captured_tree() {
        let dump = include_str!("../../../tests/fixtures/iscsi/sysfs-session-2luns.txt");
        let root = tempfile::tempdir().unwrap();
        materialize(dump, root.path());
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
}
