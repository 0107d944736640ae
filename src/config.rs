//! Configuration: TOML fragments merged over built-in defaults.
//!
//! Fragments are read in order, later keys winning: `/usr/lib/tether/config.d/*.toml`,
//! `/etc/tether/tether.toml`, `/etc/tether/config.d/*.toml` (each directory sorted by name).
//! Every fragment is checked on its own first, so an unknown key or a bad value is reported with
//! the file and line it is on. The kernel command line's `tether.*` keys ([`cmdline`]) apply
//! over the fragments, and the command's own flags over both.

pub mod cmdline;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use uuid::Uuid;

use crate::protocol::Secret;
use crate::protocol::target::mount::{DEFAULT_MOUNT_PREFIXES, SYSTEM_TREES, normal_path};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:6387";

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub agent: AgentConfig,
    pub conductor: ConductorConfig,
    /// Cinder volumes attached through the conductor (docs/openstack.md); unset, none.
    pub cinder: Option<CinderConfig>,
    /// Nodes taken from Ironic (docs/openstack.md); unset, nodes are enrolled by hand only.
    pub ironic: Option<IronicConfig>,
}

/// `[ironic]`: where Ironic is, how to authenticate, how often to sync.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IronicConfig {
    /// `cloud` (Keystone through clouds.yaml, the default) or `noauth` (metal3, standalone).
    #[serde(default)]
    pub auth: crate::openstack::AuthKind,
    /// The cloud's name in clouds.yaml; unset, `$OS_CLOUD`.
    #[serde(default)]
    pub cloud: Option<String>,
    /// noauth: Ironic's endpoint (`http://host:6385`). With a cloud: overrides the catalog.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Seconds between two sync passes (a failed pass is tried again sooner, every 10 s at
    /// most).
    #[serde(default = "default_ironic_sync_interval_s")]
    pub sync_interval_s: u64,
    /// Longest a call to Ironic may take.
    #[serde(default = "default_ironic_timeout_s")]
    pub timeout_s: u64,
    /// Nodes and ports asked for per request (Ironic caps it at its `[api] max_limit`, 1,000
    /// by default).
    #[serde(default = "default_ironic_page_size")]
    pub page_size: usize,
    /// Publish the initiators (iqn, nqn) agents report as Ironic volume connectors.
    #[serde(default = "default_true")]
    pub publish_connectors: bool,
}

fn default_ironic_sync_interval_s() -> u64 {
    60
}

fn default_ironic_timeout_s() -> u64 {
    30
}

fn default_ironic_page_size() -> usize {
    crate::openstack::ironic::PAGE
}

fn default_true() -> bool {
    true
}

impl IronicConfig {
    pub fn source(&self) -> crate::openstack::CloudSource {
        crate::openstack::CloudSource {
            auth: self.auth.clone(),
            cloud: self.cloud.clone(),
            endpoint: self.endpoint.clone(),
            project_id: None,
        }
    }
}

/// `[cinder]`: where Cinder is, how to authenticate, and the cephx keys it does not send.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CinderConfig {
    /// `cloud` (Keystone through clouds.yaml, the default) or `noauth`.
    #[serde(default)]
    pub auth: crate::openstack::AuthKind,
    /// The cloud's name in clouds.yaml; unset, `$OS_CLOUD`.
    #[serde(default)]
    pub cloud: Option<String>,
    /// noauth: Cinder's versioned endpoint (`http://host:8776/v3`). With a cloud: overrides the
    /// catalog.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// noauth: the project to act in (32 hex digits for Cinder's noauth).
    #[serde(default)]
    pub project_id: Option<String>,
    /// Cinder's type in the service catalog (`volumev3` on some older clouds).
    #[serde(default = "default_cinder_service_type")]
    pub service_type: String,
    /// Sent in the connector: Cinder then exports every path of a multipath backend.
    #[serde(default)]
    pub multipath: bool,
    /// Longest a call to Cinder may take (an LVM attachment takes a minute on a slow host).
    #[serde(default = "default_cinder_timeout_s")]
    pub timeout_s: u64,
    #[serde(default)]
    pub ceph_keys: Vec<crate::openstack::connection::CephKey>,
}

fn default_cinder_service_type() -> String {
    "block-storage".into()
}

fn default_cinder_timeout_s() -> u64 {
    300
}

impl CinderConfig {
    pub fn source(&self) -> crate::openstack::CloudSource {
        crate::openstack::CloudSource {
            auth: self.auth.clone(),
            cloud: self.cloud.clone(),
            endpoint: self.endpoint.clone(),
            project_id: self.project_id.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// The host's open-iscsi, rbd, udev and mount.
    System,
    /// An in-memory kernel: for demos, benchmarks and tests. Attaches nothing real.
    Simulated,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Base URLs of the conductors, tried in this order: `conductor_url = "https://a:6387"` or
    /// `conductor_url = ["https://a:6387", "https://b:6387"]`. A host name that resolves to
    /// several addresses counts as several conductors (docs/operations.md, "Several
    /// conductors").
    #[serde(rename = "conductor_url", deserialize_with = "one_or_many")]
    pub conductor_urls: Vec<String>,
    /// PEM file of the CA that signed the conductor's certificate. Unset, the system's roots.
    pub conductor_ca_file: Option<PathBuf>,
    /// Allow `http://` to a conductor that is not on loopback: tokens and every volume's
    /// secrets then cross the network in clear, and the agent says so at every start.
    pub allow_insecure_http: bool,
    /// Look the node up by this uuid as well as by its MAC addresses.
    pub node_uuid: Option<Uuid>,
    /// A token provisioned out of band. Prefer `token_file`: this file may be world-readable.
    pub token: Option<String>,
    /// File holding a provisioned token (mode 0600).
    pub token_file: Option<PathBuf>,
    /// Where the agent keeps its token, ownership record and last report.
    pub state_dir: PathBuf,
    /// Root under which host paths (/sys, /etc/iscsi, /dev) are resolved.
    pub host_root: PathBuf,
    pub backend: BackendKind,
    /// Serve Prometheus metrics on this loopback address; off when unset.
    pub metrics_listen: Option<crate::metrics::LoopbackAddr>,
    /// Overrides the interval the conductor asks for.
    #[serde(rename = "heartbeat_interval_s", with = "seconds::optional")]
    pub heartbeat_interval: Option<Duration>,
    /// How long one long-poll of the targets waits at the conductor.
    #[serde(rename = "poll_wait_s", with = "seconds")]
    pub poll_wait: Duration,
    /// The agent tells systemd it is ready once its first assignment is applied, or after this
    /// long without one (the conductor unreachable at boot), so that boot goes on; the volumes
    /// attach when the conductor answers.
    #[serde(rename = "ready_timeout_s", with = "seconds")]
    pub ready_timeout: Duration,
    /// How long to wait for a block device after login or map.
    #[serde(rename = "device_timeout_s", with = "seconds")]
    pub device_timeout: Duration,
    /// First and longest delay between retries of a failed volume.
    #[serde(rename = "retry_initial_s", with = "seconds")]
    pub retry_initial: Duration,
    #[serde(rename = "retry_max_s", with = "seconds")]
    pub retry_max: Duration,
    /// Mount points only below these directories, never one of them (docs/operations.md).
    pub mount_prefixes: Vec<PathBuf>,
    /// Let targets ask for `suid` and `dev`, and stop adding `nosuid,nodev` to every mount.
    pub mount_allow_suid_dev: bool,
    /// Keep each owned volume's target, secrets included, in a root-only cache in the state
    /// directory, and attach those volumes again at start (after a reboot) before the
    /// conductor answers. Off: no secret is kept beyond open-iscsi's node records, and
    /// volumes attach once the conductor answers.
    pub offline_reattach: bool,
}

impl AgentConfig {
    /// The provisioned token, from `token` or read from `token_file`.
    pub fn provisioned_token(&self) -> anyhow::Result<Option<Secret>> {
        use anyhow::Context;
        Ok(match (&self.token, &self.token_file) {
            (Some(t), _) => Some(Secret::new(t.clone())),
            (None, Some(path)) => Some(Secret::new(
                crate::fsutil::read_trimmed(path)
                    .with_context(|| format!("reading agent.token_file {}", path.display()))?,
            )),
            (None, None) => None,
        })
    }
}

/// One string or a list of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(one)) => Ok(vec![one]),
        Ok(OneOrMany::Many(many)) => Ok(many),
        Err(_) => Err(serde::de::Error::custom(
            "expected a URL or a list of URLs (\"https://a:6387\" or [\"https://a:6387\", ...])",
        )),
    }
}

/// Durations written as whole seconds, the unit of every `_s` key.
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }

    pub mod optional {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Ok(Option::<u64>::deserialize(d)?.map(Duration::from_secs))
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            conductor_urls: vec![format!("http://{DEFAULT_LISTEN}")],
            conductor_ca_file: None,
            allow_insecure_http: false,
            node_uuid: None,
            token: None,
            token_file: None,
            state_dir: PathBuf::from("/var/lib/tether"),
            host_root: PathBuf::from("/"),
            backend: BackendKind::System,
            metrics_listen: None,
            heartbeat_interval: None,
            poll_wait: Duration::from_secs(55),
            ready_timeout: Duration::from_secs(90),
            device_timeout: Duration::from_secs(60),
            retry_initial: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
            mount_prefixes: DEFAULT_MOUNT_PREFIXES.iter().map(PathBuf::from).collect(),
            mount_allow_suid_dev: false,
            offline_reattach: true,
        }
    }
}

/// Each of `agent.mount_prefixes` is a normal absolute path outside the system trees.
fn check_mount_prefixes(prefixes: &[PathBuf]) -> Result<(), String> {
    for prefix in prefixes {
        let text = prefix.to_str().unwrap_or_default();
        let normal = normal_path(text).map_err(|e| format!("agent.mount_prefixes: {e}"))?;
        if let Some(tree) = SYSTEM_TREES.iter().find(|t| normal.starts_with(t)) {
            return Err(format!(
                "agent.mount_prefixes: {text:?} is in the system directory {tree}, where the \
                 agent never mounts"
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ConductorConfig {
    pub listen: String,
    /// SQLite database file (relative paths are relative to the working directory), or a
    /// `postgres://user@host/db` URL: several conductors may share one PostgreSQL database.
    pub database: PathBuf,
    /// File (mode 0600) holding the PostgreSQL password, kept out of the URL and this file.
    pub database_password_file: Option<PathBuf>,
    /// File holding the admin token. Created (mode 0600) with a fresh token when missing and
    /// no token is given in `TETHER_ADMIN_TOKEN`.
    pub admin_token_file: PathBuf,
    /// Interval agents are told to heartbeat at.
    pub heartbeat_interval_s: u64,
    /// Longest a targets long-poll may wait.
    pub max_wait_s: u64,
    /// Refuse targets whose properties the agent would reject. Turn off only when the
    /// conductor mirrors targets from another source that must be stored as they are.
    pub validate_targets: bool,
    /// File holding a token that `GET /metrics` then requires; unset, metrics need none.
    pub metrics_token_file: Option<PathBuf>,
    /// PEM files of the certificate chain and its key: set both to serve HTTPS. Either file
    /// changed on disk is served within seconds, without a restart.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Longest a client may take for the TLS handshake, for a request's headers, and before
    /// the next request on an idle keep-alive connection.
    pub header_timeout_s: u64,
    /// Most connections open at once, in all and from one client address.
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    /// How long a stopping conductor waits for running requests.
    pub shutdown_timeout_s: u64,
    /// Per client address (IPv6: per /64), lookups and failed authentications allowed at once,
    /// then so many a minute; beyond, `429`. `rate_limit_per_minute = 0` turns it off.
    pub rate_limit_burst: u32,
    pub rate_limit_per_minute: u32,
}

impl Default for ConductorConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_string(),
            database: PathBuf::from("tether.db"),
            database_password_file: None,
            admin_token_file: PathBuf::from("tether-admin.token"),
            heartbeat_interval_s: 30,
            max_wait_s: 120,
            validate_targets: true,
            metrics_token_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            header_timeout_s: 10,
            max_connections: 32_768,
            max_connections_per_address: 256,
            shutdown_timeout_s: 10,
            rate_limit_burst: 20,
            rate_limit_per_minute: 12,
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// toml's message names the key, the line and the column.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// An unknown `tether.*` key or a bad value on the kernel command line. Never holds a token.
    #[error("{path}: {key}: {reason}")]
    Cmdline {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

impl ConfigError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Read { .. } => "config_unreadable",
            Self::Parse { .. } => "config_invalid",
            Self::Invalid { .. } => "config_invalid",
            Self::Cmdline { .. } => "cmdline_invalid",
        }
    }
}

/// The fragment files that exist, in the order they apply.
pub fn default_fragments(etc: &Path, usr_lib: &Path) -> Vec<PathBuf> {
    let mut files = sorted_toml(&usr_lib.join("config.d"));
    let main = etc.join("tether.toml");
    if main.exists() {
        files.push(main);
    }
    files.extend(sorted_toml(&etc.join("config.d")));
    files
}

fn sorted_toml(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

impl Config {
    /// Reads and merges the fragments. Each is validated alone so errors point at their line.
    pub fn load(files: &[PathBuf]) -> Result<Self, ConfigError> {
        Self::load_with_cmdline(files, &cmdline::CmdlineSettings::default())
    }

    /// The fragments, then the kernel command line's settings over them.
    pub fn load_with_cmdline(
        files: &[PathBuf],
        cmdline: &cmdline::CmdlineSettings,
    ) -> Result<Self, ConfigError> {
        let mut fragments = Vec::new();
        for path in files {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            fragments.push((path.clone(), text));
        }
        Self::from_fragments(&fragments, cmdline)
    }

    /// [`Config::load_with_cmdline`] of fragments already read: each text with its file.
    pub fn from_fragments(
        fragments: &[(PathBuf, String)],
        cmdline: &cmdline::CmdlineSettings,
    ) -> Result<Self, ConfigError> {
        let mut merged = toml::Table::new();
        // Which file set each `section.key` last, to name it when the merged value is refused.
        let mut set_by: std::collections::HashMap<String, PathBuf> = Default::default();
        for (path, text) in fragments {
            let fragment: toml::Table =
                toml::from_str(text).map_err(|e| parse_error(path, text, e))?;
            toml::from_str::<Config>(text).map_err(|e| parse_error(path, text, e))?;
            for (section, table) in &fragment {
                for key in table.as_table().into_iter().flat_map(|t| t.keys()) {
                    set_by.insert(format!("{section}.{key}"), path.clone());
                }
            }
            merge(&mut merged, fragment);
        }
        let mut config: Config =
            toml::Value::Table(merged)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: PathBuf::from("(merged configuration)"),
                    message: e.to_string(),
                })?;
        cmdline.apply(&mut config.agent);
        for name in cmdline.keys() {
            let key = cmdline::KEYS
                .iter()
                .find(|(k, _, _)| format!("tether.{k}") == name);
            if let Some((_, setting, _)) = key {
                set_by.insert(setting.to_string(), PathBuf::from("(kernel command line)"));
            }
        }
        config
            .validate()
            .map_err(|Refused { key, message }| ConfigError::Invalid {
                path: set_by
                    .get(key)
                    .cloned()
                    .unwrap_or_else(|| PathBuf::from("(defaults)")),
                message,
            })?;
        Ok(config)
    }

    /// Checks the merged values; a refusal names the key whose value is wrong.
    fn validate(&self) -> Result<(), Refused> {
        let a = &self.agent;
        let url = "agent.conductor_url";
        if a.conductor_urls.is_empty() {
            return Err(Refused::new(url, "agent.conductor_url names no conductor"));
        }
        for conductor in &a.conductor_urls {
            match conductor_transport(conductor).map_err(|e| Refused::new(url, e))? {
                Transport::Plain { loopback: false } if !a.allow_insecure_http => {
                    return Err(Refused::new(
                        url,
                        format!(
                            "agent.conductor_url {conductor:?} is plain http to another machine: \
                             tokens and volume secrets would cross the network in clear; use \
                             https:// (with agent.conductor_ca_file), or set \
                             agent.allow_insecure_http = true"
                        ),
                    ));
                }
                _ => {}
            }
        }
        if [a.poll_wait, a.device_timeout, a.retry_initial].contains(&Duration::ZERO) {
            return Err(Refused::new(
                "agent.poll_wait_s",
                "agent.poll_wait_s, device_timeout_s and retry_initial_s must be at least 1",
            ));
        }
        if a.retry_max < a.retry_initial {
            return Err(Refused::new(
                "agent.retry_max_s",
                "agent.retry_max_s must be at least agent.retry_initial_s",
            ));
        }
        if a.heartbeat_interval == Some(Duration::ZERO) || self.conductor.heartbeat_interval_s == 0
        {
            let key = match a.heartbeat_interval {
                Some(Duration::ZERO) => "agent.heartbeat_interval_s",
                _ => "conductor.heartbeat_interval_s",
            };
            return Err(Refused::new(key, "heartbeat_interval_s must be at least 1"));
        }
        if self.conductor.rate_limit_burst == 0 {
            return Err(Refused::new(
                "conductor.rate_limit_burst",
                "conductor.rate_limit_burst must be at least 1",
            ));
        }
        if a.token.is_some() && a.token_file.is_some() {
            return Err(Refused::new(
                "agent.token",
                "agent.token and agent.token_file are both set; keep one",
            ));
        }
        let c = &self.conductor;
        if c.tls_cert_file.is_some() != c.tls_key_file.is_some() {
            return Err(Refused::new(
                "conductor.tls_cert_file",
                "conductor.tls_cert_file and conductor.tls_key_file go together",
            ));
        }
        if c.header_timeout_s == 0 || c.max_connections == 0 || c.max_connections_per_address == 0 {
            return Err(Refused::new(
                "conductor.header_timeout_s",
                "conductor.header_timeout_s, max_connections and \
                 max_connections_per_address must be at least 1",
            ));
        }
        check_mount_prefixes(&a.mount_prefixes)
            .map_err(|e| Refused::new("agent.mount_prefixes", e))?;
        self.conductor
            .listen
            .parse::<std::net::SocketAddr>()
            .map_err(|_| {
                let listen = &self.conductor.listen;
                Refused::new(
                    "conductor.listen",
                    format!("conductor.listen {listen:?} is not an address:port"),
                )
            })?;
        Ok(())
    }
}

/// A merged value [`Config::validate`] refuses: its `section.key` and why.
struct Refused {
    key: &'static str,
    message: String,
}

impl Refused {
    fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }
}

/// How the agent reaches its conductor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tls,
    Plain { loopback: bool },
}

/// The transport a conductor URL names; an error for a URL that is neither http nor https.
pub fn conductor_transport(url: &str) -> Result<Transport, String> {
    let invalid = || format!("agent.conductor_url {url:?} must be an http:// or https:// URL");
    let parsed = reqwest::Url::parse(url).map_err(|_| invalid())?;
    match parsed.scheme() {
        "https" => Ok(Transport::Tls),
        "http" => {
            let host = parsed.host_str().unwrap_or_default();
            let ip = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = match ip.parse::<std::net::IpAddr>() {
                Ok(ip) => ip.is_loopback(),
                Err(_) => host.eq_ignore_ascii_case("localhost"),
            };
            Ok(Transport::Plain { loopback })
        }
        _ => Err(invalid()),
    }
}

/// Names the line, the column and what is wrong, but never quotes the file: the line may hold a
/// token, and toml's own message would print it.
fn parse_error(path: &Path, text: &str, e: toml::de::Error) -> ConfigError {
    let at = e.span().map_or(0, |span| span.start.min(text.len()));
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let line_text = text.lines().nth(line - 1).unwrap_or_default();
    let key = line_text.split('=').next().unwrap_or_default().trim();
    let what = if line_text.contains('=') && crate::protocol::secret::is_secret_property(key) {
        format!("the value of {key} is invalid (not shown: it is a secret)")
    } else {
        e.message().trim_end().to_string()
    };
    ConfigError::Parse {
        path: path.to_path_buf(),
        message: format!("line {line}, column {column}: {what}"),
    }
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(incoming)) => {
                merge(existing, incoming)
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn no_files_gives_defaults() {
        assert_eq!(Config::load(&[]).unwrap(), Config::default());
    }

    #[test]
    fn later_fragments_override_earlier_ones_key_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(
            dir.path(),
            "a.toml",
            "[agent]\nconductor_url = \"https://a:1\"\npoll_wait_s = 5\n",
        );
        let b = write(dir.path(), "b.toml", "[agent]\npoll_wait_s = 9\n");
        let c = Config::load(&[a, b]).unwrap();
        assert_eq!(c.agent.conductor_urls, ["https://a:1"]);
        assert_eq!(c.agent.poll_wait, Duration::from_secs(9));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let bad = write(
            dir.path(),
            "bad.toml",
            "[agent]\npoll_wait_s = 5\nconductor_uri = \"x\"\n",
        );
        let err = Config::load(&[bad]).unwrap_err().to_string();
        assert!(err.contains("conductor_uri"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("bad.toml"), "{err}");
    }

    #[test]
    fn wrong_type_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = write(dir.path(), "t.toml", "[conductor]\nmax_wait_s = \"long\"\n");
        assert!(
            Config::load(&[t])
                .unwrap_err()
                .to_string()
                .contains("line 2")
        );
        let v = write(
            dir.path(),
            "v.toml",
            "[agent]\nconductor_url = \"ftp://x\"\n",
        );
        assert_eq!(Config::load(&[v]).unwrap_err().kind(), "config_invalid");
    }

    #[test]
    fn metrics_listen_must_be_loopback_and_is_named_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let ok = write(
            dir.path(),
            "ok.toml",
            "[agent]\nmetrics_listen = \"[::1]:9587\"\n",
        );
        let c = Config::load(&[ok]).unwrap();
        assert_eq!(
            c.agent.metrics_listen.map(|a| a.to_string()).as_deref(),
            Some("[::1]:9587")
        );
        let bad = write(
            dir.path(),
            "bad.toml",
            "[agent]\npoll_wait_s = 5\nmetrics_listen = \"0.0.0.0:9587\"\n",
        );
        let err = Config::load(&[bad]).unwrap_err();
        assert_eq!(err.kind(), "config_invalid");
        let err = err.to_string();
        assert!(err.contains("bad.toml"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("not a loopback address"), "{err}");
    }

    #[test]
    fn plain_http_goes_only_to_loopback_unless_the_operator_allows_it() {
        let dir = tempfile::tempdir().unwrap();
        let load = |name: &str, text: &str| Config::load(&[write(dir.path(), name, text)]);
        for url in [
            "http://127.0.0.1:6387",
            "http://[::1]:6387",
            "http://localhost:6387",
            "https://conductor.example:6387",
            "https://192.0.2.1:6387",
        ] {
            let text = format!("[agent]\nconductor_url = \"{url}\"\n");
            assert!(load("ok.toml", &text).is_ok(), "{url}");
        }
        let remote = "[agent]\nconductor_url = \"http://192.0.2.1:6387\"\n";
        let err = load("remote.toml", remote).unwrap_err();
        assert_eq!(err.kind(), "config_invalid");
        assert!(err.to_string().contains("allow_insecure_http"), "{err}");
        let allowed = format!("{remote}allow_insecure_http = true\n");
        assert!(load("allowed.toml", &allowed).is_ok());
        let odd = "[agent]\nconductor_url = \"ftp://192.0.2.1\"\n";
        assert_eq!(load("odd.toml", odd).unwrap_err().kind(), "config_invalid");
        assert_eq!(
            conductor_transport("http://127.0.0.2:1"),
            Ok(Transport::Plain { loopback: true })
        );
        assert_eq!(conductor_transport("https://x"), Ok(Transport::Tls));
    }

    #[test]
    fn conductor_url_takes_one_url_or_a_list_each_under_the_same_rules() {
        let dir = tempfile::tempdir().unwrap();
        let load = |name: &str, text: &str| Config::load(&[write(dir.path(), name, text)]);
        let list = "[agent]\nconductor_url = [\"https://a:6387\", \"https://b.example:6387\"]\n";
        let c = load("list.toml", list).unwrap();
        assert_eq!(
            c.agent.conductor_urls,
            ["https://a:6387", "https://b.example:6387"]
        );
        let mixed = "[agent]\nconductor_url = [\"https://a:6387\", \"http://192.0.2.1:6387\"]\n";
        let err = load("mixed.toml", mixed).unwrap_err();
        assert!(err.to_string().contains("192.0.2.1"), "{err}");
        assert!(err.to_string().contains("mixed.toml"), "{err}");
        let empty = load("empty.toml", "[agent]\nconductor_url = []\n").unwrap_err();
        assert!(empty.to_string().contains("names no conductor"), "{empty}");
        let number = load("number.toml", "[agent]\nconductor_url = 3\n").unwrap_err();
        assert!(number.to_string().contains("list of URLs"), "{number}");
    }

    #[test]
    fn a_bad_line_is_named_but_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("garbage.toml", "[agent]\ntoken = \"tok-3f9a2c71\" x\n"),
            ("type.toml", "[agent]\ntoken = 73319\n"),
            (
                "other.toml",
                "[agent]\ntoken = \"tok-3f9a2c71\"\npoll_wait_s = \"x\"\n",
            ),
        ] {
            let err = Config::load(&[write(dir.path(), name, text)]).unwrap_err();
            let shown = err.to_string();
            assert!(
                !shown.contains("3f9a2c71") && !shown.contains("73319"),
                "{shown}"
            );
            assert!(shown.contains("line "), "{shown}");
        }
    }

    #[test]
    fn mount_prefixes_are_normal_paths_outside_the_system_trees() {
        let dir = tempfile::tempdir().unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tether.toml");
        let agent = Config::load(&[shipped]).unwrap().agent;
        assert_eq!(agent.mount_prefixes, AgentConfig::default().mount_prefixes);
        assert!(!agent.mount_allow_suid_dev);
        for good in ["\"/\"", "\"/var\", \"/data/volumes\", \"/srv/\""] {
            let file = write(
                dir.path(),
                "good.toml",
                &format!("[agent]\nmount_prefixes = [{good}]\n"),
            );
            Config::load(&[file]).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, why) in [
            ("\"/etc\"", "in the system directory /etc"),
            (
                "\"/var/lib/tether/m\"",
                "in the system directory /var/lib/tether",
            ),
            ("\"srv\"", "not absolute"),
            ("\"/srv/../etc\"", "a . or .. component"),
        ] {
            let file = write(
                dir.path(),
                "bad.toml",
                &format!("[agent]\nmount_prefixes = [{bad}]\n"),
            );
            let err = Config::load(&[file]).unwrap_err();
            assert_eq!(err.kind(), "config_invalid");
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_refused_value_names_the_file_that_set_it() {
        let dir = tempfile::tempdir().unwrap();
        let insecure = write(
            dir.path(),
            "insecure.toml",
            "[agent]\nconductor_url = \"http://192.0.2.1:6387\"\n",
        );
        let later = write(dir.path(), "later.toml", "[agent]\npoll_wait_s = 7\n");
        let err = Config::load(&[insecure, later]).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}:", dir.path().join("insecure.toml").display())),
            "{err}"
        );
        let from_cmdline = cmdline::parse("tether.conductor=http://192.0.2.9:1").unwrap();
        let err = Config::load_with_cmdline(&[], &from_cmdline)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("(kernel command line):"), "{err}");
    }

    #[test]
    fn the_conductors_tls_files_go_together() {
        let dir = tempfile::tempdir().unwrap();
        let half = write(
            dir.path(),
            "half.toml",
            "[conductor]\ntls_cert_file = \"/etc/tether/c.pem\"\n",
        );
        assert_eq!(Config::load(&[half]).unwrap_err().kind(), "config_invalid");
    }

    #[test]
    fn shipped_examples_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let files = sorted_toml(&root);
        assert!(!files.is_empty());
        for file in files {
            Config::load(std::slice::from_ref(&file)).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
