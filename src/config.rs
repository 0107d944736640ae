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
    /// Base URL of the conductor.
    pub conductor_url: String,
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
            conductor_url: format!("http://{DEFAULT_LISTEN}"),
            node_uuid: None,
            token: None,
            token_file: None,
            state_dir: PathBuf::from("/var/lib/tether"),
            host_root: PathBuf::from("/"),
            backend: BackendKind::System,
            metrics_listen: None,
            heartbeat_interval: None,
            poll_wait: Duration::from_secs(55),
            device_timeout: Duration::from_secs(60),
            retry_initial: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
            mount_prefixes: DEFAULT_MOUNT_PREFIXES.iter().map(PathBuf::from).collect(),
            mount_allow_suid_dev: false,
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
    /// SQLite database file; relative paths are relative to the working directory.
    pub database: PathBuf,
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
}

impl Default for ConductorConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_string(),
            database: PathBuf::from("tether.db"),
            admin_token_file: PathBuf::from("tether-admin.token"),
            heartbeat_interval_s: 30,
            max_wait_s: 120,
            validate_targets: true,
            metrics_token_file: None,
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
        let mut merged = toml::Table::new();
        for path in files {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let fragment: toml::Table = toml::from_str(&text).map_err(|e| parse_error(path, e))?;
            toml::from_str::<Config>(&text).map_err(|e| parse_error(path, e))?;
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
        config.validate().map_err(|message| ConfigError::Invalid {
            path: files
                .last()
                .cloned()
                .unwrap_or_else(|| PathBuf::from("(defaults)")),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let a = &self.agent;
        if !(a.conductor_url.starts_with("http://") || a.conductor_url.starts_with("https://")) {
            return Err(format!(
                "agent.conductor_url {:?} must start with http:// or https://",
                a.conductor_url
            ));
        }
        if [a.poll_wait, a.device_timeout, a.retry_initial].contains(&Duration::ZERO) {
            return Err(
                "agent.poll_wait_s, device_timeout_s and retry_initial_s must be at least 1".into(),
            );
        }
        if a.retry_max < a.retry_initial {
            return Err("agent.retry_max_s must be at least agent.retry_initial_s".into());
        }
        if a.heartbeat_interval == Some(Duration::ZERO) || self.conductor.heartbeat_interval_s == 0
        {
            return Err("heartbeat_interval_s must be at least 1".into());
        }
        if a.token.is_some() && a.token_file.is_some() {
            return Err("agent.token and agent.token_file are both set; keep one".into());
        }
        check_mount_prefixes(&a.mount_prefixes)?;
        self.conductor
            .listen
            .parse::<std::net::SocketAddr>()
            .map_err(|_| {
                format!(
                    "conductor.listen {:?} is not an address:port",
                    self.conductor.listen
                )
            })?;
        Ok(())
    }
}

fn parse_error(path: &Path, e: toml::de::Error) -> ConfigError {
    ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
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
            "[agent]\nconductor_url = \"http://a:1\"\npoll_wait_s = 5\n",
        );
        let b = write(dir.path(), "b.toml", "[agent]\npoll_wait_s = 9\n");
        let c = Config::load(&[a, b]).unwrap();
        assert_eq!(c.agent.conductor_url, "http://a:1");
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
    fn shipped_examples_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let files = sorted_toml(&root);
        assert!(!files.is_empty());
        for file in files {
            Config::load(std::slice::from_ref(&file)).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
