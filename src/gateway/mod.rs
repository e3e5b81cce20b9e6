//! The gateway: every request passes the same stages, each in its own file, sharing one
//! per-request record ([`Log`]):
//!
//! 1. client address and allowlist (`client.rs`): who is really asking, and may they ask at all;
//! 2. hygiene (`hygiene.rs`): refuse what no well-behaved client sends, strip what clients may not set;
//! 3. route: the path to one of a closed set of endpoints ([`Endpoint::of`], a pure function);
//! 4. authenticate and authorise (`authorize.rs`): one step shared by `/v2/` (`v2.rs`) and
//!    `/nginx/auth` (`nginx_auth.rs`);
//! 5. dispatch: registry, token service, API, pages, upstream;
//! 6. respond: the headers every answer carries, then one access-log event and the metrics.

mod authorize;
mod client;
mod hygiene;
mod nginx_auth;
mod v2;

pub use client::{forwarded_client, NetLists, UNKNOWN_CLIENT};

use crate::auth::endpoint::{TokenAudit, TokenService};
use crate::auth::token::Claims;
use crate::http::{self, Resp};
use crate::registry::Registry;
use crate::server::ConnInfo;
use ::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use hyper::body::Incoming;
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
    /// Replication rules: push rules get every registry event.
    pub replicator: Option<Arc<crate::replicate::Replicator>>,
    /// `policy:` (trusted images), checked on manifest reads.
    pub trust: Option<Arc<crate::trust::Trust>>,
    token_cache: moka::sync::Cache<String, Arc<Claims>>,
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
            p if crate::gitee::web::Web::handles(p) => Endpoint::Web,
            "/nginx/auth" => Endpoint::NginxAuth,
            "/.well-known/jwks.json" => Endpoint::Jwks,
            "/metrics" => Endpoint::Metrics,
            "/healthz" => Endpoint::Healthz,
            "/readyz" => Endpoint::Readyz,
            _ => Endpoint::Unknown,
        }
    }
}

impl App {
    pub fn new(
        public_url: String,
        service: String,
        registry: Registry,
        tokens: TokenService,
        net: NetLists,
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
            net: crate::live::Live::new(net),
            hsts,
            token_limit: crate::ratelimit::Limiter::new(0.0, 0.0),
            metrics: Default::default(),
            notifier: crate::live::Live::new(None),
            upstream: None,
            replicator: None,
            trust: None,
            token_cache: moka::sync::Cache::builder()
                .max_capacity(50_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
        }
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

    async fn dispatch(&self, req: Request<Incoming>, ip: IpAddr, log: &mut Log) -> Resp {
        log.bytes_in = content_length(req.headers());
        match Endpoint::of(req.uri().path()) {
            Endpoint::V2 => {
                log.route = "v2";
                self.v2(req, ip, log).await
            }
            Endpoint::Token => {
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
                    oidc = audit.oidc.as_deref().unwrap_or("-"),
                    "token"
                );
                r
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
                r
            }
            Endpoint::Scans => {
                log.route = "api";
                self.scan_report(req, ip).await
            }
            Endpoint::Web => {
                log.route = "web";
                let (parts, body) = req.into_parts();
                let web = crate::gitee::web::Web {
                    gitee: self.tokens.creds.gitee().map(|g| g.as_ref()),
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
                r
            }
            Endpoint::NginxAuth => {
                log.route = "nginx_auth";
                self.nginx_auth(req, ip, log).await
            }
            Endpoint::Jwks => {
                log.route = "jwks";
                http::json(StatusCode::OK, self.tokens.keys.jwks())
            }
            Endpoint::Metrics => {
                log.route = "metrics";
                let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok());
                let (text, content_type) = self.metrics.render(accept);
                let mut r = Resp::new(http::full(text));
                http::set(&mut r, header::CONTENT_TYPE, content_type);
                r
            }
            Endpoint::Healthz => {
                log.route = "health";
                http::json(StatusCode::OK, &serde_json::json!({"status":"ok"}))
            }
            Endpoint::Readyz => {
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
            Endpoint::Unknown => {
                log.route = "other";
                http::json(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({"errors":[{"code":"NOT_FOUND","message":"no such endpoint"}]}),
                )
            }
        }
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
