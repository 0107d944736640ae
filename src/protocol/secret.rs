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
];

pub fn is_secret_property(key: &str) -> bool {
    SECRET_PROPERTIES.contains(&key)
}

/// Replaces every secret value with [`MASK`].
pub fn mask_properties(properties: &mut Map<String, Value>) {
    for (key, value) in properties.iter_mut() {
        if is_secret_property(key) && !value.is_null() {
            *value = Value::String(MASK.to_string());
        }
    }
}

/// The first secret property whose value is the mask, if any.
pub fn masked_property(properties: &Map<String, Value>) -> Option<&str> {
    properties
        .iter()
        .find(|(key, value)| is_secret_property(key) && value.as_str() == Some(MASK))
        .map(|(key, _)| key.as_str())
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
    fn secret_debug_and_display_are_masked() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), format!("{MASK} {MASK}"));
        assert_eq!(s.expose(), "hunter2");
    }
}
