//! Masking secrets in operator reads (`protocol::secret`): after masking, no value under a
//! secret's name is left at any depth, the rest is untouched, and a mask sent back anywhere is
//! found (the conductor refuses it rather than storing the mask as the secret).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use tether::protocol::secret::{is_secret_property, masked_property};
use tether::protocol::{MASK, Secret, mask_properties};

/// Every (key, value) of every object in `value`, at any depth, arrays included.
fn entries<'a>(value: &'a Value, out: &mut Vec<(&'a str, &'a Value)>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                out.push((key, inner));
                entries(inner, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| entries(item, out)),
        _ => {}
    }
}

/// `masked` is `original` with values under secret names (not null) replaced by the mask.
fn same_but_masked(original: &Value, masked: &Value) {
    match (original, masked) {
        (Value::Object(a), Value::Object(b)) => {
            assert_eq!(a.len(), b.len());
            for ((ka, va), (kb, vb)) in a.iter().zip(b) {
                assert_eq!(ka, kb);
                if is_secret_property(ka) && !va.is_null() {
                    assert_eq!(vb, MASK, "{ka} is not masked");
                } else {
                    same_but_masked(va, vb);
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len());
            a.iter().zip(b).for_each(|(x, y)| same_but_masked(x, y));
        }
        (a, b) => assert_eq!(a, b, "a value that is no secret changed"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(properties) = serde_json::from_slice::<Map<String, Value>>(data) else {
        return;
    };
    let original = Value::Object(properties.clone());

    // A mask sent back, at any depth, is found.
    let mut all = Vec::new();
    entries(&original, &mut all);
    let sent_back = all
        .iter()
        .any(|(key, value)| is_secret_property(key) && value.as_str() == Some(MASK));
    assert_eq!(
        masked_property(&properties).is_some(),
        sent_back,
        "masked_property misses or invents a mask in {original}"
    );

    let mut masked = properties.clone();
    mask_properties(&mut masked);
    let masked = Value::Object(masked);
    same_but_masked(&original, &masked);
    let mut left = Vec::new();
    entries(&masked, &mut left);
    for (key, value) in left {
        if is_secret_property(key) {
            assert!(value.is_null() || value == MASK, "{key} keeps {value}");
        }
    }
    // Masking twice changes nothing more.
    let Value::Object(mut again) = masked.clone() else {
        unreachable!()
    };
    mask_properties(&mut again);
    assert_eq!(Value::Object(again), masked);

    if let Some(Value::String(s)) = properties.values().next() {
        let secret = Secret::new(s.clone());
        assert_eq!(format!("{secret:?}|{secret}"), format!("{MASK}|{MASK}"));
        assert_eq!(secret.expose(), s);
    }
});
