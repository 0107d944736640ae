//! A node rebooted while its conductor is down: its volumes come back from the node's own
//! target cache, unconfirmed, and the conductor's answer then decides as always.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{World, all_logs, files_under};
use tether::agent::{LocalStatus, StateDir, TARGETS_DIR};
use tether::protocol::{VolumeReport, VolumeState};

const PORTAL: &str = "192.0.2.40:3260";
const IQN: &str = "iqn.2003-01.org.example.array:offline";
const NQN: &str = "nqn.2024-01.org.example:offline";
const CHAP_PASSWORD: &str = "chap-OFFLINE-4b7e19";
const CEPHX_KEY: &str = "AQBIkAdrAAAAABAAc2VjcmV0cy10ZXN0LWtleQ==";
const DHCHAP: &str = "DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";

/// Waits until the agent's own status file (what `tether status` reads) satisfies `check`.
async fn wait_local(state: &Path, what: &str, check: impl Fn(&LocalStatus) -> bool) -> LocalStatus {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = StateDir::new(state).load_status().ok();
        if let Some(status) = status.filter(&check) {
            return status;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn local(status: &LocalStatus, target: Uuid) -> Option<&VolumeReport> {
    status
        .report
        .volumes
        .iter()
        .find(|v| v.target_uuid == target)
}

fn cached(state: &Path) -> Vec<String> {
    let mut names: Vec<String> = files_under(&state.join(TARGETS_DIR))
        .into_iter()
        .map(|(path, _)| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// An iSCSI volume with CHAP and a mount, an RBD image with its cephx key and an NVMe
/// namespace with a DH-HMAC-CHAP secret; the node reboots, the conductor is down, the RBD image
/// is unassigned meanwhile. All three come back unconfirmed, the mount with them; once the
/// conductor answers, the two still assigned stay without a second attach and the RBD image is
/// detached, its cached key removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_come_back_after_a_reboot_before_the_conductor_answers() {
    let World {
        dir: _dir,
        mut conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:05:01", true).await;
    node.kernel.require_chap(IQN, "node", CHAP_PASSWORD);
    node.kernel.require_rbd_key("cinder", CEPHX_KEY);
    node.kernel.nvme_namespaces(NQN, &[(1, None)]);
    node.kernel.require_dhchap(NQN, DHCHAP);
    let mount = json!({"mount": {"path": "/srv/offline", "fstype": "ext4", "mkfs": true}});
    let iscsi = op
        .assign(
            node_uuid,
            "iscsi",
            "vol-iscsi",
            json!({"target_portal": PORTAL, "target_iqn": IQN, "target_lun": 0,
                   "auth_method": "CHAP", "auth_username": "node",
                   "auth_password": CHAP_PASSWORD}),
            mount,
        )
        .await;
    let rbd = op
        .assign(
            node_uuid,
            "rbd",
            "vol-rbd",
            json!({"name": "volumes/offline", "hosts": ["192.0.2.41"],
                   "auth_username": "cinder", "auth_key": CEPHX_KEY}),
            json!({}),
        )
        .await;
    let nvme = op
        .assign(
            node_uuid,
            "nvmeof",
            "vol-nvme",
            json!({"target_nqn": NQN, "portals": [["192.0.2.42", 4420, "tcp"]], "ns_id": 1,
                   "dhchap_secret": DHCHAP}),
            json!({}),
        )
        .await;
    node.start_agent();
    op.wait_state(node_uuid, iscsi, VolumeState::Mounted).await;
    op.wait_state(node_uuid, rbd, VolumeState::Attached).await;
    op.wait_state(node_uuid, nvme, VolumeState::Attached).await;
    let state = node.state_dir();
    let mut expected: Vec<String> = [iscsi, rbd, nvme]
        .iter()
        .map(|t| format!("{t}.json"))
        .collect();
    expected.sort();
    assert_eq!(
        cached(&state),
        expected,
        "each attached volume's target is cached"
    );
    assert_eq!(mode(&state.join(TARGETS_DIR)), 0o700);
    for name in &expected {
        assert_eq!(mode(&state.join(TARGETS_DIR).join(name)), 0o600, "{name}");
    }

    node.stop_agent().await;
    node.kernel.reboot();
    op.unassign(rbd).await;
    conductor.stop().await;
    let before = node.kernel.stats();
    node.start_agent();
    let back = wait_local(&state, "the three volumes back, unconfirmed", |s| {
        [(iscsi, VolumeState::Mounted), (rbd, VolumeState::Attached)]
            .into_iter()
            .chain([(nvme, VolumeState::Attached)])
            .all(|(t, state)| local(s, t).is_some_and(|v| v.state == state && v.unconfirmed))
    })
    .await;
    assert_eq!(back.report.generation, None, "no answer yet");
    assert_eq!(
        local(&back, iscsi).unwrap().mountpoint.as_deref(),
        Some("/srv/offline")
    );
    let offline = node.kernel.stats();
    assert_eq!(offline.logins, before.logins + 1);
    assert_eq!(offline.maps, before.maps + 1);
    assert_eq!(offline.nvme_connects, before.nvme_connects + 1);
    assert_eq!(
        offline.mkfs, before.mkfs,
        "the file system is mounted, not made again"
    );

    conductor.restart().await;
    let answered = wait_local(&state, "the conductor's answer applied", |s| {
        s.report.generation.is_some() && local(s, rbd).is_none()
    })
    .await;
    for target in [iscsi, nvme] {
        let volume = local(&answered, target).unwrap();
        assert!(!volume.unconfirmed, "confirmed by the answer");
        assert!(matches!(
            volume.state,
            VolumeState::Attached | VolumeState::Mounted
        ));
    }
    // The conductor hears of it too, with no volume left unconfirmed.
    let heard = op
        .wait_report(node_uuid, "the detach reported", |s| {
            s.report
                .as_ref()
                .is_some_and(|r| r.volumes.len() == 2 && r.volumes.iter().all(|v| !v.unconfirmed))
        })
        .await;
    assert!(super::harness::volume(&heard, rbd).is_none());
    let after = node.kernel.stats();
    assert_eq!(after.logins, offline.logins, "no second login");
    assert_eq!(
        after.nvme_connects, offline.nvme_connects,
        "no second connect"
    );
    assert_eq!(
        after.unmaps,
        offline.unmaps + 1,
        "the unassigned image unmapped"
    );
    assert_eq!(node.kernel.mapping_count(), 0);
    expected.retain(|name| *name != format!("{rbd}.json"));
    assert_eq!(
        cached(&state),
        expected,
        "the detached volume's key removed"
    );
    node.stop_agent().await;

    // The secrets stay in the cache: not in logs, the status file or the record.
    let mut places = vec![("logs".to_string(), all_logs())];
    for (path, text) in files_under(&state) {
        if !path.starts_with(state.join(TARGETS_DIR)) && !path.ends_with("token") {
            places.push((path.display().to_string(), text));
        }
    }
    for (place, text) in &places {
        for secret in [CHAP_PASSWORD, CEPHX_KEY, DHCHAP] {
            assert!(!text.contains(secret), "a secret appeared in {place}");
        }
    }
}

/// With `offline_reattach = false` no target is cached (a cache left from before is removed),
/// and after a reboot with the conductor down the agent waits for it, as it did before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_offline_reattach_no_secret_is_kept_and_volumes_wait_for_the_conductor() {
    let World {
        dir: _dir,
        mut conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:05:02", true).await;
    let props: Value = json!({"target_portal": PORTAL, "target_iqn": IQN, "target_lun": 0});
    let volume = op
        .assign(node_uuid, "iscsi", "vol-wait", props, json!({}))
        .await;
    node.start_agent();
    op.wait_state(node_uuid, volume, VolumeState::Attached)
        .await;
    let state = node.state_dir();
    assert_eq!(cached(&state).len(), 1, "cached while the setting is on");
    node.stop_agent().await;

    node.offline_reattach = false;
    node.kernel.reboot();
    conductor.stop().await;
    node.start_agent();
    let waiting = wait_local(&state, "the agent started", |s| {
        s.conductor.contains("not contacted yet")
    })
    .await;
    assert!(!state.join(TARGETS_DIR).exists(), "the cache is removed");
    // Its node record stays, so it waits as an interrupted attach: unconfirmed, not attached.
    let [waits] = waiting.report.volumes.as_slice() else {
        panic!("{:?}", waiting.report.volumes)
    };
    assert!(
        waits.unconfirmed && waits.state == VolumeState::Failed,
        "{waits:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        node.kernel.session_count(PORTAL, IQN),
        0,
        "nothing attached"
    );

    conductor.restart().await;
    // The conductor's report is from before the reboot: the agent's own status is fresh.
    wait_local(&state, "attached once the conductor answered", |s| {
        s.report.generation.is_some()
            && local(s, volume).is_some_and(|v| v.state == VolumeState::Attached)
    })
    .await;
    assert_eq!(node.kernel.session_count(PORTAL, IQN), 1);
    assert!(!state.join(TARGETS_DIR).exists(), "still nothing cached");
    node.stop_agent().await;
}
