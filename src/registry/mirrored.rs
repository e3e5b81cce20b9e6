//! The registry side of mirror mode: filling the local store from the remote on a pull miss.

use super::error::{ApiError, Code};
use super::manifests::Manifest;
use super::{Event, Outcome, Registry};
use crate::http::{self, Resp};
use crate::mirror::{Mirror, MirrorError};
use crate::storage::layout;
use crate::types::names::{Digest, Reference, RepoName};
use ::http::{header, HeaderValue, StatusCode};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::SystemTime;

fn unavailable(e: MirrorError) -> ApiError {
    match e {
        MirrorError::NotFound => ApiError::new(Code::ManifestUnknown, "not found here or in the mirrored registry"),
        MirrorError::Failed(m) => {
            tracing::warn!(error = %m, "mirror fetch failed");
            ApiError::new(Code::Unavailable, "the mirrored registry is unreachable; retry later")
        }
    }
}

impl Registry {
    /// Resolves `r` through the mirror when it is not held locally, or when a mirrored tag is
    /// older than the TTL and the remote now names another manifest.
    pub(super) async fn mirror_manifest(
        &self,
        m: &Arc<Mirror>,
        name: &RepoName,
        r: &Reference,
        local: Option<Digest>,
    ) -> Result<Option<Digest>, ApiError> {
        if let (Some(d), Reference::Digest(_)) = (&local, r) {
            return Ok(Some(d.clone()));
        }
        if let (Some(d), Reference::Tag(t)) = (&local, r) {
            let link = layout::tag_current(name, t);
            let fresh = self
                .store
                .stat(&link)
                .await?
                .and_then(|meta| meta.modified)
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age < m.tag_ttl);
            if fresh {
                return Ok(Some(d.clone()));
            }
            match m.tag_digest(name.as_str(), t.as_str()).await {
                Ok(Some(remote)) if remote == d.to_string() => {
                    // unchanged upstream: serve ours for another TTL
                    let _ = self.store.touch(&link).await;
                    return Ok(Some(d.clone()));
                }
                Ok(_) => {}
                Err(MirrorError::NotFound) => return Ok(Some(d.clone())),
                Err(MirrorError::Failed(e)) => {
                    tracing::warn!(error = %e, repo = %name, tag = %t, "mirror unreachable; serving the cached tag");
                    return Ok(Some(d.clone()));
                }
            }
        }
        let (bytes, ct) = match m.manifest(name.as_str(), &r.to_string()).await {
            Ok(x) => x,
            Err(MirrorError::NotFound) => return Ok(local),
            Err(e) => {
                if local.is_some() {
                    return Ok(local);
                }
                return Err(unavailable(e));
            }
        };
        let algo = match r {
            Reference::Digest(want) => want.algorithm(),
            Reference::Tag(_) => crate::types::names::Algorithm::Sha256,
        };
        let man = Manifest::parse_as(bytes, ct.as_deref(), algo)?;
        if let Reference::Digest(want) = r {
            if want != &man.digest {
                return Err(ApiError::new(
                    Code::DigestInvalid,
                    "the mirrored registry sent a manifest with another digest",
                ));
            }
        }
        let d = man.digest.clone();
        let data = layout::blob_data(&d);
        if self.store.stat(&data).await?.is_none() {
            self.store.put(&data, man.bytes.clone()).await?;
        }
        self.link(&layout::revision_link(name, &d), &d).await?;
        if let Reference::Tag(t) = r {
            self.link(&layout::tag_index(name, t, &d), &d).await?;
            self.link(&layout::tag_current(name, t), &d).await?;
        }
        self.manifests.insert(d.clone(), Arc::new(man));
        Ok(Some(d))
    }

    /// Streams a blob from the remote to the client while writing it locally; it becomes
    /// visible here only once its digest checks out.
    pub(super) async fn mirror_blob(
        &self,
        m: &Arc<Mirror>,
        name: &RepoName,
        d: &Digest,
        head: bool,
    ) -> Result<Outcome, ApiError> {
        let not_found = |e: MirrorError| match e {
            MirrorError::NotFound => {
                ApiError::new(Code::BlobUnknown, format!("blob {d} is not known to repository {name}"))
            }
            other => unavailable(other),
        };
        let (len, mut stream) = m.blob(name.as_str(), &d.to_string()).await.map_err(not_found)?;
        if head {
            let mut r = http::status(StatusCode::OK);
            if let Some(n) = len {
                r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            http::set(
                &mut r,
                header::HeaderName::from_static("docker-content-digest"),
                &d.to_string(),
            );
            return Ok(r.into());
        }
        let mut w = self.store.writer(&layout::blob_data(d)).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
        let store = self.store.clone();
        let (name2, d2) = (name.clone(), d.clone());
        tokio::spawn(async move {
            let mut h = crate::types::names::Hasher::new(d2.algorithm());
            let mut client_gone = false;
            while let Some(c) = stream.next().await {
                let c = match c {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(format!("mirror: {e}")))).await;
                        w.abort().await;
                        return;
                    }
                };
                h.update(&c);
                if let Err(e) = w.write(c.clone()).await {
                    tracing::warn!(error = %e, "mirror: cannot cache blob");
                    let _ = tx.send(Err(e)).await;
                    w.abort().await;
                    return;
                }
                // the cache fill goes on if the client leaves
                if !client_gone && tx.send(Ok(c)).await.is_err() {
                    client_gone = true;
                }
            }
            if h.finish() != d2 {
                tracing::warn!(digest = %d2, "mirror: remote blob does not match its digest; not cached");
                let _ = tx
                    .send(Err(std::io::Error::other("mirrored blob does not match its digest")))
                    .await;
                w.abort().await;
                return;
            }
            if w.commit().await.is_ok() {
                let _ = store
                    .put(&layout::layer_link(&name2, &d2), bytes::Bytes::from(d2.to_string()))
                    .await;
            }
        });
        let mut r = Resp::new(http::stream(crate::storage::fs::receiver_stream(rx)));
        if let Some(n) = len {
            r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        http::set(
            &mut r,
            header::HeaderName::from_static("docker-content-digest"),
            &d.to_string(),
        );
        Ok(Outcome {
            resp: r,
            event: Some(Event {
                action: "pull",
                repo: name.clone(),
                digest: d.clone(),
                media_type: "application/octet-stream".into(),
                size: len.unwrap_or(0),
                tag: None,
            }),
        })
    }
}
