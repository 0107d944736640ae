//! Log events straight to journald when systemd runs tether with stderr connected to the
//! journal. Each entry's `MESSAGE` is the line `journalctl` shows (the message, then its
//! fields as `key=value`, as on stderr), and every field is also a journal field of its own
//! (`VOLUME_ID`, `TARGET_UUID`, `STATE`, `KIND`...), so `journalctl -o json` shows them and
//! `journalctl VOLUME_ID=vol-data` selects one volume's lines. The level is the `PRIORITY`.
//!
//! Entries go over journald's native datagram socket. One that cannot be sent (journald
//! stopped, an entry too large for a datagram) is written to stderr instead, which is the
//! journal stream: nothing is lost, only the separate fields.

use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

pub const SOCKET: &str = "/run/systemd/journal/socket";

/// True when stderr is the journal stream systemd set up for this process: `JOURNAL_STREAM`
/// holds that stream's `device:inode`, which a redirected stderr would not match.
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream.to_str() == Some(format!("{}:{}", stderr.dev(), stderr.ino()).as_str())
}

/// A `tracing` layer that sends each event to journald.
pub struct JournalLayer {
    socket: UnixDatagram,
    identifier: String,
}

impl JournalLayer {
    /// Connects to journald's socket at `path` (normally [`SOCKET`]).
    pub fn connect(path: &Path, identifier: &str) -> std::io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        Ok(Self {
            socket,
            identifier: identifier.to_string(),
        })
    }
}

impl<S: Subscriber> Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = *event.metadata().level();
        let entry = encode(level, &self.identifier, &fields);
        if self.socket.send(&entry).is_err() {
            eprintln!("{:>5} {}", level, fields.line());
        }
    }
}

/// An event's message and fields, in the order they were given.
#[derive(Debug, Default)]
pub struct Fields {
    message: String,
    /// (name, value as the journal field, value as shown in the line)
    others: Vec<(&'static str, String, String)>,
}

impl Fields {
    /// The line `journalctl` shows, formatted as the stderr output is.
    pub fn line(&self) -> String {
        let mut line = self.message.clone();
        for (name, _, shown) in &self.others {
            if !line.is_empty() {
                line.push(' ');
            }
            let _ = write!(line, "{name}={shown}");
        }
        line
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.others
                .push((field.name(), value.to_string(), format!("{value:?}")));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.others.push((field.name(), text.clone(), text));
        }
    }
}

/// syslog priorities, as journald's `PRIORITY` field takes them.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Fields journald or journalctl give a meaning of their own; ours never replace them.
const RESERVED: &[&str] = &[
    "MESSAGE",
    "MESSAGE_ID",
    "PRIORITY",
    "CODE_FILE",
    "CODE_LINE",
    "CODE_FUNC",
    "ERRNO",
    "INVOCATION_ID",
    "USER_INVOCATION_ID",
    "SYSLOG_FACILITY",
    "SYSLOG_IDENTIFIER",
    "SYSLOG_PID",
    "SYSLOG_TIMESTAMP",
    "SYSLOG_RAW",
    "DOCUMENTATION",
    "TID",
    "UNIT",
    "USER_UNIT",
];

/// A journal field name for a `tracing` field name: upper case letters, digits and `_`, not
/// starting with `_` or a digit, at most 64 bytes; reserved names get a `TETHER_` prefix.
pub fn field_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = out.trim_start_matches(|c: char| c == '_' || c.is_ascii_digit());
    out = trimmed.to_string();
    if out.is_empty() || RESERVED.contains(&out.as_str()) {
        out = format!("TETHER_{out}");
    }
    out.truncate(64);
    out
}

fn push_field(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    buf.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        // journald's binary form: the name, a newline, the length as a little-endian u64.
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

/// One journal entry in journald's native protocol.
pub fn encode(level: Level, identifier: &str, fields: &Fields) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    push_field(&mut buf, "MESSAGE", fields.line().as_bytes());
    push_field(&mut buf, "PRIORITY", priority(level).to_string().as_bytes());
    push_field(&mut buf, "SYSLOG_IDENTIFIER", identifier.as_bytes());
    for (name, value, _) in &fields.others {
        push_field(&mut buf, &field_name(name), value.as_bytes());
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    /// The entries a layer bound to a temporary socket sends for `log`.
    fn entries(log: impl FnOnce()) -> Vec<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let journal = UnixDatagram::bind(&path).unwrap();
        journal.set_nonblocking(true).unwrap();
        let layer = JournalLayer::connect(&path, "tether").unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), log);
        let mut out = Vec::new();
        let mut buf = vec![0; 65536];
        while let Ok(n) = journal.recv(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }

    #[test]
    fn an_event_becomes_the_shown_line_plus_one_field_each() {
        let got = entries(|| {
            let uuid = "2a836120-9c39-459b-a71b-f2f0265e30f2";
            tracing::info!(target_uuid = %uuid, volume_id = %"vol-data", state = "attached", "attached");
        });
        assert_eq!(got.len(), 1);
        let text = String::from_utf8(got[0].clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "MESSAGE=attached target_uuid=2a836120-9c39-459b-a71b-f2f0265e30f2 volume_id=vol-data state=\"attached\"",
                "PRIORITY=6",
                "SYSLOG_IDENTIFIER=tether",
                "TARGET_UUID=2a836120-9c39-459b-a71b-f2f0265e30f2",
                "VOLUME_ID=vol-data",
                "STATE=attached",
            ]
        );
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        let got = entries(|| {
            tracing::error!("e");
            tracing::warn!("w");
            tracing::debug!("d");
        });
        let priorities: Vec<String> = got
            .iter()
            .map(|e| {
                String::from_utf8_lossy(e)
                    .lines()
                    .find_map(|l| l.strip_prefix("PRIORITY=").map(str::to_string))
                    .unwrap()
            })
            .collect();
        assert_eq!(priorities, ["3", "4", "7"]);
    }

    #[test]
    fn multi_line_values_use_the_binary_form() {
        let mut buf = Vec::new();
        push_field(&mut buf, "ERROR", b"first\nsecond");
        let mut want = b"ERROR\n".to_vec();
        want.extend_from_slice(&12u64.to_le_bytes());
        want.extend_from_slice(b"first\nsecond\n");
        assert_eq!(buf, want);
    }

    #[test]
    fn field_names_follow_journald_rules() {
        assert_eq!(field_name("volume_id"), "VOLUME_ID");
        assert_eq!(field_name("retry_in.ms"), "RETRY_IN_MS");
        assert_eq!(field_name("_hidden"), "HIDDEN");
        assert_eq!(field_name("2fa"), "FA");
        assert_eq!(field_name("message_id"), "TETHER_MESSAGE_ID");
        assert_eq!(field_name("priority"), "TETHER_PRIORITY");
        assert_eq!(field_name("__"), "TETHER_");
        assert_eq!(field_name(&"x".repeat(80)).len(), 64);
    }

    #[test]
    fn an_unsendable_entry_does_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let journal = UnixDatagram::bind(&path).unwrap();
        let layer = JournalLayer::connect(&path, "tether").unwrap();
        drop(journal);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            tracing::info!(volume_id = "v", "goes to stderr instead");
        });
    }
}
