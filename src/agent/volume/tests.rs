use super::*;
use crate::backend::{BackendAttachment, BlockDevice, MountRecord, RbdAttachment};

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH
}

fn err(kind: &str) -> ErrorReport {
    ErrorReport {
        kind: kind.into(),
        message: "m".into(),
    }
}

/// An RBD volume the agent mapped; the other modules' tests use it too.
pub(crate) fn attachment() -> Attachment {
    Attachment {
        device: BlockDevice {
            kernel_name: "rbd0".into(),
            device_path: "/dev/rbd/p/i".into(),
            size_bytes: 1,
            wwn: None,
        },
        paths: vec!["/dev/rbd/p/i".into()],
        backend: BackendAttachment::Rbd(RbdAttachment {
            device_id: 0,
            pool: "p".into(),
            namespace: None,
            image: "i".into(),
            mapped_by_agent: true,
        }),
        mount: None,
    }
}

/// Every phase the machine can be in, owned or not where both are possible.
fn all_states() -> Vec<(&'static str, Volume)> {
    let base = Volume::new(Uuid::nil(), "v".into(), "rbd".into(), t0());
    let with = |phase: Phase, owned: bool| Volume {
        phase,
        attachment: owned.then(attachment),
        ..base.clone()
    };
    let failed = |during, retry_at| Phase::Failed {
        error: err("x"),
        during,
        retry_at,
    };
    vec![
        ("pending", with(Phase::Pending, false)),
        ("attaching", with(Phase::Attaching, false)),
        ("attached", with(Phase::Attached, true)),
        ("growing", with(Phase::Growing { size_bytes: 2 }, true)),
        ("detaching", with(Phase::Detaching, true)),
        (
            "detach_blocked",
            with(
                Phase::DetachBlocked {
                    reason: err("device_in_use"),
                    retry_at: 5,
                },
                true,
            ),
        ),
        (
            "failed_attach",
            with(failed(Operation::Attach, Some(5)), false),
        ),
        (
            "failed_attach_owned",
            with(failed(Operation::Attach, Some(5)), true),
        ),
        (
            "failed_invalid",
            with(failed(Operation::Attach, None), false),
        ),
        (
            "failed_detach",
            with(failed(Operation::Detach, Some(5)), true),
        ),
    ]
}

type Event = (
    &'static str,
    fn(&mut Volume) -> Result<(), InvalidTransition>,
);

fn all_events() -> Vec<Event> {
    vec![
        ("start_attach", |v| v.start_attach(vec![], t0())),
        ("attach_succeeded", |v| {
            v.attach_succeeded(attachment(), t0())
        }),
        ("attach_failed", |v| {
            v.attach_failed(err("e"), None, 9, t0())
        }),
        ("reject", |v| v.reject(err("invalid_iqn"), t0())),
        ("start_detach", |v| v.start_detach(t0())),
        ("detach_succeeded", |v| v.detach_succeeded()),
        ("detach_blocked", |v| {
            v.detach_blocked(err("device_in_use"), 9, t0())
        }),
        ("detach_failed", |v| v.detach_failed(err("e"), 9, t0())),
        ("reassigned", |v| v.reassigned(t0())),
        ("start_grow", |v| v.start_grow(2)),
        ("grow_succeeded", |v| v.grow_succeeded(2)),
        ("grow_failed", |v| v.grow_failed(err("device_timeout"), 9)),
    ]
}

/// The whole transition table: every (state, event) pair, allowed or refused.
#[test]
fn transition_table_is_exactly_as_designed() {
    let allowed: &[(&str, &str)] = &[
        ("pending", "start_attach"),
        ("failed_attach", "start_attach"),
        ("failed_attach_owned", "start_attach"),
        ("failed_invalid", "start_attach"),
        ("attaching", "attach_succeeded"),
        ("attaching", "attach_failed"),
        ("pending", "reject"),
        ("failed_attach", "reject"),
        ("failed_invalid", "reject"),
        ("attached", "start_detach"),
        ("detach_blocked", "start_detach"),
        ("failed_attach_owned", "start_detach"),
        ("failed_detach", "start_detach"),
        ("detaching", "detach_succeeded"),
        ("detaching", "detach_blocked"),
        ("detaching", "detach_failed"),
        ("detach_blocked", "reassigned"),
        ("failed_detach", "reassigned"),
        ("attached", "start_grow"),
        ("growing", "grow_succeeded"),
        ("growing", "grow_failed"),
    ];
    for (state_name, state) in all_states() {
        for (event_name, event) in all_events() {
            let mut v = state.clone();
            let result = event(&mut v);
            let expected = allowed.contains(&(state_name, event_name));
            assert_eq!(result.is_ok(), expected, "{event_name} from {state_name}");
            if result.is_err() {
                assert_eq!(
                    v, state,
                    "a refused {event_name} from {state_name} changed the volume"
                );
            }
        }
    }
}

#[test]
fn attach_then_detach_walks_the_reported_states() {
    let mut v = Volume::new(Uuid::nil(), "v".into(), "rbd".into(), t0());
    assert_eq!(v.state(), VolumeState::Pending);
    let portal = crate::protocol::target::parse_portal("192.0.2.1:3260").unwrap();
    let session = SessionKey::new(&portal, "iqn.2003-01.org.example:k");
    v.start_attach(vec![session], t0()).unwrap();
    assert_eq!(v.state(), VolumeState::Attaching);
    let mut mounted = attachment();
    mounted.mount = Some(crate::backend::MountRecord {
        path: "/srv/x".into(),
        by_agent: true,
    });
    v.attach_succeeded(mounted, t0()).unwrap();
    assert_eq!(v.state(), VolumeState::Mounted);
    assert!(v.is_owned());
    v.start_detach(t0()).unwrap();
    v.detach_blocked(err("device_in_use"), 10, t0()).unwrap();
    assert_eq!(v.state(), VolumeState::DetachBlocked);
    assert_eq!(v.retry_at(), Some(10));
    assert_eq!(v.error().unwrap().kind, "device_in_use");
    v.start_detach(t0()).unwrap();
    v.detach_succeeded().unwrap();
    assert!(!v.is_owned());
}

#[test]
fn failures_count_up_and_reset_on_success() {
    let mut v = Volume::new(Uuid::nil(), "v".into(), "rbd".into(), t0());
    for n in 1..=3 {
        v.start_attach(vec![], t0()).unwrap();
        v.attach_failed(err("portal_unreachable"), None, 0, t0())
            .unwrap();
        assert_eq!(v.failures, n);
    }
    v.start_attach(vec![], t0()).unwrap();
    v.attach_succeeded(attachment(), t0()).unwrap();
    assert_eq!(v.failures, 0);
}

#[test]
fn since_changes_only_when_the_state_does() {
    let later = t0() + Duration::from_secs(10);
    let mut v = Volume::new(Uuid::nil(), "v".into(), "rbd".into(), t0());
    v.reject(err("invalid_iqn"), t0()).unwrap();
    v.reject(err("invalid_lun"), later).unwrap();
    assert_eq!(v.since, t0());
    v.start_attach(vec![], later).unwrap();
    assert_eq!(v.since, later);
}

#[test]
fn retry_delay_doubles_caps_and_jitters() {
    let s = Duration::from_secs;
    assert_eq!(retry_delay(1, s(2), s(300), 1.0), s(2));
    assert_eq!(retry_delay(2, s(2), s(300), 1.0), s(4));
    assert_eq!(retry_delay(5, s(2), s(300), 1.0), s(32));
    assert_eq!(retry_delay(30, s(2), s(300), 1.0), s(300));
    assert_eq!(retry_delay(1, s(2), s(300), 0.5), s(1));
    assert_eq!(
        retry_delay(1, s(2), s(300), 0.0),
        s(1),
        "jitter is clamped to at least half"
    );
}

/// An attach that failed after mapping (its mount failed) leaves the mapping as the volume's;
/// the retry finds it mapped, and must not take it for someone else's: it was never unmapped.
#[test]
fn an_attach_that_completes_an_earlier_one_keeps_what_that_one_made() {
    let mut v = Volume::new(Uuid::nil(), "v".into(), "rbd".into(), t0());
    v.start_attach(Vec::new(), t0()).unwrap();
    let mut leftover = attachment();
    leftover.mount = Some(MountRecord {
        path: "/srv/v".into(),
        by_agent: true,
    });
    v.attach_failed(err("mount_failed"), Some(leftover), 1, t0())
        .unwrap();
    v.start_attach(Vec::new(), t0()).unwrap();
    let mut found = attachment();
    let BackendAttachment::Rbd(rbd) = &mut found.backend else {
        unreachable!()
    };
    rbd.mapped_by_agent = false;
    found.mount = Some(MountRecord {
        path: "/srv/v".into(),
        by_agent: false,
    });
    v.attach_succeeded(found, t0()).unwrap();
    let now = v.attachment.as_ref().unwrap();
    assert!(matches!(&now.backend, BackendAttachment::Rbd(r) if r.mapped_by_agent));
    assert!(now.mount.as_ref().unwrap().by_agent);
}

/// Ownership passes only between the same parts: another image, session or LUN stays foreign.
#[test]
fn only_the_same_parts_inherit_ownership() {
    use crate::backend::{IscsiAttachment, IscsiPathAttachment};
    use crate::protocol::target::{SessionKey, parse_portal};
    let key = |host: &str| SessionKey::new(&parse_portal(host).unwrap(), "iqn.2003-01.t:x");
    let path = |host: &str, lun, created| IscsiPathAttachment {
        session: key(host),
        lun,
        kernel_name: "sdb".into(),
        session_created: created,
        device_created: created,
    };
    let iscsi = |paths| Attachment {
        backend: BackendAttachment::Iscsi(IscsiAttachment {
            paths,
            multipath: None,
        }),
        ..attachment()
    };
    let before = iscsi(vec![path("192.0.2.1:3260", 0, true)]);
    let mut now = iscsi(vec![
        path("192.0.2.1:3260", 1, false),
        path("192.0.2.2:3260", 0, false),
    ]);
    now.inherit_ownership(&before);
    let BackendAttachment::Iscsi(now) = &now.backend else {
        unreachable!()
    };
    let flags: Vec<_> = now
        .paths
        .iter()
        .map(|p| (p.session_created, p.device_created))
        .collect();
    // Same session, other LUN: the session is ours, the LUN's device is not.
    assert_eq!(flags, [(true, false), (false, false)]);

    let mut other_image = attachment();
    if let BackendAttachment::Rbd(r) = &mut other_image.backend {
        r.image = "j".into();
        r.mapped_by_agent = false;
    }
    other_image.inherit_ownership(&attachment());
    assert!(matches!(&other_image.backend, BackendAttachment::Rbd(r) if !r.mapped_by_agent));
}

#[test]
fn a_grow_keeps_the_volume_attached_and_a_failed_one_says_why_and_backs_off() {
    let mut v = Volume::recovered(Uuid::nil(), "v".into(), attachment(), t0());
    v.start_grow(2).unwrap();
    assert!(v.in_flight(), "nothing else runs on a volume that grows");
    assert_eq!(
        v.state(),
        VolumeState::Attached,
        "it stays attached meanwhile"
    );
    v.grow_failed(err("device_timeout"), 9).unwrap();
    assert_eq!(v.state(), VolumeState::Attached);
    assert_eq!(v.error().map(|e| e.kind.as_str()), Some("device_timeout"));
    assert_eq!(v.failures, 1, "the next try backs off");
    assert_eq!(
        v.grow_failure.as_ref().map(|g| (g.size_bytes, g.retry_at)),
        Some((2, 9))
    );
    v.start_grow(2).unwrap();
    v.grow_succeeded(3).unwrap();
    assert_eq!((v.size_bytes(), v.error(), v.failures), (Some(3), None, 0));
    assert_eq!(v.since, t0(), "the attached phase began when it attached");
}
