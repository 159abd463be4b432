//! HTTPS (`server.tls`): rustls on every listener, HTTP/2 or HTTP/1.1 chosen by ALPN. The
//! certificate and key are PEM files, read at start and again whenever they change (checked
//! every second; a change is applied once the files have stayed the same for a second, so a
//! half-written pair is never loaded): new connections get the new certificate, open ones keep
//! theirs and are not dropped. A pair that does not load (or whose key does not match) is
//! refused with an error line and the previous one stays.
//!
//! With `admin_client_ca`, the admin listener asks clients for a certificate signed by that CA
//! and refuses the handshake without one (mutual TLS for `/admin`).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// How often the files are looked at.
const POLL: Duration = Duration::from_secs(1);

/// Loads the certificate chain and key of `tls` and checks they belong together.
fn certified(tls: &TlsConfig) -> Result<CertifiedKey, (&'static str, String)> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|error| ("cert", format!("{}: {error}", tls.cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|error| ("cert", format!("{}: {error}", tls.cert.display())))?;
    if chain.is_empty() {
        return Err((
            "cert",
            format!("{}: no PEM certificate in it", tls.cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|error| ("key", format!("{}: {error}", tls.key.display())))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map_err(|error| ("key", format!("{}: {error}", tls.key.display())))
}

fn client_roots(path: &Path) -> Result<Arc<RootCertStore>, (&'static str, String)> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| ("admin_client_ca", format!("{}: {error}", path.display())))?;
    for cert in certs {
        let cert =
            cert.map_err(|error| ("admin_client_ca", format!("{}: {error}", path.display())))?;
        roots
            .add(cert)
            .map_err(|error| ("admin_client_ca", format!("{}: {error}", path.display())))?;
    }
    if roots.is_empty() {
        return Err((
            "admin_client_ca",
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(Arc::new(roots))
}

/// Whether the files of `tls` load (for the config loader and `shepherd check`): the failing
/// field and why.
pub fn check(tls: &TlsConfig) -> Result<(), (&'static str, String)> {
    certified(tls)?;
    if let Some(ca) = &tls.admin_client_ca {
        client_roots(ca)?;
    }
    Ok(())
}

/// The certificate handed to each new handshake, swapped when the files change.
#[derive(Debug)]
struct Current {
    key: RwLock<Arc<CertifiedKey>>,
    /// Certificates loaded since the start (the first included).
    loads: AtomicU64,
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(match self.key.read() {
            Ok(key) => key.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
    }
}

/// The TLS side of the listeners.
#[derive(Clone)]
pub struct Tls {
    current: Arc<Current>,
    main: TlsAcceptor,
    admin: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("loads", &self.loads()).finish()
    }
}

impl Tls {
    /// Loads the files and starts watching them (on the current runtime).
    pub fn start(tls: &TlsConfig) -> Result<Tls, String> {
        crate::providers::install_crypto_provider();
        let key =
            certified(tls).map_err(|(field, error)| format!("server.tls.{field}: {error}"))?;
        let current = Arc::new(Current {
            key: RwLock::new(Arc::new(key)),
            loads: AtomicU64::new(1),
        });
        let main = config(current.clone(), None).map_err(|error| error.to_string())?;
        let admin = match &tls.admin_client_ca {
            Some(ca) => {
                let roots =
                    client_roots(ca).map_err(|(field, e)| format!("server.tls.{field}: {e}"))?;
                let verifier = WebPkiClientVerifier::builder(roots)
                    .build()
                    .map_err(|error| format!("server.tls.admin_client_ca: {error}"))?;
                config(current.clone(), Some(verifier)).map_err(|error| error.to_string())?
            }
            None => main.clone(),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(watch(tls.clone(), Arc::downgrade(&current)));
        }
        Ok(Tls {
            current,
            main: TlsAcceptor::from(main),
            admin: TlsAcceptor::from(admin),
        })
    }

    /// The acceptor of the main listener (and of the metrics listener).
    pub fn main(&self) -> TlsAcceptor {
        self.main.clone()
    }

    /// The acceptor of the admin listener (client certificates when configured).
    pub fn admin(&self) -> TlsAcceptor {
        self.admin.clone()
    }

    /// Certificates loaded so far (1 at start).
    pub fn loads(&self) -> u64 {
        self.current.loads.load(Ordering::Relaxed)
    }
}

fn config(
    current: Arc<Current>,
    clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?;
    let builder = match clients {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(current);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What identifies a version of the files: modification time and size of each.
fn stamp(tls: &TlsConfig) -> Option<[(SystemTime, u64); 2]> {
    let of = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .and_then(|meta| Some((meta.modified().ok()?, meta.len())))
    };
    Some([of(&tls.cert)?, of(&tls.key)?])
}

/// Reloads the pair when it changed and then stayed the same for one poll.
async fn watch(tls: TlsConfig, current: Weak<Current>) {
    let mut loaded = stamp(&tls);
    let mut seen = loaded;
    loop {
        tokio::time::sleep(POLL).await;
        let Some(current) = current.upgrade() else {
            return;
        };
        let now = stamp(&tls);
        let stable = now == seen;
        seen = now;
        if now.is_none() || now == loaded || !stable {
            continue;
        }
        loaded = now;
        match certified(&tls) {
            Ok(key) => {
                *match current.key.write() {
                    Ok(guard) => guard,
                    Err(poisoned) => poisoned.into_inner(),
                } = Arc::new(key);
                current.loads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(cert = %tls.cert.display(), "tls: certificate reloaded");
            }
            Err((field, error)) => {
                tracing::error!(field, %error, "tls: the new certificate does not load; keeping the previous one");
            }
        }
    }
}
