//! SQLite store of nodes, connectors, targets and the last report of every node.

mod cinder;
mod connectors;
mod ironic;
mod nodes;
mod reports;
mod schema;
mod targets;
#[cfg(test)]
mod tests;
mod tokens;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;
use thiserror::Error;
use uuid::Uuid;

use crate::protocol::timestamp;

pub(crate) use cinder::CinderRow;
pub(crate) use ironic::ConnectorCheck;
pub(crate) use nodes::normalize_mac;
pub(crate) use reports::{DEGRADED, MetricsSnapshot};
pub(crate) use tokens::{TokenHash, new_token};

#[derive(Debug, Error)]
pub(crate) enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The node follows Ironic: what was asked is done in Ironic.
    #[error("{0}")]
    Synced(String),
    #[error("{message}")]
    Invalid { kind: &'static str, message: String },
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_millis(500);

pub(crate) struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        restrict_permissions(path);
        Self::init(conn)
    }

    pub(crate) fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self, StoreError> {
        // Only another process can hold the lock (this one has a single connection): a request
        // waits this long, then is answered 503 `database_busy` instead of hanging.
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a change acknowledged to an operator survives a power loss (NORMAL in WAL mode
        // may lose the last transactions).
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        schema::migrate(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written: transactions roll back.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a statement that must change the one row named by `uuid`; none is `NotFound(what)`.
    fn change_one(&self, sql: &str, uuid: Uuid, what: &str) -> Result<(), StoreError> {
        let changed = self.conn().execute(sql, [uuid.to_string()])?;
        match changed {
            0 => Err(StoreError::NotFound(format!("{what} {uuid}"))),
            _ => Ok(()),
        }
    }
}

fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // The database holds CHAP passwords and cephx keys.
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(
            path = %path.display(),
            error = %e,
            "could not restrict database permissions to 0600"
        );
    }
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

/// A constraint violation as a conflict with `message`; any other failure as itself.
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
