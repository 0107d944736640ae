//! The routes of protocol v1 and their handlers. Extractors authenticate and parse; a handler
//! calls the store and publishes what changed.

use super::store::StoreApi;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use uuid::Uuid;

use super::Conductor;
use super::auth::{Admin, Agent, MetricsReader};
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, parse_uuid_param};
use super::generations::Published;
use super::limit::Throttled;
use crate::protocol::{
    self, AgentSettings, ConnectorCreate, ConnectorList, Heartbeat, HeartbeatAccepted,
    LookupResponse, MASK, NodeCreate, NodeList, NodeRef, NodeUpdate, TargetCreate, TargetList,
    TargetsResponse, VolumeTarget, mask_properties, secret::masked_property, text::escape_controls,
};

/// Largest request body accepted; a heartbeat of a few hundred volumes is far below it.
const BODY_LIMIT: usize = 1024 * 1024;

type Shared = State<Arc<Conductor>>;

pub(super) fn router(conductor: Arc<Conductor>) -> Router {
    let metrics = conductor.metrics.clone();
    Router::new()
        .route("/metrics", get(metrics_endpoint))
        .route("/v1", get(versions))
        .route("/v1/lookup", get(lookup))
        .route("/v1/heartbeat/{node}", post(heartbeat))
        .route("/v1/nodes", get(list_nodes).post(create_node))
        .route(
            "/v1/nodes/{node}",
            get(show_node).delete(delete_node).patch(update_node),
        )
        .route("/v1/nodes/{node}/reset_token", post(reset_token))
        .route("/v1/nodes/{node}/volume/targets", get(node_targets))
        .route("/v1/nodes/{node}/volume/status", get(node_status))
        .route(
            "/v1/nodes/{node}/volumes",
            get(super::cinder::api::list_of_node).post(super::cinder::api::attach),
        )
        .route(
            "/v1/nodes/{node}/volumes/{volume}",
            axum::routing::delete(super::cinder::api::detach),
        )
        .route("/v1/volumes", get(super::cinder::api::list))
        .route(
            "/v1/volume/connectors",
            get(list_connectors).post(create_connector),
        )
        .route(
            "/v1/volume/connectors/{uuid}",
            axum::routing::delete(delete_connector),
        )
        .route("/v1/volume/targets", get(list_targets).post(create_target))
        .route(
            "/v1/volume/targets/{uuid}",
            get(show_target).delete(delete_target).patch(resize_target),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint in protocol v1",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(metrics, every_answer))
        .with_state(conductor)
}

/// What every answer gets: an error as JSON with its kind, the protocol version, and its
/// latency in the metrics. One layer, not three: each layer's future is a box of its own that a
/// waiting long-poll holds for as long as it waits.
async fn every_answer(
    State(metrics): State<Arc<super::metrics::ConductorMetrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let timer = super::metrics::RequestTimer::start(&request);
    let mut response = super::error::json_errors(next.run(request).await).await;
    response.headers_mut().insert(
        protocol::VERSION_HEADER,
        HeaderValue::from_static(protocol::VERSION),
    );
    timer.finish(&metrics, &response);
    response
}

async fn metrics_endpoint(State(c): Shared, _: MetricsReader, headers: HeaderMap) -> Response {
    // The scrape reads the database: off the async workers, as every database call.
    let encode = move || crate::metrics::exposition(c.metrics.registry(), &headers);
    match tokio::task::spawn_blocking(encode).await {
        Ok(response) => response,
        Err(_) => ApiError::internal().into_response(),
    }
}

// ---- agent endpoints ----

async fn versions() -> Json<serde_json::Value> {
    Json(serde_json::json!({"versions": [protocol::VERSION]}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LookupQuery {
    #[serde(default)]
    addresses: String,
    node_uuid: Option<Uuid>,
}

async fn lookup(
    State(c): Shared,
    Throttled(client): Throttled,
    ApiQuery(q): ApiQuery<LookupQuery>,
) -> ApiResult<Json<LookupResponse>> {
    let addresses: Vec<String> = q
        .addresses
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    if addresses.is_empty() && q.node_uuid.is_none() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "give addresses=<mac>,<mac> or node_uuid=<uuid>",
        ));
    }
    if addresses.len() > protocol::MAX_LOOKUP_ADDRESSES {
        return Err(ApiError::bad_request(
            "too_many_addresses",
            format!(
                "a lookup names at most {} MAC addresses; send those of the node's own \
                 interfaces",
                protocol::MAX_LOOKUP_ADDRESSES
            ),
        ));
    }
    let by_uuid = q.node_uuid;
    let found = c.store.lookup(addresses, by_uuid).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "node_not_found",
            "no node has these addresses; enroll the node with `tether ctl node create`",
        )
    })?;
    let node = &found.node;
    if found.new_token.is_some() {
        tracing::info!(
            client = %client,
            node = %node.uuid,
            name = %node.name,
            "issued the node's agent token"
        );
    } else if !found.by_address && !node.token_issued {
        tracing::info!(
            client = %client,
            node = %node.uuid,
            name = %node.name,
            "lookup by uuid alone: no token issued; the token goes only to a lookup that names \
             one of the node's MAC addresses, or is provisioned"
        );
    }
    Ok(Json(LookupResponse {
        node: NodeRef {
            uuid: found.node.uuid,
            name: found.node.name,
        },
        config: AgentSettings {
            heartbeat_interval_s: c.heartbeat_interval_s,
            agent_token: found.new_token.unwrap_or_else(|| MASK.to_string()),
        },
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetsQuery {
    since: Option<u64>,
    wait: Option<u64>,
    #[allow(
        dead_code,
        reason = "agents send detail=true; every answer is detailed"
    )]
    detail: Option<bool>,
}

async fn node_targets(
    State(c): Shared,
    Agent(node): Agent,
    ApiQuery(q): ApiQuery<TargetsQuery>,
) -> ApiResult<Response> {
    // Subscribe before reading, so a change between the two still wakes this request.
    let mut changes = c.generations.subscribe(node);
    let mut waited = false;
    if let (Some(since), Some(wait)) = (q.since, q.wait)
        && wait > 0
        && c.store.generation(node).await? == since
    {
        // Only the generation is read before the wait: a fleet of waiting agents holds no
        // copies of their targets.
        let wait = std::time::Duration::from_secs(wait).min(c.max_wait);
        let mut shutdown = c.shutdown.clone();
        let _waiting = Waiting::new(&c.metrics.long_polls_waiting);
        let outcome = tokio::select! {
            changed = tokio::time::timeout(wait, changes.wait_for(|g| *g > since)) => {
                if matches!(changed, Ok(Ok(_))) { "changed" } else { "timeout" }
            }
            _ = shutdown.wait_for(|stop| *stop) => "shutdown",
        };
        c.metrics
            .long_polls
            .get_or_create(&super::metrics::OutcomeLabels { outcome })
            .inc();
        waited = true;
    }
    drop(changes);
    let (generation, targets) = c.store.node_targets(node).await?;
    let mut response = Json(TargetsResponse {
        generation,
        targets,
    })
    .into_response();
    if waited {
        response.extensions_mut().insert(super::metrics::LongPolled);
    }
    Ok(response)
}

/// Counts a waiting long-poll for as long as it waits, even when the client goes away.
struct Waiting<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> Waiting<'a> {
    fn new(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn heartbeat(
    State(c): Shared,
    Agent(node): Agent,
    ApiJson(report): ApiJson<Heartbeat>,
) -> ApiResult<(StatusCode, Json<HeartbeatAccepted>)> {
    let report = protocol::report::checked(report).map_err(|e| {
        // The error names the field and shows its start escaped: nothing raw reaches the log.
        tracing::warn!(node = %node, error = %e, "refused a malformed report");
        ApiError::bad_request(e.kind(), e.to_string())
    })?;
    let report = Arc::new(report);
    let stored = report.clone();
    let unknown = c.store.store_report(node, stored).await?;
    c.metrics.heartbeats.inc();
    if let Some(cinder) = &c.cinder {
        // A volume may be waiting for this report (attached: complete; gone: delete).
        cinder.reported(node);
    }
    if let Some(ironic) = &c.ironic {
        // A leaving node may have let its volumes go; a new initiator is to be published.
        ironic.reported(node);
    }
    // Kept and flagged, never refused: an agent detaching a volume whose target was just
    // deleted reports it until it is gone.
    for volume in report
        .volumes
        .iter()
        .filter(|v| unknown.new.contains(&v.target_uuid))
    {
        tracing::info!(
            node = %node,
            target = %volume.target_uuid,
            volume_id = %escape_controls(&volume.volume_id),
            state = volume.state.as_str(),
            "the node reports a target it does not have (a detach after an unassign, \
             or a report to look into); flagged in its status"
        );
    }
    tracing::debug!(
        node = %node,
        generation = ?report.generation,
        volumes = report.volumes.len(),
        unknown_targets = unknown.all.len(),
        states = ?report.volumes.iter().map(|v| v.state.as_str()).collect::<Vec<_>>(),
        "report received"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(HeartbeatAccepted {
            heartbeat_interval_s: c.heartbeat_interval_s,
        }),
    ))
}

// ---- operator endpoints ----

async fn list_nodes(State(c): Shared, _: Admin) -> ApiResult<Json<NodeList>> {
    Ok(Json(NodeList {
        nodes: c.store.list_nodes().await?,
        ironic: c.ironic.as_ref().map(|i| i.shown()),
    }))
}

async fn create_node(
    State(c): Shared,
    _: Admin,
    ApiJson(req): ApiJson<NodeCreate>,
) -> ApiResult<(StatusCode, Json<protocol::Node>)> {
    if req.agent_token.as_deref() == Some(MASK) {
        return Err(masked_secret("agent_token"));
    }
    Ok((StatusCode::CREATED, Json(c.store.create_node(req).await?)))
}

async fn show_node(
    State(c): Shared,
    _: Admin,
    Path(ident): Path<String>,
) -> ApiResult<Json<protocol::Node>> {
    Ok(Json(c.store.find_node(ident).await?))
}

async fn delete_node(
    State(c): Shared,
    _: Admin,
    Path(ident): Path<String>,
) -> ApiResult<StatusCode> {
    let uuid = node_uuid(&c, ident).await?;
    c.store.delete_node(uuid).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn update_node(
    State(c): Shared,
    _: Admin,
    Path(ident): Path<String>,
    ApiJson(req): ApiJson<NodeUpdate>,
) -> ApiResult<Json<protocol::Node>> {
    let uuid = node_uuid(&c, ident).await?;
    let node = c.store.set_node_addresses(uuid, req.addresses).await?;
    tracing::info!(node = %node.uuid, addresses = ?node.addresses, "node addresses changed");
    Ok(Json(node))
}

async fn reset_token(
    State(c): Shared,
    _: Admin,
    Path(ident): Path<String>,
) -> ApiResult<StatusCode> {
    let uuid = node_uuid(&c, ident).await?;
    c.store.reset_token(uuid).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn node_status(
    State(c): Shared,
    _: Admin,
    Path(ident): Path<String>,
) -> ApiResult<Json<protocol::NodeStatus>> {
    let uuid = node_uuid(&c, ident).await?;
    Ok(Json(c.store.node_status(uuid).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    node: Option<String>,
}

async fn list_connectors(
    State(c): Shared,
    _: Admin,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<ConnectorList>> {
    let node = match q.node {
        Some(n) => Some(node_uuid(&c, n).await?),
        None => None,
    };
    Ok(Json(ConnectorList {
        connectors: c.store.list_connectors(node).await?,
    }))
}

async fn create_connector(
    State(c): Shared,
    _: Admin,
    ApiJson(req): ApiJson<ConnectorCreate>,
) -> ApiResult<(StatusCode, Json<protocol::VolumeConnector>)> {
    node_uuid(&c, req.node_uuid.to_string()).await?;
    Ok((
        StatusCode::CREATED,
        Json(c.store.create_connector(req).await?),
    ))
}

async fn delete_connector(
    State(c): Shared,
    _: Admin,
    Path(uuid): Path<String>,
) -> ApiResult<StatusCode> {
    let uuid = parse_uuid_param(&uuid)?;
    c.store.delete_connector(uuid).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn node_uuid(c: &Conductor, ident: String) -> ApiResult<Uuid> {
    Ok(c.store.find_node(ident).await?.uuid)
}

fn masked(mut target: VolumeTarget) -> VolumeTarget {
    mask_properties(&mut target.properties);
    mask_properties(&mut target.extra);
    target
}

fn masked_secret(key: &str) -> ApiError {
    ApiError::bad_request(
        "masked_secret",
        format!("{key} holds the mask {MASK:?} that operators read back; send the real secret"),
    )
}

async fn list_targets(
    State(c): Shared,
    _: Admin,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<TargetList>> {
    let node = match q.node {
        Some(n) => Some(node_uuid(&c, n).await?),
        None => None,
    };
    let targets = c
        .store
        .list_targets(node)
        .await?
        .into_iter()
        .map(masked)
        .collect();
    Ok(Json(TargetList { targets }))
}

async fn show_target(
    State(c): Shared,
    _: Admin,
    Path(uuid): Path<String>,
) -> ApiResult<Json<VolumeTarget>> {
    let uuid = parse_uuid_param(&uuid)?;
    Ok(Json(masked(c.store.get_target(uuid).await?)))
}

async fn create_target(
    State(c): Shared,
    _: Admin,
    ApiJson(req): ApiJson<TargetCreate>,
) -> ApiResult<(StatusCode, Json<VolumeTarget>)> {
    let masked_in = |part: &str, found: Option<String>| found.map(|key| format!("{part}.{key}"));
    let sent_back = masked_in("properties", masked_property(&req.properties))
        .or_else(|| masked_in("extra", masked_property(&req.extra)));
    if let Some(key) = sent_back {
        return Err(masked_secret(&key));
    }
    protocol::target::check_volume_id(&req.volume_id)
        .map_err(|e| ApiError::bad_request(e.kind(), e.to_string()))?;
    node_uuid(&c, req.node_uuid.to_string()).await?;
    if c.validate_targets {
        let candidate = req.target(req.uuid.unwrap_or_else(Uuid::nil));
        protocol::target::parse(&candidate)
            .map_err(|e| ApiError::bad_request(e.kind(), e.to_string()))?;
    }
    let Published {
        generation,
        value: target,
        ..
    } = c.generations.publish(c.store.create_target(req).await?);
    tracing::info!(
        target = %target.uuid,
        node = %target.node_uuid,
        volume_id = %target.volume_id,
        generation,
        "target assigned"
    );
    Ok((StatusCode::CREATED, Json(masked(target))))
}

/// The volume grew at the storage: the node's agent grows the device (and the file system,
/// with `extra.mount.grow`).
async fn resize_target(
    State(c): Shared,
    _: Admin,
    Path(uuid): Path<String>,
    ApiJson(req): ApiJson<protocol::TargetResize>,
) -> ApiResult<Json<VolumeTarget>> {
    let uuid = parse_uuid_param(&uuid)?;
    let size = req.size_bytes;
    let Published {
        generation,
        value: target,
        ..
    } = c
        .generations
        .publish(c.store.resize_target(uuid, size).await?);
    tracing::info!(
        target = %uuid,
        node = %target.node_uuid,
        size_bytes = size,
        generation,
        "target resized"
    );
    Ok(Json(masked(target)))
}

async fn delete_target(
    State(c): Shared,
    _: Admin,
    Path(uuid): Path<String>,
) -> ApiResult<StatusCode> {
    let uuid = parse_uuid_param(&uuid)?;
    let Published {
        node, generation, ..
    } = c.generations.publish(c.store.delete_target(uuid).await?);
    tracing::info!(target = %uuid, node = %node, generation, "target unassigned");
    Ok(StatusCode::NO_CONTENT)
}
