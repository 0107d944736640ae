//! Heartbeat reports: the latest of each node, its status, and the counts the metrics show.

use std::collections::{BTreeMap, HashSet};

use rusqlite::{OptionalExtension, params};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::nodes::read_node;
use super::targets::{assigned_targets, generation};
use super::{SqliteDb, StoreError, format_secs, now_secs};
use crate::protocol::{Heartbeat, NodeStatus};

/// Counts for the metrics endpoint; times are seconds since the Unix epoch.
#[derive(Debug, Clone)]
pub(crate) struct MetricsSnapshot {
    pub now: i64,
    pub nodes: u64,
    /// (node uuid, time of its last report) for every node that reported.
    pub last_seen: Vec<(String, i64)>,
    /// (state, volumes in that state) summed over the latest reports, and
    /// ([`DEGRADED`], attached volumes reported degraded).
    pub volume_states: Vec<(String, u64)>,
    /// (volume type, targets) as stored.
    pub targets_by_type: Vec<(String, u64)>,
    /// (phase, Cinder volumes in it).
    pub cinder_phases: Vec<(String, u64)>,
    /// Cinder volumes whose last call to Cinder found it unreachable.
    pub cinder_unreachable: u64,
}

impl MetricsSnapshot {
    /// The counts as read, with the reports' volume summaries (node, received at, summary as
    /// JSON) summed over the fleet.
    pub(super) fn sum(
        nodes: i64,
        reports: Vec<(String, i64, String)>,
        targets_by_type: Vec<(String, u64)>,
        cinder_phases: Vec<(String, u64)>,
        cinder_unreachable: u64,
    ) -> Result<Self, StoreError> {
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
        Ok(Self {
            now: now_secs(),
            nodes: nodes.max(0) as u64,
            last_seen,
            volume_states: states.into_iter().collect(),
            targets_by_type,
            cinder_phases,
            cinder_unreachable,
        })
    }
}

/// The key in a report's volume summary that counts degraded volumes (never a state's name).
pub(crate) const DEGRADED: &str = "degraded";

/// The targets a report lists that its node does not have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UnknownTargets {
    pub all: Vec<Uuid>,
    /// Those the node's previous report did not list: each is logged once, when it appears.
    pub new: Vec<Uuid>,
}

/// A report's body and its volume counts by state, as both stores keep them.
pub(super) fn report_columns(report: &Heartbeat) -> Result<(String, String), StoreError> {
    let body = serde_json::to_string(report).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut states = Map::new();
    let degraded = report.volumes.iter().filter(|v| v.degraded.is_some());
    let keys = report
        .volumes
        .iter()
        .map(|v| v.state.as_str())
        .chain(degraded.map(|_| DEGRADED));
    for key in keys {
        let n = states.entry(key).or_insert(Value::from(0u64));
        *n = Value::from(n.as_u64().unwrap_or(0) + 1);
    }
    Ok((body, Value::Object(states).to_string()))
}

impl SqliteDb {
    /// Keeps the node's latest report, and says which of its targets the node does not have.
    pub(crate) fn store_report(
        &self,
        node: Uuid,
        report: std::sync::Arc<Heartbeat>,
    ) -> Result<UnknownTargets, StoreError> {
        let (body, states) = report_columns(&report)?;
        let conn = self.conn();
        let assigned = assigned_targets(&conn, node)?;
        let mut stmt = conn.prepare_cached(
            "SELECT json_extract(volume.value, '$.target_uuid') \
             FROM reports, json_each(reports.body, '$.volumes') AS volume \
             WHERE reports.node_uuid = ?1",
        )?;
        let reported_before: HashSet<String> = stmt
            .query_map(params![node.to_string()], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut unknown = UnknownTargets::default();
        for uuid in report.volumes.iter().map(|v| v.target_uuid) {
            if !assigned.contains(&uuid) {
                unknown.all.push(uuid);
                if !reported_before.contains(&uuid.to_string()) {
                    unknown.new.push(uuid);
                }
            }
        }
        conn.execute(
            "INSERT INTO reports (node_uuid, body, received_at, volume_states) \
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (node_uuid) DO UPDATE SET body = excluded.body, \
             received_at = excluded.received_at,
                 volume_states = excluded.volume_states",
            params![node.to_string(), body, now_secs(), states],
        )?;
        Ok(unknown)
    }

    /// What the metrics endpoint shows. The lock is held for two scans of small columns; the
    /// per-report summaries are added up after it is released.
    pub(crate) fn metrics_snapshot(&self) -> Result<MetricsSnapshot, StoreError> {
        let (nodes, reports, targets_by_type, (cinder_phases, cinder_unreachable)) = {
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
            let mut stmt =
                conn.prepare_cached("SELECT phase, COUNT(*) FROM cinder_volumes GROUP BY phase")?;
            let cinder_phases: Vec<(String, u64)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?
                .collect::<Result<_, _>>()?;
            let cinder_unreachable: i64 = conn.query_row(
                "SELECT COUNT(*) FROM cinder_volumes WHERE cinder_error IS NOT NULL",
                [],
                |r| r.get(0),
            )?;
            (
                nodes,
                reports,
                targets_by_type,
                (cinder_phases, cinder_unreachable.max(0) as u64),
            )
        };
        MetricsSnapshot::sum(
            nodes,
            reports,
            targets_by_type,
            cinder_phases,
            cinder_unreachable,
        )
    }

    pub(crate) fn node_status(&self, node: Uuid) -> Result<NodeStatus, StoreError> {
        let conn = self.conn();
        let found = read_node(&conn, &node.to_string())?;
        let row: Option<(String, i64)> = conn
            .query_row(
                "SELECT body, received_at FROM reports WHERE node_uuid = ?1",
                params![node.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let report: Option<Heartbeat> = match &row {
            Some((body, _)) => {
                Some(serde_json::from_str(body).map_err(|e| StoreError::Corrupt(e.to_string()))?)
            }
            None => None,
        };
        let assigned = assigned_targets(&conn, node)?;
        let unknown_targets = report
            .iter()
            .flat_map(|r| &r.volumes)
            .map(|v| v.target_uuid)
            .filter(|uuid| !assigned.contains(uuid))
            .collect();
        Ok(NodeStatus {
            node_uuid: node,
            node_name: found.name,
            generation: generation(&conn, node)?,
            last_seen: row.map(|(_, at)| format_secs(at)),
            report,
            unknown_targets,
        })
    }
}
