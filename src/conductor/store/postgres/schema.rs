//! The PostgreSQL schema: the migrations of ../schema.rs, expressed for PostgreSQL, one for one
//! (a database migrated to version N here holds what a SQLite one at version N holds). The
//! version is kept in `tether_schema`; conductors starting together migrate one at a time.

use super::{StoreError, failed};

pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE nodes (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    token_hash TEXT,
    token_issued BOOLEAN NOT NULL DEFAULT false,
    generation BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE node_addresses (
    address TEXT PRIMARY KEY,
    node_uuid TEXT NOT NULL REFERENCES nodes(uuid) ON DELETE CASCADE
);
CREATE INDEX node_addresses_by_node ON node_addresses(node_uuid);
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
    boot_index BIGINT,
    properties TEXT NOT NULL,
    extra TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (node_uuid, volume_id)
);
CREATE INDEX targets_by_node ON targets(node_uuid);
CREATE TABLE reports (
    node_uuid TEXT PRIMARY KEY REFERENCES nodes(uuid) ON DELETE CASCADE,
    body TEXT NOT NULL,
    received_at BIGINT NOT NULL
);
"#,
    r#"
ALTER TABLE reports ADD COLUMN volume_states TEXT NOT NULL DEFAULT '{}';
UPDATE reports SET volume_states = COALESCE((
    SELECT jsonb_object_agg(state, n)::text FROM (
        SELECT v ->> 'state' AS state, COUNT(*) AS n
        FROM jsonb_array_elements(reports.body::jsonb -> 'volumes') AS v
        WHERE v ->> 'state' IS NOT NULL
        GROUP BY 1
    ) AS counts
), '{}');
CREATE INDEX reports_summary ON reports(node_uuid, received_at, volume_states);
"#,
    r#"
CREATE TABLE generation_sequence (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL
);
INSERT INTO generation_sequence (id, value)
    SELECT 1, COALESCE(MAX(generation), 0) FROM nodes;
"#,
    r#"
CREATE TABLE cinder_volumes (
    node_uuid TEXT NOT NULL REFERENCES nodes(uuid) ON DELETE RESTRICT,
    volume_id TEXT NOT NULL,
    volume_name TEXT,
    want_attached BOOLEAN NOT NULL DEFAULT true,
    phase TEXT NOT NULL DEFAULT 'creating',
    attachment_id TEXT,
    target_uuid TEXT,
    read_only BOOLEAN NOT NULL DEFAULT false,
    mount TEXT,
    cinder_status TEXT,
    cinder_error TEXT,
    error_kind TEXT,
    error_message TEXT,
    phases TEXT NOT NULL,
    PRIMARY KEY (node_uuid, volume_id)
);
"#,
    r#"
ALTER TABLE nodes ADD COLUMN source TEXT NOT NULL DEFAULT 'manual';
ALTER TABLE nodes ADD COLUMN instance_uuid TEXT;
ALTER TABLE nodes ADD COLUMN provision_state TEXT;
ALTER TABLE nodes ADD COLUMN leaving BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE nodes ADD COLUMN ironic_connector TEXT;
ALTER TABLE nodes ADD COLUMN warning TEXT;
"#,
    r#"
ALTER TABLE targets ADD COLUMN size_bytes BIGINT;
"#,
];

/// Any key for the advisory lock that serializes migrations between conductors.
const MIGRATION_LOCK: i64 = 0x7465_7468_6572;

/// Runs the migrations this database has not had yet, each in its own transaction, under a
/// lock that other conductors migrating at the same moment wait for.
pub(super) async fn migrate(client: &mut tokio_postgres::Client) -> Result<(), StoreError> {
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS tether_schema (version INTEGER NOT NULL)")
        .await
        .or_else(|e| match e.code() {
            // Two conductors creating it at once: the other one did.
            Some(c) if *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION => Ok(()),
            _ => Err(failed(e)),
        })?;
    loop {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let version: Option<i32> = tx
            .query_opt("SELECT version FROM tether_schema", &[])
            .await?
            .map(|r| r.get(0));
        let version = version.unwrap_or(0).max(0) as usize;
        if version > MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "the database has schema version {version}, newer than this conductor knows \
                 ({}); run a newer conductor",
                MIGRATIONS.len()
            )));
        }
        let Some(migration) = MIGRATIONS.get(version) else {
            return Ok(());
        };
        tx.batch_execute(migration).await?;
        let next = (version + 1) as i32;
        if version == 0 {
            tx.execute("INSERT INTO tether_schema (version) VALUES ($1)", &[&next])
                .await?;
        } else {
            tx.execute("UPDATE tether_schema SET version = $1", &[&next])
                .await?;
        }
        tx.commit().await?;
        tracing::info!(version = next, "applied schema migration (PostgreSQL)");
    }
}
