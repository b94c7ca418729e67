//! TLS termination (rustls, ring provider): each tenant's certificate is chosen by SNI from the
//! tenant's `tls_cert`/`tls_key` files, HTTP/2 and HTTP/1.1 are offered by ALPN. Certificates
//! are re-read without a restart: a watcher compares the files' modification times (and the
//! tenants being served) every few seconds and swaps in a new table when anything changed. A
//! file that fails to load keeps its previous certificate and is logged, so a half-written
//! renewal never takes a site off the air.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::app::App;

/// How often certificate files are checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// One certificate file pair and the modification times it was loaded at.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct Source {
    cert: PathBuf,
    key: PathBuf,
}

/// Modification time and size of the certificate and the key: a file rewritten within one
/// timestamp tick still shows as changed by its size.
type Stamp = [(Option<SystemTime>, u64); 2];

/// Certificates by host name, chosen by SNI.
#[derive(Debug, Default)]
pub struct SniResolver {
    by_host: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        self.by_host.load().get(&name).cloned()
    }
}

/// Reads a PEM certificate chain and private key.
pub fn load_pair(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("{}: no certificate in it", cert.display());
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("{}: not a PEM private key", key.display()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .with_context(|| format!("{}: unsupported key type", key.display()))?;
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .with_context(|| format!("{} does not match {}", key.display(), cert.display()))?;
    Ok(certified)
}

fn stamp(s: &Source) -> Stamp {
    let m = |p: &Path| std::fs::metadata(p).map_or((None, 0), |m| (m.modified().ok(), m.len()));
    [m(&s.cert), m(&s.key)]
}

/// Keeps an [`SniResolver`] in step with the tenants being served and their files.
pub struct CertWatch {
    resolver: Arc<SniResolver>,
    loaded: HashMap<Source, (Stamp, Arc<CertifiedKey>)>,
    last: Vec<(String, Source)>,
}

impl CertWatch {
    /// A watcher over `resolver`.
    pub fn new(resolver: Arc<SniResolver>) -> Self {
        CertWatch {
            resolver,
            loaded: HashMap::new(),
            last: Vec::new(),
        }
    }

    /// Re-reads what changed; returns how many hosts have a certificate.
    pub fn refresh(&mut self, app: &App) -> usize {
        let mut wanted: Vec<(String, Source)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for t in app.tenants.load().values() {
            if !seen.insert(t.name.clone()) {
                continue;
            }
            let (Some(cert), Some(key)) = (&t.config.tls_cert, &t.config.tls_key) else {
                continue;
            };
            let source = Source {
                cert: app.resolve(cert),
                key: app.resolve(key),
            };
            for host in &t.config.hosts {
                wanted.push((host.to_ascii_lowercase(), source.clone()));
            }
        }
        wanted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut changed = wanted != self.last;
        let sources: std::collections::HashSet<Source> =
            wanted.iter().map(|(_, s)| s.clone()).collect();
        for source in &sources {
            let now = stamp(source);
            if self.loaded.get(source).is_some_and(|(s, _)| *s == now) {
                continue;
            }
            match load_pair(&source.cert, &source.key) {
                Ok(key) => {
                    tracing::info!(cert = %source.cert.display(), "TLS certificate loaded");
                    self.loaded.insert(source.clone(), (now, Arc::new(key)));
                    changed = true;
                }
                Err(e) => {
                    app.metrics.inc("veneer_tls_reload_errors_total", &[]);
                    tracing::error!(error = %format!("{e:#}"), "TLS certificate not (re)loaded; the previous one stays");
                    // Remember the stamp so a broken file is not re-read (and logged) every
                    // round; a fixed file has a new stamp.
                    if let Some((s, _)) = self.loaded.get_mut(source) {
                        *s = now;
                    }
                }
            }
        }
        self.loaded.retain(|s, _| sources.contains(s));
        if changed {
            let table: HashMap<String, Arc<CertifiedKey>> = wanted
                .iter()
                .filter_map(|(host, s)| Some((host.clone(), self.loaded.get(s)?.1.clone())))
                .collect();
            self.resolver.by_host.store(Arc::new(table));
            self.last = wanted;
        }
        self.resolver.by_host.load().len()
    }
}

/// A rustls server config offering h2 and HTTP/1.1, with certificates from `resolver`.
pub fn server_config(resolver: Arc<SniResolver>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Starts the watcher: refreshes now, then every [`RELOAD_EVERY`].
pub fn watch(app: Arc<App>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let resolver = Arc::new(SniResolver::default());
    let mut watch = CertWatch::new(resolver.clone());
    let hosts = watch.refresh(&app);
    tracing::info!(hosts, "TLS certificates loaded");
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RELOAD_EVERY).await;
            watch.refresh(&app);
        }
    });
    server_config(resolver)
}
