//! The PostgreSQL store: several conductors on one database. An async driver (tokio-postgres)
//! with a pool (deadpool), TLS through rustls when the URL asks for it, the migrations of
//! schema.rs, and a LISTEN connection that carries every conductor's generation changes to the
//! long-polls waiting on this one (listen.rs).

mod listen;
mod ops;
mod schema;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{StoreError, redact_url};

pub(crate) use listen::follow;

/// Connections each conductor keeps to the database at most.
const POOL_SIZE: usize = 16;
/// How long a request waits for a pooled connection before it is answered
/// `503 database_unavailable`: a database that is down answers fast, not never.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// How long a new connection may take (TCP, TLS, and SCRAM, whose key derivation is slow
/// in a debug build when many connections start together).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The channel every generation change is announced on, as "<node uuid> <generation>".
const CHANNEL: &str = "tether_generations";

pub(crate) struct PgStore {
    pool: Pool,
    /// What the listener connects with (its own connection, outside the pool).
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

impl PgStore {
    /// Connects to the database `url` names and brings its schema up to date.
    pub(crate) async fn connect(url: &str, password: Option<&str>) -> Result<Self, StoreError> {
        let (mut config, tls) = parse(url)?;
        if let Some(password) = password {
            config.password(password);
        }
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(POOL_WAIT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Internal(format!("building the database pool: {e}")))?;
        let store = Self { pool, config, tls };
        let mut client = store.client().await?;
        schema::migrate(&mut client).await?;
        Ok(store)
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(unavailable)
    }

    /// Runs SQL as is (tests).
    #[cfg(test)]
    #[allow(dead_code, reason = "tests")]
    pub(crate) async fn batch_execute(&self, sql: &str) -> Result<(), StoreError> {
        Ok(self.client().await?.batch_execute(sql).await?)
    }
}

/// The driver's configuration and TLS connector for `url`. TLS is used when `sslmode` is
/// `require`, `verify-ca` or `verify-full`, and the server's certificate is then always
/// verified: against `sslrootcert` (a PEM file) when the URL names one, else the public roots.
/// Other modes connect in clear, as a local or private-network database usually is.
fn parse(url: &str) -> Result<(tokio_postgres::Config, MakeRustlsConnect), StoreError> {
    let invalid = |message: String| StoreError::Invalid {
        kind: "invalid_database",
        message,
    };
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let mut tls = false;
    let mut root_file = None;
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        match key {
            "sslmode" => match value {
                "disable" | "allow" | "prefer" => tls = false,
                "require" | "verify-ca" | "verify-full" => tls = true,
                other => return Err(invalid(format!("sslmode {other:?} is unknown"))),
            },
            "sslrootcert" => root_file = Some(percent_decode(value)),
            _ => kept.push(param),
        }
    }
    kept.push(if tls {
        "sslmode=require"
    } else {
        "sslmode=disable"
    });
    let url = format!("{base}?{}", kept.join("&"));
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
        invalid(format!(
            "database URL {} is not a PostgreSQL URL: {e}",
            redact_url(base)
        ))
    })?;
    if config.get_application_name().is_none() {
        config.application_name("tether-conductor");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let mut roots = rustls::RootCertStore::empty();
    match root_file {
        Some(path) => {
            let pem = std::fs::read(&path)
                .map_err(|e| invalid(format!("reading sslrootcert {path}: {e}")))?;
            use rustls_pki_types::pem::PemObject;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| invalid(format!("sslrootcert {path}: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| invalid(format!("sslrootcert {path}: {e}")))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Internal(format!("TLS to the database: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((config, MakeRustlsConnect::new(client)))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unavailable(e: PoolError) -> StoreError {
    StoreError::Unavailable(with_causes(&e))
}

/// The error and its causes ("db error" alone does not say that pg_hba.conf refused us).
pub(super) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}

/// Whether the error says the database cannot be reached now, rather than that a statement
/// failed: the connection is gone, the server is shutting down or starting.
fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::TOO_MANY_CONNECTIONS,
                ]
                .contains(code)
        }
    }
}

/// A failed statement: unavailable, or a database error.
pub(super) fn failed(e: tokio_postgres::Error) -> StoreError {
    if is_unavailable(&e) {
        StoreError::Unavailable(with_causes(&e))
    } else {
        StoreError::Postgres(e)
    }
}

/// A constraint violation as a conflict with `message`; any other failure as itself.
fn conflict(e: tokio_postgres::Error, message: String) -> StoreError {
    let constraint = [
        SqlState::UNIQUE_VIOLATION,
        SqlState::FOREIGN_KEY_VIOLATION,
        SqlState::NOT_NULL_VIOLATION,
        SqlState::CHECK_VIOLATION,
    ];
    match e.code() {
        Some(code) if constraint.contains(code) => StoreError::Conflict(message),
        _ => failed(e),
    }
}

/// Creates the database `name` on the server `admin_url` names (which must allow it) and gives
/// the URL of the new database: for tests, each in a throwaway database.
#[doc(hidden)]
pub async fn create_database(admin_url: &str, name: &str) -> anyhow::Result<String> {
    let (config, tls) = parse(admin_url)?;
    let (client, connection) = config.connect(tls).await?;
    let driver = tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await?;
    }
    drop(client);
    let _ = driver.await;
    Ok(with_database(admin_url, name))
}

/// Drops the database `name` (and ends its sessions) on the server `admin_url` names.
#[doc(hidden)]
pub async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let (config, tls) = parse(admin_url)?;
    let (client, connection) = config.connect(tls).await?;
    let driver = tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await?;
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// `url` naming the database `name` instead of its own.
pub(crate) fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let query = tail.split_once('?').map(|(_, q)| q);
    match query {
        Some(q) => format!("{scheme}://{authority}/{name}?{q}"),
        None => format!("{scheme}://{authority}/{name}"),
    }
}
