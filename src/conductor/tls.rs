//! The conductor's TLS: a certificate chain and key from PEM files, read again whenever either
//! file changes, so that a renewed certificate is served without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{ServerConfig, version};

/// How often the files are checked for a change.
const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// The modification times and sizes of both files: a change in either means a new certificate.
type Stamp = Option<[(SystemTime, u64); 2]>;

#[derive(Debug)]
pub(crate) struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<(Stamp, Arc<CertifiedKey>)>,
}

impl ReloadingCert {
    /// Reads both files now: a conductor that cannot serve its certificate does not start.
    pub(crate) fn open(cert_file: &Path, key_file: &Path) -> anyhow::Result<Arc<Self>> {
        let provider = Arc::new(ring::default_provider());
        let stamp = stamp(cert_file, key_file);
        let key = load(cert_file, key_file, &provider)?;
        Ok(Arc::new(Self {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            provider,
            current: RwLock::new((stamp, Arc::new(key))),
        }))
    }

    /// TLS 1.2 and 1.3 with this certificate; HTTP/1.1 only, as the server speaks.
    pub(crate) fn acceptor(self: &Arc<Self>) -> anyhow::Result<TlsAcceptor> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Reads the files again if they changed. A bad new pair is logged and the old one kept.
    pub(crate) fn reload_if_changed(&self) {
        let now = stamp(&self.cert_file, &self.key_file);
        let seen = self.current.read().unwrap_or_else(|e| e.into_inner()).0;
        if now == seen {
            return;
        }
        match load(&self.cert_file, &self.key_file, &self.provider) {
            Ok(key) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = (now, Arc::new(key));
                tracing::info!(
                    cert = %self.cert_file.display(),
                    "TLS certificate reloaded"
                );
            }
            Err(e) => {
                // Remember the stamp so a bad pair is reported once, not every few seconds.
                self.current.write().unwrap_or_else(|e| e.into_inner()).0 = now;
                tracing::error!(
                    kind = "tls_reload_failed",
                    cert = %self.cert_file.display(),
                    error = format!("{e:#}"),
                    "cannot load the new TLS certificate; still serving the previous one"
                );
            }
        }
    }

    /// Checks the files every few seconds until the task is dropped.
    pub(crate) async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        loop {
            tick.tick().await;
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .1
                .clone(),
        )
    }
}

fn stamp(cert_file: &Path, key_file: &Path) -> Stamp {
    let one = |path: &Path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    Some([one(cert_file)?, one(key_file)?])
}

fn load(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificates from {}", cert_file.display()))?;
    if chain.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", cert_file.display());
    }
    // The key's own errors never echo key material.
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("reading the private key from {}", key_file.display()))?;
    CertifiedKey::from_der(chain, key, provider).with_context(|| {
        format!(
            "{} and {} are not a certificate and its key",
            cert_file.display(),
            key_file.display()
        )
    })
}
