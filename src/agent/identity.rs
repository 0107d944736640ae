//! Who this node is: MAC addresses, system UUID, initiator IQN, NVMe host NQN and IP addresses.
//! Every path is read under a root so that tests can point it at a temporary tree.

use std::path::Path;

use crate::fsutil::read_trimmed;
use crate::protocol::Connector;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) macs: Vec<String>,
    pub(crate) system_uuid: Option<String>,
    pub(crate) initiator_iqn: Option<String>,
    /// `/etc/nvme/hostnqn` and `/etc/nvme/hostid` (the NVMe backend makes them when absent).
    pub(crate) nvme_host_nqn: Option<String>,
    pub(crate) nvme_host_id: Option<String>,
    pub(crate) ips: Vec<String>,
}

/// ARPHRD_ETHER in /sys/class/net/*/type: the interfaces with real MAC addresses.
const ARPHRD_ETHER: &str = "1";

pub(crate) fn collect(root: &Path) -> Identity {
    let mut macs = Vec::new();
    let net = root.join("sys/class/net");
    for entry in std::fs::read_dir(&net).into_iter().flatten().flatten() {
        let dir = entry.path();
        let kind = read_trimmed(&dir.join("type"));
        if kind.as_deref().is_some_and(|k| k != ARPHRD_ETHER) {
            continue;
        }
        if let Some(mac) = read_trimmed(&dir.join("address"))
            && mac != "00:00:00:00:00:00"
            && !mac.is_empty()
        {
            macs.push((interface_rank(&dir), mac.to_ascii_lowercase()));
        }
    }
    macs.sort();
    let mut seen = std::collections::HashSet::new();
    let macs: Vec<String> = macs
        .into_iter()
        .map(|(_, mac)| mac)
        .filter(|mac| seen.insert(mac.clone()))
        .collect();
    let ips = if root == Path::new("/") {
        local_ips()
    } else {
        Vec::new()
    };
    Identity {
        macs,
        system_uuid: read_trimmed(&root.join("sys/class/dmi/id/product_uuid"))
            .map(|u| u.to_ascii_lowercase()),
        initiator_iqn: read_initiator_name(&root.join("etc/iscsi/initiatorname.iscsi")),
        nvme_host_nqn: read_trimmed(&root.join("etc/nvme/hostnqn")).filter(|n| !n.is_empty()),
        nvme_host_id: read_trimmed(&root.join("etc/nvme/hostid")).filter(|n| !n.is_empty()),
        ips,
    }
}

/// Network devices first, then SR-IOV virtual functions, then interfaces with no device behind
/// them (bridges, veths, bonds, VLANs): the NICs an operator enrolls come first.
fn interface_rank(dir: &Path) -> u8 {
    match (
        dir.join("device").exists(),
        dir.join("device/physfn").exists(),
    ) {
        (true, false) => 0,
        (true, true) => 1,
        (false, _) => 2,
    }
}

impl Identity {
    /// The MAC addresses a lookup sends: the first [`MAX_LOOKUP_ADDRESSES`] (devices first), all
    /// a conductor takes. A host with many veths or VFs has more.
    ///
    /// [`MAX_LOOKUP_ADDRESSES`]: crate::protocol::MAX_LOOKUP_ADDRESSES
    pub(crate) fn lookup_macs(&self) -> &[String] {
        &self.macs[..self.macs.len().min(crate::protocol::MAX_LOOKUP_ADDRESSES)]
    }

    pub(crate) fn connectors(&self) -> Vec<Connector> {
        let mut out = Vec::new();
        let mut push = |t: &str, id: &str| {
            out.push(Connector {
                connector_type: t.into(),
                connector_id: id.into(),
            })
        };
        if let Some(iqn) = &self.initiator_iqn {
            push("iqn", iqn);
        }
        if let Some(nqn) = &self.nvme_host_nqn {
            push("nqn", nqn);
        }
        if let Some(id) = &self.nvme_host_id {
            push("nvme_hostid", id);
        }
        for mac in &self.macs {
            push("mac", mac);
        }
        for ip in &self.ips {
            push("ip", ip);
        }
        out
    }
}

pub(crate) fn read_initiator_name(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|line| {
            let line = line.trim();
            (!line.starts_with('#'))
                .then(|| line.strip_prefix("InitiatorName="))
                .flatten()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        })
}

fn local_ips() -> Vec<String> {
    let mut ips: Vec<String> = nix::ifaddrs::getifaddrs()
        .into_iter()
        .flatten()
        .filter_map(|ifa| {
            let addr = ifa.address?;
            if let Some(v4) = addr.as_sockaddr_in() {
                let ip = v4.ip();
                (!ip.is_loopback()).then(|| ip.to_string())
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                let ip = v6.ip();
                (!ip.is_loopback() && (ip.segments()[0] & 0xffc0) != 0xfe80).then(|| ip.to_string())
            } else {
                None
            }
        })
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_identity_from_a_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for (name, mac, kind) in [
            ("eth0", "52:54:00:AB:CD:EF", "1"),
            ("lo", "00:00:00:00:00:00", "772"),
            ("ib0", "80:00:00:48", "32"),
        ] {
            std::fs::create_dir_all(r.join("sys/class/net").join(name)).unwrap();
            std::fs::write(
                r.join("sys/class/net").join(name).join("address"),
                format!("{mac}\n"),
            )
            .unwrap();
            std::fs::write(
                r.join("sys/class/net").join(name).join("type"),
                format!("{kind}\n"),
            )
            .unwrap();
        }
        std::fs::create_dir_all(r.join("sys/class/dmi/id")).unwrap();
        std::fs::write(r.join("sys/class/dmi/id/product_uuid"), "4C4C4544-0000\n").unwrap();
        std::fs::create_dir_all(r.join("etc/iscsi")).unwrap();
        std::fs::write(
            r.join("etc/iscsi/initiatorname.iscsi"),
            "## DO NOT EDIT\n#InitiatorName=iqn.old\nInitiatorName=iqn.1993-08.org.debian:01:abc\n",
        )
        .unwrap();
        std::fs::create_dir_all(r.join("etc/nvme")).unwrap();
        std::fs::write(
            r.join("etc/nvme/hostnqn"),
            "nqn.2014-08.org.nvmexpress:uuid:x\n",
        )
        .unwrap();
        std::fs::write(r.join("etc/nvme/hostid"), "x\n").unwrap();
        let id = collect(r);
        assert_eq!(id.macs, vec!["52:54:00:ab:cd:ef"]);
        assert_eq!(id.system_uuid.as_deref(), Some("4c4c4544-0000"));
        assert_eq!(
            id.initiator_iqn.as_deref(),
            Some("iqn.1993-08.org.debian:01:abc")
        );
        let types: Vec<_> = id
            .connectors()
            .into_iter()
            .map(|c| c.connector_type)
            .collect();
        assert_eq!(types, vec!["iqn", "nqn", "nvme_hostid", "mac"]);
    }

    #[test]
    fn devices_come_first_and_a_lookup_sends_at_most_16() {
        let root = tempfile::tempdir().unwrap();
        let net = root.path().join("sys/class/net");
        let nic = |name: &str, mac: &str, device: Option<&str>| {
            let dir = net.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("address"), format!("{mac}\n")).unwrap();
            std::fs::write(dir.join("type"), "1\n").unwrap();
            if let Some(device) = device {
                std::fs::create_dir_all(dir.join("device").join(device)).unwrap();
            }
        };
        for i in 0..30 {
            nic(
                &format!("veth{i}"),
                &format!("02:00:00:00:00:{i:02x}"),
                None,
            );
        }
        nic("eth0vf0", "fe:00:00:00:00:01", Some("physfn"));
        nic("eth0", "fe:00:00:00:00:02", Some("driver"));
        nic("bond0", "fe:00:00:00:00:02", None);
        let id = collect(root.path());
        assert_eq!(id.macs.len(), 32, "every address is still a connector");
        assert_eq!(id.macs[..2], ["fe:00:00:00:00:02", "fe:00:00:00:00:01"]);
        assert_eq!(id.lookup_macs().len(), 16);
    }

    #[test]
    fn a_bare_root_gives_an_empty_identity() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(collect(root.path()), Identity::default());
    }
}
