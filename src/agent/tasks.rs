//! The agent's background tasks: looking the node up, long-polling its targets, and sending
//! heartbeats. Each talks to the conductor and hands what it learns to the main loop.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::Event;
use super::client::{Client, ClientError};
use super::metrics::AgentMetrics;
use super::reconcile::{Assignment, DesiredTarget};
use super::record::StateDir;
use super::volume::retry_delay;
use crate::protocol::target::{self, BackendSpec, TargetSpec};
use crate::protocol::{Heartbeat, MASK, Secret, VolumeTarget};

/// How long a portal's host name may take to resolve before the name is kept as written.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub(crate) struct NodeLogin {
    pub(crate) uuid: Uuid,
    pub(crate) name: String,
    pub(crate) token: Secret,
}

/// Looks the node up, with jittered exponential backoff, until it is found.
pub(crate) async fn lookup(
    client: &Client,
    node_uuid: Option<Uuid>,
    provisioned: Option<&Secret>,
    macs: &[String],
    state: &StateDir,
) -> NodeLogin {
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(60))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        match client.lookup(macs, node_uuid).await {
            Ok(found) => {
                let issued =
                    (found.config.agent_token != MASK).then(|| found.config.agent_token.clone());
                if let Some(token) = &issued
                    && let Err(e) = state.save_token(token)
                {
                    tracing::error!(
                        error = %e,
                        "cannot save the issued agent token in the state directory"
                    );
                }
                let token = provisioned
                    .cloned()
                    .or_else(|| issued.map(Secret::new))
                    .or_else(|| state.load_token().map(Secret::new));
                if let Some(token) = token {
                    tracing::info!(
                        node = %found.node.uuid,
                        name = %found.node.name,
                        "conductor knows this node"
                    );
                    return NodeLogin {
                        uuid: found.node.uuid,
                        name: found.node.name,
                        token,
                    };
                }
                tracing::error!(
                    node = %found.node.uuid,
                    kind = "token_unavailable",
                    "the conductor issued no token: it was issued before and is not in the \
                     state directory, or the lookup named none of the node's enrolled MAC \
                     addresses (a uuid alone never gets it); run `tether ctl node reset-token {}` \
                     or provision the token in the agent's configuration",
                    found.node.uuid
                );
            }
            Err(e) => tracing::warn!(kind = e.kind(), error = %e, "lookup failed; retrying"),
        }
        let delay = backoff.next().unwrap_or(Duration::from_secs(60));
        tokio::time::sleep(delay).await;
    }
}

/// Long-polls the node's targets. Only successful answers are passed on: an unreachable
/// or failing conductor leaves the last answer in force. An answer is passed on when its
/// generation changed, or when a portal's host name now resolves to another address.
pub(crate) async fn poll_targets(
    client: Client,
    node: NodeLogin,
    wait: Duration,
    events: mpsc::Sender<Event>,
) {
    let mut since = None;
    let mut last: Option<Assignment> = None;
    let mut failures = 0u32;
    loop {
        match client.targets(node.uuid, &node.token, since, wait).await {
            Ok(answer) => {
                failures = 0;
                since = Some(answer.generation);
                let assignment = Assignment {
                    generation: answer.generation,
                    targets: desired_targets(answer.targets).await,
                };
                if last.as_ref() != Some(&assignment) {
                    last = Some(assignment.clone());
                    if events.send(Event::Assignment(assignment)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                failures += 1;
                let delay = retry_delay(
                    failures,
                    Duration::from_millis(500),
                    Duration::from_secs(30),
                    jitter(),
                );
                log_client_error(
                    &e,
                    "polling targets failed; keeping the last assignment",
                    delay,
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Validates each target and names its portals by address, as sessions are keyed.
async fn desired_targets(targets: Vec<VolumeTarget>) -> Vec<DesiredTarget> {
    let mut desired = Vec::with_capacity(targets.len());
    for t in targets {
        let mut spec = target::parse(&t);
        if let Ok(spec) = &mut spec {
            resolve_portals(spec).await;
        }
        desired.push(DesiredTarget {
            uuid: t.uuid,
            volume_id: t.volume_id,
            volume_type: t.volume_type,
            spec,
        });
    }
    desired
}

/// Replaces portal host names by the address they resolve to, so that reconcile and the backend
/// name a session alike. A name that does not resolve stays: the attach then fails with
/// `portal_unreachable` and is retried.
async fn resolve_portals(spec: &mut TargetSpec) {
    let BackendSpec::Iscsi(iscsi) = &mut spec.backend else {
        return;
    };
    for path in &mut iscsi.paths {
        let portal = &mut path.portal;
        if portal.host.parse::<IpAddr>().is_ok() {
            continue;
        }
        let lookup = tokio::net::lookup_host((portal.host.clone(), portal.port));
        match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
            Ok(Ok(mut addrs)) => {
                if let Some(addr) = addrs.next() {
                    portal.host = addr.ip().to_string();
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    host = %portal.host,
                    error = %e,
                    "cannot resolve a portal's host name yet"
                )
            }
            Err(_) => {
                tracing::warn!(host = %portal.host, "resolving a portal's host name timed out")
            }
        }
    }
}

fn log_client_error(e: &ClientError, what: &str, retry_in: Duration) {
    tracing::warn!(
        kind = e.kind(),
        error = %e,
        retry_in_ms = retry_in.as_millis() as u64,
        "{what}"
    );
}

pub(crate) fn jitter() -> f64 {
    rand::random_range(0.5..=1.0)
}

/// Sends the report when it changes (coalesced) and on a jittered interval.
pub(crate) async fn send_heartbeats(
    client: Client,
    node: NodeLogin,
    fixed: Option<Duration>,
    mut reports: watch::Receiver<Heartbeat>,
    metrics: Arc<AgentMetrics>,
) {
    let mut interval = fixed.unwrap_or(Duration::from_secs(30));
    let mut failures = 0u32;
    loop {
        let report = reports.borrow_and_update().clone();
        let sent = client.heartbeat(node.uuid, &node.token, &report).await;
        metrics.heartbeat(sent.is_ok());
        let delay = match sent {
            Ok(accepted) => {
                failures = 0;
                if fixed.is_none() {
                    interval = Duration::from_secs(accepted.heartbeat_interval_s.max(1));
                }
                interval.mul_f64(rand::random_range(0.8..=1.0))
            }
            Err(e) => {
                failures += 1;
                let delay = retry_delay(failures, Duration::from_secs(1), interval, jitter());
                log_client_error(&e, "heartbeat failed", delay);
                delay
            }
        };
        tokio::select! {
            changed = reports.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
