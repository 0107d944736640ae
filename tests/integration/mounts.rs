//! extra.mount on a node: refused where the system lives, outside the node's prefixes or with
//! options it does not allow, each failing alone with its kind; nosuid,nodev by default.

use serde_json::{Value, json};

use crate::harness::{World, iscsi_props};
use tether::protocol::VolumeState;

const PORTAL: &str = "192.0.2.10:3260";

fn iqn(name: &str) -> String {
    format!("iqn.2003-01.org.linux-iscsi.array:{name}")
}

fn mount(path: &str, options: Option<&str>) -> Value {
    json!({"mount": {"path": path, "fstype": "ext4", "options": options, "mkfs": true}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_the_node_refuses_fails_alone_as_mount_refused() {
    let World {
        dir: _dir,
        conductor: _conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:01:01", true).await;
    node.start_agent();
    let mut refused = Vec::new();
    for (name, path, options, why) in [
        ("opt", "/opt/data", None, "agent.mount_prefixes"),
        ("srvx", "/srvx/data", None, "agent.mount_prefixes"),
        (
            "suid",
            "/srv/suid",
            Some("suid"),
            "agent.mount_allow_suid_dev",
        ),
        (
            "dev",
            "/mnt/dev",
            Some("noatime,dev"),
            "agent.mount_allow_suid_dev",
        ),
    ] {
        let props = iscsi_props(PORTAL, &iqn(name), 0);
        let target = op
            .assign(node_uuid, "iscsi", name, props, mount(path, options))
            .await;
        refused.push((target, why));
    }
    let props = iscsi_props(PORTAL, &iqn("good"), 0);
    let good = op
        .assign(
            node_uuid,
            "iscsi",
            "good",
            props,
            mount("/srv/data", Some("noatime")),
        )
        .await;
    let report = op.wait_state(node_uuid, good, VolumeState::Mounted).await;
    assert_eq!(report.mountpoint.as_deref(), Some("/srv/data"));
    for (target, why) in refused {
        let failed = op.wait_state(node_uuid, target, VolumeState::Failed).await;
        let error = failed.error.unwrap();
        assert_eq!(error.kind, "mount_refused", "{}", error.message);
        assert!(error.message.contains(why), "{}", error.message);
        assert_eq!(failed.mountpoint, None);
    }
    assert_eq!(
        node.kernel.stats().mkfs,
        1,
        "only the allowed volume was formatted"
    );
    assert_eq!(
        node.kernel.mount_options("/srv/data").as_deref(),
        Some("noatime,nosuid,nodev")
    );
    node.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_paths_and_unsafe_options_are_invalid_at_the_conductor_and_the_agent() {
    let cases = [
        ("/etc/ssh", None),
        ("/usr/bin", None),
        ("/lib", None),
        ("/boot/efi", None),
        ("/var/lib/tether", None),
        ("/srv/x", Some("bind")),
        ("/srv/x", Some("X-mount.mkdir")),
        ("/srv/../etc", None),
    ];
    // A validating conductor refuses them at creation.
    let World {
        dir: _dir,
        conductor: _conductor,
        op,
        node_uuid,
        node: _node,
    } = World::start("52:54:00:00:01:02", true).await;
    for (path, options) in cases {
        let (status, body) = op
            .request(
                reqwest::Method::POST,
                "/v1/volume/targets",
                Some(json!({"node_uuid": node_uuid, "volume_type": "iscsi",
                            "volume_id": "v", "properties": iscsi_props(PORTAL, &iqn("a"), 0),
                            "extra": mount(path, options)})),
            )
            .await;
        assert_eq!(status, 400, "{path} {options:?}: {body}");
        assert_eq!(body["error"]["kind"], "invalid_mount", "{body}");
    }
    // One that stores targets as they come: the agent refuses them before anything runs.
    let World {
        dir: _dir,
        conductor: _conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:01:03", false).await;
    node.start_agent();
    let mut targets = Vec::new();
    for (n, (path, options)) in cases.into_iter().enumerate() {
        let props = iscsi_props(PORTAL, &iqn(&format!("t{n}")), 0);
        let volume_id = format!("v{n}");
        let extra = mount(path, options);
        targets.push(
            op.assign(node_uuid, "iscsi", &volume_id, props, extra)
                .await,
        );
    }
    for target in targets {
        let failed = op.wait_state(node_uuid, target, VolumeState::Failed).await;
        assert_eq!(failed.error.unwrap().kind, "invalid_mount");
    }
    assert_eq!(node.kernel.stats().logins, 0, "nothing was run");
    node.stop_agent().await;
}
