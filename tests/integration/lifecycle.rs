//! Assign, unassign, restarts of either side, outages, malformed targets, shared sessions.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{World, iscsi_props};
use tether::protocol::VolumeState;

const PORTAL: &str = "192.0.2.10:3260";
const IQN_A: &str = "iqn.2003-01.org.linux-iscsi.array:a";
const IQN_B: &str = "iqn.2003-01.org.linux-iscsi.array:b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assign_reports_the_device_and_unassign_detaches_it() {
    let World {
        dir: _dir,
        conductor: _conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:00:01", true).await;
    node.start_agent();

    let target = op
        .assign(
            node_uuid,
            "iscsi",
            "vol-1",
            iscsi_props(PORTAL, IQN_A, 0),
            json!({}),
        )
        .await;
    let report = op
        .wait_state(node_uuid, target, VolumeState::Attached)
        .await;
    assert_eq!(
        report.device_path.as_deref(),
        Some(format!("/dev/disk/by-path/ip-{PORTAL}-iscsi-{IQN_A}-lun-0").as_str())
    );
    assert_eq!(report.size_bytes, Some(1 << 30));
    assert!(report.wwn.is_some());
    assert_eq!(node.kernel.session_count(PORTAL, IQN_A), 1);
    assert!(node.kernel.record_exists(PORTAL, IQN_A));
    let status = op.status(node_uuid).await;
    let hb = status.report.unwrap();
    assert!(hb.generation.is_some_and(|g| g > 0), "{:?}", hb.generation);
    assert!(
        hb.connectors.iter().any(
            |c| c.connector_type == "iqn" && c.connector_id == "iqn.1993-08.org.debian:01:node"
        )
    );

    op.unassign(target).await;
    op.wait_gone(node_uuid, target).await;
    assert_eq!(node.kernel.session_count(PORTAL, IQN_A), 0, "logged out");
    assert!(
        !node.kernel.record_exists(PORTAL, IQN_A),
        "node record deleted"
    );
    node.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_assignment_reaches_a_waiting_agent_at_once() {
    let World {
        dir: _dir,
        conductor: _conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:00:02", true).await;
    node.start_agent();
    // The agent is now parked in a 30 s long-poll with the empty assignment.
    op.wait_report(node_uuid, "a first report", |s| {
        s.report.as_ref().is_some_and(|r| r.generation.is_some())
    })
    .await;
    let started = Instant::now();
    let target = op
        .assign(
            node_uuid,
            "iscsi",
            "vol-1",
            iscsi_props(PORTAL, IQN_A, 0),
            json!({}),
        )
        .await;
    op.wait_state(node_uuid, target, VolumeState::Attached)
        .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "assignment took {took:?}; the long-poll did not wake"
    );
    node.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conductor_restart_keeps_state_and_outage_detaches_nothing() {
    let World {
        dir: _dir,
        mut conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:00:03", true).await;
    node.start_agent();
    let t1 = op
        .assign(
            node_uuid,
            "iscsi",
            "vol-1",
            iscsi_props(PORTAL, IQN_A, 0),
            json!({}),
        )
        .await;
    op.wait_state(node_uuid, t1, VolumeState::Attached).await;

    // Down for a while: nothing is detached.
    conductor.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        node.kernel.session_count(PORTAL, IQN_A),
        1,
        "an outage must not detach"
    );
    assert_eq!(node.kernel.stats().logouts, 0);

    // Back, from the same SQLite file: the node, its token and its target survived.
    conductor.restart().await;
    let seen_before = op.status(node_uuid).await.last_seen;
    let t2 = op
        .assign(
            node_uuid,
            "iscsi",
            "vol-2",
            iscsi_props(PORTAL, IQN_B, 0),
            json!({}),
        )
        .await;
    op.wait_state(node_uuid, t2, VolumeState::Attached).await;
    op.wait_state(node_uuid, t1, VolumeState::Attached).await;
    assert_ne!(op.status(node_uuid).await.last_seen, None);
    let _ = seen_before;
    assert_eq!(
        node.kernel.stats().logins,
        2,
        "only the new volume logged in"
    );
    node.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_attaches_nothing_twice() {
    let World {
        dir: _dir,
        conductor: _conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:00:04", true).await;
    node.start_agent();
    let t1 = op
        .assign(
            node_uuid,
            "iscsi",
            "vol-1",
            iscsi_props(PORTAL, IQN_A, 0),
            json!({}),
        )
        .await;
    let t2 = op
        .assign(
            node_uuid,
            "rbd",
            "vol-2",
            json!({"name": "volumes/img", "hosts": ["192.0.2.20"], "auth_enabled": false}),
            json!({}),
        )
        .await;
    let before1 = op.wait_state(node_uuid, t1, VolumeState::Attached).await;
    let before2 = op.wait_state(node_uuid, t2, VolumeState::Attached).await;
    let stats = node.kernel.stats();

    // Stopping (SIGTERM) detaches nothing; starting again attaches nothing.
    node.stop_agent().await;
    assert_eq!(node.kernel.session_count(PORTAL, IQN_A), 1);
    assert_eq!(node.kernel.mapping_count(), 1);
    node.start_agent();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after1 = op.wait_state(node_uuid, t1, VolumeState::Attached).await;
    let after2 = op.wait_state(node_uuid, t2, VolumeState::Attached).await;
    assert_eq!(
        node.kernel.stats(),
        stats,
        "no login, map or logout after the restart"
    );
    assert_eq!(
        (after1.device_path, after2.device_path),
        (before1.device_path, before2.device_path)
    );
    assert!(
        op.status(node_uuid)
            .await
            .report
            .unwrap()
            .foreign
            .is_empty(),
        "its own volumes are not foreign"
    );
    node.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_targets_fail_alone_with_stable_kinds() {
    // As a conductor that mirrors another source would: targets are stored as they come.
    let World {
        dir: _dir,
        conductor: _conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:00:05", false).await;
    let cases = [
        (
            "iscsi",
            iscsi_props(PORTAL, "iqn.2003-01.bad name", 0),
            "invalid_iqn",
        ),
        (
            "iscsi",
            iscsi_props("192.0.2.10", IQN_A, 0),
            "invalid_portal",
        ),
        ("iscsi", iscsi_props(PORTAL, IQN_A, 70000), "invalid_lun"),
        (
            "iscsi",
            iscsi_props(PORTAL, "iqn.2003-01.org.x:$(reboot)", 0),
            "invalid_iqn",
        ),
        (
            "iscsi",
            json!({"target_portal": PORTAL, "target_iqn": IQN_A, "target_lun": 0,
                   "auth_method": "CHAP", "auth_username": "u;rm -rf /", "auth_password": "p"}),
            "unsafe_value",
        ),
        ("nvme", json!({}), "unknown_volume_type"),
        (
            "iscsi",
            json!({"target_portal": PORTAL}),
            "missing_property",
        ),
    ];
    let mut bad = Vec::new();
    for (i, (volume_type, props, kind)) in cases.iter().enumerate() {
        bad.push((
            op.assign(
                node_uuid,
                volume_type,
                &format!("bad-{i}"),
                props.clone(),
                json!({}),
            )
            .await,
            *kind,
        ));
    }
    let good = op
        .assign(
            node_uuid,
            "iscsi",
            "good",
            iscsi_props(PORTAL, IQN_B, 0),
            json!({}),
        )
        .await;
    node.start_agent();
    op.wait_state(node_uuid, good, VolumeState::Attached).await;
    for (target, kind) in bad {
        let report = op.wait_state(node_uuid, target, VolumeState::Failed).await;
        let error = report.error.expect("a failed volume carries its error");
        assert_eq!(error.kind, kind, "{}", error.message);
        assert!(!error.message.is_empty());
    }
    assert_eq!(
        node.kernel.stats().logins,
        1,
        "nothing ran for the malformed targets"
    );
    node.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validating_conductor_refuses_malformed_targets_and_masked_secrets() {
    let World {
        dir: _dir,
        conductor: _conductor,
        op,
        node_uuid,
        ..
    } = World::start("52:54:00:00:00:06", true).await;
    let post = |props: serde_json::Value| {
        let op = op.clone();
        async move {
            op.request(
                reqwest::Method::POST,
                "/v1/volume/targets",
                Some(
                    json!({"node_uuid": node_uuid, "volume_type": "iscsi", "volume_id": "v",
                            "properties": props}),
                ),
            )
            .await
        }
    };
    let (status, body) = post(iscsi_props("192.0.2.10", IQN_A, 0)).await;
    assert_eq!(
        (status, body["error"]["kind"].as_str()),
        (400, Some("invalid_portal"))
    );
    let (status, body) = post(
        json!({"target_portal": PORTAL, "target_iqn": IQN_A, "target_lun": 0,
        "auth_method": "CHAP", "auth_username": "u", "auth_password": "******"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["kind"].as_str()),
        (400, Some("masked_secret"))
    );
    let (status, body) = op
        .request(
            reqwest::Method::POST,
            "/v1/volume/targets",
            Some(
                json!({"node_uuid": node_uuid, "volume_type": "iscsi", "volume_id": "v",
                        "colour": "red"}),
            ),
        )
        .await;
    assert_eq!(
        (status, body["error"]["kind"].as_str()),
        (400, Some("invalid_request"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("colour")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn luns_of_one_target_log_in_once_and_targets_attach_in_parallel() {
    let World {
        dir: _dir,
        conductor: _conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:00:07", true).await;
    node.start_agent();
    let mut targets = Vec::new();
    for lun in 0..4 {
        targets.push(
            op.assign(
                node_uuid,
                "iscsi",
                &format!("a-{lun}"),
                iscsi_props(PORTAL, IQN_A, lun),
                json!({}),
            )
            .await,
        );
    }
    targets.push(
        op.assign(
            node_uuid,
            "iscsi",
            "b-0",
            iscsi_props(PORTAL, IQN_B, 0),
            json!({}),
        )
        .await,
    );
    for t in &targets {
        op.wait_state(node_uuid, *t, VolumeState::Attached).await;
    }
    assert_eq!(node.kernel.session_count(PORTAL, IQN_A), 1);
    assert_eq!(node.kernel.session_count(PORTAL, IQN_B), 1);
    assert_eq!(node.kernel.stats().max_concurrent_logins_per_target, 1);

    // Unassigning one LUN keeps the session for the others; the last one logs out.
    op.unassign(targets[0]).await;
    op.wait_gone(node_uuid, targets[0]).await;
    assert_eq!(node.kernel.session_count(PORTAL, IQN_A), 1);
    for t in &targets[1..4] {
        op.unassign(*t).await;
    }
    for t in &targets[1..4] {
        op.wait_gone(node_uuid, *t).await;
    }
    assert_eq!(
        node.kernel.session_count(PORTAL, IQN_A),
        0,
        "the last LUN logged the session out"
    );
    assert_eq!(node.kernel.session_count(PORTAL, IQN_B), 1);
    node.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_sessions_are_reported_and_never_touched() {
    let World {
        dir: _dir,
        conductor: _conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:00:08", true).await;
    node.kernel.login_by_hand(PORTAL, IQN_B, &[0]);
    node.start_agent();
    let t = op
        .assign(
            node_uuid,
            "iscsi",
            "vol-1",
            iscsi_props(PORTAL, IQN_A, 0),
            json!({}),
        )
        .await;
    op.wait_state(node_uuid, t, VolumeState::Attached).await;
    let status = op
        .wait_report(node_uuid, "the foreign session reported", |s| {
            s.report
                .as_ref()
                .is_some_and(|r| r.foreign.iter().any(|f| f.description.contains(IQN_B)))
        })
        .await;
    assert_eq!(status.report.unwrap().foreign.len(), 1);
    op.unassign(t).await;
    op.wait_gone(node_uuid, t).await;
    assert_eq!(
        node.kernel.session_count(PORTAL, IQN_B),
        1,
        "the foreign session stays"
    );
    assert!(node.kernel.record_exists(PORTAL, IQN_B));
    node.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_in_use_is_detach_blocked_until_released() {
    let World {
        dir: _dir,
        conductor: _conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:00:09", true).await;
    node.start_agent();
    let t = op
        .assign(
            node_uuid,
            "iscsi",
            "vol-1",
            iscsi_props(PORTAL, IQN_A, 0),
            json!({}),
        )
        .await;
    op.wait_state(node_uuid, t, VolumeState::Attached).await;
    node.kernel.mount_by_hand("sda", "/mnt/admin");
    op.unassign(t).await;
    let blocked = op
        .wait_state(node_uuid, t, VolumeState::DetachBlocked)
        .await;
    let error = blocked.error.unwrap();
    assert_eq!(error.kind, "device_in_use");
    assert!(error.message.contains("/mnt/admin"), "{}", error.message);
    assert_eq!(node.kernel.session_count(PORTAL, IQN_A), 1);
    node.kernel.unmount_by_hand("/mnt/admin");
    op.wait_gone(node_uuid, t).await;
    assert_eq!(node.kernel.session_count(PORTAL, IQN_A), 0);
    node.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_formats_once_and_survives_reassignment() {
    let World {
        dir: _dir,
        conductor: _conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:00:0a", true).await;
    node.start_agent();
    let mount = json!({"mount": {"path": "/srv/data", "fstype": "ext4", "mkfs": true}});
    let t = op
        .assign(
            node_uuid,
            "iscsi",
            "vol-1",
            iscsi_props(PORTAL, IQN_A, 0),
            mount.clone(),
        )
        .await;
    let report = op.wait_state(node_uuid, t, VolumeState::Mounted).await;
    assert_eq!(report.mountpoint.as_deref(), Some("/srv/data"));
    op.unassign(t).await;
    op.wait_gone(node_uuid, t).await;
    assert_eq!(node.kernel.session_count(PORTAL, IQN_A), 0);
    // The array kept the filesystem: attaching again mounts it without formatting.
    let t2 = op
        .assign(
            node_uuid,
            "iscsi",
            "vol-1",
            iscsi_props(PORTAL, IQN_A, 0),
            mount,
        )
        .await;
    op.wait_state(node_uuid, t2, VolumeState::Mounted).await;
    assert_eq!(
        node.kernel.stats().mkfs,
        1,
        "a volume that holds data is never formatted"
    );
    node.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_portal_fails_one_volume_and_retries() {
    let World {
        dir: _dir,
        conductor: _conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:00:0b", true).await;
    node.kernel.set_unreachable("192.0.2.99:3260", true);
    node.start_agent();
    let bad = op
        .assign(
            node_uuid,
            "iscsi",
            "far",
            iscsi_props("192.0.2.99:3260", IQN_A, 0),
            json!({}),
        )
        .await;
    let good = op
        .assign(
            node_uuid,
            "iscsi",
            "near",
            iscsi_props(PORTAL, IQN_B, 0),
            json!({}),
        )
        .await;
    op.wait_state(node_uuid, good, VolumeState::Attached).await;
    let failed = op.wait_state(node_uuid, bad, VolumeState::Failed).await;
    assert_eq!(failed.error.unwrap().kind, "portal_unreachable");
    node.kernel.set_unreachable("192.0.2.99:3260", false);
    op.wait_state(node_uuid, bad, VolumeState::Attached).await;
    node.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_that_times_out_leaves_no_mapping_behind() {
    let World {
        dir: _dir,
        conductor: _conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:00:0c", true).await;
    node.kernel.time_out_maps_after_mapping(true);
    node.start_agent();
    let rbd = json!({"name": "volumes/late", "hosts": ["192.0.2.20"], "auth_enabled": false});
    let t = op.assign(node_uuid, "rbd", "late", rbd, json!({})).await;
    let failed = op.wait_state(node_uuid, t, VolumeState::Failed).await;
    assert_eq!(failed.error.unwrap().kind, "cluster_unreachable");
    assert_eq!(
        node.kernel.mapping_count(),
        0,
        "the late mapping was undone"
    );
    node.kernel.time_out_maps_after_mapping(false);
    op.wait_state(node_uuid, t, VolumeState::Attached).await;
    assert_eq!(node.kernel.mapping_count(), 1);
    node.stop_agent().await;
}
