//! Who this node is: MAC addresses, system UUID, initiator IQN and IP addresses.
//! Every path is read under a root so that tests can point it at a temporary tree.

use std::path::Path;

use crate::fsutil::read_trimmed;
use crate::protocol::Connector;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) macs: Vec<String>,
    pub(crate) system_uuid: Option<String>,
    pub(crate) initiator_iqn: Option<String>,
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
            macs.push(mac.to_ascii_lowercase());
        }
    }
    macs.sort();
    macs.dedup();
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
        ips,
    }
}

impl Identity {
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
        assert_eq!(types, vec!["iqn", "mac"]);
    }

    #[test]
    fn a_bare_root_gives_an_empty_identity() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(collect(root.path()), Identity::default());
    }
}
