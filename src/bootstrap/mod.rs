//! Bootstrap: the one place that turns configuration (plain data, [`crate::config`]) into
//! running parts. It opens storage, builds the credentials, token keys, access policy and
//! Gitee/OIDC identity sources, assembles the gateway, starts the background loops (collection,
//! upload purge, rescans, replication, webhooks), and knows which parts a config reload swaps in
//! live and which need a restart ([`reload`]). Commands ([`crate::cli`]) call into it; nothing
//! below it imports it.

mod access;
mod loops;
mod reload;
mod serve;

pub use access::build_policy;
pub use serve::serve;

use crate::config::{self, Backend, Config};
use crate::registry;
use crate::storage::{self, Storage};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Exit code 2: configuration or arguments. 1: anything else.
pub enum Failure {
    Config(Vec<String>),
    Other(String),
}

pub fn config_path(explicit: Option<PathBuf>, env: &config::Env) -> Option<PathBuf> {
    explicit
        .or_else(|| {
            env.iter()
                .find(|(k, _)| k == "REGATE_CONFIG")
                .map(|(_, v)| PathBuf::from(v))
        })
        .or_else(|| Path::new("regate.yaml").exists().then(|| PathBuf::from("regate.yaml")))
}

/// Everything wrong with a loaded config: its own checks of meaning, and (with `files`) whether
/// the files it names hold what they should (TLS key and certificate, htpasswd, token signing
/// key): each problem one line naming its key.
pub fn check(cfg: &Config, files: bool) -> Vec<String> {
    let mut e = cfg.validate(files);
    if !files {
        return e;
    }
    if let Some(t) = &cfg.tls {
        if let Err(m) = crate::server::tls::load_certified_key(&t.cert, &t.key) {
            e.push(m);
        }
    }
    if let Some(h) = &cfg.auth.htpasswd {
        if let Err(m) = crate::auth::credentials::Credentials::new(Some(h), None, None) {
            e.push(m);
        }
    }
    if cfg.auth.signing_key.as_ref().is_some_and(|p| p.exists()) {
        let k = cfg.signing_key_path();
        if let Ok(pem) = std::fs::read_to_string(&k) {
            let key = crate::auth::token::signing_key_pkcs8(&pem)
                .and_then(|p| rcgen::KeyPair::from_pem(&p).map_err(|e| e.to_string()));
            if let Err(why) = key {
                e.push(format!(
                    "auth.signing_key: {} is not an EC P-256 or RSA private key (PEM: PKCS#8, SEC1 or PKCS#1): {why}",
                    k.display()
                ));
            }
        }
    }
    e
}

pub fn load_valid(path: Option<PathBuf>, env: &config::Env) -> Result<Config, Failure> {
    let path = config_path(path, env);
    let cfg = config::load(path.as_deref(), env).map_err(Failure::Config)?;
    let problems = check(&cfg, true);
    if !problems.is_empty() {
        let origin = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "built-in defaults".into());
        return Err(Failure::Config(
            problems.into_iter().map(|p| format!("{origin}: {p}")).collect(),
        ));
    }
    Ok(cfg)
}

/// Logs go to stderr (human text on a terminal, or JSON); with `audit_file`, the audit stream
/// (`regate::audit`: tokens issued and denied, pushes, deletes, failed sign-ins) is also written
/// there as JSON lines.
pub fn init_logging(format: Option<&str>, audit_file: Option<&Path>) -> Result<(), Failure> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, EnvFilter, Layer};
    let filter = EnvFilter::try_from_env("REGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let console = if format == Some("json") {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    };
    let audit = match audit_file {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| Failure::Config(vec![format!("log.audit_file: cannot open {}: {e}", p.display())]))?;
            let targets = tracing_subscriber::filter::Targets::new().with_target("regate::audit", tracing::Level::INFO);
            Some(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::sync::Mutex::new(f))
                    .with_filter(targets),
            )
        }
        None => None,
    };
    let _ = tracing_subscriber::registry().with(console).with(audit).try_init();
    Ok(())
}

pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(format!("cannot start the async runtime: {e}")))
}

/// Opens the configured storage backend.
pub fn open_storage(cfg: &Config) -> Result<Storage, Failure> {
    match cfg.storage.backend {
        Backend::Fs => {
            let (root, fsync) = match &cfg.storage.fs {
                Some(f) => (f.root.clone(), f.fsync),
                None => (cfg.data_dir(), true),
            };
            storage::fs::FsStore::open(&root, fsync)
                .map(Storage::Fs)
                .map_err(|e| Failure::Other(format!("storage.fs.root {}: {e}", root.display())))
        }
        Backend::Memory => Ok(Storage::Memory(storage::memory::MemStore::default())),
        Backend::S3 | Backend::Oss | Backend::Cos => storage::object::ObjectStore::from_config(&cfg.storage)
            .map(Storage::Object)
            .map_err(|m| Failure::Config(vec![m])),
        Backend::Lfs => {
            let Some(l) = &cfg.storage.lfs else {
                return Err(Failure::Config(vec![
                    "storage.lfs: required when storage.backend is lfs".into(),
                ]));
            };
            // tags, links, upload state and blob records: a store of their own (fs by default)
            let mut meta_cfg = cfg.clone();
            meta_cfg.storage = l.metadata.as_deref().cloned().unwrap_or_default();
            if meta_cfg.storage.backend == Backend::Lfs {
                return Err(Failure::Config(vec![
                    "storage.lfs.metadata.backend: must be fs, s3, oss, cos or memory".into(),
                ]));
            }
            let prefix = |m: String| format!("storage.lfs.metadata: {m}");
            let meta = open_storage(&meta_cfg).map_err(|f| match f {
                Failure::Config(lines) => Failure::Config(lines.into_iter().map(prefix).collect()),
                Failure::Other(m) => Failure::Other(prefix(m)),
            })?;
            storage::lfs::LfsStore::from_config(l, meta)
                .map(Storage::Lfs)
                .map_err(|m| Failure::Config(vec![m]))
        }
    }
}

/// How the embedded registry behaves, from config.
pub fn registry_options(cfg: &Config, public_url: &str) -> registry::Options {
    registry::Options {
        delete: cfg.storage.delete,
        max_manifest_bytes: cfg.limits.max_manifest_bytes,
        public_url: public_url.to_owned(),
        body_idle: Duration::from_secs(cfg.limits.body_idle_timeout.max(1)),
        redirect: cfg
            .storage
            .redirect
            .then(|| Duration::from_secs(cfg.storage.redirect_ttl)),
    }
}

pub fn host_of(url: &str) -> String {
    url.split("://")
        .nth(1)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or("")
        .to_owned()
}

/// The registry host clients name in `docker login`: from public_url, else from a listen
/// address that says it (`<registry>` when neither does).
pub fn registry_host(cfg: &Config) -> String {
    if let Some(u) = &cfg.public_url {
        return host_of(u.trim_end_matches('/'));
    }
    let l = cfg.listen;
    match (l.port(), l.ip().is_unspecified()) {
        (0, _) => "<registry>".into(),
        (p, true) => format!("127.0.0.1:{p}"),
        (_, false) => l.to_string(),
    }
}
