//! The embedded store: SQLite through one connection, each call run on a blocking thread.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::Connection;
use uuid::Uuid;

use super::{StoreError, schema};

pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_millis(500);

/// Blocking threads that may wait on the database at once.
const DB_THREADS: usize = 4;

/// The synchronous SQLite store (store/nodes.rs, targets.rs... add its methods).
pub(crate) struct SqliteDb {
    conn: Mutex<Connection>,
}

impl SqliteDb {
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

    pub(super) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written: transactions roll back.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a statement that must change the one row named by `uuid`; none is `NotFound(what)`.
    pub(super) fn change_one(&self, sql: &str, uuid: Uuid, what: &str) -> Result<(), StoreError> {
        let changed = self.conn().execute(sql, [uuid.to_string()])?;
        match changed {
            0 => Err(StoreError::NotFound(format!("{what} {uuid}"))),
            _ => Ok(()),
        }
    }
}

/// [`SqliteDb`] for the async conductor. A SQLite call can wait on a lock held by another
/// process, a checkpoint or the disk; on an async worker it would stall every request that
/// worker serves, those that need no database included. The store has one connection, so a few
/// threads suffice: the rest of the waiting is done as tasks.
pub(crate) struct SqliteStore {
    db: Arc<SqliteDb>,
    slots: tokio::sync::Semaphore,
}

impl SqliteStore {
    pub(crate) fn new(db: SqliteDb) -> Self {
        Self {
            db: Arc::new(db),
            slots: tokio::sync::Semaphore::new(DB_THREADS),
        }
    }

    /// Runs `work` against the database on a blocking thread.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&SqliteDb) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| StoreError::Internal("the database slots are closed".into()))?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(|e| StoreError::Internal(format!("a database call failed: {e}")))?
    }

    #[cfg(test)]
    pub(super) fn db(&self) -> &SqliteDb {
        &self.db
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

/// A constraint violation as a conflict with `message`; any other failure as itself.
pub(super) fn conflict(e: rusqlite::Error, message: String) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(code, _)
            if code.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(message)
        }
        other => StoreError::Db(other),
    }
}
