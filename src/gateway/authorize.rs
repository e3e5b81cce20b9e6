//! Stage 4: authentication and authorisation, one step for `/v2/` and `/nginx/auth`: what a
//! route needs ([`Need`]), who the caller is ([`Principal`]), and the challenge when they may not.

use super::App;
use crate::auth::credentials::{parse_basic, AuthError, Identity};
use crate::auth::policy::{Policy, Subject};
use crate::auth::token::{Claims, VerifyError};
use crate::registry::error::{ApiError, Code};
use crate::registry::{Permissions, Route};
use crate::types::names::RepoName;
use crate::types::scope::{Action, Resource, Scope};
use ::http::{header, HeaderMap, Method, StatusCode};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// What a `/v2/` route needs from the caller.
pub(super) enum Need {
    /// Any valid credential (the `/v2/` check).
    Authenticated,
    /// A named account: anonymous tokens do not count (`/nginx/auth` for non-registry paths).
    Account,
    Catalog,
    Repo(RepoName, Vec<Action>),
}

pub(super) fn need_for(route: &Route, m: &Method) -> Option<Need> {
    use Action::*;
    let repo = |n: &RepoName, a: &[Action]| Some(Need::Repo(n.clone(), a.to_vec()));
    match (route, m) {
        (Route::Base, &Method::GET | &Method::HEAD) => Some(Need::Authenticated),
        (Route::Catalog, &Method::GET) => Some(Need::Catalog),
        (Route::Tags(n), &Method::GET) | (Route::Referrers(n, _), &Method::GET) => repo(n, &[Pull]),
        (Route::Manifest(n, _), &Method::GET | &Method::HEAD) | (Route::Blob(n, _), &Method::GET | &Method::HEAD) => {
            repo(n, &[Pull])
        }
        (Route::Manifest(n, _), &Method::PUT) => repo(n, &[Pull, Push]),
        (Route::Manifest(n, _), &Method::DELETE) | (Route::Blob(n, _), &Method::DELETE) => repo(n, &[Delete]),
        (Route::UploadStart(n), &Method::POST) => repo(n, &[Pull, Push]),
        (Route::Upload(n, _), &Method::GET | &Method::PATCH | &Method::PUT | &Method::DELETE) => repo(n, &[Pull, Push]),
        _ => None,
    }
}

/// An authenticated caller of `/v2/`.
pub(super) enum Principal {
    Token(Arc<Claims>),
    Basic(Identity),
}

pub(super) enum Denial {
    /// No credential: challenge without `error`.
    Missing,
    InvalidToken(VerifyError),
    BadBasic,
    Insufficient,
    /// Not signed in (an anonymous token) and anonymous access does not reach this far.
    Anonymous,
    Unavailable,
    Limited(Duration),
}

pub(super) struct Perms<'a> {
    pub(super) principal: &'a Principal,
    pub(super) policy: &'a Policy,
    pub(super) ip: IpAddr,
}

impl Perms<'_> {
    fn subject(&self) -> Subject {
        match self.principal {
            Principal::Token(c) if c.sub.is_empty() => Subject::anonymous(self.ip),
            // a token carries exactly its access; the policy is consulted only for what the
            // token cannot carry (the catalog filter), and never for a limited credential
            Principal::Token(c) => Subject {
                account: c.sub.clone(),
                groups: c.grp.clone(),
                ip: self.ip,
                anonymous: false,
                limit: c.lim.then(|| {
                    Arc::new(crate::auth::stored::Limit {
                        layers: vec![],
                        rules: false,
                    })
                }),
                gitee: None,
                oidc: None,
            },
            Principal::Basic(id) => id.subject(self.ip),
        }
    }
}

impl Permissions for Perms<'_> {
    fn can_pull(&self, repo: &RepoName) -> bool {
        if let Principal::Token(c) = self.principal {
            if c.allows(&Resource::Repository, repo.as_str(), Action::Pull) {
                return true;
            }
        }
        self.policy
            .actions(&self.subject(), repo.as_str())
            .contains(&Action::Pull)
    }
}

impl App {
    /// The browser session's identity (Gitee sign-in), if the request carries a valid cookie.
    pub(super) fn session_identity(&self, headers: &HeaderMap) -> Option<Identity> {
        let gitee = self.gitee.as_ref().and_then(|_| {
            let s = crate::web::session_of(&self.signer, headers)?;
            // a local account of the same name appeared since: the session no longer stands
            (!self.tokens.creds.is_local(&s.login)).then(|| crate::web::identity_of(&s))
        });
        gitee.or_else(|| crate::web::local_identity(&self.tokens, headers))
    }

    /// Whether a signed-in identity (no token) may do what `need` says: the policy decides,
    /// with Gitee's permissions looked up first when rules mirror them.
    pub(super) async fn identity_allows(&self, id: &Identity, need: &Need, ip: IpAddr) -> Result<bool, Denial> {
        let policy = self.tokens.policy.get();
        Ok(match need {
            Need::Authenticated | Need::Account => true,
            Need::Catalog => policy.catalog(&subject_of(id, ip)),
            Need::Repo(n, acts) => {
                let sc = [Scope::repository(n.as_str(), acts)];
                let (s, err) = self.tokens.subject(id, ip, &policy, &sc).await;
                let allowed = policy.actions(&s, n.as_str());
                let ok = acts.iter().all(|a| allowed.contains(a));
                if !ok && err.is_some() {
                    return Err(Denial::Unavailable);
                }
                ok
            }
        })
    }

    pub(super) async fn authorize(&self, headers: &HeaderMap, need: &Need, ip: IpAddr) -> Result<Principal, Denial> {
        self.authorize_with(headers, need, ip, false).await
    }

    /// `session`: also accept the browser session cookie (for `/nginx/auth` only: a cookie
    /// is never a credential for `/v2/` itself).
    pub(super) async fn authorize_with(
        &self,
        headers: &HeaderMap,
        need: &Need,
        ip: IpAddr,
        session: bool,
    ) -> Result<Principal, Denial> {
        let Some(auth) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            if session {
                if let Some(id) = self.session_identity(headers) {
                    return if self.identity_allows(&id, need, ip).await? {
                        Ok(Principal::Basic(id))
                    } else {
                        Err(Denial::Insufficient)
                    };
                }
            }
            return Err(Denial::Missing);
        };
        let principal = if let Some(tok) = auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("bearer ")) {
            let tok = tok.trim();
            let now = crate::util::now_secs();
            let claims = match self.token_cache.get(tok) {
                Some(c) => {
                    if now >= c.exp + crate::auth::token::LEEWAY_SECS {
                        return Err(Denial::InvalidToken(VerifyError::Expired));
                    }
                    c
                }
                None => {
                    let c = Arc::new(self.tokens.keys.verify(tok, now).map_err(Denial::InvalidToken)?);
                    self.token_cache.insert(tok.to_owned(), c.clone());
                    c
                }
            };
            Principal::Token(claims)
        } else if auth.starts_with("Basic ") || auth.starts_with("basic ") {
            let (u, p) = parse_basic(auth).ok_or(Denial::BadBasic)?;
            match self.tokens.creds.authenticate_from(&u, &p, ip).await {
                Ok(id) => Principal::Basic(id),
                Err(AuthError::BadCredentials) => return Err(Denial::BadBasic),
                Err(AuthError::Unavailable(_)) => return Err(Denial::Unavailable),
                Err(AuthError::Limited(d)) => return Err(Denial::Limited(d)),
            }
        } else {
            return Err(Denial::Missing);
        };
        if self.principal_allows(&principal, need, ip).await? {
            Ok(principal)
        } else if matches!(&principal, Principal::Token(c) if c.sub.is_empty()) {
            Err(Denial::Anonymous)
        } else {
            Err(Denial::Insufficient)
        }
    }

    /// Whether an authenticated caller may do what `need` says: a token by exactly its access,
    /// a signed-in identity by the policy.
    pub(super) async fn principal_allows(
        &self,
        principal: &Principal,
        need: &Need,
        ip: IpAddr,
    ) -> Result<bool, Denial> {
        Ok(match (principal, need) {
            (_, Need::Authenticated) => true,
            (Principal::Token(c), Need::Account) => !c.sub.is_empty(),
            (Principal::Token(c), Need::Catalog) => c.allows(&Resource::Registry, "catalog", Action::All),
            (Principal::Token(c), Need::Repo(n, acts)) => {
                acts.iter().all(|a| c.allows(&Resource::Repository, n.as_str(), *a))
            }
            (Principal::Basic(id), need) => self.identity_allows(id, need, ip).await?,
        })
    }

    /// The 401 that tells a client where to get a token and for what.
    pub(super) fn challenge(&self, need: &Need, mount_from: &[RepoName], d: Denial) -> ApiError {
        let mut scopes: Vec<String> = match need {
            Need::Authenticated | Need::Account => vec![],
            Need::Catalog => vec![Scope::catalog().to_string()],
            Need::Repo(n, a) => vec![Scope::repository(n.as_str(), a).to_string()],
        };
        for f in mount_from {
            scopes.push(Scope::repository(f.as_str(), &[Action::Pull]).to_string());
        }
        let mut v = format!("Bearer realm=\"{}\",service=\"{}\"", self.realm, self.service);
        if !scopes.is_empty() {
            v.push_str(&format!(",scope=\"{}\"", scopes.join(" ")));
        }
        let (code, msg) = match d {
            Denial::Missing => (Code::Unauthorized, "authentication required".to_owned()),
            Denial::InvalidToken(e) => {
                v.push_str(",error=\"invalid_token\"");
                (Code::Unauthorized, format!("authentication required: {e}"))
            }
            Denial::BadBasic => (Code::Unauthorized, "incorrect username or password".to_owned()),
            Denial::Insufficient => {
                if !matches!(need, Need::Authenticated | Need::Account) {
                    v.push_str(",error=\"insufficient_scope\"");
                }
                (Code::Denied, "requested access to the resource is denied".to_owned())
            }
            Denial::Anonymous => {
                if !matches!(need, Need::Authenticated | Need::Account) {
                    v.push_str(",error=\"insufficient_scope\"");
                }
                let host = self.public_url.split("://").nth(1).unwrap_or(&self.public_url);
                (
                    Code::Unauthorized,
                    format!("authentication required: sign in first (docker login {host})"),
                )
            }
            Denial::Unavailable => {
                return ApiError::new(Code::Unavailable, "credential check unavailable; retry");
            }
            Denial::Limited(d) => {
                return ApiError::new(Code::TooManyRequests, "too many failed sign-ins; retry later")
                    .with_header(header::RETRY_AFTER, d.as_secs().max(1).to_string());
            }
        };
        let mut e = ApiError::new(code, msg);
        e.status = Some(StatusCode::UNAUTHORIZED);
        if matches!(need, Need::Repo(..)) || matches!(need, Need::Catalog) {
            e = e.detail(serde_json::json!(scopes
                .iter()
                .map(|s| {
                    let mut it = s.splitn(2, ':');
                    let ty = it.next().unwrap_or("");
                    let rest = it.next().unwrap_or("");
                    let (name, action) = rest.rsplit_once(':').unwrap_or((rest, ""));
                    serde_json::json!({"Type": ty, "Name": name, "Action": action})
                })
                .collect::<Vec<_>>()));
        }
        e.with_header(header::WWW_AUTHENTICATE, v)
    }
}

fn subject_of(id: &Identity, ip: IpAddr) -> Subject {
    id.subject(ip)
}
