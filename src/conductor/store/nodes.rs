//! Nodes: enrolment, names and MAC addresses, and finding a node by them.

use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::ironic::parse_source;
use super::{SqliteDb, StoreError, conflict, format_secs, now_secs, parse_uuid, tokens};
use crate::protocol::{Node, NodeCreate, NodeSource};

/// What a lookup found: the node and, the first time only, its token in clear.
pub(crate) struct LookupResult {
    pub node: Node,
    pub new_token: Option<String>,
    /// Whether one of the node's MAC addresses named it, rather than its uuid alone.
    pub by_address: bool,
}

impl SqliteDb {
    pub(crate) fn create_node(&self, req: NodeCreate) -> Result<Node, StoreError> {
        validate_name(&req.name)?;
        let addresses = normalize_macs(&req.addresses)?;
        let uuid = req.uuid.unwrap_or_else(Uuid::new_v4);
        let token_hash = tokens::provisioned(req.agent_token.as_deref())?;
        let token_issued = token_hash.is_some();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let created = now_secs();
        let generation = super::targets::next_generation(&tx)? as i64;
        tx.execute(
            "INSERT INTO nodes (uuid, name, created_at, token_hash, token_issued, generation) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                uuid.to_string(),
                req.name,
                created,
                token_hash,
                token_issued,
                generation
            ],
        )
        .map_err(|e| {
            conflict(
                e,
                format!("a node named {:?} or with uuid {uuid} exists", req.name),
            )
        })?;
        insert_addresses(&tx, uuid, &addresses)?;
        tx.commit()?;
        Ok(new_manual_node(
            uuid,
            req.name.clone(),
            addresses,
            token_issued,
            created,
        ))
    }

    /// Replaces a manual node's MAC addresses. A synced node's are its Ironic ports'.
    pub(crate) fn set_node_addresses(
        &self,
        uuid: Uuid,
        addresses: Vec<String>,
    ) -> Result<Node, StoreError> {
        let addresses = normalize_macs(&addresses)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let node = read_node(&tx, &uuid.to_string())?;
        if node.source == NodeSource::Ironic {
            return Err(StoreError::Synced(format!(
                "node {} is synced from Ironic: its addresses are its Ironic ports' \
                 (openstack baremetal port create/delete); tether follows at the next sync",
                node.name
            )));
        }
        tx.execute(
            "DELETE FROM node_addresses WHERE node_uuid = ?1",
            params![uuid.to_string()],
        )?;
        insert_addresses(&tx, uuid, &addresses)?;
        let node = read_node(&tx, &uuid.to_string())?;
        tx.commit()?;
        Ok(node)
    }

    /// Finds a node by uuid or by name.
    pub(crate) fn find_node(&self, ident: String) -> Result<Node, StoreError> {
        let conn = self.conn();
        let uuid: Option<String> = conn
            .query_row(
                "SELECT uuid FROM nodes WHERE uuid = ?1 OR name = ?1",
                params![ident],
                |r| r.get(0),
            )
            .optional()?;
        let uuid = uuid.ok_or_else(|| StoreError::NotFound(format!("node {ident:?}")))?;
        read_node(&conn, &uuid)
    }

    pub(crate) fn list_nodes(&self) -> Result<Vec<Node>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT uuid FROM nodes ORDER BY name")?;
        let uuids: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        uuids.iter().map(|u| read_node(&conn, u)).collect()
    }

    /// Deletes the node and, by cascade, its addresses, connectors, targets and report. Its
    /// generation goes with it, so there is no change to publish; a node enrolled again under
    /// the same uuid starts from a generation never given before.
    /// Deletes the node, unless it has Cinder volumes: their attachments would stay in Cinder.
    /// A synced node goes when Ironic deletes it; one already leaving may be deleted by hand
    /// (an agent that will never report its volumes detached).
    pub(crate) fn delete_node(&self, uuid: Uuid) -> Result<(), StoreError> {
        let node = read_node(&self.conn(), &uuid.to_string())?;
        if node.source == NodeSource::Ironic && !node.leaving {
            return Err(StoreError::Synced(format!(
                "node {} is synced from Ironic: delete it in Ironic (openstack baremetal node \
                 delete); tether unassigns its volumes and removes it once they are detached",
                node.name
            )));
        }
        self.change_one("DELETE FROM nodes WHERE uuid = ?1", uuid, "node")
            .map_err(|e| match e {
                StoreError::Db(e) => conflict(
                    e,
                    format!(
                        "node {uuid} has Cinder volumes: detach them first \
                         (tether ctl volume detach), so that no attachment stays in Cinder"
                    ),
                ),
                other => other,
            })
    }

    /// Finds the node by any of its MAC addresses, which must agree with `node_uuid` when both
    /// are given, or else by `node_uuid` alone. Only a lookup that named one of the node's MAC
    /// addresses is issued its token, the first time: a uuid is no secret (the metrics list
    /// them), a MAC is at least on the node's own network.
    pub(crate) fn lookup(
        &self,
        addresses: Vec<String>,
        node_uuid: Option<Uuid>,
    ) -> Result<Option<LookupResult>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut by_address: Option<String> = None;
        for mac in addresses.iter().filter_map(|m| normalize_mac(m)) {
            by_address = tx
                .query_row(
                    "SELECT node_uuid FROM node_addresses WHERE address = ?1",
                    params![mac],
                    |r| r.get(0),
                )
                .optional()?;
            if by_address.is_some() {
                break;
            }
        }
        let wanted = node_uuid.map(|u| u.to_string());
        let found = match (by_address, wanted) {
            (Some(uuid), Some(wanted)) if uuid != wanted => return Ok(None),
            (Some(uuid), _) => Some((uuid, true)),
            (None, Some(wanted)) => tx
                .query_row(
                    "SELECT uuid FROM nodes WHERE uuid = ?1",
                    params![wanted],
                    |r| r.get(0),
                )
                .optional()?
                .map(|uuid| (uuid, false)),
            (None, None) => None,
        };
        let Some((uuid, by_address)) = found else {
            return Ok(None);
        };
        let new_token = match by_address {
            true => tokens::issue_once(&tx, &uuid)?,
            false => None,
        };
        let node = read_node(&tx, &uuid)?;
        tx.commit()?;
        Ok(Some(LookupResult {
            node,
            new_token,
            by_address,
        }))
    }
}

/// Gives `node` these (normalized) addresses; one that another node has is a conflict.
pub(super) fn insert_addresses(
    conn: &Connection,
    node: Uuid,
    macs: impl IntoIterator<Item = impl AsRef<str>>,
) -> Result<(), StoreError> {
    for mac in macs {
        let mac = mac.as_ref();
        conn.execute(
            "INSERT INTO node_addresses (address, node_uuid) VALUES (?1, ?2)",
            params![mac, node.to_string()],
        )
        .map_err(|e| conflict(e, format!("address {mac} belongs to another node")))?;
    }
    Ok(())
}

pub(super) fn normalize_macs(macs: &[String]) -> Result<Vec<String>, StoreError> {
    macs.iter()
        .map(|mac| {
            normalize_mac(mac).ok_or_else(|| StoreError::Invalid {
                kind: "invalid_address",
                message: format!("{mac:?} is not a MAC address (expected aa:bb:cc:dd:ee:ff)"),
            })
        })
        .collect()
}

/// Lower-case, colon-separated MAC address, or None.
pub(crate) fn normalize_mac(mac: &str) -> Option<String> {
    let mac = mac.trim().to_ascii_lowercase().replace('-', ":");
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    ok.then_some(mac)
}

pub(super) fn validate_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && Uuid::parse_str(name).is_err();
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            kind: "invalid_name",
            message: format!(
                "node name {name:?} must be 1 to 255 letters, digits, '.', '_' or '-', \
                 and not a UUID"
            ),
        })
    }
}

pub(super) fn read_node(conn: &Connection, uuid: &str) -> Result<Node, StoreError> {
    type Row = (
        String,
        i64,
        bool,
        String,
        Option<String>,
        Option<String>,
        bool,
    );
    let row: Option<(Row, Option<String>)> = conn
        .query_row(
            "SELECT name, created_at, token_issued, source, instance_uuid, provision_state, \
             leaving, warning FROM nodes WHERE uuid = ?1",
            params![uuid],
            |r| {
                Ok((
                    (
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ),
                    r.get(7)?,
                ))
            },
        )
        .optional()?;
    let (
        (name, created_at, token_issued, source, instance_uuid, provision_state, leaving),
        warning,
    ) = row.ok_or_else(|| StoreError::NotFound(format!("node {uuid}")))?;
    let mut stmt = conn.prepare_cached(
        "SELECT address FROM node_addresses WHERE node_uuid = ?1 ORDER BY address",
    )?;
    let addresses = stmt
        .query_map(params![uuid], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let last_seen: Option<i64> = conn
        .query_row(
            "SELECT received_at FROM reports WHERE node_uuid = ?1",
            params![uuid],
            |r| r.get(0),
        )
        .optional()?;
    Ok(Node {
        uuid: parse_uuid(uuid)?,
        name,
        addresses,
        token_issued,
        created_at: format_secs(created_at),
        last_seen: last_seen.map(format_secs),
        source: parse_source(&source)?,
        instance_uuid,
        provision_state,
        leaving,
        warning,
    })
}

/// A node just enrolled by hand, as the store answers its creation.
pub(super) fn new_manual_node(
    uuid: Uuid,
    name: String,
    addresses: Vec<String>,
    token_issued: bool,
    created: i64,
) -> Node {
    Node {
        uuid,
        name,
        addresses,
        token_issued,
        created_at: format_secs(created),
        last_seen: None,
        source: NodeSource::Manual,
        instance_uuid: None,
        provision_state: None,
        leaving: false,
        warning: None,
    }
}
