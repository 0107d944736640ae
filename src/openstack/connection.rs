//! Cinder's connection_info as a tether target: the keys tether's backends read are kept, the
//! others are dropped (and listed, for the log), and RBD gets the cephx key that Cinder does not
//! send (OSSN-0085) from the conductor's key files.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value};
use thiserror::Error;

/// The keys of an iSCSI connection_info that tether's iSCSI backend reads.
const ISCSI_KEYS: &[&str] = &[
    "target_portal",
    "target_iqn",
    "target_lun",
    "target_portals",
    "target_iqns",
    "target_luns",
    "auth_method",
    "auth_username",
    "auth_password",
    "auth_username_in",
    "auth_password_in",
    "discovery_auth_method",
    "discovery_auth_username",
    "discovery_auth_password",
    "discovery_auth_username_in",
    "discovery_auth_password_in",
    "access_mode",
];

/// The keys of an RBD connection_info that tether's RBD backend reads (`auth_key` comes from a
/// key file, never from Cinder).
const RBD_KEYS: &[&str] = &[
    "name",
    "hosts",
    "ports",
    "cluster_name",
    "auth_enabled",
    "auth_username",
    "access_mode",
];

/// The keys of an NVMe-oF connection_info (older flat and newer forms) that tether's NVMe
/// backend reads; `host_nqn` is the node's own, which the agent knows better.
const NVMEOF_KEYS: &[&str] = &[
    "target_nqn",
    "portals",
    "vol_uuid",
    "nqn",
    "transport_type",
    "target_portal",
    "target_port",
    "volume_nguid",
    "ns_id",
    "volume_replicas",
    "dhchap_secret",
    "dhchap_ctrl_secret",
    "access_mode",
];

/// A cephx key the conductor hands to nodes for volumes of one Ceph cluster and user.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CephKey {
    /// The cluster's monitors as `host:port` (Cinder's `hosts` and `ports`); a volume matches
    /// when one of its monitors is listed here.
    #[serde(default)]
    pub monitors: Vec<String>,
    /// Or the cluster by Cinder's `cluster_name` (as `rbd_cluster_name` in cinder.conf).
    #[serde(default)]
    pub cluster_name: Option<String>,
    /// The cephx user without `client.`, as Cinder's `auth_username`.
    pub user: String,
    /// A file holding the bare key (as `ceph auth get-key` prints it), readable only by the
    /// conductor.
    pub key_file: PathBuf,
}

/// A connection_info turned into a target's type and properties.
#[derive(Clone, PartialEq)]
pub struct MappedTarget {
    pub volume_type: &'static str,
    pub properties: Map<String, Value>,
    /// Keys Cinder sent that tether does not use, sorted.
    pub ignored: Vec<String>,
    /// RBD: the key file to read `auth_key` from.
    pub key_file: Option<PathBuf>,
}

impl std::fmt::Debug for MappedTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedTarget")
            .field("volume_type", &self.volume_type)
            .field("keys", &self.properties.keys().collect::<Vec<_>>())
            .field("ignored", &self.ignored)
            .field("key_file", &self.key_file)
            .finish()
    }
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum MappingError {
    #[error("Cinder's connection_info has no driver_volume_type")]
    NoType,
    #[error(
        "Cinder exports this volume over {0:?}, which tether does not attach (iscsi, rbd, nvmeof)"
    )]
    UnsupportedType(String),
    #[error(
        "no [[cinder.ceph_keys]] entry for cephx user {user:?} of the cluster at {monitors} \
         (cluster {cluster:?}): Cinder does not send cephx keys, so the conductor needs one"
    )]
    NoCephKey {
        user: String,
        monitors: String,
        cluster: String,
    },
}

impl MappingError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoType | Self::UnsupportedType(_) => "unsupported_volume_type",
            Self::NoCephKey { .. } => "no_ceph_key",
        }
    }
}

/// Maps `info` (an attachment's `connection_info`, flat or with its properties under `data`).
/// `read_only` asks for `access_mode = ro` whatever Cinder said.
pub fn map_connection_info(
    info: &Map<String, Value>,
    ceph_keys: &[CephKey],
    read_only: bool,
) -> Result<MappedTarget, MappingError> {
    let driver = info
        .get("driver_volume_type")
        .and_then(Value::as_str)
        .ok_or(MappingError::NoType)?;
    // Older answers nest the properties under `data`; newer ones are flat.
    let (data, outer) = match info.get("data").and_then(Value::as_object) {
        Some(data) => (data, Some(info)),
        None => (info, None),
    };
    let (volume_type, keys): (&'static str, &[&str]) = match driver {
        "iscsi" | "ISCSI" => ("iscsi", ISCSI_KEYS),
        "rbd" | "RBD" => ("rbd", RBD_KEYS),
        "nvmeof" | "NVMEOF" | "NVMe-oF" => ("nvmeof", NVMEOF_KEYS),
        other => return Err(MappingError::UnsupportedType(other.to_string())),
    };
    let mut properties = Map::new();
    let mut ignored = BTreeSet::new();
    for (key, value) in data {
        if key == "driver_volume_type" {
            continue;
        }
        if keys.contains(&key.as_str()) {
            properties.insert(key.clone(), value.clone());
        } else {
            ignored.insert(key.clone());
        }
    }
    for key in outer.into_iter().flat_map(|o| o.keys()) {
        if key != "data" && key != "driver_volume_type" {
            ignored.insert(key.clone());
        }
    }
    // Cinder sends `null` for settings it leaves open (auth_method without CHAP): as if absent.
    properties.retain(|_, v| !v.is_null());
    if read_only {
        properties.insert("access_mode".into(), Value::from("ro"));
    }
    let key_file = match volume_type {
        "rbd" => Some(ceph_key_for(&properties, ceph_keys)?.key_file.clone()),
        _ => None,
    };
    Ok(MappedTarget {
        volume_type,
        properties,
        ignored: ignored.into_iter().collect(),
        key_file,
    })
}

/// The key entry for an RBD volume: its user, and one of its monitors or its cluster name.
fn ceph_key_for<'a>(
    properties: &Map<String, Value>,
    keys: &'a [CephKey],
) -> Result<&'a CephKey, MappingError> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let user = properties
        .get("auth_username")
        .map(text)
        .unwrap_or_else(|| "admin".into());
    let cluster = properties
        .get("cluster_name")
        .map(text)
        .unwrap_or_else(|| "ceph".into());
    let list = |key: &str| -> Vec<String> {
        match properties.get(key) {
            Some(Value::Array(items)) => items.iter().map(text).collect(),
            Some(one) => vec![text(one)],
            None => Vec::new(),
        }
    };
    let hosts = list("hosts");
    let ports = list("ports");
    let monitors: Vec<String> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).cloned().unwrap_or_else(|| "6789".into());
            match h.contains(':') && !h.starts_with('[') {
                true => format!("[{h}]:{port}"),
                false => format!("{h}:{port}"),
            }
        })
        .collect();
    keys.iter()
        .filter(|k| k.user == user)
        .find(|k| {
            k.monitors.iter().any(|m| monitors.contains(m))
                || k.cluster_name.as_deref() == Some(cluster.as_str())
        })
        .ok_or_else(|| MappingError::NoCephKey {
            user,
            monitors: monitors.join(","),
            cluster,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn nvmeof_keeps_both_forms_and_drops_the_host_nqn() {
        let info = object(json!({
            "driver_volume_type": "nvmeof",
            "data": {"target_nqn": "nqn.2014-08.org.example:v1", "vol_uuid": "u",
                     "portals": [["192.0.2.1", 4420, "tcp"]], "host_nqn": "nqn.other",
                     "nqn": "nqn.x", "target_portal": "192.0.2.1", "target_port": 4420,
                     "transport_type": "tcp", "ns_id": 1, "volume_nguid": "g"},
        }));
        let mapped = map_connection_info(&info, &[], false).unwrap();
        assert_eq!(mapped.volume_type, "nvmeof");
        assert_eq!(mapped.ignored, ["host_nqn"]);
        assert_eq!(mapped.properties.len(), 9);
        assert_eq!(mapped.key_file, None);
    }

    #[test]
    fn nested_data_and_read_only() {
        let info = object(json!({
            "driver_volume_type": "iscsi",
            "data": {"target_portal": "127.0.0.1:3260", "target_iqn": "iqn.x:y", "target_lun": 1,
                     "access_mode": "rw"},
            "serial": "s"
        }));
        let mapped = map_connection_info(&info, &[], true).unwrap();
        assert_eq!(mapped.properties["access_mode"], "ro");
        assert_eq!(mapped.properties["target_lun"], 1);
        assert_eq!(mapped.ignored, ["serial"]);
    }

    #[test]
    fn rbd_takes_its_key_file_by_user_and_monitor_or_cluster() {
        let info = object(json!({
            "driver_volume_type": "rbd",
            "name": "volumes/volume-1",
            "hosts": ["127.0.0.1"], "ports": ["6789"],
            "cluster_name": "ceph",
            "auth_enabled": true, "auth_username": "cinder",
            "secret_type": "ceph", "secret_uuid": "c0ffee00-0000-0000-0000-000000000000",
            "volume_id": "1", "discard": true, "keyring": null
        }));
        let key = |user: &str, monitors: &[&str], cluster: Option<&str>, file: &str| CephKey {
            monitors: monitors.iter().map(|m| m.to_string()).collect(),
            cluster_name: cluster.map(str::to_string),
            user: user.into(),
            key_file: file.into(),
        };
        let keys = [
            key("admin", &["127.0.0.1:6789"], None, "/admin"),
            key("cinder", &["192.0.2.1:6789"], None, "/other-cluster"),
            key("cinder", &["127.0.0.1:6789"], None, "/cinder"),
        ];
        let mapped = map_connection_info(&info, &keys, false).unwrap();
        assert_eq!(mapped.volume_type, "rbd");
        assert_eq!(mapped.key_file, Some("/cinder".into()));
        assert!(mapped.ignored.contains(&"secret_uuid".to_string()));
        assert!(mapped.ignored.contains(&"keyring".to_string()));
        let by_cluster = [key("cinder", &[], Some("ceph"), "/by-name")];
        let mapped = map_connection_info(&info, &by_cluster, false).unwrap();
        assert_eq!(mapped.key_file, Some("/by-name".into()));
        let err = map_connection_info(&info, &keys[..2], false).unwrap_err();
        assert_eq!(err.kind(), "no_ceph_key");
        assert!(err.to_string().contains("127.0.0.1:6789"), "{err}");
    }

    #[test]
    fn other_transports_are_refused() {
        let info = object(json!({"driver_volume_type": "fibre_channel", "target_wwn": ["1"]}));
        let err = map_connection_info(&info, &[], false).unwrap_err();
        assert_eq!(err.kind(), "unsupported_volume_type");
        assert_eq!(
            map_connection_info(&Map::new(), &[], false).unwrap_err(),
            MappingError::NoType
        );
    }
}
