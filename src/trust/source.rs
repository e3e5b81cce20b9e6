//! Where the signature checks read a repository's artifacts: the bundled registry's storage
//! ([`Registry`]), or, in upstream mode, the registry regate forwards to ([`Upstream`]), read
//! over the proxy's HTTP client with a short-lived pull-only token for that one repository.
//! Every byte read is checked against the digest it was asked for, and every read is bounded.

use crate::registry::{Manifest, Registry};
use crate::storage::layout;
use crate::types::names::{Algorithm, Digest, Reference, RepoName, Tag};
use bytes::Bytes;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Manifests read for a check, at most (the bundled registry's default limit).
pub const MAX_MANIFEST: u64 = 4 << 20;
/// Referrers considered per digest, at most.
pub const MAX_REFERRERS: usize = 64;

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The reads a signature check makes in one repository.
pub trait ArtifactSource: Sync {
    /// A manifest by digest; `None` when the repository does not have it.
    fn manifest(
        &self,
        repo: &RepoName,
        d: &Digest,
    ) -> impl Future<Output = Result<Option<Arc<Manifest>>, String>> + Send;
    /// The digest a tag points at; `None` when there is no such tag.
    fn tag(&self, repo: &RepoName, tag: &Tag) -> impl Future<Output = Result<Option<Digest>, String>> + Send;
    /// The digests of manifests whose subject is `d` (at most [`MAX_REFERRERS`]).
    fn referrers(&self, repo: &RepoName, d: &Digest) -> impl Future<Output = Result<Vec<Digest>, String>> + Send;
    /// A blob of at most `max` bytes; `None` when it is missing or larger.
    fn blob(&self, repo: &RepoName, d: &Digest, max: u64)
        -> impl Future<Output = Result<Option<Bytes>, String>> + Send;
}

impl ArtifactSource for Registry {
    async fn manifest(&self, repo: &RepoName, d: &Digest) -> Result<Option<Arc<Manifest>>, String> {
        // the gated manifest itself was just served from this repository; a candidate
        // signature is looked up through the repository's links before it is read
        let _ = repo;
        self.load_manifest(d).await.map_err(|e| e.to_string())
    }

    async fn tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>, String> {
        self.resolve(repo, &Reference::Tag(tag.clone()))
            .await
            .map_err(|e| format!("signature tag unreadable: {e}"))
    }

    async fn referrers(&self, repo: &RepoName, d: &Digest) -> Result<Vec<Digest>, String> {
        let store = self.store();
        let mut out = Vec::new();
        for a in Algorithm::ALL {
            let entries = store
                .list(&layout::referrers_dir(repo, d, a))
                .await
                .map_err(|e| format!("referrers unreadable: {e}"))?;
            for e in entries {
                if out.len() >= MAX_REFERRERS {
                    return Ok(out);
                }
                let Some(rd) = Digest::from_hex(a, &e.name) else {
                    continue;
                };
                if matches!(store.stat(&layout::revision_link(repo, &rd)).await, Ok(Some(_))) {
                    out.push(rd);
                }
            }
        }
        Ok(out)
    }

    async fn blob(&self, _repo: &RepoName, d: &Digest, max: u64) -> Result<Option<Bytes>, String> {
        match self.store().read(&layout::blob_data(d), max).await {
            Ok(Some(b)) if Digest::of(d.algorithm(), &b) == *d => Ok(Some(b)),
            Ok(_) => Ok(None),
            Err(e) => Err(format!("blob unreadable: {e}")),
        }
    }
}

/// The upstream registry of upstream mode, read with a pull token minted on first use.
pub struct Upstream<'a> {
    client: reqwest::Client,
    base: String,
    mint: &'a (dyn Fn() -> Option<String> + Sync),
    token: OnceLock<Option<String>>,
}

impl<'a> Upstream<'a> {
    /// `base`: the upstream's URL; `mint`: a pull-only bearer token for the repository checked
    /// (`None` to read without credentials).
    pub fn new(client: reqwest::Client, base: &str, mint: &'a (dyn Fn() -> Option<String> + Sync)) -> Self {
        Upstream {
            client,
            base: base.trim_end_matches('/').to_owned(),
            mint,
            token: OnceLock::new(),
        }
    }

    async fn get(&self, path: &str, accept: &str, head: bool) -> Result<reqwest::Response, String> {
        let url = format!("{}{path}", self.base);
        let mut rb = if head {
            self.client.head(&url)
        } else {
            self.client.get(&url)
        };
        rb = rb
            .header(::http::header::ACCEPT, accept)
            .timeout(Duration::from_secs(15));
        if let Some(t) = self.token.get_or_init(|| (self.mint)()) {
            rb = rb.bearer_auth(t);
        }
        let mut r = rb
            .send()
            .await
            .map_err(|e| format!("upstream unreachable: {}", e.without_url()))?;
        // a blob may live behind a redirect (object storage); follow one, without the token
        if r.status().is_redirection() && !head {
            let loc = r
                .headers()
                .get(::http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|l| match l.starts_with('/') {
                    true => format!("{}{l}", self.base),
                    false => l.to_owned(),
                })
                .ok_or("upstream redirect without a location")?;
            r = self
                .client
                .get(loc)
                .timeout(Duration::from_secs(15))
                .send()
                .await
                .map_err(|e| format!("upstream unreachable: {}", e.without_url()))?;
        }
        Ok(r)
    }
}

/// A body of at most `max` bytes; `None` when it is larger.
async fn bounded(mut r: reqwest::Response, max: u64) -> Result<Option<Bytes>, String> {
    if r.content_length().is_some_and(|n| n > max) {
        return Ok(None);
    }
    let mut buf = Vec::new();
    while let Some(c) = r
        .chunk()
        .await
        .map_err(|e| format!("upstream read: {}", e.without_url()))?
    {
        if (buf.len() + c.len()) as u64 > max {
            return Ok(None);
        }
        buf.extend_from_slice(&c);
    }
    Ok(Some(Bytes::from(buf)))
}

fn unexpected(what: &str, s: reqwest::StatusCode) -> String {
    format!("upstream answered {s} for the {what}")
}

/// The digests an OCI index lists (a referrers answer, or a referrers-tag-schema index).
fn index_digests(b: &[u8]) -> Vec<Digest> {
    #[derive(serde::Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Vec<Desc>,
    }
    #[derive(serde::Deserialize)]
    struct Desc {
        digest: String,
    }
    serde_json::from_slice::<Index>(b)
        .map(|i| {
            i.manifests
                .iter()
                .filter_map(|m| Digest::parse(&m.digest))
                .take(MAX_REFERRERS)
                .collect()
        })
        .unwrap_or_default()
}

impl ArtifactSource for Upstream<'_> {
    async fn manifest(&self, repo: &RepoName, d: &Digest) -> Result<Option<Arc<Manifest>>, String> {
        let r = self
            .get(&format!("/v2/{repo}/manifests/{d}"), MANIFEST_TYPES, false)
            .await?;
        match r.status() {
            reqwest::StatusCode::OK => {}
            reqwest::StatusCode::NOT_FOUND => return Ok(None),
            s => return Err(unexpected("manifest", s)),
        }
        let ct = r
            .headers()
            .get(::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let Some(b) = bounded(r, MAX_MANIFEST).await? else {
            return Err("upstream manifest too large".into());
        };
        if Digest::of(d.algorithm(), &b) != *d {
            return Err("upstream manifest does not match its digest".into());
        }
        Manifest::parse_as(b, ct.as_deref(), d.algorithm())
            .map(|m| Some(Arc::new(m)))
            .map_err(|e| format!("upstream manifest unreadable: {e}"))
    }

    async fn tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>, String> {
        let path = format!("/v2/{repo}/manifests/{}", tag.as_str());
        let r = self.get(&path, MANIFEST_TYPES, true).await?;
        match r.status() {
            reqwest::StatusCode::OK => {}
            reqwest::StatusCode::NOT_FOUND => return Ok(None),
            s => return Err(unexpected("signature tag", s)),
        }
        if let Some(d) = r
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(Digest::parse)
        {
            return Ok(Some(d));
        }
        // no digest header: the digest of the bytes
        let r = self.get(&path, MANIFEST_TYPES, false).await?;
        if r.status() != reqwest::StatusCode::OK {
            return Err(unexpected("signature tag", r.status()));
        }
        match bounded(r, MAX_MANIFEST).await? {
            Some(b) => Ok(Some(Digest::sha256_of(&b))),
            None => Err("upstream manifest too large".into()),
        }
    }

    async fn referrers(&self, repo: &RepoName, d: &Digest) -> Result<Vec<Digest>, String> {
        let r = self.get(&format!("/v2/{repo}/referrers/{d}"), OCI_INDEX, false).await?;
        if r.status() == reqwest::StatusCode::OK {
            return match bounded(r, MAX_MANIFEST).await? {
                Some(b) => Ok(index_digests(&b)),
                None => Err("upstream referrers list too large".into()),
            };
        }
        if r.status() != reqwest::StatusCode::NOT_FOUND {
            return Err(unexpected("referrers", r.status()));
        }
        // no referrers API: the referrers tag schema (`<alg>-<hex>`), kept by the clients
        let path = format!("/v2/{repo}/manifests/{}-{}", d.algorithm().as_str(), d.hex());
        let r = self.get(&path, OCI_INDEX, false).await?;
        match r.status() {
            reqwest::StatusCode::OK => match bounded(r, MAX_MANIFEST).await? {
                Some(b) => Ok(index_digests(&b)),
                None => Err("upstream referrers index too large".into()),
            },
            reqwest::StatusCode::NOT_FOUND => Ok(vec![]),
            s => Err(unexpected("referrers tag", s)),
        }
    }

    async fn blob(&self, repo: &RepoName, d: &Digest, max: u64) -> Result<Option<Bytes>, String> {
        let r = self
            .get(&format!("/v2/{repo}/blobs/{d}"), "application/octet-stream", false)
            .await?;
        match r.status() {
            reqwest::StatusCode::OK => {}
            reqwest::StatusCode::NOT_FOUND => return Ok(None),
            s => return Err(unexpected("blob", s)),
        }
        Ok(bounded(r, max).await?.filter(|b| Digest::of(d.algorithm(), b) == *d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_digests_are_bounded_and_skip_garbage() {
        let d = Digest::sha256_of(b"x");
        let many: Vec<String> = (0..100).map(|_| format!(r#"{{"digest":"{d}"}}"#)).collect();
        let b = format!(r#"{{"manifests":[{{"digest":"nonsense"}},{}]}}"#, many.join(","));
        assert_eq!(index_digests(b.as_bytes()).len(), MAX_REFERRERS);
        assert!(index_digests(b"not json").is_empty());
    }
}
