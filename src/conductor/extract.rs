//! Request parts parsed into the handlers' types, refused with an [`ApiError`] of a stable kind.
//! Handlers take them after their caller ([`super::auth`]), so they parse only what an
//! authenticated caller sent.

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::error::{ApiError, ApiResult};

/// A JSON body.
pub(super) struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> ApiResult<Self> {
        let Json(value) = Json::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// A query string.
pub(super) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> ApiResult<Self> {
        let Query(value) = Query::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// A path parameter as a UUID.
pub(super) fn parse_uuid_param(value: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(value)
        .map_err(|_| ApiError::bad_request("invalid_request", format!("{value:?} is not a UUID")))
}
