//! What one sync pass changes: Ironic's nodes and ports against tether's nodes, as a pure
//! function (no Ironic, no database, no clock).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use uuid::Uuid;

use crate::openstack::ironic::{IronicNode, IronicPort};
use crate::protocol::NodeSource;

/// A node as Ironic has it, its ports' MAC addresses gathered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Remote {
    pub uuid: Uuid,
    /// Ironic's name, or the uuid when it has none (tether's nodes all have one).
    pub name: String,
    pub addresses: BTreeSet<String>,
    pub instance_uuid: Option<String>,
    pub provision_state: Option<String>,
}

/// A node as tether has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Local {
    pub uuid: Uuid,
    pub name: String,
    pub source: NodeSource,
    pub addresses: BTreeSet<String>,
    pub instance_uuid: Option<String>,
    pub provision_state: Option<String>,
    pub leaving: bool,
    /// Targets assigned, Cinder volumes, or volumes in its agent's last report.
    pub busy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// New in Ironic: enrolled as a synced node.
    Create(Remote),
    /// Follows Ironic (name, addresses, instance, provision state). `adopt`: a manual node that
    /// Ironic has under the same uuid becomes synced (its token and volumes kept). A leaving
    /// node that is back in Ironic stops leaving.
    Update { node: Remote, adopt: bool },
    /// Gone from Ironic with volumes: they are unassigned, the node stays until its agent
    /// reported them detached.
    Leave(Uuid),
    /// Gone from Ironic, nothing on it (any more): deleted.
    Remove(Uuid),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Removals and leavings first, then updates, then creations.
    pub changes: Vec<Change>,
    /// What was left out, and why (shown in `ctl node list`).
    pub notes: Vec<String>,
}

/// Ironic's nodes with their ports' addresses (normalised; any that is not a 6-byte MAC, such
/// as an InfiniBand GUID, is left out: agents look themselves up by Ethernet MACs).
pub(crate) fn remotes(
    nodes: Vec<IronicNode>,
    ports: Vec<IronicPort>,
) -> (Vec<Remote>, Vec<String>) {
    let mut notes = Vec::new();
    let mut by_node: HashMap<String, BTreeSet<String>> = HashMap::new();
    for port in ports {
        match crate::conductor::store::normalize_mac(&port.address) {
            Some(mac) => {
                by_node.entry(port.node_uuid).or_default().insert(mac);
            }
            None => notes.push(format!(
                "port {} of node {}: {:?} is not a MAC address; left out",
                port.uuid, port.node_uuid, port.address
            )),
        }
    }
    let mut remotes = Vec::new();
    for node in nodes {
        let Ok(uuid) = Uuid::parse_str(&node.uuid) else {
            notes.push(format!("Ironic node {:?}: not a uuid; left out", node.uuid));
            continue;
        };
        remotes.push(Remote {
            uuid,
            name: node
                .name
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| uuid.to_string()),
            addresses: by_node.remove(&node.uuid).unwrap_or_default(),
            instance_uuid: node.instance_uuid,
            provision_state: node.provision_state,
        });
    }
    (remotes, notes)
}

/// The changes that bring tether's nodes in step with Ironic's. Manual nodes are never
/// changed, except one that Ironic has under its uuid (adopted). A name or an address that a
/// manual or leaving node holds is not taken from it: the Ironic node is left out (new) or
/// keeps its old name, and the address is left out, each with a note.
pub(crate) fn plan(remote: &[Remote], local: &[Local]) -> Plan {
    let mut plan = Plan::default();
    let in_ironic: BTreeSet<Uuid> = remote.iter().map(|r| r.uuid).collect();
    let local_by_uuid: BTreeMap<Uuid, &Local> = local.iter().map(|l| (l.uuid, l)).collect();

    // Names and addresses that stay with another node whatever Ironic says.
    let mut held_names: HashMap<&str, (Uuid, &'static str)> = HashMap::new();
    let mut held_addresses: HashMap<&str, (Uuid, &'static str)> = HashMap::new();
    let mut removals = Vec::new();
    for l in local {
        let stays = match l.source {
            NodeSource::Manual => (!in_ironic.contains(&l.uuid)).then_some("a manual node"),
            NodeSource::Ironic if in_ironic.contains(&l.uuid) => None,
            NodeSource::Ironic if l.leaving || l.busy => {
                if !l.leaving {
                    removals.push(Change::Leave(l.uuid));
                } else if !l.busy {
                    removals.push(Change::Remove(l.uuid));
                }
                // A node that leaves keeps its name and addresses until it is gone.
                (l.busy || l.leaving).then_some("a node leaving")
            }
            NodeSource::Ironic => {
                removals.push(Change::Remove(l.uuid));
                None
            }
        };
        // A leaving node whose volumes are gone is removed in this pass: it holds nothing.
        let stays = stays.filter(|_| !l.leaving || l.busy);
        if let Some(what) = stays {
            held_names.insert(&l.name, (l.uuid, what));
            for a in &l.addresses {
                held_addresses.insert(a, (l.uuid, what));
            }
        }
    }
    plan.changes.extend(removals);

    let mut sorted: Vec<&Remote> = remote.iter().collect();
    sorted.sort_by_key(|r| r.uuid);
    // The name each Ironic node gets. One whose name is held, or wanted by another, keeps its
    // old name (old names are unique) or, if new, is left out; repeated until nothing clashes.
    let mut names: BTreeMap<Uuid, String> =
        sorted.iter().map(|r| (r.uuid, r.name.clone())).collect();
    loop {
        let mut wanted: HashMap<String, usize> = HashMap::new();
        for name in names.values() {
            *wanted.entry(name.clone()).or_default() += 1;
        }
        let mut changed = false;
        for r in &sorted {
            let Some(name) = names.get(&r.uuid).cloned() else {
                continue;
            };
            let held = held_names
                .get(name.as_str())
                .filter(|(owner, _)| *owner != r.uuid)
                .map(|(owner, what)| format!("{what} ({owner}) has it"));
            let clash = held.or_else(|| {
                (wanted[&name] > 1).then(|| "another Ironic node wants it".to_string())
            });
            let Some(why) = clash else { continue };
            match local_by_uuid.get(&r.uuid) {
                Some(l) if l.name != name => {
                    plan.notes.push(format!(
                        "Ironic node {} is named {name:?} in Ironic, but {why}; it keeps the \
                         name {:?}",
                        r.uuid, l.name
                    ));
                    names.insert(r.uuid, l.name.clone());
                    changed = true;
                }
                Some(_) => {}
                None => {
                    plan.notes.push(format!(
                        "Ironic node {name} ({}): {why}; left out until one of them is renamed",
                        r.uuid
                    ));
                    names.remove(&r.uuid);
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }

    // Ironic keeps port addresses unique; should two nodes list one all the same, neither
    // gets it.
    let mut claims: HashMap<&str, usize> = HashMap::new();
    for r in &sorted {
        for a in &r.addresses {
            *claims.entry(a.as_str()).or_default() += 1;
        }
    }

    let mut updates = Vec::new();
    let mut creates = Vec::new();
    for r in sorted {
        let Some(name) = names.remove(&r.uuid) else {
            continue;
        };
        let existing = local_by_uuid.get(&r.uuid).copied();
        let mut node = r.clone();
        node.name = name;
        node.addresses
            .retain(|a| match held_addresses.get(a.as_str()) {
                Some((owner, what)) if *owner != r.uuid => {
                    plan.notes.push(format!(
                        "Ironic node {} ({}): address {a} belongs to {what} ({owner}); left out",
                        r.name, r.uuid
                    ));
                    false
                }
                _ if claims[a.as_str()] > 1 => {
                    plan.notes.push(format!(
                        "Ironic node {} ({}): address {a} is listed for another node too; left out",
                        r.name, r.uuid
                    ));
                    false
                }
                _ => true,
            });
        match existing {
            None => creates.push(Change::Create(node)),
            Some(l) => {
                let adopt = l.source == NodeSource::Manual;
                let same = !adopt
                    && !l.leaving
                    && l.name == node.name
                    && l.addresses == node.addresses
                    && l.instance_uuid == node.instance_uuid
                    && l.provision_state == node.provision_state;
                if !same {
                    updates.push(Change::Update { node, adopt });
                }
            }
        }
    }
    plan.changes.extend(updates);
    plan.changes.extend(creates);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    fn mac(n: u8) -> String {
        format!("52:54:00:00:00:{n:02x}")
    }

    fn remote(n: u8, name: &str, macs: &[u8]) -> Remote {
        Remote {
            uuid: uuid(n),
            name: name.into(),
            addresses: macs.iter().map(|m| mac(*m)).collect(),
            instance_uuid: None,
            provision_state: Some("available".into()),
        }
    }

    fn synced(n: u8, name: &str, macs: &[u8]) -> Local {
        Local {
            uuid: uuid(n),
            name: name.into(),
            source: NodeSource::Ironic,
            addresses: macs.iter().map(|m| mac(*m)).collect(),
            instance_uuid: None,
            provision_state: Some("available".into()),
            leaving: false,
            busy: false,
        }
    }

    fn manual(n: u8, name: &str, macs: &[u8]) -> Local {
        Local {
            source: NodeSource::Manual,
            provision_state: None,
            ..synced(n, name, macs)
        }
    }

    /// What a store would hold after the plan: used to check that a second pass changes
    /// nothing.
    fn applied(local: &[Local], plan: &Plan) -> Vec<Local> {
        let mut nodes: BTreeMap<Uuid, Local> = local.iter().map(|l| (l.uuid, l.clone())).collect();
        for change in &plan.changes {
            match change {
                Change::Remove(u) => {
                    nodes.remove(u);
                }
                Change::Leave(u) => nodes.get_mut(u).unwrap().leaving = true,
                Change::Update { node, .. } | Change::Create(node) => {
                    let busy = nodes.get(&node.uuid).is_some_and(|l| l.busy);
                    nodes.insert(
                        node.uuid,
                        Local {
                            uuid: node.uuid,
                            name: node.name.clone(),
                            source: NodeSource::Ironic,
                            addresses: node.addresses.clone(),
                            instance_uuid: node.instance_uuid.clone(),
                            provision_state: node.provision_state.clone(),
                            leaving: false,
                            busy,
                        },
                    );
                }
            }
        }
        nodes.into_values().collect()
    }

    /// Names and addresses are unique across the nodes after the plan, as the store's
    /// constraints require.
    fn assert_unique(nodes: &[Local]) {
        let mut names = BTreeSet::new();
        let mut addresses = BTreeSet::new();
        for n in nodes {
            assert!(
                names.insert(n.name.clone()),
                "name {} twice: {nodes:?}",
                n.name
            );
            for a in &n.addresses {
                assert!(addresses.insert(a.clone()), "address {a} twice: {nodes:?}");
            }
        }
    }

    #[test]
    fn new_ironic_nodes_are_created_with_their_macs() {
        let r = [remote(1, "n1", &[1, 2]), remote(2, "n2", &[3])];
        let plan = plan(&r, &[]);
        assert_eq!(
            plan.changes,
            [Change::Create(r[0].clone()), Change::Create(r[1].clone())]
        );
        assert!(plan.notes.is_empty());
    }

    #[test]
    fn nodes_in_step_need_no_change() {
        let r = [remote(1, "n1", &[1]), remote(2, "n2", &[2])];
        let l = [synced(1, "n1", &[1]), synced(2, "n2", &[2])];
        assert_eq!(plan(&r, &l), Plan::default());
    }

    #[test]
    fn renames_port_changes_instance_and_state_follow_ironic() {
        let mut deployed = remote(1, "n1", &[1]);
        deployed.instance_uuid = Some("inst".into());
        deployed.provision_state = Some("active".into());
        let cases = [
            remote(1, "renamed", &[1]),
            remote(1, "n1", &[1, 2]),
            remote(1, "n1", &[]),
            remote(1, "n1", &[9]),
            deployed,
        ];
        for r in cases {
            let plan = plan(std::slice::from_ref(&r), &[synced(1, "n1", &[1])]);
            assert_eq!(
                plan.changes,
                [Change::Update {
                    node: r.clone(),
                    adopt: false
                }],
                "{r:?}"
            );
        }
    }

    #[test]
    fn a_node_without_a_name_in_ironic_is_named_by_its_uuid() {
        let node = IronicNode {
            uuid: uuid(7).to_string(),
            name: None,
            instance_uuid: None,
            provision_state: Some("enroll".into()),
        };
        let ports = vec![IronicPort {
            uuid: "p".into(),
            address: "52:54:00:AA:BB:CC".into(),
            node_uuid: uuid(7).to_string(),
        }];
        let (r, notes) = remotes(vec![node], ports);
        assert!(notes.is_empty());
        assert_eq!(r[0].name, uuid(7).to_string());
        assert_eq!(
            r[0].addresses,
            BTreeSet::from(["52:54:00:aa:bb:cc".to_string()])
        );
    }

    #[test]
    fn addresses_that_are_not_macs_and_ports_of_unknown_nodes_are_left_out() {
        let node = IronicNode {
            uuid: uuid(1).to_string(),
            name: Some("ib".into()),
            instance_uuid: None,
            provision_state: None,
        };
        let port = |address: &str, node: Uuid| IronicPort {
            uuid: format!("port-{address}"),
            address: address.into(),
            node_uuid: node.to_string(),
        };
        let guid = "a0:00:02:20:fe:80:00:00:00:00:00:00:00:11:75:01:01:67:1a:01";
        let ports = vec![
            port(guid, uuid(1)),
            port(&mac(1), uuid(1)),
            port(&mac(2), uuid(2)),
        ];
        let bad = IronicNode {
            uuid: "not-a-uuid".into(),
            ..node.clone()
        };
        let (r, notes) = remotes(vec![node, bad], ports);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].addresses, BTreeSet::from([mac(1)]));
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes.iter().any(|n| n.contains("not a MAC")), "{notes:?}");
        assert!(notes.iter().any(|n| n.contains("not a uuid")), "{notes:?}");
    }

    #[test]
    fn a_node_deleted_in_ironic_goes_at_once_when_nothing_is_on_it() {
        let plan = plan(&[], &[synced(1, "n1", &[1])]);
        assert_eq!(plan.changes, [Change::Remove(uuid(1))]);
    }

    #[test]
    fn a_node_deleted_in_ironic_with_volumes_leaves_then_goes() {
        let mut busy = synced(1, "n1", &[1]);
        busy.busy = true;
        assert_eq!(plan(&[], &[busy.clone()]).changes, [Change::Leave(uuid(1))]);
        busy.leaving = true;
        assert_eq!(plan(&[], &[busy.clone()]), Plan::default(), "waits");
        busy.busy = false;
        assert_eq!(plan(&[], &[busy]).changes, [Change::Remove(uuid(1))]);
    }

    #[test]
    fn a_leaving_node_back_in_ironic_stops_leaving() {
        let mut leaving = synced(1, "n1", &[1]);
        leaving.busy = true;
        leaving.leaving = true;
        let r = remote(1, "n1", &[1]);
        assert_eq!(
            plan(std::slice::from_ref(&r), &[leaving]).changes,
            [Change::Update {
                node: r,
                adopt: false
            }]
        );
    }

    #[test]
    fn manual_nodes_are_left_alone() {
        let l = [manual(1, "m1", &[1]), manual(2, "m2", &[2])];
        assert_eq!(plan(&[], &l), Plan::default());
        assert_eq!(plan(&[remote(3, "n3", &[3])], &l).changes.len(), 1);
    }

    #[test]
    fn a_manual_node_ironic_has_under_its_uuid_is_adopted() {
        let r = remote(1, "from-ironic", &[1, 2]);
        let plan = plan(std::slice::from_ref(&r), &[manual(1, "m1", &[1])]);
        assert_eq!(
            plan.changes,
            [Change::Update {
                node: r,
                adopt: true
            }]
        );
    }

    #[test]
    fn a_name_a_manual_node_holds_is_not_taken() {
        let l = [manual(1, "taken", &[1])];
        let new = plan(&[remote(2, "taken", &[2])], &l);
        assert!(new.changes.is_empty(), "{new:?}");
        assert!(new.notes[0].contains("left out"), "{:?}", new.notes);

        let l = [manual(1, "taken", &[1]), synced(2, "old", &[2])];
        let renamed = plan(&[remote(2, "taken", &[2])], &l);
        assert!(renamed.changes.is_empty(), "keeps its name: {renamed:?}");
        assert!(
            renamed.notes[0].contains("keeps the name"),
            "{:?}",
            renamed.notes
        );

        // Node 1 cannot take "taken", so keeps "a": node 2, new, cannot have "a".
        let l = [manual(3, "taken", &[3]), synced(1, "a", &[1])];
        let r = [remote(1, "taken", &[1]), remote(2, "a", &[2])];
        let cascade = plan(&r, &l);
        assert_unique(&applied(&l, &cascade));
        assert_eq!(cascade.changes.len(), 0, "{cascade:?}");
        assert_eq!(cascade.notes.len(), 2, "{:?}", cascade.notes);
    }

    #[test]
    fn an_address_a_manual_or_leaving_node_holds_is_left_out() {
        let mut leaving = synced(3, "gone", &[3]);
        leaving.busy = true;
        leaving.leaving = true;
        let l = [manual(1, "m1", &[1]), leaving];
        let r = remote(2, "n2", &[1, 2, 3]);
        let plan = plan(&[r], &l);
        let Change::Create(node) = &plan.changes[0] else {
            panic!("{plan:?}");
        };
        assert_eq!(node.addresses, BTreeSet::from([mac(2)]));
        assert_eq!(plan.notes.len(), 2, "{:?}", plan.notes);
    }

    #[test]
    fn a_node_re_enrolled_under_a_new_uuid_waits_for_the_old_one_to_leave() {
        let mut old = synced(1, "n1", &[1]);
        old.busy = true;
        let r = remote(2, "n1", &[1]);
        let first = plan(std::slice::from_ref(&r), &[old.clone()]);
        assert_eq!(first.changes, [Change::Leave(uuid(1))], "{first:?}");
        old.leaving = true;
        old.busy = false;
        let second = plan(std::slice::from_ref(&r), &[old]);
        assert_eq!(second.changes, [Change::Remove(uuid(1)), Change::Create(r)]);
    }

    #[test]
    fn swapped_names_and_moved_ports_are_planned_as_updates() {
        let l = [synced(1, "a", &[1]), synced(2, "b", &[2])];
        let r = [remote(1, "b", &[2]), remote(2, "a", &[1])];
        let plan = plan(&r, &l);
        assert_eq!(plan.changes.len(), 2);
        assert_unique(&applied(&l, &plan));
    }

    /// Every combination of a small world: the plan keeps names and addresses unique, never
    /// touches a manual node Ironic does not have, never drops a busy node, and a second pass
    /// over its result changes nothing.
    #[test]
    fn every_small_world_converges() {
        let names = ["a", "b", "c"];
        let mut worlds = 0;
        for mask in 0u32..(1 << 12) {
            let bit = |i: u32| mask & (1 << i) != 0;
            let mut local = Vec::new();
            // Node 1: manual or synced, busy or not, leaving or not; node 2 synced; 3 manual.
            if bit(0) {
                let mut l = if bit(1) {
                    manual(1, "a", &[1])
                } else {
                    synced(1, "a", &[1])
                };
                l.busy = bit(2);
                l.leaving = bit(3) && l.source == NodeSource::Ironic;
                local.push(l);
            }
            if bit(4) {
                let mut l = synced(2, "b", &[2]);
                l.busy = bit(5);
                local.push(l);
            }
            if bit(6) {
                local.push(manual(3, "c", &[3]));
            }
            let mut remote_nodes = Vec::new();
            if bit(7) {
                let name = names[usize::from(bit(8))];
                remote_nodes.push(remote(1, name, if bit(9) { &[1, 2] } else { &[1] }));
            }
            if bit(10) {
                remote_nodes.push(remote(2, names[if bit(11) { 2 } else { 1 }], &[2, 3]));
            }
            worlds += 1;
            let first = plan(&remote_nodes, &local);
            let after = applied(&local, &first);
            assert_unique(&after);
            for l in &local {
                let kept = after.iter().find(|a| a.uuid == l.uuid);
                let in_ironic = remote_nodes.iter().any(|r| r.uuid == l.uuid);
                if l.source == NodeSource::Manual && !in_ironic {
                    assert_eq!(kept, Some(l), "a manual node changed: {local:?} {first:?}");
                }
                if l.busy {
                    assert!(kept.is_some(), "a busy node dropped: {local:?} {first:?}");
                }
            }
            let second = plan(&remote_nodes, &after);
            assert!(
                second.changes.is_empty(),
                "not converged: {local:?} {remote_nodes:?} {first:?} {second:?}"
            );
        }
        assert_eq!(worlds, 4096);
    }
}
