use rusqlite::{Connection, params};
use serde_json::{Map, json};
use uuid::Uuid;

use super::*;
use crate::conductor::generations::{Generations, Published};
use crate::protocol::{Heartbeat, Node, NodeCreate, TargetCreate, VolumeState};

fn node(store: &Store, name: &str, mac: &str) -> Node {
    store
        .create_node(&NodeCreate {
            name: name.into(),
            uuid: None,
            addresses: vec![mac.into()],
            agent_token: None,
        })
        .unwrap()
}

#[test]
fn token_is_issued_once_and_stored_hashed() {
    let store = Store::open_in_memory().unwrap();
    let n = node(&store, "n1", "AA-BB-CC-DD-EE-01");
    let first = store
        .lookup(&["aa:bb:cc:dd:ee:01".into()], None)
        .unwrap()
        .unwrap();
    let token = first.new_token.expect("first lookup issues a token");
    assert!(store.agent_token_matches(n.uuid, &token).unwrap());
    assert!(!store.agent_token_matches(n.uuid, "wrong").unwrap());
    let second = store
        .lookup(&["aa:bb:cc:dd:ee:01".into()], None)
        .unwrap()
        .unwrap();
    assert!(second.new_token.is_none());
    let stored: String = store
        .conn()
        .query_row("SELECT token_hash FROM nodes", [], |r| r.get(0))
        .unwrap();
    assert_ne!(stored, token);
}

#[test]
fn lookup_with_mismatched_uuid_finds_nothing() {
    let store = Store::open_in_memory().unwrap();
    node(&store, "n1", "aa:bb:cc:dd:ee:01");
    let found = store
        .lookup(&["aa:bb:cc:dd:ee:01".into()], Some(Uuid::new_v4()))
        .unwrap();
    assert!(found.is_none());
}

#[test]
fn a_uuid_alone_finds_the_node_but_never_issues_its_token() {
    let store = Store::open_in_memory().unwrap();
    let n = node(&store, "n1", "aa:bb:cc:dd:ee:01");
    for macs in [vec![], vec!["aa:bb:cc:dd:ee:99".to_string()]] {
        let found = store.lookup(&macs, Some(n.uuid)).unwrap().unwrap();
        assert_eq!(found.node.uuid, n.uuid);
        assert!(found.new_token.is_none() && !found.by_address);
        assert!(!found.node.token_issued, "still to be issued");
    }
    let found = store
        .lookup(&["aa:bb:cc:dd:ee:01".into()], Some(n.uuid))
        .unwrap()
        .unwrap();
    assert!(found.new_token.is_some() && found.by_address);
}

fn target_create(node: Uuid, volume_id: &str) -> TargetCreate {
    TargetCreate {
        node_uuid: node,
        volume_type: "iscsi".into(),
        volume_id: volume_id.into(),
        uuid: None,
        boot_index: None,
        properties: json!({"a": 1}).as_object().unwrap().clone(),
        extra: Map::new(),
        size_bytes: None,
    }
}

#[test]
fn target_changes_bump_the_generation() {
    let store = Store::open_in_memory().unwrap();
    let n = node(&store, "n1", "aa:bb:cc:dd:ee:01");
    let enrolled = store.generation(n.uuid).unwrap();
    assert!(enrolled > 0, "a node starts from the sequence");
    let generations = Generations::default();
    let created = store.create_target(&target_create(n.uuid, "v1")).unwrap();
    let Published {
        node: node_uuid,
        generation,
        value: t,
    } = generations.publish(created);
    assert_eq!((node_uuid, t.node_uuid), (n.uuid, n.uuid));
    assert!(generation > enrolled);
    let (gen_read, targets) = store.node_targets(n.uuid).unwrap();
    assert_eq!((gen_read, targets.len()), (generation, 1));
    let deleted = generations.publish(store.delete_target(t.uuid).unwrap());
    assert_eq!(deleted.node, n.uuid);
    assert!(deleted.generation > generation);
    assert!(matches!(
        store.delete_target(t.uuid),
        Err(StoreError::NotFound(_))
    ));
}

/// A node deleted and enrolled again under its uuid must not repeat a generation: its agent
/// would take the new node's first answer for one it applied, and ignore it.
#[test]
fn a_node_enrolled_again_never_repeats_a_generation() {
    let store = Store::open_in_memory().unwrap();
    let n = node(&store, "n1", "aa:bb:cc:dd:ee:01");
    let generations = Generations::default();
    let mut seen = vec![store.generation(n.uuid).unwrap()];
    for round in 0..5 {
        let created = store.create_target(&target_create(n.uuid, "v1")).unwrap();
        seen.push(generations.publish(created).generation);
        store.delete_node(n.uuid).unwrap();
        let again = store
            .create_node(&NodeCreate {
                uuid: Some(n.uuid),
                name: "n1".into(),
                addresses: vec!["aa:bb:cc:dd:ee:01".into()],
                agent_token: None,
            })
            .unwrap();
        assert_eq!(again.uuid, n.uuid, "round {round}");
        let g = store.generation(n.uuid).unwrap();
        assert!(
            !seen.contains(&g),
            "generation {g} repeated in round {round}: {seen:?}"
        );
        assert!(g > *seen.last().unwrap());
        seen.push(g);
    }
}

/// A database restored from an older backup goes on from the clock, not from its old counter.
#[test]
fn generations_go_on_from_the_clock_after_a_restore() {
    let store = Store::open_in_memory().unwrap();
    store
        .conn()
        .execute("UPDATE generation_sequence SET value = 7", [])
        .unwrap();
    let n = node(&store, "n1", "aa:bb:cc:dd:ee:01");
    let g = store.generation(n.uuid).unwrap();
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    assert!(g > 7 && g.abs_diff(now_us) < 60_000_000, "{g} vs {now_us}");
}

fn heartbeat(states: &[VolumeState]) -> Heartbeat {
    Heartbeat {
        agent_version: "test".into(),
        generation: Some(1),
        connectors: Vec::new(),
        volumes: states
            .iter()
            .map(|state| crate::protocol::VolumeReport {
                target_uuid: Uuid::new_v4(),
                volume_id: "v".into(),
                volume_type: "iscsi".into(),
                state: *state,
                device_path: None,
                paths: Vec::new(),
                size_bytes: None,
                wwn: None,
                mountpoint: None,
                error: None,
                degraded: None,
                since: "2026-01-01T00:00:00Z".into(),
            })
            .collect(),
        foreign: Vec::new(),
    }
}

#[test]
fn metrics_snapshot_sums_the_latest_reports() {
    use VolumeState::*;
    let store = Store::open_in_memory().unwrap();
    let a = node(&store, "a", "aa:bb:cc:dd:ee:01");
    let b = node(&store, "b", "aa:bb:cc:dd:ee:02");
    node(&store, "never", "aa:bb:cc:dd:ee:03");
    store
        .store_report(a.uuid, &heartbeat(&[Attached, Attached, Failed]))
        .unwrap();
    // Only the latest report of a node counts.
    store.store_report(b.uuid, &heartbeat(&[Pending])).unwrap();
    store
        .store_report(b.uuid, &heartbeat(&[Mounted, Attached]))
        .unwrap();
    let s = store.metrics_snapshot().unwrap();
    assert_eq!(s.nodes, 3);
    let mut seen: Vec<&str> = s.last_seen.iter().map(|(u, _)| u.as_str()).collect();
    seen.sort();
    let mut expected = [a.uuid.to_string(), b.uuid.to_string()];
    expected.sort();
    assert_eq!(seen, expected);
    assert!(s.last_seen.iter().all(|(_, at)| (s.now - at).abs() <= 1));
    let mut states = s.volume_states.clone();
    states.sort();
    assert_eq!(
        states,
        vec![
            ("attached".to_string(), 3),
            ("failed".to_string(), 1),
            ("mounted".to_string(), 1)
        ]
    );
}

#[test]
fn migration_summarises_reports_stored_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(schema::MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        let n = Uuid::new_v4().to_string();
        conn.execute(
            "INSERT INTO nodes (uuid, name, created_at) VALUES (?1, 'old', 0)",
            params![n],
        )
        .unwrap();
        let body = serde_json::to_string(&heartbeat(&[
            VolumeState::Failed,
            VolumeState::Failed,
            VolumeState::DetachBlocked,
        ]))
        .unwrap();
        conn.execute(
            "INSERT INTO reports (node_uuid, body, received_at) VALUES (?1, ?2, 5)",
            params![n, body],
        )
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    let mut states = store.metrics_snapshot().unwrap().volume_states;
    states.sort();
    assert_eq!(
        states,
        vec![("detach_blocked".to_string(), 1), ("failed".to_string(), 2)]
    );
}

#[test]
fn duplicate_names_and_macs_conflict() {
    let store = Store::open_in_memory().unwrap();
    node(&store, "n1", "aa:bb:cc:dd:ee:01");
    let dup = store.create_node(&NodeCreate {
        name: "n2".into(),
        uuid: None,
        addresses: vec!["aa:bb:cc:dd:ee:01".into()],
        agent_token: None,
    });
    assert!(matches!(dup, Err(StoreError::Conflict(_))));
    // The failed insert rolled back whole: no half-created node.
    assert_eq!(store.list_nodes().unwrap().len(), 1);
}

#[test]
fn a_token_hash_matches_its_token_only() {
    let hash = TokenHash::of("admin-token-0123456789");
    assert!(hash.matches("admin-token-0123456789"));
    for other in ["admin-token-012345678", "admin-token-01234567890", "", "x"] {
        assert!(!hash.matches(other), "{other:?}");
    }
}

#[test]
fn a_cinder_volume_keeps_its_flow_and_its_node_while_it_has_one() {
    use crate::protocol::cinder::CinderPhase;
    let store = Store::open_in_memory().unwrap();
    let n = node(&store, "n1", "aa:bb:cc:dd:ee:01");
    let row = CinderRow::new(
        n.uuid,
        "vol-1".into(),
        Some("data".into()),
        false,
        None,
        None,
    );
    store.insert_cinder_volume(&row).unwrap();
    assert!(matches!(
        store.insert_cinder_volume(&row),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.cinder_volumes(Some(n.uuid)).unwrap(),
        vec![row.clone()]
    );
    assert!(
        matches!(store.delete_node(n.uuid), Err(StoreError::Conflict(m)) if m.contains("Cinder")),
        "a node with Cinder volumes stays"
    );

    let before = store.generation(n.uuid).unwrap();
    let target = TargetCreate {
        node_uuid: n.uuid,
        volume_type: "iscsi".into(),
        volume_id: "vol-1".into(),
        uuid: None,
        boot_index: None,
        properties: Map::new(),
        extra: Map::new(),
        size_bytes: None,
    };
    let assigned = Generations::default().publish(
        store
            .assign_cinder_target(n.uuid, "vol-1", &target)
            .unwrap(),
    );
    assert!(assigned.generation > before, "the node's agent is told");
    let row = assigned.value;
    assert_eq!(row.phase, CinderPhase::Attaching);
    let target_uuid = row.target_uuid.unwrap();
    assert!(store.target_exists(target_uuid).unwrap());
    let phases: Vec<_> = row.phases.iter().map(|p| p.phase).collect();
    assert_eq!(phases, [CinderPhase::Creating, CinderPhase::Attaching]);

    let row = store
        .update_cinder_volume(n.uuid, "vol-1", |r| {
            r.attachment_id = Some("att".into());
            r.want_attached = false;
        })
        .unwrap();
    assert!(!row.want_attached);
    let (row, change) = store.unassign_cinder_target(n.uuid, "vol-1").unwrap();
    assert!(change.is_some(), "the target was deleted");
    assert_eq!(row.phase, CinderPhase::Detaching);
    assert!(!store.target_exists(target_uuid).unwrap());
    let (_, again) = store.unassign_cinder_target(n.uuid, "vol-1").unwrap();
    assert!(
        again.is_none(),
        "an unassign repeated after a crash changes nothing"
    );
    assert_eq!(
        store.cinder_volumes(None).unwrap()[0]
            .attachment_id
            .as_deref(),
        Some("att")
    );

    store.forget_cinder_volume(n.uuid, "vol-1").unwrap();
    assert!(store.cinder_volumes(None).unwrap().is_empty());
    store.delete_node(n.uuid).unwrap();
}

/// A sync pass as the store applies it: names swapped and a port moved in one transaction; a
/// node deleted in Ironic with a target leaves (target unassigned, node kept) and is removed
/// once its agent's report lists no volume; synced nodes refuse hand edits, manual ones not.
#[test]
fn ironic_changes_apply_in_one_transaction_and_leaving_nodes_wait_for_their_agent() {
    use crate::conductor::ironic::diff::{Change, Remote};
    use crate::protocol::NodeSource;
    let store = Store::open_in_memory().unwrap();
    let remote = |n: u8, name: &str, macs: &[&str]| Remote {
        uuid: Uuid::from_bytes([n; 16]),
        name: name.into(),
        addresses: macs.iter().map(|m| m.to_string()).collect(),
        instance_uuid: None,
        provision_state: Some("available".into()),
    };
    let (a, b) = ("52:54:00:00:00:0a", "52:54:00:00:00:0b");
    store
        .apply_ironic(&[
            Change::Create(remote(1, "one", &[a])),
            Change::Create(remote(2, "two", &[b])),
        ])
        .unwrap();
    let view = store.ironic_view().unwrap();
    assert_eq!(view.len(), 2);
    assert!(
        view.iter()
            .all(|l| l.source == NodeSource::Ironic && !l.busy)
    );

    store
        .apply_ironic(&[
            Change::Update {
                node: remote(1, "two", &[b]),
                adopt: false,
            },
            Change::Update {
                node: remote(2, "one", &[a]),
                adopt: false,
            },
        ])
        .unwrap();
    let one = store.find_node("one").unwrap();
    assert_eq!(
        (one.uuid, one.addresses),
        (Uuid::from_bytes([2; 16]), vec![a.to_string()])
    );

    let uuid = one.uuid;
    let refused = store.set_node_addresses(uuid, &["52:54:00:00:00:0c".into()]);
    assert!(matches!(refused, Err(StoreError::Synced(_))), "{refused:?}");
    assert!(matches!(
        store.delete_node(uuid),
        Err(StoreError::Synced(_))
    ));
    let manual = node(&store, "by-hand", "52:54:00:00:00:0d");
    let moved = store
        .set_node_addresses(manual.uuid, &["52:54:00:00:00:0e".into()])
        .unwrap();
    assert_eq!(moved.addresses, ["52:54:00:00:00:0e"]);

    let change = store.create_target(&target_create(uuid, "vol")).unwrap();
    let _ = Generations::default().publish(change);
    store
        .store_report(uuid, &heartbeat(&[VolumeState::Attached]))
        .unwrap();
    let unassigned = store.apply_ironic(&[Change::Leave(uuid)]).unwrap();
    assert_eq!(unassigned.len(), 1);
    for change in unassigned {
        let _ = Generations::default().publish(change);
    }
    assert!(store.list_targets(Some(uuid)).unwrap().is_empty());
    assert!(store.find_node("one").unwrap().leaving);
    assert!(
        store.remove_departed().unwrap().is_empty(),
        "the agent still has it"
    );
    store.store_report(uuid, &heartbeat(&[])).unwrap();
    assert_eq!(store.remove_departed().unwrap(), [uuid]);
    assert!(store.find_node("one").is_err());
    assert!(store.find_node("by-hand").is_ok());
}
