//! What replication needs of the local registry, without HTTP: read a repository's tags,
//! manifests, referrers and blobs, and write blobs and manifests copied from another registry
//! with the same checks a push gets (digest verified while streaming; a manifest only once
//! everything it names is here).

use super::error::{ApiError, Code};
use super::manifests::Manifest;
use super::{Event, Registry};
use crate::storage::{layout, ByteStream};
use crate::types::names::{Digest, Reference, RepoName, Tag};
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::Arc;

impl Registry {
    /// The manifest a tag names now.
    pub async fn tag_target(&self, name: &RepoName, tag: &str) -> Result<Option<Digest>, ApiError> {
        let Some(t) = Tag::parse(tag) else { return Ok(None) };
        self.read_link(&layout::tag_current(name, &t)).await
    }

    /// A manifest of this repository (none when the repository does not hold it).
    pub async fn repo_manifest(&self, name: &RepoName, d: &Digest) -> Result<Option<Arc<Manifest>>, ApiError> {
        if self.store.stat(&layout::revision_link(name, d)).await?.is_none() {
            return Ok(None);
        }
        self.load_manifest(d).await
    }

    /// The manifests in this repository whose subject is `subject`.
    pub async fn referrer_digests(&self, name: &RepoName, subject: &Digest) -> Result<Vec<Digest>, ApiError> {
        let mut out = Vec::new();
        for a in crate::types::names::Algorithm::ALL {
            for e in self.store.list(&layout::referrers_dir(name, subject, a)).await? {
                let Some(d) = Digest::from_hex(a, &e.name) else {
                    continue;
                };
                if self.store.stat(&layout::revision_link(name, &d)).await?.is_some() {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// A blob's bytes as a stream, with its size.
    pub async fn blob_stream(&self, d: &Digest) -> Result<Option<(u64, ByteStream)>, ApiError> {
        Ok(self
            .store
            .get(&layout::blob_data(d), None)
            .await?
            .map(|(meta, s)| (meta.size, s)))
    }

    /// Whether the repository has the blob (linked and stored).
    pub async fn has_blob(&self, name: &RepoName, d: &Digest) -> Result<bool, ApiError> {
        Ok(self.blob_linked(name, d).await? && self.blob_stored(d).await?)
    }

    /// Writes a blob copied from elsewhere into `name`: streamed, hashed on the way, visible
    /// only once it matches `d`.
    pub async fn import_blob(&self, name: &RepoName, d: &Digest, mut body: ByteStream) -> Result<u64, ApiError> {
        if !self.blob_stored(d).await? {
            let mut w = self.store.writer(&layout::blob_data(d)).await?;
            let mut h = crate::types::names::Hasher::new(d.algorithm());
            while let Some(c) = body.next().await {
                let c: Bytes = match c {
                    Ok(c) => c,
                    Err(e) => {
                        w.abort().await;
                        return Err(e.into());
                    }
                };
                h.update(&c);
                if let Err(e) = w.write(c).await {
                    w.abort().await;
                    return Err(e.into());
                }
            }
            if h.finish() != *d {
                w.abort().await;
                return Err(ApiError::new(
                    Code::DigestInvalid,
                    format!("the copied blob does not match {d}"),
                ));
            }
            w.commit().await?;
        }
        self.link(&layout::layer_link(name, d), d).await?;
        Ok(self.store.stat(&layout::blob_data(d)).await?.map_or(0, |m| m.size))
    }

    /// Stores a manifest copied from elsewhere under `r` (a tag or its digest), with the checks
    /// of a push; returns the push event.
    pub async fn import_manifest(
        &self,
        name: &RepoName,
        r: &Reference,
        bytes: Bytes,
        content_type: Option<&str>,
    ) -> Result<Event, ApiError> {
        let (d, m, ev) = self.store_manifest(name, r, bytes, content_type).await?;
        self.manifests.insert(d, m);
        Ok(ev)
    }
}
