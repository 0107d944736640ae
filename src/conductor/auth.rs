//! Who may call what, as extractors: a handler names the caller it needs among its arguments.
//! Every token is checked by [`TokenHash::matches`](super::store::TokenHash::matches).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::Conductor;
use super::error::{ApiError, ApiResult};
use super::extract::UuidParam;

/// The operator, by the admin token.
pub(super) struct Admin;

impl FromRequestParts<Arc<Conductor>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Conductor>) -> ApiResult<Self> {
        allow_if(bearer(parts).is_some_and(|t| c.admin_token.matches(t)))?;
        Ok(Self)
    }
}

/// The node of the path's `{node}`, by its own agent token: an agent reads its own targets and
/// reports its own volumes, and no other node's. A node that does not exist is refused alike.
pub(super) struct Agent(pub Uuid);

impl FromRequestParts<Arc<Conductor>> for Agent {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Conductor>) -> Result<Self, Response> {
        let UuidParam(node) = UuidParam::from_request_parts(parts, c).await?;
        check_agent(c, node, parts).map_err(IntoResponse::into_response)?;
        Ok(Self(node))
    }
}

fn check_agent(c: &Conductor, node: Uuid, parts: &Parts) -> ApiResult<()> {
    let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
    allow_if(c.store.agent_token_matches(node, token)?)
}

/// A scraper of `GET /metrics`: anyone, unless `conductor.metrics_token_file` is set (the
/// exposition holds counts and node uuids, never a secret).
pub(super) struct MetricsReader;

impl FromRequestParts<Arc<Conductor>> for MetricsReader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Conductor>) -> ApiResult<Self> {
        if let Some(hash) = &c.metrics_token {
            allow_if(bearer(parts).is_some_and(|t| hash.matches(t)))?;
        }
        Ok(Self)
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn allow_if(authenticated: bool) -> ApiResult<()> {
    authenticated
        .then_some(())
        .ok_or_else(ApiError::unauthorized)
}
