//! Who may call what, as extractors: a handler names the caller it needs among its arguments,
//! first, so that nothing of a request is parsed before its caller is known. Every token is
//! checked by [`TokenHash::matches`](super::store::TokenHash::matches); a failed check counts
//! against the client address's allowance ([`super::limit`]), and an address without one left
//! is refused with `429` before its token is looked at.

use super::store::StoreApi;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path};
use axum::http::header;
use axum::http::request::Parts;
use uuid::Uuid;

use super::Conductor;
use super::error::{ApiError, ApiResult};
use super::limit::{client_ip, refused};

/// The operator, by the admin token.
pub(super) struct Admin;

impl FromRequestParts<Arc<Conductor>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Conductor>) -> ApiResult<Self> {
        authenticate(c, parts, async |token| Ok(c.admin_token.matches(&token))).await?;
        Ok(Self)
    }
}

/// The node of the path's `{node}`, by its own agent token: an agent reads its own targets and
/// reports its own volumes, and no other node's. A node that does not exist, or a path that
/// names none, is refused alike.
pub(super) struct Agent(pub Uuid);

impl FromRequestParts<Arc<Conductor>> for Agent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Conductor>) -> ApiResult<Self> {
        let node = Path::<String>::from_request_parts(parts, c)
            .await
            .ok()
            .and_then(|Path(node)| Uuid::parse_str(&node).ok());
        authenticate(c, parts, async |token| match node {
            Some(node) => Ok(c.store.agent_token_matches(node, token).await?),
            None => Ok(false),
        })
        .await?;
        // Authenticated: the path named a node.
        node.map(Self).ok_or_else(ApiError::unauthorized)
    }
}

/// A scraper of `GET /metrics`: anyone, unless `conductor.metrics_token_file` is set (the
/// exposition holds counts and node uuids, never a secret).
pub(super) struct MetricsReader;

impl FromRequestParts<Arc<Conductor>> for MetricsReader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Conductor>) -> ApiResult<Self> {
        if let Some(hash) = &c.metrics_token {
            authenticate(c, parts, async |token| Ok(hash.matches(&token))).await?;
        }
        Ok(Self)
    }
}

/// Refuses a client address that has no allowance left, then checks the bearer token with
/// `matches`; a missing or wrong token takes from the allowance.
async fn authenticate(
    c: &Conductor,
    parts: &Parts,
    matches: impl AsyncFnOnce(String) -> ApiResult<bool>,
) -> ApiResult<()> {
    let client = client_ip(parts);
    c.limiter.check(client).map_err(|l| refused(client, l))?;
    let authenticated = match bearer(parts) {
        Some(token) => matches(token.to_string()).await?,
        None => false,
    };
    if !authenticated {
        // Refused either way; the allowance decides the next request.
        let _ = c.limiter.charge(client);
        return Err(ApiError::unauthorized());
    }
    Ok(())
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is case-insensitive
/// (RFC 7235).
fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}
