//! Cinder volumes the conductor attaches: one row per (node, volume), written before each call
//! to Cinder that could leave something behind, so that a restarted conductor resumes every
//! flow from its database and leaks no attachment.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::targets::{insert_target, remove_target};
use super::{SqliteDb, StoreError, conflict, parse_uuid};
use crate::conductor::generations::GenerationChange;
use crate::protocol::cinder::{CinderPhase, PhaseTime};
use crate::protocol::{ErrorReport, TargetCreate, timestamp};

/// What `update_cinder_volume` does to the row it read, within its transaction.
pub(crate) type CinderChange = Box<dyn FnOnce(&mut CinderRow) + Send>;

/// One Cinder volume of one node, as stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CinderRow {
    pub node_uuid: Uuid,
    pub volume_id: String,
    pub volume_name: Option<String>,
    /// False once a detach was asked.
    pub want_attached: bool,
    pub phase: CinderPhase,
    pub attachment_id: Option<String>,
    pub target_uuid: Option<Uuid>,
    pub read_only: bool,
    pub mount: Option<Map<String, Value>>,
    pub cinder_status: Option<String>,
    /// What the last call to Cinder for this volume got, when it failed.
    pub cinder_error: Option<String>,
    pub error: Option<ErrorReport>,
    pub phases: Vec<PhaseTime>,
}

impl CinderRow {
    /// A volume about to be attached: nothing made anywhere yet.
    pub(crate) fn new(
        node_uuid: Uuid,
        volume_id: String,
        volume_name: Option<String>,
        read_only: bool,
        mount: Option<Map<String, Value>>,
        cinder_status: Option<String>,
    ) -> Self {
        Self {
            node_uuid,
            volume_id,
            volume_name,
            want_attached: true,
            phase: CinderPhase::Creating,
            attachment_id: None,
            target_uuid: None,
            read_only,
            mount,
            cinder_status,
            cinder_error: None,
            error: None,
            phases: vec![phase_now(CinderPhase::Creating)],
        }
    }
}

fn phase_now(phase: CinderPhase) -> PhaseTime {
    let now = std::time::SystemTime::now();
    let ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_millis())
        .unwrap_or(0);
    // RFC 3339 with milliseconds: phases a second apart or less still read in order.
    let seconds = timestamp(now);
    let at = match seconds.strip_suffix('Z') {
        Some(s) => format!("{s}.{ms:03}Z"),
        None => seconds,
    };
    PhaseTime { phase, at }
}

pub(super) const COLUMNS: &str = concat!(
    "node_uuid, volume_id, volume_name, want_attached, phase, attachment_id, target_uuid, ",
    "read_only, mount, cinder_status, cinder_error, error_kind, error_message, phases"
);

fn read_row(r: &Row<'_>) -> rusqlite::Result<CinderRowText> {
    Ok(CinderRowText {
        node_uuid: r.get(0)?,
        volume_id: r.get(1)?,
        volume_name: r.get(2)?,
        want_attached: r.get(3)?,
        phase: r.get(4)?,
        attachment_id: r.get(5)?,
        target_uuid: r.get(6)?,
        read_only: r.get(7)?,
        mount: r.get(8)?,
        cinder_status: r.get(9)?,
        cinder_error: r.get(10)?,
        error_kind: r.get(11)?,
        error_message: r.get(12)?,
        phases: r.get(13)?,
    })
}

/// A row as SQLite returns it, before its text is parsed.
pub(super) struct CinderRowText {
    pub(super) node_uuid: String,
    pub(super) volume_id: String,
    pub(super) volume_name: Option<String>,
    pub(super) want_attached: bool,
    pub(super) phase: String,
    pub(super) attachment_id: Option<String>,
    pub(super) target_uuid: Option<String>,
    pub(super) read_only: bool,
    pub(super) mount: Option<String>,
    pub(super) cinder_status: Option<String>,
    pub(super) cinder_error: Option<String>,
    pub(super) error_kind: Option<String>,
    pub(super) error_message: Option<String>,
    pub(super) phases: String,
}

impl CinderRowText {
    pub(super) fn parse(self) -> Result<CinderRow, StoreError> {
        let corrupt = |what: &str, e: String| {
            StoreError::Corrupt(format!("Cinder volume {} {what}: {e}", self.volume_id))
        };
        let mount = match &self.mount {
            Some(text) => Some(
                serde_json::from_str::<Map<String, Value>>(text)
                    .map_err(|e| corrupt("mount", e.to_string()))?,
            ),
            None => None,
        };
        let phases =
            serde_json::from_str(&self.phases).map_err(|e| corrupt("phases", e.to_string()))?;
        Ok(CinderRow {
            node_uuid: parse_uuid(&self.node_uuid)?,
            phase: CinderPhase::parse(&self.phase)
                .ok_or_else(|| corrupt("phase", self.phase.clone()))?,
            target_uuid: self.target_uuid.as_deref().map(parse_uuid).transpose()?,
            error: match (self.error_kind, self.error_message) {
                (Some(kind), Some(message)) => Some(ErrorReport { kind, message }),
                _ => None,
            },
            volume_id: self.volume_id,
            volume_name: self.volume_name,
            want_attached: self.want_attached,
            attachment_id: self.attachment_id,
            read_only: self.read_only,
            mount,
            cinder_status: self.cinder_status,
            cinder_error: self.cinder_error,
            phases,
        })
    }
}

fn select(
    conn: &Connection,
    filter: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<CinderRow>, StoreError> {
    let sql =
        format!("SELECT {COLUMNS} FROM cinder_volumes {filter} ORDER BY node_uuid, volume_id");
    let mut stmt = conn.prepare(&sql)?;
    let rows: Vec<CinderRowText> = stmt.query_map(args, read_row)?.collect::<Result<_, _>>()?;
    rows.into_iter().map(CinderRowText::parse).collect()
}

fn get(conn: &Connection, node: Uuid, volume_id: &str) -> Result<CinderRow, StoreError> {
    select(
        conn,
        "WHERE node_uuid = ?1 AND volume_id = ?2",
        &[&node.to_string(), &volume_id],
    )?
    .pop()
    .ok_or_else(|| StoreError::NotFound(format!("Cinder volume {volume_id} of node {node}")))
}

/// Writes `row` over the stored one (the whole row: callers read, change, write).
fn put(conn: &Connection, row: &CinderRow) -> Result<(), StoreError> {
    let phases =
        serde_json::to_string(&row.phases).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mount = row
        .mount
        .as_ref()
        .map(|m| Value::Object(m.clone()).to_string());
    let changed = conn.execute(
        "UPDATE cinder_volumes SET volume_name = ?3, want_attached = ?4, phase = ?5, \
         attachment_id = ?6, target_uuid = ?7, read_only = ?8, mount = ?9, cinder_status = ?10, \
         cinder_error = ?11, error_kind = ?12, error_message = ?13, phases = ?14 \
         WHERE node_uuid = ?1 AND volume_id = ?2",
        params![
            row.node_uuid.to_string(),
            row.volume_id,
            row.volume_name,
            row.want_attached,
            row.phase.as_str(),
            row.attachment_id,
            row.target_uuid.map(|u| u.to_string()),
            row.read_only,
            mount,
            row.cinder_status,
            row.cinder_error,
            row.error.as_ref().map(|e| e.kind.clone()),
            row.error.as_ref().map(|e| e.message.clone()),
            phases,
        ],
    )?;
    match changed {
        0 => Err(StoreError::NotFound(format!(
            "Cinder volume {} of node {}",
            row.volume_id, row.node_uuid
        ))),
        _ => Ok(()),
    }
}

impl CinderRow {
    /// Moves to `phase`, noting when (once per change).
    pub(crate) fn enter(&mut self, phase: CinderPhase) {
        if self.phase != phase {
            self.phase = phase;
            self.phases.push(phase_now(phase));
        }
    }
}

impl SqliteDb {
    /// Records a volume about to be attached. A volume already attached to the node (or being
    /// detached from it) is a conflict.
    pub(crate) fn insert_cinder_volume(&self, row: CinderRow) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO cinder_volumes (node_uuid, volume_id, phases) VALUES (?1, ?2, '[]')",
            params![row.node_uuid.to_string(), row.volume_id],
        )
        .map_err(|e| {
            conflict(
                e,
                format!(
                    "Cinder volume {} is already attached to node {}, or being detached from it",
                    row.volume_id, row.node_uuid
                ),
            )
        })?;
        put(&conn, &row)
    }

    pub(crate) fn cinder_volumes(&self, node: Option<Uuid>) -> Result<Vec<CinderRow>, StoreError> {
        let conn = self.conn();
        match node {
            Some(node) => select(&conn, "WHERE node_uuid = ?1", &[&node.to_string()]),
            None => select(&conn, "", &[]),
        }
    }

    /// Reads the row, lets `change` change it, writes it back, in one transaction.
    pub(crate) fn update_cinder_volume(
        &self,
        node: Uuid,
        volume_id: String,
        change: CinderChange,
    ) -> Result<CinderRow, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut row = get(&tx, node, &volume_id)?;
        change(&mut row);
        put(&tx, &row)?;
        tx.commit()?;
        Ok(row)
    }

    /// Assigns the volume's target and enters `attaching`, in one transaction.
    pub(crate) fn assign_cinder_target(
        &self,
        node: Uuid,
        volume_id: String,
        target: TargetCreate,
    ) -> Result<GenerationChange<CinderRow>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut row = get(&tx, node, &volume_id)?;
        let (uuid, generation) = insert_target(&tx, &target)?;
        row.target_uuid = Some(uuid);
        row.error = None;
        row.enter(CinderPhase::Attaching);
        put(&tx, &row)?;
        tx.commit()?;
        Ok(GenerationChange::new(node, generation, row))
    }

    /// Unassigns the volume's target (if it still has one) and enters `detaching`, in one
    /// transaction. The generation changes only when a target was deleted.
    pub(crate) fn unassign_cinder_target(
        &self,
        node: Uuid,
        volume_id: String,
    ) -> Result<(CinderRow, Option<GenerationChange>), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut row = get(&tx, node, &volume_id)?;
        let removed = match row.target_uuid {
            Some(uuid) => remove_target(&tx, uuid)?,
            None => None,
        };
        row.enter(CinderPhase::Detaching);
        put(&tx, &row)?;
        tx.commit()?;
        Ok((
            row,
            removed.map(|(node, generation)| GenerationChange::new(node, generation, ())),
        ))
    }

    /// Forgets a volume whose attachment is gone.
    pub(crate) fn forget_cinder_volume(
        &self,
        node: Uuid,
        volume_id: String,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM cinder_volumes WHERE node_uuid = ?1 AND volume_id = ?2",
            params![node.to_string(), volume_id],
        )?;
        Ok(())
    }

    /// Whether the node still has the target.
    pub(crate) fn target_exists(&self, uuid: Uuid) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT 1 FROM targets WHERE uuid = ?1",
                params![uuid.to_string()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }
}
