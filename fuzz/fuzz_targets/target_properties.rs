//! Targets as the agent reads them from the conductor (`GET .../volume/targets`, a
//! `TargetsResponse`) or as an operator sends them (`TargetCreate`), validated by
//! `protocol::target::parse`; and the grammars it is made of (IQN, portal, volume id, mount
//! path) on raw strings. A valid target's every name is in its grammar and reads back the same;
//! a refusal has a stable kind, prints no control character and never shows a secret.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use tether::protocol::secret::is_secret_property;
use tether::protocol::target::mount::{MOUNT_OPTIONS, normal_path, system_tree};
use tether::protocol::target::{
    self, BackendSpec, MAX_LUN, SessionKey, TargetSpec, check_volume_id, parse_iqn, parse_portal,
};
use tether::protocol::text::is_control;
use tether::protocol::{TargetCreate, TargetsResponse, VolumeTarget};
use uuid::Uuid;

const KINDS: &[&str] = &[
    "unknown_volume_type",
    "missing_property",
    "invalid_property",
    "invalid_iqn",
    "invalid_portal",
    "invalid_lun",
    "unsafe_value",
    "invalid_mount",
    "invalid_volume_id",
];

/// Every string in `value`, keys included, and separately the values under secret names.
fn strings<'a>(value: &'a Value, all: &mut Vec<&'a str>, secrets: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => all.push(s),
        Value::Array(items) => items.iter().for_each(|v| strings(v, all, secrets)),
        Value::Object(map) => {
            for (key, inner) in map {
                all.push(key);
                match inner {
                    Value::String(s) if is_secret_property(key) => secrets.push(s),
                    _ => strings(inner, all, secrets),
                }
            }
        }
        _ => {}
    }
}

/// The target's secrets that no other string of it contains, so that finding one in an
/// error can only mean that the secret itself was shown.
fn distinctive_secrets(target: &VolumeTarget) -> Vec<String> {
    let (mut all, mut secrets) = (Vec::new(), Vec::new());
    let whole = json!({"p": target.properties, "e": target.extra});
    strings(&whole, &mut all, &mut secrets);
    all.push(&target.volume_id);
    all.push(&target.volume_type);
    secrets
        .into_iter()
        .filter(|s| s.len() >= 12 && !all.iter().any(|o| o.contains(*s)))
        .map(str::to_string)
        .collect()
}

fn ceph_name(name: &str) {
    assert!(!name.is_empty() && name.len() <= 255, "{name:?}");
    assert!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
        "{name:?}"
    );
    assert!(
        !name.starts_with('-') && name != "." && name != "..",
        "{name:?}"
    );
}

fn check_valid(target: &VolumeTarget, spec: &TargetSpec) {
    assert_eq!(spec.uuid, target.uuid);
    assert_eq!(spec.volume_id, target.volume_id);
    assert!(check_volume_id(&spec.volume_id).is_ok());
    assert_eq!(spec.volume_type().as_str(), target.volume_type);
    match &spec.backend {
        BackendSpec::Iscsi(iscsi) => {
            assert!(!iscsi.paths.is_empty());
            for path in &iscsi.paths {
                assert_eq!(
                    parse_iqn(&path.iqn).as_ref(),
                    Ok(&path.iqn),
                    "IQN is canonical"
                );
                let written = path.portal.to_string();
                assert_eq!(
                    parse_portal(&written).as_ref(),
                    Ok(&path.portal),
                    "{written}"
                );
                assert!(u64::from(path.lun) <= MAX_LUN);
                let key = SessionKey::new(&path.portal, &path.iqn);
                assert!(parse_portal(key.portal()).is_ok(), "{key}");
                assert_eq!(key, path.session());
            }
            // CHAP credentials go into open-iscsi's record file as `key = value` lines.
            for chap in [&iscsi.chap, &iscsi.discovery_chap].into_iter().flatten() {
                let mut names = vec![chap.username.as_str()];
                let mut secrets = vec![chap.password.expose()];
                if let Some((user, password)) = &chap.mutual {
                    names.push(user);
                    secrets.push(password.expose());
                }
                for text in names.into_iter().chain(secrets) {
                    assert!(!text.is_empty() && text.len() <= 255);
                    assert!(text.chars().all(|c| c.is_ascii_graphic()), "{text:?}");
                }
            }
        }
        BackendSpec::Rbd(rbd) => {
            for name in [&rbd.pool, &rbd.image, &rbd.user, &rbd.cluster] {
                ceph_name(name);
            }
            if let Some(ns) = &rbd.namespace {
                ceph_name(ns);
            }
            assert!(!rbd.monitors.is_empty());
            for monitor in &rbd.monitors {
                assert!(monitor.port != 0 && !monitor.host.is_empty());
                assert!(!monitor.host.contains(',') && !monitor.host.contains(' '));
            }
            if let Some(key) = &rbd.key {
                assert_eq!(key.expose().len(), 40);
            }
            let slashes = rbd.spec_name().matches('/').count();
            assert_eq!(slashes, 1 + usize::from(rbd.namespace.is_some()));
        }
        BackendSpec::Nvmeof(nvme) => {
            // NQNs and secrets go into the kernel's comma-separated `key=value` option string.
            assert!(nvme.subsys_nqn.starts_with("nqn."), "{}", nvme.subsys_nqn);
            let option_safe = |text: &str| !text.contains([',', '=', ' ', '\n']);
            assert!(option_safe(&nvme.subsys_nqn), "{}", nvme.subsys_nqn);
            assert!(!nvme.portals.is_empty());
            for portal in &nvme.portals {
                let written = portal.to_string();
                assert_eq!(parse_portal(&written).as_ref(), Ok(portal), "{written}");
            }
            let id = &nvme.namespace;
            assert!(id.uuid.is_some() || id.nguid.is_some() || id.nsid.is_some());
            if let Some(nguid) = &id.nguid {
                assert!(nguid.len() == 32 && nguid.chars().all(|c| c.is_ascii_hexdigit()));
            }
            if let Some(dhchap) = &nvme.dhchap {
                for secret in [Some(&dhchap.host_secret), dhchap.ctrl_secret.as_ref()]
                    .into_iter()
                    .flatten()
                {
                    assert!(secret.expose().starts_with("DHHC-1:"));
                    assert!(option_safe(secret.expose()));
                }
            }
        }
    }
    if let Some(mount) = &spec.mount {
        let text = mount.path.to_str().expect("a mount path is UTF-8");
        assert_eq!(normal_path(text).as_deref(), Ok(mount.path.as_path()));
        assert!(
            system_tree(&mount.path).is_none(),
            "{text} is a system tree"
        );
        assert!(!mount.fstype.is_empty());
        for option in mount.options.iter().flat_map(|o| o.split(',')) {
            assert!(MOUNT_OPTIONS.contains(&option), "{option:?}");
        }
    }
    // Debug never shows a secret.
    let shown = format!("{spec:?}");
    for secret in distinctive_secrets(target) {
        assert!(!shown.contains(&secret), "Debug shows a secret: {shown}");
    }
}

fn check(target: &VolumeTarget) {
    match target::parse(target) {
        Ok(spec) => check_valid(target, &spec),
        Err(e) => {
            assert!(KINDS.contains(&e.kind()), "{}", e.kind());
            let message = e.to_string();
            assert!(!message.chars().any(is_control), "{message:?}");
            for secret in distinctive_secrets(target) {
                assert!(
                    !message.contains(&secret),
                    "a refusal shows a secret: {message}"
                );
            }
        }
    }
}

/// The grammars on their own, on a raw string.
fn grammars(text: &str) {
    if let Ok(iqn) = parse_iqn(text) {
        assert_eq!(iqn, text.to_ascii_lowercase());
        assert_eq!(parse_iqn(&iqn), Ok(iqn.clone()));
    }
    if let Ok(portal) = parse_portal(text) {
        assert_eq!(parse_portal(&portal.to_string()), Ok(portal.clone()));
        assert!(portal.port != 0);
    }
    if check_volume_id(text).is_ok() {
        assert!(
            text.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._:@+-".contains(c))
        );
    }
    if let Ok(path) = normal_path(text) {
        let shown = path.to_str().unwrap();
        assert!(shown.starts_with('/'));
        assert_eq!(
            normal_path(shown).as_deref(),
            Ok(Path::new(shown)),
            "normal form"
        );
        assert!(!shown.contains("//") && !shown.contains("/./") && !shown.contains("/../"));
    }
    for e in [
        parse_iqn(text).err(),
        parse_portal(text).err(),
        check_volume_id(text).err(),
    ]
    .into_iter()
    .flatten()
    {
        let message = e.to_string();
        assert!(!message.chars().any(is_control), "{message:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        grammars(&String::from_utf8_lossy(data));
        return;
    };
    // Each way a target arrives: a whole answer, one target, an operator's request, or bare
    // properties (tried as both volume types).
    if let Ok(answer) = serde_json::from_value::<TargetsResponse>(value.clone()) {
        answer.targets.iter().for_each(check);
    } else if let Ok(one) = serde_json::from_value::<VolumeTarget>(value.clone()) {
        check(&one);
    } else if let Ok(request) = serde_json::from_value::<TargetCreate>(value.clone()) {
        check(&request.target(request.uuid.unwrap_or_else(Uuid::nil)));
    } else if let Value::Object(properties) = value {
        for volume_type in ["iscsi", "rbd", "nvmeof"] {
            let mut extra = Map::new();
            if let Some(mount) = properties.get("mount") {
                extra.insert("mount".into(), mount.clone());
            }
            check(&VolumeTarget {
                uuid: Uuid::nil(),
                node_uuid: Uuid::nil(),
                volume_type: volume_type.into(),
                volume_id: "vol-fuzz".into(),
                boot_index: None,
                properties: properties.clone(),
                extra,
                size_bytes: None,
            });
        }
    } else if let Value::String(text) = value {
        grammars(&text);
    }
});
