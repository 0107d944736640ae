//! The agent's side of protocol v1.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use thiserror::Error;
use uuid::Uuid;

use crate::protocol::{
    ErrorBody, Heartbeat, HeartbeatAccepted, LookupResponse, Secret, TargetsResponse,
};

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
}

impl ClientError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "conductor_unreachable",
            Self::Unauthorized => "unauthorized",
            Self::UnknownNode(_) => "node_not_found",
            Self::Refused { .. } => "conductor_refused",
            Self::Protocol(_) => "protocol_error",
        }
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// `ca` is the PEM file of the CA that signed the conductor's certificate; without one the
    /// built-in roots apply.
    pub fn new(base: &str, ca: Option<&Path>) -> anyhow::Result<Self> {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Under the conductor's idle limit, so a pooled connection is never reused just as
            // the conductor closes it.
            .pool_idle_timeout(Duration::from_secs(5))
            .user_agent(concat!("tether-agent/", env!("CARGO_PKG_VERSION")));
        let http = trusting(builder, ca)?
            .build()
            .context("setting up the HTTP client")?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
        })
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
        let request = self
            .http
            .get(format!("{}/v1/lookup", self.base))
            .query(&query)
            .timeout(Duration::from_secs(30));
        self.send(request).await
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
        let request = self
            .http
            .get(format!("{}/v1/nodes/{node}/volume/targets", self.base))
            .query(&query)
            .bearer_auth(token.expose())
            .timeout(wait + Duration::from_secs(15));
        self.send(request).await
    }

    pub async fn heartbeat(
        &self,
        node: Uuid,
        token: &Secret,
        report: &Heartbeat,
    ) -> Result<HeartbeatAccepted, ClientError> {
        let request = self
            .http
            .post(format!("{}/v1/heartbeat/{node}", self.base))
            .bearer_auth(token.expose())
            .json(report)
            .timeout(Duration::from_secs(15));
        self.send(request).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
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
    let pem = std::fs::read(path)
        .with_context(|| format!("reading the conductor's CA file {}", path.display()))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("{} holds no PEM certificate", path.display()))?;
    if certificates.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", path.display());
    }
    let builder = certificates
        .into_iter()
        .fold(builder.tls_built_in_root_certs(false), |b, c| {
            b.add_root_certificate(c)
        });
    Ok(builder)
}
