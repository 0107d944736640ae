//! Nodes synced from Ironic: the view the sync compares with Ironic, a pass's changes applied
//! in one transaction, leaving nodes removed once their volumes are gone, and the initiators
//! to publish as Ironic volume connectors.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{Connection, params};
use uuid::Uuid;

use super::nodes::insert_addresses;
use super::targets::{next_generation, remove_target};
use super::{SqliteDb, StoreError, conflict, now_secs, parse_uuid};
use crate::conductor::generations::GenerationChange;
use crate::conductor::ironic::diff::{Change, Local, Remote};
use crate::protocol::NodeSource;

/// True when something is still on the node: a target, a Cinder volume, or a volume in its
/// agent's last report (one being detached, or one it has not let go of yet).
const BUSY: &str = "(EXISTS (SELECT 1 FROM targets t WHERE t.node_uuid = n.uuid) \
     OR EXISTS (SELECT 1 FROM cinder_volumes c WHERE c.node_uuid = n.uuid) \
     OR EXISTS (SELECT 1 FROM reports r, json_each(r.body, '$.volumes') \
                WHERE r.node_uuid = n.uuid))";

/// A synced node whose reported initiators are to be checked against Ironic's connectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnectorCheck {
    pub node: Uuid,
    /// (type, id) of each iqn and nqn connector in the agent's last report, sorted.
    pub reported: Vec<(String, String)>,
    /// The warning the last check left.
    pub warning: Option<String>,
}

impl ConnectorCheck {
    /// What is recorded once the check is done: the next check is due only when it changes.
    pub(crate) fn key(&self) -> String {
        let parts: Vec<String> = self
            .reported
            .iter()
            .map(|(t, id)| format!("{t}={id}"))
            .collect();
        parts.join("\n")
    }
}

impl SqliteDb {
    /// Every node as the sync compares it with Ironic.
    pub(crate) fn ironic_view(&self) -> Result<Vec<Local>, StoreError> {
        let conn = self.conn();
        let mut addresses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut stmt = conn.prepare("SELECT node_uuid, address FROM node_addresses")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))? {
            let (node, address) = row?;
            addresses.entry(node).or_default().insert(address);
        }
        let sql = format!(
            "SELECT n.uuid, n.name, n.source, n.instance_uuid, n.provision_state, n.leaving, \
             {BUSY} FROM nodes n"
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })?;
        rows.map(|row| {
            let (uuid, name, source, instance_uuid, provision_state, leaving, busy) = row?;
            Ok(Local {
                addresses: addresses.remove(&uuid).unwrap_or_default(),
                uuid: parse_uuid(&uuid)?,
                name,
                source: parse_source(&source)?,
                instance_uuid,
                provision_state,
                leaving,
                busy,
            })
        })
        .collect()
    }

    /// Applies a sync pass's changes in one transaction. The changes to targets (a leaving
    /// node's, unassigned) are handed back to be published.
    pub(crate) fn apply_ironic(
        &self,
        changes: Vec<Change>,
    ) -> Result<Vec<GenerationChange>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut published = Vec::new();
        let updates: Vec<(&Remote, bool)> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Update { node, adopt } => Some((node, *adopt)),
                _ => None,
            })
            .collect();
        for change in &changes {
            match change {
                Change::Remove(uuid) => {
                    tx.execute(
                        "DELETE FROM nodes WHERE uuid = ?1 AND source = 'ironic'",
                        params![uuid.to_string()],
                    )?;
                }
                Change::Leave(uuid) => published.extend(leave(&tx, *uuid)?),
                Change::Update { .. } | Change::Create(_) => {}
            }
        }
        // Names and addresses may move between nodes (swapped names, a port moved): every
        // updated node first lets go of both, then takes its new ones.
        for (node, _) in &updates {
            let uuid = node.uuid.to_string();
            tx.execute("UPDATE nodes SET name = ?1 WHERE uuid = ?1", params![uuid])?;
            tx.execute(
                "DELETE FROM node_addresses WHERE node_uuid = ?1",
                params![uuid],
            )?;
        }
        for (node, _) in &updates {
            tx.execute(
                "UPDATE nodes SET name = ?2, source = 'ironic', instance_uuid = ?3, \
                 provision_state = ?4, leaving = 0 WHERE uuid = ?1",
                params![
                    node.uuid.to_string(),
                    node.name,
                    node.instance_uuid,
                    node.provision_state
                ],
            )
            .map_err(|e| conflict(e, format!("node name {:?} is taken", node.name)))?;
            insert_addresses(&tx, node.uuid, &node.addresses)?;
        }
        for change in &changes {
            if let Change::Create(node) = change {
                let generation = next_generation(&tx)? as i64;
                tx.execute(
                    "INSERT INTO nodes (uuid, name, created_at, generation, source, \
                     instance_uuid, provision_state) VALUES (?1, ?2, ?3, ?4, 'ironic', ?5, ?6)",
                    params![
                        node.uuid.to_string(),
                        node.name,
                        now_secs(),
                        generation,
                        node.instance_uuid,
                        node.provision_state
                    ],
                )
                .map_err(|e| conflict(e, format!("node {:?} exists", node.name)))?;
                insert_addresses(&tx, node.uuid, &node.addresses)?;
            }
        }
        tx.commit()?;
        Ok(published)
    }

    /// Deletes the leaving nodes that have nothing on them any more; their uuids.
    pub(crate) fn remove_departed(&self) -> Result<Vec<Uuid>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let sql = format!(
            "SELECT n.uuid FROM nodes n WHERE n.leaving = 1 AND n.source = 'ironic' AND NOT {BUSY}"
        );
        let gone = tx
            .prepare(&sql)?
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        for uuid in &gone {
            tx.execute("DELETE FROM nodes WHERE uuid = ?1", params![uuid])?;
        }
        tx.commit()?;
        gone.iter().map(|u| parse_uuid(u)).collect()
    }

    /// Synced nodes whose agent reports an initiator (iqn, nqn) not yet checked against
    /// Ironic, or checked with a warning (looked at again until the operator resolves it).
    pub(crate) fn connector_checks(&self) -> Result<Vec<ConnectorCheck>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT n.uuid, n.ironic_connector, n.warning, \
                    json_extract(c.value, '$.type'), json_extract(c.value, '$.connector_id') \
             FROM nodes n JOIN reports r ON r.node_uuid = n.uuid, \
                  json_each(r.body, '$.connectors') AS c \
             WHERE n.source = 'ironic' AND n.leaving = 0 \
               AND json_extract(c.value, '$.type') IN ('iqn', 'nqn')",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        checks_due(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Records a connector check: `key` is what was checked, `warning` what the operator
    /// should know (an Ironic connector that differs from the reported one).
    pub(crate) fn connector_checked(
        &self,
        node: Uuid,
        key: String,
        warning: Option<String>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE nodes SET ironic_connector = ?2, warning = ?3 WHERE uuid = ?1",
            params![node.to_string(), key, warning],
        )?;
        Ok(())
    }

    /// Synced nodes that are leaving, or whose initiators are not yet checked: a heartbeat of
    /// one of them wakes the sync's worker.
    pub(crate) fn ironic_watched(&self) -> Result<Vec<Uuid>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT uuid FROM nodes WHERE source = 'ironic' \
             AND (leaving = 1 OR ironic_connector IS NULL OR warning IS NOT NULL)",
        )?;
        let uuids = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        uuids.iter().map(|u| parse_uuid(u)).collect()
    }
}

/// Marks the node leaving: its plain targets are unassigned now, its Cinder volumes are asked
/// to detach (the Cinder worker unassigns them and deletes their attachments).
fn leave(conn: &Connection, uuid: Uuid) -> Result<Vec<GenerationChange>, StoreError> {
    let node = uuid.to_string();
    conn.execute(
        "UPDATE nodes SET leaving = 1 WHERE uuid = ?1",
        params![node],
    )?;
    conn.execute(
        "UPDATE cinder_volumes SET want_attached = 0 WHERE node_uuid = ?1",
        params![node],
    )?;
    let mut stmt = conn.prepare(
        "SELECT uuid FROM targets WHERE node_uuid = ?1 AND uuid NOT IN \
         (SELECT target_uuid FROM cinder_volumes WHERE target_uuid IS NOT NULL)",
    )?;
    let targets = stmt
        .query_map(params![node], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut changes = Vec::new();
    for target in targets {
        if let Some((node, generation)) = remove_target(conn, parse_uuid(&target)?)? {
            changes.push(GenerationChange::new(node, generation, ()));
        }
    }
    Ok(changes)
}

pub(super) fn parse_source(s: &str) -> Result<NodeSource, StoreError> {
    match s {
        "manual" => Ok(NodeSource::Manual),
        "ironic" => Ok(NodeSource::Ironic),
        other => Err(StoreError::Corrupt(format!("node source {other:?}"))),
    }
}

/// One row per reported initiator: (node, connector last checked, warning, type, id).
type ConnectorRow = (String, Option<String>, Option<String>, String, String);

/// The nodes whose reported initiators differ from what was last checked against Ironic, or
/// that carry a warning, grouped from `rows`.
pub(super) fn checks_due(rows: Vec<ConnectorRow>) -> Result<Vec<ConnectorCheck>, StoreError> {
    type Seen = (Option<String>, Option<String>, Vec<(String, String)>);
    let mut nodes: BTreeMap<String, Seen> = BTreeMap::new();
    for (uuid, checked, warning, kind, id) in rows {
        let entry = nodes
            .entry(uuid)
            .or_insert_with(|| (checked, warning, Vec::new()));
        entry.2.push((kind, id));
    }
    let mut checks = Vec::new();
    for (uuid, (checked, warning, mut reported)) in nodes {
        reported.sort();
        reported.dedup();
        let check = ConnectorCheck {
            node: parse_uuid(&uuid)?,
            reported,
            warning,
        };
        if check.warning.is_some() || checked.as_deref() != Some(check.key().as_str()) {
            checks.push(check);
        }
    }
    Ok(checks)
}
