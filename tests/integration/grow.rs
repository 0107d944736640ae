//! Volumes that grow while attached: the conductor records the new size, the agent rescans,
//! waits for the device to reach it and grows the file system; a device that does not grow is
//! an error on a volume that stays mounted, retried; nothing ever shrinks. And NVMe-oF
//! namespaces of one subsystem sharing one controller, through the whole stack.

use serde_json::json;

use crate::harness::{World, iscsi_props};
use tether::backend::simulated::DEFAULT_LUN_SIZE;
use tether::protocol::VolumeState;

const GIB: u64 = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grown_volume_grows_on_the_node_with_its_file_system() {
    let World {
        dir: _dir,
        conductor: _conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:07:01", true).await;
    node.start_agent();
    let props = iscsi_props("192.0.2.10:3260", "iqn.2003-01.org.example:grow", 0);
    let mount = json!({"mount": {"path": "/srv/grow", "fstype": "ext4", "mkfs": true,
                                 "grow": true}});
    let target = op.assign(node_uuid, "iscsi", "grow", props, mount).await;
    let before = op.wait_state(node_uuid, target, VolumeState::Mounted).await;
    assert_eq!(before.size_bytes, Some(DEFAULT_LUN_SIZE));

    // The conductor hears of the new size before the storage has it: the rescan finds the old
    // size, the volume stays mounted and says why, and is tried again.
    let path = format!("/v1/volume/targets/{target}");
    let (status, body) = op
        .request(
            reqwest::Method::PATCH,
            &path,
            Some(json!({"size_bytes": 2 * GIB})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["size_bytes"], 2 * GIB);
    let waiting = op
        .wait_report(node_uuid, "a grow that timed out", |s| {
            crate::harness::volume(s, target).is_some_and(|v| v.error.is_some())
        })
        .await;
    let volume = crate::harness::volume(&waiting, target).unwrap();
    assert_eq!(volume.state, VolumeState::Mounted, "it stays mounted");
    let error = volume.error.as_ref().unwrap();
    assert_eq!(error.kind, "device_timeout", "{}", error.message);
    assert!(
        error.message.contains(&(2 * GIB).to_string()),
        "{}",
        error.message
    );
    assert_eq!(node.kernel.stats().filesystem_grows, 0);

    let kernel_name = node
        .kernel
        .mounts_by_path("/srv/grow")
        .expect("the volume is mounted");
    node.kernel.grow_device(&kernel_name, 2 * GIB);
    let grown = op
        .wait_report(node_uuid, "the volume at its new size", |s| {
            crate::harness::volume(s, target)
                .is_some_and(|v| v.size_bytes == Some(2 * GIB) && v.error.is_none())
        })
        .await;
    assert_eq!(
        crate::harness::volume(&grown, target).unwrap().state,
        VolumeState::Mounted
    );
    assert_eq!(
        node.kernel.stats().filesystem_grows,
        1,
        "resize2fs ran once"
    );

    // Volumes never shrink; the same size again changes nothing.
    let (status, body) = op
        .request(
            reqwest::Method::PATCH,
            &path,
            Some(json!({"size_bytes": GIB})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["kind"].as_str()),
        (400, Some("shrink_refused")),
        "{body}"
    );
    let generation = op.status(node_uuid).await.generation;
    let (status, _) = op
        .request(
            reqwest::Method::PATCH,
            &path,
            Some(json!({"size_bytes": 2 * GIB})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(op.status(node_uuid).await.generation, generation);
    node.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_of_one_subsystem_share_a_controller_end_to_end() {
    let World {
        dir: _dir,
        conductor: _conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:07:02", true).await;
    let nqn = "nqn.2024-01.org.example:shared";
    let uuid1 = "0f9c1b7e-2a4d-4c3b-9e8f-000000000001";
    node.kernel
        .nvme_namespaces(nqn, &[(1, Some(uuid1)), (2, None)]);
    node.start_agent();
    let portal = json!([["192.0.2.20", 4420, "tcp"]]);
    let one = op
        .assign(
            node_uuid,
            "nvmeof",
            "ns-1",
            json!({"target_nqn": nqn, "portals": portal, "vol_uuid": uuid1}),
            json!({}),
        )
        .await;
    let two = op
        .assign(
            node_uuid,
            "nvmeof",
            "ns-2",
            json!({"nqn": nqn, "target_portal": "192.0.2.20", "target_port": 4420,
                   "ns_id": 2}),
            json!({}),
        )
        .await;
    let first = op.wait_state(node_uuid, one, VolumeState::Attached).await;
    assert_eq!(
        first.device_path.as_deref(),
        Some(format!("/dev/disk/by-id/nvme-uuid.{uuid1}").as_str())
    );
    op.wait_state(node_uuid, two, VolumeState::Attached).await;
    assert_eq!(node.kernel.controller_count("192.0.2.20:4420", nqn), 1);
    op.unassign(one).await;
    op.wait_gone(node_uuid, one).await;
    assert_eq!(node.kernel.controller_count("192.0.2.20:4420", nqn), 1);
    op.unassign(two).await;
    op.wait_gone(node_uuid, two).await;
    assert_eq!(node.kernel.controller_count("192.0.2.20:4420", nqn), 0);
    let stats = node.kernel.stats();
    assert_eq!((stats.nvme_connects, stats.nvme_disconnects), (1, 1));
    node.stop_agent().await;
}
