//! A client of another registry's distribution API (another regate, distribution, Harbor, ACR,
//! TCR, Docker Hub): Basic or token auth as its `/v2/` challenge asks, tokens per scope, blobs
//! streamed both ways, pagination followed.

use crate::storage::ByteStream;
use bytes::Bytes;
use futures_util::TryStreamExt;
use reqwest::{Method, StatusCode};
use std::time::Duration;

pub const ACCEPT: &str = crate::mirror::ACCEPT;

#[derive(Debug)]
pub enum RemoteError {
    NotFound,
    /// The remote refused for good (the message says why); retrying the same copy will not help.
    Refused(String),
    /// Unreachable, overloaded, or credentials refused: worth retrying.
    Failed(String),
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteError::NotFound => f.write_str("not found on the remote"),
            RemoteError::Refused(m) | RemoteError::Failed(m) => f.write_str(m),
        }
    }
}

/// How the remote wants to be authenticated, learned from its `/v2/` challenge.
#[derive(Clone, Debug)]
enum Scheme {
    None,
    Basic,
    Bearer { realm: String, service: Option<String> },
}

enum Body {
    Empty,
    Bytes(Bytes, Option<String>),
    Stream(ByteStream, u64),
}

pub struct Remote {
    base: String,
    username: Option<String>,
    password: Option<String>,
    client: reqwest::Client,
    scheme: tokio::sync::Mutex<Option<Scheme>>,
    tokens: moka::sync::Cache<String, String>,
}

/// A manifest as the remote serves it.
pub struct RemoteManifest {
    pub bytes: Bytes,
    pub content_type: Option<String>,
}

fn failed(e: reqwest::Error) -> RemoteError {
    RemoteError::Failed(format!("remote registry: {}", e.without_url()))
}

/// The `Link: <...>; rel="next"` target, if any.
fn next_link(r: &reqwest::Response) -> Option<String> {
    let v = r.headers().get("link")?.to_str().ok()?;
    let (target, rel) = v.split_once(';')?;
    rel.contains("next")
        .then(|| target.trim().trim_start_matches('<').trim_end_matches('>').to_owned())
}

impl Remote {
    pub fn new(
        url: &str,
        username: Option<String>,
        password: Option<String>,
        tls_ca: Option<&std::path::Path>,
    ) -> Result<Self, String> {
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("regate/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(300))
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(p) = tls_ca {
            let pem = std::fs::read(p).map_err(|e| format!("tls_ca {}: {e}", p.display()))?;
            for c in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("tls_ca {}: {e}", p.display()))? {
                b = b.add_root_certificate(c);
            }
        }
        Ok(Remote {
            base: url.trim_end_matches('/').to_owned(),
            username,
            password,
            client: b.build().map_err(|e| format!("HTTP client: {e}"))?,
            scheme: tokio::sync::Mutex::new(None),
            tokens: moka::sync::Cache::builder()
                .max_capacity(1_000)
                .time_to_live(Duration::from_secs(50))
                .build(),
        })
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    async fn scheme(&self) -> Result<Scheme, RemoteError> {
        let mut s = self.scheme.lock().await;
        if let Some(x) = &*s {
            return Ok(x.clone());
        }
        let r = self.client.get(self.url("/v2/")).send().await.map_err(failed)?;
        let learned = if r.status() == StatusCode::UNAUTHORIZED {
            let ch = r
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            match crate::mirror::challenge_params(ch) {
                Some((scheme, params)) if scheme == "bearer" => {
                    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                    Scheme::Bearer {
                        realm: get("realm")
                            .ok_or_else(|| RemoteError::Failed("remote challenge without realm".into()))?,
                        service: get("service"),
                    }
                }
                _ => Scheme::Basic,
            }
        } else if r.status().is_success() {
            Scheme::None
        } else {
            return Err(RemoteError::Failed(format!("remote /v2/ answered {}", r.status())));
        };
        *s = Some(learned.clone());
        Ok(learned)
    }

    /// The Authorization value for `scope` (`repository:NAME:pull,push`), if any is needed.
    async fn authorization(&self, scope: &str) -> Result<Option<String>, RemoteError> {
        match self.scheme().await? {
            Scheme::None => Ok(None),
            Scheme::Basic => Ok(self.username.as_ref().map(|u| {
                use base64::Engine as _;
                let raw = format!("{u}:{}", self.password.as_deref().unwrap_or(""));
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
            })),
            Scheme::Bearer { realm, service } => {
                if let Some(t) = self.tokens.get(scope) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let mut q: Vec<(&str, String)> = vec![("scope", scope.to_owned())];
                if let Some(s) = service {
                    q.push(("service", s));
                }
                let mut rb = self.client.get(&realm).query(&q);
                if let Some(u) = &self.username {
                    rb = rb.basic_auth(u, self.password.as_deref());
                }
                let r = rb.send().await.map_err(failed)?;
                if !r.status().is_success() {
                    return Err(RemoteError::Failed(format!(
                        "the remote's token service answered {}",
                        r.status()
                    )));
                }
                let v: serde_json::Value = r.json().await.map_err(failed)?;
                let t = v["token"]
                    .as_str()
                    .or_else(|| v["access_token"].as_str())
                    .ok_or_else(|| RemoteError::Failed("the remote's token answer has no token".into()))?
                    .to_owned();
                self.tokens.insert(scope.to_owned(), t.clone());
                Ok(Some(format!("Bearer {t}")))
            }
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        scope: &str,
        accept: Option<&str>,
        body: Body,
    ) -> Result<reqwest::Response, RemoteError> {
        let auth = self.authorization(scope).await?;
        let mut rb = self.client.request(method.clone(), self.url(path));
        if let Some(a) = accept {
            rb = rb.header("accept", a);
        }
        if let Some(a) = &auth {
            rb = rb.header("authorization", a);
        }
        let replayable = !matches!(body, Body::Stream(..));
        let rb2 = rb.try_clone();
        let rb = match body {
            Body::Empty => rb,
            Body::Bytes(b, ct) => {
                let rb = rb.header("content-length", b.len());
                let rb = match ct {
                    Some(c) => rb.header("content-type", c),
                    None => rb,
                };
                rb.body(b)
            }
            Body::Stream(s, len) => rb
                .header("content-type", "application/octet-stream")
                .header("content-length", len)
                .body(reqwest::Body::wrap_stream(s)),
        };
        let r = rb.send().await.map_err(failed)?;
        if r.status() == StatusCode::UNAUTHORIZED && replayable {
            // a token that expired early: once more with a fresh one
            self.tokens.invalidate(scope);
            if let (Some(rb), Some(a)) = (rb2, self.authorization(scope).await?) {
                return rb.header("authorization", a).send().await.map_err(failed);
            }
        }
        Ok(r)
    }

    fn check(r: reqwest::Response, what: &str) -> Result<reqwest::Response, RemoteError> {
        let s = r.status();
        if s.is_success() {
            return Ok(r);
        }
        Err(match s {
            StatusCode::NOT_FOUND => RemoteError::NotFound,
            StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::REQUEST_TIMEOUT
            | StatusCode::TOO_MANY_REQUESTS => RemoteError::Failed(format!("{what}: the remote answered {s}")),
            s if s.is_server_error() => RemoteError::Failed(format!("{what}: the remote answered {s}")),
            s => RemoteError::Refused(format!("{what}: the remote answered {s}")),
        })
    }

    fn pull(name: &str) -> String {
        format!("repository:{name}:pull")
    }

    fn push(name: &str) -> String {
        format!("repository:{name}:pull,push")
    }

    /// The digest a tag (or digest) names on the remote now.
    pub async fn manifest_digest(&self, name: &str, reference: &str) -> Result<Option<String>, RemoteError> {
        let r = self
            .send(
                Method::HEAD,
                &format!("/v2/{name}/manifests/{reference}"),
                &Self::pull(name),
                Some(ACCEPT),
                Body::Empty,
            )
            .await?;
        match Self::check(r, "manifest HEAD") {
            Ok(r) => Ok(r
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)),
            Err(RemoteError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn get_manifest(&self, name: &str, reference: &str) -> Result<RemoteManifest, RemoteError> {
        let r = self
            .send(
                Method::GET,
                &format!("/v2/{name}/manifests/{reference}"),
                &Self::pull(name),
                Some(ACCEPT),
                Body::Empty,
            )
            .await?;
        let r = Self::check(r, "manifest GET")?;
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if r.content_length().is_some_and(|n| n > 16 << 20) {
            return Err(RemoteError::Refused("remote manifest larger than 16 MiB".into()));
        }
        let bytes = r.bytes().await.map_err(failed)?;
        Ok(RemoteManifest { bytes, content_type })
    }

    pub async fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<(), RemoteError> {
        let r = self
            .send(
                Method::PUT,
                &format!("/v2/{name}/manifests/{reference}"),
                &Self::push(name),
                None,
                Body::Bytes(bytes, Some(content_type.to_owned())),
            )
            .await?;
        Self::check(r, "manifest PUT").map(|_| ())
    }

    pub async fn delete_manifest(&self, name: &str, reference: &str) -> Result<(), RemoteError> {
        let r = self
            .send(
                Method::DELETE,
                &format!("/v2/{name}/manifests/{reference}"),
                &format!("repository:{name}:pull,push,delete"),
                None,
                Body::Empty,
            )
            .await?;
        match Self::check(r, "manifest DELETE") {
            Ok(_) | Err(RemoteError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn has_blob(&self, name: &str, digest: &str) -> Result<bool, RemoteError> {
        let r = self
            .send(
                Method::HEAD,
                &format!("/v2/{name}/blobs/{digest}"),
                &Self::pull(name),
                None,
                Body::Empty,
            )
            .await?;
        match Self::check(r, "blob HEAD") {
            Ok(_) => Ok(true),
            Err(RemoteError::NotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Mounts `digest` from `from` on the remote; `false` when the remote did not mount it.
    pub async fn mount_blob(&self, name: &str, digest: &str, from: &str) -> Result<bool, RemoteError> {
        let scope = format!("{} repository:{from}:pull", Self::push(name));
        let r = self
            .send(
                Method::POST,
                &format!("/v2/{name}/blobs/uploads/?mount={digest}&from={from}"),
                &scope,
                None,
                Body::Empty,
            )
            .await?;
        if r.status() == StatusCode::CREATED {
            return Ok(true);
        }
        // an upload was opened instead: close it again
        if r.status() == StatusCode::ACCEPTED {
            if let Some(loc) = r.headers().get("location").and_then(|v| v.to_str().ok()) {
                let _ = self
                    .send(Method::DELETE, loc, &Self::push(name), None, Body::Empty)
                    .await;
            }
        }
        Ok(false)
    }

    /// Opens an upload on the remote; its `Location`.
    async fn start_upload(&self, name: &str) -> Result<String, RemoteError> {
        let r = self
            .send(
                Method::POST,
                &format!("/v2/{name}/blobs/uploads/"),
                &Self::push(name),
                None,
                Body::Empty,
            )
            .await?;
        let r = Self::check(r, "upload start")?;
        r.headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| RemoteError::Refused("upload start without a Location".into()))
    }

    /// Uploads a blob: one POST and one streamed PUT.
    pub async fn put_blob(&self, name: &str, digest: &str, size: u64, body: ByteStream) -> Result<(), RemoteError> {
        let loc = self.start_upload(name).await?;
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put = format!("{loc}{sep}digest={digest}");
        let r = self
            .send(Method::PUT, &put, &Self::push(name), None, Body::Stream(body, size))
            .await?;
        Self::check(r, "blob PUT").map(|_| ())
    }

    /// Uploads a blob in chunks of `chunk` bytes (PATCH with `Content-Range`, then PUT), for
    /// remotes that refuse large single requests; memory holds one chunk at a time.
    pub async fn put_blob_chunked(
        &self,
        name: &str,
        digest: &str,
        mut body: ByteStream,
        chunk: usize,
    ) -> Result<(), RemoteError> {
        use futures_util::StreamExt;
        let location = |r: &reqwest::Response| {
            r.headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .ok_or_else(|| RemoteError::Refused("upload without a Location".into()))
        };
        let mut loc = self.start_upload(name).await?;
        let mut offset: u64 = 0;
        let mut buf = bytes::BytesMut::with_capacity(chunk);
        let mut done = false;
        while !done {
            buf.clear();
            while buf.len() < chunk {
                match body.next().await {
                    Some(Ok(c)) => buf.extend_from_slice(&c),
                    Some(Err(e)) => return Err(RemoteError::Failed(format!("reading the blob here: {e}"))),
                    None => {
                        done = true;
                        break;
                    }
                }
            }
            if buf.is_empty() {
                break;
            }
            let data = buf.split().freeze();
            let end = offset + data.len() as u64 - 1;
            let auth = self.authorization(&Self::push(name)).await?;
            let mut rb = self
                .client
                .patch(self.url(&loc))
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("{offset}-{end}"))
                .header("content-length", data.len());
            if let Some(a) = auth {
                rb = rb.header("authorization", a);
            }
            let r = rb.body(data.clone()).send().await.map_err(failed)?;
            let r = Self::check(r, "upload chunk")?;
            loc = location(&r)?;
            offset = end + 1;
        }
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self
            .send(
                Method::PUT,
                &format!("{loc}{sep}digest={digest}"),
                &Self::push(name),
                None,
                Body::Empty,
            )
            .await?;
        Self::check(r, "upload finish").map(|_| ())
    }

    pub async fn get_blob(&self, name: &str, digest: &str) -> Result<ByteStream, RemoteError> {
        let r = self
            .send(
                Method::GET,
                &format!("/v2/{name}/blobs/{digest}"),
                &Self::pull(name),
                None,
                Body::Empty,
            )
            .await?;
        let r = Self::check(r, "blob GET")?;
        Ok(Box::pin(r.bytes_stream().map_err(std::io::Error::other)))
    }

    /// Every string of `field` across the pages of a list endpoint (`Link` followed); an empty
    /// list when the endpoint is unknown there (404), if `missing_is_empty`.
    async fn paged(
        &self,
        first: String,
        scope: &str,
        field: &str,
        missing_is_empty: bool,
    ) -> Result<Vec<String>, RemoteError> {
        let mut out = Vec::new();
        let mut next = Some(first);
        while let Some(path) = next.take() {
            let r = self.send(Method::GET, &path, scope, None, Body::Empty).await?;
            let r = match Self::check(r, field) {
                Ok(r) => r,
                Err(RemoteError::NotFound) if missing_is_empty => return Ok(out),
                Err(e) => return Err(e),
            };
            next = next_link(&r);
            let v: serde_json::Value = r.json().await.map_err(failed)?;
            out.extend(
                v[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(str::to_owned)),
            );
            if out.len() > 1_000_000 {
                return Err(RemoteError::Refused(format!("more than a million {field}")));
            }
        }
        Ok(out)
    }

    /// Every tag of `name` (pages followed).
    pub async fn tags(&self, name: &str) -> Result<Vec<String>, RemoteError> {
        self.paged(format!("/v2/{name}/tags/list?n=1000"), &Self::pull(name), "tags", true)
            .await
    }

    /// Every repository in the remote's catalog (pages followed).
    pub async fn catalog(&self) -> Result<Vec<String>, RemoteError> {
        self.paged(
            "/v2/_catalog?n=1000".to_owned(),
            "registry:catalog:*",
            "repositories",
            false,
        )
        .await
    }

    /// The digests of manifests whose subject is `digest` (empty when the remote has no
    /// referrers API).
    pub async fn referrers(&self, name: &str, digest: &str) -> Result<Vec<String>, RemoteError> {
        let r = self
            .send(
                Method::GET,
                &format!("/v2/{name}/referrers/{digest}"),
                &Self::pull(name),
                None,
                Body::Empty,
            )
            .await?;
        let r = match Self::check(r, "referrers") {
            Ok(r) => r,
            Err(RemoteError::NotFound | RemoteError::Refused(_)) => return Ok(vec![]),
            Err(e) => return Err(e),
        };
        let v: serde_json::Value = r.json().await.map_err(failed)?;
        Ok(v["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["digest"].as_str().map(str::to_owned))
            .collect())
    }
}
