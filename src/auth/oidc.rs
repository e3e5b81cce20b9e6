//! Keyless CI sign-in: the OIDC ID token a CI platform mints for a job (GitLab CI `id_tokens`,
//! GitHub Actions, a Kubernetes projected service-account token, any issuer with discovery) is
//! the password, the provider's name the username.
//!
//! Every field of the token is hostile until checked: its size is bounded; its header may not
//! point at keys (`jku`, `x5u`, `jwk`, `x5c` are refused, never fetched); the key comes from the
//! issuer's JWKS by `kid`, and the key decides the algorithm (an RSA key verifies RS256 only, a
//! P-256 key ES256, an Ed25519 key EdDSA), so `none`, HMAC and algorithm confusion cannot pass;
//! `iss` must equal the provider's issuer exactly, `aud` must contain its audience, `exp`, `nbf`
//! and `iat` are checked with a minute's leeway. The JWKS is refreshed when older than five
//! minutes (at most one attempt a minute) and once when a token names an unknown `kid` (at most
//! one such refetch every ten seconds, so a flood of invented `kid`s costs the issuer nothing),
//! and the last good keys are kept when the issuer does not answer.

use super::policy::Glob;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest ID token accepted, bytes (GitHub's and GitLab's are 1-2 KiB).
const MAX_TOKEN: usize = 16 * 1024;
const LEEWAY: u64 = 60;
/// Keys older than this are refreshed on the next use.
const MAX_AGE: Duration = Duration::from_secs(300);
/// No two refreshes of stale keys closer than this.
const MIN_INTERVAL: Duration = Duration::from_secs(60);
/// No two refetches for an unknown `kid` closer than this, whatever tokens arrive.
const MIN_KID_INTERVAL: Duration = Duration::from_secs(10);
/// Largest JWKS or discovery document read.
const MAX_DOC: usize = 1 << 20;

/// A provider as configured (`auth.oidc[]`).
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub issuer: String,
    pub audience: String,
    /// Template over claims, e.g. `gitlab:{project_path}`.
    pub account: String,
    pub require: BTreeMap<String, String>,
    /// A URL, a file path, or `None` for discovery from the issuer.
    pub jwks_url: Option<String>,
    /// Claim names the access rules for this provider look at (recorded in the audit log).
    pub rule_claims: Vec<String>,
}

/// A verified sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcLogin {
    pub provider: String,
    pub subject: String,
    pub account: String,
    /// The token's claims, flattened (`kubernetes.io.namespace`), as strings.
    pub claims: BTreeMap<String, String>,
    /// The ID token's `exp`: nothing issued on this sign-in may outlive it.
    pub expires: u64,
    /// The claims `require` and the rules name, with their values, for the audit log.
    pub matched: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OidcError {
    /// The token is not acceptable (the message says why; it is logged, never sent).
    Refused(String),
    /// The issuer's keys cannot be had.
    Unavailable(String),
}

enum JwksSource {
    Url(String),
    File(PathBuf),
    Discover,
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

#[derive(Default)]
struct KeySet {
    keys: Vec<Arc<Key>>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
    kid_refetched: Option<Instant>,
    jwks_uri: Option<String>,
}

pub struct Provider {
    cfg: ProviderConfig,
    require: Vec<(String, Glob)>,
    source: JwksSource,
    keys: tokio::sync::Mutex<KeySet>,
    http: reqwest::Client,
}

/// The configured providers.
pub struct Providers {
    list: Vec<Arc<Provider>>,
}

/// Whether a password looks like a JWT (three base64url parts, a JSON header).
pub fn looks_like_jwt(s: &str) -> bool {
    s.starts_with("eyJ") && s.split('.').count() == 3 && s.len() <= MAX_TOKEN
}

fn b64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// The unverified payload of a JWT (only to pick a provider by `iss`; nothing is trusted from it).
fn peek_claims(token: &str) -> Option<serde_json::Map<String, Value>> {
    let body = token.split('.').nth(1)?;
    serde_json::from_slice(&b64(body)?).ok()
}

/// Claims flattened to strings: nested objects joined with `.`, numbers and booleans as written,
/// arrays left out (`aud` is checked on its own).
pub fn flatten(claims: &serde_json::Map<String, Value>) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
        match v {
            Value::String(s) => {
                out.insert(prefix.to_owned(), s.clone());
            }
            Value::Number(n) => {
                out.insert(prefix.to_owned(), n.to_string());
            }
            Value::Bool(b) => {
                out.insert(prefix.to_owned(), b.to_string());
            }
            Value::Object(m) => {
                for (k, v) in m {
                    walk(&format!("{prefix}.{k}"), v, out);
                }
            }
            Value::Array(_) | Value::Null => {}
        }
    }
    let mut out = BTreeMap::new();
    for (k, v) in claims {
        walk(k, v, &mut out);
    }
    out
}

/// Fills `{claim}` placeholders; `None` when one is missing or empty.
pub fn render(template: &str, claims: &BTreeMap<String, String>) -> Option<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let j = after.find('}')?;
        let v = claims.get(&after[..j]).filter(|v| !v.is_empty())?;
        out.push_str(v);
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    Some(out)
}

fn account_ok(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= 256
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@'))
}

/// The algorithm a published key verifies, decided by the key alone.
fn key_from_jwk(j: &Value) -> Option<Key> {
    let s = |k: &str| j.get(k).and_then(Value::as_str);
    if s("use").is_some_and(|u| u != "sig") {
        return None;
    }
    let (alg, key) = match s("kty")? {
        "RSA" => {
            let alg = match s("alg") {
                None | Some("RS256") => Algorithm::RS256,
                Some("RS384") => Algorithm::RS384,
                Some("RS512") => Algorithm::RS512,
                Some("PS256") => Algorithm::PS256,
                Some("PS384") => Algorithm::PS384,
                Some("PS512") => Algorithm::PS512,
                Some(_) => return None,
            };
            (alg, DecodingKey::from_rsa_components(s("n")?, s("e")?).ok()?)
        }
        "EC" => {
            let alg = match (s("crv")?, s("alg")) {
                ("P-256", None | Some("ES256")) => Algorithm::ES256,
                ("P-384", None | Some("ES384")) => Algorithm::ES384,
                _ => return None,
            };
            (alg, DecodingKey::from_ec_components(s("x")?, s("y")?).ok()?)
        }
        "OKP" => match (s("crv")?, s("alg")) {
            ("Ed25519", None | Some("EdDSA") | Some("Ed25519")) => {
                (Algorithm::EdDSA, DecodingKey::from_ed_components(s("x")?).ok()?)
            }
            _ => return None,
        },
        _ => return None,
    };
    Some(Key {
        kid: s("kid").map(str::to_owned),
        alg,
        key,
    })
}

fn parse_jwks(bytes: &[u8]) -> Result<Vec<Arc<Key>>, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("JWKS is not JSON: {e}"))?;
    let keys = v
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("JWKS has no \"keys\" array")?;
    let out: Vec<Arc<Key>> = keys.iter().filter_map(key_from_jwk).map(Arc::new).collect();
    if out.is_empty() {
        return Err("JWKS has no usable signing key (RSA, P-256/P-384, Ed25519)".into());
    }
    Ok(out)
}

impl Provider {
    pub fn new(cfg: ProviderConfig, http: reqwest::Client) -> Self {
        let source = match &cfg.jwks_url {
            Some(u) if u.starts_with("https://") || u.starts_with("http://") => JwksSource::Url(u.clone()),
            Some(p) => JwksSource::File(PathBuf::from(p)),
            None => JwksSource::Discover,
        };
        let require = cfg.require.iter().map(|(k, v)| (k.clone(), Glob::new(v))).collect();
        Provider {
            cfg,
            require,
            source,
            keys: tokio::sync::Mutex::new(KeySet::default()),
            http,
        }
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.cfg
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let r = self.http.get(url).send().await.map_err(|e| format!("{url}: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("{url}: HTTP {}", r.status()));
        }
        if r.content_length().is_some_and(|n| n as usize > MAX_DOC) {
            return Err(format!("{url}: document too large"));
        }
        let b = r.bytes().await.map_err(|e| format!("{url}: {e}"))?;
        if b.len() > MAX_DOC {
            return Err(format!("{url}: document too large"));
        }
        Ok(b.to_vec())
    }

    async fn fetch(&self, set: &mut KeySet) -> Result<Vec<Arc<Key>>, String> {
        let bytes = match &self.source {
            JwksSource::File(p) => tokio::fs::read(p).await.map_err(|e| format!("{}: {e}", p.display()))?,
            JwksSource::Url(u) => self.get(u).await?,
            JwksSource::Discover => {
                let uri = match &set.jwks_uri {
                    Some(u) => u.clone(),
                    None => {
                        let url = format!(
                            "{}/.well-known/openid-configuration",
                            self.cfg.issuer.trim_end_matches('/')
                        );
                        let doc: Value =
                            serde_json::from_slice(&self.get(&url).await?).map_err(|e| format!("{url}: {e}"))?;
                        if doc.get("issuer").and_then(Value::as_str) != Some(self.cfg.issuer.as_str()) {
                            return Err(format!("{url}: its issuer is not {}", self.cfg.issuer));
                        }
                        let u = doc
                            .get("jwks_uri")
                            .and_then(Value::as_str)
                            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
                            .ok_or_else(|| format!("{url}: no jwks_uri"))?
                            .to_owned();
                        set.jwks_uri = Some(u.clone());
                        u
                    }
                };
                self.get(&uri).await?
            }
        };
        parse_jwks(&bytes)
    }

    /// The keys, refreshed when stale (or, with `unknown_kid`, when a token names a key not in
    /// them), at most once per [`MIN_INTERVAL`]; the last good keys when the issuer fails.
    async fn keys(&self, unknown_kid: bool) -> Result<Vec<Arc<Key>>, OidcError> {
        let mut set = self.keys.lock().await;
        let stale = set.fetched.is_none_or(|t| t.elapsed() >= MAX_AGE)
            && set.attempted.is_none_or(|t| t.elapsed() >= MIN_INTERVAL);
        let for_kid = unknown_kid && set.kid_refetched.is_none_or(|t| t.elapsed() >= MIN_KID_INTERVAL);
        if stale || for_kid {
            set.attempted = Some(Instant::now());
            if for_kid {
                set.kid_refetched = set.attempted;
            }
            match self.fetch(&mut set).await {
                Ok(k) => {
                    set.keys = k;
                    set.fetched = Some(Instant::now());
                }
                Err(e) => {
                    // discovery is looked up again next time
                    set.jwks_uri = None;
                    tracing::warn!(provider = %self.cfg.name, error = %e, kept = set.keys.len(), "OIDC keys could not be fetched");
                }
            }
        }
        if set.keys.is_empty() {
            return Err(OidcError::Unavailable(format!(
                "the signing keys of {} cannot be fetched",
                self.cfg.issuer
            )));
        }
        Ok(set.keys.clone())
    }

    /// Verifies `token` as an ID token of this provider at time `now`.
    pub async fn verify(&self, token: &str, now: u64) -> Result<OidcLogin, OidcError> {
        let refused = |m: &str| Err(OidcError::Refused(m.to_owned()));
        if token.len() > MAX_TOKEN {
            return refused("token too large");
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| OidcError::Refused(format!("bad header: {e}")))?;
        if header.jku.is_some() || header.jwk.is_some() || header.x5u.is_some() || header.x5c.is_some() {
            return refused("the token names its own key (jku/jwk/x5u/x5c)");
        }
        let pick = |keys: &[Arc<Key>]| -> Vec<Arc<Key>> {
            keys.iter()
                .filter(|k| match (&header.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    (Some(_), None) => false,
                    (None, _) => true,
                })
                .cloned()
                .collect()
        };
        let mut candidates = pick(&self.keys(false).await?);
        if candidates.is_empty() && header.kid.is_some() {
            candidates = pick(&self.keys(true).await?);
        }
        if candidates.is_empty() {
            return refused("no key of the issuer has the token's kid");
        }
        let mut last = String::from("no key verifies the token");
        let mut verified = None;
        for k in candidates {
            // the key decides the algorithm: a token saying otherwise is refused
            if k.alg != header.alg {
                last = format!("the token's alg {:?} is not its key's {:?}", header.alg, k.alg);
                continue;
            }
            let mut v = Validation::new(k.alg);
            v.leeway = LEEWAY;
            v.set_issuer(&[self.cfg.issuer.as_str()]);
            v.set_audience(&[self.cfg.audience.as_str()]);
            v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            v.validate_nbf = true;
            match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &k.key, &v) {
                Ok(d) => {
                    verified = Some(d.claims);
                    break;
                }
                Err(e) => last = e.to_string(),
            }
        }
        let Some(claims) = verified else {
            return Err(OidcError::Refused(last));
        };
        let num = |k: &str| claims.get(k).and_then(Value::as_u64);
        let exp = num("exp").ok_or_else(|| OidcError::Refused("exp is not a number".into()))?;
        if num("iat").is_some_and(|iat| iat > now + LEEWAY) {
            return refused("iat is in the future");
        }
        if exp <= now {
            return refused("the token has expired");
        }
        let flat = flatten(&claims);
        for (name, glob) in &self.require {
            if !flat.get(name).is_some_and(|v| glob.matches(v, "")) {
                return Err(OidcError::Refused(format!(
                    "claim {name} does not match the provider's require"
                )));
            }
        }
        let account = render(&self.cfg.account, &flat)
            .ok_or_else(|| OidcError::Refused("a claim the account template names is missing".into()))?;
        if !account_ok(&account) {
            return refused("the account the template gives has characters accounts may not have");
        }
        let mut shown: Vec<&String> = self.cfg.require.keys().chain(self.cfg.rule_claims.iter()).collect();
        shown.sort();
        shown.dedup();
        let matched = shown
            .iter()
            .map(|k| format!("{k}={}", flat.get(*k).map(String::as_str).unwrap_or("")))
            .collect::<Vec<_>>()
            .join(",");
        Ok(OidcLogin {
            provider: self.cfg.name.clone(),
            subject: flat.get("sub").cloned().unwrap_or_default(),
            account,
            claims: flat,
            expires: exp,
            matched,
        })
    }
}

impl Providers {
    pub fn new(cfgs: Vec<ProviderConfig>) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(3))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("regate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("auth.oidc: HTTP client: {e}"))?;
        Ok(Providers {
            list: cfgs
                .into_iter()
                .map(|c| Arc::new(Provider::new(c, http.clone())))
                .collect(),
        })
    }

    pub fn list(&self) -> &[Arc<Provider>] {
        &self.list
    }

    /// Whether `user` signs in through OIDC: a provider's name, or `oidc` (pick by `iss`).
    pub fn handles(&self, user: &str) -> bool {
        user == "oidc" || self.list.iter().any(|p| p.cfg.name == user)
    }

    /// Verifies `token` for the sign-in name `user`. With `oidc`, the providers whose issuer is
    /// the token's `iss` are tried; a token is only ever checked as its own issuer's.
    pub async fn verify(&self, user: &str, token: &str, now: u64) -> Result<OidcLogin, OidcError> {
        let candidates: Vec<&Arc<Provider>> = if user == "oidc" {
            let iss = peek_claims(token)
                .and_then(|c| c.get("iss").and_then(Value::as_str).map(str::to_owned))
                .ok_or_else(|| OidcError::Refused("the token has no iss".into()))?;
            self.list.iter().filter(|p| p.cfg.issuer == iss).collect()
        } else {
            self.list.iter().filter(|p| p.cfg.name == user).collect()
        };
        let mut last = OidcError::Refused("no provider has the token's issuer".into());
        for p in candidates {
            match p.verify(token, now).await {
                Ok(l) => return Ok(l),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_and_claims() {
        let claims: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"project_path":"team/app","ref_protected":"true","n":3,"b":true,
                "kubernetes.io":{"namespace":"ci","serviceaccount":{"name":"builder"}},"aud":["a","b"]}"#,
        )
        .unwrap();
        let f = flatten(&claims);
        assert_eq!(f["kubernetes.io.namespace"], "ci");
        assert_eq!(f["kubernetes.io.serviceaccount.name"], "builder");
        assert_eq!(f["n"], "3");
        assert_eq!(f["b"], "true");
        assert!(!f.contains_key("aud"));
        assert_eq!(render("gitlab:{project_path}", &f).as_deref(), Some("gitlab:team/app"));
        assert_eq!(
            render("k8s:{kubernetes.io.namespace}/{kubernetes.io.serviceaccount.name}", &f).as_deref(),
            Some("k8s:ci/builder")
        );
        assert_eq!(render("gitlab:{missing}", &f), None);
        assert!(crate::config::check_template("gitlab:{project_path}").is_ok());
        assert!(
            crate::config::check_template("{project_path}").is_err(),
            "no ':' outside placeholders"
        );
        assert!(crate::config::check_template("{a:b}").is_err());
        assert!(crate::config::check_template("x:{a").is_err());
        assert!(crate::config::check_template("x:a}").is_err());
        assert!(crate::config::check_template("x:{}").is_err());
        assert!(account_ok("gitlab:team/app"));
        assert!(!account_ok("gitlab:team app"));
        assert!(!account_ok("gitlab:é"));
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJ9.sig"));
        assert!(!looks_like_jwt("secret"));
        assert!(!looks_like_jwt("eyJ.a"));
    }

    #[test]
    fn the_key_decides_the_algorithm() {
        let hmac = serde_json::json!({"kty":"oct","k":"c2VjcmV0","alg":"HS256"});
        assert!(key_from_jwk(&hmac).is_none(), "symmetric keys are never used");
        let ec = serde_json::json!({"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"k"});
        let k = key_from_jwk(&ec).unwrap();
        assert_eq!(k.alg, Algorithm::ES256);
        let ec_lying = serde_json::json!({"kty":"EC","crv":"P-256","alg":"HS256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
        assert!(key_from_jwk(&ec_lying).is_none());
        let enc = serde_json::json!({"kty":"EC","crv":"P-256","use":"enc","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
        assert!(key_from_jwk(&enc).is_none(), "encryption keys do not verify signatures");
    }
}
