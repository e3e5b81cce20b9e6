//! TLS with rustls: TLS 1.2/1.3, ALPN h2 + http/1.1, and a certificate resolver that picks up
//! new certificate/key files without a restart (new handshakes get the new pair; open
//! connections keep theirs).

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// ring's suites with AES-128-GCM first (TLS 1.3 and 1.2), as Go's servers prefer it: a fifth
/// fewer AES rounds than AES-256 for the same security margin in practice, on both ends of every
/// blob pull. ChaCha20 stays available for clients without AES instructions.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    let rank = |s: &rustls::SupportedCipherSuite| {
        use rustls::CipherSuite::*;
        match s.suite() {
            TLS13_AES_128_GCM_SHA256
            | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
            TLS13_AES_256_GCM_SHA384
            | TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
            _ => 2,
        }
    };
    // stable: TLS 1.3 suites keep their place before TLS 1.2 ones within a rank
    p.cipher_suites
        .sort_by_key(|s| (rank(s), s.version() != &rustls::version::TLS13));
    Arc::new(p)
}

/// Reads a PEM chain and key into a rustls `CertifiedKey`; errors name the file at fault.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls.cert: cannot read {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.cert: {} is not a PEM certificate chain: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("tls.cert: {} holds no certificate", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("tls.key: cannot read a PEM private key from {}: {e}", key.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("tls.key: {} is not a usable private key: {e}", key.display()))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| {
        format!(
            "tls.key: {} does not match tls.cert {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(Arc::new(ck))
}

#[derive(Debug)]
pub struct ReloadingResolver {
    current: RwLock<Arc<CertifiedKey>>,
    cert: PathBuf,
    key: PathBuf,
    stamp: RwLock<Option<(SystemTime, SystemTime)>>,
}

fn stamps(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(cert)?, m(key)?))
}

impl ReloadingResolver {
    pub fn new(cert: &Path, key: &Path) -> Result<Arc<Self>, String> {
        let ck = load_certified_key(cert, key)?;
        Ok(Arc::new(Self {
            current: RwLock::new(ck),
            cert: cert.to_owned(),
            key: key.to_owned(),
            stamp: RwLock::new(stamps(cert, key)),
        }))
    }

    /// Re-reads the files when their modification times changed. A pair that does not load
    /// (say, the cert was replaced but the key not yet) is logged and the old pair kept.
    pub fn reload_if_changed(&self) {
        let now = stamps(&self.cert, &self.key);
        let old = self.stamp.read().map(|s| *s).unwrap_or(None);
        if now == old {
            return;
        }
        match load_certified_key(&self.cert, &self.key) {
            Ok(ck) => {
                if let Ok(mut c) = self.current.write() {
                    *c = ck;
                }
                if let Ok(mut s) = self.stamp.write() {
                    *s = now;
                }
                tracing::info!(cert = %self.cert.display(), "tls certificate reloaded");
            }
            Err(e) => tracing::warn!(error = %e, "tls files changed but do not load; keeping the current certificate"),
        }
    }

    /// Checks the files every `every` until the process ends.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            loop {
                t.tick().await;
                let Some(r) = me.upgrade() else { return };
                r.reload_if_changed();
            }
        });
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

pub fn server_config(resolver: Arc<ReloadingResolver>) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // the order above, not the client's (OpenSSL lists AES-256 first)
    cfg.ignore_client_order = true;
    Ok(Arc::new(cfg))
}
