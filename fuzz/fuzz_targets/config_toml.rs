//! The configuration (`config`): TOML fragments merged in order, then the kernel command line
//! over them, then validated. Any text is refused or accepted without panicking; an accepted
//! configuration holds what validation promises; no refusal shows a token.
//!
//! Input: fragments separated by lines `#%%`; a line `#cmdline: WORDS` gives a command line.
#![no_main]

use std::path::PathBuf;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tether::config::cmdline::{self, CmdlineSettings};
use tether::config::{Config, Transport, conductor_transport};
use tether::protocol::target::mount::{SYSTEM_TREES, normal_path};

/// The fragments and the command line an input gives.
fn read(text: &str) -> (Vec<(PathBuf, String)>, CmdlineSettings) {
    let mut settings = CmdlineSettings::default();
    let mut fragments = Vec::new();
    for (i, part) in text.split("\n#%%\n").enumerate() {
        let mut fragment = String::new();
        for line in part.split_inclusive('\n') {
            match line.strip_prefix("#cmdline:") {
                Some(words) => settings = cmdline::parse(words).unwrap_or_default(),
                None => fragment.push_str(line),
            }
        }
        let path = PathBuf::from(format!("/etc/tether/config.d/{i:02}.toml"));
        fragments.push((path, fragment));
    }
    (fragments, settings)
}

fn refusal(text: &str) -> Option<String> {
    let (fragments, settings) = read(text);
    Config::from_fragments(&fragments, &settings)
        .err()
        .map(|e| e.to_string())
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (fragments, settings) = read(&text);
    // Tokens the input sets, each written once in it (long enough not to be found by chance).
    let mut tokens: Vec<String> = Vec::new();
    for (_, fragment) in &fragments {
        if let Ok(table) = fragment.parse::<toml::Table>() {
            if let Some(toml::Value::String(t)) = table.get("agent").and_then(|a| a.get("token")) {
                tokens.push(t.clone());
            }
        }
    }
    tokens.extend(settings.token.iter().map(|t| t.expose().to_string()));
    tokens.retain(|t| t.len() >= 12 && text.matches(t.as_str()).count() == 1);

    match Config::from_fragments(&fragments, &settings) {
        Ok(config) => {
            let a = &config.agent;
            assert!(!a.conductor_urls.is_empty());
            for url in &a.conductor_urls {
                let transport = conductor_transport(url).expect("a valid URL");
                if transport == (Transport::Plain { loopback: false }) {
                    assert!(a.allow_insecure_http);
                }
            }
            for d in [a.poll_wait, a.device_timeout, a.retry_initial] {
                assert!(d >= Duration::from_secs(1));
            }
            assert!(a.retry_max >= a.retry_initial);
            assert_ne!(a.heartbeat_interval, Some(Duration::ZERO));
            assert!(!(a.token.is_some() && a.token_file.is_some()));
            for prefix in &a.mount_prefixes {
                let shown = prefix.to_str().unwrap();
                assert_eq!(normal_path(shown).as_deref(), Ok(prefix.as_path()));
                assert!(
                    !SYSTEM_TREES.iter().any(|t| prefix.starts_with(t)),
                    "{shown}"
                );
            }
            let c = &config.conductor;
            assert!(c.listen.parse::<std::net::SocketAddr>().is_ok());
            assert!(c.heartbeat_interval_s >= 1 && c.rate_limit_burst >= 1);
            assert_eq!(c.tls_cert_file.is_some(), c.tls_key_file.is_some());
            // The same input gives the same configuration.
            assert_eq!(
                Config::from_fragments(&fragments, &settings).ok(),
                Some(config)
            );
        }
        Err(e) => {
            // What shows a token must show it as well when the token is another string (a
            // key's name, the words of a message).
            let message = e.to_string();
            for token in tokens.iter().filter(|t| message.contains(t.as_str())) {
                let other = if token.contains('Q') { "Z" } else { "Q" }.repeat(token.len());
                let without = refusal(&text.replace(token.as_str(), &other)).unwrap_or_default();
                assert!(
                    without.contains(token.as_str()),
                    "a refusal shows a token: {message}"
                );
            }
        }
    }
});
