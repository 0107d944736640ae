//! A namespace's block device. Each controller's directory in /sys/class/nvme lists the
//! namespaces it reaches: `nvmeXnY` without native multipath, or the path `nvmeXcZnY` whose
//! block device is the multipath head `nvmeXnY`. udev links the device as
//! `/dev/disk/by-id/nvme-<wwid>` (`uuid.…`, `eui.…`).

use std::fmt;
use std::path::Path;

use super::Namespace;
use crate::backend::HostError;
use crate::backend::block::{DeviceMatcher, Located};
use crate::fsutil::read_trimmed;
use crate::protocol::target::NamespaceId;

/// The namespace `namespace` reached through any of `controllers` (`nvmeN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NamespaceMatcher {
    pub(crate) controllers: Vec<String>,
    pub(crate) namespace: NamespaceId,
}

impl fmt::Display for NamespaceMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let NamespaceId { uuid, nguid, nsid } = &self.namespace;
        match (uuid, nguid, nsid) {
            (Some(uuid), _, _) => write!(f, "namespace uuid {uuid}")?,
            (None, Some(nguid), _) => write!(f, "namespace nguid {nguid}")?,
            (None, None, Some(nsid)) => write!(f, "namespace {nsid}")?,
            (None, None, None) => f.write_str("a namespace")?,
        }
        write!(f, " on {}", self.controllers.join(", "))
    }
}

impl NamespaceMatcher {
    /// The device, given the namespaces each controller (by name) reaches.
    pub(crate) fn find(&self, namespaces_of: impl Fn(&str) -> Vec<Namespace>) -> Option<Located> {
        self.controllers.iter().find_map(|controller| {
            namespaces_of(controller)
                .into_iter()
                .find(|ns| ns.is(&self.namespace))
                .and_then(|ns| {
                    Some(Located {
                        link: format!("/dev/disk/by-id/nvme-{}", ns.wwid?),
                        kernel_name: ns.kernel_name,
                    })
                })
        })
    }
}

impl DeviceMatcher for NamespaceMatcher {
    fn locate(&self, sys: &Path) -> Result<Option<Located>, HostError> {
        Ok(self.find(|controller| namespaces(sys, controller)))
    }
}

/// The namespaces the controller `nvmeN` reaches, by their block devices.
pub(crate) fn namespaces(sys: &Path, controller: &str) -> Vec<Namespace> {
    let mut found = Vec::new();
    let dir = sys.join("class/nvme").join(controller);
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(head) = block_device_of(&name) else {
            continue;
        };
        let block = sys.join("block").join(&head);
        let Some(nsid) = read_trimmed(&block.join("nsid")).and_then(|n| n.parse().ok()) else {
            continue;
        };
        let uuid = read_trimmed(&block.join("uuid"))
            .map(|u| u.to_ascii_lowercase())
            .filter(|u| u.chars().any(|c| c != '0' && c != '-'));
        let nguid = read_trimmed(&block.join("nguid"))
            .map(|n| n.replace('-', "").to_ascii_lowercase())
            .filter(|n| n.chars().any(|c| c != '0'));
        found.push(Namespace {
            wwid: read_trimmed(&block.join("wwid")),
            kernel_name: head,
            nsid,
            uuid,
            nguid,
        });
    }
    found.sort_by_key(|ns| ns.nsid);
    found.dedup_by(|a, b| a.kernel_name == b.kernel_name);
    found
}

/// `nvme0n1` is its own block device; the path `nvme0c1n1` is reached through the head
/// `nvme0n1`; anything else (`nvme0n1p1`, attributes) is not a namespace.
fn block_device_of(entry: &str) -> Option<String> {
    let rest = entry.strip_prefix("nvme")?;
    let (subsystem, rest) = split_number(rest)?;
    let rest = match rest.strip_prefix('c') {
        Some(path) => split_number(path)?.1,
        None => rest,
    };
    let (head, rest) = split_number(rest.strip_prefix('n')?)?;
    rest.is_empty().then(|| format!("nvme{subsystem}n{head}"))
}

fn split_number(s: &str) -> Option<(&str, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    (end > 0).then(|| s.split_at(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_entries_name_their_block_device() {
        assert_eq!(block_device_of("nvme0n1").as_deref(), Some("nvme0n1"));
        assert_eq!(block_device_of("nvme0c3n12").as_deref(), Some("nvme0n12"));
        for not in [
            "nvme0",
            "nvme0n1p1",
            "nvme0c1",
            "nvmen1",
            "state",
            "nvme0n",
            "nvme0cn1",
        ] {
            assert_eq!(block_device_of(not), None, "{not}");
        }
    }
}
