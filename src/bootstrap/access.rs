//! The parts that decide who is who and what they may do: credentials (htpasswd, the generated
//! admin, stored robots and CLI passwords, OIDC providers, Gitee), the access policy.

use super::Failure;
use crate::auth::credentials::Credentials;
use crate::auth::policy::{Glob, Policy, Rule, StaticRule};
use crate::auth::stored::StoredCreds;
use crate::auth::token::TokenKeys;
use crate::config::{self, Config};
use crate::storage::Storage;
use crate::types::scope::Action;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The Gitee client: endpoints, scopes the rules need, sealed token storage and cookie signing
/// keyed by the token signing key (shared by replicas).
pub fn gitee_service(
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
    )
    .map_err(|m| Failure::Config(vec![m]))
}

/// The keyless-CI providers of `auth.oidc`, each knowing the claims its rules look at.
pub fn oidc_providers(cfg: &Config) -> Result<crate::auth::oidc::Providers, String> {
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
pub fn saved_admin_password(dir: &Path) -> Result<Option<String>, Failure> {
    let p = dir.join("admin-password");
    match std::fs::read_to_string(&p) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Failure::Other(format!("cannot read {}: {e}", p.display()))),
    }
}

pub fn new_admin_password() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 18]>())
}

/// Saves a newly generated admin password as `<data>/admin-password` (0600). Called only once the
/// server has its listener and everything else it needs, so a start that fails saves nothing.
pub fn save_admin_password(dir: &Path, pw: &str) -> Result<PathBuf, Failure> {
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
pub fn ephemeral_signing_key(issuer: &str) -> Result<(PathBuf, PathBuf, Vec<std::fs::File>, String), Failure> {
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd};
    let kp = crate::auth::token::generate_key().map_err(Failure::Other)?;
    let cert = crate::auth::token::self_signed(&kp, issuer).map_err(Failure::Other)?;
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

/// The generated admin when no htpasswd is configured: (password, generated by this start).
pub fn admin_password(cfg: &Config, data: &Path, in_memory: bool) -> Result<Option<(String, bool)>, Failure> {
    if cfg.auth.htpasswd.is_some() {
        return Ok(None);
    }
    Ok(match saved_admin_password(data)? {
        Some(pw) if !in_memory => Some((pw, false)),
        _ => Some((new_admin_password(), true)),
    })
}

/// Says how to sign in as the generated admin; a newly generated password is saved only now
/// that the server is about to serve (a start that failed saved nothing).
pub fn announce_admin(
    cfg: &Config,
    admin: &Option<(String, bool)>,
    data: &Path,
    in_memory: bool,
    public_url: &str,
) -> Result<(), Failure> {
    match admin {
        Some((pw, true)) => {
            let host = super::host_of(public_url);
            if in_memory {
                println!("regate: generated the admin password (storage is memory: kept in this process only, a new one on every start):");
            } else {
                let p = save_admin_password(data, pw)?;
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
    Ok(())
}

/// The token signing key's files: the configured (or generated) ones, or, with memory storage
/// and no `auth.signing_key`, anonymous memory files that live as long as this value.
pub struct SigningKey {
    key: PathBuf,
    cert: PathBuf,
    memory_pem: Option<String>,
    _files: Vec<std::fs::File>,
}

impl SigningKey {
    pub fn open(cfg: &Config, in_memory: bool) -> Result<Self, Failure> {
        #[cfg(target_os = "linux")]
        if in_memory && cfg.auth.signing_key.is_none() {
            let (key, cert, files, pem) = ephemeral_signing_key(&cfg.auth.issuer)?;
            return Ok(SigningKey {
                key,
                cert,
                memory_pem: Some(pem),
                _files: files,
            });
        }
        let _ = in_memory;
        Ok(SigningKey {
            key: cfg.signing_key_path(),
            cert: cfg.signing_cert_path(),
            memory_pem: None,
            _files: Vec::new(),
        })
    }

    pub fn in_memory(&self) -> bool {
        self.memory_pem.is_some()
    }

    /// Loads (or on first start generates) the keys tokens are signed and verified with.
    pub fn token_keys(&self, cfg: &Config, service: &str) -> Result<TokenKeys, Failure> {
        TokenKeys::load_or_generate(
            &self.key,
            &self.cert,
            &cfg.auth.verification_certs,
            &cfg.auth.issuer,
            service,
            cfg.auth.token_ttl,
        )
        .map_err(|m| Failure::Config(vec![m]))
    }

    /// The key's bytes: what Gitee's sealed tokens and session cookies are keyed by.
    pub fn master(&self) -> Result<Vec<u8>, Failure> {
        match &self.memory_pem {
            Some(pem) => Ok(pem.as_bytes().to_vec()),
            None => std::fs::read(&self.key)
                .map_err(|e| Failure::Other(format!("auth.signing_key {}: {e}", self.key.display()))),
        }
    }
}

/// Who can sign in: htpasswd users or the generated admin, stored robots and CLI passwords,
/// OIDC providers, Gitee; with the failure limit, shared between replicas when Redis is set.
pub fn credentials(
    cfg: &Config,
    admin: &Option<(String, bool)>,
    store: &Arc<Storage>,
    shared: Option<&Arc<crate::ratelimit::Shared>>,
    signing: &SigningKey,
    public_url: &str,
) -> Result<(Credentials, Option<Arc<crate::gitee::Gitee>>), Failure> {
    let mut creds = Credentials::new(
        cfg.auth.htpasswd.as_deref(),
        admin.as_ref().map(|(p, _)| p.clone()),
        Some(Arc::new(StoredCreds::new(store.clone()))),
    )
    .map(|c| c.with_failure_limit(cfg.limits.failed_auth_per_minute))
    .map_err(|m| Failure::Config(vec![m]))?;
    if !cfg.auth.oidc.is_empty() {
        creds = creds.with_oidc(Arc::new(oidc_providers(cfg).map_err(|m| Failure::Config(vec![m]))?));
    }
    if let Some(s) = shared {
        creds = creds.with_shared_failures(s.clone());
    }
    let mut gitee = None;
    if let Some(g) = &cfg.auth.gitee {
        let master = signing.master()?;
        let client = Arc::new(gitee_service(cfg, g, public_url, store, &master)?);
        creds = creds.with_source(client.clone());
        gitee = Some(client);
    }
    Ok((creds, gitee))
}
