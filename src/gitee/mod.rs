//! Gitee: OAuth2 sign-in, `docker login` with Gitee credentials (personal access tokens, and
//! account passwords through the password grant), organisation/enterprise membership as groups,
//! and repository permissions mirrored into the access policy.
//!
//! Every call to Gitee has a deadline; answers are cached (bounded, short-lived) and concurrent
//! identical lookups are coalesced, so a burst of logins or pulls costs one Gitee call. Users'
//! Gitee tokens stay server-side, sealed ([`vault`]).

mod identity;
mod oauth;
pub mod vault;

use crate::types::scope::{Action, Actions};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vault::{Origin, StoredToken, Vault};

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct GiteeUser {
    pub id: u64,
    pub login: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TokenSet {
    pub access_token: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub created_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GiteeError {
    /// Gitee refused the credential or grant (its own words).
    Denied(String),
    /// Gitee did not answer in time, or answered with a server error or rate limit.
    Unreachable(String),
}

impl std::error::Error for GiteeError {}

impl std::fmt::Display for GiteeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GiteeError::Denied(m) => write!(f, "Gitee refused: {m}"),
            GiteeError::Unreachable(m) => write!(f, "Gitee is unreachable: {m}"),
        }
    }
}

/// A repository permission as Gitee reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    Admin,
    Write,
    Read,
    /// Not a collaborator, but the repository is public: signed-in users may pull.
    Public,
    None,
}

impl Perm {
    pub fn actions(self) -> Actions {
        let a: &[Action] = match self {
            Perm::Admin => &[Action::Pull, Action::Push, Action::Delete],
            Perm::Write => &[Action::Pull, Action::Push],
            Perm::Read | Perm::Public => &[Action::Pull],
            Perm::None => &[],
        };
        a.iter().copied().collect()
    }
}

/// A verified Gitee account with the groups regate's rules ask about.
#[derive(Debug, Clone)]
pub struct Login {
    pub user: GiteeUser,
    pub groups: Vec<String>,
}

pub struct Options {
    pub base_url: String,
    pub api_url: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub redirect_url: String,
    pub password_grant: bool,
    pub scopes: Vec<String>,
    pub service_token: Option<String>,
    pub timeout: Duration,
    pub cache_ttl: Duration,
    pub session_ttl: u64,
    /// Groups the access rules name (`gitee-org:X`, `gitee-enterprise:Y`): only these are looked up.
    pub groups: Vec<String>,
}

pub struct Gitee {
    pub opts: Options,
    http: reqwest::Client,
    oauth: oauth::OAuthClient,
    pub vault: Vault,
    /// hash(user, secret) -> verified login (or `None`: Gitee said no)
    logins: moka::future::Cache<[u8; 32], Option<Arc<Login>>>,
    /// (login, owner/repo) -> permission
    perms: moka::future::Cache<(String, String), Perm>,
    /// login -> the groups of [`Options::groups`] the user is in now
    member_of: moka::future::Cache<String, Vec<String>>,
    /// Calls made to Gitee, for /metrics and tests of the cache.
    pub calls: AtomicU64,
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

impl Gitee {
    pub fn new(opts: Options, vault: Vault) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("regate/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(opts.timeout.min(Duration::from_secs(5)))
            .timeout(opts.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("auth.gitee: cannot build the HTTP client: {e}"))?;
        let oauth = oauth::client(&opts)?;
        let ttl = opts.cache_ttl;
        Ok(Gitee {
            http,
            oauth,
            vault,
            logins: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ttl)
                .build(),
            perms: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .support_invalidation_closures()
                .build(),
            member_of: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ttl)
                .build(),
            calls: AtomicU64::new(0),
            opts,
        })
    }

    fn unreachable(e: reqwest::Error) -> GiteeError {
        let what = if e.is_timeout() {
            "no answer in time".to_owned()
        } else if e.is_connect() {
            "cannot connect".to_owned()
        } else {
            e.without_url().to_string()
        };
        GiteeError::Unreachable(what)
    }

    /// `GET {api_url}{path}` with the token as `access_token`; `Ok(None)` on 404.
    async fn api_get<T: DeserializeOwned>(&self, path: &str, token: &str) -> Result<Option<T>, GiteeError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!(
            "{}{path}{sep}{}",
            self.opts.api_url,
            form_encode(&[("access_token", token)])
        );
        self.calls.fetch_add(1, Ordering::Relaxed);
        let r = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(Self::unreachable)?;
        let status = r.status();
        match status.as_u16() {
            200..=299 => {
                let body = r.bytes().await.map_err(Self::unreachable)?;
                serde_json::from_slice(&body)
                    .map(Some)
                    .map_err(|_| GiteeError::Unreachable(format!("unexpected answer from {path}")))
            }
            404 => Ok(None),
            401 => Err(GiteeError::Denied("the token is not valid".into())),
            403 => Err(GiteeError::Denied("the token may not see this".into())),
            _ => Err(GiteeError::Unreachable(format!("{path} answered {status}"))),
        }
    }

    pub async fn user(&self, token: &str) -> Result<GiteeUser, GiteeError> {
        self.api_get::<GiteeUser>("/user", token)
            .await?
            .ok_or_else(|| GiteeError::Denied("no such user".into()))
    }

    /// The groups the rules ask about that this user belongs to.
    pub async fn groups(&self, user: &GiteeUser, token: &str) -> Result<Vec<String>, GiteeError> {
        let mut out = Vec::new();
        for g in &self.opts.groups {
            let member = if let Some(org) = g.strip_prefix("gitee-org:") {
                #[derive(Deserialize)]
                struct M {
                    #[serde(default = "yes")]
                    active: bool,
                }
                fn yes() -> bool {
                    true
                }
                let path = format!("/user/memberships/orgs/{}", enc(org));
                matches!(self.api_get::<M>(&path, token).await, Ok(Some(m)) if m.active)
            } else if let Some(ent) = g.strip_prefix("gitee-enterprise:") {
                let path = format!("/enterprises/{}/members/{}", enc(ent), enc(&user.login));
                matches!(self.api_get::<serde_json::Value>(&path, token).await, Ok(Some(_)))
            } else {
                false
            };
            if member {
                out.push(g.clone());
            }
        }
        Ok(out)
    }

    async fn login_with(&self, tokens: &TokenSet, origin: Origin) -> Result<Login, GiteeError> {
        let user = self.user(&tokens.access_token).await?;
        let groups = self.groups(&user, &tokens.access_token).await?;
        let now = crate::util::now_secs();
        let stored = StoredToken {
            user_id: user.id,
            login: user.login.clone(),
            access_token: tokens.access_token.clone(),
            refresh_token: tokens.refresh_token.clone(),
            expires_at: match (origin, tokens.expires_in) {
                (Origin::PersonalAccessToken, _) | (_, None) => 0,
                (_, Some(s)) => tokens.created_at.unwrap_or(now).min(now) + s,
            },
            origin,
            updated: now,
            lifetime: tokens.expires_in.unwrap_or(0),
        };
        // a personal access token never replaces a refreshable OAuth token
        let keep = match self.vault.get(&user.login).await {
            Ok(Some(old)) => origin == Origin::PersonalAccessToken && old.origin != Origin::PersonalAccessToken,
            _ => false,
        };
        if !keep {
            if let Err(e) = self.vault.put(&stored).await {
                tracing::warn!(error = %e, "cannot store the Gitee token; permission lookups will use the service token");
            }
        }
        Ok(Login { user, groups })
    }

    /// Browser sign-in: the authorization code's tokens.
    pub async fn complete_login(&self, tokens: &TokenSet) -> Result<Login, GiteeError> {
        let l = self.login_with(tokens, Origin::Oauth).await?;
        self.forget(&l.user.login).await;
        Ok(l)
    }

    /// `docker login` with a Gitee login and a personal access token or (when enabled) the
    /// account password. `Ok(None)`: Gitee says the credential is wrong.
    pub async fn verify(&self, user: &str, secret: &str) -> Result<Option<Arc<Login>>, GiteeError> {
        let key: [u8; 32] = {
            let mut h = Sha256::new();
            h.update(b"gitee\0");
            h.update(user.to_ascii_lowercase().as_bytes());
            h.update([0]);
            h.update(secret.as_bytes());
            h.finalize().into()
        };
        let r = self
            .logins
            .try_get_with(key, async {
                let pat = TokenSet {
                    access_token: secret.to_owned(),
                    expires_in: None,
                    refresh_token: None,
                    created_at: None,
                };
                match self.user(secret).await {
                    Ok(u) => {
                        if !login_matches(&u, user) {
                            return Ok(None);
                        }
                        return self
                            .login_with(&pat, Origin::PersonalAccessToken)
                            .await
                            .map(|l| Some(Arc::new(l)));
                    }
                    Err(GiteeError::Denied(_)) => {}
                    Err(e) => return Err(e),
                }
                if !self.opts.password_grant {
                    return Ok(None);
                }
                match self.password_grant(user, secret).await {
                    Ok(t) => {
                        let l = self.login_with(&t, Origin::Password).await?;
                        Ok(login_matches(&l.user, user).then(|| Arc::new(l)))
                    }
                    Err(GiteeError::Denied(_)) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await;
        r.map_err(|e: Arc<GiteeError>| (*e).clone())
    }

    /// A token to ask Gitee about `login`'s repositories: theirs (refreshed when it expired), or
    /// the configured service token.
    async fn token_for(&self, login: &str) -> Result<Option<String>, GiteeError> {
        let now = crate::util::now_secs();
        if let Ok(Some(t)) = self.vault.get(login).await {
            if !t.stale(now) {
                return Ok(Some(t.access_token));
            }
            if let Some(rt) = &t.refresh_token {
                match self.refresh(rt).await {
                    Ok(n) => {
                        let stored = StoredToken {
                            access_token: n.access_token.clone(),
                            refresh_token: n.refresh_token.clone().or(t.refresh_token.clone()),
                            expires_at: n.expires_in.map(|s| now + s).unwrap_or(0),
                            lifetime: n.expires_in.unwrap_or(0),
                            updated: now,
                            ..t
                        };
                        if let Err(e) = self.vault.put(&stored).await {
                            tracing::warn!(error = %e, "cannot store the refreshed Gitee token");
                        }
                        return Ok(Some(n.access_token));
                    }
                    Err(GiteeError::Denied(m)) => {
                        tracing::info!(account = login, reason = %m, "Gitee refused to refresh the stored token; it is dropped");
                        let _ = self.vault.delete(login).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(self.opts.service_token.clone())
    }

    /// `login`'s permission on Gitee repository `owner/repo`.
    pub async fn permission(&self, login: &str, owner: &str, repo: &str) -> Result<Perm, GiteeError> {
        let key = (login.to_ascii_lowercase(), format!("{owner}/{repo}"));
        self.perms
            .try_get_with(key, async {
                let Some(token) = self.token_for(login).await? else {
                    return Ok(Perm::None);
                };
                #[derive(Deserialize)]
                struct P {
                    permission: String,
                }
                let path = format!(
                    "/repos/{}/{}/collaborators/{}/permission",
                    enc(owner),
                    enc(repo),
                    enc(login)
                );
                let p = match self.api_get::<P>(&path, &token).await {
                    Ok(Some(p)) => match p.permission.as_str() {
                        "admin" => Perm::Admin,
                        "write" | "push" => Perm::Write,
                        "read" | "pull" => Perm::Read,
                        _ => Perm::None,
                    },
                    Ok(None) | Err(GiteeError::Denied(_)) => Perm::None,
                    Err(e) => return Err(e),
                };
                if p != Perm::None {
                    return Ok(p);
                }
                // not a collaborator: a public repository may still be pulled by anyone signed in
                #[derive(Deserialize)]
                struct R {
                    #[serde(default)]
                    public: Option<bool>,
                    #[serde(default)]
                    private: Option<bool>,
                }
                match self
                    .api_get::<R>(&format!("/repos/{}/{}", enc(owner), enc(repo)), &token)
                    .await
                {
                    Ok(Some(r)) if r.public == Some(true) || r.private == Some(false) => Ok(Perm::Public),
                    Ok(_) | Err(GiteeError::Denied(_)) => Ok(Perm::None),
                    Err(e) => Err(e),
                }
            })
            .await
            .map_err(|e: Arc<GiteeError>| (*e).clone())
    }

    /// Permissions of `login` on the registry repositories `repos` (`owner/repo[/...]` maps to
    /// Gitee's `owner/repo`), for the policy's `{ gitee: repo_permission }` rules. Lookups run
    /// concurrently; the error names what could not be checked.
    pub async fn resolve(&self, login: &str, repos: &[String]) -> (HashMap<String, Actions>, Option<GiteeError>) {
        let mut out = HashMap::new();
        let mut err = None;
        // at most 16 calls to Gitee at a time, however many repositories are asked about
        type Lookup<'a> =
            std::pin::Pin<Box<dyn std::future::Future<Output = (String, Result<Perm, GiteeError>)> + Send + 'a>>;
        let mut lookups: Vec<Lookup<'_>> = Vec::new();
        for r in repos {
            let mut it = r.split('/');
            if let (Some(o), Some(n)) = (it.next(), it.next()) {
                let (o, n, r) = (o.to_owned(), n.to_owned(), r.clone());
                lookups.push(Box::pin(async move {
                    let p = self.permission(login, &o, &n).await;
                    (r, p)
                }));
            }
        }
        let mut results = Vec::with_capacity(lookups.len());
        let mut pending = futures_util::StreamExt::buffer_unordered(futures_util::stream::iter(lookups), 16);
        while let Some(x) = futures_util::StreamExt::next(&mut pending).await {
            results.push(x);
        }
        for (r, p) in results {
            match p {
                Ok(p) => {
                    out.insert(r, p.actions());
                }
                Err(e) => {
                    tracing::warn!(account = login, repository = %r, error = %e, "Gitee permission lookup failed");
                    err = Some(e);
                }
            }
        }
        (out, err)
    }

    /// The rule-named groups `login` is in now (asked with the user's stored token or the
    /// service token; cached). Credentials minted long ago follow membership changes this way.
    pub async fn current_groups(&self, login: &str) -> Result<Vec<String>, GiteeError> {
        if self.opts.groups.is_empty() {
            return Ok(Vec::new());
        }
        self.member_of
            .try_get_with(login.to_ascii_lowercase(), async {
                let Some(token) = self.token_for(login).await? else {
                    return Ok(Vec::new());
                };
                let u = GiteeUser {
                    id: 0,
                    login: login.to_owned(),
                    name: None,
                    email: None,
                };
                self.groups(&u, &token).await
            })
            .await
            .map_err(|e: Arc<GiteeError>| (*e).clone())
    }

    /// Forgets cached answers about `login` (after a new sign-in).
    pub async fn forget(&self, login: &str) {
        let l = login.to_ascii_lowercase();
        self.member_of.invalidate(&l).await;
        let _ = self.perms.invalidate_entries_if(move |k, _| k.0 == l);
    }
}

fn login_matches(u: &GiteeUser, asked: &str) -> bool {
    u.login.eq_ignore_ascii_case(asked) || u.email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(asked))
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_map_to_actions() {
        assert_eq!(Perm::Admin.actions().len(), 3);
        assert!(Perm::Write.actions().contains(&Action::Push));
        assert!(!Perm::Read.actions().contains(&Action::Push));
        assert!(Perm::Public.actions().contains(&Action::Pull));
        assert!(Perm::None.actions().is_empty());
    }
}
