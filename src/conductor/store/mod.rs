//! The conductor's store of nodes, connectors, targets and the last report of every node: one
//! trait ([`StoreApi`]), two implementations. SQLite (sqlite.rs and the files named after what
//! they keep) is the embedded default; PostgreSQL (postgres/) serves several conductors on one
//! database. Both run the same migrations, expressed for each (schema.rs, postgres/schema.rs),
//! and pass the same tests (tests.rs).

mod cinder;
mod connectors;
pub(crate) mod copy;
mod ironic;
mod nodes;
pub(crate) mod postgres;
mod reports;
mod schema;
mod sqlite;
mod targets;
#[cfg(test)]
mod tests;
mod tokens;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use uuid::Uuid;

use crate::conductor::generations::GenerationChange;
use crate::conductor::ironic::diff::{Change, Local};
use crate::protocol::{
    ConnectorCreate, Heartbeat, Node, NodeCreate, NodeStatus, TargetCreate, VolumeConnector,
    VolumeTarget, timestamp,
};

pub(crate) use cinder::{CinderChange, CinderRow};
pub(crate) use ironic::ConnectorCheck;
pub(crate) use nodes::{LookupResult, normalize_mac};
pub(crate) use postgres::PgStore;
pub(crate) use reports::{DEGRADED, MetricsSnapshot, UnknownTargets};
use sqlite::conflict;
pub(crate) use sqlite::{SqliteDb, SqliteStore};
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
    #[error("database error: {}", postgres::with_causes(.0))]
    Postgres(tokio_postgres::Error),
    /// The database cannot be reached now (PostgreSQL down, restarting, or its pool exhausted).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Internal(String),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        postgres::failed(e)
    }
}

/// Where the conductor keeps its state, from `conductor.database`: a `postgres://` (or
/// `postgresql://`) URL, or else the path of a SQLite file.
#[derive(Clone)]
pub(crate) enum Location {
    Sqlite(std::path::PathBuf),
    /// The URL, and the password when it is kept apart (`conductor.database_password_file`).
    Postgres(String, Option<String>),
}

impl Location {
    pub(crate) fn of(database: &Path) -> Self {
        let text = database.to_string_lossy();
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Self::Postgres(text.into_owned(), None)
        } else {
            Self::Sqlite(database.to_path_buf())
        }
    }
}

/// What logs and errors show of a database: a URL without its password.
impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres(url, _) => f.write_str(&redact_url(url)),
        }
    }
}

/// `url` with the password in its user part and any `password=` parameter replaced.
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority_end, _) = rest
        .char_indices()
        .find(|(_, c)| matches!(c, '/' | '?'))
        .unwrap_or((rest.len(), ' '));
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{name}:***@{host}"),
            None => format!("{user}@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => p.to_string(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// The conductor's store, whichever database it is on.
#[allow(
    clippy::large_enum_variant,
    reason = "one per conductor, behind an Arc"
)]
pub(crate) enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Store {
    /// Opens (and migrates) the database `location` names.
    pub(crate) async fn open(location: &Location) -> Result<Self, StoreError> {
        match location {
            Location::Sqlite(path) => {
                let path = path.clone();
                let db = tokio::task::spawn_blocking(move || SqliteDb::open(&path))
                    .await
                    .map_err(|e| StoreError::Internal(e.to_string()))??;
                Ok(Self::Sqlite(SqliteStore::new(db)))
            }
            Location::Postgres(url, password) => Ok(Self::Postgres(
                PgStore::connect(url, password.as_deref()).await?,
            )),
        }
    }

    pub(crate) fn open_in_memory() -> Result<Self, StoreError> {
        Ok(Self::Sqlite(SqliteStore::new(SqliteDb::open_in_memory()?)))
    }

    pub(crate) fn postgres(&self) -> Option<&PgStore> {
        match self {
            Self::Postgres(pg) => Some(pg),
            Self::Sqlite(_) => None,
        }
    }
}

/// Declares the store's operations once: the trait, the SQLite implementation (each call on a
/// blocking thread) and the dispatch of [`Store`].
macro_rules! store_api {
    ($( $(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty; )*) => {
        /// What a conductor asks of its database. Every change is one transaction (or one
        /// statement) in the database, never a read-modify-write in the conductor, so that
        /// several conductors may share one PostgreSQL database.
        pub(crate) trait StoreApi {
            $( $(#[$doc])*
            fn $name(&self $(, $arg: $ty)*)
                -> impl Future<Output = Result<$ret, StoreError>> + Send; )*
        }

        impl StoreApi for SqliteStore {
            $( async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StoreError> {
                self.run(move |db| db.$name($($arg),*)).await
            } )*
        }

        impl StoreApi for Store {
            $( async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StoreError> {
                match self {
                    Self::Sqlite(s) => s.$name($($arg),*).await,
                    // Boxed: a PostgreSQL query's future is large, and every request that
                    // awaits the store (a waiting long-poll too) would hold its size inline.
                    Self::Postgres(p) => Box::pin(p.$name($($arg),*)).await,
                }
            } )*
        }
    };
}

store_api! {
    fn create_node(&self, req: NodeCreate) -> Node;
    /// Replaces a manual node's MAC addresses. A synced node's are its Ironic ports'.
    fn set_node_addresses(&self, uuid: Uuid, addresses: Vec<String>) -> Node;
    /// Finds a node by uuid or by name.
    fn find_node(&self, ident: String) -> Node;
    fn list_nodes(&self) -> Vec<Node>;
    /// Deletes the node (and its addresses, connectors, targets and report) unless it has
    /// Cinder volumes, or follows Ironic and is not leaving.
    fn delete_node(&self, uuid: Uuid) -> ();
    /// Finds the node by a MAC address or its uuid; only a MAC issues its token, once.
    fn lookup(&self, addresses: Vec<String>, node_uuid: Option<Uuid>) -> Option<LookupResult>;
    /// Whether `token` is the agent token of `node`; false for a node that does not exist.
    fn agent_token_matches(&self, node: Uuid, token: String) -> bool;
    /// Forgets the issued token so that the node's next lookup issues a new one.
    fn reset_token(&self, node: Uuid) -> ();
    /// Stores a target and bumps its node's generation, in one transaction.
    fn create_target(&self, req: TargetCreate) -> GenerationChange<VolumeTarget>;
    /// Deletes a target and bumps its node's generation, in one transaction.
    fn delete_target(&self, uuid: Uuid) -> GenerationChange;
    /// Records that the target's volume grew (never shrinks) and bumps the generation.
    fn resize_target(&self, uuid: Uuid, size_bytes: u64) -> GenerationChange<VolumeTarget>;
    fn get_target(&self, uuid: Uuid) -> VolumeTarget;
    fn list_targets(&self, node: Option<Uuid>) -> Vec<VolumeTarget>;
    /// The node's generation and its targets, read together.
    fn node_targets(&self, node: Uuid) -> (u64, Vec<VolumeTarget>);
    fn generation(&self, node: Uuid) -> u64;
    /// Keeps the node's latest report, and says which of its targets the node does not have.
    fn store_report(&self, node: Uuid, report: Arc<Heartbeat>) -> UnknownTargets;
    /// What the metrics endpoint shows.
    fn metrics_snapshot(&self) -> MetricsSnapshot;
    fn node_status(&self, node: Uuid) -> NodeStatus;
    fn create_connector(&self, req: ConnectorCreate) -> VolumeConnector;
    fn list_connectors(&self, node: Option<Uuid>) -> Vec<VolumeConnector>;
    fn delete_connector(&self, uuid: Uuid) -> ();
    /// Records a Cinder volume about to be attached; one already there is a conflict.
    fn insert_cinder_volume(&self, row: CinderRow) -> ();
    fn cinder_volumes(&self, node: Option<Uuid>) -> Vec<CinderRow>;
    /// Reads the row, lets `change` change it, writes it back, in one transaction.
    fn update_cinder_volume(&self, node: Uuid, volume_id: String, change: CinderChange)
        -> CinderRow;
    /// Assigns the volume's target and enters `attaching`, in one transaction.
    fn assign_cinder_target(&self, node: Uuid, volume_id: String, target: TargetCreate)
        -> GenerationChange<CinderRow>;
    /// Unassigns the volume's target (if it still has one) and enters `detaching`.
    fn unassign_cinder_target(&self, node: Uuid, volume_id: String)
        -> (CinderRow, Option<GenerationChange>);
    /// Forgets a volume whose attachment is gone.
    fn forget_cinder_volume(&self, node: Uuid, volume_id: String) -> ();
    fn target_exists(&self, uuid: Uuid) -> bool;
    /// Every node as the Ironic sync compares it with Ironic.
    fn ironic_view(&self) -> Vec<Local>;
    /// Applies a sync pass's changes in one transaction; the target changes to publish.
    fn apply_ironic(&self, changes: Vec<Change>) -> Vec<GenerationChange>;
    /// Deletes the leaving nodes that have nothing on them any more; their uuids.
    fn remove_departed(&self) -> Vec<Uuid>;
    /// Synced nodes whose reported initiators are to be checked against Ironic.
    fn connector_checks(&self) -> Vec<ConnectorCheck>;
    fn connector_checked(&self, node: Uuid, key: String, warning: Option<String>) -> ();
    /// Synced nodes whose heartbeat wakes the Ironic sync's worker.
    fn ironic_watched(&self) -> Vec<Uuid>;
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Microseconds since the epoch: the floor of the next generation (see `next_generation`).
fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn format_secs(secs: i64) -> String {
    timestamp(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

fn parse_uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|e| StoreError::Corrupt(format!("uuid {s:?}: {e}")))
}

/// A target's volume never shrinks: shrinking one under a file system loses data.
fn refuse_shrink(uuid: Uuid, now: Option<u64>, wanted: u64) -> Result<(), StoreError> {
    match now {
        Some(now) if wanted < now => Err(StoreError::Invalid {
            kind: "shrink_refused",
            message: format!(
                "target {uuid} is {now} bytes; volumes only grow (shrinking one under a file \
                 system loses data)"
            ),
        }),
        _ => Ok(()),
    }
}
