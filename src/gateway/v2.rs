//! `/v2/`: the registry API, authorised, then served by the embedded registry or forwarded to
//! the upstream one.

use super::authorize::{need_for, Denial, Need, Perms, Principal};
use super::{App, Ctx};
use crate::http::{self, query_pairs, Resp};
use crate::registry::error::{ApiError, Code};
use crate::registry::{self as reg, Route, RouteError};
use crate::types::names::RepoName;
use crate::types::scope::{Action, Resource, Scope};
use ::http::{header, Method, Request};
use hyper::body::Incoming;
use std::net::IpAddr;

impl App {
    pub(super) async fn v2(&self, req: Request<Incoming>, cx: &mut Ctx) -> Result<Resp, ApiError> {
        let ip = cx.ip;
        let log = &mut cx.log;
        let rest = req.uri().path().strip_prefix("/v2").unwrap_or("");
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        let route = reg::classify(rest).map_err(|e| match e {
            RouteError::NotFound => ApiError::new(Code::NotFound, "no such API endpoint"),
            RouteError::NameInvalid => ApiError::new(Code::NameInvalid, "invalid repository name"),
            RouteError::DigestInvalid => ApiError::new(Code::DigestInvalid, "invalid digest"),
            // no manifest can have such a name: a read answers as for any unknown one
            RouteError::ReferenceInvalid if matches!(*req.method(), Method::GET | Method::HEAD) => ApiError::new(
                Code::ManifestUnknown,
                "no manifest has this reference: it is not a valid tag",
            ),
            RouteError::ReferenceInvalid => ApiError::new(Code::TagInvalid, "invalid tag"),
            RouteError::UploadInvalid => ApiError::new(Code::BlobUploadUnknown, "no such upload"),
        })?;
        log.route = route.kind();
        log.repo = route.repo().map(|r| r.to_string());
        let method = req.method().clone();
        let Some(need) = need_for(&route, &method) else {
            let allow = route.allowed_methods(self.registry.deletes_enabled());
            return Err(
                ApiError::new(Code::Unsupported, format!("{method} is not allowed on this endpoint"))
                    .with_header(header::ALLOW, allow),
            );
        };
        let query = query_pairs(req.uri().query());
        // a cross-repository mount also asks to read the source repository
        let mount_from: Vec<RepoName> = match &route {
            Route::UploadStart(_) => http::query_get(&query, "from")
                .filter(|_| http::query_get(&query, "mount").is_some())
                .and_then(RepoName::parse)
                .into_iter()
                .collect(),
            _ => vec![],
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
                    Denial::Anonymous => "not signed in",
                    Denial::Unavailable => "credential check unavailable",
                    Denial::Limited(_) => "rate limited",
                });
                return Err(self.challenge(&need, &mount_from, d));
            }
        };
        log.account = Some(match &principal {
            Principal::Token(c) if c.sub.is_empty() => "anonymous".to_owned(),
            Principal::Token(c) => c.sub.clone(),
            Principal::Basic(i) => i.account.clone(),
        });
        let policy = self.tokens.policy.get();
        // trusted images (policy:): a manifest read is checked once it resolved to a digest
        let gate = self.trust.as_ref().and_then(|t| {
            t.gate(&route, &method, |n| match &principal {
                Principal::Token(c) => {
                    c.allows(&Resource::Repository, n.as_str(), Action::Push) || t.is_scanner_token(&c.jti)
                }
                Principal::Basic(id) => policy.actions(&id.subject(ip), n.as_str()).contains(&Action::Push),
            })
        });
        // the scanner's credential: a pull-only token for one repository
        let mint = |n: &RepoName| self.scanner_token(n);
        if let Some(up) = &self.upstream {
            let resp = self.forward(up, req, &principal, &need, ip).await;
            let Some(t) = &self.trust else { return Ok(resp) };
            // the policy's reads go to the upstream with a pull-only token for this repository
            // that lives a minute (an upstream that trusts regate's tokens takes it)
            let read = || route.repo().and_then(|n| self.trust_read_token(n));
            let src = crate::trust::Upstream::new(up.client().clone(), up.base(), &read);
            // pushes through regate are watched as bundled ones are (signatures, scan on push)
            let (status, served) = (resp.status(), crate::trust::served_digest(&resp));
            t.upstream_wrote(&route, &method, status, served, &src, &mint).await;
            return Ok(t.after_upstream(gate, &src, resp, &mint).await);
        }
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
        let mut out = self.registry.handle(route, r).await?;
        if let Some(t) = &self.trust {
            t.after(gate, &self.registry, &mut out, &mint).await;
        }
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
        if let (Some(ev), Some(r)) = (&out.event, &self.replicator) {
            r.publish(ev).await;
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
        Ok(out.resp)
    }

    /// `/api/v1/scans/<repository>/<digest>`: `GET` the stored scan report, to callers who may
    /// pull; `POST` asks for a scan now, from callers who may push (202, the digests sent).
    pub(super) async fn scan_report(&self, req: Request<Incoming>, ip: IpAddr) -> Result<Resp, ApiError> {
        let (Some(t), Some((repo, d))) = (&self.trust, crate::trust::Trust::api_target(req.uri().path())) else {
            return Err(ApiError::new(
                Code::NotFound,
                "no scan reports here (no policy:, or not /api/v1/scans/<repository>/<digest>)",
            ));
        };
        let action = match *req.method() {
            Method::GET | Method::HEAD => Action::Pull,
            Method::POST => Action::Push,
            _ => {
                return Err(
                    ApiError::new(Code::Unsupported, "use GET (the report) or POST (scan now)")
                        .with_header(header::ALLOW, "GET, HEAD, POST"),
                )
            }
        };
        let need = Need::Repo(repo.clone(), vec![action]);
        self.authorize(req.headers(), &need, ip)
            .await
            .map_err(|e| self.challenge(&need, &[], e))?;
        let mint = |n: &RepoName| self.scanner_token(n);
        // the report is kept here; in upstream mode the manifest it is for is read there
        let read = || self.trust_read_token(&repo);
        let up = self
            .upstream
            .as_ref()
            .map(|up| crate::trust::Upstream::new(up.client().clone(), up.base(), &read));
        if action == Action::Pull {
            return Ok(match &up {
                Some(src) => t.api_report(src, &repo, &d).await,
                None => t.api_report(&self.registry, &repo, &d).await,
            });
        }
        let sent = match &up {
            Some(src) => t.scan_on_demand(src, &repo, &d, &mint).await?,
            None => t.scan_on_demand(&self.registry, &repo, &d, &mint).await?,
        };
        tracing::info!(target: "regate::audit", event = "scan_requested", %ip, repo = %repo, digest = %d, "scan on demand");
        let mut r = http::json(
            ::http::StatusCode::ACCEPTED,
            &serde_json::json!({ "requested": sent.iter().map(|d| d.to_string()).collect::<Vec<_>>() }),
        );
        http::set(&mut r, header::LOCATION, req.uri().path());
        Ok(r)
    }

    /// The scanner's credential: a pull-only token for one repository.
    fn scanner_token(&self, repo: &RepoName) -> Option<String> {
        let scope = Scope::repository(repo.as_str(), &[Action::Pull]);
        self.tokens
            .keys
            .issue("regate-scanner", &[], true, &[scope], crate::util::now_secs())
            .ok()
    }

    /// The token the trust policy reads `repo` from the upstream with: pull only, one minute.
    fn trust_read_token(&self, repo: &RepoName) -> Option<String> {
        let scope = Scope::repository(repo.as_str(), &[Action::Pull]);
        let now = crate::util::now_secs();
        self.tokens
            .keys
            .issue_until("regate-trust", &[], true, &[scope], now, now + 60)
            .ok()
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
                    Need::Authenticated | Need::Account => vec![],
                    Need::Catalog => vec![Scope::catalog()],
                    Need::Repo(n, a) => vec![Scope::repository(n.as_str(), a)],
                };
                self.tokens
                    .keys
                    .issue_until(
                        &id.account,
                        &id.groups,
                        id.limit.is_some(),
                        &scopes,
                        crate::util::now_secs(),
                        id.oidc.as_ref().map_or(u64::MAX, |l| l.expires),
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
}
