//! A path that goes down while a volume is attached: the volume stays attached (the kernel
//! reconnects its session) and is reported degraded until the path is back.

use serde_json::json;

use crate::harness::{World, iscsi_props, volume};
use tether::protocol::VolumeState;

const PORTAL: &str = "192.0.2.40:3260";
const IQN: &str = "iqn.2003-01.org.example.array:paths";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_gone_while_attached_is_reported_degraded_and_nothing_is_detached() {
    let World {
        dir: _dir,
        conductor: _conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:00:41", true).await;
    let target = op
        .assign(
            node_uuid,
            "iscsi",
            "vol-paths",
            iscsi_props(PORTAL, IQN, 0),
            json!({}),
        )
        .await;
    node.start_agent();
    let attached = op
        .wait_state(node_uuid, target, VolumeState::Attached)
        .await;
    assert_eq!(attached.degraded, None, "healthy at first");

    node.kernel.set_unreachable(PORTAL, true);
    let status = op
        .wait_report(node_uuid, "the volume reported degraded", |s| {
            volume(s, target).is_some_and(|v| v.degraded.is_some())
        })
        .await;
    let report = volume(&status, target).unwrap();
    assert_eq!(report.state, VolumeState::Attached, "still attached");
    let degraded = report.degraded.as_ref().unwrap();
    assert_eq!(degraded.kind, "path_down");
    assert!(
        degraded.message.contains(IQN) && degraded.message.contains("FAILED"),
        "says which session is down: {}",
        degraded.message
    );
    assert_eq!(node.kernel.session_count(PORTAL, IQN), 1, "not logged out");

    node.kernel.set_unreachable(PORTAL, false);
    let status = op
        .wait_report(node_uuid, "the volume healthy again", |s| {
            volume(s, target).is_some_and(|v| v.degraded.is_none())
        })
        .await;
    let report = volume(&status, target).unwrap();
    assert_eq!(report.state, VolumeState::Attached);
    assert_eq!(report.device_path, attached.device_path, "the same device");
    assert_eq!(
        node.kernel.session_count(PORTAL, IQN),
        1,
        "the same session"
    );
    node.stop_agent().await;
}
