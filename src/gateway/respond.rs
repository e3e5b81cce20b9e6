//! The last stage: the headers every answer carries, then one access-log event and the metrics
//! record, from the per-request context the stages filled.

use super::App;
use crate::http::Resp;
use ::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request};
use std::net::IpAddr;
use std::time::Instant;

/// What one request did, for the access log.
#[derive(Default)]
pub(super) struct Log {
    pub account: Option<String>,
    pub route: &'static str,
    pub repo: Option<String>,
    pub digest: Option<String>,
    pub denied: Option<&'static str>,
    pub bytes_in: Option<u64>,
}

/// One request's context, shared by the stages.
pub(super) struct Ctx {
    /// The client, behind trusted proxies.
    pub ip: IpAddr,
    /// Whether the connection is TLS (HSTS goes only there).
    pub tls: bool,
    start: Instant,
    method: Method,
    path: String,
    pub log: Log,
}

impl Ctx {
    pub fn new<B>(req: &Request<B>, ip: IpAddr, tls: bool) -> Self {
        Ctx {
            ip,
            tls,
            start: Instant::now(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            log: Log::default(),
        }
    }
}

pub(super) fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

impl App {
    pub(super) fn respond(&self, mut resp: Resp, cx: Ctx) -> Resp {
        let h = resp.headers_mut();
        h.insert(
            HeaderName::from_static("docker-distribution-api-version"),
            HeaderValue::from_static("registry/2.0"),
        );
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        if cx.tls {
            if let Some(v) = &self.hsts {
                h.insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
            }
        }
        let log = &cx.log;
        let status = resp.status().as_u16();
        let elapsed = cx.start.elapsed().as_secs_f64();
        self.metrics.request(log.route, cx.method.as_str(), status, elapsed);
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
            ip = %cx.ip,
            method = %cx.method,
            path = %cx.path,
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
}
