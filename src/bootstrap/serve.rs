//! `regate serve`: the running server, assembled from the config.

use super::{access, config_path, host_of, init_logging, load_valid, open_storage, registry_options, runtime, Failure};
use crate::auth::endpoint::TokenService;
use crate::auth::refresh::RefreshStore;
use crate::config::{self, Backend, Config};
use crate::gateway::{App, Parts};
use crate::registry::Registry;
use crate::server::{self, tls, ServeOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `regate serve`: load and check the config, start logging and the runtime, serve.
pub fn serve(path: Option<PathBuf>, log_format: Option<String>, env: config::Env) -> Result<(), Failure> {
    let path = config_path(path, &env);
    let cfg = load_valid(path.clone(), &env)?;
    if let Some(f) = &log_format {
        if f != "text" && f != "json" {
            return Err(Failure::Config(vec!["--log-format must be text or json".into()]));
        }
    }
    let env_fmt = env
        .iter()
        .find(|(k, _)| k == "REGATE_LOG_FORMAT")
        .map(|(_, v)| v.clone());
    init_logging(
        log_format.or(env_fmt).or(cfg.log.format.clone()).as_deref(),
        cfg.log.audit_file.as_deref(),
    )?;
    let rt = runtime()?;
    rt.block_on(serve_async(cfg, path, env))
}

/// Everything `serve` runs, built from the config in dependency order; then the listening line,
/// the background loops, the reload watcher, and the server until a signal stops it.
async fn serve_async(cfg: Config, path: Option<PathBuf>, env: config::Env) -> Result<(), Failure> {
    let store = Arc::new(open_storage(&cfg)?);
    let data = cfg.data_dir();
    // memory storage keeps regate's own files in memory too, unless data_dir says otherwise
    let in_memory = cfg.storage.backend == Backend::Memory && cfg.data_dir.is_none();
    let admin = access::admin_password(&cfg, &data, in_memory)?;
    let shared = match &cfg.redis {
        Some(r) => Some(
            crate::ratelimit::Shared::connect(r.url.expose(), &r.key_prefix)
                .await
                .map_err(Failure::Other)?,
        ),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| Failure::Other(format!("cannot listen on {} (listen): {e}", cfg.listen)))?;
    let local = listener.local_addr().map_err(|e| Failure::Other(e.to_string()))?;
    let public_url = public_url(&cfg, local);
    let service = cfg.auth.service.clone().unwrap_or_else(|| host_of(&public_url));
    let signing = access::SigningKey::open(&cfg, in_memory)?;
    let keys = signing.token_keys(&cfg, &service)?;
    let (creds, gitee) = access::credentials(&cfg, &admin, &store, shared.as_ref(), &signing, &public_url)?;
    let signer = crate::web::session::Signer::new(&signing.master()?);
    let tokens = TokenService {
        keys,
        creds: Arc::new(creds),
        policy: crate::live::Live::new(access::build_policy(&cfg)),
        refresh: RefreshStore::new(store.clone(), cfg.auth.refresh_token_ttl.unwrap_or(30 * 86_400)),
    };
    let reg_opts = registry_options(&cfg, &public_url);
    let replicator = if cfg.replication.is_empty() {
        None
    } else {
        let r = crate::replicate::Replicator::new(&cfg.replication, &data.join(".regate-replicate"))
            .map_err(|m| Failure::Config(vec![m]))?;
        Some(r.start(Arc::new(Registry::new(store.clone(), reg_opts.clone()))))
    };
    let mut registry = Registry::new(store.clone(), reg_opts);
    if let Some(m) = &cfg.mirror {
        let mirror = crate::mirror::Mirror::new(m).map_err(|e| Failure::Config(vec![e]))?;
        registry = registry.with_mirror(Arc::new(mirror));
    }
    let tls_cfg = match &cfg.tls {
        Some(t) => {
            let resolver = tls::ReloadingResolver::new(&t.cert, &t.key).map_err(|m| Failure::Config(vec![m]))?;
            resolver.watch(Duration::from_secs(2));
            Some(tls::server_config(resolver).map_err(|m| Failure::Config(vec![m]))?)
        }
        None => None,
    };
    let rate = f64::from(cfg.limits.token_requests_per_second);
    let token_limit = crate::ratelimit::Limiter::new(rate, rate * 2.0);
    let token_limit = match &shared {
        Some(s) => token_limit.shared(s.clone(), "token"),
        None => token_limit,
    };
    let metrics = Arc::new(crate::metrics::Metrics::default());
    if let Some(r) = &replicator {
        metrics.register_collector(Box::new(r.clone()));
    }
    let spool = data.join(".regate-notify");
    let notifier = if cfg.notifications.is_empty() {
        None
    } else {
        if in_memory {
            println!(
                "regate: storage is memory: undelivered webhook events are spooled on disk in {} (set data_dir to choose)",
                spool.display()
            );
        }
        Some(
            crate::notify::Notifier::start(&cfg.notifications, &spool, &public_url, metrics.clone())
                .map_err(|e| Failure::Other(format!("cannot start notifications (spool {}): {e}", spool.display())))?,
        )
    };
    let upstream = match &cfg.upstream {
        Some(u) => Some(crate::proxy::Upstream::new(u, cfg.upstream_h2c).map_err(|m| Failure::Config(vec![m]))?),
        None => None,
    };
    let trust = crate::trust::Trust::new(&cfg.policy, cfg.scanner.as_ref(), store.clone(), &public_url)
        .map_err(|m| Failure::Config(vec![m]))?;
    let app = Arc::new(App::new(Parts {
        public_url: public_url.clone(),
        service,
        registry,
        tokens,
        net: crate::gateway::NetLists::from_config(&cfg.network),
        hsts_max_age: cfg.tls.as_ref().map(|t| t.hsts_max_age),
        token_limit,
        metrics,
        notifier,
        upstream,
        replicator,
        trust,
        gitee,
        signer,
    }));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(addr) = cfg.tls.as_ref().and_then(|t| t.http_redirect_listen) {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Failure::Other(format!("cannot listen on {addr} (tls.http_redirect_listen): {e}")))?;
        let mut rx = stop_rx.clone();
        tokio::spawn(server::run_redirect(l, public_url.clone(), async move {
            let _ = rx.changed().await;
        }));
    }
    if signing.in_memory() {
        println!(
            "regate: storage is memory: the token signing key lives in this process only (nothing written to disk)"
        );
    }
    access::announce_admin(&cfg, &admin, &data, in_memory, &public_url)?;
    // the signal handlers are in place before anyone is told we listen: a SIGTERM right after
    // the line below is a clean shutdown, never the default action
    let signals = shutdown_signal();
    println!("regate listening on {public_url} ({local})");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tracing::info!(%local, %public_url, "listening");
    let opts = ServeOptions {
        tls: tls_cfg,
        hsts: app.hsts.as_ref().and_then(|h| h.to_str().ok()).map(str::to_owned),
        max_connections: cfg.limits.max_connections,
        header_read_timeout: Duration::from_secs(cfg.limits.header_read_timeout.max(1)),
        handshake_timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(cfg.limits.shutdown_grace),
    };
    #[cfg(unix)]
    super::reload::watch(app.clone(), path, env, cfg.clone(), spool);
    super::loops::start(&cfg, &app);
    let shutdown = async move {
        signals.await;
        let _ = stop_tx.send(true);
    };
    server::run(listener, app, opts, shutdown).await;
    drop(signing);
    Ok(())
}

/// The URL clients reach regate at: `public_url`, else derived from the listen address (and a
/// hint, because in a container that names the container's own port, not the published one).
fn public_url(cfg: &Config, local: SocketAddr) -> String {
    if let Some(u) = &cfg.public_url {
        return u.trim_end_matches('/').to_owned();
    }
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    let host = if local.ip().is_unspecified() {
        let loopback = SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), local.port());
        let derived = format!("{scheme}://{loopback}");
        println!(
            "regate: hint: public_url is not set, so clients are sent to {derived} (from listen {local}); \
             if they reach regate at another address (a published container port, a proxy), set public_url \
             or REGATE_PUBLIC_URL, e.g. docker run -p 127.0.0.1:5030:{port} -e REGATE_PUBLIC_URL=http://127.0.0.1:5030 ...",
            port = local.port()
        );
        tracing::warn!(public_url = %derived, "public_url not set; token realm and Location headers name 127.0.0.1 and the listen port");
        loopback
    } else {
        local
    };
    format!("{scheme}://{host}")
}

/// Registers SIGTERM and SIGINT now; the future resolves when one arrives.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
        async move {
            match handlers {
                (Ok(mut t), Ok(mut i)) => {
                    tokio::select! {
                        _ = t.recv() => {},
                        _ = i.recv() => {},
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
