//! Volume targets and the per-node generation that every change to them bumps.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{SqliteDb, StoreError, conflict, now_secs, parse_uuid};
use crate::conductor::generations::GenerationChange;
use crate::protocol::{TargetCreate, VolumeTarget};

impl SqliteDb {
    /// Stores a target and bumps its node's generation, in one transaction.
    pub(crate) fn create_target(
        &self,
        req: TargetCreate,
    ) -> Result<GenerationChange<VolumeTarget>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let (uuid, generation) = insert_target(&tx, &req)?;
        tx.commit()?;
        Ok(GenerationChange::new(
            req.node_uuid,
            generation,
            req.target(uuid),
        ))
    }

    /// Deletes a target and bumps its node's generation, in one transaction.
    pub(crate) fn delete_target(&self, uuid: Uuid) -> Result<GenerationChange, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let (node, generation) = remove_target(&tx, uuid)?
            .ok_or_else(|| StoreError::NotFound(format!("target {uuid}")))?;
        tx.commit()?;
        Ok(GenerationChange::new(node, generation, ()))
    }

    /// Records that the target's volume grew to `size_bytes` and bumps its node's generation,
    /// in one transaction. A volume never shrinks: a smaller size than the recorded one is
    /// refused, the same size changes nothing.
    pub(crate) fn resize_target(
        &self,
        uuid: Uuid,
        size_bytes: u64,
    ) -> Result<GenerationChange<VolumeTarget>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut target = query_targets(&tx, "WHERE uuid = ?1", &uuid.to_string())?
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("target {uuid}")))?;
        super::refuse_shrink(uuid, target.size_bytes, size_bytes)?;
        let generation = if target.size_bytes == Some(size_bytes) {
            generation(&tx, target.node_uuid)?
        } else {
            tx.execute(
                "UPDATE targets SET size_bytes = ?2 WHERE uuid = ?1",
                params![uuid.to_string(), size_bytes as i64],
            )?;
            bump_generation(&tx, target.node_uuid)?
        };
        tx.commit()?;
        target.size_bytes = Some(size_bytes);
        Ok(GenerationChange::new(target.node_uuid, generation, target))
    }

    pub(crate) fn get_target(&self, uuid: Uuid) -> Result<VolumeTarget, StoreError> {
        let conn = self.conn();
        let mut targets = query_targets(&conn, "WHERE uuid = ?1", &uuid.to_string())?;
        targets
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("target {uuid}")))
    }

    pub(crate) fn list_targets(&self, node: Option<Uuid>) -> Result<Vec<VolumeTarget>, StoreError> {
        let conn = self.conn();
        match node {
            Some(node) => query_targets(&conn, "WHERE node_uuid = ?1", &node.to_string()),
            None => query_targets(&conn, "WHERE ?1 = ?1", ""),
        }
    }

    /// The node's generation and its targets, read together.
    pub(crate) fn node_targets(&self, node: Uuid) -> Result<(u64, Vec<VolumeTarget>), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let generation = generation(&tx, node)?;
        let targets = query_targets(&tx, "WHERE node_uuid = ?1", &node.to_string())?;
        tx.commit()?;
        Ok((generation, targets))
    }

    pub(crate) fn generation(&self, node: Uuid) -> Result<u64, StoreError> {
        generation(&self.conn(), node)
    }
}

/// Inserts a target and bumps its node's generation, within the caller's transaction.
pub(super) fn insert_target(
    conn: &Connection,
    req: &TargetCreate,
) -> Result<(Uuid, u64), StoreError> {
    let uuid = req.uuid.unwrap_or_else(Uuid::new_v4);
    conn.execute(
        "INSERT INTO targets (uuid, node_uuid, volume_type, volume_id, boot_index, \
         properties, extra, created_at, size_bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            uuid.to_string(),
            req.node_uuid.to_string(),
            req.volume_type,
            req.volume_id,
            req.boot_index,
            Value::Object(req.properties.clone()).to_string(),
            Value::Object(req.extra.clone()).to_string(),
            now_secs(),
            req.size_bytes.map(|s| s as i64),
        ],
    )
    .map_err(|e| {
        conflict(
            e,
            format!(
                "target {uuid} or volume {:?} on node {} exists, or the node does not",
                req.volume_id, req.node_uuid
            ),
        )
    })?;
    Ok((uuid, bump_generation(conn, req.node_uuid)?))
}

/// Deletes a target and bumps its node's generation, within the caller's transaction; `None`
/// when there is no such target.
pub(super) fn remove_target(
    conn: &Connection,
    uuid: Uuid,
) -> Result<Option<(Uuid, u64)>, StoreError> {
    let node: Option<String> = conn
        .query_row(
            "DELETE FROM targets WHERE uuid = ?1 RETURNING node_uuid",
            params![uuid.to_string()],
            |r| r.get(0),
        )
        .optional()?;
    let Some(node) = node else {
        return Ok(None);
    };
    let node = parse_uuid(&node)?;
    Ok(Some((node, bump_generation(conn, node)?)))
}

/// The uuids of the node's targets.
pub(super) fn assigned_targets(conn: &Connection, node: Uuid) -> Result<HashSet<Uuid>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT uuid FROM targets WHERE node_uuid = ?1")?;
    let uuids: Vec<String> = stmt
        .query_map(params![node.to_string()], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    uuids.iter().map(|u| parse_uuid(u)).collect()
}

pub(super) fn generation(conn: &Connection, node: Uuid) -> Result<u64, StoreError> {
    node_generation(conn, "SELECT generation FROM nodes WHERE uuid = ?1", node)
}

fn bump_generation(conn: &Connection, node: Uuid) -> Result<u64, StoreError> {
    let next = next_generation(conn)?;
    let sql = "UPDATE nodes SET generation = ?2 WHERE uuid = ?1";
    match conn.execute(sql, params![node.to_string(), next as i64])? {
        0 => Err(StoreError::NotFound(format!("node {node}"))),
        _ => Ok(next),
    }
}

/// The next value of the one generation sequence: the microseconds since the epoch, or one past
/// the last value if that is larger. A node's generations therefore never repeat: not when it
/// is deleted and enrolled again under its uuid (its agent would take the new node's first
/// generation for one it applied), nor when the database is restored from an older backup.
pub(super) fn next_generation(conn: &Connection) -> Result<u64, StoreError> {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    let value: i64 = conn.query_row(
        "UPDATE generation_sequence SET value = MAX(value + 1, ?1) WHERE id = 1 RETURNING value",
        params![now_us],
        |r| r.get(0),
    )?;
    Ok(value as u64)
}

/// The generation a query on the node's row returns; no row is `NotFound`.
fn node_generation(conn: &Connection, sql: &str, node: Uuid) -> Result<u64, StoreError> {
    conn.query_row(sql, params![node.to_string()], |r| r.get::<_, i64>(0))
        .optional()?
        .map(|g| g as u64)
        .ok_or_else(|| StoreError::NotFound(format!("node {node}")))
}

fn query_targets(
    conn: &Connection,
    filter: &str,
    arg: &str,
) -> Result<Vec<VolumeTarget>, StoreError> {
    let sql = format!(
        "SELECT uuid, node_uuid, volume_type, volume_id, boot_index, properties, extra, \
         size_bytes FROM targets {filter}
         ORDER BY boot_index IS NULL, boot_index, created_at, uuid"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![arg], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<u32>>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, String>(6)?,
            r.get::<_, Option<i64>>(7)?,
        ))
    })?;
    rows.map(|row| {
        let (uuid, node_uuid, volume_type, volume_id, boot_index, properties, extra, size) = row?;
        Ok(VolumeTarget {
            uuid: parse_uuid(&uuid)?,
            node_uuid: parse_uuid(&node_uuid)?,
            volume_type,
            volume_id,
            boot_index,
            properties: parse_object(&properties)?,
            extra: parse_object(&extra)?,
            size_bytes: size.map(|s| s as u64),
        })
    })
    .collect()
}

pub(super) fn parse_object(s: &str) -> Result<Map<String, Value>, StoreError> {
    match serde_json::from_str(s) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(StoreError::Corrupt(
            "a stored target's properties are not a JSON object".into(),
        )),
    }
}
