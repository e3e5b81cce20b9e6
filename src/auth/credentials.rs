//! Who someone is: username + password checked against the configured sources (htpasswd, the
//! generated admin, refresh tokens). bcrypt runs on the blocking pool; successes are cached for a
//! short time under a hash of the credential so a CI burst costs one bcrypt, not one per request.

use super::source::IdentitySource;
use super::stored::{looks_like_secret, Limit, StoredCreds};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Htpasswd,
    Admin,
    /// A robot secret or CLI password; the fingerprint is the record id.
    Stored,
    /// A Gitee account (personal access token or account password); the fingerprint is the
    /// Gitee user id.
    Gitee,
    /// An OIDC ID token of a CI job; the fingerprint is the provider and subject.
    Oidc,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub account: String,
    pub groups: Vec<String>,
    pub source: Source,
    /// Changes when the credential behind the identity changes (password reset, user removed),
    /// so long-lived refresh tokens can be re-checked against it.
    pub fingerprint: String,
    /// What a robot or CLI password is limited to.
    pub limit: Option<Arc<Limit>>,
    /// A Gitee account, or a CLI password one minted: `{ gitee: repo_permission }` rules apply.
    pub gitee: bool,
    /// A CI job signed in with its OIDC ID token: `{ oidc: ..., claims: ... }` rules apply, and
    /// nothing issued may outlive the token.
    pub oidc: Option<Arc<super::oidc::OidcLogin>>,
}

impl Identity {
    pub fn subject(&self, ip: std::net::IpAddr) -> super::policy::Subject {
        super::policy::Subject {
            account: self.account.clone(),
            groups: self.groups.clone(),
            ip,
            anonymous: false,
            limit: self.limit.clone(),
            gitee: None,
            oidc: self.oidc.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    BadCredentials,
    Unavailable(String),
    /// Too many failed sign-ins from this address or for this account; retry after this long.
    Limited(std::time::Duration),
}

type Users = HashMap<String, String>;
type Stamp = Option<(SystemTime, u64)>;

struct HtpasswdFile {
    path: PathBuf,
    users: HashMap<String, String>,
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
}

/// The bcrypt cost most of these hashes use (`$2y$05$...` has cost 5).
fn usual_cost(users: &Users) -> u32 {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for h in users.values() {
        if let Some(c) = h.split('$').nth(2).and_then(|c| c.parse::<u32>().ok()) {
            if (4..=31).contains(&c) {
                *counts.entry(c).or_default() += 1;
            }
        }
    }
    counts
        .into_iter()
        .max_by_key(|(c, n)| (*n, *c))
        .map(|(c, _)| c)
        .unwrap_or(bcrypt::DEFAULT_COST)
}

impl HtpasswdFile {
    fn load(path: &Path) -> Result<(Users, Stamp), String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read auth.htpasswd {}: {e}", path.display()))?;
        let meta = std::fs::metadata(path).ok();
        let stamp = meta.and_then(|m| Some((m.modified().ok()?, m.len())));
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((u, h)) = line.split_once(':') else {
                return Err(format!(
                    "auth.htpasswd {} line {}: expected user:hash",
                    path.display(),
                    i + 1
                ));
            };
            if !(h.starts_with("$2y$") || h.starts_with("$2b$") || h.starts_with("$2a$")) {
                return Err(format!(
                    "auth.htpasswd {} line {}: user {u} does not have a bcrypt hash (create it with htpasswd -B)",
                    path.display(),
                    i + 1
                ));
            }
            users.insert(u.to_owned(), h.to_owned());
        }
        Ok((users, stamp))
    }
}

pub struct Credentials {
    htpasswd: Option<RwLock<HtpasswdFile>>,
    admin: Option<String>,
    stored: Option<Arc<StoredCreds>>,
    source: Option<Arc<dyn IdentitySource>>,
    oidc: Option<Arc<super::oidc::Providers>>,
    failures: crate::ratelimit::Limiter,
    /// Hashes of random passwords by bcrypt cost: an unknown user is checked against the one of
    /// the cost the htpasswd file's own hashes use, so it takes as long as a known user.
    dummies: std::sync::Mutex<HashMap<u32, String>>,
    cache: moka::sync::Cache<[u8; 32], Identity>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("htpasswd", &self.htpasswd.is_some())
            .field("admin", &self.admin.as_ref().map(|_| "***"))
            .finish()
    }
}

fn fingerprint(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..12])
}

impl Credentials {
    /// `admin`: the generated admin's password, when there is one.
    pub fn new(
        htpasswd: Option<&Path>,
        admin: Option<String>,
        stored: Option<Arc<StoredCreds>>,
    ) -> Result<Self, String> {
        let htpasswd = match htpasswd {
            Some(p) => {
                let (users, stamp) = HtpasswdFile::load(p)?;
                Some(RwLock::new(HtpasswdFile {
                    path: p.to_owned(),
                    users,
                    stamp,
                    checked: Instant::now(),
                }))
            }
            None => None,
        };
        let cost = htpasswd
            .as_ref()
            .and_then(|f| f.read().ok().map(|f| usual_cost(&f.users)))
            .unwrap_or(bcrypt::DEFAULT_COST);
        let dummy =
            bcrypt::hash(rand::random::<u64>().to_string(), cost).map_err(|e| format!("bcrypt unavailable: {e}"))?;
        Ok(Self {
            htpasswd,
            admin,
            stored,
            source: None,
            oidc: None,
            failures: crate::ratelimit::Limiter::new(0.0, 0.0),
            dummies: std::sync::Mutex::new(HashMap::from([(cost, dummy)])),
            cache: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
        })
    }

    /// Re-reads the htpasswd file when it changed (checked at most once a second).
    fn refresh_htpasswd(&self) {
        let Some(lock) = &self.htpasswd else { return };
        let due = lock
            .read()
            .map(|f| f.checked.elapsed() >= Duration::from_secs(1))
            .unwrap_or(true);
        if !due {
            return;
        }
        let Ok(mut f) = lock.write() else { return };
        f.checked = Instant::now();
        let now = std::fs::metadata(&f.path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if now == f.stamp {
            return;
        }
        match HtpasswdFile::load(&f.path) {
            Ok((users, stamp)) => {
                tracing::info!(path = %f.path.display(), users = users.len(), "htpasswd reloaded");
                f.users = users;
                f.stamp = stamp;
                self.cache.invalidate_all();
            }
            Err(e) => tracing::warn!(error = %e, "htpasswd changed but cannot be loaded; keeping the previous users"),
        }
    }

    fn htpasswd_hash(&self, user: &str) -> Option<String> {
        self.refresh_htpasswd();
        self.htpasswd.as_ref()?.read().ok()?.users.get(user).cloned()
    }

    /// Accepts the identity source's credentials (Gitee's) for accounts that are not local users.
    pub fn with_source(mut self, s: Arc<dyn IdentitySource>) -> Self {
        self.source = Some(s);
        self
    }

    /// Accepts CI jobs' OIDC ID tokens as passwords of the providers' names.
    pub fn with_oidc(mut self, p: Arc<super::oidc::Providers>) -> Self {
        self.oidc = Some(p);
        self
    }

    pub fn oidc(&self) -> Option<&Arc<super::oidc::Providers>> {
        self.oidc.as_ref()
    }

    pub fn source(&self) -> Option<&Arc<dyn IdentitySource>> {
        self.source.as_ref()
    }

    /// Whether `user` is a local (htpasswd or generated admin) account.
    pub fn is_local(&self, user: &str) -> bool {
        self.htpasswd_hash(user).is_some() || (user == "admin" && self.admin.is_some())
    }

    /// Limits failed sign-ins to `per_minute` per client address and per account (0: no limit).
    pub fn with_failure_limit(mut self, per_minute: u32) -> Self {
        let pm = f64::from(per_minute);
        self.failures = crate::ratelimit::Limiter::new(pm / 60.0, pm);
        self
    }

    /// Counts failed sign-ins in Redis, shared by every replica.
    pub fn with_shared_failures(mut self, s: Arc<crate::ratelimit::Shared>) -> Self {
        let l = std::mem::replace(&mut self.failures, crate::ratelimit::Limiter::new(0.0, 0.0));
        self.failures = l.shared(s, "fail");
        self
    }

    /// [`Self::authenticate`] for a request from `ip`, refusing early once that address has
    /// failed too often, or once that account has and this address failed lately too; failures
    /// are counted against both.
    ///
    /// An account under attack stays open to addresses with no recent failures: locking it for
    /// everyone would hand attackers a switch that keeps its owner out. Attackers get no more
    /// guesses that way than the per-address limit gives each of their addresses.
    pub async fn authenticate_from(&self, user: &str, pass: &str, ip: std::net::IpAddr) -> Result<Identity, AuthError> {
        let (kip, kuser) = (format!("ip:{ip}"), format!("user:{user}"));
        let verdict = match self.failures.check_async(&kip).await {
            Ok(()) => match self.failures.check_async(&kuser).await {
                Err(_) if self.failures.untouched_async(&kip).await => Ok(()),
                v => v,
            },
            e => e,
        };
        if let Err(d) = verdict {
            tracing::warn!(target: "regate::audit", event = "auth_rate_limited", %ip, account = user, "sign-in refused: too many failures");
            return Err(AuthError::Limited(d));
        }
        let r = self.authenticate(user, pass).await;
        if r == Err(AuthError::BadCredentials) {
            self.failures.spend_async(&kip).await;
            self.failures.spend_async(&kuser).await;
            tracing::warn!(target: "regate::audit", event = "auth_failed", %ip, account = user, "sign-in failed");
        }
        r
    }

    pub async fn authenticate(&self, user: &str, pass: &str) -> Result<Identity, AuthError> {
        if user.is_empty() || pass.is_empty() {
            return Err(AuthError::BadCredentials);
        }
        let key: [u8; 32] = {
            let mut h = Sha256::new();
            h.update(user.as_bytes());
            h.update([0]);
            h.update(pass.as_bytes());
            h.finalize().into()
        };
        if let Some(p) = self.oidc.as_ref().filter(|p| p.handles(user)) {
            if super::oidc::looks_like_jwt(pass) {
                return self.oidc_identity(p, user, pass).await;
            }
        }
        if let (Some(st), true) = (&self.stored, looks_like_secret(pass)) {
            let rec = st
                .verify(user, pass, crate::util::now_secs())
                .await
                .map_err(|e| AuthError::Unavailable(e.to_string()))?;
            return rec.map(|r| stored_identity(&r)).ok_or(AuthError::BadCredentials);
        }
        let stored = self.htpasswd_hash(user);
        if let Some(id) = self.cache.get(&key) {
            // still the same credential behind it?
            if self.still_valid_local(&id) {
                return Ok(id);
            }
            self.cache.invalidate(&key);
        }
        if user == "admin" && stored.is_none() {
            if let Some(a) = &self.admin {
                let ok: bool = Sha256::digest(pass.as_bytes())
                    .ct_eq(&Sha256::digest(a.as_bytes()))
                    .into();
                if ok {
                    let id = Identity {
                        account: "admin".into(),
                        groups: Vec::new(),
                        source: Source::Admin,
                        fingerprint: fingerprint(a),
                        limit: None,
                        gitee: false,
                        oidc: None,
                    };
                    self.cache.insert(key, id.clone());
                    return Ok(id);
                }
                return Err(AuthError::BadCredentials);
            }
        }
        if let (None, Some(g)) = (&stored, &self.source) {
            if !(user == "admin" && self.admin.is_some()) {
                return match g.verify(user, pass).await {
                    Ok(Some(id)) => Ok(id),
                    Ok(None) => Err(AuthError::BadCredentials),
                    Err(e) => Err(AuthError::Unavailable(e.to_string())),
                };
            }
        }
        // unknown users cost one bcrypt of the file's cost too, so timing does not reveal who exists
        let hash = match &stored {
            Some(h) => h.clone(),
            None => self.dummy_hash().await?,
        };
        let pass = pass.to_owned();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pass, &hash).unwrap_or(false))
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        match (ok, stored) {
            (true, Some(h)) => {
                let id = Identity {
                    account: user.to_owned(),
                    groups: Vec::new(),
                    source: Source::Htpasswd,
                    fingerprint: fingerprint(&h),
                    limit: None,
                    gitee: false,
                    oidc: None,
                };
                self.cache.insert(key, id.clone());
                Ok(id)
            }
            _ => Err(AuthError::BadCredentials),
        }
    }

    async fn oidc_identity(&self, p: &super::oidc::Providers, user: &str, token: &str) -> Result<Identity, AuthError> {
        match p.verify(user, token, crate::util::now_secs()).await {
            Ok(l) => {
                tracing::info!(target: "regate::audit", event = "oidc_login", provider = %l.provider,
                    subject = %l.subject, account = %l.account, claims = %l.matched, "CI job signed in");
                Ok(Identity {
                    account: l.account.clone(),
                    groups: Vec::new(),
                    source: Source::Oidc,
                    fingerprint: format!("{}:{}", l.provider, l.subject),
                    limit: None,
                    gitee: false,
                    oidc: Some(Arc::new(l)),
                })
            }
            Err(super::oidc::OidcError::Refused(why)) => {
                tracing::warn!(target: "regate::audit", event = "oidc_refused", provider = user, reason = %why, "OIDC token refused");
                Err(AuthError::BadCredentials)
            }
            Err(super::oidc::OidcError::Unavailable(why)) => Err(AuthError::Unavailable(why)),
        }
    }

    /// A hash of a random password at the bcrypt cost the htpasswd file uses now.
    async fn dummy_hash(&self) -> Result<String, AuthError> {
        let cost = self
            .htpasswd
            .as_ref()
            .and_then(|f| f.read().ok().map(|f| usual_cost(&f.users)))
            .unwrap_or(bcrypt::DEFAULT_COST);
        let known = self.dummies.lock().ok().and_then(|d| d.get(&cost).cloned());
        if let Some(h) = known {
            return Ok(h);
        }
        // the file changed to another cost: one new hash, made off the async threads
        let h = tokio::task::spawn_blocking(move || bcrypt::hash(rand::random::<u64>().to_string(), cost))
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        if let Ok(mut d) = self.dummies.lock() {
            d.insert(cost, h.clone());
        }
        Ok(h)
    }

    /// Whether an identity established earlier still stands: the user is still in its source and
    /// the credential has not changed.
    fn still_valid_local(&self, id: &Identity) -> bool {
        match id.source {
            Source::Htpasswd => self
                .htpasswd_hash(&id.account)
                .is_some_and(|h| fingerprint(&h) == id.fingerprint),
            Source::Admin => self.admin.as_ref().is_some_and(|a| fingerprint(a) == id.fingerprint),
            Source::Stored => false,
            // a local user of the same name now shadows the Gitee account
            Source::Gitee => self.source.is_some() && !self.is_local(&id.account),
            // an ID token is checked afresh every time; no refresh token outlives it
            Source::Oidc => false,
        }
    }

    /// The identity as it stands now, if it still does (for refresh tokens).
    pub async fn revalidate(&self, id: &Identity) -> Result<Option<Identity>, AuthError> {
        match id.source {
            Source::Stored => {
                let Some(st) = &self.stored else { return Ok(None) };
                let rec = st
                    .current(&id.fingerprint, crate::util::now_secs())
                    .await
                    .map_err(|e| AuthError::Unavailable(e.to_string()))?;
                Ok(rec.filter(|r| r.account == id.account).map(|r| stored_identity(&r)))
            }
            _ => Ok(self.still_valid_local(id).then(|| id.clone())),
        }
    }

    pub fn stored(&self) -> Option<&Arc<StoredCreds>> {
        self.stored.as_ref()
    }
}

fn stored_identity(r: &super::stored::Record) -> Identity {
    Identity {
        account: r.account.clone(),
        groups: Vec::new(),
        source: Source::Stored,
        fingerprint: r.id.clone(),
        limit: Some(Arc::new(Limit::from_record(r))),
        gitee: r.gitee,
        oidc: None,
    }
}

/// Splits an `Authorization: Basic` value into user and password, on the first `:` only.
pub fn parse_basic(value: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let b64 = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_splits_on_first_colon() {
        use base64::Engine as _;
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("bob:pa:ss:word")
        );
        assert_eq!(parse_basic(&v), Some(("bob".into(), "pa:ss:word".into())));
        assert_eq!(parse_basic("Bearer x"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
    }

    #[tokio::test]
    async fn htpasswd_and_reload() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("htpasswd");
        let h = bcrypt::hash("s3cret", 4).unwrap();
        std::fs::write(&p, format!("alice:{h}\n")).unwrap();
        let c = Credentials::new(Some(&p), None, None).unwrap();
        let id = c.authenticate("alice", "s3cret").await.unwrap();
        assert_eq!(id.account, "alice");
        assert_eq!(c.authenticate("alice", "wrong").await, Err(AuthError::BadCredentials));
        assert_eq!(c.authenticate("nobody", "s3cret").await, Err(AuthError::BadCredentials));
        assert!(c.still_valid_local(&id));
        // password changed in the file: the old identity and cached success no longer stand
        std::thread::sleep(Duration::from_millis(1100));
        let h2 = bcrypt::hash("new", 4).unwrap();
        std::fs::write(&p, format!("alice:{h2}\n# comment\n")).unwrap();
        assert_eq!(c.authenticate("alice", "s3cret").await, Err(AuthError::BadCredentials));
        assert!(!c.still_valid_local(&id));
        assert!(c.authenticate("alice", "new").await.is_ok());
    }

    #[test]
    fn refuses_non_bcrypt() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("htpasswd");
        std::fs::write(&p, "bob:{SHA}abc\n").unwrap();
        let e = Credentials::new(Some(&p), None, None).unwrap_err();
        assert!(e.contains("htpasswd -B"), "{e}");
    }

    #[tokio::test]
    async fn admin() {
        let c = Credentials::new(None, Some("pw".into()), None).unwrap();
        assert_eq!(c.authenticate("admin", "pw").await.unwrap().source, Source::Admin);
        assert!(c.authenticate("admin", "px").await.is_err());
    }
}
