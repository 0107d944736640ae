//! Escaping remote text for terminals and logs (`protocol::text`): whatever comes in, what is
//! printed holds no control character, and escaped JSON is still the same JSON value.
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use tether::protocol::text::{escape_controls, escape_controls_in_json, is_control};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let escaped = escape_controls(&text);
    assert!(
        !escaped.chars().any(is_control),
        "a control character survives: {escaped:?}"
    );
    match &escaped {
        Cow::Borrowed(same) => {
            assert_eq!(*same, &*text);
            assert!(!text.chars().any(is_control));
        }
        Cow::Owned(_) => assert!(text.chars().any(is_control), "copied without need"),
    }
    // Escaping keeps every other character, in order.
    let kept: String = text.chars().filter(|c| !is_control(*c)).collect();
    let mut rest = escaped.chars();
    for c in kept.chars() {
        assert!(rest.any(|e| e == c), "{c:?} was lost from {text:?}");
    }

    let value = json!({ "text": &*text, "list": [&*text, {"nested": &*text}] });
    for json in [
        serde_json::to_string(&value).unwrap(),
        serde_json::to_string_pretty(&value).unwrap(),
    ] {
        let safe = escape_controls_in_json(&json);
        assert!(
            !safe.chars().any(|c| is_control(c) && c != '\n'),
            "a control character survives in JSON: {safe:?}"
        );
        let back: Value = serde_json::from_str(&safe).expect("escaped JSON parses");
        assert_eq!(back, value, "escaping changed the JSON value");
    }
});
