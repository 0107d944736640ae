//! `tether conductor migrate`: an existing SQLite conductor's data copied into an empty
//! PostgreSQL database, in one transaction, both schemas first brought to the same version.

use std::path::Path;

use anyhow::Context;
use rusqlite::types::Value as SqlValue;
use tokio_postgres::types::ToSql;

use super::{PgStore, SqliteDb};

/// How a column is kept in PostgreSQL (SQLite keeps integers and booleans alike).
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Int,
    Bool,
}

use Kind::{Bool, Int, Text};

/// Every table, parents before children, with the columns both schemas have.
const TABLES: &[(&str, &[(&str, Kind)])] = &[
    (
        "nodes",
        &[
            ("uuid", Text),
            ("name", Text),
            ("created_at", Int),
            ("token_hash", Text),
            ("token_issued", Bool),
            ("generation", Int),
            ("source", Text),
            ("instance_uuid", Text),
            ("provision_state", Text),
            ("leaving", Bool),
            ("ironic_connector", Text),
            ("warning", Text),
        ],
    ),
    ("node_addresses", &[("address", Text), ("node_uuid", Text)]),
    (
        "connectors",
        &[
            ("uuid", Text),
            ("node_uuid", Text),
            ("type", Text),
            ("connector_id", Text),
        ],
    ),
    (
        "targets",
        &[
            ("uuid", Text),
            ("node_uuid", Text),
            ("volume_type", Text),
            ("volume_id", Text),
            ("boot_index", Int),
            ("properties", Text),
            ("extra", Text),
            ("created_at", Int),
            ("size_bytes", Int),
        ],
    ),
    (
        "reports",
        &[
            ("node_uuid", Text),
            ("body", Text),
            ("received_at", Int),
            ("volume_states", Text),
        ],
    ),
    (
        "cinder_volumes",
        &[
            ("node_uuid", Text),
            ("volume_id", Text),
            ("volume_name", Text),
            ("want_attached", Bool),
            ("phase", Text),
            ("attachment_id", Text),
            ("target_uuid", Text),
            ("read_only", Bool),
            ("mount", Text),
            ("cinder_status", Text),
            ("cinder_error", Text),
            ("error_kind", Text),
            ("error_message", Text),
            ("phases", Text),
        ],
    ),
];

/// Rows copied, by table.
pub(crate) type Copied = Vec<(&'static str, u64)>;

/// Copies the SQLite database `from` into the PostgreSQL store `to`, which must hold no node.
pub(crate) async fn sqlite_to_postgres(from: &Path, to: &PgStore) -> anyhow::Result<Copied> {
    if !from.exists() {
        anyhow::bail!("{} does not exist", from.display());
    }
    let path = from.to_path_buf();
    // Read whole: a conductor's database is small (a few KiB a node), and the source is then
    // released before the copy's one transaction.
    let tables = tokio::task::spawn_blocking(move || read_all(&path)).await??;
    let mut client = to.client().await?;
    let tx = client.transaction().await?;
    let nodes: i64 = tx
        .query_one("SELECT COUNT(*) FROM nodes", &[])
        .await?
        .get(0);
    if nodes > 0 {
        anyhow::bail!(
            "the PostgreSQL database already holds {nodes} nodes: migrate into an empty one"
        );
    }
    let mut copied = Vec::new();
    for ((table, columns), rows) in TABLES.iter().zip(tables.rows) {
        let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
        let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            names.join(", "),
            placeholders.join(", ")
        );
        let statement = tx.prepare(&sql).await?;
        for row in &rows {
            let values: Vec<Box<dyn ToSql + Sync + Send>> = row
                .iter()
                .zip(columns.iter())
                .map(|(value, (_, kind))| convert(value, *kind))
                .collect::<anyhow::Result<_>>()
                .with_context(|| format!("a row of {table}"))?;
            let params: Vec<&(dyn ToSql + Sync)> = values
                .iter()
                .map(|v| v.as_ref() as &(dyn ToSql + Sync))
                .collect();
            tx.execute(&statement, &params)
                .await
                .with_context(|| format!("copying a row of {table}"))?;
        }
        copied.push((*table, rows.len() as u64));
    }
    // Generations go on from the copied ones, never repeating one an agent saw.
    tx.execute(
        "UPDATE generation_sequence SET value = GREATEST(value, $1) WHERE id = 1",
        &[&tables.sequence],
    )
    .await?;
    tx.commit().await?;
    Ok(copied)
}

struct Tables {
    rows: Vec<Vec<Vec<SqlValue>>>,
    sequence: i64,
}

fn read_all(path: &Path) -> anyhow::Result<Tables> {
    let db = SqliteDb::open(path).with_context(|| format!("opening {}", path.display()))?;
    let conn = db.conn();
    let mut rows = Vec::new();
    for (table, columns) in TABLES {
        let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
        let mut stmt = conn.prepare(&format!("SELECT {} FROM {table}", names.join(", ")))?;
        let table_rows = stmt
            .query_map([], |r| {
                (0..names.len())
                    .map(|i| r.get::<_, SqlValue>(i))
                    .collect::<Result<Vec<_>, _>>()
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.push(table_rows);
    }
    let sequence: i64 = conn.query_row(
        "SELECT COALESCE(MAX(value), 0) FROM generation_sequence",
        [],
        |r| r.get(0),
    )?;
    Ok(Tables { rows, sequence })
}

fn convert(value: &SqlValue, kind: Kind) -> anyhow::Result<Box<dyn ToSql + Sync + Send>> {
    Ok(match (value, kind) {
        (SqlValue::Null, Text) => Box::new(None::<String>),
        (SqlValue::Null, Int) => Box::new(None::<i64>),
        (SqlValue::Null, Bool) => Box::new(None::<bool>),
        (SqlValue::Text(s), Text) => Box::new(s.clone()),
        (SqlValue::Integer(i), Int) => Box::new(*i),
        (SqlValue::Integer(i), Bool) => Box::new(*i != 0),
        (other, _) => anyhow::bail!("unexpected value {other:?}"),
    })
}
