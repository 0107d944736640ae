//! Agent settings from the kernel command line, for deploy ramdisks that carry no
//! configuration file: `tether.conductor=URL tether.node=UUID tether.token_file=PATH`.
//!
//! Words are split the way the kernel splits them (`key="a b"`, `"key=a b"`, nothing after
//! `--`), and, as for kernel parameters, `-` and `_` are the same in a key. Words that do not
//! start with `tether.` are not ours and are ignored. An unknown `tether.` key or a bad value is
//! an error naming the key: a typo must not leave a node silently without its volumes.
//! `/proc/cmdline` is world-readable, so `tether.token` exposes the token to every user of the
//! machine; `tether.token_file` does not.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::{AgentConfig, ConfigError};
use crate::protocol::Secret;

pub const DEFAULT_PATH: &str = "/proc/cmdline";

/// Each key, the agent setting it sets, and what its value is (for errors and docs).
pub const KEYS: &[(&str, &str, &str)] = &[
    (
        "conductor",
        "agent.conductor_url",
        "an http:// or https:// URL, or several separated by commas",
    ),
    ("node", "agent.node_uuid", "the node's uuid"),
    ("token", "agent.token", "the agent token"),
    ("token_file", "agent.token_file", "an absolute path"),
    ("state_dir", "agent.state_dir", "an absolute path"),
    (
        "conductor_ca_file",
        "agent.conductor_ca_file",
        "an absolute path",
    ),
    (
        "allow_insecure_http",
        "agent.allow_insecure_http",
        "1 or 0 (plain http to a conductor that is not on loopback)",
    ),
    (
        "device_timeout_s",
        "agent.device_timeout_s",
        "a number of seconds, at least 1",
    ),
    (
        "offline_reattach",
        "agent.offline_reattach",
        "1 or 0 (attach owned volumes again at start before the conductor answers)",
    ),
];

/// The `tether.*` settings a command line gave, each already checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CmdlineSettings {
    pub conductor_urls: Option<Vec<String>>,
    pub node_uuid: Option<Uuid>,
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub conductor_ca_file: Option<PathBuf>,
    pub allow_insecure_http: Option<bool>,
    pub device_timeout_s: Option<u64>,
    pub offline_reattach: Option<bool>,
}

/// A bad `tether.*` word. `reason` never holds a token, nor the value of an unknown key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdlineError {
    pub key: String,
    pub reason: String,
}

impl CmdlineSettings {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The `tether.*` keys that are set, for `tether check-config`.
    pub fn keys(&self) -> Vec<String> {
        let set = [
            self.conductor_urls.is_some(),
            self.node_uuid.is_some(),
            self.token.is_some(),
            self.token_file.is_some(),
            self.state_dir.is_some(),
            self.conductor_ca_file.is_some(),
            self.allow_insecure_http.is_some(),
            self.device_timeout_s.is_some(),
            self.offline_reattach.is_some(),
        ];
        KEYS.iter()
            .zip(set)
            .filter(|(_, set)| *set)
            .map(|((key, _, _), _)| format!("tether.{key}"))
            .collect()
    }

    /// Sets what the command line gave over `agent` (the merged TOML). A token or token file
    /// given here replaces both of the TOML's, so that the two never conflict.
    pub fn apply(&self, agent: &mut AgentConfig) {
        if let Some(urls) = &self.conductor_urls {
            agent.conductor_urls = urls.clone();
        }
        if let Some(uuid) = self.node_uuid {
            agent.node_uuid = Some(uuid);
        }
        if self.token.is_some() || self.token_file.is_some() {
            agent.token = self.token.as_ref().map(|t| t.expose().to_string());
            agent.token_file = self.token_file.clone();
        }
        if let Some(dir) = &self.state_dir {
            agent.state_dir = dir.clone();
        }
        if let Some(file) = &self.conductor_ca_file {
            agent.conductor_ca_file = Some(file.clone());
        }
        if let Some(allow) = self.allow_insecure_http {
            agent.allow_insecure_http = allow;
        }
        if let Some(timeout) = self.device_timeout_s {
            agent.device_timeout = std::time::Duration::from_secs(timeout);
        }
        if let Some(reattach) = self.offline_reattach {
            agent.offline_reattach = reattach;
        }
    }
}

/// Reads the command line at `path`. A missing file is an error only if `required`: the
/// default, /proc/cmdline, is absent in some containers.
pub fn read(path: &Path, required: bool) -> Result<CmdlineSettings, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(CmdlineSettings::default());
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    parse(&text).map_err(|e| ConfigError::Cmdline {
        path: path.to_path_buf(),
        key: e.key,
        reason: e.reason,
    })
}

/// The `tether.*` settings of a command line; later words win, as for kernel parameters.
pub fn parse(text: &str) -> Result<CmdlineSettings, CmdlineError> {
    let mut settings = CmdlineSettings::default();
    for (param, value) in split(text) {
        let Some(key) = param.strip_prefix("tether.") else {
            continue;
        };
        let key = key.replace('-', "_");
        let shown = format!("tether.{key}");
        let Some(&(_, _, expected)) = KEYS.iter().find(|(k, _, _)| *k == key) else {
            let known: Vec<String> = KEYS.iter().map(|(k, _, _)| format!("tether.{k}")).collect();
            return Err(CmdlineError {
                key: shown,
                reason: format!("unknown key; the keys are {}", known.join(", ")),
            });
        };
        let bad = |reason: String| CmdlineError {
            key: shown.clone(),
            reason,
        };
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return Err(bad(format!("needs a value: {expected}")));
        };
        match key.as_str() {
            "conductor" => {
                // Commas separate conductors: a conductor's base URL has no use for one.
                let urls: Vec<String> = value.split(',').map(str::to_string).collect();
                if let Some(url) = urls
                    .iter()
                    .find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
                {
                    return Err(bad(format!("{url:?} is not {expected}")));
                }
                settings.conductor_urls = Some(urls);
            }
            "node" => {
                let uuid = Uuid::parse_str(value)
                    .map_err(|_| bad(format!("{value:?} is not {expected}")))?;
                settings.node_uuid = Some(uuid);
            }
            "token" => {
                settings.token = Some(Secret::new(value));
                settings.token_file = None;
            }
            "token_file" => {
                settings.token_file = Some(absolute(value).map_err(bad)?);
                settings.token = None;
            }
            "state_dir" => settings.state_dir = Some(absolute(value).map_err(bad)?),
            "conductor_ca_file" => {
                settings.conductor_ca_file = Some(absolute(value).map_err(bad)?);
            }
            "allow_insecure_http" | "offline_reattach" => {
                let on = match value {
                    "1" => true,
                    "0" => false,
                    _ => return Err(bad(format!("{value:?} is not {expected}"))),
                };
                match key.as_str() {
                    "allow_insecure_http" => settings.allow_insecure_http = Some(on),
                    _ => settings.offline_reattach = Some(on),
                }
            }
            "device_timeout_s" => {
                let seconds = value
                    .parse::<u64>()
                    .ok()
                    .filter(|s| *s >= 1)
                    .ok_or_else(|| bad(format!("{value:?} is not {expected}")))?;
                settings.device_timeout_s = Some(seconds);
            }
            _ => unreachable!("every key of KEYS is handled"),
        }
    }
    Ok(settings)
}

fn absolute(value: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(format!("{value:?} is not an absolute path"))
    }
}

/// Splits a command line into `(param, value)` pairs as the kernel's `next_arg` does:
/// whitespace separates words except inside double quotes; a quote opening the word or the
/// value is removed with the quote that ends the word; quotes elsewhere are kept; `--` ends the
/// kernel's parameters (what follows belongs to init).
pub fn split(text: &str) -> Vec<(&str, Option<&str>)> {
    let mut words = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        // Only ASCII bytes ('"', '=', whitespace) are cut at, so every slice is valid UTF-8.
        let b = rest.as_bytes();
        let quoted = b[0] == b'"';
        let start = usize::from(quoted);
        let mut in_quote = quoted;
        let mut equals = None;
        let mut end = start;
        while end < b.len() {
            let c = b[end];
            if c.is_ascii_whitespace() && !in_quote {
                break;
            }
            if c == b'=' && equals.is_none() {
                equals = Some(end);
            }
            if c == b'"' {
                in_quote = !in_quote;
            }
            end += 1;
        }
        let strip_last = |from: usize| end > from && b[end - 1] == b'"';
        let (param, value) = match equals {
            None => {
                let stop = if quoted && strip_last(start) {
                    end - 1
                } else {
                    end
                };
                (&rest[start..stop], None)
            }
            Some(eq) => {
                let mut from = eq + 1;
                let mut stop = end;
                if b.get(from) == Some(&b'"') {
                    from += 1;
                    if strip_last(from) {
                        stop -= 1;
                    }
                } else if quoted && strip_last(from) {
                    stop -= 1;
                }
                (&rest[start..eq], Some(&rest[from..stop]))
            }
        };
        if param == "--" && value.is_none() {
            break;
        }
        words.push((param, value));
        rest = rest[end..].trim_start();
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ramdisk_names_its_conductors_ca_and_may_allow_plain_http() {
        let s = parse(
            "tether.conductor=http://10.0.9.1:6387 tether.conductor-ca-file=/etc/tether/ca.pem \
             tether.allow_insecure_http=1",
        )
        .unwrap();
        assert_eq!(
            s.conductor_ca_file.as_deref(),
            Some(Path::new("/etc/tether/ca.pem"))
        );
        assert_eq!(s.allow_insecure_http, Some(true));
        let mut agent = AgentConfig::default();
        s.apply(&mut agent);
        assert!(agent.allow_insecure_http);
        assert_eq!(agent.conductor_ca_file, s.conductor_ca_file);
        let bad = parse("tether.allow_insecure_http=yes").unwrap_err();
        assert_eq!(bad.key, "tether.allow_insecure_http");
        assert!(agent.offline_reattach, "on by default");
        let off = parse("tether.offline-reattach=0").unwrap();
        assert_eq!(off.keys(), vec!["tether.offline_reattach"]);
        off.apply(&mut agent);
        assert!(!agent.offline_reattach);
        let bad = parse("tether.allow_insecure_http=yes").unwrap_err();
        assert_eq!(bad.key, "tether.allow_insecure_http");
        assert!(
            parse("tether.conductor_ca_file=ca.pem").is_err(),
            "relative path"
        );
    }

    #[test]
    fn split_follows_the_kernels_quoting() {
        assert_eq!(
            split("BOOT_IMAGE=/vmlinuz ro  quiet\tip=dhcp\n"),
            vec![
                ("BOOT_IMAGE", Some("/vmlinuz")),
                ("ro", None),
                ("quiet", None),
                ("ip", Some("dhcp")),
            ]
        );
        assert_eq!(
            split(r#"a="x y" "b=z w" "c" d=""#),
            vec![
                ("a", Some("x y")),
                ("b", Some("z w")),
                ("c", None),
                ("d", Some("")),
            ]
        );
        // Quotes inside a word are the kernel's to keep, and they still group words.
        assert_eq!(
            split(r#"e=1"2 3"4 f"#),
            vec![("e", Some(r#"1"2 3"4"#)), ("f", None)]
        );
        // An unterminated quote runs to the end, as in the kernel.
        assert_eq!(split(r#"g="h i"#), vec![("g", Some("h i"))]);
        assert_eq!(split("x=1 -- tether.node=not-ours"), vec![("x", Some("1"))]);
        assert_eq!(split("  \n"), vec![]);
        // Non-ASCII bytes are carried through whole.
        assert_eq!(split("é=ü ß"), vec![("é", Some("ü")), ("ß", None)]);
    }

    #[test]
    fn every_key_is_read_and_other_words_are_ignored() {
        let s = parse(
            "BOOT_IMAGE=/vmlinuz root=/dev/sda1 tetherx=1 rd.tether.node=x ipa-api-url=http://x \
             tether.conductor=https://c.example:6387 \
             tether.node=7e0a1c4e-0000-4000-8000-000000000001 \
             tether.token_file=/run/secrets/tether \
             tether.state_dir=\"/run/tether state\" tether.device_timeout_s=120\n",
        )
        .unwrap();
        assert_eq!(
            s.conductor_urls.as_deref(),
            Some(&["https://c.example:6387".to_string()][..])
        );
        assert_eq!(
            s.node_uuid,
            Some(Uuid::parse_str("7e0a1c4e-0000-4000-8000-000000000001").unwrap())
        );
        assert_eq!(s.token_file, Some(PathBuf::from("/run/secrets/tether")));
        assert_eq!(s.state_dir, Some(PathBuf::from("/run/tether state")));
        assert_eq!(s.device_timeout_s, Some(120));
        assert_eq!(s.token, None);
        assert_eq!(
            s.keys(),
            [
                "tether.conductor",
                "tether.node",
                "tether.token_file",
                "tether.state_dir",
                "tether.device_timeout_s"
            ]
        );
        assert!(parse("quiet splash").unwrap().is_empty());
    }

    #[test]
    fn later_words_win_and_dashes_are_underscores() {
        let s =
            parse("tether.conductor=http://a:1 tether.conductor=http://b:2 tether.state-dir=/x")
                .unwrap();
        assert_eq!(s.conductor_urls, Some(vec!["http://b:2".to_string()]));
        let several = parse("tether.conductor=https://a:1,https://b:2").unwrap();
        assert_eq!(
            several.conductor_urls,
            Some(vec!["https://a:1".to_string(), "https://b:2".to_string()])
        );
        let bad = parse("tether.conductor=https://a:1,b:2").unwrap_err();
        assert_eq!(bad.key, "tether.conductor");
        assert!(bad.reason.contains("\"b:2\""), "{}", bad.reason);
        assert!(
            parse("tether.conductor=https://a:1,").is_err(),
            "an empty URL"
        );
        assert_eq!(s.state_dir, Some(PathBuf::from("/x")));
        // token and token_file replace each other.
        let s = parse("tether.token=t1 tether.token_file=/f").unwrap();
        assert_eq!((s.token, s.token_file), (None, Some(PathBuf::from("/f"))));
        let s = parse("tether.token_file=/f tether.token=t2").unwrap();
        assert_eq!((s.token, s.token_file), (Some(Secret::new("t2")), None));
    }

    #[test]
    fn bad_words_name_the_key() {
        let cases = [
            ("tether.conductr=http://x", "tether.conductr", "unknown key"),
            ("tether.conductor=ftp://x", "tether.conductor", "ftp://x"),
            ("tether.node=compute-17", "tether.node", "uuid"),
            ("tether.node", "tether.node", "needs a value"),
            (
                "tether.state_dir=run/tether",
                "tether.state_dir",
                "absolute",
            ),
            (
                "tether.device_timeout_s=0",
                "tether.device_timeout_s",
                "at least 1",
            ),
            (
                "tether.device_timeout_s=1m",
                "tether.device_timeout_s",
                "seconds",
            ),
        ];
        for (line, key, reason) in cases {
            let e = parse(line).unwrap_err();
            assert_eq!(e.key, key, "{line}");
            assert!(e.reason.contains(reason), "{line}: {}", e.reason);
        }
    }

    #[test]
    fn tokens_never_appear_in_errors() {
        for line in [
            "tether.token= tether.conductor=http://x",
            "tether.tokn=s3cret-value",
            "tether.token=s3cret-value tether.bogus=s3cret-value",
        ] {
            let e = parse(line).unwrap_err();
            let shown = format!("{e:?} {}", e.reason);
            assert!(!shown.contains("s3cret"), "{line}: {shown}");
        }
        let s = parse("tether.token=s3cret-value").unwrap();
        assert!(!format!("{s:?}").contains("s3cret"));
        assert_eq!(s.token.unwrap().expose(), "s3cret-value");
    }

    #[test]
    fn the_command_line_applies_over_the_toml_key_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("tether.toml");
        std::fs::write(
            &toml,
            "[agent]\nconductor_url = \"https://toml:1\"\ntoken = \"from-toml\"\n\
             poll_wait_s = 7\nstate_dir = \"/var/lib/tether\"\n",
        )
        .unwrap();
        let files = [toml];
        let cmdline = parse(
            "tether.conductor=https://cmdline:2 tether.token_file=/run/t \
             tether.node=7e0a1c4e-0000-4000-8000-000000000001",
        )
        .unwrap();
        let c = crate::config::Config::load_with_cmdline(&files, &cmdline).unwrap();
        assert_eq!(c.agent.conductor_urls, ["https://cmdline:2"]);
        // The command line's token file replaces the TOML's token rather than conflicting.
        assert_eq!(c.agent.token, None);
        assert_eq!(c.agent.token_file, Some(PathBuf::from("/run/t")));
        assert!(c.agent.node_uuid.is_some());
        // What the command line does not name stays as the TOML set it.
        assert_eq!(c.agent.poll_wait, std::time::Duration::from_secs(7));
        assert_eq!(c.agent.state_dir, PathBuf::from("/var/lib/tether"));
        let none = crate::config::Config::load(&files).unwrap();
        assert_eq!(none.agent.conductor_urls, ["https://toml:1"]);
        assert_eq!(none.agent.token.as_deref(), Some("from-toml"));
    }

    #[test]
    fn a_missing_default_file_is_no_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("cmdline");
        assert!(read(&missing, false).unwrap().is_empty());
        let e = read(&missing, true).unwrap_err();
        assert_eq!(e.kind(), "config_unreadable");
        std::fs::write(&missing, "quiet tether.nod=1\n").unwrap();
        let e = read(&missing, false).unwrap_err();
        assert_eq!(e.kind(), "cmdline_invalid");
        let shown = e.to_string();
        assert!(
            shown.contains("cmdline") && shown.contains("tether.nod"),
            "{shown}"
        );
    }
}
