//! Secrets (CHAP passwords, cephx keys, tokens) and how they are kept out of sight.

use serde_json::{Map, Value};

/// What operators read back in place of a secret. Sending it back is refused.
pub const MASK: &str = "******";

/// Property keys whose values are secrets, in both iSCSI and RBD targets.
pub const SECRET_PROPERTIES: &[&str] = &[
    "auth_password",
    "auth_password_in",
    "discovery_auth_password",
    "discovery_auth_password_in",
    "auth_key",
    "keyring",
    "dhchap_secret",
    "dhchap_ctrl_secret",
];

/// Whether a key names a secret: one of [`SECRET_PROPERTIES`], or a name that says so, so that a
/// secret placed by mistake elsewhere (under `extra`, in a nested object) is masked too.
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_PROPERTIES.contains(&key.as_str())
        || ["password", "secret", "token", "keyring", "passphrase"]
            .iter()
            .any(|word| key.contains(word))
        || key == "key"
        || key.ends_with("_key")
}

/// Replaces every secret value with [`MASK`], at any depth.
pub fn mask_properties(properties: &mut Map<String, Value>) {
    for (key, value) in properties.iter_mut() {
        if is_secret_property(key) && !value.is_null() {
            *value = Value::String(MASK.to_string());
        } else {
            mask_value(value);
        }
    }
}

fn mask_value(value: &mut Value) {
    match value {
        Value::Object(map) => mask_properties(map),
        Value::Array(items) => items.iter_mut().for_each(mask_value),
        _ => {}
    }
}

/// The path (`a.b`) of the first secret whose value is the mask, at any depth, if any: wherever
/// [`mask_properties`] puts a mask, arrays in arrays included.
pub fn masked_property(properties: &Map<String, Value>) -> Option<String> {
    properties.iter().find_map(|(key, value)| {
        if is_secret_property(key) && value.as_str() == Some(MASK) {
            return Some(key.clone());
        }
        masked_in(value).map(|inner| format!("{key}.{inner}"))
    })
}

fn masked_in(value: &Value) -> Option<String> {
    match value {
        Value::Object(map) => masked_property(map),
        Value::Array(items) => items.iter().find_map(masked_in),
        _ => None,
    }
}

/// A secret string whose Debug and Display never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The only way to read the value: named so that every use stands out in review.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masking_hides_every_secret_and_keeps_the_rest() {
        let mut props = json!({
            "target_iqn": "iqn.2004-04.com.example:vol",
            "auth_password": "hunter2",
            "auth_password_in": "swordfish",
            "auth_key": "AQD...==",
        })
        .as_object()
        .unwrap()
        .clone();
        mask_properties(&mut props);
        assert_eq!(props["auth_password"], MASK);
        assert_eq!(props["auth_password_in"], MASK);
        assert_eq!(props["auth_key"], MASK);
        assert_eq!(props["target_iqn"], "iqn.2004-04.com.example:vol");
        assert!(masked_property(&props).is_some());
        props.insert("auth_password".into(), json!("real"));
        props.remove("auth_password_in");
        props.remove("auth_key");
        assert_eq!(masked_property(&props), None);
    }

    #[test]
    fn secrets_are_masked_at_any_depth_and_under_any_telling_name() {
        let mut extra = json!({
            "mount": {"path": "/srv/a", "fstype": "ext4"},
            "notes": [{"password": "p1"}],
            "backup": {"s3_secret_access_key": "k1", "api_token": "t1", "auth_key": "k2"},
        })
        .as_object()
        .unwrap()
        .clone();
        mask_properties(&mut extra);
        let text = serde_json::to_string(&extra).unwrap();
        for secret in ["p1", "k1", "t1", "k2"] {
            assert!(
                !text.contains(&format!("\"{secret}\"")),
                "{secret} in {text}"
            );
        }
        assert_eq!(extra["mount"]["path"], "/srv/a");
        assert_eq!(masked_property(&extra).as_deref(), Some("backup.api_token"));
    }

    /// Found by fuzzing (fuzz/seeds/secret_mask/nested.json): a mask sent back in an array of
    /// arrays was not found, so it would have been stored as the secret.
    #[test]
    fn a_mask_sent_back_is_found_in_arrays_of_arrays() {
        let mut extra = json!({"notes": [[{"password": "p1"}]]})
            .as_object()
            .unwrap()
            .clone();
        mask_properties(&mut extra);
        assert_eq!(extra["notes"][0][0]["password"], MASK);
        assert_eq!(masked_property(&extra).as_deref(), Some("notes.password"));
    }

    #[test]
    fn secret_debug_and_display_are_masked() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), format!("{MASK} {MASK}"));
        assert_eq!(s.expose(), "hunter2");
    }
}
