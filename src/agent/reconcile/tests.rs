use std::time::SystemTime;

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::agent::apply::{self, Outcome as HostOutcome};
use crate::agent::volume::Phase;
use crate::backend::{
    Attachment, BackendAttachment, BlockDevice, IscsiAttachment, IscsiPathAttachment,
    NvmeAttachment, NvmeControllerAttachment, RbdAttachment,
};
use crate::protocol::VolumeTarget;
use crate::protocol::target::{BackendSpec, SessionKey, parse};

const IQN_X: &str = "iqn.2003-01.org.example:x";
const IQN_Y: &str = "iqn.2003-01.org.example:y";

fn uuid(n: u8) -> Uuid {
    Uuid::from_bytes([n; 16])
}

/// The pool of targets the conductor may assign: two LUNs of one target, another target on
/// the same portal, an RBD image, an invalid target, a multipath volume sharing a session, and
/// two namespaces of one NVMe subsystem (one controller).
fn pool() -> Vec<VolumeTarget> {
    let iscsi = |portal: &str, iqn: &str, lun: u32| {
        json!({"target_portal": portal, "target_iqn": iqn,
               "target_lun": lun})
    };
    let nvme = |nsid: u32| {
        json!({"target_nqn": "nqn.2024-01.org.example:sub",
               "portals": [["192.0.2.3", 4420, "tcp"]], "ns_id": nsid})
    };
    let entries = vec![
        ("iscsi", iscsi("192.0.2.1:3260", IQN_X, 0)),
        ("iscsi", iscsi("192.0.2.1:3260", IQN_X, 1)),
        ("iscsi", iscsi("192.0.2.1:3260", IQN_Y, 0)),
        (
            "rbd",
            json!({"name": "rbd/img", "hosts": ["192.0.2.9"], "auth_enabled": false}),
        ),
        ("iscsi", iscsi("192.0.2.1:3260", "iqn.bad", 0)),
        (
            "iscsi",
            json!({"target_portals": ["192.0.2.1:3260", "192.0.2.2:3260"],
                   "target_iqns": [IQN_X, IQN_X], "target_luns": [2, 2]}),
        ),
        ("nvmeof", nvme(1)),
        ("nvmeof", nvme(2)),
    ];
    entries
        .into_iter()
        .enumerate()
        .map(|(i, (volume_type, props))| VolumeTarget {
            uuid: uuid(i as u8 + 1),
            node_uuid: Uuid::nil(),
            volume_type: volume_type.into(),
            volume_id: format!("vol-{i}"),
            boot_index: None,
            properties: props.as_object().unwrap().clone(),
            extra: Default::default(),
            size_bytes: None,
        })
        .collect()
}

fn assignment(generation: u64, mask: u8) -> Desired {
    sized_assignment(generation, mask, None)
}

/// The targets in the mask, each naming `size_bytes` as its volume's size.
fn sized_assignment(generation: u64, mask: u8, size_bytes: Option<u64>) -> Desired {
    let targets = pool()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, t)| {
            let t = VolumeTarget { size_bytes, ..t };
            DesiredTarget {
                uuid: t.uuid,
                volume_id: t.volume_id.clone(),
                volume_type: t.volume_type.clone(),
                spec: parse(&t),
            }
        })
        .collect();
    Desired::Known(Assignment {
        generation,
        targets,
    })
}

/// What the backend would return for a successful attach of `spec`.
fn attachment_for(spec: &TargetSpec) -> Attachment {
    let backend = match &spec.backend {
        BackendSpec::Iscsi(iscsi) => BackendAttachment::Iscsi(IscsiAttachment {
            paths: iscsi
                .paths
                .iter()
                .map(|p| IscsiPathAttachment {
                    session: p.session(),
                    lun: p.lun,
                    kernel_name: "sdx".into(),
                    session_created: true,
                    device_created: true,
                })
                .collect(),
            multipath: None,
        }),
        BackendSpec::Rbd(rbd) => BackendAttachment::Rbd(RbdAttachment {
            device_id: 0,
            pool: rbd.pool.clone(),
            namespace: None,
            image: rbd.image.clone(),
            mapped_by_agent: true,
        }),
        BackendSpec::Nvmeof(nvme) => BackendAttachment::Nvmeof(NvmeAttachment {
            controllers: nvme
                .portals
                .iter()
                .map(|p| NvmeControllerAttachment {
                    key: SessionKey::new(p, &nvme.subsys_nqn),
                    controller: "nvme0".into(),
                    created: true,
                })
                .collect(),
            namespace: nvme.namespace.clone(),
        }),
    };
    Attachment {
        device: BlockDevice {
            kernel_name: "sdx".into(),
            device_path: "/dev/x".into(),
            size_bytes: 1,
            wwn: None,
        },
        paths: vec!["/dev/x".into()],
        backend,
        mount: None,
    }
}

#[derive(Debug, Clone)]
enum Outcome {
    Success,
    Failure,
    Blocked,
}

#[derive(Debug, Clone)]
enum Step {
    /// A successful answer from the conductor assigning the targets in the mask; with `true`
    /// their volumes have grown beyond the devices attached.
    Answer(u8, bool),
    /// The conductor could not be reached or answered with an error: nothing changes.
    ConductorError,
    /// One in-flight operation finishes.
    Complete(usize, Outcome),
    Advance(u64),
    /// The agent restarts: running operations finish, state is rebuilt from the record.
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (any::<u8>(), any::<bool>()).prop_map(|(mask, grown)| Step::Answer(mask, grown)),
        Just(Step::ConductorError),
        (
            0usize..8,
            prop_oneof![
                Just(Outcome::Success),
                Just(Outcome::Failure),
                Just(Outcome::Blocked)
            ]
        )
            .prop_map(|(i, o)| Step::Complete(i, o)),
        (0u64..5_000).prop_map(Step::Advance),
        Just(Step::Restart),
    ]
}

struct Model {
    desired: Desired,
    volumes: BTreeMap<Uuid, Volume>,
    now: Millis,
    generation: u64,
}

const RETRY: Millis = 1_000;
/// A size larger than any device [`attachment_for`] makes.
const GROWN: u64 = 2;

impl Model {
    fn new() -> Self {
        Self {
            desired: Desired::Unknown,
            volumes: BTreeMap::new(),
            now: 0,
            generation: 0,
        }
    }

    fn specs(&self) -> BTreeMap<Uuid, TargetSpec> {
        match &self.desired {
            Desired::Known(a) => a
                .targets
                .iter()
                .filter_map(|t| t.spec.clone().ok().map(|s| (t.uuid, s)))
                .collect(),
            Desired::Unknown => BTreeMap::new(),
        }
    }

    /// Runs reconcile, checks the invariants on its plan, and applies it as the agent does.
    fn reconcile_and_apply(&mut self) -> usize {
        let plan = reconcile(&self.desired, &self.volumes, self.now);
        let t = SystemTime::UNIX_EPOCH;
        for action in &plan.actions {
            match action {
                Action::Attach(uuid) => {
                    let d = self
                        .desired
                        .target(*uuid)
                        .expect("attach of an undesired target");
                    assert!(d.spec.is_ok(), "attach of an invalid target");
                }
                Action::Detach(uuid) => {
                    let Desired::Known(a) = &self.desired else {
                        panic!("detach without a successful answer")
                    };
                    assert!(
                        a.targets.iter().all(|x| x.uuid != *uuid),
                        "detach of a target still assigned"
                    );
                }
                Action::Grow(uuid) => {
                    let d = self
                        .desired
                        .target(*uuid)
                        .expect("grow of an undesired target");
                    let wanted = d.spec.as_ref().ok().and_then(|s| s.size_bytes);
                    let size = self.volumes[uuid].size_bytes();
                    assert!(
                        wanted.is_some_and(|w| size.is_some_and(|s| s < w)),
                        "grow of {size:?} to {wanted:?}: volumes only grow"
                    );
                }
                Action::Forget(_) | Action::Reject(..) | Action::Keep(_) => {}
            }
            apply::apply(&mut self.volumes, &self.desired, action, t)
                .unwrap_or_else(|e| panic!("{action:?} could not be applied: {e}"));
        }
        // A detach in flight on a session is alone on it.
        let mut ops: BTreeMap<&SessionKey, (u32, u32)> = BTreeMap::new();
        for v in self.volumes.values().filter(|v| v.in_flight()) {
            for k in &v.sessions {
                let entry = ops.entry(k).or_default();
                if v.phase == Phase::Detaching {
                    entry.1 += 1;
                } else {
                    entry.0 += 1;
                }
            }
        }
        for (key, (attaches, detaches)) in ops {
            assert!(
                detaches == 0 || (detaches == 1 && attaches == 0),
                "a detach beside {attaches} attaches and {detaches} detaches on {key}"
            );
        }
        plan.actions.len()
    }

    fn in_flight(&self) -> Vec<Uuid> {
        self.volumes
            .values()
            .filter(|v| v.in_flight())
            .map(|v| v.target_uuid)
            .collect()
    }

    fn complete(&mut self, uuid: Uuid, outcome: &Outcome) {
        let t = SystemTime::UNIX_EPOCH;
        let specs = self.specs();
        let retry_at = self.now + RETRY;
        let phase = self.volumes[&uuid].phase.clone();
        if let Phase::Growing { size_bytes } = phase {
            let result = match outcome {
                Outcome::Success => HostOutcome::Grown(size_bytes),
                Outcome::Failure | Outcome::Blocked => HostOutcome::GrowFailed(err()),
            };
            apply::complete(&mut self.volumes, uuid, result, retry_at, t).unwrap();
            return;
        }
        let attaching = phase == Phase::Attaching;
        let result = match (attaching, outcome) {
            (true, Outcome::Success | Outcome::Blocked) => {
                // The spec may have left the assignment meanwhile; the agent kept the old one.
                let spec = specs.get(&uuid).cloned().unwrap_or_else(|| {
                    parse(pool().iter().find(|p| p.uuid == uuid).unwrap()).unwrap()
                });
                HostOutcome::Attached(attachment_for(&spec))
            }
            (true, Outcome::Failure) => HostOutcome::AttachFailed {
                error: err(),
                leftover: None,
            },
            (false, Outcome::Success) => HostOutcome::Detached {
                sessions_kept: Vec::new(),
            },
            (false, Outcome::Blocked) => HostOutcome::DetachBlocked(err()),
            (false, Outcome::Failure) => HostOutcome::DetachFailed(err()),
        };
        apply::complete(&mut self.volumes, uuid, result, retry_at, t).unwrap();
    }

    fn step(&mut self, step: &Step) {
        match step {
            Step::Answer(mask, grown) => {
                self.generation += 1;
                self.desired = sized_assignment(self.generation, *mask, grown.then_some(GROWN));
            }
            Step::ConductorError => {}
            Step::Complete(i, outcome) => {
                let in_flight = self.in_flight();
                if !in_flight.is_empty() {
                    self.complete(in_flight[i % in_flight.len()], outcome);
                }
            }
            Step::Advance(ms) => self.now += ms,
            Step::Restart => {
                for uuid in self.in_flight() {
                    self.complete(uuid, &Outcome::Success);
                }
                let t = SystemTime::UNIX_EPOCH;
                self.volumes = std::mem::take(&mut self.volumes)
                    .into_iter()
                    .filter_map(|(uuid, v)| {
                        v.attachment
                            .map(|a| (uuid, Volume::recovered(uuid, v.volume_id, a, t)))
                    })
                    .collect();
                self.desired = Desired::Unknown;
            }
        }
        self.reconcile_and_apply();
    }
}

fn err() -> ErrorReport {
    ErrorReport {
        kind: "portal_unreachable".into(),
        message: "m".into(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Over random assignments, volume growth, conductor errors, completions, time and
    /// restarts: nothing is detached without a successful answer that dropped it, no login
    /// races, nothing shrinks, and once faults stop every assigned volume ends attached (at
    /// its size) or failed with a reason.
    #[test]
    fn invariants_hold_over_random_histories(
        steps in proptest::collection::vec(step(), 1..60),
        last in any::<u8>(),
        grown in any::<bool>(),
    ) {
        let mut m = Model::new();
        for s in &steps {
            m.step(s);
        }
        m.step(&Step::Answer(last, grown));
        // Faults stop: every operation succeeds, retries fall due.
        for _ in 0..200 {
            for uuid in m.in_flight() {
                m.complete(uuid, &Outcome::Success);
            }
            m.now += 10 * RETRY;
            let actions = m.reconcile_and_apply();
            if actions == 0 && m.in_flight().is_empty() {
                break;
            }
        }
        let Desired::Known(a) = &m.desired else { unreachable!() };
        for t in &a.targets {
            let v = m.volumes.get(&t.uuid).expect("every assigned target is tracked");
            match &t.spec {
                Ok(spec) => {
                    prop_assert_eq!(v.state(), crate::protocol::VolumeState::Attached);
                    if let Some(wanted) = spec.size_bytes {
                        prop_assert!(v.size_bytes() >= Some(wanted), "{:?} did not grow", v);
                        prop_assert!(v.error().is_none());
                    }
                }
                Err(e) => {
                    prop_assert_eq!(v.state(), crate::protocol::VolumeState::Failed);
                    prop_assert_eq!(&v.error().unwrap().kind, e.kind());
                }
            }
        }
        prop_assert_eq!(m.volumes.len(), a.targets.len(), "unassigned volumes are gone");
    }
}

#[test]
fn unknown_desired_never_acts() {
    let mut volumes = BTreeMap::new();
    let spec = parse(&pool()[0]).unwrap();
    volumes.insert(
        uuid(1),
        Volume::recovered(
            uuid(1),
            "v".into(),
            attachment_for(&spec),
            SystemTime::UNIX_EPOCH,
        ),
    );
    assert_eq!(reconcile(&Desired::Unknown, &volumes, 0), Plan::default());
}

#[test]
fn luns_sharing_a_session_attach_together() {
    let desired = assignment(1, 0b000111);
    let plan = reconcile(&desired, &BTreeMap::new(), 0);
    assert_eq!(
        plan.actions,
        vec![
            Action::Attach(uuid(1)),
            Action::Attach(uuid(2)),
            Action::Attach(uuid(3))
        ]
    );
}

#[test]
fn an_attach_waits_for_a_detach_on_its_session() {
    let desired = assignment(2, 0b000010);
    let spec0 = parse(&pool()[0]).unwrap();
    let mut detaching = Volume::recovered(
        uuid(1),
        "vol-0".into(),
        attachment_for(&spec0),
        SystemTime::UNIX_EPOCH,
    );
    detaching.start_detach(SystemTime::UNIX_EPOCH).unwrap();
    let volumes = BTreeMap::from([(uuid(1), detaching)]);
    assert!(
        reconcile(&desired, &volumes, 0).actions.is_empty(),
        "vol-1 must wait for the logout"
    );
}

#[test]
fn failed_volume_waits_for_its_retry_without_blocking_others() {
    let desired = assignment(1, 0b001001);
    let mut volumes = BTreeMap::new();
    let mut failed = Volume::new(
        uuid(1),
        "vol-0".into(),
        "iscsi".into(),
        SystemTime::UNIX_EPOCH,
    );
    failed.start_attach(vec![], SystemTime::UNIX_EPOCH).unwrap();
    failed
        .attach_failed(err(), None, 5_000, SystemTime::UNIX_EPOCH)
        .unwrap();
    volumes.insert(uuid(1), failed);
    let plan = reconcile(&desired, &volumes, 1_000);
    assert_eq!(plan.actions, vec![Action::Attach(uuid(4))]);
    assert_eq!(plan.next_wake, Some(5_000));
    let later = reconcile(&desired, &volumes, 5_000);
    assert!(later.actions.contains(&Action::Attach(uuid(1))));
}

#[test]
fn invalid_target_is_rejected_once_with_its_kind() {
    let desired = assignment(1, 0b010000);
    let plan = reconcile(&desired, &BTreeMap::new(), 0);
    let [Action::Reject(id, report)] = plan.actions.as_slice() else {
        panic!("{plan:?}")
    };
    assert_eq!((*id, report.kind.as_str()), (uuid(5), "invalid_iqn"));
    let mut volumes = BTreeMap::new();
    let mut v = Volume::new(
        uuid(5),
        "vol-4".into(),
        "iscsi".into(),
        SystemTime::UNIX_EPOCH,
    );
    v.reject(report.clone(), SystemTime::UNIX_EPOCH).unwrap();
    volumes.insert(uuid(5), v);
    assert!(reconcile(&desired, &volumes, 0).actions.is_empty());
}
