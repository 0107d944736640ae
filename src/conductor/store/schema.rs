//! The database schema and its migrations.

use rusqlite::Connection;

use super::StoreError;

/// Every schema change is appended here; `PRAGMA user_version` counts how many have run.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // One sequence for every node's generation, so that a node deleted and enrolled again under
    // its uuid never repeats a generation its agent saw (see `next_generation`). It starts past
    // every generation given so far.
    r#"
CREATE TABLE generation_sequence (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO generation_sequence (id, value)
    SELECT 1, COALESCE(MAX(generation), 0) FROM nodes;
"#,
    // Cinder volumes attached through the conductor (store/cinder.rs). A node with Cinder
    // volumes cannot be deleted: its attachments would be left in Cinder.
    r#"
CREATE TABLE cinder_volumes (
    node_uuid TEXT NOT NULL REFERENCES nodes(uuid) ON DELETE RESTRICT,
    volume_id TEXT NOT NULL,
    volume_name TEXT,
    want_attached INTEGER NOT NULL DEFAULT 1,
    phase TEXT NOT NULL DEFAULT 'creating',
    attachment_id TEXT,
    target_uuid TEXT,
    read_only INTEGER NOT NULL DEFAULT 0,
    mount TEXT,
    cinder_status TEXT,
    cinder_error TEXT,
    error_kind TEXT,
    error_message TEXT,
    phases TEXT NOT NULL,
    PRIMARY KEY (node_uuid, volume_id)
);
"#,
    // Nodes synced from Ironic (store/ironic.rs): where each node comes from, what Ironic says
    // of it, whether it is leaving (deleted in Ironic, volumes still on it), and the initiator
    // last checked against Ironic's volume connectors.
    r#"
ALTER TABLE nodes ADD COLUMN source TEXT NOT NULL DEFAULT 'manual';
ALTER TABLE nodes ADD COLUMN instance_uuid TEXT;
ALTER TABLE nodes ADD COLUMN provision_state TEXT;
ALTER TABLE nodes ADD COLUMN leaving INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN ironic_connector TEXT;
ALTER TABLE nodes ADD COLUMN warning TEXT;
"#,
    // The size a target's volume has at the storage, once known (an extend sets it).
    r#"
ALTER TABLE targets ADD COLUMN size_bytes INTEGER;
"#,
];

/// Runs the migrations this database has not had yet, each in its own transaction.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "the database has schema version {version}, newer than this conductor knows ({}); \
             run a newer conductor",
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
    Ok(())
}
