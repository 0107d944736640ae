//! Turning a wire [`VolumeTarget`] into a validated [`TargetSpec`].
//!
//! Validation is pure and strict: anything that reaches iscsiadm, rbd or mount has passed here.
//! A target that fails gets a [`TargetError`] with a stable kind, and only that volume fails.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde_json::{Map, Value};
use thiserror::Error;
use uuid::Uuid;

use super::VolumeTarget;
use super::secret::Secret;
use mount::parse_mount;
pub use nvmeof::{DhChap, NamespaceId, NvmeofSpec, parse_nqn};

pub mod mount;
mod nvmeof;

/// Linux addresses LUNs up to 16383 with flat addressing, which is what LIO and most arrays use.
pub const MAX_LUN: u64 = 16383;
const MAX_ISCSI_NAME: usize = 223;

#[derive(Debug, Clone, PartialEq)]
pub struct TargetSpec {
    pub uuid: Uuid,
    pub volume_id: String,
    pub backend: BackendSpec,
    pub read_only: bool,
    pub mount: Option<MountSpec>,
    /// The volume's size at the storage, when the conductor knows it: a device smaller than
    /// this is grown (rescanned) while attached.
    pub size_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BackendSpec {
    Iscsi(IscsiSpec),
    Rbd(RbdSpec),
    Nvmeof(NvmeofSpec),
}

#[derive(Debug, Clone, PartialEq)]
pub struct IscsiSpec {
    /// One entry per path; more than one means multipath.
    pub paths: Vec<IscsiPath>,
    pub chap: Option<Chap>,
    /// Run SendTargets discovery against each portal before logging in.
    pub discovery: bool,
    pub discovery_chap: Option<Chap>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IscsiPath {
    pub portal: Portal,
    pub iqn: String,
    pub lun: u16,
}

/// `host:port`, with IPv6 hosts in brackets as iscsiadm and udev write them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Portal {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Portal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Chap {
    pub username: String,
    pub password: Secret,
    /// Mutual CHAP: the credentials the target proves itself with.
    pub mutual: Option<(String, Secret)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RbdSpec {
    pub pool: String,
    pub namespace: Option<String>,
    pub image: String,
    pub monitors: Vec<Monitor>,
    pub cluster: String,
    pub user: String,
    pub key: Option<Secret>,
}

impl RbdSpec {
    /// `pool/image` or `pool/namespace/image`, as the rbd CLI and udev write it.
    pub fn spec_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{}/{}", self.pool, ns, self.image),
            None => format!("{}/{}", self.pool, self.image),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Monitor {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub path: PathBuf,
    pub fstype: String,
    pub options: Option<String>,
    pub mkfs: bool,
    /// Grow the file system online when the volume grows.
    pub grow: bool,
}

/// The volume types this agent serves. The wire keeps `volume_type` a string so that an
/// unknown type fails alone, as `unknown_volume_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VolumeType {
    Iscsi,
    Rbd,
    Nvmeof,
}

impl VolumeType {
    pub const ALL: [VolumeType; 3] = [Self::Iscsi, Self::Rbd, Self::Nvmeof];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Iscsi => "iscsi",
            Self::Rbd => "rbd",
            Self::Nvmeof => "nvmeof",
        }
    }

    pub fn parse(wire: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == wire)
    }
}

impl fmt::Display for VolumeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One connection that volumes share: an iSCSI session (portal, iqn) or an NVMe-oF controller
/// (portal, subsystem NQN). Reconcile, the session locks, the ownership record and sysfs all
/// name them with this one type, built by [`SessionKey::new`], so two spellings of one portal
/// cannot make two keys.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct SessionKey {
    portal: String,
    iqn: String,
}

impl SessionKey {
    /// An IP host is written in its canonical form (as sysfs and udev show it).
    pub fn new(portal: &Portal, iqn: &str) -> Self {
        let host = match portal.host.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => portal.host.clone(),
        };
        let portal = Portal {
            host,
            port: portal.port,
        };
        Self {
            portal: portal.to_string(),
            iqn: iqn.to_string(),
        }
    }

    /// `host:port`, with an IPv6 host in brackets: how iscsiadm and udev write it.
    pub fn portal(&self) -> &str {
        &self.portal
    }

    /// The target's name: an IQN, or an NVMe subsystem's NQN.
    pub fn iqn(&self) -> &str {
        &self.iqn
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.portal, self.iqn)
    }
}

impl IscsiPath {
    pub fn session(&self) -> SessionKey {
        SessionKey::new(&self.portal, &self.iqn)
    }
}

impl TargetSpec {
    pub fn volume_type(&self) -> VolumeType {
        match self.backend {
            BackendSpec::Iscsi(_) => VolumeType::Iscsi,
            BackendSpec::Rbd(_) => VolumeType::Rbd,
            BackendSpec::Nvmeof(_) => VolumeType::Nvmeof,
        }
    }

    /// The sessions this volume logs in to. At most one login per session may be in flight.
    pub fn sessions(&self) -> Vec<SessionKey> {
        match &self.backend {
            BackendSpec::Iscsi(spec) => spec.paths.iter().map(IscsiPath::session).collect(),
            BackendSpec::Rbd(_) => Vec::new(),
            BackendSpec::Nvmeof(spec) => spec
                .portals
                .iter()
                .map(|p| SessionKey::new(p, &spec.subsys_nqn))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TargetError {
    /// The conductor sent a volume type this agent does not handle.
    #[error(
        "volume_type {0:?} is not supported; use \"iscsi\", \"rbd\" or \"nvmeof\" \
         (fix the target at the conductor)"
    )]
    UnknownVolumeType(String),
    #[error(
        "property {0:?} is missing; the target's connection info is incomplete \
         (recreate the target with it)"
    )]
    MissingProperty(&'static str),
    #[error("property {key:?} is invalid: {reason} (fix the target at the conductor)")]
    InvalidProperty { key: &'static str, reason: String },
    #[error(
        "{value:?} is not a valid iSCSI name: {reason} \
         (expected iqn.YYYY-MM.domain[:name], eui.<16 hex> or naa.<16 or 32 hex>)"
    )]
    InvalidIqn { value: String, reason: &'static str },
    #[error(
        "{value:?} is not a valid portal: {reason} \
         (write it as host:port, for example 192.0.2.10:3260)"
    )]
    InvalidPortal { value: String, reason: &'static str },
    #[error("LUN {value} is out of range; LUNs go from 0 to {MAX_LUN}")]
    InvalidLun { value: String },
    #[error(
        "property {key:?} contains characters that are not allowed ({reason}); nothing was run"
    )]
    UnsafeValue {
        key: &'static str,
        reason: &'static str,
    },
    #[error("extra.mount is invalid: {0} (fix the target's extra.mount at the conductor)")]
    InvalidMount(String),
    #[error(
        "volume_id {value:?} is invalid: {reason} (a volume id is 1 to {MAX_VOLUME_ID} \
         letters, digits and . _ : @ + -, starting with a letter or digit)"
    )]
    InvalidVolumeId { value: String, reason: &'static str },
}

impl TargetError {
    /// Stable kind, used in reports, logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownVolumeType(_) => "unknown_volume_type",
            Self::MissingProperty(_) => "missing_property",
            Self::InvalidProperty { .. } => "invalid_property",
            Self::InvalidIqn { .. } => "invalid_iqn",
            Self::InvalidPortal { .. } => "invalid_portal",
            Self::InvalidLun { .. } => "invalid_lun",
            Self::UnsafeValue { .. } => "unsafe_value",
            Self::InvalidMount(_) => "invalid_mount",
            Self::InvalidVolumeId { .. } => "invalid_volume_id",
        }
    }
}

/// Longest volume id, in characters.
pub const MAX_VOLUME_ID: usize = 255;

/// A volume id names a volume in logs, reports and `tether ctl`: 1 to 255 letters, digits and
/// `. _ : @ + -`, starting with a letter or digit. Cinder's ids (UUIDs) and hand-written ids
/// such as `vol-data` fit.
pub fn check_volume_id(value: &str) -> Result<(), TargetError> {
    let invalid = |reason| TargetError::InvalidVolumeId {
        value: printable(value),
        reason,
    };
    if value.is_empty() || value.chars().count() > MAX_VOLUME_ID {
        return Err(invalid("it is empty or too long"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._:@+-".contains(c))
    {
        return Err(invalid("it holds a character that is not allowed"));
    }
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(invalid("it does not start with a letter or digit"));
    }
    Ok(())
}

/// Validates a target. Secrets are moved into [`Secret`]s and never appear in an error.
/// Checks a target's `extra.mount` alone (as `parse` would), before any target exists.
pub fn check_mount(value: &Value) -> Result<(), TargetError> {
    parse_mount(value).map(|_| ())
}

pub fn parse(target: &VolumeTarget) -> Result<TargetSpec, TargetError> {
    check_volume_id(&target.volume_id)?;
    let props = &target.properties;
    let backend = match VolumeType::parse(&target.volume_type) {
        Some(VolumeType::Iscsi) => BackendSpec::Iscsi(parse_iscsi(props)?),
        Some(VolumeType::Rbd) => BackendSpec::Rbd(parse_rbd(props)?),
        Some(VolumeType::Nvmeof) => BackendSpec::Nvmeof(nvmeof::parse_nvmeof(props)?),
        None => {
            return Err(TargetError::UnknownVolumeType(printable(
                &target.volume_type,
            )));
        }
    };
    let read_only = match opt_str(props, "access_mode")? {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(other) => {
            return Err(TargetError::InvalidProperty {
                key: "access_mode",
                reason: format!("{:?} is neither \"rw\" nor \"ro\"", printable(other)),
            });
        }
    };
    let mount = match target.extra.get("mount") {
        None | Some(Value::Null) => None,
        Some(value) => Some(parse_mount(value)?),
    };
    Ok(TargetSpec {
        uuid: target.uuid,
        volume_id: target.volume_id.clone(),
        backend,
        read_only,
        mount,
        size_bytes: target.size_bytes,
    })
}

fn parse_iscsi(props: &Map<String, Value>) -> Result<IscsiSpec, TargetError> {
    let paths = if props.contains_key("target_portals") {
        let portals = str_list(props, "target_portals")?;
        let iqns = str_list(props, "target_iqns")?;
        let luns = lun_list(props, "target_luns")?;
        if portals.len() != iqns.len() || portals.len() != luns.len() || portals.is_empty() {
            return Err(TargetError::InvalidProperty {
                key: "target_portals",
                reason: format!(
                    "target_portals, target_iqns and target_luns must be non-empty \
                     and of equal length (got {}, {}, {})",
                    portals.len(),
                    iqns.len(),
                    luns.len()
                ),
            });
        }
        let mut paths = Vec::new();
        for ((portal, iqn), lun) in portals.iter().zip(&iqns).zip(luns) {
            paths.push(IscsiPath {
                portal: parse_portal(portal)?,
                iqn: parse_iqn(iqn)?,
                lun,
            });
        }
        paths
    } else {
        vec![IscsiPath {
            portal: parse_portal(req_str(props, "target_portal")?)?,
            iqn: parse_iqn(req_str(props, "target_iqn")?)?,
            lun: parse_lun(
                props
                    .get("target_lun")
                    .ok_or(TargetError::MissingProperty("target_lun"))?,
            )?,
        }]
    };
    let chap = parse_chap(
        props,
        "auth_method",
        "auth_username",
        "auth_password",
        ("auth_username_in", "auth_password_in"),
    )?;
    let discovery_chap = parse_chap(
        props,
        "discovery_auth_method",
        "discovery_auth_username",
        "discovery_auth_password",
        ("discovery_auth_username_in", "discovery_auth_password_in"),
    )?;
    let discovery = match opt_str(props, "discovery")? {
        None => false,
        Some("sendtargets") => true,
        Some(other) => {
            return Err(TargetError::InvalidProperty {
                key: "discovery",
                reason: format!("{:?} is not \"sendtargets\"", printable(other)),
            });
        }
    };
    Ok(IscsiSpec {
        paths,
        chap,
        discovery,
        discovery_chap,
    })
}

fn parse_chap(
    props: &Map<String, Value>,
    method_key: &'static str,
    user_key: &'static str,
    password_key: &'static str,
    mutual_keys: (&'static str, &'static str),
) -> Result<Option<Chap>, TargetError> {
    match opt_str(props, method_key)? {
        None => return Ok(None),
        Some(m) if m.eq_ignore_ascii_case("none") => return Ok(None),
        Some(m) if m.eq_ignore_ascii_case("chap") => {}
        Some(other) => {
            return Err(TargetError::InvalidProperty {
                key: method_key,
                reason: format!("{:?} is not \"CHAP\" or \"None\"", printable(other)),
            });
        }
    }
    let username = credential_name(props, user_key)?;
    let password = credential_secret(props, password_key)?;
    let (mutual_user_key, mutual_password_key) = mutual_keys;
    let mutual = if props.contains_key(mutual_user_key) {
        Some((
            credential_name(props, mutual_user_key)?,
            credential_secret(props, mutual_password_key)?,
        ))
    } else {
        None
    };
    Ok(Some(Chap {
        username,
        password,
        mutual,
    }))
}

fn credential_name(props: &Map<String, Value>, key: &'static str) -> Result<String, TargetError> {
    let value = req_str(props, key)?;
    restricted_name(
        key,
        value,
        255,
        "._-:@",
        "only letters, digits and . _ - : @ are allowed",
    )?;
    Ok(value.to_string())
}

/// `value` has 1 to `max` characters, each a letter, a digit or one of `punctuation`.
fn restricted_name(
    key: &'static str,
    value: &str,
    max: usize,
    punctuation: &str,
    unsafe_reason: &'static str,
) -> Result<(), TargetError> {
    if value.is_empty() || value.len() > max {
        return Err(TargetError::InvalidProperty {
            key,
            reason: format!("must be 1 to {max} characters"),
        });
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || punctuation.contains(c))
    {
        return Err(TargetError::UnsafeValue {
            key,
            reason: unsafe_reason,
        });
    }
    Ok(())
}

fn credential_secret(props: &Map<String, Value>, key: &'static str) -> Result<Secret, TargetError> {
    // Never echo the value: only its shape is described.
    let value = req_str(props, key)?;
    if value.is_empty() || value.len() > 255 {
        return Err(TargetError::InvalidProperty {
            key,
            reason: "must be 1 to 255 characters".into(),
        });
    }
    if !value.chars().all(|c| c.is_ascii_graphic()) {
        return Err(TargetError::UnsafeValue {
            key,
            reason: "only printable ASCII without spaces is allowed",
        });
    }
    Ok(Secret::new(value))
}

pub fn parse_iqn(value: &str) -> Result<String, TargetError> {
    let invalid = |reason| TargetError::InvalidIqn {
        value: printable(value),
        reason,
    };
    if value.is_empty() || value.len() > MAX_ISCSI_NAME {
        return Err(invalid("must be 1 to 223 characters"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
    {
        return Err(invalid(
            "only letters, digits, '-', '.' and ':' are allowed",
        ));
    }
    let lower = value.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("iqn.") {
        let bytes = rest.as_bytes();
        let date_ok = bytes.len() > 8
            && bytes[..4].iter().all(u8::is_ascii_digit)
            && bytes[4] == b'-'
            && bytes[5..7].iter().all(u8::is_ascii_digit)
            && bytes[7] == b'.';
        if !date_ok {
            return Err(invalid("an iqn name starts with iqn.YYYY-MM. and a domain"));
        }
        let authority = rest[8..].split(':').next().unwrap_or_default();
        if authority.is_empty() || authority.starts_with('.') || authority.ends_with('.') {
            return Err(invalid(
                "the naming authority (reversed domain) is empty or malformed",
            ));
        }
        Ok(lower)
    } else if let Some(hex) = lower.strip_prefix("eui.") {
        if hex.len() == 16 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(lower)
        } else {
            Err(invalid("an eui name has exactly 16 hex digits"))
        }
    } else if let Some(hex) = lower.strip_prefix("naa.") {
        if (hex.len() == 16 || hex.len() == 32) && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(lower)
        } else {
            Err(invalid("a naa name has 16 or 32 hex digits"))
        }
    } else {
        Err(invalid("it must start with iqn., eui. or naa."))
    }
}

pub fn parse_portal(value: &str) -> Result<Portal, TargetError> {
    let invalid = |reason| TargetError::InvalidPortal {
        value: printable(value),
        reason,
    };
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| invalid("unclosed '['"))?;
        host.parse::<Ipv6Addr>()
            .map_err(|_| invalid("the bracketed host is not an IPv6 address"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| invalid("it has no port"))?;
        (host.to_string(), port)
    } else {
        let (host, port) = value
            .rsplit_once(':')
            .ok_or_else(|| invalid("it has no port"))?;
        if host.contains(':') {
            return Err(invalid("IPv6 hosts must be written in brackets"));
        }
        let is_ipv4 = host.parse::<Ipv4Addr>().is_ok();
        if !is_ipv4 && !is_dns_name(host) {
            return Err(invalid(
                "the host is neither an IPv4 address nor a DNS name",
            ));
        }
        (host.to_string(), port)
    };
    // A trailing ",tpgt" is how iscsiadm prints portals; Cinder does not send it.
    let port: u16 = port
        .parse()
        .map_err(|_| invalid("the port is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(invalid("the port is not a number from 1 to 65535"));
    }
    Ok(Portal { host, port })
}

/// A DNS name: dot-separated labels of 1 to 63 letters, digits and '-', none starting or
/// ending with '-' (so no host can read as a command-line option), 253 characters at most.
fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn parse_lun(value: &Value) -> Result<u16, TargetError> {
    match value.as_u64() {
        Some(lun) if lun <= MAX_LUN => Ok(lun as u16),
        _ => Err(TargetError::InvalidLun {
            value: printable(&value.to_string()),
        }),
    }
}

fn parse_rbd(props: &Map<String, Value>) -> Result<RbdSpec, TargetError> {
    let name = req_str(props, "name")?;
    let parts: Vec<&str> = name.split('/').collect();
    let (pool, namespace, image) = match parts.as_slice() {
        [pool, image] => (*pool, None, *image),
        [pool, ns, image] => (*pool, Some(*ns), *image),
        _ => {
            return Err(TargetError::InvalidProperty {
                key: "name",
                reason: format!(
                    "{:?} is not pool/image or pool/namespace/image",
                    printable(name)
                ),
            });
        }
    };
    for part in [Some(pool), namespace, Some(image)].into_iter().flatten() {
        ceph_name("name", part)?;
    }
    let hosts = str_list(props, "hosts")?;
    let ports = match props.get("ports") {
        None => vec!["6789".to_string(); hosts.len()],
        Some(_) => port_list(props, "ports")?,
    };
    if hosts.is_empty() || hosts.len() != ports.len() {
        return Err(TargetError::InvalidProperty {
            key: "hosts",
            reason: "hosts must be non-empty and as long as ports".into(),
        });
    }
    let mut monitors = Vec::new();
    for (host, port) in hosts.iter().zip(&ports) {
        let portal = parse_portal(&format!(
            "{}:{port}",
            if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host.clone()
            }
        ))
        .map_err(|_| TargetError::InvalidProperty {
            key: "hosts",
            reason: format!(
                "{:?}:{:?} is not a monitor address (an IP address or a DNS name, \
                 and a port from 1 to 65535)",
                printable(host),
                printable(port)
            ),
        })?;
        monitors.push(Monitor {
            host: portal.host,
            port: portal.port,
        });
    }
    let cluster = opt_str(props, "cluster_name")?.unwrap_or("ceph");
    ceph_name("cluster_name", cluster)?;
    let user = opt_str(props, "auth_username")?.unwrap_or("admin");
    ceph_name("auth_username", user)?;
    let auth_enabled = match props.get("auth_enabled") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(TargetError::InvalidProperty {
                key: "auth_enabled",
                reason: "must be true or false".into(),
            });
        }
    };
    let key = if auth_enabled {
        Some(cephx_key(props, "auth_key")?)
    } else {
        None
    };
    Ok(RbdSpec {
        pool: pool.to_string(),
        namespace: namespace.map(str::to_string),
        image: image.to_string(),
        monitors,
        cluster: cluster.to_string(),
        user: user.to_string(),
        key,
    })
}

/// Longest pool, namespace, image, user or cluster name: one path component, as udev makes
/// `/dev/rbd/<pool>/<image>` of them.
const MAX_CEPH_NAME: usize = 255;

/// A pool, namespace, image, cephx user (the id after `client.`) or cluster name. These go on
/// the rbd command line, into the kernel's comma-separated option string and into udev's
/// paths, so they hold only letters, digits and `. _ -`, never start with `-` (an option to
/// the CLI) and are not `.` or `..` (a path).
fn ceph_name(key: &'static str, value: &str) -> Result<(), TargetError> {
    restricted_name(
        key,
        value,
        MAX_CEPH_NAME,
        "._-",
        "Ceph names may hold only letters, digits and . _ -",
    )?;
    if value.starts_with('-') || value == "." || value == ".." {
        return Err(TargetError::UnsafeValue {
            key,
            reason: "a Ceph name may not start with '-' or be '.' or '..'",
        });
    }
    Ok(())
}

/// A cephx key encodes a 2-byte type (1: AES), an 8-byte creation time, a 2-byte length (16)
/// and the 16-byte AES key, little endian: 28 bytes, which base64 writes in 40 characters.
const CEPHX_KEY_BYTES: usize = 28;
const CEPHX_KEY_CHARS: usize = 40;

/// The cephx key as `ceph auth get-key` prints it. Never echoed: errors describe its shape.
fn cephx_key(props: &Map<String, Value>, key: &'static str) -> Result<Secret, TargetError> {
    use base64::Engine;
    let value = req_str(props, key)?;
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
    {
        return Err(TargetError::UnsafeValue {
            key,
            reason: "a cephx key holds only the base64 characters A-Z a-z 0-9 + / =",
        });
    }
    let decoded = if value.len() == CEPHX_KEY_CHARS {
        base64::engine::general_purpose::STANDARD.decode(value).ok()
    } else {
        None
    };
    let valid = decoded.is_some_and(|bytes| {
        bytes.len() == CEPHX_KEY_BYTES && bytes[0..2] == [1, 0] && bytes[10..12] == [16, 0]
    });
    if !valid {
        return Err(TargetError::InvalidProperty {
            key,
            reason: format!(
                "it is not a cephx key (base64 of {CEPHX_KEY_BYTES} bytes, \
                 {CEPHX_KEY_CHARS} characters, holding a 16-byte AES key); \
                 copy it from `ceph auth get-key client.<user>`"
            ),
        });
    }
    Ok(Secret::new(value))
}

// ---- small readers ----

fn req_str<'a>(props: &'a Map<String, Value>, key: &'static str) -> Result<&'a str, TargetError> {
    opt_str(props, key)?.ok_or(TargetError::MissingProperty(key))
}

fn opt_str<'a>(
    props: &'a Map<String, Value>,
    key: &'static str,
) -> Result<Option<&'a str>, TargetError> {
    match props.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(TargetError::InvalidProperty {
            key,
            reason: "must be a string".into(),
        }),
    }
}

fn str_list(props: &Map<String, Value>, key: &'static str) -> Result<Vec<String>, TargetError> {
    let list = props
        .get(key)
        .ok_or(TargetError::MissingProperty(key))?
        .as_array()
        .ok_or_else(|| TargetError::InvalidProperty {
            key,
            reason: "must be a list of strings".into(),
        })?;
    list.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| TargetError::InvalidProperty {
                    key,
                    reason: "must be a list of strings".into(),
                })
        })
        .collect()
}

fn port_list(props: &Map<String, Value>, key: &'static str) -> Result<Vec<String>, TargetError> {
    let invalid = || TargetError::InvalidProperty {
        key,
        reason: "must be a list of port numbers".into(),
    };
    let list = props
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(invalid)?;
    list.iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(invalid()),
        })
        .collect()
}

fn lun_list(props: &Map<String, Value>, key: &'static str) -> Result<Vec<u16>, TargetError> {
    let list = props
        .get(key)
        .ok_or(TargetError::MissingProperty(key))?
        .as_array()
        .ok_or_else(|| TargetError::InvalidProperty {
            key,
            reason: "must be a list of LUN numbers".into(),
        })?;
    list.iter().map(parse_lun).collect()
}

/// Caps a value before it goes into an error message (which escapes it with `{:?}`).
fn printable(value: &str) -> String {
    let mut out: String = value.chars().take(80).collect();
    if value.chars().count() > 80 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests;
