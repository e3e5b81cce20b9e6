//! Configuration: YAML (unknown keys are errors), secrets from `KEY_file` or `REGATE_<PATH>`
//! environment variables, validated once into typed values.

mod check;
mod diagnose;
mod load;
pub mod replication;
pub mod secs;

pub use check::check_base_url;
#[cfg(test)]
pub use check::check_template;
#[cfg(test)]
pub use load::parse;
pub use load::{load, load_with, process_env, Env};
pub use secs::parse_duration;

use crate::types::scope::Action;
use ipnet::IpNet;
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub mod trust;

/// A secret string: never printed by `Debug` or `Display`.
#[derive(Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5000))
}
fn default_true() -> bool {
    true
}
fn default_hsts() -> u64 {
    31_536_000
}
fn default_issuer() -> String {
    "regate".into()
}
fn default_ttl() -> u64 {
    300
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default)]
    pub public_url: Option<String>,
    /// Where regate keeps its own files (generated signing key and certificate, generated admin
    /// password, webhook spool); default: the fs root, or `./regate-data` for other backends.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub access: Option<Vec<RuleConfig>>,
    #[serde(default)]
    pub network: NetworkConfig,
    #[serde(default)]
    pub upstream: Option<String>,
    /// Speak HTTP/2 without TLS (h2c, prior knowledge) to an `http://` upstream. `https://`
    /// upstreams negotiate HTTP/2 through ALPN on their own.
    #[serde(default)]
    pub upstream_h2c: bool,
    /// Optional Redis shared by replicas (rate limits and failed sign-in counts).
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    #[serde(default)]
    pub mirror: Option<MirrorConfig>,
    #[serde(default)]
    pub notifications: Vec<NotificationConfig>,
    /// Copying images to and from other registries.
    #[serde(default)]
    pub replication: Vec<replication::ReplicationConfig>,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub gc: GcConfig,
    /// Tag retention per repository pattern, applied by `regate gc` and scheduled runs.
    #[serde(default)]
    pub retention: Vec<RetentionRule>,
    /// Trusted images: signature and scan rules per repository glob (first match applies).
    #[serde(default)]
    pub policy: Vec<trust::TrustRule>,
    #[serde(default)]
    pub scanner: Option<trust::ScannerConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcConfig {
    /// Seconds between garbage collections run by the server itself; 0: never (run `regate gc`).
    #[serde(default, deserialize_with = "secs::secs")]
    pub interval: u64,
    /// Seconds an unreferenced blob (or untagged manifest) must be old before it is deleted.
    #[serde(default = "GcConfig::d_grace", deserialize_with = "secs::secs")]
    pub grace: u64,
    /// Scheduled runs also delete untagged manifests.
    #[serde(default)]
    pub delete_untagged: bool,
    /// Seconds after which an unfinished upload counts as abandoned and is purged.
    #[serde(default = "GcConfig::d_uploads", deserialize_with = "secs::secs")]
    pub upload_max_age: u64,
    /// Seconds between purges of abandoned uploads (and their parts) by the server, whether or
    /// not `interval` schedules full collections; 0: never.
    #[serde(default = "GcConfig::d_purge", deserialize_with = "secs::secs")]
    pub upload_purge_interval: u64,
}

impl GcConfig {
    fn d_grace() -> u64 {
        3600
    }
    fn d_uploads() -> u64 {
        7 * 86_400
    }
    fn d_purge() -> u64 {
        3600
    }
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval: 0,
            grace: Self::d_grace(),
            delete_untagged: false,
            upload_max_age: Self::d_uploads(),
            upload_purge_interval: Self::d_purge(),
        }
    }
}

/// For repositories matching `repository`: keep the newest `keep_last` tags (by push time) and
/// every tag matching `keep_tags`; the other tags are deleted (their manifests then become
/// untagged and are collected with the untagged ones).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    pub repository: String,
    #[serde(default)]
    pub keep_last: Option<usize>,
    #[serde(default)]
    pub keep_tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default = "default_hsts", deserialize_with = "secs::secs")]
    pub hsts_max_age: u64,
    #[serde(default)]
    pub http_redirect_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Fs,
    S3,
    Oss,
    Cos,
    Lfs,
    Memory,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default)]
    pub backend: Backend,
    #[serde(default)]
    pub fs: Option<FsConfig>,
    #[serde(default)]
    pub s3: Option<S3Config>,
    #[serde(default)]
    pub oss: Option<OssConfig>,
    #[serde(default)]
    pub cos: Option<CosConfig>,
    #[serde(default)]
    pub lfs: Option<LfsConfig>,
    #[serde(default)]
    pub redirect: bool,
    /// Lifetime in seconds of the presigned URLs that `redirect` hands out (default 1200).
    #[serde(default = "default_redirect_ttl", deserialize_with = "secs::secs")]
    pub redirect_ttl: u64,
    #[serde(default = "default_true")]
    pub delete: bool,
}

fn default_redirect_ttl() -> u64 {
    1200
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: Backend::Fs,
            fs: None,
            s3: None,
            oss: None,
            cos: None,
            lfs: None,
            redirect: false,
            redirect_ttl: default_redirect_ttl(),
            delete: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    pub root: PathBuf,
    /// fsync blobs before they become visible (survives power loss, not only crashes).
    #[serde(default = "default_true")]
    pub fsync: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub access_key_id: Option<Secret>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    #[serde(default)]
    pub virtual_host_style: bool,
    #[serde(default)]
    pub root: Option<String>,
    /// Multipart part size in bytes for streamed writes (5 MiB to 5 GiB; default 16 MiB, which
    /// with the 10,000-part limit holds blobs up to 156 GiB).
    #[serde(default)]
    pub part_size: Option<u64>,
    /// Retries of a failed request (transient errors only), with backoff and jitter; default 4.
    #[serde(default)]
    pub max_retries: Option<usize>,
    /// Seconds one request (or one streamed part) may take before it is abandoned and retried.
    #[serde(default, deserialize_with = "secs::opt_secs")]
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OssConfig {
    pub bucket: String,
    pub endpoint: String,
    #[serde(default)]
    pub access_key_id: Option<Secret>,
    #[serde(default)]
    pub access_key_secret: Option<Secret>,
    #[serde(default)]
    pub presign_endpoint: Option<String>,
    #[serde(default)]
    pub root: Option<String>,
    /// Multipart part size in bytes for streamed writes (5 MiB to 5 GiB; default 16 MiB, which
    /// with the 10,000-part limit holds blobs up to 156 GiB).
    #[serde(default)]
    pub part_size: Option<u64>,
    /// Retries of a failed request (transient errors only), with backoff and jitter; default 4.
    #[serde(default)]
    pub max_retries: Option<usize>,
    /// Seconds one request (or one streamed part) may take before it is abandoned and retried.
    #[serde(default, deserialize_with = "secs::opt_secs")]
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CosConfig {
    pub bucket: String,
    pub endpoint: String,
    #[serde(default)]
    pub secret_id: Option<Secret>,
    #[serde(default)]
    pub secret_key: Option<Secret>,
    #[serde(default)]
    pub root: Option<String>,
    /// Multipart part size in bytes for streamed writes (5 MiB to 5 GiB; default 16 MiB, which
    /// with the 10,000-part limit holds blobs up to 156 GiB).
    #[serde(default)]
    pub part_size: Option<u64>,
    /// Retries of a failed request (transient errors only), with backoff and jitter; default 4.
    #[serde(default)]
    pub max_retries: Option<usize>,
    /// Seconds one request (or one streamed part) may take before it is abandoned and retried.
    #[serde(default, deserialize_with = "secs::opt_secs")]
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LfsConfig {
    /// The LFS endpoint, e.g. `https://gitee.com/owner/repo.git/info/lfs` (batch API at `{url}/objects/batch`).
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    /// Personal access token (HTTP Basic password).
    #[serde(default)]
    pub token: Option<Secret>,
    /// Where tags, links, upload state and blob records live: a storage section of its own
    /// (`fs`, `s3`, `oss`, `cos` or `memory`); default fs under the data dir.
    #[serde(default)]
    pub metadata: Option<Box<StorageConfig>>,
    /// Seconds a batch request, or a pause within a transfer, may take (default 30).
    #[serde(default, deserialize_with = "secs::opt_secs")]
    pub timeout: Option<u64>,
    /// Retries of a transient failure (connection, 429, 5xx), with backoff; default 4.
    #[serde(default)]
    pub max_retries: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default = "default_issuer")]
    pub issuer: String,
    #[serde(default = "default_ttl", deserialize_with = "secs::secs")]
    pub token_ttl: u64,
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    #[serde(default)]
    pub signing_cert: Option<PathBuf>,
    /// Certificates of earlier signing keys: their tokens keep verifying until they expire.
    #[serde(default)]
    pub verification_certs: Vec<PathBuf>,
    #[serde(default)]
    pub htpasswd: Option<PathBuf>,
    #[serde(default)]
    pub anonymous_pull: bool,
    #[serde(default)]
    pub gitee: Option<GiteeConfig>,
    /// Lifetime of refresh (identity) tokens handed to `docker login`, in seconds; 0 = no expiry.
    #[serde(default, deserialize_with = "secs::opt_secs")]
    pub refresh_token_ttl: Option<u64>,
    /// Keyless CI: OIDC issuers whose ID tokens are accepted as passwords.
    #[serde(default)]
    pub oidc: Vec<OidcConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The username CI passes to `docker login` (`oidc` picks the provider by the token's `iss`).
    pub name: String,
    /// The exact `iss`; keys are discovered from `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// The `aud` a token must carry.
    pub audience: String,
    /// The account rules and the audit log see: a template over claims; default `NAME:{sub}`.
    #[serde(default)]
    pub account: Option<String>,
    /// Claims (globs, matched whole) every sign-in must match.
    #[serde(default)]
    pub require: std::collections::BTreeMap<String, String>,
    /// The JWKS: a URL, or a file (air-gapped clusters); default: from discovery.
    #[serde(default)]
    pub jwks_url: Option<String>,
}

impl OidcConfig {
    pub fn account_template(&self) -> String {
        self.account.clone().unwrap_or_else(|| format!("{}:{{sub}}", self.name))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GiteeConfig {
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub api_url: Option<String>,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<Secret>,
    #[serde(default)]
    pub redirect_url: Option<String>,
    #[serde(default)]
    pub password_grant: bool,
    /// OAuth scopes to ask for; default: what the access rules need (`user_info`, plus
    /// `projects` for repo_permission rules, `groups`/`enterprises` for gitee-org/-enterprise groups).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// A Gitee token (e.g. a bot account's personal access token) used for permission lookups
    /// when the user's own token is not at hand.
    #[serde(default)]
    pub service_token: Option<Secret>,
    /// Seconds one call to Gitee may take.
    #[serde(default = "GiteeConfig::d_timeout", deserialize_with = "secs::secs")]
    pub timeout: u64,
    /// Seconds Gitee's answers (credential checks, permissions) are reused.
    #[serde(default = "GiteeConfig::d_cache_ttl", deserialize_with = "secs::secs")]
    pub cache_ttl: u64,
    /// Seconds a browser session lasts.
    #[serde(default = "GiteeConfig::d_session_ttl", deserialize_with = "secs::secs")]
    pub session_ttl: u64,
}

impl GiteeConfig {
    fn d_timeout() -> u64 {
        5
    }
    fn d_cache_ttl() -> u64 {
        60
    }
    fn d_session_ttl() -> u64 {
        12 * 3600
    }
    pub fn base_url(&self) -> String {
        self.base_url
            .as_deref()
            .unwrap_or("https://gitee.com")
            .trim_end_matches('/')
            .to_owned()
    }
    pub fn api_url(&self) -> String {
        match &self.api_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("{}/api/v5", self.base_url()),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            service: None,
            issuer: default_issuer(),
            token_ttl: default_ttl(),
            signing_key: None,
            signing_cert: None,
            verification_certs: Vec::new(),
            htpasswd: None,
            anonymous_pull: false,
            gitee: None,
            refresh_token_ttl: None,
            oidc: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    #[serde(default)]
    pub account: Option<OneOrMany>,
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    #[serde(default)]
    pub repository: Option<String>,
    #[serde(default)]
    pub networks: Option<Vec<IpNet>>,
    #[serde(default)]
    pub actions: Vec<Action>,
    /// This rule also grants `registry:catalog:*` (the catalog lists only pullable names).
    #[serde(default)]
    pub catalog: bool,
    /// `gitee: repo_permission`
    #[serde(default)]
    pub gitee: Option<String>,
    /// `oidc: NAME`: the rule is for CI jobs signed in through that `auth.oidc` provider.
    #[serde(default)]
    pub oidc: Option<String>,
    /// Claims of the job's ID token that must match (a glob each, matched whole); needs `oidc`.
    #[serde(default)]
    pub claims: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    #[serde(default)]
    pub allow: Vec<IpNet>,
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// The header trusted proxies put the client address in (`X-Forwarded-For`, `Forwarded`,
    /// `X-Real-IP`, ...); absent: `Forwarded` or `X-Forwarded-For`, whichever a request carries.
    #[serde(default)]
    pub client_address_header: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port/db` (or `rediss://` for TLS); a secret, as it may hold a password.
    pub url: Secret,
    #[serde(default = "RedisConfig::d_prefix")]
    pub key_prefix: String,
}

impl RedisConfig {
    fn d_prefix() -> String {
        "regate:".into()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// Seconds a mirrored tag is served before it is checked against the remote again.
    #[serde(default = "MirrorConfig::d_ttl", deserialize_with = "secs::secs")]
    pub tag_ttl: u64,
}

impl MirrorConfig {
    fn d_ttl() -> u64 {
        300
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationConfig {
    pub url: String,
    #[serde(default)]
    pub secret: Option<Secret>,
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// Extra headers sent with every delivery (e.g. an Authorization for the receiver).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, Secret>,
    /// Only events for repositories matching one of these globs; default all.
    #[serde(default)]
    pub repositories: Option<Vec<String>>,
    /// Only events whose target has one of these media types (e.g. only manifests); default all.
    #[serde(default)]
    pub media_types: Option<Vec<String>>,
    /// Seconds one delivery attempt may take.
    #[serde(default = "NotificationConfig::d_timeout", deserialize_with = "secs::secs")]
    pub timeout: u64,
    /// Longest wait between retries, seconds (backoff doubles from 1 s up to this).
    #[serde(default = "NotificationConfig::d_backoff", deserialize_with = "secs::secs")]
    pub max_backoff: u64,
    /// Events older than this many seconds that still could not be delivered are dropped.
    #[serde(default = "NotificationConfig::d_max_age", deserialize_with = "secs::secs")]
    pub max_age: u64,
    /// Most events kept waiting for this endpoint; further ones are dropped and counted.
    #[serde(default = "NotificationConfig::d_queue")]
    pub queue_size: usize,
}

impl NotificationConfig {
    fn d_timeout() -> u64 {
        10
    }
    fn d_backoff() -> u64 {
        300
    }
    fn d_max_age() -> u64 {
        86_400
    }
    fn d_queue() -> usize {
        10_000
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest manifest accepted, bytes.
    #[serde(default = "LimitsConfig::d_manifest")]
    pub max_manifest_bytes: u64,
    /// Seconds a request body may stall before the request is dropped.
    #[serde(default = "LimitsConfig::d_idle", deserialize_with = "secs::secs")]
    pub body_idle_timeout: u64,
    /// Seconds a client has to send its request headers.
    #[serde(default = "LimitsConfig::d_header", deserialize_with = "secs::secs")]
    pub header_read_timeout: u64,
    /// Concurrent connections accepted; further ones wait.
    #[serde(default = "LimitsConfig::d_conns")]
    pub max_connections: usize,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[serde(default = "LimitsConfig::d_grace", deserialize_with = "secs::secs")]
    pub shutdown_grace: u64,
    /// `/token` requests per second per client address (bursts of twice that); 0: no limit.
    #[serde(default = "LimitsConfig::d_token_rate")]
    pub token_requests_per_second: u32,
    /// Failed sign-ins per minute per client address and per account; 0: no limit.
    #[serde(default = "LimitsConfig::d_failed")]
    pub failed_auth_per_minute: u32,
}

impl LimitsConfig {
    fn d_manifest() -> u64 {
        4 << 20
    }
    fn d_idle() -> u64 {
        120
    }
    fn d_header() -> u64 {
        10
    }
    fn d_conns() -> usize {
        4096
    }
    fn d_grace() -> u64 {
        30
    }
    fn d_token_rate() -> u32 {
        500
    }
    fn d_failed() -> u32 {
        30
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_manifest_bytes: Self::d_manifest(),
            body_idle_timeout: Self::d_idle(),
            header_read_timeout: Self::d_header(),
            max_connections: Self::d_conns(),
            shutdown_grace: Self::d_grace(),
            token_requests_per_second: Self::d_token_rate(),
            failed_auth_per_minute: Self::d_failed(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    #[serde(default)]
    pub format: Option<String>,
    /// Write the audit stream (who did what where) to this file as JSON lines.
    #[serde(default)]
    pub audit_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        // an empty mapping deserialises into every default
        #[allow(clippy::expect_used)]
        serde_yaml_ng::from_value(Value::Mapping(Default::default())).expect("defaults deserialise")
    }
}

impl Config {
    /// Where regate keeps its own files (keys, admin password): `data_dir`, else the fs root, or
    /// `./regate-data` for other backends.
    pub fn data_dir(&self) -> PathBuf {
        if let Some(d) = &self.data_dir {
            return d.clone();
        }
        match (&self.storage.backend, &self.storage.fs) {
            (Backend::Fs, Some(fs)) => fs.root.clone(),
            // the LFS backend's own files (keys, passwords) go beside its fs metadata store
            (Backend::Lfs, _) => match self.storage.lfs.as_ref().and_then(|l| l.metadata.as_deref()) {
                Some(StorageConfig {
                    backend: Backend::Fs,
                    fs: Some(fs),
                    ..
                }) => fs.root.clone(),
                _ => PathBuf::from("./regate-data"),
            },
            _ => PathBuf::from("./regate-data"),
        }
    }

    pub fn signing_key_path(&self) -> PathBuf {
        self.auth
            .signing_key
            .clone()
            .unwrap_or_else(|| self.data_dir().join("token.key"))
    }

    pub fn signing_cert_path(&self) -> PathBuf {
        self.auth
            .signing_cert
            .clone()
            .unwrap_or_else(|| self.data_dir().join("token.crt"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oidc_providers_and_rules_are_checked() {
        let ok = r#"
auth:
  oidc:
    - { name: gitlab, issuer: https://gitlab.example.com, audience: reg.example.com, account: "gitlab:{project_path}", require: { ref_protected: "true" } }
    - { name: k8s, issuer: https://kubernetes.default.svc, audience: reg, jwks_url: /etc/regate/k8s-jwks.json }
access:
  - { oidc: gitlab, claims: { project_path: "team/*", ref: main }, repository: "team/*", actions: [pull, push] }
"#;
        let c = parse(ok, "t", &vec![]).unwrap();
        assert!(c.validate(false).is_empty(), "{:?}", c.validate(false));
        assert_eq!(c.auth.oidc[1].account_template(), "k8s:{sub}");
        let bad = r#"
auth:
  oidc:
    - { name: oidc, issuer: https://a.example, audience: r }
    - { name: gl, issuer: http://gitlab.example.com, audience: "", account: "{project_path}" }
    - { name: gl, issuer: http://127.0.0.1:8080, audience: r, jwks_url: "http://keys.example.com/jwks" }
access:
  - { oidc: nosuch, repository: "x/*", actions: [pull] }
  - { claims: { ref: main }, repository: "x/*", actions: [pull] }
"#;
        let e = parse(bad, "t", &vec![]).unwrap().validate(false).join("\n");
        for want in [
            "auth.oidc[0].name: \"oidc\" is reserved",
            "auth.oidc[1].issuer: must be https://",
            "auth.oidc[1].audience: must not be empty",
            "auth.oidc[1].account: \"{project_path}\" must contain a ':'",
            "auth.oidc[2].name: \"gl\" is used by another provider",
            "auth.oidc[2].jwks_url: must be https://",
            "access[0].oidc: no provider \"nosuch\"",
            "access[1].claims: needs oidc",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
    }

    #[test]
    fn defaults() {
        let c = parse("", "t", &vec![]).unwrap();
        assert_eq!(c.listen, default_listen());
        assert_eq!(c.storage.backend, Backend::Fs);
        assert!(c.storage.delete);
        assert_eq!(c.auth.token_ttl, 300);
        assert_eq!(c.data_dir(), PathBuf::from("./regate-data"));
        assert!(c.validate(false).is_empty());
    }

    #[test]
    fn contract_example_parses() {
        let y = r#"
listen: 127.0.0.1:5000
public_url: https://reg.example.com
tls: { cert: /etc/regate/tls.crt, key: /etc/regate/tls.key, hsts_max_age: 31536000, http_redirect_listen: 0.0.0.0:80 }
storage:
  backend: fs
  fs: { root: /var/lib/regate }
  s3: { bucket: b, region: us-east-1, endpoint: http://127.0.0.1:9000, access_key_id: AK, secret_access_key: SK, virtual_host_style: false }
  oss: { bucket: b, endpoint: https://oss-cn-hangzhou.aliyuncs.com, access_key_id: AK, access_key_secret: SK, presign_endpoint: https://cdn.example.com }
  cos: { bucket: b-1250000000, endpoint: https://cos.ap-guangzhou.myqcloud.com, secret_id: ID, secret_key: KEY }
  lfs: { url: https://gitee.com/owner/repo.git/info/lfs, username: u, token: t, metadata: { fs: { root: /var/lib/regate-meta } } }
  redirect: false
  delete: true
auth:
  service: reg.example.com
  issuer: regate
  token_ttl: 300
  signing_key: /etc/regate/token.key
  signing_cert: /etc/regate/token.crt
  htpasswd: /etc/regate/htpasswd
  anonymous_pull: false
  gitee:
    base_url: https://gitee.com
    api_url: https://gitee.com/api/v5
    client_id: ID
    client_secret: SECRET
    redirect_url: https://reg.example.com/login/callback
    password_grant: false
access:
  - { account: admin, repository: "*", actions: [pull, push, delete] }
  - { repository: "${account}/*", actions: [pull, push] }
  - { gitee: repo_permission }
network:
  allow: [10.0.0.0/8, 127.0.0.1/32]
  trusted_proxies: []
upstream: http://127.0.0.1:5001
mirror: { url: https://registry.example.com, username: u, password: p }
notifications:
  - url: https://ci.example.com/hook
    secret: s3cr3t
    events: [push, pull, delete]
"#;
        let c = parse(y, "t", &vec![]).unwrap();
        assert_eq!(c.access.as_ref().unwrap().len(), 3);
        assert!(c.validate(false).is_empty(), "{:?}", c.validate(false));
        // secrets never show in Debug output
        let dbg = format!("{c:?}");
        for s in ["SECRET", "\"SK\"", "s3cr3t", "\"KEY\""] {
            assert!(!dbg.contains(s), "{s} leaked");
        }
    }

    #[test]
    fn unknown_keys_and_bad_types_fail() {
        let e = parse("listen: 127.0.0.1:5000\nbogus: 1\n", "f.yaml", &vec![]).unwrap_err();
        assert!(e[0].contains("bogus") && e[0].contains("f.yaml"), "{e:?}");
        let e = parse("auth: { token_ttl: soon }\n", "f.yaml", &vec![]).unwrap_err();
        assert!(e[0].contains("token_ttl") || e[0].contains("invalid type"), "{e:?}");
        let e = parse("network: { allow: [notacidr] }\n", "f.yaml", &vec![]).unwrap_err();
        assert!(!e.is_empty());
    }

    #[test]
    fn env_overrides_and_secret_files() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("cs");
        std::fs::write(&f, "from-file\n").unwrap();
        let y = format!(
            "auth:\n  gitee:\n    client_id: X\n    client_secret_file: {}\n",
            f.display()
        );
        let c = parse(&y, "t", &vec![]).unwrap();
        assert_eq!(
            c.auth.gitee.as_ref().unwrap().client_secret.as_ref().unwrap().expose(),
            "from-file"
        );
        let env = vec![
            ("REGATE_AUTH__GITEE__CLIENT_SECRET".to_string(), "12345".to_string()),
            ("REGATE_AUTH__TOKEN_TTL".to_string(), "60".to_string()),
            ("REGATE_LISTEN".to_string(), "127.0.0.1:6000".to_string()),
            ("REGATE_CONFIG".to_string(), "ignored".to_string()),
        ];
        let c = parse(&y, "t", &env).unwrap();
        assert_eq!(
            c.auth.gitee.as_ref().unwrap().client_secret.as_ref().unwrap().expose(),
            "12345"
        );
        assert_eq!(c.auth.token_ttl, 60);
        assert_eq!(c.listen.port(), 6000);
        let e = parse("", "t", &vec![("REGATE_NOPE".into(), "1".into())]).unwrap_err();
        assert!(e[0].contains("nope"), "{e:?}");
    }

    #[test]
    fn semantic_validation() {
        let c = parse(
            "storage: { backend: s3 }\naccess:\n  - { gitee: repo_permission }\n  - { account: x }\n",
            "t",
            &vec![],
        )
        .unwrap();
        let e = c.validate(false);
        assert!(e.iter().any(|m| m.contains("storage.s3")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("access[0]")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("access[1]")), "{e:?}");
    }

    #[test]
    fn object_storage_validation() {
        let errors = |y: &str| parse(y, "t", &vec![]).unwrap().validate(false);
        let ok = "storage: { backend: oss, oss: { bucket: b, endpoint: https://oss-cn-hangzhou.aliyuncs.com, \
                  presign_endpoint: https://cdn.example.com, part_size: 5242880, max_retries: 3, timeout: 30 } }\n";
        assert_eq!(errors(ok), Vec::<String>::new());
        let e = errors(
            "storage: { backend: s3, s3: { bucket: b, endpoint: minio:9000, part_size: 1048576, timeout: 0 }, \
             redirect_ttl: 604801 }\n",
        );
        for key in [
            "storage.s3.endpoint",
            "storage.s3.part_size",
            "storage.s3.timeout",
            "storage.redirect_ttl",
        ] {
            assert!(e.iter().any(|m| m.starts_with(key)), "{key}: {e:?}");
        }
        let e = errors("storage: { backend: cos, cos: { bucket: b-1, endpoint: https://c, max_retries: 50 } }\n");
        assert!(e.iter().any(|m| m.starts_with("storage.cos.max_retries")), "{e:?}");
    }

    #[test]
    fn lfs_validation() {
        let errors = |y: &str| parse(y, "t", &vec![]).unwrap().validate(false);
        let ok = "storage: { backend: lfs, lfs: { url: https://gitee.com/o/r.git/info/lfs, username: u, token: t, \
                  metadata: { fs: { root: /var/lib/regate-meta } }, timeout: 20, max_retries: 2 } }\n";
        assert_eq!(errors(ok), Vec::<String>::new());
        let c = parse(ok, "t", &vec![]).unwrap();
        assert_eq!(c.data_dir(), PathBuf::from("/var/lib/regate-meta"));
        assert!(!format!("{c:?}").contains("token: Some(Secret(\"t\"))"));
        let e = errors(
            "storage: { backend: lfs, lfs: { url: gitee.com/o/r, token: t, timeout: 0, \
             metadata: { backend: s3, redirect_ttl: 0 } } }\n",
        );
        for key in [
            "storage.lfs.url",
            "storage.lfs: username and token",
            "storage.lfs.timeout",
            "storage.lfs.metadata.s3",
            "storage.lfs.metadata.redirect_ttl",
        ] {
            assert!(e.iter().any(|m| m.starts_with(key)), "{key}: {e:?}");
        }
        let e = errors("storage: { backend: lfs, lfs: { url: http://x, metadata: { backend: lfs } } }\n");
        assert!(e.iter().any(|m| m.starts_with("storage.lfs.metadata.backend")), "{e:?}");
        let e = errors("storage: { backend: lfs }\n");
        assert!(e.iter().any(|m| m.starts_with("storage.lfs: required")), "{e:?}");
    }
}
