//! The command line: `serve`, `check-config`, `gc`. Every failure ends in one human sentence and
//! exit code 2 (bad configuration or arguments) or 1 (anything else); never a panic.

use crate::auth::credentials::Credentials;
use crate::auth::endpoint::TokenService;
use crate::auth::policy::{Glob, Policy, Rule, StaticRule};
use crate::auth::refresh::RefreshStore;
use crate::auth::scope::Action;
use crate::auth::stored::{Grant, Kind, StoredCreds, ROBOT_PREFIX};
use crate::auth::token::TokenKeys;
use crate::config::{self, Backend, Config};
use crate::gateway::App;
use crate::registry::{self, Registry};
use crate::server::{self, tls, ServeOptions};
use crate::storage::{self, Storage};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "regate",
    version,
    about = "A single-binary, Gitee-signed-in Docker/OCI registry and token gateway"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the gateway (and the embedded registry unless `upstream` is set).
    Serve {
        /// Config file; defaults to $REGATE_CONFIG, then ./regate.yaml if present, else built-in defaults.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        /// Log format: text or json (overrides log.format).
        #[arg(long)]
        log_format: Option<String>,
    },
    /// Validate a config file and every file it names; exit 0 when valid, 2 when not.
    CheckConfig {
        /// Check keys, types and values only, not whether named files exist.
        #[arg(long)]
        schema_only: bool,
        /// Config file (as for `serve`): defaults to $REGATE_CONFIG, then ./regate.yaml.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
    /// Garbage-collect blobs no manifest references (and, with --delete-untagged, untagged manifests).
    Gc {
        /// Report what would be freed without deleting anything.
        #[arg(long)]
        dry_run: bool,
        /// Also delete manifests that no tag, index or living subject references.
        #[arg(long)]
        delete_untagged: bool,
        /// Only delete what is older than this (e.g. 1h, 30m, 0s).
        #[arg(long, default_value = "1h")]
        grace: String,
        /// Config file (as for `serve`): defaults to $REGATE_CONFIG, then ./regate.yaml.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
    /// Probe a running regate (for container health checks): exit 0 when /healthz answers 200.
    /// By default the address comes from the same config `serve` reads (listen, tls).
    Healthcheck {
        /// URL of the health endpoint; default from the config's listen address and tls.
        #[arg(long)]
        url: Option<String>,
        /// Config file (as for `serve`): defaults to $REGATE_CONFIG, then ./regate.yaml.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
    /// Convert a distribution (registry:2) config.yml into a regate config, printed to stdout.
    ImportConfig {
        /// The distribution config.yml.
        file: PathBuf,
    },
    /// Re-hash every stored blob and report any whose bytes no longer match their digest
    /// (exit 1 when one does).
    Scrub {
        /// Config file (as for `serve`): defaults to $REGATE_CONFIG, then ./regate.yaml.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
    /// Manage robot accounts (CI credentials limited to some repositories).
    Robot {
        #[command(subcommand)]
        cmd: RobotCmd,
    },
    /// Replication to and from other registries (`replication:` rules).
    Replicate {
        #[command(subcommand)]
        cmd: crate::replicate::cmd::ReplicateCmd,
    },
}

#[derive(Subcommand, Debug)]
enum RobotCmd {
    /// Create robot$NAME and print its secret once.
    Add {
        /// The robot's name; it signs in as robot$NAME.
        name: String,
        /// Repository pattern the robot may use (repeatable; `*` and `?` globs).
        #[arg(long = "repo", required = true)]
        repos: Vec<String>,
        /// Comma-separated actions: pull, push, delete, *.
        #[arg(long, default_value = "pull")]
        actions: String,
        /// Lifetime, e.g. 30d, 12h; 0 for none.
        #[arg(long, default_value = "90d")]
        expires: String,
        /// Free text shown by `robot list`.
        #[arg(long, default_value = "")]
        description: String,
        /// Config file (as for `serve`): defaults to $REGATE_CONFIG, then ./regate.yaml.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
    /// List robot accounts.
    List {
        /// Config file (as for `serve`): defaults to $REGATE_CONFIG, then ./regate.yaml.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
    /// Revoke robot$NAME (every secret it has).
    Remove {
        /// The robot's name (without robot$).
        name: String,
        /// Config file (as for `serve`): defaults to $REGATE_CONFIG, then ./regate.yaml.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
}

/// Exit code 2: configuration or arguments. 1: anything else.
pub enum Failure {
    Config(Vec<String>),
    Other(String),
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let env = config::process_env();
    let result = match cli.cmd {
        Cmd::CheckConfig { schema_only, config } => check_config(config.as_deref(), schema_only, &env),
        Cmd::Serve { config, log_format } => serve(config, log_format, env),
        Cmd::Robot { cmd } => robot(cmd, env),
        Cmd::Replicate { cmd } => crate::replicate::cmd::run(cmd, env),
        Cmd::ImportConfig { file } => import_config(&file),
        Cmd::Healthcheck { url, config } => healthcheck(url, config, &env),
        Cmd::Scrub { config } => scrub(config, env),
        Cmd::Gc {
            dry_run,
            delete_untagged,
            grace,
            config,
        } => gc(config, dry_run, delete_untagged, &grace, env),
    };
    match result {
        Ok(()) => 0,
        Err(Failure::Config(lines)) => {
            for l in lines {
                eprintln!("regate: {l}");
            }
            2
        }
        Err(Failure::Other(m)) => {
            eprintln!("regate: {m}");
            1
        }
    }
}

fn config_path(explicit: Option<PathBuf>, env: &config::Env) -> Option<PathBuf> {
    explicit
        .or_else(|| {
            env.iter()
                .find(|(k, _)| k == "REGATE_CONFIG")
                .map(|(_, v)| PathBuf::from(v))
        })
        .or_else(|| Path::new("regate.yaml").exists().then(|| PathBuf::from("regate.yaml")))
}

fn check_config(path: Option<&Path>, schema_only: bool, env: &config::Env) -> Result<(), Failure> {
    let path = config_path(path.map(Path::to_path_buf), env)
        .ok_or_else(|| Failure::Config(vec!["check-config needs --config FILE".into()]))?;
    let cfg = config::load_with(Some(&path), env, !schema_only).map_err(Failure::Config)?;
    let problems = cfg.validate(!schema_only);
    if !problems.is_empty() {
        return Err(Failure::Config(
            problems
                .into_iter()
                .map(|p| format!("{}: {p}", path.display()))
                .collect(),
        ));
    }
    println!("{}: ok", path.display());
    Ok(())
}

pub(crate) fn load_valid(path: Option<PathBuf>, env: &config::Env) -> Result<Config, Failure> {
    let path = config_path(path, env);
    let cfg = config::load(path.as_deref(), env).map_err(Failure::Config)?;
    let problems = cfg.validate(true);
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
fn init_logging(format: Option<&str>, audit_file: Option<&Path>) -> Result<(), Failure> {
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

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(format!("cannot start the async runtime: {e}")))
}

/// The Gitee client: endpoints, scopes the rules need, sealed token storage and cookie signing
/// keyed by the token signing key (shared by replicas).
fn gitee_service(
    cfg: &Config,
    g: &config::GiteeConfig,
    public_url: &str,
    store: &Arc<Storage>,
    master: &[u8],
) -> Result<crate::gitee::Gitee, Failure> {
    let policy = build_policy(cfg);
    let groups: Vec<String> = policy
        .groups()
        .into_iter()
        .filter(|g| g.starts_with("gitee-org:") || g.starts_with("gitee-enterprise:"))
        .collect();
    let scopes = g.scopes.clone().unwrap_or_else(|| {
        let mut s = vec!["user_info".to_owned()];
        if policy.uses_gitee() {
            s.push("projects".into());
        }
        if groups.iter().any(|g| g.starts_with("gitee-org:")) {
            s.push("groups".into());
        }
        if groups.iter().any(|g| g.starts_with("gitee-enterprise:")) {
            s.push("enterprises".into());
        }
        s
    });
    let vault = crate::gitee::vault::Vault::new(store.clone(), master).map_err(Failure::Other)?;
    crate::gitee::Gitee::new(
        crate::gitee::Options {
            base_url: g.base_url(),
            api_url: g.api_url(),
            client_id: g.client_id.clone(),
            client_secret: g.client_secret.as_ref().map(|s| s.expose().to_owned()),
            redirect_url: g
                .redirect_url
                .clone()
                .unwrap_or_else(|| format!("{public_url}/login/callback")),
            password_grant: g.password_grant,
            scopes,
            service_token: g.service_token.as_ref().map(|s| s.expose().to_owned()),
            timeout: Duration::from_secs(g.timeout.max(1)),
            cache_ttl: Duration::from_secs(g.cache_ttl),
            session_ttl: g.session_ttl,
            groups,
        },
        vault,
        crate::gitee::session::Signer::new(master),
    )
    .map_err(|m| Failure::Config(vec![m]))
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
pub(crate) fn registry_options(cfg: &Config, public_url: &str) -> registry::Options {
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

/// The keyless-CI providers of `auth.oidc`, each knowing the claims its rules look at.
fn oidc_providers(cfg: &Config) -> Result<crate::auth::oidc::Providers, String> {
    let list = cfg
        .auth
        .oidc
        .iter()
        .map(|p| {
            let mut rule_claims: Vec<String> = cfg
                .access
                .iter()
                .flatten()
                .filter(|r| r.oidc.as_deref() == Some(p.name.as_str()))
                .flat_map(|r| r.claims.iter().flatten().map(|(k, _)| k.clone()))
                .collect();
            rule_claims.sort();
            rule_claims.dedup();
            crate::auth::oidc::ProviderConfig {
                name: p.name.clone(),
                issuer: p.issuer.clone(),
                audience: p.audience.clone(),
                account: p.account_template(),
                require: p.require.clone(),
                jwks_url: p.jwks_url.clone(),
                rule_claims,
            }
        })
        .collect();
    crate::auth::oidc::Providers::new(list)
}

/// Builds the access policy from config (or the default: admin may do anything, everyone
/// signed in may push and pull under their own name).
pub fn build_policy(cfg: &Config) -> Policy {
    let rules = match &cfg.access {
        Some(rules) => rules
            .iter()
            .map(|r| {
                if r.gitee.is_some() {
                    Rule::GiteeRepoPermission
                } else {
                    Rule::Static(StaticRule {
                        accounts: r.account.clone().map(|a| a.into_vec()),
                        groups: r.groups.clone(),
                        repository: r.repository.as_deref().map(Glob::new),
                        networks: r.networks.clone(),
                        actions: r.actions.iter().copied().collect(),
                        catalog: r.catalog,
                        oidc: r.oidc.clone(),
                        claims: r
                            .claims
                            .iter()
                            .flatten()
                            .map(|(k, v)| (k.clone(), Glob::new(v)))
                            .collect(),
                    })
                }
            })
            .collect(),
        None => vec![
            Rule::Static(StaticRule {
                accounts: Some(vec!["admin".into()]),
                groups: None,
                repository: Some(Glob::new("*")),
                networks: None,
                actions: [Action::All].into_iter().collect(),
                catalog: true,
                oidc: None,
                claims: vec![],
            }),
            Rule::Static(StaticRule {
                accounts: None,
                groups: None,
                repository: Some(Glob::new("${account}/*")),
                networks: None,
                actions: [Action::Pull, Action::Push].into_iter().collect(),
                catalog: false,
                oidc: None,
                claims: vec![],
            }),
        ],
    };
    Policy {
        rules,
        anonymous_pull: cfg.auth.anonymous_pull,
    }
}

/// The generated admin's password, if an earlier start saved one in `<data>/admin-password`.
fn saved_admin_password(dir: &Path) -> Result<Option<String>, Failure> {
    let p = dir.join("admin-password");
    match std::fs::read_to_string(&p) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Failure::Other(format!("cannot read {}: {e}", p.display()))),
    }
}

fn new_admin_password() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 18]>())
}

/// Saves a newly generated admin password as `<data>/admin-password` (0600). Called only once the
/// server has its listener and everything else it needs, so a start that fails saves nothing.
fn save_admin_password(dir: &Path, pw: &str) -> Result<PathBuf, Failure> {
    use std::io::Write;
    let p = dir.join("admin-password");
    std::fs::create_dir_all(dir).map_err(|e| Failure::Other(format!("cannot create {}: {e}", dir.display())))?;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(&p)
        .and_then(|mut f| f.write_all(format!("{pw}\n").as_bytes()))
        .map_err(|e| Failure::Other(format!("cannot write {}: {e}", p.display())))?;
    Ok(p)
}

/// With `storage.backend: memory` and no `auth.signing_key`, the token signing key and its
/// certificate are generated for this process only and never written to disk: they are handed
/// to the key loader through anonymous memory files (Linux `memfd`). Returns the two paths, the
/// files that keep them alive, and the key's PEM.
#[cfg(target_os = "linux")]
fn ephemeral_signing_key(issuer: &str) -> Result<(PathBuf, PathBuf, Vec<std::fs::File>, String), Failure> {
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd};
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Failure::Other(format!("cannot generate a token signing key: {e}")))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| Failure::Other(format!("cannot build a signing certificate: {e}")))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{issuer} token signer"));
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 12, 31);
    let cert = params
        .self_signed(&kp)
        .map_err(|e| Failure::Other(format!("cannot self-sign the signing certificate: {e}")))?;
    let key_pem = kp.serialize_pem();
    let mut files = Vec::new();
    let mut paths = Vec::new();
    for (name, data) in [
        (c"regate-token.key", key_pem.as_bytes()),
        (c"regate-token.crt", cert.pem().as_bytes()),
    ] {
        // SAFETY: memfd_create takes a NUL-terminated name and flags; a non-negative result is a
        // new file descriptor that nothing else owns.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(Failure::Other(format!(
                "cannot keep the token signing key in memory: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: `fd` was just created above and is owned by this File alone.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        f.write_all(data)
            .map_err(|e| Failure::Other(format!("cannot keep the token signing key in memory: {e}")))?;
        paths.push(PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())));
        files.push(f);
    }
    let cert_path = paths.pop().unwrap_or_default();
    let key_path = paths.pop().unwrap_or_default();
    Ok((key_path, cert_path, files, key_pem))
}

fn host_of(url: &str) -> String {
    url.split("://")
        .nth(1)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or("")
        .to_owned()
}

fn serve(path: Option<PathBuf>, log_format: Option<String>, env: config::Env) -> Result<(), Failure> {
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

/// SIGHUP: re-reads the config file; what can change live (access rules, anonymous pull,
/// network lists) is swapped in, a broken file is refused with a log line and the running
/// config stays. Files the config names (htpasswd, TLS) are reloaded on their own when they change.
#[cfg(unix)]
fn watch_reload(app: Arc<App>, path: Option<PathBuf>, env: config::Env, cfg: Config, spool: PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; config reload disabled");
        return;
    };
    tokio::spawn(async move {
        let mut current = cfg;
        while hup.recv().await.is_some() {
            let origin = path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "built-in defaults".into());
            let new = match config::load(path.as_deref(), &env) {
                Ok(c) => c,
                Err(errs) => {
                    tracing::error!(config = %origin, problems = %errs.join("; "), "config reload refused; keeping the running config");
                    continue;
                }
            };
            let problems = new.validate(true);
            if !problems.is_empty() {
                tracing::error!(config = %origin, problems = %problems.join("; "), "config reload refused; keeping the running config");
                continue;
            }
            app.tokens.policy.set(build_policy(&new));
            app.net.set(crate::gateway::NetLists::from_config(&new.network));
            let differs = |a: String, b: String| a != b;
            let mut restart = Vec::new();
            if differs(
                format!("{:?}{:?}", current.listen, current.public_url),
                format!("{:?}{:?}", new.listen, new.public_url),
            ) {
                restart.push("listen/public_url");
            }
            if differs(format!("{:?}", current.storage), format!("{:?}", new.storage)) {
                restart.push("storage");
            }
            if differs(
                format!("{:?}", current.tls.as_ref().map(|t| (&t.cert, &t.key, t.hsts_max_age))),
                format!("{:?}", new.tls.as_ref().map(|t| (&t.cert, &t.key, t.hsts_max_age))),
            ) {
                restart.push("tls");
            }
            let auth_fixed = |c: &Config| {
                format!(
                    "{:?}{:?}{:?}{:?}{:?}{:?}{:?}",
                    c.auth.service,
                    c.auth.issuer,
                    c.auth.token_ttl,
                    c.auth.signing_key,
                    c.auth.signing_cert,
                    c.auth.htpasswd,
                    c.auth.gitee
                )
            };
            if differs(auth_fixed(&current), auth_fixed(&new)) {
                restart.push("auth (other than access rules)");
            }
            if differs(format!("{:?}", current.upstream), format!("{:?}", new.upstream)) {
                restart.push("upstream");
            }
            if differs(
                format!("{:?}{:?}", current.policy, current.scanner),
                format!("{:?}{:?}", new.policy, new.scanner),
            ) {
                restart.push("policy/scanner");
            }
            if differs(
                format!("{:?}", current.notifications),
                format!("{:?}", new.notifications),
            ) {
                let next = if new.notifications.is_empty() {
                    Ok(None)
                } else {
                    crate::notify::Notifier::start(&new.notifications, &spool, &app.public_url, app.metrics.clone())
                        .map(Some)
                };
                match next {
                    Ok(n) => {
                        if let Some(old) = app.notifier.get().as_ref() {
                            old.stop();
                        }
                        app.notifier.set(n);
                        tracing::info!(endpoints = new.notifications.len(), "webhook endpoints reloaded");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the new webhook endpoints; keeping the old ones")
                    }
                }
            }
            if differs(
                format!("{:?}{:?}", current.limits, current.gc),
                format!("{:?}{:?}", new.limits, new.gc),
            ) {
                restart.push("limits/gc");
            }
            if restart.is_empty() {
                tracing::info!(config = %origin, "config reloaded");
            } else {
                tracing::warn!(config = %origin, needs_restart = %restart.join(", "), "config reloaded; some changes take effect only after a restart");
            }
            current = new;
        }
    });
}

async fn serve_async(cfg: Config, path: Option<PathBuf>, env: config::Env) -> Result<(), Failure> {
    let store = Arc::new(open_storage(&cfg)?);
    let data = cfg.data_dir();
    // memory storage keeps regate's own files in memory too, unless data_dir says otherwise
    let in_memory = cfg.storage.backend == Backend::Memory && cfg.data_dir.is_none();
    // the generated admin: (password, generated by this start)
    let admin = if cfg.auth.htpasswd.is_none() {
        match saved_admin_password(&data)? {
            Some(pw) if !in_memory => Some((pw, false)),
            _ => Some((new_admin_password(), true)),
        }
    } else {
        None
    };
    let creds = Credentials::new(
        cfg.auth.htpasswd.as_deref(),
        admin.as_ref().map(|(p, _)| p.clone()),
        Some(Arc::new(StoredCreds::new(store.clone()))),
    )
    .map(|c| c.with_failure_limit(cfg.limits.failed_auth_per_minute))
    .map_err(|m| Failure::Config(vec![m]))?;
    let creds = if cfg.auth.oidc.is_empty() {
        creds
    } else {
        creds.with_oidc(Arc::new(oidc_providers(&cfg).map_err(|m| Failure::Config(vec![m]))?))
    };
    let shared = match &cfg.redis {
        Some(r) => Some(
            crate::ratelimit::Shared::connect(r.url.expose(), &r.key_prefix)
                .await
                .map_err(Failure::Other)?,
        ),
        None => None,
    };
    let creds = match &shared {
        Some(s) => creds.with_shared_failures(s.clone()),
        None => creds,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| Failure::Other(format!("cannot listen on {} (listen): {e}", cfg.listen)))?;
    let local = listener.local_addr().map_err(|e| Failure::Other(e.to_string()))?;
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    let public_url = match &cfg.public_url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => {
            let host = if local.ip().is_unspecified() {
                let derived = format!(
                    "{scheme}://{}",
                    std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), local.port())
                );
                // in a container this names the container's own port, not the published one
                println!(
                    "regate: hint: public_url is not set, so clients are sent to {derived} (from listen {local}); \
                     if they reach regate at another address (a published container port, a proxy), set public_url \
                     or REGATE_PUBLIC_URL, e.g. docker run -p 127.0.0.1:5030:{port} -e REGATE_PUBLIC_URL=http://127.0.0.1:5030 ...",
                    port = local.port()
                );
                tracing::warn!(public_url = %derived, "public_url not set; token realm and Location headers name 127.0.0.1 and the listen port");
                std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), local.port())
            } else {
                local
            };
            format!("{scheme}://{host}")
        }
    };
    let service = cfg.auth.service.clone().unwrap_or_else(|| host_of(&public_url));
    #[cfg(target_os = "linux")]
    let (key_path, cert_path, _key_files, memory_key) = if in_memory && cfg.auth.signing_key.is_none() {
        let (k, c, files, pem) = ephemeral_signing_key(&cfg.auth.issuer)?;
        (k, c, files, Some(pem))
    } else {
        (cfg.signing_key_path(), cfg.signing_cert_path(), Vec::new(), None)
    };
    #[cfg(not(target_os = "linux"))]
    let (key_path, cert_path, memory_key): (_, _, Option<String>) =
        (cfg.signing_key_path(), cfg.signing_cert_path(), None);
    let keys = TokenKeys::load_or_generate(
        &key_path,
        &cert_path,
        &cfg.auth.verification_certs,
        &cfg.auth.issuer,
        &service,
        cfg.auth.token_ttl,
    )
    .map_err(|m| Failure::Config(vec![m]))?;
    let creds = match &cfg.auth.gitee {
        Some(g) => {
            let master = match &memory_key {
                Some(pem) => pem.as_bytes().to_vec(),
                None => std::fs::read(cfg.signing_key_path()).map_err(|e| {
                    Failure::Other(format!("auth.signing_key {}: {e}", cfg.signing_key_path().display()))
                })?,
            };
            creds.with_gitee(Arc::new(gitee_service(&cfg, g, &public_url, &store, &master)?))
        }
        None => creds,
    };
    let creds = Arc::new(creds);
    let refresh_ttl = cfg.auth.refresh_token_ttl.unwrap_or(30 * 86_400);
    let tokens = TokenService {
        keys,
        creds,
        policy: crate::live::Live::new(build_policy(&cfg)),
        refresh: RefreshStore::new(store.clone(), refresh_ttl),
    };
    let reg_opts = registry_options(&cfg, &public_url);
    let replicator = if cfg.replication.is_empty() {
        None
    } else {
        let r = crate::replicate::Replicator::new(&cfg.replication, &data.join(".regate-replicate"))
            .map_err(|m| Failure::Config(vec![m]))?;
        Some(r.start(Arc::new(Registry::new(store.clone(), reg_opts.clone()))))
    };
    let mut registry = Registry::new(store, reg_opts);
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
    let mut app = App::new(
        public_url.clone(),
        service,
        registry,
        tokens,
        crate::gateway::NetLists::from_config(&cfg.network),
        cfg.tls.as_ref().map(|t| t.hsts_max_age),
    );
    let rate = f64::from(cfg.limits.token_requests_per_second);
    app.token_limit = crate::ratelimit::Limiter::new(rate, rate * 2.0);
    if let Some(s) = &shared {
        let l = std::mem::replace(&mut app.token_limit, crate::ratelimit::Limiter::new(0.0, 0.0));
        app.token_limit = l.shared(s.clone(), "token");
    }
    if let Some(r) = &replicator {
        app.metrics.register_collector(Box::new(r.clone()));
    }
    app.replicator = replicator;
    if let Some(u) = &cfg.upstream {
        app.upstream = Some(crate::proxy::Upstream::new(u, cfg.upstream_h2c).map_err(|m| Failure::Config(vec![m]))?);
    }
    if !cfg.notifications.is_empty() {
        let spool = data.join(".regate-notify");
        if in_memory {
            println!(
                "regate: storage is memory: undelivered webhook events are spooled on disk in {} (set data_dir to choose)",
                spool.display()
            );
        }
        let n = crate::notify::Notifier::start(&cfg.notifications, &spool, &public_url, app.metrics.clone())
            .map_err(|e| Failure::Other(format!("cannot start notifications (spool {}): {e}", spool.display())))?;
        app.notifier.set(Some(n));
    }
    app.trust = crate::trust::Trust::new(
        &cfg.policy,
        cfg.scanner.as_ref(),
        app.registry.store().clone(),
        &public_url,
    )
    .map_err(|m| Failure::Config(vec![m]))?;
    if let Some(t) = &app.trust {
        t.start();
    }
    let app = Arc::new(app);
    if let Some(every) = app.trust.as_ref().and_then(|t| t.rescan_every()) {
        // the tags that matter are rescanned on a schedule, not only when pulled
        let app = app.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(t) = &app.trust else { return };
                let mint = |n: &crate::registry::names::RepoName| {
                    let scope = crate::auth::scope::Scope::repository(n.as_str(), &[Action::Pull]);
                    app.tokens
                        .keys
                        .issue("regate-scanner", &[], true, &[scope], crate::util::now_secs())
                        .ok()
                };
                let n = t.rescan_pass(&app.registry, &mint).await;
                if n > 0 {
                    tracing::info!(scans = n, "scheduled rescan");
                }
            }
        });
    }
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
    if memory_key.is_some() {
        println!(
            "regate: storage is memory: the token signing key lives in this process only (nothing written to disk)"
        );
    }
    match &admin {
        Some((pw, true)) => {
            // saved only now that the server is about to serve: a start that failed saved nothing
            let host = host_of(&public_url);
            if in_memory {
                println!("regate: generated the admin password (storage is memory: kept in this process only, a new one on every start):");
            } else {
                let p = save_admin_password(&data, pw)?;
                println!("regate: generated the admin password (saved in {}):", p.display());
            }
            println!("  echo '{pw}' | docker login {host} -u admin --password-stdin");
        }
        Some((_, false)) if cfg.auth.gitee.is_none() => {
            // the generated admin is the only way in: say where its password is, never the password
            println!(
                "regate: sign in as admin with the password in {} (generated on first start; set auth.htpasswd to use your own users)",
                data.join("admin-password").display()
            );
        }
        _ => {}
    }
    // the signal handlers are in place before anyone is told we listen: a SIGTERM right after
    // the line below is a clean shutdown, never the default action
    let signals = shutdown_signal();
    println!("regate listening on {public_url} ({local})");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tracing::info!(%local, %public_url, "listening");
    let opts = ServeOptions {
        tls: tls_cfg,
        max_connections: cfg.limits.max_connections,
        header_read_timeout: Duration::from_secs(cfg.limits.header_read_timeout.max(1)),
        handshake_timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(cfg.limits.shutdown_grace),
    };
    #[cfg(unix)]
    watch_reload(app.clone(), path, env, cfg.clone(), data.join(".regate-notify"));
    if cfg.gc.upload_purge_interval > 0 && cfg.gc.interval == 0 {
        // full collections are not scheduled: abandoned uploads are still purged
        let store = app.registry.store().clone();
        let every = Duration::from_secs(cfg.gc.upload_purge_interval);
        let max_age = Duration::from_secs(cfg.gc.upload_max_age);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match crate::gc::purge_uploads(&store, max_age).await {
                    Ok(p) if !p.is_empty() => {
                        tracing::info!(uploads = p.len(), "purged abandoned uploads")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "purging abandoned uploads failed"),
                }
            }
        });
    }
    if cfg.gc.interval > 0 {
        let store = app.registry.store().clone();
        let every = Duration::from_secs(cfg.gc.interval);
        let (grace, delete_untagged) = (Duration::from_secs(cfg.gc.grace), cfg.gc.delete_untagged);
        let (uploads, retention) = (Duration::from_secs(cfg.gc.upload_max_age), cfg.retention.clone());
        let metrics = app.metrics.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let opts = crate::gc::Options {
                    dry_run: false,
                    delete_untagged,
                    grace,
                    upload_max_age: uploads,
                    retention: retention.clone(),
                };
                match crate::gc::run(&store, opts).await {
                    Ok(r) => {
                        use crate::metrics::Metrics;
                        Metrics::add(&metrics.gc_runs, 1);
                        Metrics::add(&metrics.gc_blobs_deleted, r.blobs.len() as u64);
                        if !r.lfs {
                            // LFS cannot delete: nothing is freed there
                            Metrics::add(&metrics.gc_bytes_freed, r.blobs.iter().map(|(_, n)| n).sum());
                        }
                        tracing::info!(
                            tags = r.tags.len(),
                            blobs = r.blobs.len(),
                            bytes = r.blobs.iter().map(|(_, n)| n).sum::<u64>(),
                            manifests = r.manifests.len(),
                            uploads = r.uploads.len(),
                            "scheduled garbage collection"
                        )
                    }
                    Err(e) => tracing::error!(error = %e, "scheduled garbage collection failed"),
                }
            }
        });
    }
    let shutdown = async move {
        signals.await;
        let _ = stop_tx.send(true);
    };
    server::run(listener, app, opts, shutdown).await;
    Ok(())
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

/// `30s`, `15m`, `1h`, `2d`, sums like `1h30m`, or plain seconds (as in the config).
pub fn parse_duration(s: &str) -> Option<Duration> {
    config::parse_duration(s)
}

fn gc(
    path: Option<PathBuf>,
    dry_run: bool,
    delete_untagged: bool,
    grace: &str,
    env: config::Env,
) -> Result<(), Failure> {
    let grace = parse_duration(grace)
        .ok_or_else(|| Failure::Config(vec![format!("--grace {grace:?} is not a duration like 1h, 30m or 0s")]))?;
    let cfg = load_valid(path, &env)?;
    init_logging(Some("text"), None)?;
    let rt = runtime()?;
    rt.block_on(async {
        let store = open_storage(&cfg)?;
        let report = crate::gc::run(
            &store,
            crate::gc::Options {
                dry_run,
                delete_untagged,
                grace,
                upload_max_age: Duration::from_secs(cfg.gc.upload_max_age),
                retention: cfg.retention.clone(),
            },
        )
        .await
        .map_err(|e| Failure::Other(format!("garbage collection failed: {e}")))?;
        print!("{report}");
        Ok(())
    })
}

fn scrub(path: Option<PathBuf>, env: config::Env) -> Result<(), Failure> {
    let cfg = load_valid(path, &env)?;
    let rt = runtime()?;
    rt.block_on(async {
        let store = open_storage(&cfg)?;
        let (bad, n) = crate::gc::scrub(&store)
            .await
            .map_err(|e| Failure::Other(format!("scrub failed: {e}")))?;
        for c in &bad {
            match &c.actual {
                Some(a) => println!("corrupt blob {} (content hashes to {a})", c.digest),
                None => println!("unreadable blob {}", c.digest),
            }
        }
        println!("scrub: {n} blobs checked, {} corrupt", bad.len());
        if bad.is_empty() {
            Ok(())
        } else {
            Err(Failure::Other(format!("{} blobs do not match their digest", bad.len())))
        }
    })
}

/// The health URL of the server the config describes: its listen port on loopback when it
/// listens on every interface, https when it has tls.
fn health_url(cfg: &Config) -> Result<String, Failure> {
    let addr = cfg.listen;
    if addr.port() == 0 {
        return Err(Failure::Config(vec![
            "healthcheck: listen has port 0 (picked at start); give --url".into(),
        ]));
    }
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v) if v.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v) if v.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    Ok(format!(
        "{scheme}://{}/healthz",
        std::net::SocketAddr::new(ip, addr.port())
    ))
}

fn healthcheck(url: Option<String>, path: Option<PathBuf>, env: &config::Env) -> Result<(), Failure> {
    let url = match url {
        Some(u) => u,
        None => {
            // only listen and tls are needed: files the config names are not read
            let cfg = config::load_with(config_path(path, env).as_deref(), env, false).map_err(Failure::Config)?;
            health_url(&cfg)?
        }
    };
    let url = url.as_str();
    let rt = runtime()?;
    rt.block_on(async {
        // a liveness probe of our own process: the certificate may be one the probe cannot verify
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .danger_accept_invalid_certs(true)
            .build()
            .map_err(|e| Failure::Other(e.to_string()))?;
        match client.get(url).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(Failure::Other(format!("{url} answered {}", r.status()))),
            Err(e) => Err(Failure::Other(format!("{url} is not answering: {}", e.without_url()))),
        }
    })
}

fn import_config(file: &Path) -> Result<(), Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::Config(vec![format!("cannot read {}: {e}", file.display())]))?;
    let (yaml, warnings) =
        crate::import::convert(&text).map_err(|e| Failure::Config(vec![format!("{}: {e}", file.display())]))?;
    println!("# converted from {} by regate import-config", file.display());
    print!("{yaml}");
    for w in warnings {
        eprintln!("regate: warning: {w}");
    }
    Ok(())
}

/// The registry host clients name in `docker login`: from public_url, else from a listen
/// address that says it (`<registry>` when neither does).
fn registry_host(cfg: &Config) -> String {
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

fn valid_robot_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn robot(cmd: RobotCmd, env: config::Env) -> Result<(), Failure> {
    let cfg_path = match &cmd {
        RobotCmd::Add { config, .. } | RobotCmd::List { config } | RobotCmd::Remove { config, .. } => config.clone(),
    };
    let cfg = load_valid(cfg_path, &env)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let st = StoredCreds::new(Arc::new(open_storage(&cfg)?));
        let io = |e: std::io::Error| Failure::Other(format!("storage: {e}"));
        match cmd {
            RobotCmd::Add {
                name,
                repos,
                actions,
                expires,
                description,
                ..
            } => {
                if !valid_robot_name(&name) {
                    return Err(Failure::Config(vec![format!(
                        "robot name {name:?} may only use letters, digits, '-', '_' and '.'"
                    )]));
                }
                let mut acts = Vec::new();
                for a in actions.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                    acts.push(Action::parse(a).ok_or_else(|| {
                        Failure::Config(vec![format!("--actions: unknown action {a:?} (pull, push, delete, *)")])
                    })?);
                }
                let ttl = parse_duration(&expires).ok_or_else(|| {
                    Failure::Config(vec![format!("--expires {expires:?} is not a duration like 30d")])
                })?;
                let now = crate::util::now_secs();
                let account = format!("{ROBOT_PREFIX}{name}");
                let grants = repos
                    .iter()
                    .map(|r| Grant {
                        repository: r.clone(),
                        actions: acts.clone(),
                    })
                    .collect();
                let exp = if ttl.is_zero() { 0 } else { now + ttl.as_secs() };
                let (rec, secret) = st
                    .create(
                        Kind::Robot,
                        &account,
                        grants,
                        vec![],
                        false,
                        false,
                        exp,
                        &description,
                        now,
                    )
                    .await
                    .map_err(io)?;
                println!("created {account} (id {})", rec.id);
                if exp != 0 {
                    println!("expires {}", crate::util::rfc3339(exp));
                }
                println!("secret (shown once): {secret}");
                println!(
                    "  echo '{secret}' | docker login {} -u '{account}' --password-stdin",
                    registry_host(&cfg)
                );
            }
            RobotCmd::List { .. } => {
                let robots: Vec<_> = st
                    .list()
                    .await
                    .map_err(io)?
                    .into_iter()
                    .filter(|r| r.kind == Kind::Robot)
                    .collect();
                if robots.is_empty() {
                    println!("no robot accounts (create one with: regate robot add NAME --repo PATTERN)");
                }
                for r in robots {
                    let grants: Vec<String> = r
                        .grants
                        .iter()
                        .map(|g| {
                            format!(
                                "{}:{}",
                                g.repository,
                                g.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(",")
                            )
                        })
                        .collect();
                    let exp = if r.expires == 0 {
                        "never".to_owned()
                    } else {
                        crate::util::rfc3339(r.expires)
                    };
                    println!("{}\t{}\texpires {}\t{}", r.account, r.id, exp, grants.join(" "));
                }
            }
            RobotCmd::Remove { name, .. } => {
                let account = format!("{ROBOT_PREFIX}{name}");
                let mut n = 0;
                for r in st
                    .list()
                    .await
                    .map_err(io)?
                    .into_iter()
                    .filter(|r| r.account == account)
                {
                    st.revoke(&r.id).await.map_err(io)?;
                    n += 1;
                }
                if n == 0 {
                    return Err(Failure::Other(format!("no robot named {name}")));
                }
                println!("removed {account} ({n} secret(s))");
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("1y"), None);
    }
}
