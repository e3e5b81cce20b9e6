//! The gateway: every request passes the same stages, each in its own file, sharing one
//! per-request context (`respond::Ctx`: the client's address, the connection, what the access
//! log will say):
//!
//! 1. client address and allowlist (`client.rs`): who is really asking, and may they ask at all;
//! 2. hygiene (`hygiene.rs`): refuse what no well-behaved client sends, strip what clients may not set;
//! 3. route: the path to one of a closed set of endpoints ([`Endpoint::of`], a pure function);
//! 4. authenticate and authorise (`authorize.rs`): one step shared by `/v2/` (`v2.rs`) and
//!    `/nginx/auth` (`nginx_auth.rs`);
//! 5. dispatch: registry, token service, API, pages, upstream;
//! 6. respond (`respond.rs`): the headers every answer carries, then one access-log event and
//!    the metrics.

mod authorize;
mod client;
mod hygiene;
mod nginx_auth;
mod respond;
mod v2;

pub use client::NetLists;
use respond::{content_length, Ctx};

use crate::auth::endpoint::{TokenAudit, TokenService};
use crate::auth::token::Claims;
use crate::http::{self, ApiError, Code, Resp};
use crate::registry::Registry;
use crate::server::ConnInfo;
use ::http::{header, HeaderValue, Method, Request, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Duration;

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
    /// Replication rules: push rules get every registry event.
    pub replicator: Option<Arc<crate::replicate::Replicator>>,
    /// `policy:` (trusted images), checked on manifest reads.
    pub trust: Option<Arc<crate::trust::Trust>>,
    gitee: Option<Arc<crate::gitee::Gitee>>,
    signer: crate::web::session::Signer,
    token_cache: moka::sync::Cache<String, Arc<Claims>>,
}

/// The endpoints the gateway serves, from the request path alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    V2,
    Token,
    Api,
    Scans,
    Web,
    NginxAuth,
    Jwks,
    Metrics,
    Healthz,
    Readyz,
    Unknown,
}

impl Endpoint {
    fn of(path: &str) -> Self {
        match path {
            p if p == "/v2" || p.starts_with("/v2/") => Endpoint::V2,
            "/token" => Endpoint::Token,
            p if p == "/api/v1/tokens" || p.starts_with("/api/v1/tokens/") => Endpoint::Api,
            p if p.starts_with("/api/v1/scans/") => Endpoint::Scans,
            p if crate::web::Web::handles(p) => Endpoint::Web,
            "/nginx/auth" => Endpoint::NginxAuth,
            "/.well-known/jwks.json" => Endpoint::Jwks,
            "/metrics" => Endpoint::Metrics,
            "/healthz" => Endpoint::Healthz,
            "/readyz" => Endpoint::Readyz,
            _ => Endpoint::Unknown,
        }
    }
}

/// Everything the gateway is assembled from (built by [`crate::bootstrap`]).
pub struct Parts {
    pub public_url: String,
    pub service: String,
    pub registry: Registry,
    pub tokens: TokenService,
    pub net: NetLists,
    pub hsts_max_age: Option<u64>,
    pub token_limit: crate::ratelimit::Limiter,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub notifier: Option<Arc<crate::notify::Notifier>>,
    pub upstream: Option<crate::proxy::Upstream>,
    pub replicator: Option<Arc<crate::replicate::Replicator>>,
    pub trust: Option<Arc<crate::trust::Trust>>,
    /// Gitee sign-in for browsers (the same client auth holds as its identity source).
    pub gitee: Option<Arc<crate::gitee::Gitee>>,
    /// Signs the browser's session and sign-in cookies.
    pub signer: crate::web::session::Signer,
}

impl App {
    pub fn new(p: Parts) -> Self {
        let realm = format!("{}/token", p.public_url);
        let hsts = p
            .hsts_max_age
            .filter(|a| *a > 0)
            .and_then(|a| HeaderValue::from_str(&format!("max-age={a}; includeSubDomains")).ok());
        App {
            public_url: p.public_url,
            realm,
            service: p.service,
            registry: p.registry,
            tokens: p.tokens,
            net: crate::live::Live::new(p.net),
            hsts,
            token_limit: p.token_limit,
            metrics: p.metrics,
            notifier: crate::live::Live::new(p.notifier),
            upstream: p.upstream,
            replicator: p.replicator,
            trust: p.trust,
            gitee: p.gitee,
            signer: p.signer,
            token_cache: moka::sync::Cache::builder()
                .max_capacity(50_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
        }
    }

    /// One request through every stage.
    pub async fn handle(&self, mut req: Request<Incoming>, conn: ConnInfo) -> Resp {
        let mut cx = Ctx::new(&req, self.client_ip(req.headers(), conn.peer.ip()), conn.tls);
        let resp = if !self.allowed_ip(cx.ip) {
            cx.log.denied = Some("network not allowed");
            Err(ApiError::new(
                Code::Denied,
                format!("requests from {} are not allowed", cx.ip),
            ))
        } else if let Err(e) = self.hygiene(&mut req) {
            Err(e)
        } else {
            self.dispatch(req, &mut cx).await
        };
        self.respond(resp.unwrap_or_else(ApiError::into_response), cx)
    }

    /// The endpoint's answer: what it produced, or the error it ended with.
    async fn dispatch(&self, req: Request<Incoming>, cx: &mut Ctx) -> Result<Resp, ApiError> {
        let ip = cx.ip;
        let log = &mut cx.log;
        log.bytes_in = content_length(req.headers());
        match Endpoint::of(req.uri().path()) {
            Endpoint::V2 => {
                log.route = "v2";
                self.v2(req, cx).await
            }
            Endpoint::Token => {
                log.route = "token";
                if let Err(d) = self.token_limit.take_async(&ip.to_string()).await {
                    log.denied = Some("rate limited");
                    return Err(crate::auth::endpoint::limited(d));
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
                    .await
                    .unwrap_or_else(ApiError::into_response);
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
                    oidc = audit.oidc.as_deref().unwrap_or("-"),
                    "token"
                );
                Ok(r)
            }
            Endpoint::Api => {
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
                Ok(r)
            }
            Endpoint::Scans => {
                log.route = "api";
                self.scan_report(req, ip).await
            }
            Endpoint::Web => {
                log.route = "web";
                let (parts, body) = req.into_parts();
                let web = crate::web::Web {
                    gitee: self.gitee.as_deref(),
                    signer: &self.signer,
                    tokens: &self.tokens,
                    registry: &self.registry,
                    public_url: &self.public_url,
                    ip,
                    replicator: self.replicator.as_deref(),
                    trust: self.trust.as_deref(),
                };
                let (r, who) = web
                    .handle(&parts.method, parts.uri.path(), parts.uri.query(), &parts.headers, body)
                    .await;
                log.account = who;
                Ok(r)
            }
            Endpoint::NginxAuth => {
                log.route = "nginx_auth";
                self.nginx_auth(req, cx).await
            }
            Endpoint::Jwks => {
                log.route = "jwks";
                Ok(http::json(StatusCode::OK, self.tokens.keys.jwks()))
            }
            Endpoint::Metrics => {
                log.route = "metrics";
                let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok());
                let (text, content_type) = self.metrics.render(accept);
                let mut r = Resp::new(http::full(text));
                http::set(&mut r, header::CONTENT_TYPE, content_type);
                Ok(r)
            }
            Endpoint::Healthz => {
                log.route = "health";
                Ok(http::json(StatusCode::OK, &serde_json::json!({"status":"ok"})))
            }
            Endpoint::Readyz => {
                log.route = "health";
                let upstream_ok = match &self.upstream {
                    Some(u) => u.ready().await,
                    None => true,
                };
                if !upstream_ok {
                    return Ok(http::json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &serde_json::json!({"status":"unavailable","reason":"the upstream registry is not reachable"}),
                    ));
                }
                Ok(match self.registry.store().ready().await {
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
                })
            }
            Endpoint::Unknown => {
                log.route = "other";
                Err(ApiError::json(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint"))
            }
        }
    }
}

impl crate::server::Handler for App {
    fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> impl std::future::Future<Output = Resp> + Send {
        App::handle(self, req, conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_from_paths() {
        for (p, e) in [
            ("/v2", Endpoint::V2),
            ("/v2/", Endpoint::V2),
            ("/v2/a/b/manifests/x", Endpoint::V2),
            ("/v2x", Endpoint::Unknown),
            ("/token", Endpoint::Token),
            ("/token/", Endpoint::Unknown),
            ("/api/v1/tokens", Endpoint::Api),
            ("/api/v1/tokens/abc", Endpoint::Api),
            ("/api/v1/tokensx", Endpoint::Unknown),
            ("/", Endpoint::Web),
            ("/ui/repos/a/b", Endpoint::Web),
            ("/nginx/auth", Endpoint::NginxAuth),
            ("/.well-known/jwks.json", Endpoint::Jwks),
            ("/metrics", Endpoint::Metrics),
            ("/healthz", Endpoint::Healthz),
            ("/readyz", Endpoint::Readyz),
            ("/V2/", Endpoint::Unknown),
        ] {
            assert_eq!(Endpoint::of(p), e, "{p}");
        }
    }
}
