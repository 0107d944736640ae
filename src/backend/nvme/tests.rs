//! The controller rules of [`NvmeBackend`] on the simulated kernel.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::backend::simulated::SimKernel;
use crate::protocol::target::{BackendSpec, parse};
use crate::protocol::{Secret, VolumeTarget};

const NQN: &str = "nqn.2024-01.test.tether:sub";
const PORTAL: &str = "127.0.0.1:4420";
const UUID_1: &str = "0f9c1b7e-2a4d-4c3b-9e8f-000000000001";
const UUID_2: &str = "0f9c1b7e-2a4d-4c3b-9e8f-000000000002";
const WAIT: Duration = Duration::from_secs(2);

fn spec(props: serde_json::Value) -> NvmeofSpec {
    let target: VolumeTarget = serde_json::from_value(serde_json::json!({
        "uuid": "5b1f1a1e-0000-4000-8000-000000000001",
        "node_uuid": "5b1f1a1e-0000-4000-8000-000000000002",
        "volume_type": "nvmeof",
        "volume_id": "vol-nvme",
        "properties": props,
    }))
    .unwrap();
    match parse(&target).unwrap().backend {
        BackendSpec::Nvmeof(spec) => spec,
        other => panic!("{other:?}"),
    }
}

fn by_uuid(uuid: &str) -> NvmeofSpec {
    spec(serde_json::json!({
        "target_nqn": NQN, "portals": [["127.0.0.1", 4420, "tcp"]], "vol_uuid": uuid,
    }))
}

fn setup() -> (Arc<SimKernel>, NvmeBackend<Arc<SimKernel>, Arc<SimKernel>>) {
    let kernel = Arc::new(SimKernel::new(Duration::ZERO));
    kernel.nvme_namespaces(NQN, &[(1, Some(UUID_1)), (2, Some(UUID_2))]);
    (kernel.clone(), NvmeBackend::new(kernel.clone(), kernel))
}

/// What the agent would pass while `others` (attached volumes' records) are owned.
fn ownership(others: &[&NvmeAttachment]) -> Ownership {
    let mut ownership = Ownership::default();
    for record in others {
        for c in &record.controllers {
            if c.created {
                ownership.owned_sessions.insert(c.key.clone());
            }
            ownership.sessions_used_by_others.insert(c.key.clone());
        }
    }
    ownership
}

fn detached(outcome: DetachOutcome) -> Vec<SessionKey> {
    match outcome {
        DetachOutcome::Detached { sessions_kept } => sessions_kept,
        DetachOutcome::Blocked { holder } => panic!("blocked by {holder}"),
    }
}

#[test]
fn two_namespaces_share_one_controller_until_the_last_detaches() {
    let (kernel, backend) = setup();
    let one = backend
        .attach(&by_uuid(UUID_1), false, &Ownership::default(), WAIT)
        .unwrap();
    assert_eq!(
        one.device.device_path,
        format!("/dev/disk/by-id/nvme-uuid.{UUID_1}")
    );
    assert!(one.record.controllers[0].created);
    let two = backend
        .attach(&by_uuid(UUID_2), false, &ownership(&[&one.record]), WAIT)
        .unwrap();
    assert!(
        !two.record.controllers[0].created,
        "the controller was there already"
    );
    assert_eq!(kernel.controller_count(PORTAL, NQN), 1);
    assert_ne!(one.device.kernel_name, two.device.kernel_name);

    // The first goes while the second still uses the controller: it stays, and passes to it.
    let kept = detached(
        backend
            .detach(&one.device, &one.record, &ownership(&[&two.record]))
            .unwrap(),
    );
    assert_eq!(kept, [one.record.controllers[0].key.clone()]);
    assert_eq!(kernel.controller_count(PORTAL, NQN), 1);

    let mut heir = two.record.clone();
    heir.controllers[0].created = true;
    detached(
        backend
            .detach(&two.device, &heir, &Ownership::default())
            .unwrap(),
    );
    assert_eq!(kernel.controller_count(PORTAL, NQN), 0);
    let stats = kernel.stats();
    assert_eq!((stats.nvme_connects, stats.nvme_disconnects), (1, 1));
}

#[test]
fn a_foreign_controller_is_used_and_never_disconnected() {
    let (kernel, backend) = setup();
    kernel.connect_by_hand(PORTAL, NQN);
    assert_eq!(backend.foreign(&[]).unwrap().len(), 1);
    let attached = backend
        .attach(&by_uuid(UUID_1), false, &Ownership::default(), WAIT)
        .unwrap();
    assert!(!attached.record.controllers[0].created);
    detached(
        backend
            .detach(&attached.device, &attached.record, &Ownership::default())
            .unwrap(),
    );
    assert_eq!(
        kernel.controller_count(PORTAL, NQN),
        1,
        "left as it was found"
    );
    assert_eq!(kernel.stats().nvme_disconnects, 0);
}

#[test]
fn a_controller_whose_other_namespace_is_mounted_stays() {
    let (kernel, backend) = setup();
    let attached = backend
        .attach(&by_uuid(UUID_1), false, &Ownership::default(), WAIT)
        .unwrap();
    let other = backend
        .host
        .controllers()
        .unwrap()
        .remove(0)
        .namespaces
        .into_iter()
        .find(|ns| ns.nsid == 2)
        .unwrap();
    kernel.mount_by_hand(&other.kernel_name, "/srv/someone-else");
    detached(
        backend
            .detach(&attached.device, &attached.record, &Ownership::default())
            .unwrap(),
    );
    assert_eq!(
        kernel.controller_count(PORTAL, NQN),
        1,
        "disconnecting would take namespace 2 from under its mount"
    );
    kernel.unmount_by_hand("/srv/someone-else");
    detached(
        backend
            .detach(&attached.device, &attached.record, &Ownership::default())
            .unwrap(),
    );
    assert_eq!(kernel.controller_count(PORTAL, NQN), 0);
}

#[test]
fn refusals_leave_no_controller() {
    let (kernel, backend) = setup();
    kernel.require_dhchap(
        NQN,
        "DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:",
    );
    let e = backend
        .attach(&by_uuid(UUID_1), false, &Ownership::default(), WAIT)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::AuthFailed);
    let mut right = by_uuid(UUID_1);
    right.dhchap = Some(crate::protocol::target::DhChap {
        host_secret: Secret::new("DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:"),
        ctrl_secret: None,
    });
    backend
        .attach(&right, false, &Ownership::default(), WAIT)
        .unwrap();

    kernel.set_unreachable("127.0.0.2:4420", true);
    let far = spec(serde_json::json!({
        "target_nqn": "nqn.2024-01.test.tether:far",
        "portals": [["127.0.0.2", 4420, "tcp"]], "ns_id": 1,
    }));
    let e = backend
        .attach(&far, false, &Ownership::default(), WAIT)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::PortalUnreachable);

    // A namespace the subsystem does not have: the controller made for it goes again.
    let missing = by_uuid("0f9c1b7e-2a4d-4c3b-9e8f-0000000000ff");
    let other = "nqn.2024-01.test.tether:other";
    kernel.nvme_namespaces(other, &[(1, Some(UUID_1))]);
    let missing = NvmeofSpec {
        subsys_nqn: other.into(),
        ..missing
    };
    let e = backend
        .attach(
            &missing,
            false,
            &Ownership::default(),
            Duration::from_millis(50),
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::DeviceTimeout);
    assert!(
        e.message.contains(SIM_HOST),
        "names the host NQN: {}",
        e.message
    );
    assert_eq!(kernel.controller_count(PORTAL, other), 0);
}

const SIM_HOST: &str = crate::backend::simulated::SIM_HOST_NQN;

#[test]
fn an_interrupted_attach_leaves_what_it_made_as_the_agents() {
    let (kernel, backend) = setup();
    let spec = by_uuid(UUID_1);
    let creations = backend.creations(&spec).unwrap();
    assert_eq!(creations.sessions.len(), 1);
    assert_eq!(
        backend.leftover(&creations).unwrap(),
        None,
        "nothing made yet"
    );
    kernel.connect_by_hand(PORTAL, NQN);
    let left = backend
        .leftover(&creations)
        .unwrap()
        .expect("the controller");
    assert!(left.record.controllers[0].created);
    assert_eq!(
        left.device.device_path,
        format!("/dev/disk/by-id/nvme-uuid.{UUID_1}")
    );
    assert!(backend.is_present(&left.record).unwrap());
    assert!(backend.foreign(&[&left.record]).unwrap().is_empty());
    assert!(
        backend.creations(&spec).unwrap().sessions.is_empty(),
        "nothing to make any more"
    );
}

#[test]
fn the_record_names_controllers_by_portal_and_subsystem() {
    let (_, backend) = setup();
    let attached = backend
        .attach(&by_uuid(UUID_1), false, &Ownership::default(), WAIT)
        .unwrap();
    let json = serde_json::to_value(&attached.record).unwrap();
    assert_eq!(json["controllers"][0]["portal"], PORTAL);
    assert_eq!(json["controllers"][0]["subsys_nqn"], NQN);
    assert_eq!(json["namespace"]["uuid"], UUID_1);
    let back: NvmeAttachment = serde_json::from_value(json).unwrap();
    assert_eq!(back, attached.record);
}
