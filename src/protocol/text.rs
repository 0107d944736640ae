//! Text from elsewhere (an agent's report, a conductor's answer, a target), made safe to print:
//! a control character in it would move the cursor, forge a line or retitle the terminal.

use std::borrow::Cow;

/// Characters that act on a terminal or a log instead of printing: the C0 controls (newline,
/// carriage return, ESC…), DEL, the C1 controls, and the bidirectional embeddings, overrides
/// and isolates, which reorder the text that follows them.
pub fn is_control(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with each [`is_control`] character written as Rust's `escape_debug` writes it
/// (`\n`, `\r`, `\t`, `\u{1b}`…); every other character, Unicode included, stays as it is.
/// Borrowed when there was nothing to escape.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_control(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// JSON text (as serde_json writes it) with the [`is_control`] characters that it leaves raw
/// (DEL, the C1 controls, the bidirectional ones) written as `\uXXXX` escapes: the same JSON
/// value, safe to print. serde_json already escapes the C0 controls inside strings, so a raw
/// newline is one the pretty printer wrote between values, and stays.
pub fn escape_controls_in_json(json: &str) -> Cow<'_, str> {
    if !json.chars().any(|c| is_control(c) && c != '\n') {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if is_control(c) && c != '\n' {
            for unit in c.encode_utf16(&mut [0; 2]) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_is_kept() {
        assert_eq!(
            escape_controls("vol\x1b]0;title\x07\r\nx\tDEL\x7f"),
            "vol\\u{1b}]0;title\\u{7}\\r\\nx\\tDEL\\u{7f}"
        );
        assert_eq!(
            escape_controls("csi\u{9b}2J"),
            "csi\\u{9b}2J",
            "C1 controls too"
        );
        assert_eq!(
            escape_controls("a\u{202e}b\u{2066}"),
            "a\\u{202e}b\\u{2066}"
        );
        assert_eq!(escape_controls("nul\0"), "nul\\0");
        for kept in [
            "vol-data",
            "volume_1.2:a@b+c",
            "données é ü 日本 🚀",
            "back\\slash",
        ] {
            assert!(
                matches!(escape_controls(kept), Cow::Borrowed(s) if s == kept),
                "{kept}"
            );
        }
    }

    #[test]
    fn json_keeps_its_value_and_loses_its_controls() {
        let value = serde_json::json!({"id": "a\x1b]0;t\x07\r\n\u{7f}\u{9b}\u{202e}é"});
        let json = serde_json::to_string_pretty(&value).unwrap();
        let safe = escape_controls_in_json(&json);
        assert!(!safe.chars().any(|c| is_control(c) && c != '\n'), "{safe}");
        assert!(safe.contains("\\u009b"), "{safe}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&safe).unwrap(),
            value
        );
        let plain = serde_json::to_string_pretty(&serde_json::json!({"id": "vol-1"})).unwrap();
        assert!(matches!(escape_controls_in_json(&plain), Cow::Borrowed(_)));
    }

    #[test]
    fn escaped_text_holds_no_control_character() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        assert!(!escape_controls(&all).chars().any(is_control));
    }
}
