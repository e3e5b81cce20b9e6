//! Pull-through cache of a remote registry (`mirror:`): a pull of something not held locally is
//! fetched from the remote (following its token or Basic auth), stored, and served; blobs are
//! streamed to the client while they are written and become visible locally only once their
//! digest checks out. Tags are re-checked against the remote after `tag_ttl`. Pushes stay local.

use crate::config::MirrorConfig;
use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use std::time::Duration;

pub struct Mirror {
    base: String,
    username: Option<String>,
    password: Option<String>,
    pub tag_ttl: Duration,
    client: reqwest::Client,
    /// Bearer tokens per scope, from the remote's token service.
    tokens: moka::sync::Cache<String, String>,
}

pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug)]
pub enum MirrorError {
    NotFound,
    Failed(String),
}

/// `Bearer realm="...",service="...",scope="..."` into its parameters.
pub(crate) fn challenge_params(v: &str) -> Option<(String, Vec<(String, String)>)> {
    let (scheme, rest) = v.split_once(' ')?;
    let mut params = Vec::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let after = after.trim_start();
        let (val, tail) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.push((k.trim().to_ascii_lowercase(), val.to_owned()));
        s = tail.trim_start_matches([',', ' ']);
    }
    Some((scheme.to_ascii_lowercase(), params))
}

impl Mirror {
    pub fn new(cfg: &MirrorConfig) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("regate/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| format!("mirror: cannot build the HTTP client: {e}"))?;
        Ok(Self {
            base: cfg.url.trim_end_matches('/').to_owned(),
            username: cfg.username.clone(),
            password: cfg.password.as_ref().map(|p| p.expose().to_owned()),
            tag_ttl: Duration::from_secs(cfg.tag_ttl),
            client,
            tokens: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(50))
                .build(),
        })
    }

    async fn token_for(&self, challenge: &str) -> Result<Option<String>, MirrorError> {
        let Some((scheme, params)) = challenge_params(challenge) else {
            return Ok(None);
        };
        if scheme == "basic" {
            return Ok(None);
        }
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let realm = get("realm").ok_or_else(|| MirrorError::Failed("remote challenge without realm".into()))?;
        let scope = get("scope").unwrap_or_default();
        if let Some(t) = self.tokens.get(&scope) {
            return Ok(Some(t));
        }
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(sv) = get("service") {
            q.push(("service", sv));
        }
        if !scope.is_empty() {
            q.push(("scope", scope.clone()));
        }
        let mut rb = self.client.get(&realm).query(&q);
        if let Some(u) = &self.username {
            rb = rb.basic_auth(u, self.password.as_deref());
        }
        let r = rb
            .send()
            .await
            .map_err(|e| MirrorError::Failed(format!("remote token service: {}", e.without_url())))?;
        if !r.status().is_success() {
            return Err(MirrorError::Failed(format!(
                "remote token service answered {}",
                r.status()
            )));
        }
        let v: serde_json::Value = r.json().await.map_err(|e| MirrorError::Failed(e.to_string()))?;
        let t = v["token"]
            .as_str()
            .or_else(|| v["access_token"].as_str())
            .ok_or_else(|| MirrorError::Failed("remote token answer without a token".into()))?
            .to_owned();
        self.tokens.insert(scope, t.clone());
        Ok(Some(t))
    }

    /// GET (or HEAD) `path` on the remote, authenticating as its challenge asks.
    async fn request(&self, head: bool, path: &str, accept: Option<&str>) -> Result<reqwest::Response, MirrorError> {
        let url = format!("{}{path}", self.base);
        let build = |auth: Option<String>| {
            let mut rb = if head {
                self.client.head(&url)
            } else {
                self.client.get(&url)
            };
            if let Some(a) = accept {
                rb = rb.header("accept", a);
            }
            match auth {
                Some(t) => rb.bearer_auth(t),
                None => match &self.username {
                    Some(u) => rb.basic_auth(u, self.password.as_deref()),
                    None => rb,
                },
            }
        };
        let fail = |e: reqwest::Error| MirrorError::Failed(format!("remote registry: {}", e.without_url()));
        let mut r = build(None).send().await.map_err(fail)?;
        if r.status() == reqwest::StatusCode::UNAUTHORIZED {
            let ch = r
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            if let Some(t) = self.token_for(&ch).await? {
                r = build(Some(t)).send().await.map_err(fail)?;
            }
        }
        match r.status() {
            s if s.is_success() => Ok(r),
            reqwest::StatusCode::NOT_FOUND => Err(MirrorError::NotFound),
            s => Err(MirrorError::Failed(format!("remote registry answered {s}"))),
        }
    }

    /// A manifest from the remote: its bytes and Content-Type.
    pub async fn manifest(&self, name: &str, reference: &str) -> Result<(Bytes, Option<String>), MirrorError> {
        let r = self
            .request(false, &format!("/v2/{name}/manifests/{reference}"), Some(ACCEPT))
            .await?;
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let len = r.content_length().unwrap_or(0);
        if len > 16 << 20 {
            return Err(MirrorError::Failed("remote manifest too large".into()));
        }
        let b = r.bytes().await.map_err(|e| MirrorError::Failed(e.to_string()))?;
        Ok((b, ct))
    }

    /// The digest the remote has for a tag now (HEAD), to re-check cached tags.
    pub async fn tag_digest(&self, name: &str, tag: &str) -> Result<Option<String>, MirrorError> {
        let r = self
            .request(true, &format!("/v2/{name}/manifests/{tag}"), Some(ACCEPT))
            .await?;
        Ok(r.headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned))
    }

    /// A blob from the remote, as a stream, with its length when the remote says.
    pub async fn blob(
        &self,
        name: &str,
        digest: &str,
    ) -> Result<(Option<u64>, impl Stream<Item = std::io::Result<Bytes>> + Send + 'static), MirrorError> {
        let r = self.request(false, &format!("/v2/{name}/blobs/{digest}"), None).await?;
        let len = r.content_length();
        Ok((len, r.bytes_stream().map_err(std::io::Error::other)))
    }
}

#[cfg(test)]
mod tests {
    use super::challenge_params;

    #[test]
    fn challenges() {
        let (s, p) =
            challenge_params(r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull""#)
                .unwrap();
        assert_eq!(s, "bearer");
        assert_eq!(p[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(p[2], ("scope".into(), "repository:a/b:pull".into()));
        let (s, p) = challenge_params(r#"Basic realm="x""#).unwrap();
        assert_eq!((s.as_str(), p.len()), ("basic", 1));
    }
}
