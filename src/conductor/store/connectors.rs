//! Volume connectors: the initiator identities (IQN, WWPN, ...) registered for a node.

use rusqlite::params;
use uuid::Uuid;

use super::{SqliteDb, StoreError, conflict, parse_uuid};
use crate::protocol::{ConnectorCreate, VolumeConnector};

impl SqliteDb {
    pub(crate) fn create_connector(
        &self,
        req: ConnectorCreate,
    ) -> Result<VolumeConnector, StoreError> {
        validate_connector(&req)?;
        let uuid = Uuid::new_v4();
        self.conn()
            .execute(
                "INSERT INTO connectors (uuid, node_uuid, type, connector_id) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    uuid.to_string(),
                    req.node_uuid.to_string(),
                    req.connector_type,
                    req.connector_id
                ],
            )
            .map_err(|e| {
                conflict(
                    e,
                    format!(
                        "connector {} {:?} exists, or node {} does not",
                        req.connector_type, req.connector_id, req.node_uuid
                    ),
                )
            })?;
        Ok(VolumeConnector {
            uuid,
            node_uuid: req.node_uuid,
            connector_type: req.connector_type.clone(),
            connector_id: req.connector_id.clone(),
        })
    }

    pub(crate) fn list_connectors(
        &self,
        node: Option<Uuid>,
    ) -> Result<Vec<VolumeConnector>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT uuid, node_uuid, type, connector_id FROM connectors
             WHERE ?1 IS NULL OR node_uuid = ?1 ORDER BY node_uuid, type, connector_id",
        )?;
        let rows = stmt.query_map(params![node.map(|u| u.to_string())], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get(2)?,
                r.get(3)?,
            ))
        })?;
        rows.map(|row| {
            let (uuid, node_uuid, connector_type, connector_id) = row?;
            Ok(VolumeConnector {
                uuid: parse_uuid(&uuid)?,
                node_uuid: parse_uuid(&node_uuid)?,
                connector_type,
                connector_id,
            })
        })
        .collect()
    }

    pub(crate) fn delete_connector(&self, uuid: Uuid) -> Result<(), StoreError> {
        self.change_one("DELETE FROM connectors WHERE uuid = ?1", uuid, "connector")
    }
}

pub(super) fn validate_connector(req: &ConnectorCreate) -> Result<(), StoreError> {
    if !["iqn", "mac", "ip", "wwpn", "wwnn", "nqn"].contains(&req.connector_type.as_str()) {
        return Err(StoreError::Invalid {
            kind: "invalid_connector",
            message: format!(
                "connector type {:?} is unknown; use iqn, mac, ip, wwpn, wwnn or nqn",
                req.connector_type
            ),
        });
    }
    Ok(())
}
