//! Upstream mode: `/v2/` requests that regate has authorised are forwarded to an existing
//! registry over a pooled keep-alive client, bodies streamed both ways. `Location` headers that
//! name the upstream are rewritten to `public_url`; the upstream sees `X-Forwarded-*` and, when it
//! uses regate as its token server, a regate token for exactly the authorised scope.

use crate::http::{self, Resp};
use crate::registry::error::{ApiError, Code};
use ::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use futures_util::TryStreamExt;
use hyper::body::Incoming;
use std::net::IpAddr;
use std::time::Duration;

pub struct Upstream {
    base: String,
    client: reqwest::Client,
}

/// Headers that are about this hop only and must not be forwarded (RFC 9110 7.6.1).
const HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

pub struct Forward<'a> {
    pub method: &'a Method,
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: Incoming,
    pub client_ip: IpAddr,
    pub public_url: &'a str,
    /// What to send as `Authorization` to the upstream (a regate token for the authorised scope).
    pub authorization: Option<String>,
}

impl Upstream {
    /// `h2c`: HTTP/2 with prior knowledge over plain TCP (for `http://` upstreams that speak it).
    pub fn new(base: &str, h2c: bool) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder();
        if h2c {
            builder = builder
                .http2_prior_knowledge()
                .http2_adaptive_window(true)
                .http2_keep_alive_interval(Duration::from_secs(30));
        }
        let client = builder
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(300))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("upstream: cannot build the HTTP client: {e}"))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            client,
        })
    }

    /// The pooled client (the trust policy reads signatures through it).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Whether the upstream answers HTTP at all (any status: `/v2/` may well want a token).
    pub async fn ready(&self) -> bool {
        self.client
            .get(format!("{}/v2/", self.base))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .is_ok()
    }

    pub async fn forward(&self, f: Forward<'_>) -> Resp {
        let url = format!("{}{}", self.base, f.path_and_query);
        let mut rb = self.client.request(f.method.clone(), &url);
        for (k, v) in f.headers {
            let n = k.as_str();
            if HOP.contains(&n) || n == "authorization" || n.starts_with("x-forwarded-") || n == "forwarded" {
                continue;
            }
            rb = rb.header(k, v);
        }
        if let Some(a) = &f.authorization {
            rb = rb.header(header::AUTHORIZATION, a);
        }
        let host = f.public_url.split("://").nth(1).unwrap_or("");
        let proto = f.public_url.split("://").next().unwrap_or("http");
        rb = rb
            .header("x-forwarded-for", f.client_ip.to_string())
            .header("x-forwarded-proto", proto)
            .header("x-forwarded-host", host);
        let has_body =
            f.headers.contains_key(header::CONTENT_LENGTH) || f.headers.contains_key(header::TRANSFER_ENCODING);
        if has_body {
            let stream = http_body_util::BodyDataStream::new(f.body).map_err(std::io::Error::other);
            rb = rb.body(reqwest::Body::wrap_stream(stream));
        }
        let resp = match rb.send().await {
            Ok(r) => r,
            Err(e) => {
                let timeout = e.is_timeout();
                tracing::warn!(upstream = %self.base, error = %e.without_url(), "upstream request failed");
                let (status, msg) = if timeout {
                    (
                        StatusCode::GATEWAY_TIMEOUT,
                        "the upstream registry did not answer in time",
                    )
                } else {
                    (StatusCode::BAD_GATEWAY, "the upstream registry is unreachable")
                };
                return ApiError::new(Code::Unavailable, msg)
                    .with_status(status)
                    .into_response();
            }
        };
        let status = resp.status();
        let mut headers = HeaderMap::new();
        for (k, v) in resp.headers() {
            if HOP.contains(&k.as_str()) {
                continue;
            }
            if k == header::LOCATION {
                if let Ok(s) = v.to_str() {
                    let rewritten = match s.strip_prefix(&self.base) {
                        Some(rest) => format!("{}{rest}", f.public_url),
                        None if s.starts_with('/') => format!("{}{s}", f.public_url),
                        None => s.to_owned(),
                    };
                    if let Ok(v) = HeaderValue::from_str(&rewritten) {
                        headers.insert(header::LOCATION, v);
                    }
                    continue;
                }
            }
            if k == header::WWW_AUTHENTICATE {
                // the client talks to regate's token endpoint, never the upstream's
                continue;
            }
            headers.append(k.clone(), v.clone());
        }
        let stream = resp.bytes_stream().map_err(std::io::Error::other);
        let mut r = Resp::new(http::stream(Box::pin(stream)));
        *r.status_mut() = status;
        *r.headers_mut() = headers;
        r
    }
}
