//! The request pipeline, top to bottom in one place:
//! client address -> allowlist -> request hygiene -> classify -> authorize -> dispatch ->
//! response headers -> one access-log event.

use crate::auth::credentials::{parse_basic, AuthError, Identity};
use crate::auth::endpoint::{TokenAudit, TokenService};
use crate::auth::policy::{Policy, Subject};
use crate::auth::scope::{Action, Scope};
use crate::auth::token::{Claims, VerifyError};
use crate::http::{self, query_pairs, Resp};
use crate::registry::error::{Code, RegistryError};
use crate::registry::names::RepoName;
use crate::registry::{self as reg, Permissions, Registry, Route, RouteError};
use crate::server::ConnInfo;
use ::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use hyper::body::Incoming;
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct App {
    pub public_url: String,
    pub realm: String,
    pub service: String,
    pub registry: Registry,
    pub tokens: TokenService,
    /// Client networks allowed at all, and proxies whose forwarding headers are believed.
    pub net: crate::live::Live<NetLists>,
    pub hsts: Option<HeaderValue>,
    pub token_limit: crate::ratelimit::Limiter,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub notifier: crate::live::Live<Option<Arc<crate::notify::Notifier>>>,
    /// Upstream mode: authorised `/v2/` requests go to this registry instead of the embedded one.
    pub upstream: Option<crate::proxy::Upstream>,
    token_cache: moka::sync::Cache<String, Arc<Claims>>,
}

#[derive(Debug, Clone, Default)]
pub struct NetLists {
    pub allow: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
}

/// What one request did, for the access log.
#[derive(Default)]
struct Log {
    account: Option<String>,
    route: &'static str,
    repo: Option<String>,
    digest: Option<String>,
    denied: Option<&'static str>,
    bytes_in: Option<u64>,
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// What a `/v2/` route needs from the caller.
enum Need {
    /// Any valid credential (the `/v2/` check).
    Authenticated,
    Catalog,
    Repo(RepoName, Vec<Action>),
}

fn need_for(route: &Route, m: &Method) -> Option<Need> {
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

/// The methods a `/v2/` route answers (for `Allow` on 405).
fn allowed_methods(route: &Route) -> &'static str {
    match route {
        Route::Base => "GET, HEAD",
        Route::Catalog | Route::Tags(_) | Route::Referrers(..) => "GET",
        Route::Manifest(..) => "GET, HEAD, PUT, DELETE",
        Route::Blob(..) => "GET, HEAD, DELETE",
        Route::UploadStart(_) => "POST",
        Route::Upload(..) => "GET, PATCH, PUT, DELETE",
    }
}

/// An authenticated caller of `/v2/`.
enum Principal {
    Token(Arc<Claims>),
    Basic(Identity),
}

enum Denial {
    /// No credential: challenge without `error`.
    Missing,
    InvalidToken(VerifyError),
    BadBasic,
    Insufficient,
    Unavailable,
    Limited(Duration),
}

struct Perms<'a> {
    principal: &'a Principal,
    policy: &'a Policy,
    ip: IpAddr,
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
            },
            Principal::Basic(id) => id.subject(self.ip),
        }
    }
}

impl Permissions for Perms<'_> {
    fn can_pull(&self, repo: &RepoName) -> bool {
        if let Principal::Token(c) = self.principal {
            if c.allows("repository", repo.as_str(), Action::Pull) {
                return true;
            }
        }
        self.policy
            .actions(&self.subject(), repo.as_str())
            .contains(&Action::Pull)
    }
}

/// Headers that carry identity between a proxy and its backend; a client must never set them.
fn is_identity_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace('_', "-");
    n == "x-forwarded-user"
        || n == "x-forwarded-email"
        || n == "x-forwarded-groups"
        || n == "x-forwarded-preferred-username"
        || n == "x-forwarded-access-token"
        || n == "x-remote-user"
        || n == "x-remote-group"
        || n == "remote-user"
        || n.starts_with("x-auth-request-")
}

fn normalize(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl App {
    pub fn new(
        public_url: String,
        service: String,
        registry: Registry,
        tokens: TokenService,
        allow: Vec<IpNet>,
        trusted_proxies: Vec<IpNet>,
        hsts_max_age: Option<u64>,
    ) -> Self {
        let realm = format!("{public_url}/token");
        let hsts = hsts_max_age
            .filter(|a| *a > 0)
            .and_then(|a| HeaderValue::from_str(&format!("max-age={a}; includeSubDomains")).ok());
        App {
            public_url,
            realm,
            service,
            registry,
            tokens,
            net: crate::live::Live::new(NetLists { allow, trusted_proxies }),
            hsts,
            token_limit: crate::ratelimit::Limiter::new(0.0, 0.0),
            metrics: Default::default(),
            notifier: crate::live::Live::new(None),
            upstream: None,
            token_cache: moka::sync::Cache::builder()
                .max_capacity(50_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
        }
    }

    /// The real client address: the TCP peer, or, when the peer is a trusted proxy, the
    /// right-most address in `X-Forwarded-For`/`Forwarded` that is not itself a trusted proxy.
    pub fn client_ip(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        let peer = normalize(peer);
        let net = self.net.get();
        let trusted = |ip: &IpAddr| net.trusted_proxies.iter().any(|n| n.contains(ip));
        if !trusted(&peer) {
            return peer;
        }
        let mut chain: Vec<IpAddr> = Vec::new();
        for v in headers.get_all(HeaderName::from_static("x-forwarded-for")) {
            if let Ok(s) = v.to_str() {
                chain.extend(s.split(',').filter_map(|p| parse_addr(p.trim())));
            }
        }
        if chain.is_empty() {
            for v in headers.get_all(header::FORWARDED) {
                if let Ok(s) = v.to_str() {
                    for elem in s.split(',') {
                        for pair in elem.split(';') {
                            if let Some((k, val)) = pair.trim().split_once('=') {
                                if k.trim().eq_ignore_ascii_case("for") {
                                    if let Some(ip) = parse_addr(val.trim().trim_matches('"')) {
                                        chain.push(ip);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let mut client = peer;
        for ip in chain.into_iter().rev() {
            let ip = normalize(ip);
            client = ip;
            if !trusted(&ip) {
                break;
            }
        }
        client
    }

    fn allowed_ip(&self, ip: IpAddr) -> bool {
        let net = self.net.get();
        net.allow.is_empty() || net.allow.iter().any(|n| n.contains(&ip))
    }

    pub async fn handle(&self, mut req: Request<Incoming>, conn: ConnInfo) -> Resp {
        let start = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let ip = self.client_ip(req.headers(), conn.peer.ip());
        let mut log = Log::default();
        let mut resp = if !self.allowed_ip(ip) {
            log.denied = Some("network not allowed");
            http::json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({"errors":[{"code":"DENIED","message":format!("requests from {ip} are not allowed")}]}),
            )
        } else if let Some(r) = self.hygiene(&mut req) {
            r
        } else {
            self.dispatch(req, ip, &mut log).await
        };
        self.finish(&mut resp, conn.tls);
        let status = resp.status().as_u16();
        let elapsed = start.elapsed().as_secs_f64();
        self.metrics.request(log.route, method.as_str(), status, elapsed);
        if let Some(n) = content_length(resp.headers()) {
            crate::metrics::Metrics::add(&self.metrics.bytes_out, n);
        }
        if let Some(n) = log.bytes_in {
            crate::metrics::Metrics::add(&self.metrics.bytes_in, n);
        }
        if (status == 500 || status == 503) && log.route != "token" && log.route != "health" {
            crate::metrics::Metrics::add(&self.metrics.storage_errors, 1);
        }
        tracing::info!(
            target: "regate::access",
            %ip,
            method = %method,
            path = %path,
            status,
            ms = elapsed * 1000.0,
            account = log.account.as_deref().unwrap_or("-"),
            route = log.route,
            repo = log.repo.as_deref().unwrap_or("-"),
            digest = log.digest.as_deref().unwrap_or("-"),
            denied = log.denied.unwrap_or("-"),
            "request"
        );
        resp
    }

    /// Refuses requests no well-behaved client sends and strips headers clients may not set.
    fn hygiene(&self, req: &mut Request<Incoming>) -> Option<Resp> {
        let bad = |m: &str| {
            Some(http::json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"errors":[{"code":"BAD_REQUEST","message":m}]}),
            ))
        };
        if req.version() < ::http::Version::HTTP_2 && req.uri().scheme().is_some() {
            return bad("absolute-form request targets are not accepted");
        }
        let h = req.headers();
        if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
            return bad("Content-Length and Transfer-Encoding together are not accepted");
        }
        if h.get_all(header::CONTENT_LENGTH).iter().count() > 1 {
            return bad("duplicate Content-Length");
        }
        let path = req.uri().path();
        if !path.starts_with('/') || path.contains("//") || path.split('/').any(|s| s == ".." || s == ".") {
            return bad("malformed path");
        }
        // hop-by-hop headers named in Connection, and identity headers, go no further
        let mut drop: Vec<HeaderName> = Vec::new();
        for v in req.headers().get_all(header::CONNECTION) {
            if let Ok(s) = v.to_str() {
                for n in s.split(',') {
                    if let Ok(name) = HeaderName::from_bytes(n.trim().as_bytes()) {
                        drop.push(name);
                    }
                }
            }
        }
        drop.extend(req.headers().keys().filter(|k| is_identity_header(k.as_str())).cloned());
        for n in drop {
            req.headers_mut().remove(n);
        }
        None
    }

    async fn dispatch(&self, req: Request<Incoming>, ip: IpAddr, log: &mut Log) -> Resp {
        log.bytes_in = content_length(req.headers());
        let path = req.uri().path();
        if path == "/v2" || path.starts_with("/v2/") {
            log.route = "v2";
            return self.v2(req, ip, log).await;
        }
        match path {
            "/token" => {
                log.route = "token";
                if let Err(d) = self.token_limit.take_async(&ip.to_string()).await {
                    log.denied = Some("rate limited");
                    return crate::auth::endpoint::limited(d);
                }
                let (parts, body) = req.into_parts();
                let mut audit = TokenAudit::default();
                let r = self
                    .tokens
                    .handle(
                        &parts.method,
                        &parts.headers,
                        parts.uri.query(),
                        body,
                        ip,
                        crate::util::now_secs(),
                        &mut audit,
                    )
                    .await;
                log.account = audit.account.clone();
                log.denied = audit.denied_reason;
                let counter = if r.status().is_success() {
                    &self.metrics.tokens_issued
                } else {
                    &self.metrics.tokens_denied
                };
                crate::metrics::Metrics::add(counter, 1);
                tracing::info!(
                    target: "regate::audit",
                    event = if r.status().is_success() { "token_issued" } else { "token_denied" },
                    %ip,
                    account = audit.account.as_deref().unwrap_or("-"),
                    asked = %audit.asked.join(" "),
                    granted = %audit.granted.join(" "),
                    reason = audit.denied_reason.unwrap_or("-"),
                    "token"
                );
                r
            }
            p if p == "/api/v1/tokens" || p.starts_with("/api/v1/tokens/") => {
                log.route = "api";
                let (parts, body) = req.into_parts();
                let session = self.session_identity(&parts.headers);
                let (r, who) = crate::api::tokens(
                    &self.tokens.creds,
                    &parts.method,
                    parts.uri.path(),
                    &parts.headers,
                    body,
                    ip,
                    session,
                )
                .await;
                log.account = who;
                if r.status().is_success() && parts.method != Method::GET {
                    tracing::info!(target: "regate::audit", event = "cli_password", action = %parts.method, %ip,
                        account = log.account.as_deref().unwrap_or("-"), "api");
                }
                r
            }
            p if crate::gitee::web::Web::handles(p) => {
                log.route = "web";
                let (parts, body) = req.into_parts();
                let web = crate::gitee::web::Web {
                    gitee: self.tokens.creds.gitee().map(|g| g.as_ref()),
                    tokens: &self.tokens,
                    registry: &self.registry,
                    public_url: &self.public_url,
                    ip,
                };
                let (r, who) = web
                    .handle(&parts.method, parts.uri.path(), parts.uri.query(), &parts.headers, body)
                    .await;
                log.account = who;
                r
            }
            "/nginx/auth" => {
                log.route = "nginx_auth";
                self.nginx_auth(req, ip, log).await
            }
            "/.well-known/jwks.json" => {
                log.route = "jwks";
                http::json(StatusCode::OK, self.tokens.keys.jwks())
            }
            "/metrics" => {
                log.route = "metrics";
                let mut r = Resp::new(http::full(self.metrics.render()));
                http::set(&mut r, header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
                r
            }
            "/healthz" => {
                log.route = "health";
                http::json(StatusCode::OK, &serde_json::json!({"status":"ok"}))
            }
            "/readyz" => {
                log.route = "health";
                let upstream_ok = match &self.upstream {
                    Some(u) => u.ready().await,
                    None => true,
                };
                if !upstream_ok {
                    return http::json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &serde_json::json!({"status":"unavailable","reason":"the upstream registry is not reachable"}),
                    );
                }
                match self.registry.store().ready().await {
                    Ok(()) => http::json(StatusCode::OK, &serde_json::json!({"status":"ready"})),
                    Err(e) if crate::storage::is_full(&e) => {
                        tracing::warn!(error = %e, "storage is full");
                        http::json(
                            StatusCode::SERVICE_UNAVAILABLE,
                            &serde_json::json!({"status":"unavailable","reason":"storage is full"}),
                        )
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "storage not ready");
                        http::json(
                            StatusCode::SERVICE_UNAVAILABLE,
                            &serde_json::json!({"status":"unavailable","reason":"storage is not reachable"}),
                        )
                    }
                }
            }
            _ => {
                log.route = "other";
                http::json(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({"errors":[{"code":"NOT_FOUND","message":"no such endpoint"}]}),
                )
            }
        }
    }

    async fn v2(&self, req: Request<Incoming>, ip: IpAddr, log: &mut Log) -> Resp {
        let rest = req.uri().path().strip_prefix("/v2").unwrap_or("");
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        let route = match reg::classify(rest) {
            Ok(r) => r,
            Err(e) => {
                let err = match e {
                    RouteError::NotFound => RegistryError::new(Code::NotFound, "no such API endpoint"),
                    RouteError::NameInvalid => RegistryError::new(Code::NameInvalid, "invalid repository name"),
                    RouteError::DigestInvalid => RegistryError::new(Code::DigestInvalid, "invalid digest"),
                    // no manifest can have such a name: a read answers as for any unknown one
                    RouteError::ReferenceInvalid if matches!(*req.method(), Method::GET | Method::HEAD) => {
                        RegistryError::new(
                            Code::ManifestUnknown,
                            "no manifest has this reference: it is not a valid tag",
                        )
                    }
                    RouteError::ReferenceInvalid => RegistryError::new(Code::TagInvalid, "invalid tag"),
                    RouteError::UploadInvalid => RegistryError::new(Code::BlobUploadUnknown, "no such upload"),
                };
                return err.into_response();
            }
        };
        log.route = route.kind();
        log.repo = route.repo().map(|r| r.to_string());
        let method = req.method().clone();
        let allow = allowed_methods(&route);
        let Some(need) = need_for(&route, &method) else {
            let mut r = RegistryError::new(Code::Unsupported, format!("{method} is not allowed on this endpoint"))
                .into_response();
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            http::set(&mut r, header::ALLOW, allow);
            return r;
        };
        let query = query_pairs(req.uri().query());
        // a cross-repository mount also asks to read the source repository
        let mount_from = match &route {
            Route::UploadStart(_) => http::query_get(&query, "from")
                .filter(|_| http::query_get(&query, "mount").is_some())
                .and_then(RepoName::parse),
            _ => None,
        };
        let principal = match self.authorize(req.headers(), &need, ip).await {
            Ok(p) => p,
            Err(d) => {
                if !matches!(d, Denial::Missing) {
                    crate::metrics::Metrics::add(&self.metrics.auth_failures, 1);
                }
                log.denied = Some(match d {
                    Denial::Missing => "no credentials",
                    Denial::InvalidToken(_) => "invalid token",
                    Denial::BadBasic => "bad credentials",
                    Denial::Insufficient => "insufficient scope",
                    Denial::Unavailable => "credential check unavailable",
                    Denial::Limited(_) => "rate limited",
                });
                return self.challenge(&need, mount_from.as_ref(), d);
            }
        };
        log.account = Some(match &principal {
            Principal::Token(c) if c.sub.is_empty() => "anonymous".to_owned(),
            Principal::Token(c) => c.sub.clone(),
            Principal::Basic(i) => i.account.clone(),
        });
        if let Some(up) = &self.upstream {
            return self.forward(up, req, &principal, &need, ip).await;
        }
        let policy = self.tokens.policy.get();
        let perms = Perms {
            principal: &principal,
            policy: &policy,
            ip,
        };
        let (parts, body) = req.into_parts();
        let r = reg::Request {
            method: &parts.method,
            headers: &parts.headers,
            query: &query,
            body,
            perms: &perms,
        };
        match self.registry.handle(route, r).await {
            Ok(out) => {
                let notifier = self.notifier.get();
                if let (Some(ev), Some(n)) = (&out.event, notifier.as_ref()) {
                    n.publish(
                        ev.clone(),
                        crate::notify::Context {
                            actor: log.account.clone().unwrap_or_default(),
                            addr: ip.to_string(),
                            method: parts.method.to_string(),
                            user_agent: parts
                                .headers
                                .get(header::USER_AGENT)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned(),
                            host: self.public_url.split("://").nth(1).unwrap_or("").to_owned(),
                        },
                    )
                    .await;
                }
                if let Some(ev) = &out.event {
                    self.metrics.event(ev.action);
                    log.digest = Some(ev.digest.to_string());
                    if ev.action != "pull" {
                        tracing::info!(
                            target: "regate::audit",
                            event = ev.action,
                            %ip,
                            account = log.account.as_deref().unwrap_or("-"),
                            repo = %ev.repo,
                            digest = %ev.digest,
                            tag = ev.tag.as_deref().unwrap_or("-"),
                            "registry"
                        );
                    }
                }
                out.resp
            }
            Err(e) => {
                let mut r = e.into_response();
                if r.status() == StatusCode::METHOD_NOT_ALLOWED {
                    // deletes disabled: everything but DELETE
                    let without_delete = allow.replace(", DELETE", "");
                    http::set(&mut r, header::ALLOW, &without_delete);
                }
                r
            }
        }
    }

    /// nginx `auth_request` target: decides for the request nginx describes in
    /// `X-Original-URI`/`X-Original-Method` (or for `?repository=&actions=`), from the caller's
    /// Bearer token or Basic credential. 200 with `X-Auth-Request-User`/`-Email`/`-Groups`;
    /// 401 with the challenge for nginx to pass on; 403 when signed in but not allowed.
    async fn nginx_auth(&self, req: Request<Incoming>, ip: IpAddr, log: &mut Log) -> Resp {
        let h = req.headers();
        let q = query_pairs(req.uri().query());
        let orig_uri = h.get("x-original-uri").and_then(|v| v.to_str().ok()).unwrap_or("/");
        let orig_path = orig_uri.split('?').next().unwrap_or("/");
        let orig_query = orig_uri.split_once('?').map(|(_, q)| q);
        let orig_method = h
            .get("x-original-method")
            .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
            .unwrap_or(Method::GET);
        let forbidden = |m: &str| {
            http::json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({"errors":[{"code":"DENIED","message":m}]}),
            )
        };
        let mut mount_from = None;
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
        } else if orig_path == "/v2" || orig_path.starts_with("/v2/") {
            let rest = orig_path.strip_prefix("/v2").unwrap_or("").trim_start_matches('/');
            let route = match reg::classify(rest) {
                Ok(r) => r,
                // no scope can name a malformed path: nobody is allowed
                Err(_) => return forbidden("malformed registry path"),
            };
            let Some(need) = need_for(&route, &orig_method) else {
                return forbidden("method not allowed");
            };
            if let Route::UploadStart(_) = route {
                let oq = query_pairs(orig_query);
                mount_from = http::query_get(&oq, "from")
                    .filter(|_| http::query_get(&oq, "mount").is_some())
                    .and_then(RepoName::parse);
            }
            log.repo = route.repo().map(|r| r.to_string());
            need
        } else {
            Need::Authenticated
        };
        let principal = match self.authorize_with(h, &need, ip, true).await {
            Ok(p) => p,
            Err(Denial::Insufficient) => return forbidden("requested access to the resource is denied"),
            Err(Denial::Limited(_)) => return forbidden("too many failed sign-ins; retry later"),
            Err(d) => {
                log.denied = Some("no valid credentials");
                return self.challenge(&need, mount_from.as_ref(), d);
            }
        };
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
            self.tokens
                .creds
                .gitee()
                .and_then(|g| crate::gitee::web::session_of(g, h))
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
        r
    }

    /// Upstream mode: hands the authorised request to the upstream registry. A Bearer token the
    /// client sent is passed on (the upstream may trust regate as its token server); a caller
    /// who used Basic credentials gets a regate token minted for exactly the authorised scope.
    async fn forward(
        &self,
        up: &crate::proxy::Upstream,
        req: Request<Incoming>,
        principal: &Principal,
        need: &Need,
        ip: IpAddr,
    ) -> Resp {
        let authorization = match principal {
            Principal::Token(_) => req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            Principal::Basic(id) => {
                let scopes = match need {
                    Need::Authenticated => vec![],
                    Need::Catalog => vec![Scope::catalog()],
                    Need::Repo(n, a) => vec![Scope::repository(n.as_str(), a)],
                };
                self.tokens
                    .keys
                    .issue(
                        &id.account,
                        &id.groups,
                        id.limit.is_some(),
                        &scopes,
                        crate::util::now_secs(),
                    )
                    .ok()
                    .map(|t| format!("Bearer {t}"))
            }
        };
        let (parts, body) = req.into_parts();
        let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/v2/");
        up.forward(crate::proxy::Forward {
            method: &parts.method,
            path_and_query: pq,
            headers: &parts.headers,
            body,
            client_ip: ip,
            public_url: &self.public_url,
            authorization,
        })
        .await
    }

    /// The browser session's identity (Gitee sign-in), if the request carries a valid cookie.
    fn session_identity(&self, headers: &HeaderMap) -> Option<Identity> {
        let g = self.tokens.creds.gitee()?;
        let s = crate::gitee::web::session_of(g, headers)?;
        // a local account of the same name appeared since: the session no longer stands
        (!self.tokens.creds.is_local(&s.login)).then(|| crate::gitee::web::identity_of(&s))
    }

    /// Whether a signed-in identity (no token) may do what `need` says: the policy decides,
    /// with Gitee's permissions looked up first when rules mirror them.
    async fn identity_allows(&self, id: &Identity, need: &Need, ip: IpAddr) -> Result<bool, Denial> {
        let policy = self.tokens.policy.get();
        Ok(match need {
            Need::Authenticated => true,
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

    async fn authorize(&self, headers: &HeaderMap, need: &Need, ip: IpAddr) -> Result<Principal, Denial> {
        self.authorize_with(headers, need, ip, false).await
    }

    /// `session`: also accept the browser session cookie (for `/nginx/auth` only: a cookie
    /// is never a credential for `/v2/` itself).
    async fn authorize_with(
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
        let ok = match (&principal, need) {
            (_, Need::Authenticated) => true,
            (Principal::Token(c), Need::Catalog) => c.allows("registry", "catalog", Action::All),
            (Principal::Token(c), Need::Repo(n, acts)) => acts.iter().all(|a| c.allows("repository", n.as_str(), *a)),
            (Principal::Basic(id), need) => self.identity_allows(id, need, ip).await?,
        };
        if ok {
            Ok(principal)
        } else {
            Err(Denial::Insufficient)
        }
    }

    /// The 401 that tells a client where to get a token and for what.
    fn challenge(&self, need: &Need, mount_from: Option<&RepoName>, d: Denial) -> Resp {
        let mut scopes: Vec<String> = match need {
            Need::Authenticated => vec![],
            Need::Catalog => vec![Scope::catalog().to_string()],
            Need::Repo(n, a) => vec![Scope::repository(n.as_str(), a).to_string()],
        };
        if let Some(f) = mount_from {
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
                if !matches!(need, Need::Authenticated) {
                    v.push_str(",error=\"insufficient_scope\"");
                }
                (Code::Denied, "requested access to the resource is denied".to_owned())
            }
            Denial::Unavailable => {
                return RegistryError::new(Code::Unavailable, "credential check unavailable; retry").into_response();
            }
            Denial::Limited(d) => {
                let mut r =
                    RegistryError::new(Code::TooManyRequests, "too many failed sign-ins; retry later").into_response();
                http::set(&mut r, header::RETRY_AFTER, &d.as_secs().max(1).to_string());
                return r;
            }
        };
        let mut e = RegistryError::new(code, msg);
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
        let mut r = e.into_response();
        http::set(&mut r, header::WWW_AUTHENTICATE, &v);
        r
    }

    fn finish(&self, r: &mut Resp, tls: bool) {
        let h = r.headers_mut();
        h.insert(
            HeaderName::from_static("docker-distribution-api-version"),
            HeaderValue::from_static("registry/2.0"),
        );
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        if tls {
            if let Some(v) = &self.hsts {
                h.insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
            }
        }
    }
}

fn subject_of(id: &Identity, ip: IpAddr) -> Subject {
    id.subject(ip)
}

fn parse_addr(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    // "[v6]:port", "v4:port", "[v6]"
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers() {
        for h in [
            "X-Forwarded-User",
            "x_forwarded_user",
            "X-Auth-Request-Email",
            "x_auth_request_user",
            "X-Remote-User",
        ] {
            assert!(is_identity_header(h), "{h}");
        }
        assert!(!is_identity_header("X-Forwarded-For"));
        assert!(!is_identity_header("Authorization"));
    }

    #[test]
    fn addrs() {
        assert_eq!(parse_addr("10.0.0.1"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(parse_addr("10.0.0.1:443"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(parse_addr("[2001:db8::1]:80"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(parse_addr("[2001:db8::1]"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(parse_addr("unknown"), None);
    }
}
