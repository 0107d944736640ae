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
use crate::protocol::target::{self, BackendSpec, Portal, TargetSpec};
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
/// generation changed, or when a portal's host name now resolves to another address. An answer
/// is always passed on at once; a pause for a conductor that answers too fast comes after it.
pub(crate) async fn poll_targets(
    client: Client,
    node: NodeLogin,
    wait: Duration,
    events: mpsc::Sender<Event>,
) {
    let mut since = None;
    let mut last: Option<Assignment> = None;
    let mut failures = 0u32;
    let mut idle_quick_answers = 0u32;
    loop {
        let asked = tokio::time::Instant::now();
        match client.targets(node.uuid, &node.token, since, wait).await {
            Ok(answer) => {
                failures = 0;
                let took = asked.elapsed();
                let waited_before = since.is_some();
                since = Some(answer.generation);
                let assignment = Assignment {
                    generation: answer.generation,
                    targets: desired_targets(answer.targets).await,
                };
                let news = last
                    .as_ref()
                    .is_none_or(|l| l.targets != assignment.targets);
                if last.as_ref() != Some(&assignment) {
                    last = Some(assignment.clone());
                    if events.send(Event::Assignment(assignment)).await.is_err() {
                        return;
                    }
                }
                if let Some(pause) = poll_pause(waited_before, took, news, &mut idle_quick_answers)
                {
                    tracing::debug!(
                        pause_ms = pause.as_millis() as u64,
                        news,
                        "the conductor answered a long-poll at once; pausing before the next"
                    );
                    tokio::time::sleep(pause).await;
                }
            }
            // On to the conductor the agent moved to, which the client paces.
            Err(ClientError::Moved) => {
                tracing::debug!("a long-poll left the conductor the agent moved away from");
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

/// A long-poll answered sooner than this counts as answered at once.
const QUICK_ANSWER: Duration = Duration::from_secs(1);

/// The pause before the next long-poll, which must not make the agent spin against a conductor
/// that answers every long-poll at once. An answer with news (the targets changed) is a burst of
/// real changes, an operator's or Cinder's: the next poll follows after about 1 s, so that the
/// next change of the burst is not held back long. An answer at once with nothing new (the
/// conductor does not wait, or its generations change for nothing) makes the agent wait 1 s,
/// then 2, 4… up to 30 s, until a long-poll waits again. The first poll (`waited_before`
/// false) is always answered at once.
fn poll_pause(
    waited_before: bool,
    took: Duration,
    news: bool,
    idle_quick_answers: &mut u32,
) -> Option<Duration> {
    if !waited_before || took >= QUICK_ANSWER {
        *idle_quick_answers = 0;
        return None;
    }
    if news {
        return Some(QUICK_ANSWER.mul_f64(jitter().max(0.9)));
    }
    *idle_quick_answers += 1;
    Some(retry_delay(
        *idle_quick_answers,
        QUICK_ANSWER,
        Duration::from_secs(30),
        jitter().max(0.9),
    ))
}

/// Validates each target and names its portals by address, as sessions are keyed.
pub(crate) async fn desired_targets(targets: Vec<VolumeTarget>) -> Vec<DesiredTarget> {
    let mut desired = Vec::with_capacity(targets.len());
    for t in targets {
        let mut spec = target::parse(&t);
        if let Ok(spec) = &mut spec {
            resolve_portals(spec).await;
        }
        desired.push(DesiredTarget {
            uuid: t.uuid,
            volume_id: t.volume_id.clone(),
            volume_type: t.volume_type.clone(),
            spec,
            source: t,
        });
    }
    desired
}

/// Replaces portal host names by the address they resolve to, so that reconcile and the backend
/// name a session alike. A name that does not resolve stays: the attach then fails with
/// `portal_unreachable` and is retried.
async fn resolve_portals(spec: &mut TargetSpec) {
    let portals: Vec<&mut Portal> = match &mut spec.backend {
        BackendSpec::Iscsi(iscsi) => iscsi.paths.iter_mut().map(|p| &mut p.portal).collect(),
        BackendSpec::Nvmeof(nvme) => nvme.portals.iter_mut().collect(),
        BackendSpec::Rbd(_) => return,
    };
    for portal in portals {
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
        if sent.is_ok() && report.volumes.iter().any(|v| v.device_path.is_some()) {
            crate::failpoints::crash("agent.report_sent");
        }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use axum::Router;
    use axum::routing::get;

    use super::*;

    /// A conductor that answers every long-poll at once with `answer(n)` for its n-th poll (from
    /// 1), and the count of polls.
    fn answering(
        answer: impl Fn(u64) -> serde_json::Value + Clone + Send + Sync + 'static,
    ) -> (Router, Arc<AtomicU64>) {
        let polls = Arc::new(AtomicU64::new(0));
        let counter = polls.clone();
        let app = Router::new().route(
            "/v1/nodes/{node}/volume/targets",
            get(move || {
                let body = answer(counter.fetch_add(1, Ordering::Relaxed) + 1);
                async move { axum::Json(body) }
            }),
        );
        (app, polls)
    }

    /// A client of `app` served on loopback, and a node to poll it for.
    async fn conductor_serving(app: Router) -> (Client, NodeLogin) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let resolver = Arc::new(crate::agent::SystemResolver);
        let client = Client::new(&[url], None, resolver, Default::default()).unwrap();
        let node = NodeLogin {
            uuid: Uuid::new_v4(),
            name: "n".into(),
            token: Secret::new("t"),
        };
        (client, node)
    }

    #[test]
    fn quick_answers_pause_longer_and_longer_until_a_poll_waits() {
        let mut quick = 0;
        let second = Duration::from_secs(1);
        assert_eq!(
            poll_pause(false, Duration::ZERO, true, &mut quick),
            None,
            "first poll"
        );
        let pauses: Vec<Duration> = (0..8)
            .map(|_| poll_pause(true, Duration::from_millis(3), false, &mut quick).unwrap())
            .collect();
        assert!(pauses[0] >= second.mul_f64(0.9) && pauses[0] <= second);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0].mul_f64(0.9)));
        assert!(pauses[7] <= Duration::from_secs(30) && pauses[7] >= Duration::from_secs(27));
        assert_eq!(
            poll_pause(true, Duration::from_secs(20), false, &mut quick),
            None
        );
        assert_eq!(quick, 0, "a poll that waited starts the count again");
    }

    #[test]
    fn quick_answers_with_news_pause_about_a_second_however_many() {
        let mut quick = 0;
        for _ in 0..10 {
            let pause = poll_pause(true, Duration::from_millis(3), true, &mut quick).unwrap();
            assert!(pause >= Duration::from_millis(900) && pause <= Duration::from_secs(1));
        }
        assert_eq!(
            quick, 0,
            "news does not count as a conductor that never waits"
        );
    }

    /// A burst of real changes, each answered at once (a script attaching volumes one after
    /// the other): every change reaches the main loop as soon as its answer arrives, and the
    /// pauses between polls do not grow (they once grew to 27 s, holding an answer that long).
    #[tokio::test]
    async fn a_burst_of_changes_reaches_the_agent_without_growing_pauses() {
        let (app, _) = answering(|n| {
            let targets: Vec<serde_json::Value> = (0..n)
                .map(|i| {
                    serde_json::json!({
                        "uuid": Uuid::from_u128(u128::from(i) + 1),
                        "node_uuid": Uuid::nil(),
                        "volume_id": format!("vol-{i}"),
                        "volume_type": "iscsi",
                        "properties": {"target_portal": "192.0.2.1:3260",
                            "target_iqn": "iqn.2003-01.org.example:t", "target_lun": i},
                    })
                })
                .collect();
            serde_json::json!({"generation": n, "targets": targets})
        });
        let (client, node) = conductor_serving(app).await;
        let (tx, mut rx) = mpsc::channel(64);
        tokio::spawn(poll_targets(client, node, Duration::from_secs(30), tx));
        let start = tokio::time::Instant::now();
        let mut seen = Vec::new();
        while seen.len() < 5 {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some(Event::Assignment(a))) => seen.push((a.targets.len(), start.elapsed())),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        assert_eq!(
            seen.iter().map(|s| s.0).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        // About 1 s apart (pauses 0.9-1 s); growing pauses (1, 2, 4, 8 s) took 15 s for five.
        let fifth = seen[4].1;
        assert!(
            fifth < Duration::from_millis(5500),
            "five changes took {fifth:?}"
        );
    }

    /// A conductor that answers every long-poll at once, each time with a new generation (as
    /// one did for a node enrolled again): the agent must not spin.
    #[tokio::test]
    async fn a_conductor_that_never_waits_does_not_make_the_agent_spin() {
        let (app, polls) = answering(|n| serde_json::json!({"generation": n, "targets": []}));
        let (client, node) = conductor_serving(app).await;
        let (tx, mut rx) = mpsc::channel(64);
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let poll = poll_targets(client, node, Duration::from_secs(30), tx);
        let _ = tokio::time::timeout(Duration::from_secs(4), poll).await;
        let n = polls.load(Ordering::Relaxed);
        // 0 s, then pauses of about 1, 2 (and the start of 4): 3 or 4 polls in 4 s.
        assert!((2..=5).contains(&n), "{n} polls in 4 s");
    }
}
