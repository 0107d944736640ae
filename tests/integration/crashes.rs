//! The agent killed (as by SIGKILL) in the middle of its work: after a restart, what it made is
//! its own, attached once, and removed when unassigned; nothing it did not make is touched.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use uuid::Uuid;

use crate::harness::{Node, Operator, World, iscsi_props};
use tether::backend::simulated::SimKernel;
use tether::protocol::VolumeState;

const PORTAL: &str = "192.0.2.30:3260";
const IQNS: [&str; 4] = [
    "iqn.2003-01.org.example.array:crash-a",
    "iqn.2003-01.org.example.array:crash-b",
    "iqn.2003-01.org.example.array:crash-c",
    "iqn.2003-01.org.example.array:crash-d",
];

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Assigns LUN 0 of `iqn` at the test portal to the node as `volume`.
async fn assign(op: &Operator, node: Uuid, volume: &str, iqn: &str) -> Uuid {
    let props = iscsi_props(PORTAL, iqn, 0);
    op.assign(node, "iscsi", volume, props, json!({})).await
}

/// Waits until the node has no session to `iqn` and no node record for it.
async fn gone_from(node: &Node, iqn: &str) {
    let kernel = node.kernel.clone();
    until(&format!("no session to {iqn}"), || {
        kernel.session_count(PORTAL, iqn) == 0
    })
    .await;
    assert!(
        !kernel.record_exists(PORTAL, iqn),
        "{iqn}: node record deleted"
    );
}

/// Killed while four volumes on four targets were being attached, after their logins had
/// begun: the restarted agent took the sessions for someone else's, and left all four behind
/// for good once the volumes were unassigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_an_attach_made_before_a_crash_are_removed_at_unassign() {
    let World {
        dir: _dir,
        conductor: _conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:00:31", true).await;
    // Logins slow enough to kill the agent in the middle of them.
    node.kernel = Arc::new(SimKernel::new(Duration::from_millis(1500)));
    let mut targets = Vec::new();
    for (i, iqn) in IQNS.iter().enumerate() {
        targets.push(assign(&op, node_uuid, &format!("vol-{i}"), iqn).await);
    }
    // A session someone logged in by hand to a fifth target: never the agent's to remove.
    let foreign = "iqn.2003-01.org.example.array:by-hand";
    node.kernel.login_by_hand(PORTAL, foreign, &[0]);

    node.start_agent();
    let record = node.state_dir().join("volumes.json");
    until("the four intents in the record", || {
        std::fs::read_to_string(&record).is_ok_and(|r| r.matches("\"volume_type\"").count() == 4)
    })
    .await;
    node.kill_agent();
    let kernel = node.kernel.clone();
    until("the logins the killed agent began", || {
        IQNS.iter()
            .all(|iqn| kernel.session_count(PORTAL, iqn) == 1)
    })
    .await;
    // Their LUN scans too.
    tokio::time::sleep(Duration::from_millis(300)).await;

    node.start_agent();
    for target in &targets {
        op.wait_state(node_uuid, *target, VolumeState::Attached)
            .await;
    }
    for iqn in IQNS {
        assert_eq!(
            node.kernel.session_count(PORTAL, iqn),
            1,
            "{iqn}: attached once"
        );
    }
    for target in &targets {
        op.unassign(*target).await;
    }
    for target in &targets {
        op.wait_gone(node_uuid, *target).await;
    }
    for iqn in IQNS {
        gone_from(&node, iqn).await;
    }
    assert_eq!(
        node.kernel.session_count(PORTAL, foreign),
        1,
        "the foreign session stays"
    );
    node.stop_agent().await;
}

/// Killed after an attach began, and the volume unassigned while the agent was down: what the
/// attach made is removed at the next start, not left as foreign for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_interrupted_attach_made_goes_when_the_volume_was_unassigned_meanwhile() {
    let World {
        dir: _dir,
        conductor: _conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:00:32", true).await;
    node.kernel = Arc::new(SimKernel::new(Duration::from_millis(1000)));
    let target = assign(&op, node_uuid, "vol-gone", IQNS[0]).await;
    node.start_agent();
    let record = node.state_dir().join("volumes.json");
    until("the intent in the record", || {
        std::fs::read_to_string(&record).is_ok_and(|r| r.contains("\"intents\""))
    })
    .await;
    node.kill_agent();
    let kernel = node.kernel.clone();
    until("the login", || kernel.session_count(PORTAL, IQNS[0]) == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    op.unassign(target).await;

    node.start_agent();
    op.wait_report(node_uuid, "a report without the volume", |s| {
        s.report
            .as_ref()
            .is_some_and(|r| r.generation.is_some() && r.volumes.is_empty())
    })
    .await;
    gone_from(&node, IQNS[0]).await;
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(!text.contains("intents"), "no intent left: {text}");
    node.stop_agent().await;
}

/// A detach stopped after it deleted the LUN's device, before its logout: the record still
/// lists the volume, the host no longer shows it whole, and the session stayed for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detach_that_stopped_halfway_is_finished_at_the_next_start() {
    let World {
        dir: _dir,
        conductor: _conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:00:33", true).await;
    let target = assign(&op, node_uuid, "vol-half", IQNS[1]).await;
    node.start_agent();
    op.wait_state(node_uuid, target, VolumeState::Attached)
        .await;
    node.kill_agent();
    node.kernel.delete_lun_by_hand(PORTAL, IQNS[1], 0);
    op.unassign(target).await;

    node.start_agent();
    op.wait_gone(node_uuid, target).await;
    gone_from(&node, IQNS[1]).await;
    node.stop_agent().await;
}

/// The node restarted, and its volume was unassigned meanwhile: the node record the agent made
/// (with the target's CHAP secret) stayed in /etc/iscsi for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_records_of_volumes_unassigned_across_a_reboot_are_deleted() {
    let World {
        dir: _dir,
        conductor: _conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:00:34", true).await;
    let kept = assign(&op, node_uuid, "vol-kept", IQNS[2]).await;
    let dropped = assign(&op, node_uuid, "vol-dropped", IQNS[3]).await;
    node.start_agent();
    op.wait_state(node_uuid, kept, VolumeState::Attached).await;
    op.wait_state(node_uuid, dropped, VolumeState::Attached)
        .await;
    node.kill_agent();
    node.kernel.reboot();
    op.unassign(dropped).await;

    node.start_agent();
    op.wait_gone(node_uuid, dropped).await;
    let kernel = node.kernel.clone();
    until("the dropped volume's node record deleted", || {
        !kernel.record_exists(PORTAL, IQNS[3])
    })
    .await;
    until("the kept volume logged in again", || {
        kernel.session_count(PORTAL, IQNS[2]) == 1
    })
    .await;
    op.wait_state(node_uuid, kept, VolumeState::Attached).await;
    assert!(node.kernel.record_exists(PORTAL, IQNS[2]));
    node.stop_agent().await;
}

/// The state directory refuses the record: the attach does not start, and it starts by itself
/// once the record can be written again (no other event comes to wake the agent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_waits_for_a_writable_record_and_then_goes_on_alone() {
    let World {
        dir: _dir,
        conductor: _conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:00:35", true).await;
    node.start_agent();
    op.wait_report(node_uuid, "a first report", |s| {
        s.report.as_ref().is_some_and(|r| r.generation.is_some())
    })
    .await;
    // A directory where the record goes: no write of it can succeed.
    let record = node.state_dir().join("volumes.json");
    std::fs::remove_file(&record).unwrap();
    std::fs::create_dir_all(record.join("blocker")).unwrap();
    let target = assign(&op, node_uuid, "vol-wait", IQNS[0]).await;
    let failed = op.wait_state(node_uuid, target, VolumeState::Failed).await;
    assert_eq!(failed.error.unwrap().kind, "record_unwritable");
    assert_eq!(
        node.kernel.session_count(PORTAL, IQNS[0]),
        0,
        "nothing attached"
    );
    std::fs::remove_dir_all(&record).unwrap();
    let started = Instant::now();
    op.wait_state(node_uuid, target, VolumeState::Attached)
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(record.is_file());
    node.stop_agent().await;
}
