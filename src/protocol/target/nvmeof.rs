//! NVMe over Fabrics (TCP) targets, in both forms Cinder's NVMe-oF drivers send: the older flat
//! one (`nqn`, `target_portal`, `target_port`, `transport_type`) and the newer one
//! (`target_nqn`, `portals` as address/port/transport triples, `vol_uuid`).

use serde_json::{Map, Value};

use super::{Portal, TargetError, opt_str, parse_portal, printable, req_str, restricted_name};
use crate::protocol::secret::Secret;

#[derive(Debug, Clone, PartialEq)]
pub struct NvmeofSpec {
    /// The subsystem's NQN.
    pub subsys_nqn: String,
    /// One controller is connected through each portal (the kernel's native multipath joins
    /// them into one namespace device).
    pub portals: Vec<Portal>,
    pub namespace: NamespaceId,
    pub dhchap: Option<DhChap>,
}

/// How the volume's namespace is recognised among the subsystem's: by UUID, by NGUID, or by
/// namespace id, the first that the target names.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct NamespaceId {
    /// Lower-case, hyphenated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// 32 lower-case hex digits, no hyphens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nguid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsid: Option<u32>,
}

/// In-band authentication (DH-HMAC-CHAP): the host's secret, and the controller's for
/// bidirectional authentication. Both in the `DHHC-1:…:` form nvme-cli generates.
#[derive(Debug, Clone, PartialEq)]
pub struct DhChap {
    pub host_secret: Secret,
    pub ctrl_secret: Option<Secret>,
}

const MAX_NQN: usize = 223;
/// The NVMe specification reserves 0 and 0xFFFFFFFF.
const MAX_NSID: u64 = 0xFFFF_FFFE;

pub(super) fn parse_nvmeof(props: &Map<String, Value>) -> Result<NvmeofSpec, TargetError> {
    if props.contains_key("volume_replicas") {
        return Err(TargetError::InvalidProperty {
            key: "volume_replicas",
            reason: "replicated NVMe-oF volumes (host-side RAID over several targets) are not \
                     supported; export the volume from one subsystem"
                .into(),
        });
    }
    let (subsys_nqn, portals) = if props.contains_key("target_nqn") {
        let nqn = parse_nqn("target_nqn", req_str(props, "target_nqn")?)?;
        (nqn, parse_portal_triples(props)?)
    } else {
        let nqn = parse_nqn("nqn", req_str(props, "nqn")?)?;
        let transport = opt_str(props, "transport_type")?.unwrap_or("tcp");
        check_transport("transport_type", transport)?;
        let address = req_str(props, "target_portal")?;
        let port = port_value(
            "target_port",
            props
                .get("target_port")
                .ok_or(TargetError::MissingProperty("target_port"))?,
        )?;
        (nqn, vec![portal("target_portal", address, &port)?])
    };
    let namespace = NamespaceId {
        uuid: match opt_str(props, "vol_uuid")? {
            Some(v) => Some(parse_uuid("vol_uuid", v)?),
            None => None,
        },
        nguid: match opt_str(props, "volume_nguid")? {
            Some(v) => Some(parse_nguid(v)?),
            None => None,
        },
        nsid: match props.get("ns_id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_nsid(v)?),
        },
    };
    if namespace == NamespaceId::default() {
        return Err(TargetError::InvalidProperty {
            key: "vol_uuid",
            reason: "the target names no namespace: give vol_uuid, volume_nguid or ns_id".into(),
        });
    }
    let dhchap = match opt_str(props, "dhchap_secret")? {
        None => {
            if props.contains_key("dhchap_ctrl_secret") {
                return Err(TargetError::InvalidProperty {
                    key: "dhchap_ctrl_secret",
                    reason: "a controller secret needs the host's dhchap_secret too".into(),
                });
            }
            None
        }
        Some(host) => Some(DhChap {
            host_secret: dhchap_secret("dhchap_secret", host)?,
            ctrl_secret: match opt_str(props, "dhchap_ctrl_secret")? {
                Some(ctrl) => Some(dhchap_secret("dhchap_ctrl_secret", ctrl)?),
                None => None,
            },
        }),
    };
    Ok(NvmeofSpec {
        subsys_nqn,
        portals,
        namespace,
        dhchap,
    })
}

/// `portals`: a non-empty list of `[address, port, transport]`.
fn parse_portal_triples(props: &Map<String, Value>) -> Result<Vec<Portal>, TargetError> {
    let invalid = |reason: String| TargetError::InvalidProperty {
        key: "portals",
        reason,
    };
    let list = props
        .get("portals")
        .ok_or(TargetError::MissingProperty("portals"))?
        .as_array()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| invalid("must be a non-empty list of [address, port, transport]".into()))?;
    let mut portals = Vec::new();
    for item in list {
        let triple = item.as_array().filter(|t| t.len() == 3).ok_or_else(|| {
            invalid("each portal is a list of three: address, port and transport".into())
        })?;
        let address = triple[0]
            .as_str()
            .ok_or_else(|| invalid("a portal's address must be a string".into()))?;
        let port = port_value("portals", &triple[1])?;
        let transport = triple[2]
            .as_str()
            .ok_or_else(|| invalid("a portal's transport must be a string".into()))?;
        check_transport("portals", transport)?;
        let portal = portal("portals", address, &port)?;
        if !portals.contains(&portal) {
            portals.push(portal);
        }
    }
    Ok(portals)
}

fn portal(key: &'static str, address: &str, port: &str) -> Result<Portal, TargetError> {
    let host = if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]")
    } else {
        address.to_string()
    };
    parse_portal(&format!("{host}:{port}")).map_err(|_| TargetError::InvalidProperty {
        key,
        reason: format!(
            "{:?} port {:?} is not a portal (an IP address or a DNS name, and a port from 1 \
             to 65535)",
            printable(address),
            printable(port)
        ),
    })
}

fn port_value(key: &'static str, value: &Value) -> Result<String, TargetError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(TargetError::InvalidProperty {
            key,
            reason: "a port is a number or a string of digits".into(),
        }),
    }
}

/// Only TCP: RDMA and Fibre Channel need fabrics this agent does not set up.
fn check_transport(key: &'static str, transport: &str) -> Result<(), TargetError> {
    if transport.eq_ignore_ascii_case("tcp") {
        Ok(())
    } else {
        Err(TargetError::InvalidProperty {
            key,
            reason: format!(
                "transport {:?} is not supported; this agent connects NVMe-oF over TCP only",
                printable(transport)
            ),
        })
    }
}

/// An NQN goes into the kernel's comma-separated option string: letters, digits and `. : - _`
/// only, so that no value can add an option.
pub fn parse_nqn(key: &'static str, value: &str) -> Result<String, TargetError> {
    restricted_name(
        key,
        value,
        MAX_NQN,
        ".:-_",
        "an NQN may hold only letters, digits and . : - _",
    )?;
    if !value.starts_with("nqn.") {
        return Err(TargetError::InvalidProperty {
            key,
            reason: format!("{:?} does not start with \"nqn.\"", printable(value)),
        });
    }
    Ok(value.to_string())
}

fn parse_uuid(key: &'static str, value: &str) -> Result<String, TargetError> {
    uuid::Uuid::try_parse(value)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| TargetError::InvalidProperty {
            key,
            reason: format!("{:?} is not a UUID", printable(value)),
        })
}

fn parse_nguid(value: &str) -> Result<String, TargetError> {
    let hex: String = value
        .chars()
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(TargetError::InvalidProperty {
            key: "volume_nguid",
            reason: format!(
                "{:?} is not an NGUID (32 hex digits, hyphens allowed)",
                printable(value)
            ),
        })
    }
}

fn parse_nsid(value: &Value) -> Result<u32, TargetError> {
    let n = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    match n {
        Some(n) if (1..=MAX_NSID).contains(&n) => Ok(n as u32),
        _ => Err(TargetError::InvalidProperty {
            key: "ns_id",
            reason: format!(
                "{} is not a namespace id (1 to {MAX_NSID})",
                printable(&value.to_string())
            ),
        }),
    }
}

/// `DHHC-1:<hash>:<base64 of the key and its CRC-32>:` as nvme-cli's gen-dhchap-key prints it.
/// Never echoed: errors describe its shape.
fn dhchap_secret(key: &'static str, value: &str) -> Result<Secret, TargetError> {
    use base64::Engine;
    let invalid = || TargetError::InvalidProperty {
        key,
        reason: "it is not a DH-HMAC-CHAP secret (DHHC-1:<00 to 03>:<base64 of a 32, 48 or \
                 64-byte key and its CRC>:); make one with `nvme gen-dhchap-key`"
            .into(),
    };
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "+/=:-".contains(c))
    {
        return Err(TargetError::UnsafeValue {
            key,
            reason: "a DH-HMAC-CHAP secret holds only DHHC-1, hex, base64 and ':'",
        });
    }
    let mut parts = value.split(':');
    let (Some("DHHC-1"), Some(hash), Some(encoded), Some(""), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(invalid());
    };
    if !["00", "01", "02", "03"].contains(&hash) {
        return Err(invalid());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| invalid())?;
    if ![36, 52, 68].contains(&decoded.len()) {
        return Err(invalid());
    }
    // The kernel refuses a secret whose CRC does not match, with a less helpful error.
    let (secret, crc) = decoded.split_at(decoded.len() - 4);
    if crc32fast::hash(secret).to_le_bytes() != crc {
        return Err(TargetError::InvalidProperty {
            key,
            reason: "the DH-HMAC-CHAP secret's checksum does not match its key: it was \
                     mistyped or cut"
                .into(),
        });
    }
    Ok(Secret::new(value))
}
