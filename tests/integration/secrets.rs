//! CHAP passwords, cephx keys and tokens never show up where they should not.

use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use crate::harness::{ADMIN, World, all_logs, files_under};
use tether::protocol::VolumeState;

const CHAP_PASSWORD: &str = "chap-SECRET-7f3a91";
const MUTUAL_PASSWORD: &str = "mutual-SECRET-19c2";
const WRONG_PASSWORD: &str = "wrong-SECRET-5512ab";
const CEPHX_KEY: &str = "AQBIkAdrAAAAABAAc2VjcmV0cy10ZXN0LWtleQ==";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_errors_reports_reads_or_state_files() {
    let World {
        dir,
        conductor: _conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:02:01", true).await;
    let iqn = "iqn.2003-01.org.linux-iscsi.array:chap";
    let iqn_wrong = "iqn.2003-01.org.linux-iscsi.array:wrong";
    node.kernel.require_chap(iqn, "initiator", CHAP_PASSWORD);
    node.kernel
        .require_chap(iqn_wrong, "initiator", "the-right-one-xyz");
    node.kernel.require_rbd_key("cinder", CEPHX_KEY);
    node.start_agent();

    let chap = op
        .assign(
            node_uuid,
            "iscsi",
            "chap",
            json!({"target_portal": "192.0.2.10:3260", "target_iqn": iqn, "target_lun": 0,
                   "auth_method": "CHAP", "auth_username": "initiator",
                   "auth_password": CHAP_PASSWORD,
                   "auth_username_in": "target", "auth_password_in": MUTUAL_PASSWORD}),
            json!({}),
        )
        .await;
    let wrong = op
        .assign(
            node_uuid,
            "iscsi",
            "wrong",
            json!({"target_portal": "192.0.2.10:3260", "target_iqn": iqn_wrong, "target_lun": 0,
                   "auth_method": "CHAP", "auth_username": "initiator",
                   "auth_password": WRONG_PASSWORD}),
            json!({}),
        )
        .await;
    let rbd = op
        .assign(
            node_uuid,
            "rbd",
            "ceph",
            json!({"name": "volumes/v1", "hosts": ["192.0.2.30"], "ports": ["6789"],
                   "auth_username": "cinder", "auth_key": CEPHX_KEY}),
            json!({}),
        )
        .await;
    op.wait_state(node_uuid, chap, VolumeState::Attached).await;
    op.wait_state(node_uuid, rbd, VolumeState::Attached).await;
    let failed = op.wait_state(node_uuid, wrong, VolumeState::Failed).await;
    assert_eq!(failed.error.as_ref().unwrap().kind, "auth_failed");
    node.stop_agent().await;

    let agent_token = std::fs::read_to_string(node.state_dir().join("token"))
        .unwrap()
        .trim()
        .to_string();
    let secrets = [
        CHAP_PASSWORD,
        MUTUAL_PASSWORD,
        WRONG_PASSWORD,
        CEPHX_KEY,
        agent_token.as_str(),
        ADMIN,
    ];

    let mut places: Vec<(String, String)> = vec![("logs".into(), all_logs())];
    for path in [
        "/v1/volume/targets",
        &format!("/v1/volume/targets/{chap}"),
        &format!("/v1/volume/targets/{rbd}"),
        &format!("/v1/nodes/{node_uuid}/volume/status"),
        "/v1/nodes",
    ] {
        let (status, body) = op.request(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200);
        places.push((format!("operator read {path}"), body.to_string()));
    }
    let (_, listed) = op
        .request(reqwest::Method::GET, "/v1/volume/targets", None)
        .await;
    let listed_chap = listed["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["volume_id"] == "chap")
        .unwrap();
    assert_eq!(
        listed_chap["properties"]["auth_password"], "******",
        "secrets are masked, not dropped"
    );
    assert_eq!(listed_chap["properties"]["auth_password_in"], "******");
    let cache = node.state_dir().join(tether::agent::TARGETS_DIR);
    for (path, text) in files_under(&node.state_dir()) {
        // The token and the target cache (below) are the two places that hold them.
        let holds_secrets = path.ends_with("token") || path.starts_with(&cache);
        places.push((
            path.display().to_string(),
            if holds_secrets { String::new() } else { text },
        ));
    }
    for (place, text) in &places {
        for secret in &secrets {
            assert!(!text.contains(secret), "a secret appeared in {place}");
        }
    }

    // What does hold secrets is private to root: the cache keeps the attached volumes'.
    let cached = files_under(&cache);
    assert_eq!(cached.len(), 2, "the CHAP and the RBD volume: {cached:?}");
    assert!(cached.iter().any(|(_, text)| text.contains(CEPHX_KEY)));
    assert!(
        cached
            .iter()
            .all(|(_, text)| !text.contains(WRONG_PASSWORD))
    );
    assert_eq!(
        std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for path in cached
        .iter()
        .map(|(path, _)| path.clone())
        .chain([
            node.state_dir().join("token"),
            node.state_dir().join("volumes.json"),
            dir.path().join("conductor.db"),
        ])
        // On PostgreSQL (scripts/test-postgres) there is no database file.
        .filter(|path| {
            crate::harness::postgres_server().is_none() || !path.ends_with("conductor.db")
        })
    {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
    }
    assert_eq!(
        std::fs::metadata(node.state_dir())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
}

#[tokio::test]
async fn a_secret_placed_under_extra_is_masked_and_its_mask_refused() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = crate::harness::Conductor::start(dir.path(), true).await;
    let op = crate::harness::Operator::new(&conductor.url());
    let node = op.create_node("extra-secrets", "52:54:00:00:02:09").await;
    let target = |extra: serde_json::Value| {
        json!({"node_uuid": node, "volume_type": "iscsi", "volume_id": "extra",
               "properties": {"target_portal": "192.0.2.10:3260",
                              "target_iqn": "iqn.2003-01.org.example:extra", "target_lun": 0},
               "extra": extra})
    };
    let post = reqwest::Method::POST;
    let sent = json!({"backup": {"s3_secret_access_key": CHAP_PASSWORD}});
    let (status, created) = op
        .request(post.clone(), "/v1/volume/targets", Some(target(sent)))
        .await;
    assert_eq!(status, 201, "{created}");
    let (_, listed) = op
        .request(reqwest::Method::GET, "/v1/volume/targets", None)
        .await;
    for read in [&created, &listed] {
        assert!(!read.to_string().contains(CHAP_PASSWORD), "{read}");
    }
    assert_eq!(
        created["extra"]["backup"]["s3_secret_access_key"],
        tether::protocol::MASK
    );

    let (status, refused) = op
        .request(
            post,
            "/v1/volume/targets",
            Some(target(created["extra"].clone())),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["kind"], "masked_secret");
}
