//! The kernel command line's `tether.*` settings (`config::cmdline`), for ramdisks: words split
//! as the kernel splits them, checked values, and errors that name the key but never show a
//! token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::config::AgentConfig;
use tether::config::cmdline::{parse, split};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let words = split(&text);

    for &(param, value) in &words {
        assert_ne!((param, value), ("--", None), "words after -- are init's");
        // A plain word, written back alone or with its value quoted, splits the same.
        let plain = |s: &str| !s.contains(|c: char| c == '"' || c.is_whitespace());
        if plain(param) && !param.is_empty() && !param.contains('=') && param != "--" {
            match value {
                None => assert_eq!(split(param), vec![(param, None)]),
                Some(v) if plain(v) => {
                    let word = format!("{param}={v}");
                    assert_eq!(split(&word), vec![(param, Some(v))], "{word:?}");
                }
                Some(v) if !v.contains('"') => {
                    let word = format!("{param}=\"{v}\"");
                    assert_eq!(split(&word), vec![(param, Some(v))], "{word:?}");
                }
                Some(_) => {}
            }
        }
    }

    // Tokens given on this line, each in one word only (long enough not to be found by chance).
    let tokens: Vec<&str> = words
        .iter()
        .filter(|(p, _)| p.replace('-', "_") == "tether.token")
        .filter_map(|(_, v)| *v)
        .filter(|t| t.len() >= 8)
        .filter(|t| {
            // Errors name a key with its dashes made underscores.
            let holds = |s: &str| s.contains(t) || s.replace('-', "_").contains(t);
            let holders = words
                .iter()
                .filter(|(p, v)| holds(p) || v.is_some_and(holds));
            holders.count() == 1
        })
        .collect();
    match parse(&text) {
        Ok(settings) => {
            for path in [
                &settings.token_file,
                &settings.state_dir,
                &settings.conductor_ca_file,
            ]
            .into_iter()
            .flatten()
            {
                assert!(path.is_absolute(), "{path:?}");
            }
            for url in settings.conductor_urls.iter().flatten() {
                assert!(url.starts_with("http://") || url.starts_with("https://"));
            }
            assert!(settings.device_timeout_s.is_none_or(|s| s >= 1));
            assert!(settings.token.is_none() || settings.token_file.is_none());
            assert_eq!(settings.is_empty(), settings.keys().is_empty());
            let mut agent = AgentConfig::default();
            settings.apply(&mut agent);
            if let Some(t) = &settings.token {
                assert_eq!(agent.token.as_deref(), Some(t.expose()));
                assert!(agent.token_file.is_none());
            }
        }
        Err(e) => assert!(e.key.starts_with("tether."), "{}", e.key),
    }
    // Neither the settings' Debug nor an error shows a token: what does show it must be there
    // as well when the token is another string (a key's name, the words of a message).
    let shown = |text: &str| match parse(text) {
        Ok(settings) => format!("{settings:?}"),
        Err(e) => format!("{e:?}"),
    };
    for token in tokens {
        if shown(&text).contains(token) {
            let other = if token.contains('Q') { "Z" } else { "Q" }.repeat(token.len());
            let without = shown(&text.replace(token, &other));
            assert!(without.contains(token), "the token shows: {}", shown(&text));
        }
    }
});
