//! The reference conductor: protocol v1 over axum, state in SQLite.

mod api;
mod auth;
mod cinder;
mod error;
mod extract;
mod generations;
pub(crate) mod http1;
mod ironic;
mod limit;
mod metrics;
mod server;
mod store;
mod tls;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{CinderConfig, ConductorConfig, IronicConfig};
use api::router;
use generations::Generations;
use store::{Location, Store, TokenHash};

/// Throwaway PostgreSQL databases for tests (scripts/test-postgres).
#[doc(hidden)]
pub use store::postgres::{
    create_database as create_postgres_database, drop_database as drop_postgres_database,
};

/// Shared by every request handler.
struct Conductor {
    store: Arc<Store>,
    admin_token: TokenHash,
    /// Set when `GET /metrics` requires a token (`conductor.metrics_token_file`).
    metrics_token: Option<TokenHash>,
    metrics: Arc<metrics::ConductorMetrics>,
    /// Lookups and failed authentications per client address.
    limiter: limit::RateLimiter,
    heartbeat_interval_s: u64,
    max_wait: Duration,
    validate_targets: bool,
    generations: Arc<Generations>,
    shutdown: watch::Receiver<bool>,
    /// Set with a `[cinder]` section: Cinder volumes attached through the conductor.
    cinder: Option<Arc<cinder::CinderService>>,
    /// Set with an `[ironic]` section: nodes synced from Ironic.
    ironic: Option<Arc<ironic::IronicService>>,
}

impl Conductor {
    fn new(
        store: Arc<Store>,
        config: &ConductorConfig,
        admin_token: &str,
        metrics_token: Option<&str>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            metrics: Arc::new(metrics::ConductorMetrics::new(store.clone())),
            store,
            admin_token: TokenHash::of(admin_token),
            metrics_token: metrics_token.map(TokenHash::of),
            limiter: limit::RateLimiter::new(config.rate_limit_burst, config.rate_limit_per_minute),
            heartbeat_interval_s: config.heartbeat_interval_s,
            max_wait: Duration::from_secs(config.max_wait_s),
            validate_targets: config.validate_targets,
            generations: Arc::default(),
            shutdown,
            cinder: None,
            ironic: None,
        }
    }
}

/// Shortest admin token accepted: one a person made up must not be guessable. Generated ones
/// are 64 characters.
const ADMIN_TOKEN_MIN: usize = 32;

/// The admin token from the environment, or from its file, created with a fresh token if need be.
/// A token shorter than 32 characters, or a file that group or others may read, is refused.
pub fn admin_token(config: &ConductorConfig, from_env: Option<String>) -> anyhow::Result<String> {
    if let Some(token) = from_env.filter(|t| !t.is_empty()) {
        if token.trim().len() < ADMIN_TOKEN_MIN {
            anyhow::bail!(
                "the admin token in TETHER_ADMIN_TOKEN is shorter than {ADMIN_TOKEN_MIN} \
                 characters; use a random one (`openssl rand -hex 32`), or unset it to have \
                 the conductor make one in conductor.admin_token_file"
            );
        }
        return Ok(token);
    }
    let path = &config.admin_token_file;
    let key = "conductor.admin_token_file";
    if let Some(token) = read_private_token(path, key, ADMIN_TOKEN_MIN)? {
        return Ok(token);
    }
    let token = store::new_token();
    crate::fsutil::write_private(path, format!("{token}\n").as_bytes())
        .with_context(|| format!("writing a new admin token to {}", path.display()))?;
    tracing::info!(
        path = %path.display(),
        "generated an admin token (mode 0600); tether ctl reads it from there"
    );
    Ok(token)
}

/// The token in the file `key` names, or `None` when the file is missing or empty. Refused when
/// group or others have any access to the file, or when the token is shorter than `min_len`.
fn read_private_token(path: &Path, key: &str, min_len: usize) -> anyhow::Result<Option<String>> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let mode = match std::fs::metadata(path) {
        Ok(meta) => meta.permissions().mode() & 0o7777,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {key} {shown}")),
    };
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "{key} {shown} has mode {mode:04o}: group or others may read the token; \
             run `chmod 600 {shown}` (and make a new token if others read it)"
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {key} {shown}"))?;
    let token = text.trim();
    if token.is_empty() {
        return Ok(None);
    }
    if token.len() < min_len {
        anyhow::bail!("the token in {key} {shown} is shorter than {min_len} characters");
    }
    Ok(Some(token.to_string()))
}

/// Runs the conductor on `listener` until `shutdown` resolves, then drains requests.
pub async fn serve(
    config: &ConductorConfig,
    admin_token: &str,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with(
        config,
        &OpenStack::default(),
        admin_token,
        listener,
        shutdown,
    )
    .await
}

/// The OpenStack services the conductor works with, each when configured.
#[derive(Debug, Clone, Default)]
pub struct OpenStack {
    /// Cinder volumes attached through the conductor.
    pub cinder: Option<CinderConfig>,
    /// Nodes taken from Ironic.
    pub ironic: Option<IronicConfig>,
}

/// [`serve`], with Cinder and Ironic when configured.
pub async fn serve_with(
    config: &ConductorConfig,
    openstack: &OpenStack,
    admin_token: &str,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics_token = match &config.metrics_token_file {
        Some(path) => Some(read_metrics_token(path)?),
        None => None,
    };
    let location = database_location(config)?;
    let store = Arc::new(
        Store::open(&location)
            .await
            .with_context(|| format!("opening the database {location}"))?,
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conductor = Conductor::new(
        store.clone(),
        config,
        admin_token,
        metrics_token.as_deref(),
        stop_rx,
    );
    // Changes made through other conductors on the same database wake long-polls here.
    let generations = conductor.generations.clone();
    let listener_task = store
        .postgres()
        .is_some()
        .then(|| tokio::spawn(store::postgres::follow(store, generations)));
    conductor.cinder = openstack
        .cinder
        .as_ref()
        .map(|c| Arc::new(cinder::CinderService::new(c.clone())));
    conductor.ironic = openstack.ironic.as_ref().map(|c| {
        let status = conductor.metrics.ironic_status.clone();
        Arc::new(ironic::IronicService::new(c.clone(), status))
    });
    let conductor = Arc::new(conductor);
    let cinder_worker = conductor
        .cinder
        .clone()
        .map(|svc| tokio::spawn(cinder::run(conductor.clone(), svc)));
    let ironic_worker = conductor
        .ironic
        .clone()
        .map(|svc| tokio::spawn(ironic::run(conductor.clone(), svc)));
    let app = router(conductor);
    let certificate = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(tls::ReloadingCert::open(cert, key)?),
        _ => None,
    };
    let acceptor = certificate.as_ref().map(|c| c.acceptor()).transpose()?;
    let reloading = certificate.map(|c| tokio::spawn(c.watch()));
    let limits = server::Limits {
        header_timeout: Duration::from_secs(config.header_timeout_s),
        max_connections: config.max_connections,
        max_connections_per_address: config.max_connections_per_address,
        shutdown_timeout: Duration::from_secs(config.shutdown_timeout_s),
    };
    tracing::info!(
        listen = %listener.local_addr()?,
        tls = acceptor.is_some(),
        database = %location,
        "conductor serving protocol v1"
    );
    crate::notify::ready("serving protocol v1");
    let stopping = async move {
        shutdown.await;
        crate::notify::stopping();
        // Long-polls end now instead of holding the shutdown for their full wait.
        let _ = stop_tx.send(true);
        tracing::info!("conductor shutting down");
    };
    server::run(listener, app, acceptor, limits, stopping).await;
    if let Some(task) = reloading {
        task.abort();
    }
    for task in [cinder_worker, ironic_worker, listener_task]
        .into_iter()
        .flatten()
    {
        task.abort();
    }
    Ok(())
}

/// The router `serve` runs, over a fresh in-memory database and without a socket: for driving
/// requests straight through every extractor and handler (the fuzz targets in fuzz/). Long-polls
/// end when `shutdown` turns true; requests without `ConnectInfo` share one client address.
#[doc(hidden)]
pub fn in_memory_router(
    config: &ConductorConfig,
    admin_token: &str,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<axum::Router> {
    let store = Arc::new(Store::open_in_memory().context("opening an in-memory database")?);
    let conductor = Conductor::new(store, config, admin_token, None, shutdown);
    Ok(router(Arc::new(conductor)))
}

fn read_metrics_token(path: &Path) -> anyhow::Result<String> {
    let key = "conductor.metrics_token_file";
    read_private_token(path, key, 16)?
        .with_context(|| format!("{key} {} is missing or empty", path.display()))
}

/// Where `config` keeps the conductor's state, with the PostgreSQL password read from
/// `conductor.database_password_file` when it is set.
fn database_location(config: &ConductorConfig) -> anyhow::Result<Location> {
    let mut location = Location::of(&config.database);
    if let (Location::Postgres(_, password), Some(path)) =
        (&mut location, &config.database_password_file)
    {
        let key = "conductor.database_password_file";
        *password = Some(
            read_private_token(path, key, 1)?
                .with_context(|| format!("{key} {} is missing or empty", path.display()))?,
        );
    }
    Ok(location)
}

/// `tether conductor migrate`: copies the SQLite database `from` into the PostgreSQL database
/// `config` names (`conductor.database`), which must hold no node yet.
pub async fn migrate(from: &Path, config: &ConductorConfig) -> anyhow::Result<()> {
    let location = database_location(config)?;
    let Location::Postgres(url, password) = &location else {
        anyhow::bail!(
            "conductor.database (or --to) must be a postgres:// URL to migrate into, not {location}"
        );
    };
    let target = store::PgStore::connect(url, password.as_deref())
        .await
        .with_context(|| format!("opening the database {location}"))?;
    let copied = store::copy::sqlite_to_postgres(from, &target)
        .await
        .with_context(|| format!("copying {} into {location}", from.display()))?;
    for (table, rows) in copied {
        println!("{table}: {rows} rows");
    }
    println!("copied {} into {location}", from.display());
    Ok(())
}
