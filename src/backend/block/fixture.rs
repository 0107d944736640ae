//! Captured dumps of sysfs and /dev (`tests/fixtures/*/`, format in each dump's header)
//! rebuilt as trees under a test's temporary root, and what backends' tests check on them.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{DeviceMatcher, SystemBlock};
use crate::backend::{BlockHost, ErrorKind};

/// Creates the dump's directories, links and readable files under `root`. A link the dump
/// gives only resolved (`r`) points at its resolved path under `root`.
pub(crate) fn materialize(dump: &str, root: &Path) {
    let local = |p: &str| root.join(p.trim_start_matches('/'));
    let in_place = |path: PathBuf| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        path
    };
    let mut resolved = Vec::new();
    for line in dump.lines() {
        let Some((kind, rest)) = line.split_once(' ') else {
            continue;
        };
        match kind {
            "d" => std::fs::create_dir_all(local(rest)).unwrap(),
            "l" => {
                let (link, target) = rest.split_once(" -> ").unwrap();
                let _ = symlink(target, in_place(local(link)));
            }
            "f" => {
                let Some((file, value)) = rest.split_once(" = ") else {
                    continue;
                };
                std::fs::write(in_place(local(file)), value.replace("\\n", "\n")).unwrap();
            }
            "r" => resolved.push(rest.split_once(" => ").unwrap()),
            _ => {}
        }
    }
    for (link, path) in resolved {
        let link = local(link);
        if link.symlink_metadata().is_err() {
            symlink(local(path), in_place(link)).unwrap();
        }
    }
}

/// Asserts that `block` has no device for `what` yet, and that the timeout calls it `named`.
pub(crate) fn assert_not_there(block: &SystemBlock, what: &dyn DeviceMatcher, named: &str) {
    let error = block.wait_for_device(what, Duration::ZERO).unwrap_err();
    assert_eq!(error.kind, ErrorKind::DeviceTimeout);
    let expected = format!("no block device for {named} with its udev link");
    assert!(error.message.contains(&expected), "{error}");
}
