//! SQLite store of nodes, connectors, targets and the last report of every node.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, OptionalExtension, ToSql, params};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use thiserror::Error;
use uuid::Uuid;

use super::generations::GenerationChange;
use crate::protocol::{
    ConnectorCreate, Heartbeat, Node, NodeCreate, NodeStatus, TargetCreate, VolumeConnector,
    VolumeTarget, timestamp,
};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    Invalid { kind: &'static str, message: String },
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Every schema change is appended here; `PRAGMA user_version` counts how many have run.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE nodes (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    token_hash TEXT,
    token_issued INTEGER NOT NULL DEFAULT 0,
    generation INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE node_addresses (
    address TEXT PRIMARY KEY,
    node_uuid TEXT NOT NULL REFERENCES nodes(uuid) ON DELETE CASCADE
);
CREATE TABLE connectors (
    uuid TEXT PRIMARY KEY,
    node_uuid TEXT NOT NULL REFERENCES nodes(uuid) ON DELETE CASCADE,
    type TEXT NOT NULL,
    connector_id TEXT NOT NULL,
    UNIQUE (type, connector_id)
);
CREATE TABLE targets (
    uuid TEXT PRIMARY KEY,
    node_uuid TEXT NOT NULL REFERENCES nodes(uuid) ON DELETE CASCADE,
    volume_type TEXT NOT NULL,
    volume_id TEXT NOT NULL,
    boot_index INTEGER,
    properties TEXT NOT NULL,
    extra TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (node_uuid, volume_id)
);
CREATE INDEX targets_by_node ON targets(node_uuid);
CREATE TABLE reports (
    node_uuid TEXT PRIMARY KEY REFERENCES nodes(uuid) ON DELETE CASCADE,
    body TEXT NOT NULL,
    received_at INTEGER NOT NULL
);
"#,
    // Volume counts by state of each report, kept beside the body so that a metrics scrape sums
    // small objects instead of parsing every report.
    r#"
ALTER TABLE reports ADD COLUMN volume_states TEXT NOT NULL DEFAULT '{}';
UPDATE reports SET volume_states = COALESCE((
    SELECT json_group_object(state, n) FROM (
        SELECT json_extract(v.value, '$.state') AS state, COUNT(*) AS n
        FROM json_each(reports.body, '$.volumes') AS v
        WHERE json_extract(v.value, '$.state') IS NOT NULL
        GROUP BY 1
    )
), '{}');
CREATE INDEX reports_summary ON reports(node_uuid, received_at, volume_states);
"#,
];

pub struct Store {
    conn: Mutex<Connection>,
}

/// Counts for the metrics endpoint; times are seconds since the Unix epoch.
#[derive(Debug, Clone)]
pub struct MetricsSnapshot {
    pub now: i64,
    pub nodes: u64,
    /// (node uuid, time of its last report) for every node that reported.
    pub last_seen: Vec<(String, i64)>,
    /// (state, volumes in that state) summed over the latest reports.
    pub volume_states: Vec<(String, u64)>,
    /// (volume type, targets) as stored.
    pub targets_by_type: Vec<(String, u64)>,
}

/// What a lookup found: the node and, the first time only, its token in clear.
pub struct LookupResult {
    pub node: Node,
    pub new_token: Option<String>,
}

/// A token's SHA-256, hex-encoded: all that is kept of a token. It has no `PartialEq` on
/// purpose: [`TokenHash::matches`] is the one comparison, and it takes constant time.
pub struct TokenHash(String);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        Self(hex(&Sha256::digest(token.as_bytes())))
    }

    /// Whether `token` hashes to this, in a time that does not tell where they differ.
    pub fn matches(&self, token: &str) -> bool {
        let candidate = Self::of(token);
        let (a, b) = (self.0.as_bytes(), candidate.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl ToSql for TokenHash {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        self.0.to_sql()
    }
}

/// 32 random bytes, hex-encoded.
pub fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn format_secs(secs: i64) -> String {
    timestamp(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

/// Lower-case, colon-separated MAC address, or None.
pub fn normalize_mac(mac: &str) -> Option<String> {
    let mac = mac.trim().to_ascii_lowercase().replace('-', ":");
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    ok.then_some(mac)
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        restrict_permissions(path);
        Self::init(conn)
    }

    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "the database has schema version {version}, newer than this conductor knows ({}); run a newer conductor",
                MIGRATIONS.len()
            )));
        }
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction()?;
            tx.execute_batch(migration)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
            tracing::info!(version = i + 1, "applied schema migration");
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written: transactions roll back.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- nodes ----

    pub fn create_node(&self, req: &NodeCreate) -> Result<Node, StoreError> {
        validate_name(&req.name)?;
        let mut addresses = Vec::new();
        for mac in &req.addresses {
            addresses.push(normalize_mac(mac).ok_or_else(|| StoreError::Invalid {
                kind: "invalid_address",
                message: format!("{mac:?} is not a MAC address (expected aa:bb:cc:dd:ee:ff)"),
            })?);
        }
        let uuid = req.uuid.unwrap_or_else(Uuid::new_v4);
        let token_hash = match &req.agent_token {
            Some(token) if token.len() < 16 => {
                return Err(StoreError::Invalid {
                    kind: "weak_token",
                    message: "a provisioned agent token must be at least 16 characters".into(),
                });
            }
            Some(token) => Some(TokenHash::of(token)),
            None => None,
        };
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let created = now_secs();
        tx.execute(
            "INSERT INTO nodes (uuid, name, created_at, token_hash, token_issued) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![uuid.to_string(), req.name, created, token_hash, token_hash.is_some()],
        )
        .map_err(|e| conflict(e, format!("a node named {:?} or with uuid {uuid} exists", req.name)))?;
        for mac in &addresses {
            tx.execute(
                "INSERT INTO node_addresses (address, node_uuid) VALUES (?1, ?2)",
                params![mac, uuid.to_string()],
            )
            .map_err(|e| conflict(e, format!("address {mac} belongs to another node")))?;
        }
        tx.commit()?;
        Ok(Node {
            uuid,
            name: req.name.clone(),
            addresses,
            token_issued: token_hash.is_some(),
            created_at: format_secs(created),
            last_seen: None,
        })
    }

    /// Finds a node by uuid or by name.
    pub fn find_node(&self, ident: &str) -> Result<Node, StoreError> {
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

    pub fn list_nodes(&self) -> Result<Vec<Node>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT uuid FROM nodes ORDER BY name")?;
        let uuids: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        uuids.iter().map(|u| read_node(&conn, u)).collect()
    }

    pub fn delete_node(&self, uuid: Uuid) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "DELETE FROM nodes WHERE uuid = ?1",
            params![uuid.to_string()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("node {uuid}")));
        }
        Ok(())
    }

    /// Finds the node by any of its MAC addresses (and uuid, when given). Issues the token the
    /// first time: it is returned in clear exactly once and stored only as a hash.
    pub fn lookup(
        &self,
        addresses: &[String],
        node_uuid: Option<Uuid>,
    ) -> Result<Option<LookupResult>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut found: Option<String> = None;
        for mac in addresses.iter().filter_map(|m| normalize_mac(m)) {
            found = tx
                .query_row(
                    "SELECT node_uuid FROM node_addresses WHERE address = ?1",
                    params![mac],
                    |r| r.get(0),
                )
                .optional()?;
            if found.is_some() {
                break;
            }
        }
        if let Some(wanted) = node_uuid {
            match &found {
                Some(uuid) if *uuid != wanted.to_string() => return Ok(None),
                Some(_) => {}
                None if addresses.is_empty() => {
                    found = tx
                        .query_row(
                            "SELECT uuid FROM nodes WHERE uuid = ?1",
                            params![wanted.to_string()],
                            |r| r.get(0),
                        )
                        .optional()?;
                }
                None => {}
            }
        }
        let Some(uuid) = found else { return Ok(None) };
        let issued: bool = tx.query_row(
            "SELECT token_issued FROM nodes WHERE uuid = ?1",
            params![uuid],
            |r| r.get(0),
        )?;
        let new_token = if issued {
            None
        } else {
            let token = new_token();
            tx.execute(
                "UPDATE nodes SET token_hash = ?2, token_issued = 1 WHERE uuid = ?1",
                params![uuid, TokenHash::of(&token)],
            )?;
            Some(token)
        };
        let node = read_node(&tx, &uuid)?;
        tx.commit()?;
        Ok(Some(LookupResult { node, new_token }))
    }

    /// Whether `token` is the agent token of `node`; false for a node that does not exist.
    pub fn agent_token_matches(&self, node: Uuid, token: &str) -> Result<bool, StoreError> {
        let stored: Option<Option<String>> = self
            .conn()
            .query_row(
                "SELECT token_hash FROM nodes WHERE uuid = ?1",
                params![node.to_string()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(stored
            .flatten()
            .is_some_and(|hash| TokenHash(hash).matches(token)))
    }

    /// Forgets the issued token so that the node's next lookup issues a new one.
    pub fn reset_token(&self, node: Uuid) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "UPDATE nodes SET token_hash = NULL, token_issued = 0 WHERE uuid = ?1",
            params![node.to_string()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("node {node}")));
        }
        Ok(())
    }

    // ---- connectors ----

    pub fn create_connector(&self, req: &ConnectorCreate) -> Result<VolumeConnector, StoreError> {
        if !["iqn", "mac", "ip", "wwpn", "wwnn", "nqn"].contains(&req.connector_type.as_str()) {
            return Err(StoreError::Invalid {
                kind: "invalid_connector",
                message: format!(
                    "connector type {:?} is unknown; use iqn, mac, ip, wwpn, wwnn or nqn",
                    req.connector_type
                ),
            });
        }
        let uuid = Uuid::new_v4();
        self.conn()
            .execute(
                "INSERT INTO connectors (uuid, node_uuid, type, connector_id) VALUES (?1, ?2, ?3, ?4)",
                params![uuid.to_string(), req.node_uuid.to_string(), req.connector_type, req.connector_id],
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

    pub fn list_connectors(&self, node: Option<Uuid>) -> Result<Vec<VolumeConnector>, StoreError> {
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

    pub fn delete_connector(&self, uuid: Uuid) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "DELETE FROM connectors WHERE uuid = ?1",
            params![uuid.to_string()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("connector {uuid}")));
        }
        Ok(())
    }

    // ---- targets ----

    /// Stores a target and bumps its node's generation, in one transaction.
    pub(crate) fn create_target(
        &self,
        req: &TargetCreate,
    ) -> Result<GenerationChange<VolumeTarget>, StoreError> {
        let uuid = req.uuid.unwrap_or_else(Uuid::new_v4);
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO targets (uuid, node_uuid, volume_type, volume_id, boot_index, properties, extra, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                uuid.to_string(),
                req.node_uuid.to_string(),
                req.volume_type,
                req.volume_id,
                req.boot_index,
                Value::Object(req.properties.clone()).to_string(),
                Value::Object(req.extra.clone()).to_string(),
                now_secs(),
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
        let generation = bump_generation(&tx, req.node_uuid)?;
        tx.commit()?;
        let target = VolumeTarget {
            uuid,
            node_uuid: req.node_uuid,
            volume_type: req.volume_type.clone(),
            volume_id: req.volume_id.clone(),
            boot_index: req.boot_index,
            properties: req.properties.clone(),
            extra: req.extra.clone(),
        };
        Ok(GenerationChange::new(req.node_uuid, generation, target))
    }

    /// Deletes a target and bumps its node's generation, in one transaction.
    pub(crate) fn delete_target(&self, uuid: Uuid) -> Result<GenerationChange, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let node: Option<String> = tx
            .query_row(
                "DELETE FROM targets WHERE uuid = ?1 RETURNING node_uuid",
                params![uuid.to_string()],
                |r| r.get(0),
            )
            .optional()?;
        let node =
            parse_uuid(&node.ok_or_else(|| StoreError::NotFound(format!("target {uuid}")))?)?;
        let generation = bump_generation(&tx, node)?;
        tx.commit()?;
        Ok(GenerationChange::new(node, generation, ()))
    }

    pub fn get_target(&self, uuid: Uuid) -> Result<VolumeTarget, StoreError> {
        let conn = self.conn();
        let mut targets = query_targets(&conn, "WHERE uuid = ?1", &uuid.to_string())?;
        targets
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("target {uuid}")))
    }

    pub fn list_targets(&self, node: Option<Uuid>) -> Result<Vec<VolumeTarget>, StoreError> {
        let conn = self.conn();
        match node {
            Some(node) => query_targets(&conn, "WHERE node_uuid = ?1", &node.to_string()),
            None => query_targets(&conn, "WHERE ?1 = ?1", ""),
        }
    }

    /// The node's generation and its targets, read together.
    pub fn node_targets(&self, node: Uuid) -> Result<(u64, Vec<VolumeTarget>), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let generation = generation(&tx, node)?;
        let targets = query_targets(&tx, "WHERE node_uuid = ?1", &node.to_string())?;
        tx.commit()?;
        Ok((generation, targets))
    }

    pub fn generation(&self, node: Uuid) -> Result<u64, StoreError> {
        generation(&self.conn(), node)
    }

    // ---- reports ----

    pub fn store_report(&self, node: Uuid, report: &Heartbeat) -> Result<(), StoreError> {
        let body = serde_json::to_string(report).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut states = Map::new();
        for volume in &report.volumes {
            let n = states
                .entry(volume.state.as_str())
                .or_insert(Value::from(0u64));
            *n = Value::from(n.as_u64().unwrap_or(0) + 1);
        }
        self.conn().execute(
            "INSERT INTO reports (node_uuid, body, received_at, volume_states) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (node_uuid) DO UPDATE SET body = excluded.body, received_at = excluded.received_at,
                 volume_states = excluded.volume_states",
            params![node.to_string(), body, now_secs(), Value::Object(states).to_string()],
        )?;
        Ok(())
    }

    /// What the metrics endpoint shows. The lock is held for two scans of small columns; the
    /// per-report summaries are added up after it is released.
    pub fn metrics_snapshot(&self) -> Result<MetricsSnapshot, StoreError> {
        let (nodes, reports, targets_by_type) = {
            let conn = self.conn();
            let nodes: i64 = conn.query_row("SELECT COUNT(*) FROM nodes", [], |r| r.get(0))?;
            let mut stmt =
                conn.prepare_cached("SELECT node_uuid, received_at, volume_states FROM reports")?;
            let reports: Vec<(String, i64, String)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            let mut stmt = conn
                .prepare_cached("SELECT volume_type, COUNT(*) FROM targets GROUP BY volume_type")?;
            let targets_by_type: Vec<(String, u64)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?
                .collect::<Result<_, _>>()?;
            (nodes, reports, targets_by_type)
        };
        let mut states: BTreeMap<String, u64> = BTreeMap::new();
        let mut last_seen = Vec::with_capacity(reports.len());
        for (node, received_at, summary) in reports {
            let summary: BTreeMap<String, u64> = serde_json::from_str(&summary)
                .map_err(|e| StoreError::Corrupt(format!("volume summary of node {node}: {e}")))?;
            for (state, n) in summary {
                *states.entry(state).or_default() += n;
            }
            last_seen.push((node, received_at));
        }
        Ok(MetricsSnapshot {
            now: now_secs(),
            nodes: nodes.max(0) as u64,
            last_seen,
            volume_states: states.into_iter().collect(),
            targets_by_type,
        })
    }

    pub fn node_status(&self, node: Uuid) -> Result<NodeStatus, StoreError> {
        let conn = self.conn();
        let found = read_node(&conn, &node.to_string())?;
        let row: Option<(String, i64)> = conn
            .query_row(
                "SELECT body, received_at FROM reports WHERE node_uuid = ?1",
                params![node.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let report = match &row {
            Some((body, _)) => {
                Some(serde_json::from_str(body).map_err(|e| StoreError::Corrupt(e.to_string()))?)
            }
            None => None,
        };
        Ok(NodeStatus {
            node_uuid: node,
            node_name: found.name,
            generation: generation(&conn, node)?,
            last_seen: row.map(|(_, at)| format_secs(at)),
            report,
        })
    }
}

fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // The database holds CHAP passwords and cephx keys.
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(path = %path.display(), error = %e, "could not restrict database permissions to 0600");
    }
}

fn validate_name(name: &str) -> Result<(), StoreError> {
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
                "node name {name:?} must be 1 to 255 letters, digits, '.', '_' or '-', and not a UUID"
            ),
        })
    }
}

fn conflict(e: rusqlite::Error, message: String) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(code, _)
            if code.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(message)
        }
        other => StoreError::Db(other),
    }
}

fn parse_uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|e| StoreError::Corrupt(format!("uuid {s:?}: {e}")))
}

fn generation(conn: &Connection, node: Uuid) -> Result<u64, StoreError> {
    conn.query_row(
        "SELECT generation FROM nodes WHERE uuid = ?1",
        params![node.to_string()],
        |r| r.get::<_, i64>(0),
    )
    .optional()?
    .map(|g| g as u64)
    .ok_or_else(|| StoreError::NotFound(format!("node {node}")))
}

fn bump_generation(conn: &Connection, node: Uuid) -> Result<u64, StoreError> {
    conn.query_row(
        "UPDATE nodes SET generation = generation + 1 WHERE uuid = ?1 RETURNING generation",
        params![node.to_string()],
        |r| r.get::<_, i64>(0),
    )
    .optional()?
    .map(|g| g as u64)
    .ok_or_else(|| StoreError::NotFound(format!("node {node}")))
}

fn read_node(conn: &Connection, uuid: &str) -> Result<Node, StoreError> {
    let row: Option<(String, i64, bool)> = conn
        .query_row(
            "SELECT name, created_at, token_issued FROM nodes WHERE uuid = ?1",
            params![uuid],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let (name, created_at, token_issued) =
        row.ok_or_else(|| StoreError::NotFound(format!("node {uuid}")))?;
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
    })
}

fn query_targets(
    conn: &Connection,
    filter: &str,
    arg: &str,
) -> Result<Vec<VolumeTarget>, StoreError> {
    let sql = format!(
        "SELECT uuid, node_uuid, volume_type, volume_id, boot_index, properties, extra FROM targets {filter}
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
        ))
    })?;
    rows.map(|row| {
        let (uuid, node_uuid, volume_type, volume_id, boot_index, properties, extra) = row?;
        Ok(VolumeTarget {
            uuid: parse_uuid(&uuid)?,
            node_uuid: parse_uuid(&node_uuid)?,
            volume_type,
            volume_id,
            boot_index,
            properties: parse_object(&properties)?,
            extra: parse_object(&extra)?,
        })
    })
    .collect()
}

fn parse_object(s: &str) -> Result<Map<String, Value>, StoreError> {
    match serde_json::from_str(s) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(StoreError::Corrupt(
            "a stored target's properties are not a JSON object".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conductor::generations::{Generations, Published};
    use crate::protocol::VolumeState;
    use serde_json::json;

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
    fn target_changes_bump_the_generation() {
        let store = Store::open_in_memory().unwrap();
        let n = node(&store, "n1", "aa:bb:cc:dd:ee:01");
        assert_eq!(store.generation(n.uuid).unwrap(), 0);
        let generations = Generations::default();
        let created = store
            .create_target(&TargetCreate {
                node_uuid: n.uuid,
                volume_type: "iscsi".into(),
                volume_id: "v1".into(),
                uuid: None,
                boot_index: None,
                properties: json!({"a": 1}).as_object().unwrap().clone(),
                extra: Map::new(),
            })
            .unwrap();
        let Published {
            node: node_uuid,
            generation,
            value: t,
        } = generations.publish(created);
        assert_eq!((node_uuid, generation, t.node_uuid), (n.uuid, 1, n.uuid));
        let (gen_read, targets) = store.node_targets(n.uuid).unwrap();
        assert_eq!((gen_read, targets.len()), (1, 1));
        let deleted = generations.publish(store.delete_target(t.uuid).unwrap());
        assert_eq!((deleted.node, deleted.generation), (n.uuid, 2));
        assert!(matches!(
            store.delete_target(t.uuid),
            Err(StoreError::NotFound(_))
        ));
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
            conn.execute_batch(MIGRATIONS[0]).unwrap();
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
}
