//! The agent's side of protocol v1.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::sync::watch;
use uuid::Uuid;

use super::conductors::{Endpoint, Resolve, Selector, is_failover_reason};
use super::metrics::ConductorMetrics;

use crate::protocol::{
    ErrorBody, Heartbeat, HeartbeatAccepted, LookupResponse, Secret, TargetsResponse,
};

/// How long resolving a conductor's name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot reach the conductor at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "the conductor refused the agent token (401); reset it with \
         `tether ctl node reset-token` or provision the right one"
    )]
    Unauthorized,
    #[error("the conductor knows no node with these addresses (404: {0})")]
    UnknownNode(String),
    #[error("the conductor answered {status}: {kind}: {message}")]
    Refused {
        status: u16,
        kind: String,
        message: String,
    },
    #[error("the conductor's answer is not protocol v1: {0}")]
    Protocol(String),
    /// A long-poll left waiting on a conductor the agent has moved away from.
    #[error("the agent moved to another conductor during the request")]
    Moved,
}

impl ClientError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "conductor_unreachable",
            Self::Unauthorized => "unauthorized",
            Self::UnknownNode(_) => "node_not_found",
            Self::Refused { .. } => "conductor_refused",
            Self::Protocol(_) => "protocol_error",
            Self::Moved => "conductor_moved",
        }
    }
}

/// The conductor in use, for the status file and `tether status`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InUse {
    /// Its URL as configured, without credentials.
    pub(crate) url: String,
    /// The address its name resolved to, when the name has several.
    pub(crate) address: Option<String>,
    /// Every configured URL, without credentials.
    pub(crate) configured: Vec<String>,
}

/// Talks to one conductor at a time among the configured ones, and moves to the next when it
/// fails ([`conductors`](super::conductors)).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    selector: Mutex<Selector>,
    resolver: Arc<dyn Resolve>,
    roots: Option<Vec<reqwest::Certificate>>,
    /// The HTTP client of the conductor in use, built again on a move so that no pooled
    /// connection to the one left is reused.
    http: Mutex<(Endpoint, reqwest::Client)>,
    /// One resolution at a time; the others wait for its answer.
    resolving: tokio::sync::Mutex<()>,
    in_use: watch::Sender<InUse>,
    metrics: ConductorMetrics,
}

impl Client {
    /// `ca` is the PEM file of the CA that signed the conductors' certificates; without one the
    /// built-in roots apply.
    pub(crate) fn new(
        urls: &[String],
        ca: Option<&Path>,
        resolver: Arc<dyn Resolve>,
        metrics: ConductorMetrics,
    ) -> anyhow::Result<Self> {
        let selector = Selector::new(urls).map_err(anyhow::Error::msg)?;
        let roots = ca.map(read_roots).transpose()?;
        let (_, first) = selector.current();
        let first = first.clone();
        let http = http_client(roots.as_deref(), &first).context("setting up the HTTP client")?;
        metrics.using(&first);
        let (in_use, _) = watch::channel(in_use(&selector));
        Ok(Self {
            inner: Arc::new(Inner {
                selector: Mutex::new(selector),
                resolver,
                roots,
                http: Mutex::new((first, http)),
                resolving: tokio::sync::Mutex::new(()),
                in_use,
                metrics,
            }),
        })
    }

    /// The conductor in use, changed at every move.
    pub(crate) fn in_use(&self) -> watch::Receiver<InUse> {
        self.inner.in_use.subscribe()
    }

    pub async fn lookup(
        &self,
        macs: &[String],
        node: Option<Uuid>,
    ) -> Result<LookupResponse, ClientError> {
        let mut query = vec![("addresses", macs.join(","))];
        if let Some(node) = node {
            query.push(("node_uuid", node.to_string()));
        }
        // Never abandoned: a lookup may be the one that issues the token.
        self.call(false, |http, base| {
            http.get(format!("{base}/v1/lookup"))
                .query(&query)
                .timeout(Duration::from_secs(30))
        })
        .await
    }

    /// Long-polls the node's targets: returns at once if the generation differs from `since`,
    /// otherwise when it changes or after `wait`.
    pub async fn targets(
        &self,
        node: Uuid,
        token: &Secret,
        since: Option<u64>,
        wait: Duration,
    ) -> Result<TargetsResponse, ClientError> {
        let mut query = vec![("detail", "true".to_string())];
        if let Some(since) = since {
            query.push(("since", since.to_string()));
            query.push(("wait", wait.as_secs().to_string()));
        }
        // Abandoned when the agent moves: it may wait a minute on a conductor that is gone.
        self.call(true, |http, base| {
            http.get(format!("{base}/v1/nodes/{node}/volume/targets"))
                .query(&query)
                .bearer_auth(token.expose())
                .timeout(wait + Duration::from_secs(15))
        })
        .await
    }

    pub async fn heartbeat(
        &self,
        node: Uuid,
        token: &Secret,
        report: &Heartbeat,
    ) -> Result<HeartbeatAccepted, ClientError> {
        self.call(false, |http, base| {
            http.post(format!("{base}/v1/heartbeat/{node}"))
                .bearer_auth(token.expose())
                .json(report)
                .timeout(Duration::from_secs(15))
        })
        .await
    }

    fn selector(&self) -> MutexGuard<'_, Selector> {
        self.inner
            .selector
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Sends the request `build` makes (given the HTTP client and base URL of the conductor in
    /// use) and moves to the next conductor when it fails for a fail-over reason. With
    /// `abandon_on_move`, a request still running when another request moves the agent ends
    /// with [`ClientError::Moved`].
    async fn call<T: DeserializeOwned>(
        &self,
        abandon_on_move: bool,
        build: impl FnOnce(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        self.resolve_if_due().await;
        // Subscribed before the endpoint is read, so that no move is missed.
        let mut moves = self.inner.in_use.subscribe();
        let (epoch, endpoint) = loop {
            let (wait, epoch, endpoint) = {
                let s = self.selector();
                let (epoch, endpoint) = s.current();
                (s.wait(Instant::now()), epoch, endpoint.clone())
            };
            match wait {
                Some(delay) => tokio::time::sleep(delay).await,
                None => break (epoch, endpoint),
            }
        };
        let http = self.http_for(&endpoint)?;
        let request = send(build(&http, &endpoint.url), &endpoint);
        let result = match abandon_on_move {
            false => request.await,
            true => tokio::select! {
                result = request => result,
                Ok(()) = moves.changed() => Err(ClientError::Moved),
            },
        };
        let mut s = self.selector();
        match &result {
            Ok(_) => {
                if s.succeeded(epoch) {
                    tracing::info!(conductor = %endpoint.label(), "the conductor answers");
                }
            }
            Err(e) if is_failover_reason(e) => {
                if let Some(hop) = s.failed(epoch, Instant::now(), rand::random_range(0.5..=1.0)) {
                    tracing::warn!(
                        kind = "conductor_failover",
                        from = %hop.from.label(),
                        to = %hop.to.label(),
                        reason = e.kind(),
                        error = %e,
                        retry_in_ms = hop.delay.as_millis() as u64,
                        "moving to the next conductor; the token and the volumes stay"
                    );
                    self.inner.metrics.hopped();
                    self.publish(&s);
                }
            }
            Err(_) => {}
        }
        result
    }

    /// The HTTP client of `endpoint`, built when it changed.
    fn http_for(&self, endpoint: &Endpoint) -> Result<reqwest::Client, ClientError> {
        let mut cached = self.inner.http.lock().unwrap_or_else(|e| e.into_inner());
        if cached.0 != *endpoint {
            let http = http_client(self.inner.roots.as_deref(), endpoint).map_err(|e| {
                ClientError::Unreachable {
                    url: endpoint.label(),
                    reason: error_chain(&e),
                }
            })?;
            *cached = (endpoint.clone(), http);
        }
        Ok(cached.1.clone())
    }

    /// Resolves the conductors' names when it is time ([`Selector::names_to_resolve`]).
    async fn resolve_if_due(&self) {
        if self.selector().names_to_resolve(Instant::now()).is_empty() {
            return;
        }
        let _one = self.inner.resolving.lock().await;
        let names = self.selector().names_to_resolve(Instant::now());
        if names.is_empty() {
            return;
        }
        let mut answers = HashMap::new();
        for (host, port) in names {
            let lookup = self.inner.resolver.lookup(&host, port);
            let found = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                Ok(found) => found,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "timed out",
                )),
            };
            match &found {
                Ok(addrs) => tracing::debug!(%host, ?addrs, "resolved a conductor's name"),
                Err(e) => tracing::warn!(
                    %host,
                    error = %e,
                    "cannot resolve a conductor's name; keeping the addresses known"
                ),
            }
            answers.insert((host, port), found);
        }
        let mut s = self.selector();
        if let Some(moved) = s.resolved(Instant::now(), &answers) {
            tracing::info!(
                from = %moved.from.label(),
                to = %moved.to.label(),
                "the conductor in use is no longer one of its name's addresses; moving"
            );
        }
        self.publish(&s);
    }

    /// Tells the status file and the metrics which conductor is in use, when it changed.
    fn publish(&self, s: &Selector) {
        let now = in_use(s);
        let changed = self.inner.in_use.send_if_modified(|was| {
            let changed = *was != now;
            *was = now.clone();
            changed
        });
        if changed {
            self.inner.metrics.using(s.current().1);
        }
    }
}

fn in_use(s: &Selector) -> InUse {
    let (_, e) = s.current();
    InUse {
        url: e.shown.clone(),
        address: e.address(),
        configured: s.configured(),
    }
}

/// A client for one conductor: `endpoint`'s pinned address is connected to, its host name kept
/// for TLS.
fn http_client(
    roots: Option<&[reqwest::Certificate]>,
    endpoint: &Endpoint,
) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        // Under the conductor's idle limit, so a pooled connection is never reused just as
        // the conductor closes it.
        .pool_idle_timeout(Duration::from_secs(5))
        .user_agent(concat!("tether-agent/", env!("CARGO_PKG_VERSION")));
    if let Some(roots) = roots {
        builder = with_roots(builder, roots);
    }
    if let Some((host, addr)) = &endpoint.pinned {
        builder = builder.resolve(host, *addr);
    }
    builder.build()
}

async fn send<T: DeserializeOwned>(
    request: reqwest::RequestBuilder,
    endpoint: &Endpoint,
) -> Result<T, ClientError> {
    let response = request.send().await.map_err(|e| ClientError::Unreachable {
        url: endpoint.label(),
        reason: error_chain(&e),
    })?;
    let status = response.status();
    if status.is_success() {
        return response
            .json::<T>()
            .await
            .map_err(|e| ClientError::Protocol(error_chain(&e)));
    }
    let body: Option<ErrorBody> = response.json().await.ok();
    let (kind, message) = body
        .map(|b| (b.error.kind, b.error.message))
        .unwrap_or_else(|| ("unknown".into(), status.to_string()));
    Err(match status {
        StatusCode::UNAUTHORIZED => ClientError::Unauthorized,
        StatusCode::NOT_FOUND if kind == "node_not_found" => ClientError::UnknownNode(message),
        _ => ClientError::Refused {
            status: status.as_u16(),
            kind,
            message,
        },
    })
}

/// The error and its causes, joined the way they are logged: `error -> cause -> cause`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(" -> ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// Trusts only the CA in `ca`, when given: a conductor is one known service, not the web.
pub fn trusting(
    builder: reqwest::ClientBuilder,
    ca: Option<&Path>,
) -> anyhow::Result<reqwest::ClientBuilder> {
    let Some(path) = ca else {
        return Ok(builder);
    };
    Ok(with_roots(builder, &read_roots(path)?))
}

/// The certificates of the PEM file at `path`; an error when it holds none.
fn read_roots(path: &Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("reading the conductor's CA file {}", path.display()))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("{} holds no PEM certificate", path.display()))?;
    if certificates.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certificates)
}

fn with_roots(
    builder: reqwest::ClientBuilder,
    roots: &[reqwest::Certificate],
) -> reqwest::ClientBuilder {
    roots
        .iter()
        .cloned()
        .fold(builder.tls_built_in_root_certs(false), |b, c| {
            b.add_root_certificate(c)
        })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use axum::Router;
    use axum::http::StatusCode as Status;
    use axum::routing::{get, post};

    use super::*;
    use crate::agent::SystemResolver;

    /// A conductor on loopback answering heartbeats with `heartbeat` and targets with 401,
    /// counting the requests it gets.
    async fn conductor(heartbeat: Status) -> (String, Arc<AtomicU64>) {
        let hits = Arc::new(AtomicU64::new(0));
        let (h1, h2) = (hits.clone(), hits.clone());
        let app = Router::new()
            .route(
                "/v1/heartbeat/{node}",
                post(move || {
                    h1.fetch_add(1, Ordering::Relaxed);
                    let body = match heartbeat.is_success() {
                        true => serde_json::json!({"heartbeat_interval_s": 30}),
                        false => serde_json::json!(
                            {"error": {"kind": "database_busy", "message": "busy"}}
                        ),
                    };
                    async move { (heartbeat, axum::Json(body)) }
                }),
            )
            .route(
                "/v1/nodes/{node}/volume/targets",
                get(move || {
                    h2.fetch_add(1, Ordering::Relaxed);
                    let body = serde_json::json!(
                        {"error": {"kind": "unauthorized", "message": "no"}}
                    );
                    async move { (Status::UNAUTHORIZED, axum::Json(body)) }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, hits)
    }

    fn report() -> Heartbeat {
        Heartbeat {
            agent_version: "0".into(),
            generation: None,
            connectors: vec![],
            volumes: vec![],
            foreign: vec![],
        }
    }

    /// A 503 moves the client to the next conductor (after the hop's delay); a 401 there moves
    /// nothing; the conductor in use is published once per move.
    #[tokio::test]
    async fn a_failing_conductor_is_left_and_a_refusal_is_not() {
        let (busy, busy_hits) = conductor(Status::SERVICE_UNAVAILABLE).await;
        let (good, good_hits) = conductor(Status::ACCEPTED).await;
        let metrics = ConductorMetrics::default();
        let client = Client::new(
            &[busy.clone(), good.clone()],
            None,
            Arc::new(SystemResolver),
            metrics.clone(),
        )
        .unwrap();
        let mut in_use = client.in_use();
        assert_eq!(in_use.borrow_and_update().url, busy);
        let (node, token) = (Uuid::new_v4(), Secret::new("t"));
        let err = client.heartbeat(node, &token, &report()).await.unwrap_err();
        assert_eq!(err.kind(), "conductor_refused");
        assert!(in_use.has_changed().unwrap());
        assert_eq!(in_use.borrow_and_update().url, good);
        assert_eq!(metrics.failovers.get(), 1);

        let asked = Instant::now();
        client.heartbeat(node, &token, &report()).await.unwrap();
        let waited = asked.elapsed();
        assert!(
            waited >= Duration::from_millis(200),
            "the hop waits: {waited:?}"
        );
        for _ in 0..3 {
            let err = client.targets(node, &token, None, Duration::ZERO).await;
            assert_eq!(err.unwrap_err().kind(), "unauthorized");
        }
        client.heartbeat(node, &token, &report()).await.unwrap();
        assert_eq!(busy_hits.load(Ordering::Relaxed), 1);
        assert_eq!(good_hits.load(Ordering::Relaxed), 5, "sticky, 401 included");
        assert!(!in_use.has_changed().unwrap());
        assert_eq!(metrics.failovers.get(), 1);
    }

    /// A long-poll waiting on a conductor that stopped answering ends when a heartbeat moves
    /// the agent, instead of waiting out its timeout there.
    #[tokio::test]
    async fn a_long_poll_left_behind_ends_when_the_agent_moves() {
        let app = Router::new()
            .route(
                "/v1/nodes/{node}/volume/targets",
                get(std::future::pending::<Status>),
            )
            .route(
                "/v1/heartbeat/{node}",
                post(|| async { Status::SERVICE_UNAVAILABLE }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hung = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let (good, _) = conductor(Status::ACCEPTED).await;
        let client = Client::new(
            &[hung, good],
            None,
            Arc::new(SystemResolver),
            ConductorMetrics::default(),
        )
        .unwrap();
        let (node, token) = (Uuid::new_v4(), Secret::new("t"));
        let poll = {
            let client = client.clone();
            let token = token.clone();
            tokio::spawn(async move {
                client
                    .targets(node, &token, Some(1), Duration::from_secs(60))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let err = client.heartbeat(node, &token, &report()).await.unwrap_err();
        assert_eq!(err.kind(), "conductor_refused");
        let ended = tokio::time::timeout(Duration::from_secs(2), poll).await;
        let err = ended.expect("the long-poll ends").unwrap().unwrap_err();
        assert_eq!(err.kind(), "conductor_moved");
    }
}
