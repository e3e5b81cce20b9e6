//! The Docker token endpoint (`/token`): GET with Basic credentials (docker, skopeo, podman) and
//! POST with an OAuth2 form (`grant_type=password|refresh_token`, containerd/BuildKit and docker's
//! identity-token logins). Errors are JSON whose `details` docker shows to the user.

use super::credentials::{parse_basic, AuthError, Credentials, Identity};
use super::policy::{Policy, Subject};
use super::refresh::RefreshStore;
use super::token::TokenKeys;
use crate::http::{self, query_get, query_pairs, ApiError, BodyReader, Resp};
use crate::types::scope::{Resource, Scope};
use ::http::{header, HeaderMap, Method, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

pub struct TokenService {
    pub keys: TokenKeys,
    pub creds: Arc<Credentials>,
    pub policy: crate::live::Live<Policy>,
    pub refresh: RefreshStore,
}

/// The outcome of a token request, for the audit log.
#[derive(Debug, Default, Clone)]
pub struct TokenAudit {
    pub account: Option<String>,
    pub asked: Vec<String>,
    pub granted: Vec<String>,
    pub denied_reason: Option<&'static str>,
    /// A CI job's OIDC sign-in: provider, subject and the claims the config looks at.
    pub oidc: Option<String>,
}

fn error(code: StatusCode, oauth_error: &'static str, details: &str) -> ApiError {
    let e = ApiError::oauth(code, oauth_error, details);
    if code == StatusCode::UNAUTHORIZED {
        return e.with_header(header::WWW_AUTHENTICATE, "Basic realm=\"regate\"");
    }
    e
}

/// 429 with `Retry-After`.
pub fn limited(d: Duration) -> ApiError {
    let secs = d.as_secs().max(1);
    error(
        StatusCode::TOO_MANY_REQUESTS,
        "slow_down",
        &format!("too many attempts; retry in {secs} seconds"),
    )
    .with_header(header::RETRY_AFTER, secs.to_string())
}

const BAD_CREDENTIALS: &str = "incorrect username or password (use your regate account, or a CLI password from /login)";

impl TokenService {
    /// The policy subject for `id`, with the Gitee permissions for the repositories in `scopes`
    /// looked up first when the policy mirrors them.
    pub async fn subject(
        &self,
        id: &Identity,
        ip: IpAddr,
        policy: &Policy,
        scopes: &[Scope],
    ) -> (Subject, Option<super::source::Unavailable>) {
        let mut s = id.subject(ip);
        let Some(g) = self.creds.source().filter(|_| id.gitee) else {
            return (s, None);
        };
        // group membership as Gitee says now (a CLI password outlives the sign-in it came from)
        let mut gerr = None;
        match g.current_groups(&id.account).await {
            Ok(groups) => s.groups = groups,
            Err(e) => gerr = Some(e),
        }
        if !policy.uses_gitee() {
            return (s, gerr);
        }
        let mut repos: Vec<String> = scopes
            .iter()
            .filter(|sc| sc.resource == Resource::Repository && sc.class.is_none())
            .map(|sc| sc.name.clone())
            .collect();
        repos.sort();
        repos.dedup();
        if repos.is_empty() {
            return (s, gerr);
        }
        let (perms, err) = g.permissions(&id.account, &repos).await;
        s.gitee = Some(Arc::new(perms));
        (s, err.or(gerr))
    }

    /// `GET` (docker's token request) or `POST` (the OAuth2 form) on `/token`; the error is
    /// the answer the caller sends (it logs and counts by the status).
    #[allow(clippy::too_many_arguments)]
    pub async fn handle(
        &self,
        method: &Method,
        headers: &HeaderMap,
        query: Option<&str>,
        body: Incoming,
        ip: IpAddr,
        now: u64,
        audit: &mut TokenAudit,
    ) -> Result<Resp, ApiError> {
        match *method {
            Method::GET => {
                let q = query_pairs(query);
                self.get(headers, &q, ip, now, audit).await
            }
            Method::POST => {
                let ct = headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !ct.starts_with("application/x-www-form-urlencoded") {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "POST /token takes an application/x-www-form-urlencoded form",
                    ));
                }
                let form = match BodyReader::new(body, Duration::from_secs(30)).read_all(64 * 1024).await {
                    Ok(b) => query_pairs(std::str::from_utf8(&b).ok()),
                    Err(_) => {
                        return Err(error(
                            StatusCode::BAD_REQUEST,
                            "invalid_request",
                            "form body too large or unreadable",
                        ))
                    }
                };
                self.post(&form, ip, now, audit).await
            }
            _ => Err(
                error(StatusCode::METHOD_NOT_ALLOWED, "invalid_request", "use GET or POST")
                    .with_header(header::ALLOW, "GET, POST"),
            ),
        }
    }

    fn scopes(pairs: &[(String, String)]) -> Vec<Scope> {
        Scope::parse_list(pairs.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.as_str()))
    }

    async fn get(
        &self,
        headers: &HeaderMap,
        q: &[(String, String)],
        ip: IpAddr,
        now: u64,
        audit: &mut TokenAudit,
    ) -> Result<Resp, ApiError> {
        let scopes = Self::scopes(q);
        audit.asked = scopes.iter().map(|s| s.to_string()).collect();
        let basic = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| parse_basic(v).ok_or(()));
        let identity = match basic {
            None => None,
            Some(Err(())) => {
                audit.denied_reason = Some("malformed authorization");
                return Err(error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_request",
                    "malformed Authorization header; use Basic credentials",
                ));
            }
            Some(Ok((user, pass))) => match self.creds.authenticate_from(&user, &pass, ip).await {
                Ok(id) => Some(id),
                Err(AuthError::BadCredentials) => {
                    audit.account = Some(user);
                    audit.denied_reason = Some("bad credentials");
                    return Err(error(StatusCode::UNAUTHORIZED, "invalid_grant", BAD_CREDENTIALS));
                }
                Err(AuthError::Limited(d)) => {
                    audit.account = Some(user);
                    audit.denied_reason = Some("rate limited");
                    return Err(limited(d));
                }
                Err(AuthError::Unavailable(m)) => {
                    tracing::error!(error = %m, "credential check failed");
                    return Err(error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "temporarily_unavailable",
                        "credential check unavailable; retry",
                    ));
                }
            },
        };
        let offline = query_get(q, "offline_token") == Some("true");
        self.answer(identity, &scopes, offline, false, ip, now, audit).await
    }

    async fn post(
        &self,
        form: &[(String, String)],
        ip: IpAddr,
        now: u64,
        audit: &mut TokenAudit,
    ) -> Result<Resp, ApiError> {
        let scopes = Self::scopes(form);
        audit.asked = scopes.iter().map(|s| s.to_string()).collect();
        match query_get(form, "grant_type") {
            Some("password") => {
                let (Some(user), Some(pass)) = (query_get(form, "username"), query_get(form, "password")) else {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "username and password are required",
                    ));
                };
                audit.account = Some(user.to_owned());
                match self.creds.authenticate_from(user, pass, ip).await {
                    Ok(id) => {
                        let offline = query_get(form, "access_type") == Some("offline");
                        self.answer(Some(id), &scopes, offline, true, ip, now, audit).await
                    }
                    Err(AuthError::BadCredentials) => {
                        audit.denied_reason = Some("bad credentials");
                        Err(error(StatusCode::UNAUTHORIZED, "invalid_grant", BAD_CREDENTIALS))
                    }
                    Err(AuthError::Limited(d)) => {
                        audit.denied_reason = Some("rate limited");
                        Err(limited(d))
                    }
                    Err(AuthError::Unavailable(_)) => Err(error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "temporarily_unavailable",
                        "credential check unavailable; retry",
                    )),
                }
            }
            Some("refresh_token") => {
                let Some(rt) = query_get(form, "refresh_token") else {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "refresh_token is required",
                    ));
                };
                let rec = match self.refresh.lookup(rt, now).await {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        audit.denied_reason = Some("unknown refresh token");
                        return Err(error(
                            StatusCode::UNAUTHORIZED,
                            "invalid_grant",
                            "this login has expired or was revoked; run docker login again",
                        ));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "refresh token lookup failed");
                        return Err(error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "temporarily_unavailable",
                            "token storage unavailable; retry",
                        ));
                    }
                };
                let id = rec.identity();
                audit.account = Some(id.account.clone());
                let id = match self.creds.revalidate(&id).await {
                    Ok(Some(id)) => id,
                    Ok(None) => {
                        audit.denied_reason = Some("credential changed");
                        return Err(error(
                            StatusCode::UNAUTHORIZED,
                            "invalid_grant",
                            "the password behind this login changed, expired or was revoked; run docker login again",
                        ));
                    }
                    Err(_) => {
                        return Err(error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "temporarily_unavailable",
                            "credential check unavailable; retry",
                        ))
                    }
                };
                self.answer(Some(id), &scopes, false, true, ip, now, audit).await
            }
            Some(other) => Err(error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("grant_type {other:?} is not supported (password, refresh_token)"),
            )),
            None => Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
            )),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn answer(
        &self,
        id: Option<Identity>,
        scopes: &[Scope],
        offline: bool,
        oauth: bool,
        ip: IpAddr,
        now: u64,
        audit: &mut TokenAudit,
    ) -> Result<Resp, ApiError> {
        let policy = self.policy.get();
        let (subject, gitee_err) = match &id {
            Some(i) => self.subject(i, ip, &policy, scopes).await,
            None => (Subject::anonymous(ip), None),
        };
        let granted = policy.grant(&subject, scopes);
        if let Some(e) = gitee_err {
            // something asked for depends on a Gitee answer that could not be had: say so
            // rather than hand out a token that silently lacks it
            let short = scopes.iter().any(|want| {
                want.resource == Resource::Repository
                    && !granted
                        .iter()
                        .any(|g| g.name == want.name && want.actions.iter().all(|a| g.actions.contains(a)))
            });
            if short {
                audit.account = Some(subject.account.clone());
                audit.denied_reason = Some("gitee unreachable");
                return Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    &format!("{e}; permissions mirrored from Gitee cannot be checked right now, retry shortly"),
                ));
            }
        }
        audit.account = Some(subject.account.clone());
        audit.granted = granted.iter().map(|s| s.to_string()).collect();
        let sub = if subject.anonymous {
            ""
        } else {
            subject.account.as_str()
        };
        // nothing issued on a CI job's ID token outlives it
        let not_after = id
            .as_ref()
            .and_then(|i| i.oidc.as_ref())
            .map(|l| l.expires)
            .unwrap_or(u64::MAX);
        if let Some(l) = id.as_ref().and_then(|i| i.oidc.as_ref()) {
            audit.oidc = Some(format!(
                "provider={} sub={} claims={}",
                l.provider, l.subject, l.matched
            ));
        }
        let token = match self
            .keys
            .issue_until(sub, &subject.groups, subject.limit.is_some(), &granted, now, not_after)
        {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "token signing failed");
                return Err(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "token signing failed",
                ));
            }
        };
        let mut body = json!({
            "token": token,
            "access_token": token,
            "expires_in": self.keys.ttl.min(not_after.saturating_sub(now)),
            "issued_at": crate::util::rfc3339(now),
        });
        if oauth {
            body["scope"] = json!(granted.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" "));
        }
        // a refresh token would outlive a CI job's ID token: docker keeps the ID token instead
        if offline {
            if let Some(i) = id.as_ref().filter(|i| i.oidc.is_none()) {
                match self.refresh.mint(i, now).await {
                    Ok(rt) => body["refresh_token"] = json!(rt),
                    Err(e) => {
                        tracing::error!(error = %e, "storing refresh token failed");
                        return Err(error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "temporarily_unavailable",
                            "token storage unavailable; retry",
                        ));
                    }
                }
            }
        }
        let mut r = http::json(StatusCode::OK, &body);
        http::set(&mut r, header::CACHE_CONTROL, "no-store");
        Ok(r)
    }
}
