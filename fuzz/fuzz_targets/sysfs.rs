//! The agent's readers of the host tree: iSCSI sessions and their LUNs, RBD mappings, block
//! devices with their udev links, holders and mount points, and the node's identity (MAC
//! addresses, DMI uuid, initiator name), all read through `tether::fuzzing::host_view`.
//!
//! Input: a dump in the format of tests/fixtures/*/sysfs-*.txt (`d DIR`, `f FILE = VALUE`,
//! `l LINK -> TARGET`, `r LINK => PATH`), built into a scratch directory for each run. Only
//! trees that cannot reach outside the scratch directory are built: no `.` or `..` in paths,
//! links made after every file, relative links climbing no higher than the scratch root, and
//! no link made below another link.
#![no_main]

use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tether::backend::ErrorKind;
use tether::fuzzing::host_view;

/// Most lines of a dump that are built: a run stays fast.
const MAX_LINES: usize = 1024;

/// Under `$TMPDIR`, which scripts/fuzz points at a directory of its own and removes after the run.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let name = format!("tether-fuzz-sysfs-{}", std::process::id());
        std::env::temp_dir().join(name)
    })
}

/// `path` (absolute in the dump) under `root`, if it has only normal components.
fn local(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = path.strip_prefix('/')?;
    let mut out = root.to_path_buf();
    for component in Path::new(rel).components() {
        match component {
            Component::Normal(name) if name.len() <= 255 => out.push(name),
            _ => return None,
        }
    }
    (out != root).then_some(out)
}

/// Whether every existing directory from `root` down to `dir` is a real one, not a link.
fn no_link_above(root: &Path, dir: &Path) -> bool {
    let mut at = dir;
    while at != root {
        if at
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            return false;
        }
        match at.parent() {
            Some(parent) => at = parent,
            None => return false,
        }
    }
    true
}

/// A relative link target that climbs only first, and no higher than `depth` directories.
fn safe_target(target: &str, depth: usize) -> bool {
    let mut climbing = true;
    let mut climbs = 0;
    for component in Path::new(target).components() {
        match component {
            Component::ParentDir if climbing => climbs += 1,
            Component::Normal(_) => climbing = false,
            Component::CurDir => {}
            _ => return false,
        }
    }
    climbs <= depth
}

fn build(dump: &str, root: &Path) {
    let lines: Vec<&str> = dump.lines().take(MAX_LINES).collect();
    // Directories and files first, while the tree holds no link.
    for line in &lines {
        let Some((kind, rest)) = line.split_once(' ') else {
            continue;
        };
        match kind {
            "d" => {
                if let Some(dir) = local(root, rest) {
                    let _ = std::fs::create_dir_all(dir);
                }
            }
            "f" => {
                let Some((file, value)) = rest.split_once(" = ") else {
                    continue;
                };
                if let Some(file) = local(root, file) {
                    let _ = std::fs::create_dir_all(file.parent().unwrap());
                    let _ = std::fs::write(file, value.replace("\\n", "\n"));
                }
            }
            _ => {}
        }
    }
    // Then links, each in a real directory, pointing inside the tree.
    let place = |link: &Path| {
        let parent = link.parent().unwrap();
        no_link_above(root, parent) && std::fs::create_dir_all(parent).is_ok()
    };
    for line in &lines {
        let Some(rest) = line.strip_prefix("l ") else {
            continue;
        };
        let Some((link, target)) = rest.split_once(" -> ") else {
            continue;
        };
        let Some(link) = local(root, link) else {
            continue;
        };
        let depth = link
            .parent()
            .unwrap()
            .strip_prefix(root)
            .unwrap()
            .components()
            .count();
        if !target.starts_with('/') && safe_target(target, depth) && place(&link) {
            let _ = symlink(target, &link);
        }
    }
    for line in &lines {
        let Some(rest) = line.strip_prefix("r ") else {
            continue;
        };
        let Some((link, path)) = rest.split_once(" => ") else {
            continue;
        };
        let (Some(link), Some(path)) = (local(root, link), local(root, path)) else {
            continue;
        };
        if link.symlink_metadata().is_err() && place(&link) {
            let _ = symlink(path, &link);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let dump = String::from_utf8_lossy(data);
    let root = scratch();
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).unwrap();
    build(&dump, root);

    let view = match host_view(root) {
        Ok(view) => view,
        Err(e) => {
            assert!(matches!(e.kind, ErrorKind::Sysfs), "{e:?}");
            return;
        }
    };
    assert!(view.sessions.is_sorted_by_key(|s| s.sid));
    assert!(view.mappings.is_sorted_by_key(|m| m.device_id));
    let mut devices = view.devices.iter();
    for session in &view.sessions {
        assert!(session.luns.is_sorted());
        // A LUN's device, where one is found, is that LUN's block device in the first session
        // to the same target (sysfs may show two, a session one LUN number twice).
        let first = view.sessions.iter().find(|s| s.key == session.key).unwrap();
        for (lun, _) in &session.luns {
            if let Ok(device) = devices.next().unwrap() {
                let (_, kernel_name) = first.luns.iter().find(|(l, _)| l == lun).unwrap();
                assert_eq!(&device.kernel_name, kernel_name);
                assert!(device.device_path.starts_with("/dev/disk/by-path/ip-"));
            }
        }
        if let Ok(map) = devices.next().unwrap() {
            assert!(map.device_path.starts_with("/dev/mapper/"));
        }
    }
    for mapping in &view.mappings {
        if let Ok(device) = devices.next().unwrap() {
            assert_eq!(device.kernel_name, format!("rbd{}", mapping.device_id));
            assert!(
                device
                    .device_path
                    .starts_with(&format!("/dev/rbd/{}/", mapping.pool))
            );
        }
    }
    assert!(devices.next().is_none());
    for device in &view.devices {
        match device {
            Ok(device) => assert_eq!(device.size_bytes % 512, 0),
            Err(e) => assert!(
                matches!(
                    e.kind,
                    ErrorKind::DeviceTimeout | ErrorKind::Sysfs | ErrorKind::MountsUnreadable
                ),
                "{e:?}"
            ),
        }
    }

    for (i, mac) in view.macs.iter().enumerate() {
        assert!(!mac.is_empty() && mac != "00:00:00:00:00:00");
        assert_eq!(*mac, mac.to_ascii_lowercase());
        assert!(!view.macs[..i].contains(mac), "{mac} twice");
    }
    assert_eq!(view.lookup_macs, view.macs[..view.macs.len().min(16)]);
    if let Some(uuid) = &view.system_uuid {
        assert_eq!(*uuid, uuid.to_ascii_lowercase());
    }
    if let Some(iqn) = &view.initiator_iqn {
        assert!(!iqn.is_empty() && iqn.trim() == iqn);
    }
});
