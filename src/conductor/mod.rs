//! The reference conductor: protocol v1 over axum, state in SQLite.

mod api;
mod auth;
mod error;
mod extract;
mod generations;
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

use crate::config::ConductorConfig;
use api::router;
use generations::Generations;
use store::{Store, TokenHash};

/// Shared by every request handler.
struct Conductor {
    store: Arc<Store>,
    admin_token: TokenHash,
    /// Set when `GET /metrics` requires a token (`conductor.metrics_token_file`).
    metrics_token: Option<TokenHash>,
    metrics: Arc<metrics::ConductorMetrics>,
    heartbeat_interval_s: u64,
    max_wait: Duration,
    validate_targets: bool,
    generations: Generations,
    shutdown: watch::Receiver<bool>,
}

impl Conductor {
    fn new(
        store: Store,
        config: &ConductorConfig,
        admin_token: &str,
        metrics_token: Option<&str>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let store = Arc::new(store);
        Self {
            metrics: Arc::new(metrics::ConductorMetrics::new(store.clone())),
            store,
            admin_token: TokenHash::of(admin_token),
            metrics_token: metrics_token.map(TokenHash::of),
            heartbeat_interval_s: config.heartbeat_interval_s,
            max_wait: Duration::from_secs(config.max_wait_s),
            validate_targets: config.validate_targets,
            generations: Generations::default(),
            shutdown,
        }
    }
}

/// The admin token from the environment, or from its file, created with a fresh token if need be.
pub fn admin_token(config: &ConductorConfig, from_env: Option<String>) -> anyhow::Result<String> {
    if let Some(token) = from_env.filter(|t| !t.is_empty()) {
        return Ok(token);
    }
    let path = &config.admin_token_file;
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("reading the admin token file {}", path.display()));
        }
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

/// Runs the conductor on `listener` until `shutdown` resolves, then drains requests.
pub async fn serve(
    config: &ConductorConfig,
    admin_token: &str,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics_token = match &config.metrics_token_file {
        Some(path) => Some(read_metrics_token(path)?),
        None => None,
    };
    let store = open_store(&config.database)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let conductor = Arc::new(Conductor::new(
        store,
        config,
        admin_token,
        metrics_token.as_deref(),
        stop_rx,
    ));
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
        database = %config.database.display(),
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
    Ok(())
}

fn read_metrics_token(path: &Path) -> anyhow::Result<String> {
    let token = crate::fsutil::read_trimmed(path).with_context(|| {
        format!(
            "conductor.metrics_token_file {} is missing or empty",
            path.display()
        )
    })?;
    if token.len() < 16 {
        anyhow::bail!(
            "the token in conductor.metrics_token_file {} is shorter than 16 characters",
            path.display()
        );
    }
    Ok(token)
}

fn open_store(path: &Path) -> anyhow::Result<Store> {
    Store::open(path).with_context(|| format!("opening the database {}", path.display()))
}
