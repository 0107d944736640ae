//! `POST /v1/nodes/{node}/volumes`, `DELETE /v1/nodes/{node}/volumes/{volume}`,
//! `GET /v1/volumes` and `GET /v1/nodes/{node}/volumes`.

use crate::conductor::store::StoreApi;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use uuid::Uuid;

use super::super::Conductor;
use super::super::auth::Admin;
use super::super::error::{ApiError, ApiResult};
use super::super::extract::{ApiJson, ApiQuery};
use super::super::store::CinderRow;
use super::{CinderService, agent_view};
use crate::openstack::OpenStackErrorKind;
use crate::openstack::cinder::CinderApi;
use crate::protocol::Heartbeat;
use crate::protocol::cinder::{CinderVolume, CinderVolumeList, VolumeAttach};

type Shared = State<Arc<Conductor>>;

fn service(c: &Conductor) -> ApiResult<Arc<CinderService>> {
    c.cinder.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "cinder_not_configured",
            "this conductor has no [cinder] section: it cannot attach Cinder volumes",
        )
    })
}

/// A failed call to Cinder as the answer to the operator, logged unless it only says the volume
/// is not there.
fn cinder_error(e: crate::openstack::OpenStackError) -> ApiError {
    if e.kind != OpenStackErrorKind::NotFound {
        tracing::warn!(kind = e.kind.as_str(), error = %e, "a call to Cinder failed");
    }
    let (status, kind) = match e.kind {
        OpenStackErrorKind::NotFound => (StatusCode::NOT_FOUND, "volume_not_found"),
        OpenStackErrorKind::Conflict => (StatusCode::CONFLICT, "volume_ambiguous"),
        OpenStackErrorKind::Unreachable | OpenStackErrorKind::BadAnswer => {
            (StatusCode::SERVICE_UNAVAILABLE, "cinder_unreachable")
        }
        OpenStackErrorKind::AuthFailed => (StatusCode::BAD_GATEWAY, "cinder_auth_failed"),
        OpenStackErrorKind::BadRequest => (StatusCode::BAD_GATEWAY, "cinder_refused"),
        OpenStackErrorKind::Config => (StatusCode::INTERNAL_SERVER_ERROR, "cinder_config"),
    };
    ApiError::new(status, kind, e.message)
}

/// Attaches a Cinder volume to a node: checked here, done by the flow.
pub(in crate::conductor) async fn attach(
    State(c): Shared,
    _: Admin,
    Path(node): Path<String>,
    ApiJson(req): ApiJson<VolumeAttach>,
) -> ApiResult<(StatusCode, Json<CinderVolume>)> {
    let svc = service(&c)?;
    if let Some(mount) = &req.mount {
        crate::protocol::target::check_mount(&serde_json::Value::Object(mount.clone()))
            .map_err(|e| ApiError::bad_request(e.kind(), e.to_string()))?;
    }
    let found = c.store.find_node(node).await?;
    let node_uuid = found.uuid;
    let status = c.store.node_status(node_uuid).await?;
    if status.report.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "node_never_reported",
            format!(
                "node {} has never sent a heartbeat: its connector (initiator name, address) \
                 is unknown, so Cinder cannot export the volume to it; start its agent first",
                found.name
            ),
        ));
    }
    let volume = svc.find_volume(&req.volume).await.map_err(cinder_error)?;
    let usable = match volume.status.as_str() {
        "available" => true,
        "in-use" => volume.multiattach,
        _ => false,
    };
    if !usable {
        let holders: Vec<String> = volume
            .attachments
            .iter()
            .filter_map(|a| a.server_id.clone().or(a.host_name.clone()))
            .collect();
        let (kind, why) = match volume.status.as_str() {
            "in-use" => (
                "volume_in_use",
                format!(
                    "it is in use (attached to {}) and not multiattach",
                    holders.join(", ")
                ),
            ),
            s if s.starts_with("error") => ("volume_error", format!("its status is {s}")),
            s => (
                "volume_not_available",
                format!("its status is {s}; only an available volume can be attached"),
            ),
        };
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            kind,
            format!("Cinder volume {} cannot be attached: {why}", volume.id),
        ));
    }
    let row = CinderRow::new(
        node_uuid,
        volume.id.clone(),
        volume.name.clone().filter(|n| !n.is_empty()),
        req.read_only,
        req.mount.clone(),
        Some(volume.status.clone()),
    );
    let stored = row.clone();
    c.store.insert_cinder_volume(stored).await?;
    tracing::info!(node = %node_uuid, volume_id = %volume.id, "Cinder volume attach asked");
    svc.wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(view(&row, &found.name, status.report.as_ref())),
    ))
}

/// Detaches a Cinder volume from a node: the agent first, then the attachment.
pub(in crate::conductor) async fn detach(
    State(c): Shared,
    _: Admin,
    Path((node, volume)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<CinderVolume>)> {
    let svc = service(&c)?;
    let found = c.store.find_node(node).await?;
    let node_uuid = found.uuid;
    let rows = c.store.cinder_volumes(Some(node_uuid)).await?;
    let Some(row) = rows
        .iter()
        .find(|r| r.volume_id == volume || r.volume_name.as_deref() == Some(volume.as_str()))
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("node {} has no Cinder volume {volume:?}", found.name),
        ));
    };
    let volume_id = row.volume_id.clone();
    let row = c
        .store
        .update_cinder_volume(
            node_uuid,
            volume_id,
            Box::new(move |r| r.want_attached = false),
        )
        .await?;
    tracing::info!(node = %node_uuid, volume_id = %row.volume_id, "Cinder volume detach asked");
    svc.wake.notify_one();
    let status = c.store.node_status(node_uuid).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(view(&row, &found.name, status.report.as_ref())),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::conductor) struct ListQuery {
    node: Option<String>,
}

pub(in crate::conductor) async fn list(
    State(c): Shared,
    _: Admin,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<CinderVolumeList>> {
    let node = match q.node {
        Some(n) => Some(c.store.find_node(n).await?.uuid),
        None => None,
    };
    listed(&c, node).await
}

pub(in crate::conductor) async fn list_of_node(
    State(c): Shared,
    _: Admin,
    Path(node): Path<String>,
) -> ApiResult<Json<CinderVolumeList>> {
    let node = c.store.find_node(node).await?.uuid;
    listed(&c, Some(node)).await
}

async fn listed(c: &Conductor, node: Option<Uuid>) -> ApiResult<Json<CinderVolumeList>> {
    let rows = c.store.cinder_volumes(node).await?;
    let mut volumes = Vec::with_capacity(rows.len());
    let mut statuses = std::collections::HashMap::new();
    for row in rows {
        let status = match statuses.entry(row.node_uuid) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(c.store.node_status(row.node_uuid).await?)
            }
        };
        volumes.push(view(&row, &status.node_name, status.report.as_ref()));
    }
    Ok(Json(CinderVolumeList { volumes }))
}

/// A row with what the node's agent reports of its target.
fn view(row: &CinderRow, node_name: &str, report: Option<&Heartbeat>) -> CinderVolume {
    let agent = agent_view(row, report);
    // The flow's own error first; else the agent's, for a volume it cannot attach.
    let error = row
        .error
        .clone()
        .or_else(|| agent.as_ref().and_then(|a| a.error.clone()));
    CinderVolume {
        node_uuid: row.node_uuid,
        node: node_name.to_string(),
        volume_id: row.volume_id.clone(),
        volume_name: row.volume_name.clone(),
        want: if row.want_attached {
            "attached"
        } else {
            "detached"
        }
        .into(),
        phase: row.phase,
        attachment_id: row.attachment_id.clone(),
        target_uuid: row.target_uuid,
        cinder_status: row.cinder_status.clone(),
        cinder_reachable: row.cinder_error.is_none(),
        cinder_error: row.cinder_error.clone(),
        error,
        agent_state: agent.as_ref().map(|a| a.state),
        device: agent.as_ref().and_then(|a| a.device_path.clone()),
        mountpoint: agent.as_ref().and_then(|a| a.mountpoint.clone()),
        read_only: row.read_only,
        phases: row.phases.clone(),
    }
}
