//! [`StoreApi`] on PostgreSQL: the SQLite store's operations, statement for statement where the
//! dialects agree. What two conductors could race on is one statement or a transaction that
//! locks the rows it reads (`FOR UPDATE`).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde_json::Value;
use tokio_postgres::GenericClient;

// The helpers below that read on every heartbeat and long-poll take deadpool's client (a pooled
// connection or its transaction): its `prepare_cached` parses and plans a statement once a
// connection, not once a call.
use deadpool_postgres::GenericClient as Cached;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::super::cinder::{COLUMNS as CINDER_COLUMNS, CinderRowText};
use super::super::connectors::validate_connector;
use super::super::ironic::{ConnectorCheck, checks_due, parse_source};
use super::super::nodes::{LookupResult, new_manual_node, normalize_macs, validate_name};
use super::super::reports::{MetricsSnapshot, UnknownTargets, report_columns};
use super::super::targets::parse_object;
use super::super::tokens::{self, TokenHash};
use super::super::{
    CinderChange, CinderRow, StoreApi, StoreError, format_secs, now_micros, now_secs, parse_uuid,
    refuse_shrink,
};
use super::{CHANNEL, PgStore, conflict};
use crate::conductor::generations::GenerationChange;
use crate::conductor::ironic::diff::{Change, Local, Remote};
use crate::protocol::cinder::CinderPhase;
use crate::protocol::{
    ConnectorCreate, Heartbeat, Node, NodeCreate, NodeSource, NodeStatus, TargetCreate,
    VolumeConnector, VolumeTarget,
};

type Param<'a> = &'a (dyn ToSql + Sync);

/// True when something is still on the node (as store/ironic.rs's BUSY).
const BUSY: &str = "(EXISTS (SELECT 1 FROM targets t WHERE t.node_uuid = n.uuid) \
     OR EXISTS (SELECT 1 FROM cinder_volumes c WHERE c.node_uuid = n.uuid) \
     OR EXISTS (SELECT 1 FROM reports r, \
                jsonb_array_elements(r.body::jsonb -> 'volumes') AS v \
                WHERE r.node_uuid = n.uuid))";

/// Any key for the advisory lock that serializes Ironic sync passes of several conductors.
const IRONIC_LOCK: i64 = 0x6972_6f6e_6963;

impl StoreApi for PgStore {
    async fn create_node(&self, req: NodeCreate) -> Result<Node, StoreError> {
        validate_name(&req.name)?;
        let addresses = normalize_macs(&req.addresses)?;
        let uuid = req.uuid.unwrap_or_else(Uuid::new_v4);
        let token_hash = tokens::provisioned(req.agent_token.as_deref())?.map(|h| h.0);
        let token_issued = token_hash.is_some();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let created = now_secs();
        let generation = next_generation(&tx).await?;
        tx.execute(
            "INSERT INTO nodes (uuid, name, created_at, token_hash, token_issued, generation) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &uuid.to_string(),
                &req.name,
                &created,
                &token_hash,
                &token_issued,
                &generation,
            ],
        )
        .await
        .map_err(|e| {
            conflict(
                e,
                format!("a node named {:?} or with uuid {uuid} exists", req.name),
            )
        })?;
        insert_addresses(&*tx, uuid, &addresses).await?;
        tx.commit().await?;
        Ok(new_manual_node(
            uuid,
            req.name,
            addresses,
            token_issued,
            created,
        ))
    }

    async fn set_node_addresses(
        &self,
        uuid: Uuid,
        addresses: Vec<String>,
    ) -> Result<Node, StoreError> {
        let addresses = normalize_macs(&addresses)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let id = uuid.to_string();
        lock_node(&tx, &id).await?;
        let node = read_node(&*tx, &id).await?;
        if node.source == NodeSource::Ironic {
            return Err(StoreError::Synced(format!(
                "node {} is synced from Ironic: its addresses are its Ironic ports' \
                 (openstack baremetal port create/delete); tether follows at the next sync",
                node.name
            )));
        }
        tx.execute("DELETE FROM node_addresses WHERE node_uuid = $1", &[&id])
            .await?;
        insert_addresses(&*tx, uuid, &addresses).await?;
        let node = read_node(&*tx, &id).await?;
        tx.commit().await?;
        Ok(node)
    }

    async fn find_node(&self, ident: String) -> Result<Node, StoreError> {
        let client = self.client().await?;
        let uuid: Option<String> = client
            .query_opt(
                "SELECT uuid FROM nodes WHERE uuid = $1 OR name = $1",
                &[&ident],
            )
            .await?
            .map(|r| r.get(0));
        let uuid = uuid.ok_or_else(|| StoreError::NotFound(format!("node {ident:?}")))?;
        read_node(&**client, &uuid).await
    }

    async fn list_nodes(&self) -> Result<Vec<Node>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT uuid FROM nodes ORDER BY name", &[])
            .await?;
        let mut nodes = Vec::with_capacity(rows.len());
        for row in rows {
            nodes.push(read_node(&**client, &row.get::<_, String>(0)).await?);
        }
        Ok(nodes)
    }

    async fn delete_node(&self, uuid: Uuid) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let id = uuid.to_string();
        lock_node(&tx, &id).await?;
        let node = read_node(&*tx, &id).await?;
        if node.source == NodeSource::Ironic && !node.leaving {
            return Err(StoreError::Synced(format!(
                "node {} is synced from Ironic: delete it in Ironic (openstack baremetal node \
                 delete); tether unassigns its volumes and removes it once they are detached",
                node.name
            )));
        }
        tx.execute("DELETE FROM nodes WHERE uuid = $1", &[&id])
            .await
            .map_err(|e| {
                conflict(
                    e,
                    format!(
                        "node {uuid} has Cinder volumes: detach them first \
                         (tether ctl volume detach), so that no attachment stays in Cinder"
                    ),
                )
            })?;
        tx.commit().await?;
        Ok(())
    }

    async fn lookup(
        &self,
        addresses: Vec<String>,
        node_uuid: Option<Uuid>,
    ) -> Result<Option<LookupResult>, StoreError> {
        let client = self.client().await?;
        let macs: Vec<String> = addresses
            .iter()
            .filter_map(|m| super::super::normalize_mac(m))
            .collect();
        // The first address given that names a node, as SQLite's loop finds it.
        let by_address: Option<String> = match macs.is_empty() {
            true => None,
            false => client
                .query_opt(
                    "SELECT a.node_uuid FROM unnest($1::text[]) WITH ORDINALITY AS m(mac, i) \
                     JOIN node_addresses a ON a.address = m.mac ORDER BY m.i LIMIT 1",
                    &[&macs],
                )
                .await?
                .map(|r| r.get(0)),
        };
        let wanted = node_uuid.map(|u| u.to_string());
        let found = match (by_address, wanted) {
            (Some(uuid), Some(wanted)) if uuid != wanted => return Ok(None),
            (Some(uuid), _) => Some((uuid, true)),
            (None, Some(wanted)) => client
                .query_opt("SELECT uuid FROM nodes WHERE uuid = $1", &[&wanted])
                .await?
                .map(|r| (r.get::<_, String>(0), false)),
            (None, None) => None,
        };
        let Some((uuid, by_address)) = found else {
            return Ok(None);
        };
        let new_token = match by_address {
            true => {
                // One statement: of conductors looking the node up at once, one issues.
                let token = tokens::new_token();
                let issued = client
                    .execute(
                        "UPDATE nodes SET token_hash = $2, token_issued = true \
                         WHERE uuid = $1 AND NOT token_issued",
                        &[&uuid, &TokenHash::of(&token).0],
                    )
                    .await?;
                (issued == 1).then_some(token)
            }
            false => None,
        };
        let node = read_node(&**client, &uuid).await?;
        Ok(Some(LookupResult {
            node,
            new_token,
            by_address,
        }))
    }

    async fn agent_token_matches(&self, node: Uuid, token: String) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("SELECT token_hash FROM nodes WHERE uuid = $1")
            .await?;
        let stored: Option<Option<String>> = client
            .query_opt(&statement, &[&node.to_string()])
            .await?
            .map(|r| r.get(0));
        Ok(stored
            .flatten()
            .is_some_and(|hash| TokenHash(hash).matches(&token)))
    }

    async fn reset_token(&self, node: Uuid) -> Result<(), StoreError> {
        self.change_one(
            "UPDATE nodes SET token_hash = NULL, token_issued = false WHERE uuid = $1",
            node,
            "node",
        )
        .await
    }

    async fn create_target(
        &self,
        req: TargetCreate,
    ) -> Result<GenerationChange<VolumeTarget>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let (uuid, generation) = insert_target(&tx, &req).await?;
        tx.commit().await?;
        Ok(GenerationChange::new(
            req.node_uuid,
            generation,
            req.target(uuid),
        ))
    }

    async fn delete_target(&self, uuid: Uuid) -> Result<GenerationChange, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let (node, generation) = remove_target(&tx, uuid)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("target {uuid}")))?;
        tx.commit().await?;
        Ok(GenerationChange::new(node, generation, ()))
    }

    async fn resize_target(
        &self,
        uuid: Uuid,
        size_bytes: u64,
    ) -> Result<GenerationChange<VolumeTarget>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut target = query_targets(&tx, "WHERE uuid = $1 FOR UPDATE", &uuid.to_string())
            .await?
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("target {uuid}")))?;
        refuse_shrink(uuid, target.size_bytes, size_bytes)?;
        let generation = if target.size_bytes == Some(size_bytes) {
            generation(&tx, target.node_uuid).await?
        } else {
            tx.execute(
                "UPDATE targets SET size_bytes = $2 WHERE uuid = $1",
                &[&uuid.to_string(), &(size_bytes as i64)],
            )
            .await?;
            bump_generation(&tx, target.node_uuid).await?
        };
        tx.commit().await?;
        target.size_bytes = Some(size_bytes);
        Ok(GenerationChange::new(target.node_uuid, generation, target))
    }

    async fn get_target(&self, uuid: Uuid) -> Result<VolumeTarget, StoreError> {
        let client = self.client().await?;
        query_targets(&client, "WHERE uuid = $1", &uuid.to_string())
            .await?
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("target {uuid}")))
    }

    async fn list_targets(&self, node: Option<Uuid>) -> Result<Vec<VolumeTarget>, StoreError> {
        let client = self.client().await?;
        match node {
            Some(node) => query_targets(&client, "WHERE node_uuid = $1", &node.to_string()).await,
            None => query_targets(&client, "WHERE $1 = $1", "").await,
        }
    }

    async fn node_targets(&self, node: Uuid) -> Result<(u64, Vec<VolumeTarget>), StoreError> {
        let mut client = self.client().await?;
        // One snapshot for both reads: the generation is that of these targets.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let generation = generation(&tx, node).await?;
        let targets = query_targets(&tx, "WHERE node_uuid = $1", &node.to_string()).await?;
        tx.commit().await?;
        Ok((generation, targets))
    }

    async fn generation(&self, node: Uuid) -> Result<u64, StoreError> {
        generation(&self.client().await?, node).await
    }

    async fn store_report(
        &self,
        node: Uuid,
        report: std::sync::Arc<Heartbeat>,
    ) -> Result<UnknownTargets, StoreError> {
        let (body, states) = report_columns(&report)?;
        let client = self.client().await?;
        let id = node.to_string();
        let assigned = assigned_targets(&client, &id).await?;
        // One statement: the upsert hands back the report it replaced.
        let upsert = client
            .prepare_cached(
                "WITH previous AS (SELECT body FROM reports WHERE node_uuid = $1) \
                 INSERT INTO reports (node_uuid, body, received_at, volume_states) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (node_uuid) DO UPDATE SET body = excluded.body, \
                 received_at = excluded.received_at, volume_states = excluded.volume_states \
                 RETURNING (SELECT body FROM previous)",
            )
            .await?;
        let previous: Option<String> = client
            .query_one(&upsert, &[&id, &body, &now_secs(), &states])
            .await
            .map_err(|e| match conflict(e, String::new()) {
                StoreError::Conflict(_) => StoreError::NotFound(format!("node {node}")),
                other => other,
            })?
            .get(0);
        let reported_before: HashSet<Uuid> = previous
            .and_then(|body| serde_json::from_str::<Heartbeat>(&body).ok())
            .map(|r| r.volumes.iter().map(|v| v.target_uuid).collect())
            .unwrap_or_default();
        let mut unknown = UnknownTargets::default();
        for uuid in report.volumes.iter().map(|v| v.target_uuid) {
            if !assigned.contains(&uuid) {
                unknown.all.push(uuid);
                if !reported_before.contains(&uuid) {
                    unknown.new.push(uuid);
                }
            }
        }
        Ok(unknown)
    }

    async fn metrics_snapshot(&self) -> Result<MetricsSnapshot, StoreError> {
        let client = self.client().await?;
        let nodes: i64 = client
            .query_one("SELECT COUNT(*) FROM nodes", &[])
            .await?
            .get(0);
        let reports = client
            .query(
                "SELECT node_uuid, received_at, volume_states FROM reports",
                &[],
            )
            .await?;
        let counts = |rows: Vec<tokio_postgres::Row>| -> Vec<(String, u64)> {
            rows.iter()
                .map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64))
                .collect()
        };
        let targets_by_type = counts(
            client
                .query(
                    "SELECT volume_type, COUNT(*) FROM targets GROUP BY volume_type",
                    &[],
                )
                .await?,
        );
        let cinder_phases = counts(
            client
                .query(
                    "SELECT phase, COUNT(*) FROM cinder_volumes GROUP BY phase",
                    &[],
                )
                .await?,
        );
        let cinder_unreachable: i64 = client
            .query_one(
                "SELECT COUNT(*) FROM cinder_volumes WHERE cinder_error IS NOT NULL",
                &[],
            )
            .await?
            .get(0);
        drop(client);
        let reports = reports
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect();
        let unreachable = cinder_unreachable.max(0) as u64;
        MetricsSnapshot::sum(nodes, reports, targets_by_type, cinder_phases, unreachable)
    }

    async fn node_status(&self, node: Uuid) -> Result<NodeStatus, StoreError> {
        let client = self.client().await?;
        let id = node.to_string();
        let found = read_node(&**client, &id).await?;
        let row: Option<(String, i64)> = client
            .query_opt(
                "SELECT body, received_at FROM reports WHERE node_uuid = $1",
                &[&id],
            )
            .await?
            .map(|r| (r.get(0), r.get(1)));
        let report: Option<Heartbeat> = match &row {
            Some((body, _)) => {
                Some(serde_json::from_str(body).map_err(|e| StoreError::Corrupt(e.to_string()))?)
            }
            None => None,
        };
        let assigned = assigned_targets(&client, &id).await?;
        let unknown_targets = report
            .iter()
            .flat_map(|r| &r.volumes)
            .map(|v| v.target_uuid)
            .filter(|uuid| !assigned.contains(uuid))
            .collect();
        Ok(NodeStatus {
            node_uuid: node,
            node_name: found.name,
            generation: generation(&client, node).await?,
            last_seen: row.map(|(_, at)| format_secs(at)),
            report,
            unknown_targets,
        })
    }

    async fn create_connector(&self, req: ConnectorCreate) -> Result<VolumeConnector, StoreError> {
        validate_connector(&req)?;
        let uuid = Uuid::new_v4();
        self.client()
            .await?
            .execute(
                "INSERT INTO connectors (uuid, node_uuid, type, connector_id) \
                 VALUES ($1, $2, $3, $4)",
                &[
                    &uuid.to_string(),
                    &req.node_uuid.to_string(),
                    &req.connector_type,
                    &req.connector_id,
                ],
            )
            .await
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
            connector_type: req.connector_type,
            connector_id: req.connector_id,
        })
    }

    async fn list_connectors(
        &self,
        node: Option<Uuid>,
    ) -> Result<Vec<VolumeConnector>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT uuid, node_uuid, type, connector_id FROM connectors \
                 WHERE $1::text IS NULL OR node_uuid = $1 \
                 ORDER BY node_uuid, type, connector_id",
                &[&node.map(|u| u.to_string())],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(VolumeConnector {
                    uuid: parse_uuid(r.get(0))?,
                    node_uuid: parse_uuid(r.get(1))?,
                    connector_type: r.get(2),
                    connector_id: r.get(3),
                })
            })
            .collect()
    }

    async fn delete_connector(&self, uuid: Uuid) -> Result<(), StoreError> {
        self.change_one("DELETE FROM connectors WHERE uuid = $1", uuid, "connector")
            .await
    }

    async fn insert_cinder_volume(&self, row: CinderRow) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO cinder_volumes (node_uuid, volume_id, phases) VALUES ($1, $2, '[]')",
            &[&row.node_uuid.to_string(), &row.volume_id],
        )
        .await
        .map_err(|e| {
            conflict(
                e,
                format!(
                    "Cinder volume {} is already attached to node {}, or being detached from it",
                    row.volume_id, row.node_uuid
                ),
            )
        })?;
        put(&tx, &row).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn cinder_volumes(&self, node: Option<Uuid>) -> Result<Vec<CinderRow>, StoreError> {
        let client = self.client().await?;
        match node {
            Some(node) => select(&**client, "WHERE node_uuid = $1", &[&node.to_string()]).await,
            None => select(&**client, "", &[]).await,
        }
    }

    async fn update_cinder_volume(
        &self,
        node: Uuid,
        volume_id: String,
        change: CinderChange,
    ) -> Result<CinderRow, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut row = get_for_update(&tx, node, &volume_id).await?;
        change(&mut row);
        put(&tx, &row).await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn assign_cinder_target(
        &self,
        node: Uuid,
        volume_id: String,
        target: TargetCreate,
    ) -> Result<GenerationChange<CinderRow>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut row = get_for_update(&tx, node, &volume_id).await?;
        let (uuid, generation) = insert_target(&tx, &target).await?;
        row.target_uuid = Some(uuid);
        row.error = None;
        row.enter(CinderPhase::Attaching);
        put(&tx, &row).await?;
        tx.commit().await?;
        Ok(GenerationChange::new(node, generation, row))
    }

    async fn unassign_cinder_target(
        &self,
        node: Uuid,
        volume_id: String,
    ) -> Result<(CinderRow, Option<GenerationChange>), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut row = get_for_update(&tx, node, &volume_id).await?;
        let removed = match row.target_uuid {
            Some(uuid) => remove_target(&tx, uuid).await?,
            None => None,
        };
        row.enter(CinderPhase::Detaching);
        put(&tx, &row).await?;
        tx.commit().await?;
        Ok((
            row,
            removed.map(|(node, generation)| GenerationChange::new(node, generation, ())),
        ))
    }

    async fn forget_cinder_volume(&self, node: Uuid, volume_id: String) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "DELETE FROM cinder_volumes WHERE node_uuid = $1 AND volume_id = $2",
                &[&node.to_string(), &volume_id],
            )
            .await?;
        Ok(())
    }

    async fn target_exists(&self, uuid: Uuid) -> Result<bool, StoreError> {
        Ok(self
            .client()
            .await?
            .query_opt(
                "SELECT 1 FROM targets WHERE uuid = $1",
                &[&uuid.to_string()],
            )
            .await?
            .is_some())
    }

    async fn ironic_view(&self) -> Result<Vec<Local>, StoreError> {
        let client = self.client().await?;
        let mut addresses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for row in client
            .query("SELECT node_uuid, address FROM node_addresses", &[])
            .await?
        {
            addresses.entry(row.get(0)).or_default().insert(row.get(1));
        }
        let sql = format!(
            "SELECT n.uuid, n.name, n.source, n.instance_uuid, n.provision_state, n.leaving, \
             {BUSY} FROM nodes n"
        );
        let rows = client.query(&sql, &[]).await?;
        rows.iter()
            .map(|r| {
                let uuid: String = r.get(0);
                Ok(Local {
                    addresses: addresses.remove(&uuid).unwrap_or_default(),
                    uuid: parse_uuid(&uuid)?,
                    name: r.get(1),
                    source: parse_source(r.get(2))?,
                    instance_uuid: r.get(3),
                    provision_state: r.get(4),
                    leaving: r.get(5),
                    busy: r.get(6),
                })
            })
            .collect()
    }

    async fn apply_ironic(
        &self,
        changes: Vec<Change>,
    ) -> Result<Vec<GenerationChange>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Conductors sharing the database each sync: their passes apply one at a time.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&IRONIC_LOCK])
            .await?;
        let mut published = Vec::new();
        let updates: Vec<&Remote> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Update { node, .. } => Some(node),
                _ => None,
            })
            .collect();
        for change in &changes {
            match change {
                Change::Remove(uuid) => {
                    tx.execute(
                        "DELETE FROM nodes WHERE uuid = $1 AND source = 'ironic'",
                        &[&uuid.to_string()],
                    )
                    .await?;
                }
                Change::Leave(uuid) => published.extend(leave(&tx, *uuid).await?),
                Change::Update { .. } | Change::Create(_) => {}
            }
        }
        // Names and addresses may move between nodes: every updated node first lets go of
        // both, then takes its new ones.
        for node in &updates {
            let uuid = node.uuid.to_string();
            tx.execute("UPDATE nodes SET name = $1 WHERE uuid = $1", &[&uuid])
                .await?;
            tx.execute("DELETE FROM node_addresses WHERE node_uuid = $1", &[&uuid])
                .await?;
        }
        for node in &updates {
            tx.execute(
                "UPDATE nodes SET name = $2, source = 'ironic', instance_uuid = $3, \
                 provision_state = $4, leaving = false WHERE uuid = $1",
                &[
                    &node.uuid.to_string(),
                    &node.name,
                    &node.instance_uuid,
                    &node.provision_state,
                ],
            )
            .await
            .map_err(|e| conflict(e, format!("node name {:?} is taken", node.name)))?;
            insert_addresses(&*tx, node.uuid, &node.addresses).await?;
        }
        for change in &changes {
            if let Change::Create(node) = change {
                let generation = next_generation(&tx).await?;
                tx.execute(
                    "INSERT INTO nodes (uuid, name, created_at, generation, source, \
                     instance_uuid, provision_state) VALUES ($1, $2, $3, $4, 'ironic', $5, $6)",
                    &[
                        &node.uuid.to_string(),
                        &node.name,
                        &now_secs(),
                        &generation,
                        &node.instance_uuid,
                        &node.provision_state,
                    ],
                )
                .await
                .map_err(|e| conflict(e, format!("node {:?} exists", node.name)))?;
                insert_addresses(&*tx, node.uuid, &node.addresses).await?;
            }
        }
        tx.commit().await?;
        Ok(published)
    }

    async fn remove_departed(&self) -> Result<Vec<Uuid>, StoreError> {
        let sql = format!(
            "DELETE FROM nodes WHERE uuid IN (SELECT n.uuid FROM nodes n \
             WHERE n.leaving AND n.source = 'ironic' AND NOT {BUSY}) RETURNING uuid"
        );
        let rows = self.client().await?.query(&sql, &[]).await?;
        rows.iter().map(|r| parse_uuid(r.get(0))).collect()
    }

    async fn connector_checks(&self) -> Result<Vec<ConnectorCheck>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT n.uuid, n.ironic_connector, n.warning, c ->> 'type', \
                        c ->> 'connector_id' \
                 FROM nodes n JOIN reports r ON r.node_uuid = n.uuid, \
                      jsonb_array_elements(r.body::jsonb -> 'connectors') AS c \
                 WHERE n.source = 'ironic' AND NOT n.leaving \
                   AND c ->> 'type' IN ('iqn', 'nqn')",
                &[],
            )
            .await?;
        checks_due(
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
                .collect(),
        )
    }

    async fn connector_checked(
        &self,
        node: Uuid,
        key: String,
        warning: Option<String>,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE nodes SET ironic_connector = $2, warning = $3 WHERE uuid = $1",
                &[&node.to_string(), &key, &warning],
            )
            .await?;
        Ok(())
    }

    async fn ironic_watched(&self) -> Result<Vec<Uuid>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT uuid FROM nodes WHERE source = 'ironic' \
                 AND (leaving OR ironic_connector IS NULL OR warning IS NOT NULL)",
                &[],
            )
            .await?;
        rows.iter().map(|r| parse_uuid(r.get(0))).collect()
    }
}

impl PgStore {
    /// Runs a statement that must change the one row named by `uuid`; none is `NotFound(what)`.
    async fn change_one(&self, sql: &str, uuid: Uuid, what: &str) -> Result<(), StoreError> {
        match self
            .client()
            .await?
            .execute(sql, &[&uuid.to_string()])
            .await?
        {
            0 => Err(StoreError::NotFound(format!("{what} {uuid}"))),
            _ => Ok(()),
        }
    }
}

/// Holds the node's row until the transaction ends; `NotFound` when there is none.
async fn lock_node(tx: &tokio_postgres::Transaction<'_>, id: &str) -> Result<(), StoreError> {
    tx.query_opt("SELECT 1 FROM nodes WHERE uuid = $1 FOR UPDATE", &[&id])
        .await?
        .map(|_| ())
        .ok_or_else(|| StoreError::NotFound(format!("node {id}")))
}

async fn insert_addresses<C: GenericClient + Sync>(
    client: &C,
    node: Uuid,
    macs: impl IntoIterator<Item = impl AsRef<str>>,
) -> Result<(), StoreError> {
    let node = node.to_string();
    for mac in macs {
        let mac = mac.as_ref();
        client
            .execute(
                "INSERT INTO node_addresses (address, node_uuid) VALUES ($1, $2)",
                &[&mac, &node],
            )
            .await
            .map_err(|e| conflict(e, format!("address {mac} belongs to another node")))?;
    }
    Ok(())
}

async fn read_node<C: GenericClient + Sync>(client: &C, uuid: &str) -> Result<Node, StoreError> {
    let row = client
        .query_opt(
            "SELECT name, created_at, token_issued, source, instance_uuid, provision_state, \
             leaving, warning, \
             ARRAY(SELECT address FROM node_addresses WHERE node_uuid = n.uuid \
                   ORDER BY address), \
             (SELECT received_at FROM reports WHERE node_uuid = n.uuid) \
             FROM nodes n WHERE uuid = $1",
            &[&uuid],
        )
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("node {uuid}")))?;
    Ok(Node {
        uuid: parse_uuid(uuid)?,
        name: row.get(0),
        created_at: format_secs(row.get(1)),
        token_issued: row.get(2),
        source: parse_source(row.get(3))?,
        instance_uuid: row.get(4),
        provision_state: row.get(5),
        leaving: row.get(6),
        warning: row.get(7),
        addresses: row.get(8),
        last_seen: row.get::<_, Option<i64>>(9).map(format_secs),
    })
}

/// Inserts a target and bumps its node's generation, within the caller's transaction.
async fn insert_target(
    tx: &tokio_postgres::Transaction<'_>,
    req: &TargetCreate,
) -> Result<(Uuid, u64), StoreError> {
    let uuid = req.uuid.unwrap_or_else(Uuid::new_v4);
    tx.execute(
        "INSERT INTO targets (uuid, node_uuid, volume_type, volume_id, boot_index, \
         properties, extra, created_at, size_bytes) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &uuid.to_string(),
            &req.node_uuid.to_string(),
            &req.volume_type,
            &req.volume_id,
            &req.boot_index.map(i64::from),
            &Value::Object(req.properties.clone()).to_string(),
            &Value::Object(req.extra.clone()).to_string(),
            &now_secs(),
            &req.size_bytes.map(|s| s as i64),
        ],
    )
    .await
    .map_err(|e| {
        conflict(
            e,
            format!(
                "target {uuid} or volume {:?} on node {} exists, or the node does not",
                req.volume_id, req.node_uuid
            ),
        )
    })?;
    Ok((uuid, bump_generation(tx, req.node_uuid).await?))
}

/// Deletes a target and bumps its node's generation; `None` when there is no such target.
async fn remove_target(
    tx: &tokio_postgres::Transaction<'_>,
    uuid: Uuid,
) -> Result<Option<(Uuid, u64)>, StoreError> {
    let node: Option<String> = tx
        .query_opt(
            "DELETE FROM targets WHERE uuid = $1 RETURNING node_uuid",
            &[&uuid.to_string()],
        )
        .await?
        .map(|r| r.get(0));
    let Some(node) = node else {
        return Ok(None);
    };
    let node = parse_uuid(&node)?;
    Ok(Some((node, bump_generation(tx, node).await?)))
}

async fn assigned_targets<C: Cached>(client: &C, node: &str) -> Result<HashSet<Uuid>, StoreError> {
    let statement = client
        .prepare_cached("SELECT uuid FROM targets WHERE node_uuid = $1")
        .await?;
    let rows = client.query(&statement, &[&node]).await?;
    rows.iter().map(|r| parse_uuid(r.get(0))).collect()
}

async fn generation<C: Cached>(client: &C, node: Uuid) -> Result<u64, StoreError> {
    let statement = client
        .prepare_cached("SELECT generation FROM nodes WHERE uuid = $1")
        .await?;
    client
        .query_opt(&statement, &[&node.to_string()])
        .await?
        .map(|r| r.get::<_, i64>(0) as u64)
        .ok_or_else(|| StoreError::NotFound(format!("node {node}")))
}

/// Gives the node the next generation and announces it to every conductor's listener: the
/// notification is delivered when (and only if) the transaction commits.
async fn bump_generation(
    tx: &tokio_postgres::Transaction<'_>,
    node: Uuid,
) -> Result<u64, StoreError> {
    let next = next_generation(tx).await?;
    let changed = tx
        .execute(
            "UPDATE nodes SET generation = $2 WHERE uuid = $1",
            &[&node.to_string(), &next],
        )
        .await?;
    if changed == 0 {
        return Err(StoreError::NotFound(format!("node {node}")));
    }
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &format!("{node} {next}")],
    )
    .await?;
    Ok(next as u64)
}

/// The next value of the one generation sequence (see store/targets.rs): one statement, whose
/// row lock orders the conductors' bumps until each commits.
async fn next_generation(tx: &tokio_postgres::Transaction<'_>) -> Result<i64, StoreError> {
    Ok(tx
        .query_one(
            "UPDATE generation_sequence SET value = GREATEST(value + 1, $1) WHERE id = 1 \
             RETURNING value",
            &[&now_micros()],
        )
        .await?
        .get(0))
}

async fn query_targets<C: Cached>(
    client: &C,
    filter: &str,
    arg: &str,
) -> Result<Vec<VolumeTarget>, StoreError> {
    // FOR UPDATE cannot follow ORDER BY's position in a string filter: lock first if asked.
    let (filter, lock) = match filter.strip_suffix(" FOR UPDATE") {
        Some(f) => (f, " FOR UPDATE"),
        None => (filter, ""),
    };
    let sql = format!(
        "SELECT uuid, node_uuid, volume_type, volume_id, boot_index, properties, extra, \
         size_bytes FROM targets {filter} \
         ORDER BY boot_index IS NULL, boot_index, created_at, uuid{lock}"
    );
    let statement = client.prepare_cached(&sql).await?;
    let rows = client.query(&statement, &[&arg]).await?;
    rows.iter()
        .map(|r| {
            Ok(VolumeTarget {
                uuid: parse_uuid(r.get(0))?,
                node_uuid: parse_uuid(r.get(1))?,
                volume_type: r.get(2),
                volume_id: r.get(3),
                boot_index: r
                    .get::<_, Option<i64>>(4)
                    .map(|b| u32::try_from(b).unwrap_or(u32::MAX)),
                properties: parse_object(r.get(5))?,
                extra: parse_object(r.get(6))?,
                size_bytes: r.get::<_, Option<i64>>(7).map(|s| s as u64),
            })
        })
        .collect()
}

async fn select<C: GenericClient + Sync>(
    client: &C,
    filter: &str,
    args: &[Param<'_>],
) -> Result<Vec<CinderRow>, StoreError> {
    let (filter, lock) = match filter.strip_suffix(" FOR UPDATE") {
        Some(f) => (f, " FOR UPDATE"),
        None => (filter, ""),
    };
    let sql = format!(
        "SELECT {CINDER_COLUMNS} FROM cinder_volumes {filter} \
         ORDER BY node_uuid, volume_id{lock}"
    );
    let rows = client.query(&sql, args).await?;
    rows.iter()
        .map(|r| {
            CinderRowText {
                node_uuid: r.get(0),
                volume_id: r.get(1),
                volume_name: r.get(2),
                want_attached: r.get(3),
                phase: r.get(4),
                attachment_id: r.get(5),
                target_uuid: r.get(6),
                read_only: r.get(7),
                mount: r.get(8),
                cinder_status: r.get(9),
                cinder_error: r.get(10),
                error_kind: r.get(11),
                error_message: r.get(12),
                phases: r.get(13),
            }
            .parse()
        })
        .collect()
}

async fn get_for_update(
    tx: &tokio_postgres::Transaction<'_>,
    node: Uuid,
    volume_id: &str,
) -> Result<CinderRow, StoreError> {
    select(
        tx,
        "WHERE node_uuid = $1 AND volume_id = $2 FOR UPDATE",
        &[&node.to_string(), &volume_id],
    )
    .await?
    .pop()
    .ok_or_else(|| StoreError::NotFound(format!("Cinder volume {volume_id} of node {node}")))
}

/// Writes `row` over the stored one.
async fn put(tx: &tokio_postgres::Transaction<'_>, row: &CinderRow) -> Result<(), StoreError> {
    let phases =
        serde_json::to_string(&row.phases).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mount = row
        .mount
        .as_ref()
        .map(|m| Value::Object(m.clone()).to_string());
    let changed = tx
        .execute(
            "UPDATE cinder_volumes SET volume_name = $3, want_attached = $4, phase = $5, \
             attachment_id = $6, target_uuid = $7, read_only = $8, mount = $9, \
             cinder_status = $10, cinder_error = $11, error_kind = $12, error_message = $13, \
             phases = $14 WHERE node_uuid = $1 AND volume_id = $2",
            &[
                &row.node_uuid.to_string(),
                &row.volume_id,
                &row.volume_name,
                &row.want_attached,
                &row.phase.as_str(),
                &row.attachment_id,
                &row.target_uuid.map(|u| u.to_string()),
                &row.read_only,
                &mount,
                &row.cinder_status,
                &row.cinder_error,
                &row.error.as_ref().map(|e| e.kind.clone()),
                &row.error.as_ref().map(|e| e.message.clone()),
                &phases,
            ],
        )
        .await?;
    match changed {
        0 => Err(StoreError::NotFound(format!(
            "Cinder volume {} of node {}",
            row.volume_id, row.node_uuid
        ))),
        _ => Ok(()),
    }
}

/// Marks the node leaving (as store/ironic.rs's `leave`).
async fn leave(
    tx: &tokio_postgres::Transaction<'_>,
    uuid: Uuid,
) -> Result<Vec<GenerationChange>, StoreError> {
    let node = uuid.to_string();
    tx.execute("UPDATE nodes SET leaving = true WHERE uuid = $1", &[&node])
        .await?;
    tx.execute(
        "UPDATE cinder_volumes SET want_attached = false WHERE node_uuid = $1",
        &[&node],
    )
    .await?;
    let targets = tx
        .query(
            "SELECT uuid FROM targets WHERE node_uuid = $1 AND uuid NOT IN \
             (SELECT target_uuid FROM cinder_volumes WHERE target_uuid IS NOT NULL)",
            &[&node],
        )
        .await?;
    let mut changes = Vec::new();
    for target in targets {
        if let Some((node, generation)) = remove_target(tx, parse_uuid(target.get(0))?).await? {
            changes.push(GenerationChange::new(node, generation, ()));
        }
    }
    Ok(changes)
}
