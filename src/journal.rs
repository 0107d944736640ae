//! Logging straight to journald when systemd connected stderr to the journal. Each entry's
//! `MESSAGE` is the line the text log would show (the message, then `key=value` for each
//! field), so plain `journalctl` loses nothing; every field is also a journal field of its own
//! (`VOLUME_ID`, `TARGET_UUID`, `STATE`, `KIND`…) for `journalctl -o json` and for matches such
//! as `journalctl VOLUME_ID=vol-data`. libsystemd speaks the native protocol (with its memfd
//! fallback for large entries); this module only decides what goes in an entry.

use std::fmt::Write as _;

use libsystemd::logging::{Priority, connected_to_journal, journal_send};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Whether stderr is the journal stream systemd set up for this process (`JOURNAL_STREAM`
/// names it; a redirected stderr does not match).
pub fn stderr_is_journal() -> bool {
    connected_to_journal()
}

pub struct JournalLayer;

impl<S: Subscriber> Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut entry = Entry::default();
        event.record(&mut entry);
        let level = *event.metadata().level();
        let line = entry.line();
        let fields = entry.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        if journal_send(priority(level), &line, fields).is_err() {
            // journald went away: stderr is still the journal's stream.
            eprintln!("{level:>5} {line}");
        }
    }
}

fn priority(level: Level) -> Priority {
    match level {
        Level::ERROR => Priority::Error,
        Level::WARN => Priority::Warning,
        Level::INFO => Priority::Notice,
        Level::DEBUG => Priority::Info,
        Level::TRACE => Priority::Debug,
    }
}

/// An event's message and its fields, in the order they were given.
#[derive(Debug, Default)]
struct Entry {
    message: String,
    /// (journal field name, value)
    fields: Vec<(String, String)>,
    /// `key=value` as the text log shows them.
    shown: Vec<String>,
}

impl Entry {
    fn line(&self) -> String {
        let mut line = self.message.clone();
        for kv in &self.shown {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(kv);
        }
        line
    }

    fn add(&mut self, field: &Field, value: String, shown: String) {
        if field.name() == "message" {
            self.message = value;
            return;
        }
        self.shown.push(format!("{}={shown}", field.name()));
        self.fields.push((journal_name(field.name()), value));
    }
}

impl Visit for Entry {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field, value.to_string(), format!("{value:?}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.add(field, text.clone(), text);
    }
}

/// journald's field names: upper-case letters, digits and `_`, not starting with `_` (those are
/// trusted fields journald sets itself) or a digit.
fn journal_name(name: &str) -> String {
    let upper: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' => c.to_ascii_uppercase(),
            _ => '_',
        })
        .collect();
    let trimmed = upper.trim_start_matches(|c: char| c == '_' || c.is_ascii_digit());
    if trimmed.is_empty() {
        "FIELD".to_string()
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    /// (MESSAGE, fields) of each entry.
    type Sent = Vec<(String, Vec<(String, String)>)>;

    /// Records what the layer would send, through the same visitor.
    struct Capture(std::sync::Arc<std::sync::Mutex<Sent>>);

    impl<S: Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            let mut entry = Entry::default();
            event.record(&mut entry);
            self.0.lock().unwrap().push((entry.line(), entry.fields));
        }
    }

    #[test]
    fn the_message_is_the_text_line_and_every_field_is_a_journal_field() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Capture(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                volume_id = "vol-1",
                kind = "auth_failed",
                retry_in_ms = 640,
                "attach failed"
            );
        });
        let seen = seen.lock().unwrap();
        let (line, fields) = &seen[0];
        assert_eq!(
            line,
            r#"attach failed volume_id="vol-1" kind="auth_failed" retry_in_ms=640"#
        );
        assert_eq!(
            fields,
            &vec![
                ("VOLUME_ID".to_string(), "vol-1".to_string()),
                ("KIND".to_string(), "auth_failed".to_string()),
                ("RETRY_IN_MS".to_string(), "640".to_string()),
            ]
        );
    }

    #[test]
    fn field_names_become_valid_journal_names() {
        assert_eq!(journal_name("target_uuid"), "TARGET_UUID");
        assert_eq!(journal_name("_private"), "PRIVATE");
        assert_eq!(journal_name("log.target"), "LOG_TARGET");
        assert_eq!(journal_name("__"), "FIELD");
    }
}
