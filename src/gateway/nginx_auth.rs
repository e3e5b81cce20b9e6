//! `/nginx/auth`: nginx's `auth_request` target, deciding on the request nginx describes as the
//! registry behind it will read it.

use super::authorize::{need_for, Denial, Need, Principal};
use super::{App, Ctx};
use crate::http::{self, query_pairs, ApiError, Code, Resp};
use crate::registry::{self as reg};
use crate::types::names::RepoName;
use crate::types::scope::Action;
use ::http::{header, HeaderMap, HeaderName, Method, Request, StatusCode};
use hyper::body::Incoming;

impl App {
    /// nginx `auth_request` target: decides for the request nginx describes in
    /// `X-Original-URI`/`X-Original-Method` (or for `?repository=&actions=`), from the caller's
    /// Bearer token or Basic credential. 200 with `X-Auth-Request-User`/`-Email`/`-Groups`;
    /// 401 with the challenge for nginx to pass on; 403 when signed in but not allowed.
    pub(super) async fn nginx_auth(&self, req: Request<Incoming>, cx: &mut Ctx) -> Result<Resp, ApiError> {
        let ip = cx.ip;
        let log = &mut cx.log;
        let h = req.headers();
        let q = query_pairs(req.uri().query());
        let forbidden = |m: &str| Err(ApiError::new(Code::Denied, m));
        // repositories whose pull a cross-repository mount also needs
        let mut mount_from: Vec<RepoName> = Vec::new();
        let need = if let Some(repo) = http::query_get(&q, "repository") {
            let Some(n) = RepoName::parse(repo) else {
                return forbidden("invalid repository parameter");
            };
            let mut acts = Vec::new();
            for a in http::query_get(&q, "actions")
                .unwrap_or("pull")
                .split(',')
                .filter(|a| !a.is_empty())
            {
                match Action::parse(a.trim()) {
                    Some(a) => acts.push(a),
                    None => return forbidden("unknown action in actions parameter"),
                }
            }
            Need::Repo(n, acts)
        } else {
            // the decision is made on the request as the registry behind nginx will read it;
            // whatever cannot be read unambiguously is refused
            let orig = match http::original::parse(h.get("x-original-uri").and_then(|v| v.to_str().ok())) {
                Ok(o) => o,
                Err(e) => {
                    log.denied = Some("unclassifiable original request");
                    return forbidden(e.message());
                }
            };
            let Some(orig_method) = h
                .get("x-original-method")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
            else {
                log.denied = Some("unclassifiable original request");
                return forbidden("X-Original-Method is missing or invalid");
            };
            match v2_rest(&orig.path) {
                Some(rest) => {
                    let route = match reg::classify(rest) {
                        Ok(r) => r,
                        // no scope can name a malformed path: nobody is allowed
                        Err(_) => return forbidden("malformed registry path"),
                    };
                    let Some(need) = need_for(&route, &orig_method) else {
                        return forbidden("method not allowed");
                    };
                    // distribution reads `from` (and every other parameter) from a form body
                    // too, which never reaches this check: such bodies are refused
                    if matches!(orig_method, Method::POST | Method::PUT | Method::PATCH) && is_form(h) {
                        log.denied = Some("form body on a registry path");
                        return forbidden("form-encoded bodies are not accepted on registry paths");
                    }
                    // distribution asks pull on `from` whenever it is present, as it may mount
                    for (k, v) in query_pairs(orig.query) {
                        if k == "from" {
                            match RepoName::parse(&v) {
                                Some(n) => mount_from.push(n),
                                None => return forbidden("invalid repository in the from parameter"),
                            }
                        }
                    }
                    log.repo = route.repo().map(|r| r.to_string());
                    need
                }
                // anything that merely resembles the registry API is refused, not waved through
                None if orig.path.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("/v2")) => {
                    return forbidden("malformed registry path");
                }
                None => Need::Account,
            }
        };
        let principal = match self.authorize_with(h, &need, ip, true).await {
            Ok(p) => p,
            // an anonymous token is no sign-in: ask for one
            Err(Denial::Insufficient | Denial::Anonymous) if matches!(need, Need::Account) => {
                log.denied = Some("no valid credentials");
                return Err(self.challenge(&need, &mount_from, Denial::Missing));
            }
            Err(Denial::Insufficient) => return forbidden("requested access to the resource is denied"),
            Err(Denial::Limited(_)) => return forbidden("too many failed sign-ins; retry later"),
            Err(d) => {
                log.denied = Some("no valid credentials");
                return Err(self.challenge(&need, &mount_from, d));
            }
        };
        for from in &mount_from {
            let pull = Need::Repo(from.clone(), vec![Action::Pull]);
            match self.principal_allows(&principal, &pull, ip).await {
                Ok(true) => {}
                Ok(false) | Err(Denial::Insufficient) => {
                    log.denied = Some("no pull on the mount source");
                    return forbidden("mounting needs pull access to the source repository");
                }
                Err(d) => return Err(self.challenge(&need, &mount_from, d)),
            }
        }
        let (account, groups) = match &principal {
            Principal::Token(c) if c.sub.is_empty() => ("anonymous".to_owned(), vec![]),
            Principal::Token(c) => (c.sub.clone(), c.grp.clone()),
            Principal::Basic(i) => (i.account.clone(), i.groups.clone()),
        };
        if let Some(allowed) = http::query_get(&q, "allowed_groups") {
            let ok = allowed.split(',').map(str::trim).any(|g| groups.iter().any(|x| x == g));
            if !ok {
                log.account = Some(account);
                return forbidden("not a member of an allowed group");
            }
        }
        log.account = Some(account.clone());
        let mut r = http::status(StatusCode::OK);
        http::set(&mut r, HeaderName::from_static("x-auth-request-user"), &account);
        // a browser session knows the Gitee account's e-mail address (when Gitee shares it)
        let email = if h.get(header::AUTHORIZATION).is_none() {
            self.gitee
                .as_ref()
                .and_then(|_| crate::web::session_of(&self.signer, h))
                .and_then(|s| s.email)
                .unwrap_or_default()
        } else {
            String::new()
        };
        http::set(&mut r, HeaderName::from_static("x-auth-request-email"), &email);
        http::set(
            &mut r,
            HeaderName::from_static("x-auth-request-groups"),
            &groups.join(","),
        );
        Ok(r)
    }
}

/// The part of a path after `/v2/` when it is a registry API path (`/v2` and `/v2/` included).
fn v2_rest(path: &str) -> Option<&str> {
    match path.strip_prefix("/v2")? {
        "" => Some(""),
        rest => rest.strip_prefix('/'),
    }
}

/// Whether a request declares a form body (which Go's `FormValue` would read parameters from).
fn is_form(h: &HeaderMap) -> bool {
    h.get_all(header::CONTENT_TYPE).iter().any(|v| {
        let t = String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase();
        let t = t.split(';').next().unwrap_or("").trim().to_owned();
        t == "application/x-www-form-urlencoded" || t == "multipart/form-data"
    })
}
