//! OpenStack clients of the conductor: Keystone sessions from `clouds.yaml` (or none, for
//! services run with `noauth`), the Cinder API that tether attaches volumes through, and the
//! Ironic API it takes its nodes from.
//!
//! Authentication, token renewal, the service catalog, CA files and regions are osauth's; this
//! module only picks the endpoint and builds requests.

pub mod cinder;
pub mod connection;
pub mod ironic;

use std::future::Future;
use std::time::Duration;

use osauth::client::RequestBuilder;
use reqwest::Method;
use reqwest::header::HeaderValue;
use serde::Deserialize;
use thiserror::Error;

/// How the conductor authenticates to an OpenStack service.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    /// Keystone, through a cloud of `clouds.yaml` (password or application credential).
    #[default]
    Cloud,
    /// None: the service runs with `auth_strategy = noauth` (tests, standalone deployments).
    Noauth,
}

/// Where a service is and how to authenticate to it: the part of `[cinder]` (and later
/// `[ironic]`) that every OpenStack client shares.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct CloudSource {
    #[serde(default)]
    pub auth: AuthKind,
    /// The cloud's name in `clouds.yaml` (searched in `./clouds.yaml`,
    /// `~/.config/openstack/` and `/etc/openstack/`). Unset: `$OS_CLOUD`.
    #[serde(default)]
    pub cloud: Option<String>,
    /// noauth: the service's versioned endpoint, e.g. `http://127.0.0.1:8776/v3`. With a cloud:
    /// overrides the catalog's endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// noauth: the project the requests act in (Cinder's noauth takes it from the token).
    #[serde(default)]
    pub project_id: Option<String>,
}

/// A failed call to an OpenStack service. Messages hold what the service said and never a
/// credential or a token.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{message}")]
pub struct OpenStackError {
    pub kind: OpenStackErrorKind,
    pub message: String,
}

/// The stable kinds the conductor branches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenStackErrorKind {
    /// Not answering, or answering 5xx: retried.
    Unreachable,
    /// Credentials refused (401) or not allowed (403).
    AuthFailed,
    NotFound,
    /// The request conflicts with the resource's state (409), such as a volume in use.
    Conflict,
    /// The request was refused as malformed (400), or the microversion is not supported.
    BadRequest,
    /// The configuration cannot work (no cloud, no endpoint).
    Config,
    /// The answer did not parse.
    BadAnswer,
}

impl OpenStackErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreachable => "cinder_unreachable",
            Self::AuthFailed => "cinder_auth_failed",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::BadRequest => "cinder_refused",
            Self::Config => "cinder_config",
            Self::BadAnswer => "cinder_bad_answer",
        }
    }

    /// The same kind as Ironic's sync names it.
    pub fn as_ironic_str(self) -> &'static str {
        match self {
            Self::Unreachable => "ironic_unreachable",
            Self::AuthFailed => "ironic_auth_failed",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::BadRequest => "ironic_refused",
            Self::Config => "ironic_config",
            Self::BadAnswer => "ironic_bad_answer",
        }
    }

    /// Worth trying again later without a change on the operator's side.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Unreachable | Self::BadAnswer)
    }

    /// What a flow waits out and tries again: an outage, or refused credentials (fixed in
    /// clouds.yaml without a restart, since a refusal drops the session).
    pub fn retried(self) -> bool {
        self.is_transient() || self == Self::AuthFailed
    }
}

impl OpenStackError {
    pub fn new(kind: OpenStackErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    fn from_osauth(e: osauth::Error, what: &str) -> Self {
        use osauth::ErrorKind as K;
        let kind = match e.kind() {
            K::AuthenticationFailed | K::AccessDenied => OpenStackErrorKind::AuthFailed,
            K::ResourceNotFound => OpenStackErrorKind::NotFound,
            K::Conflict => OpenStackErrorKind::Conflict,
            K::InvalidInput | K::IncompatibleApiVersion => OpenStackErrorKind::BadRequest,
            K::EndpointNotFound | K::InvalidConfig => OpenStackErrorKind::Config,
            K::InvalidResponse => OpenStackErrorKind::BadAnswer,
            // 5xx, refused connections, timeouts, TLS: the service is not there for now.
            _ => OpenStackErrorKind::Unreachable,
        };
        Self::new(kind, format!("{what}: {e}"))
    }
}

/// An authenticated session with one service's endpoint.
#[derive(Debug, Clone)]
pub struct ServiceClient {
    session: osauth::Session,
    /// The endpoint with a trailing `/`, so that joining keeps its path.
    base: reqwest::Url,
    /// noauth: the token that names the project (`admin:<project>`).
    noauth_token: Option<HeaderValue>,
    timeout: Duration,
}

impl ServiceClient {
    /// Authenticates (Keystone, or none) and finds the endpoint of `service_type` (the catalog's
    /// type, such as `block-storage`), unless `source.endpoint` gives it.
    pub async fn connect(
        source: &CloudSource,
        service_type: &str,
        timeout: Duration,
    ) -> Result<Self, OpenStackError> {
        let config = |m: String| OpenStackError::new(OpenStackErrorKind::Config, m);
        let (session, endpoint, noauth_token) = match source.auth {
            AuthKind::Noauth => {
                let endpoint = source.endpoint.clone().ok_or_else(|| {
                    config("auth = \"noauth\" needs endpoint (the service's versioned URL)".into())
                })?;
                let auth = osauth::NoAuth::new(endpoint.as_str())
                    .map_err(|e| config(format!("endpoint {endpoint:?}: {e}")))?;
                let session = osauth::Session::new(auth)
                    .await
                    .map_err(|e| OpenStackError::from_osauth(e, "noauth session"))?;
                let token = match &source.project_id {
                    Some(project) => Some(
                        HeaderValue::from_str(&format!("admin:{project}")).map_err(|_| {
                            config(format!("project_id {project:?} is not a header value"))
                        })?,
                    ),
                    None => None,
                };
                (session, Some(endpoint), token)
            }
            AuthKind::Cloud => {
                let name = match &source.cloud {
                    Some(name) => name.clone(),
                    None => std::env::var("OS_CLOUD").map_err(|_| {
                        config("no cloud: set `cloud` (a name in clouds.yaml) or OS_CLOUD".into())
                    })?,
                };
                let session = osauth::Session::from_config(&name)
                    .await
                    .map_err(|e| OpenStackError::from_osauth(e, &format!("cloud {name:?}")))?;
                (session, source.endpoint.clone(), None)
            }
        };
        let mut base = match endpoint {
            Some(url) => {
                reqwest::Url::parse(&url).map_err(|e| config(format!("endpoint {url:?}: {e}")))?
            }
            None => match session.endpoint_overrides().get(service_type) {
                Some(url) => url.clone(),
                None => session
                    .client()
                    .get_endpoint(service_type, session.endpoint_filters())
                    .await
                    .map_err(|e| {
                        OpenStackError::from_osauth(e, &format!("{service_type} in the catalog"))
                    })?,
            },
        };
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Self {
            session,
            base,
            noauth_token,
            timeout,
        })
    }

    pub fn base(&self) -> &reqwest::Url {
        &self.base
    }

    /// The same session with requests going below `base` instead.
    pub fn with_base(self, base: reqwest::Url) -> Self {
        Self { base, ..self }
    }

    /// A request to `path` below the endpoint (no leading `/`).
    pub fn request(&self, method: Method, path: &str) -> Result<RequestBuilder, OpenStackError> {
        let url = self
            .base
            .join(path)
            .map_err(|e| OpenStackError::new(OpenStackErrorKind::Config, format!("{path}: {e}")))?;
        let mut request = self
            .session
            .client()
            .request(method, url)
            .timeout(self.timeout);
        if let Some(token) = &self.noauth_token {
            request = request.header("X-Auth-Token", token.clone());
        }
        Ok(request)
    }

    /// Sends `request`; an error answer becomes an [`OpenStackError`] saying `what` failed.
    pub async fn send(
        &self,
        request: RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response, OpenStackError> {
        request
            .send()
            .await
            .map_err(|e| OpenStackError::from_osauth(e, what))
    }
}

/// A service's client, connected on first use and again after the service refused its token.
/// osauth keeps a token until it expires, also one that Keystone revoked (an application
/// credential deleted in a rotation); dropping the client makes the next call read clouds.yaml
/// again and log in anew.
pub struct Reconnecting<C> {
    client: tokio::sync::Mutex<Option<C>>,
}

impl<C: Clone> Default for Reconnecting<C> {
    fn default() -> Self {
        Self {
            client: tokio::sync::Mutex::new(None),
        }
    }
}

impl<C: Clone> Reconnecting<C> {
    /// The client, from `connect` when there is none yet.
    pub async fn get<F>(&self, connect: impl FnOnce() -> F) -> Result<C, OpenStackError>
    where
        F: Future<Output = Result<C, OpenStackError>>,
    {
        let mut client = self.client.lock().await;
        if let Some(c) = client.as_ref() {
            return Ok(c.clone());
        }
        let connected = connect().await?;
        *client = Some(connected.clone());
        Ok(connected)
    }

    /// Drops the client when `e` is a refused authentication; whether it did.
    pub async fn forget_if_refused(&self, e: &OpenStackError) -> bool {
        let refused = e.kind == OpenStackErrorKind::AuthFailed;
        if refused {
            *self.client.lock().await = None;
        }
        refused
    }

    /// `call` through the client. Refused credentials are tried once more with a new client: a
    /// 401 means the service did nothing, so even a POST is safe to repeat.
    pub async fn call<R, CF, F>(
        &self,
        connect: impl Fn() -> CF,
        call: impl Fn(C) -> F,
    ) -> Result<R, OpenStackError>
    where
        CF: Future<Output = Result<C, OpenStackError>>,
        F: Future<Output = Result<R, OpenStackError>>,
    {
        let result = call(self.get(&connect).await?).await;
        match &result {
            Err(e) if self.forget_if_refused(e).await => {
                tracing::info!(error = %e, "the service refused the token; logging in again");
                let again = call(self.get(&connect).await?).await;
                if let Err(e) = &again {
                    self.forget_if_refused(e).await;
                }
                again
            }
            _ => result,
        }
    }
}

/// The status of an error answer captured from a real service (`status: N` in a fixture
/// `.http` file) and the kind osauth's error for it gets.
#[cfg(test)]
pub(crate) fn captured_error_kind(name: &str, text: &str) -> (u16, OpenStackErrorKind) {
    let status: u16 = text
        .lines()
        .find_map(|l| l.strip_prefix("status: "))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name}: no status line"));
    let code = reqwest::StatusCode::from_u16(status).unwrap();
    let e = osauth::Error::new(code.into(), "captured");
    (status, OpenStackError::from_osauth(e, name).kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every error answer captured from Cinder 21.3 (tests/fixtures/cinder/error-*.http) gets
    /// the kind the conductor branches on: a refusal is never taken for an outage (which would
    /// be retried forever) and an outage never for a refusal (which would fail the volume).
    #[test]
    fn cinders_error_answers_get_their_kinds() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cinder");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("error-") && name.ends_with(".http")) {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap();
            let (status, kind) = captured_error_kind(&name, &text);
            let expected = match status {
                404 => OpenStackErrorKind::NotFound,
                400 | 406 => OpenStackErrorKind::BadRequest,
                other => panic!("{name}: a status the fixtures did not have: {other}"),
            };
            assert_eq!(kind, expected, "{name}");
            assert!(
                !kind.is_transient(),
                "{name}: a refusal is not retried as an outage"
            );
            seen += 1;
        }
        assert!(seen >= 10, "only {seen} error fixtures");
        let outage = osauth::Error::new(reqwest::StatusCode::SERVICE_UNAVAILABLE.into(), "busy");
        assert!(OpenStackError::from_osauth(outage, "x").kind.is_transient());
    }
}
