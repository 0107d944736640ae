use super::*;
use serde_json::json;

fn target(volume_type: &str, properties: Value, extra: Value) -> VolumeTarget {
    VolumeTarget {
        uuid: Uuid::nil(),
        node_uuid: Uuid::nil(),
        volume_type: volume_type.into(),
        volume_id: "vol-1".into(),
        boot_index: None,
        properties: properties.as_object().unwrap().clone(),
        extra: extra.as_object().unwrap().clone(),
        size_bytes: None,
    }
}

fn iscsi(properties: Value) -> Result<TargetSpec, TargetError> {
    parse(&target("iscsi", properties, json!({})))
}

fn kind(result: Result<TargetSpec, TargetError>) -> &'static str {
    result.expect_err("expected an error").kind()
}

const IQN: &str = "iqn.2003-01.org.linux-iscsi.target:vol1";

#[test]
fn single_path_iscsi_with_chap_parses() {
    let spec = iscsi(json!({
        "target_portal": "192.0.2.10:3260", "target_iqn": IQN, "target_lun": 3,
        "auth_method": "CHAP", "auth_username": "user", "auth_password": "s3cret!",
        "auth_username_in": "tgt", "auth_password_in": "m0tual",
    }))
    .unwrap();
    let BackendSpec::Iscsi(iscsi) = &spec.backend else {
        panic!()
    };
    assert_eq!(iscsi.paths.len(), 1);
    assert_eq!(iscsi.paths[0].portal.to_string(), "192.0.2.10:3260");
    assert_eq!(iscsi.paths[0].lun, 3);
    let chap = iscsi.chap.as_ref().unwrap();
    assert_eq!(chap.password.expose(), "s3cret!");
    assert_eq!(chap.mutual.as_ref().unwrap().0, "tgt");
    assert_eq!(
        spec.sessions()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec![format!("192.0.2.10:3260,{IQN}")]
    );
}

#[test]
fn discovery_chap_is_its_own_credential_set() {
    let spec = iscsi(json!({
        "target_portal": "192.0.2.10:3260", "target_iqn": IQN, "target_lun": 0,
        "discovery": "sendtargets",
        "discovery_auth_method": "CHAP", "discovery_auth_username": "disc",
        "discovery_auth_password": "d1sc-secret",
        "discovery_auth_username_in": "disc-tgt", "discovery_auth_password_in": "d1sc-mutual",
    }))
    .unwrap();
    let BackendSpec::Iscsi(iscsi) = &spec.backend else {
        panic!()
    };
    assert!(iscsi.discovery);
    assert!(
        iscsi.chap.is_none(),
        "login CHAP is not implied by discovery CHAP"
    );
    let chap = iscsi.discovery_chap.as_ref().unwrap();
    assert_eq!(chap.username, "disc");
    assert_eq!(chap.password.expose(), "d1sc-secret");
    let (user_in, password_in) = chap.mutual.as_ref().unwrap();
    assert_eq!(
        (user_in.as_str(), password_in.expose()),
        ("disc-tgt", "d1sc-mutual")
    );
    assert_eq!(
        kind(iscsi_discovery_without_password()),
        "missing_property",
        "CHAP named without a password"
    );
}

fn iscsi_discovery_without_password() -> Result<TargetSpec, TargetError> {
    iscsi(json!({
        "target_portal": "192.0.2.10:3260", "target_iqn": IQN, "target_lun": 0,
        "discovery": "sendtargets", "discovery_auth_method": "CHAP",
        "discovery_auth_username": "disc",
    }))
}

#[test]
fn multipath_lists_parse_and_must_match_in_length() {
    let spec = iscsi(json!({
        "target_portals": ["192.0.2.10:3260", "[2001:db8::1]:3260"],
        "target_iqns": [IQN, IQN], "target_luns": [0, 0],
    }))
    .unwrap();
    let BackendSpec::Iscsi(iscsi) = &spec.backend else {
        panic!()
    };
    assert_eq!(iscsi.paths[1].portal.to_string(), "[2001:db8::1]:3260");
    assert_eq!(
        kind(iscsi_lists(
            json!(["192.0.2.10:3260"]),
            json!([IQN, IQN]),
            json!([0])
        )),
        "invalid_property"
    );
}

fn iscsi_lists(portals: Value, iqns: Value, luns: Value) -> Result<TargetSpec, TargetError> {
    iscsi(json!({"target_portals": portals, "target_iqns": iqns, "target_luns": luns}))
}

#[test]
fn malformed_targets_fail_with_stable_kinds() {
    let base = |portal: &str, iqn: &str, lun: Value| {
        iscsi(json!({"target_portal": portal, "target_iqn": iqn, "target_lun": lun}))
    };
    assert_eq!(kind(base("192.0.2.10", IQN, json!(0))), "invalid_portal");
    assert_eq!(kind(base("192.0.2.10:0", IQN, json!(0))), "invalid_portal");
    assert_eq!(
        kind(base("192.0.2.10:99999", IQN, json!(0))),
        "invalid_portal"
    );
    assert_eq!(
        kind(base("2001:db8::1:3260", IQN, json!(0))),
        "invalid_portal"
    );
    assert_eq!(
        kind(base("host;rm -rf /:3260", IQN, json!(0))),
        "invalid_portal"
    );
    assert_eq!(kind(base("-p:3260", IQN, json!(0))), "invalid_portal");
    assert_eq!(
        kind(base("array-.example:3260", IQN, json!(0))),
        "invalid_portal"
    );
    assert_eq!(
        kind(base("192.0.2.10:3260", "iqn.bad", json!(0))),
        "invalid_iqn"
    );
    assert_eq!(
        kind(base(
            "192.0.2.10:3260",
            "iqn.2003-01.org.x:$(reboot)",
            json!(0)
        )),
        "invalid_iqn"
    );
    assert_eq!(
        kind(base("192.0.2.10:3260", "iqn.2003-01.org.x;ls", json!(0))),
        "invalid_iqn"
    );
    assert_eq!(
        kind(base("192.0.2.10:3260", "eui.123", json!(0))),
        "invalid_iqn"
    );
    assert_eq!(
        kind(base("192.0.2.10:3260", IQN, json!(16384))),
        "invalid_lun"
    );
    assert_eq!(kind(base("192.0.2.10:3260", IQN, json!(-1))), "invalid_lun");
    assert_eq!(
        kind(base("192.0.2.10:3260", IQN, json!("0"))),
        "invalid_lun"
    );
    assert_eq!(
        kind(iscsi(json!({"target_iqn": IQN, "target_lun": 0}))),
        "missing_property"
    );
    assert_eq!(
        kind(parse(&target("nvme", json!({}), json!({})))),
        "unknown_volume_type"
    );
    assert_eq!(
        kind(iscsi(json!({
            "target_portal": "192.0.2.10:3260", "target_iqn": IQN, "target_lun": 0,
            "auth_method": "CHAP", "auth_username": "u`id`", "auth_password": "p",
        }))),
        "unsafe_value"
    );
    assert!(base("192.0.2.10:3260", "eui.02004567A425678D", json!(0)).is_ok());
    assert!(
        base(
            "storage.example.com:3260",
            "naa.52004567BA64678D",
            json!(16383)
        )
        .is_ok()
    );
}

#[test]
fn errors_never_contain_the_password() {
    let err = iscsi(json!({
        "target_portal": "192.0.2.10:3260", "target_iqn": IQN, "target_lun": 0,
        "auth_method": "CHAP", "auth_username": "user", "auth_password": "has space hunter2",
    }))
    .unwrap_err();
    assert_eq!(err.kind(), "unsafe_value");
    assert!(!err.to_string().contains("hunter2"));
    assert!(!format!("{err:?}").contains("hunter2"));
}

/// A cephx key of the real layout: type 1 (AES), a creation time, length 16, 16 key bytes.
const CEPHX_KEY: &str = "AQBIkAdrAAAAABAAdGV0aGVyLXRlc3Qta2V5MQ==";

fn rbd(properties: Value) -> Result<TargetSpec, TargetError> {
    parse(&target("rbd", properties, json!({})))
}

/// A valid RBD target's properties with `key` set to `value`.
fn rbd_with(key: &str, value: Value) -> Result<TargetSpec, TargetError> {
    let mut props = json!({"name": "volumes/volume-1", "hosts": ["192.0.2.1"],
                           "auth_username": "cinder", "auth_key": CEPHX_KEY});
    props[key] = value;
    rbd(props)
}

#[test]
fn rbd_target_parses_with_namespace_and_key() {
    let spec = rbd(
        json!({"name": "volumes/ns1/volume-1", "hosts": ["192.0.2.1", "mon-2.ceph.example"],
               "ports": ["6789", 3300], "auth_username": "cinder", "auth_key": CEPHX_KEY}),
    )
    .unwrap();
    let BackendSpec::Rbd(rbd) = &spec.backend else {
        panic!()
    };
    assert_eq!(rbd.spec_name(), "volumes/ns1/volume-1");
    assert_eq!(rbd.monitors.len(), 2);
    assert_eq!(rbd.monitors[1].port, 3300);
    assert_eq!(rbd.key.as_ref().unwrap().expose(), CEPHX_KEY);
    assert_eq!(rbd.cluster, "ceph");
    let no_key = rbd_with("auth_key", Value::Null);
    assert_eq!(kind(no_key), "missing_property");
    assert_eq!(kind(rbd_with("name", json!("p/i;x"))), "unsafe_value");
}

#[test]
fn rbd_names_are_ceph_names() {
    for good in [
        "volumes/volume-5d2e3f40",
        "rbd/ns_1/img.v2",
        "p/.hidden",
        "p/..x",
    ] {
        assert!(rbd_with("name", json!(good)).is_ok(), "{good}");
    }
    for (bad, expected) in [
        ("../sda", "unsafe_value"),
        ("./.", "unsafe_value"),
        ("volumes/..", "unsafe_value"),
        ("volumes/-o", "unsafe_value"),
        ("-p/image", "unsafe_value"),
        ("volumes/ns/-i", "unsafe_value"),
        ("volumes/img@snap", "unsafe_value"),
        ("volumes/img,secret=x", "unsafe_value"),
        ("volumes/img name", "unsafe_value"),
        ("volumes/img\n", "unsafe_value"),
        ("volumes/", "invalid_property"),
        ("volumes/a/b/c", "invalid_property"),
    ] {
        assert_eq!(kind(rbd_with("name", json!(bad))), expected, "{bad:?}");
    }
    let long = format!("volumes/{}", "i".repeat(256));
    assert_eq!(kind(rbd_with("name", json!(long))), "invalid_property");
    assert!(rbd_with("name", json!(format!("volumes/{}", "i".repeat(255)))).is_ok());
}

#[test]
fn rbd_user_and_cluster_cannot_be_options() {
    for key in ["auth_username", "cluster_name"] {
        for bad in ["--keyring", "-k", "a,b", "a b", "client:x", "", ".."] {
            let result = rbd_with(key, json!(bad));
            let named = match &result {
                Err(TargetError::UnsafeValue { key: named, .. })
                | Err(TargetError::InvalidProperty { key: named, .. }) => *named,
                _ => "",
            };
            assert_eq!(named, key, "{key} {bad:?}: {result:?}");
        }
        for good in ["cinder", "openstack.rbd", "nova_compute-1"] {
            assert!(rbd_with(key, json!(good)).is_ok(), "{key} {good}");
        }
    }
    assert_eq!(
        kind(rbd_with("auth_username", json!("--keyring"))),
        "unsafe_value"
    );
}

#[test]
fn monitors_are_addresses_or_dns_names() {
    for bad in [
        json!(["-m"]),
        json!(["-m.example"]),
        json!(["mon-.example"]),
        json!(["mon..example"]),
        json!(["mon_1"]),
        json!(["mon 1"]),
        json!(["mon,192.0.2.2"]),
        json!([format!("{}.example", "a".repeat(64))]),
        json!([]),
    ] {
        assert_eq!(
            kind(rbd_with("hosts", bad.clone())),
            "invalid_property",
            "{bad}"
        );
    }
    let ports = |hosts: Value, ports: Value| {
        rbd(json!({"name": "p/i", "hosts": hosts, "ports": ports, "auth_enabled": false}))
    };
    assert_eq!(
        kind(ports(json!(["192.0.2.1"]), json!(["0"]))),
        "invalid_property"
    );
    assert_eq!(
        kind(ports(json!(["192.0.2.1"]), json!([65536]))),
        "invalid_property"
    );
    assert_eq!(
        kind(ports(json!(["192.0.2.1"]), json!(["-1"]))),
        "invalid_property"
    );
    assert!(
        ports(
            json!(["2001:db8::1", "[2001:db8::2]"]),
            json!([3300, "6789"])
        )
        .is_ok()
    );
    assert!(ports(json!(["ceph-mon-1.example.com"]), json!([65535])).is_ok());
}

#[test]
fn auth_key_is_a_cephx_key() {
    // What the old check let through: printable ASCII without spaces.
    for (bad, expected) in [
        ("AQBkey==,mon_addr=x", "unsafe_value"),
        ("AQBzY3VyZWtleQ==,ms_mode=crc", "unsafe_value"),
        ("not base64 at all", "unsafe_value"),
        ("AQBkey==", "invalid_property"),
    ] {
        assert_eq!(kind(rbd_with("auth_key", json!(bad))), expected, "{bad}");
    }
    for bad in [
        // Base64 of the wrong length: 27 and 29 bytes.
        "AQBIkAdrAAAAABAAdGV0aGVyLXRlc3Qta2V5",
        "AQBIkAdrAAAAABAAdGV0aGVyLXRlc3Qta2V5MTI=",
        // 40 characters, but '=' inside and a non-canonical padding.
        "AQBIkAdrAAAA=BAAdGV0aGVyLXRlc3Qta2V5MQ==",
        "AQBIkAdrAAAAABAAdGV0aGVyLXRlc3Qta2V5MR==",
        // 28 bytes, but type 2 instead of 1 (AES).
        "AgBIkAdrAAAAABAAdGV0aGVyLXRlc3Qta2V5MQ==",
        // 28 bytes whose length field is not 16 (what the old docs example held).
        "AQBzY3VyZWtleWZvcnRlc3Rpbmdvbmx5AAAAAA==",
    ] {
        let err = rbd_with("auth_key", json!(bad)).unwrap_err();
        assert_eq!(err.kind(), "invalid_property", "{bad}");
        assert!(matches!(
            err,
            TargetError::InvalidProperty {
                key: "auth_key",
                ..
            }
        ));
        assert!(
            !err.to_string().contains(bad),
            "the key is never echoed: {err}"
        );
        assert!(
            !err.to_string().contains(&bad[4..20]),
            "nor a part of it: {err}"
        );
    }
    let err = rbd_with("auth_key", json!("AQBkey==,secret-part")).unwrap_err();
    assert!(!err.to_string().contains("secret-part"), "{err}");
    assert!(!format!("{err:?}").contains("secret-part"), "{err:?}");
    assert!(rbd_with("auth_key", json!(CEPHX_KEY)).is_ok());
    // Without cephx there is no key to check.
    let props = json!({"name": "p/i", "hosts": ["192.0.2.1"], "auth_enabled": false,
                       "auth_key": "ignored"});
    assert!(rbd(props).is_ok());
}

#[test]
fn mount_spec_is_validated() {
    let props = json!({"target_portal": "192.0.2.10:3260", "target_iqn": IQN, "target_lun": 0});
    let ok = parse(&target(
        "iscsi",
        props.clone(),
        json!({"mount": {"path": "/srv/data/", "fstype": "ext4", "options": "noatime,discard",
                         "mkfs": true}}),
    ))
    .unwrap();
    let mount = ok.mount.unwrap();
    assert_eq!(mount.path, PathBuf::from("/srv/data"));
    assert!(mount.mkfs);
    for bad in [
        json!({"path": "relative", "fstype": "ext4"}),
        json!({"path": "/srv/../etc", "fstype": "ext4"}),
        json!({"path": "/", "fstype": "ext4"}),
        json!({"path": "/etc", "fstype": "ext4"}),
        json!({"path": "/srv/x", "fstype": "ext4;reboot"}),
        json!({"path": "/srv/x", "fstype": "ext4", "options": "rw bad"}),
        json!({"path": "/srv/x", "fstype": "ext4", "mkfs": "yes"}),
        json!({"path": "/srv/x", "fstype": "ext4", "owner": "root"}),
    ] {
        let result = parse(&target("iscsi", props.clone(), json!({"mount": bad})));
        assert_eq!(kind(result), "invalid_mount", "{bad}");
    }
}

#[test]
fn access_mode_ro_is_read_only() {
    let spec = iscsi(
        json!({"target_portal": "192.0.2.10:3260", "target_iqn": IQN,
                            "target_lun": 0, "access_mode": "ro"}),
    )
    .unwrap();
    assert!(spec.read_only);
}

proptest::proptest! {
    // Whatever arrives, parsing never panics, and any string it accepts as an IQN or portal
    // holds no character a shell or iscsiadm's record files would treat specially.
    #[test]
    fn parse_never_panics_and_accepts_only_safe_strings(
        portal in ".{0,40}",
        iqn in ".{0,60}",
        lun in proptest::num::i64::ANY,
    ) {
        if let Ok(spec) =
            iscsi(json!({"target_portal": portal, "target_iqn": iqn, "target_lun": lun}))
        {
            let BackendSpec::Iscsi(iscsi) = spec.backend else { panic!() };
            let p = &iscsi.paths[0];
            let unsafe_char = |c: char| {
                c.is_whitespace() || c.is_control() || "$`;|&<>()\\'\"*?!{}".contains(c)
            };
            proptest::prop_assert!(!p.iqn.chars().any(unsafe_char));
            proptest::prop_assert!(!p.portal.to_string().chars().any(unsafe_char));
        }
    }
}

#[test]
fn one_session_key_for_every_spelling_of_a_portal() {
    let key = |portal: &str| SessionKey::new(&parse_portal(portal).unwrap(), IQN);
    assert_eq!(key("[2001:db8:0:0::1]:3260"), key("[2001:db8::1]:3260"));
    assert_eq!(key("[2001:db8::1]:3260").portal(), "[2001:db8::1]:3260");
    assert_eq!(
        key("192.0.2.10:3260").to_string(),
        format!("192.0.2.10:3260,{IQN}")
    );
    assert_ne!(key("192.0.2.10:3260"), key("192.0.2.10:3261"));
}

#[test]
fn volume_ids_follow_a_grammar() {
    for good in [
        "vol-data",
        "5d2e3f40-1a2b-4c3d-8e9f-a0b1c2d3e4f5",
        "volume-5d2e3f40",
        "a",
        "pool.v2_b:c@d+e-f",
        &"v".repeat(MAX_VOLUME_ID),
    ] {
        assert_eq!(check_volume_id(good), Ok(()), "{good}");
    }
    for bad in [
        String::new(),
        "v".repeat(MAX_VOLUME_ID + 1),
        "v".repeat(600),
        "vol\n\x1b[31mERROR forged".into(),
        "vol\r".into(),
        "vol 1".into(),
        "vol/1".into(),
        "vol,1".into(),
        "vol;reboot".into(),
        "-vol".into(),
        ".vol".into(),
        "..".into(),
        "données".into(),
    ] {
        let err = check_volume_id(&bad).unwrap_err();
        assert_eq!(err.kind(), "invalid_volume_id", "{bad:?}");
        assert!(!err.to_string().chars().any(char::is_control), "{err}");
    }
    let mut t = target(
        "iscsi",
        json!({"target_portal": "192.0.2.10:3260", "target_iqn": IQN, "target_lun": 0}),
        json!({}),
    );
    assert!(parse(&t).is_ok());
    t.volume_id = "vol\x1b]0;title\x07".into();
    assert_eq!(
        kind(parse(&t)),
        "invalid_volume_id",
        "the agent refuses it too"
    );
}

fn nvmeof(properties: Value) -> Result<TargetSpec, TargetError> {
    parse(&target("nvmeof", properties, json!({})))
}

fn nvme_spec(result: Result<TargetSpec, TargetError>) -> NvmeofSpec {
    match result.expect("a valid NVMe-oF target").backend {
        BackendSpec::Nvmeof(spec) => spec,
        other => panic!("not NVMe-oF: {other:?}"),
    }
}

const NQN: &str = "nqn.2014-08.org.example:vol-1";
const DHCHAP: &str = "DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";

#[test]
fn nvmeof_newer_form_parses_portals_uuid_and_secrets() {
    let spec = nvme_spec(nvmeof(json!({
        "target_nqn": NQN,
        "vol_uuid": "0F9C1B7E2A4D4C3B9E8F1A2B3C4D5E6F",
        "portals": [["192.0.2.1", 4420, "tcp"], ["fd00::1", "4420", "TCP"],
                    ["192.0.2.1", 4420, "tcp"]],
        "dhchap_secret": DHCHAP, "dhchap_ctrl_secret": DHCHAP,
    })));
    assert_eq!(spec.subsys_nqn, NQN);
    let portals: Vec<String> = spec.portals.iter().map(ToString::to_string).collect();
    assert_eq!(
        portals,
        ["192.0.2.1:4420", "[fd00::1]:4420"],
        "duplicates dropped"
    );
    assert_eq!(
        spec.namespace.uuid.as_deref(),
        Some("0f9c1b7e-2a4d-4c3b-9e8f-1a2b3c4d5e6f")
    );
    let dhchap = spec.dhchap.expect("secrets");
    assert_eq!(dhchap.host_secret.expose(), DHCHAP);
    assert!(dhchap.ctrl_secret.is_some());
}

#[test]
fn nvmeof_older_flat_form_parses_nguid_and_nsid() {
    let spec = nvme_spec(nvmeof(json!({
        "nqn": NQN, "transport_type": "tcp", "target_portal": "192.0.2.1",
        "target_port": "4420", "volume_nguid": "0F9C1B7E-2A4D-4C3B-9E8F-1A2B3C4D5E6F",
        "ns_id": "7", "host_nqn": "nqn.2014-08.org.nvmexpress:uuid:whatever",
    })));
    assert_eq!(spec.portals[0].to_string(), "192.0.2.1:4420");
    assert_eq!(
        spec.namespace,
        NamespaceId {
            uuid: None,
            nguid: Some("0f9c1b7e2a4d4c3b9e8f1a2b3c4d5e6f".into()),
            nsid: Some(7),
        }
    );
    assert!(spec.dhchap.is_none());
    let sessions = parse(&target(
        "nvmeof",
        json!({
            "nqn": NQN, "target_portal": "192.0.2.1", "target_port": 4420, "ns_id": 1,
        }),
        json!({}),
    ))
    .unwrap()
    .sessions();
    assert_eq!(sessions[0].to_string(), format!("192.0.2.1:4420,{NQN}"));
}

#[test]
fn malformed_nvmeof_targets_fail_with_stable_kinds() {
    let base = || json!({"target_nqn": NQN, "portals": [["192.0.2.1", 4420, "tcp"]], "ns_id": 1});
    let with = |key: &str, value: Value| {
        let mut props = base();
        props[key] = value;
        nvmeof(props)
    };
    let without = |key: &str| {
        let mut props = base();
        props.as_object_mut().unwrap().remove(key);
        nvmeof(props)
    };
    assert_eq!(kind(without("target_nqn")), "missing_property");
    assert_eq!(kind(without("portals")), "missing_property");
    assert_eq!(
        kind(without("ns_id")),
        "invalid_property",
        "no namespace named"
    );
    assert_eq!(
        kind(with("target_nqn", json!("iqn.2003-01.x:y"))),
        "invalid_property"
    );
    assert_eq!(
        kind(with("target_nqn", json!("nqn.x,hostnqn=evil"))),
        "unsafe_value",
        "an NQN cannot add an option to the kernel's option string"
    );
    assert_eq!(kind(with("portals", json!([]))), "invalid_property");
    assert_eq!(
        kind(with("portals", json!([["192.0.2.1", 4420]]))),
        "invalid_property"
    );
    assert_eq!(
        kind(with("portals", json!([["192.0.2.1", 4420, "rdma"]]))),
        "invalid_property"
    );
    assert_eq!(
        kind(with("portals", json!([["-x", 4420, "tcp"]]))),
        "invalid_property"
    );
    assert_eq!(
        kind(with("portals", json!([["192.0.2.1", 0, "tcp"]]))),
        "invalid_property"
    );
    assert_eq!(kind(with("ns_id", json!(0))), "invalid_property");
    assert_eq!(
        kind(with("ns_id", json!(4294967295u64))),
        "invalid_property"
    );
    assert_eq!(
        kind(with("vol_uuid", json!("not-a-uuid"))),
        "invalid_property"
    );
    assert_eq!(kind(with("volume_nguid", json!("abc"))), "invalid_property");
    assert_eq!(kind(with("volume_replicas", json!([]))), "invalid_property");
    assert_eq!(
        kind(with("dhchap_ctrl_secret", json!(DHCHAP))),
        "invalid_property"
    );
    for bad in [
        "DHHC-1:04:abc:",
        "DHHC-2:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:",
        "DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaS:",
        "DHHC-1:00:c2hvcnQ=:",
        "hunter2",
    ] {
        assert_eq!(
            kind(with("dhchap_secret", json!(bad))),
            "invalid_property",
            "{bad}"
        );
    }
    assert_eq!(
        kind(with("dhchap_secret", json!("DHHC-1:00:a,b:"))),
        "unsafe_value"
    );
}

#[test]
fn nvmeof_errors_never_contain_the_secret() {
    let secret = "DHHC-1:00:c2VjcmV0LXRoYXQtaXMtdG9vLXNob3J0:";
    let mut props = json!({"target_nqn": NQN, "portals": [["192.0.2.1", 4420, "tcp"]],
                           "ns_id": 1, "dhchap_secret": secret});
    let e = nvmeof(props.clone()).unwrap_err();
    assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
    props["dhchap_secret"] = json!("DHHC-1:00:bad secret:");
    let e = nvmeof(props).unwrap_err();
    assert!(!e.to_string().contains("bad secret"), "{e}");
    let spec = nvme_spec(nvmeof(json!({"target_nqn": NQN, "ns_id": 1,
        "portals": [["192.0.2.1", 4420, "tcp"]], "dhchap_secret": DHCHAP})));
    assert!(
        !format!("{spec:?}").contains("AAECAwQF"),
        "Debug shows no secret"
    );
}
