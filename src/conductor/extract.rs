//! Request parts parsed into the handlers' types, refused with an [`ApiError`] of a stable kind.

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
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

/// The route's one path parameter as a UUID.
pub(super) struct UuidParam(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for UuidParam {
    // A path that is not UTF-8 keeps axum's own answer.
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let Path(value) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        parse_uuid_param(&value)
            .map(Self)
            .map_err(IntoResponse::into_response)
    }
}

pub(super) fn parse_uuid_param(value: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(value)
        .map_err(|_| ApiError::bad_request("invalid_request", format!("{value:?} is not a UUID")))
}
