//! Blob uploads: monolithic (POST+PUT, or POST with `?digest=`), chunked (POST, PATCH..., PUT),
//! status, cancel and cross-repository mount.
//!
//! An upload's state is its directory in storage, not process memory: `startedat` (which
//! distribution's purge job also reads) and one object per received chunk, `part-<offset>`, with
//! the chunk's sha256 beside it. Any process with the same storage can continue it. A blob
//! becomes visible only after its bytes hash to the digest the client named.

use super::error::{Code, RegistryError};
use super::names::{Digest, RepoName, UploadId};
use super::{body_error, digest_header, Event, Outcome, Permissions, Registry};
use crate::http::{self, query_get, BodyReader, Resp};
use crate::storage::{layout, BlobWriter};
use ::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};

#[derive(Debug, Clone)]
struct Part {
    offset: u64,
    size: u64,
    sha256: Option<String>,
}

impl Registry {
    pub(super) async fn start_upload(
        &self,
        name: &RepoName,
        headers: &HeaderMap,
        query: &[(String, String)],
        body: BodyReader,
        perms: &dyn Permissions,
    ) -> Result<Outcome, RegistryError> {
        if let (Some(m), Some(from)) = (query_get(query, "mount"), query_get(query, "from")) {
            let d = Digest::parse(m).ok_or_else(|| RegistryError::new(Code::DigestInvalid, "invalid mount digest"))?;
            if let Some(from) = RepoName::parse(from) {
                if perms.can_pull(&from) && self.blob_linked(&from, &d).await? && self.blob_stored(&d).await? {
                    self.link(&layout::layer_link(name, &d), &d).await?;
                    return Ok(self.created(name, &d).into());
                }
            }
            // unknown or unreadable source: an ordinary upload, as the spec says
        } else if let Some(dg) = query_get(query, "digest") {
            let d = parse_upload_digest(dg)?;
            return self.monolithic(name, &d, body).await;
        }
        let _ = headers;
        let id = UploadId::new();
        let started = httpdate::fmt_http_date(std::time::SystemTime::now());
        self.store
            .put(
                &layout::upload_startedat(name, &id),
                Bytes::from(rfc3339_now().unwrap_or(started)),
            )
            .await?;
        let mut r = http::status(StatusCode::ACCEPTED);
        self.upload_headers(&mut r, name, &id, 0);
        Ok(r.into())
    }

    /// POST with `?digest=`: the whole blob in one request, streamed straight into place.
    async fn monolithic(&self, name: &RepoName, d: &Digest, mut body: BodyReader) -> Result<Outcome, RegistryError> {
        let first = body.chunk().await.map_err(body_error)?;
        let size = self.write_blob_from_body(d, first, &mut body).await?;
        self.link(&layout::layer_link(name, d), d).await?;
        Ok(Outcome {
            resp: self.created(name, d),
            event: Some(push_event(name, d, size)),
        })
    }

    pub(super) async fn upload_status(&self, name: &RepoName, id: &UploadId) -> Result<Resp, RegistryError> {
        let parts = self.parts(name, id).await?;
        let mut r = http::status(StatusCode::NO_CONTENT);
        self.upload_headers(&mut r, name, id, end_of(&parts));
        Ok(r)
    }

    pub(super) async fn cancel_upload(&self, name: &RepoName, id: &UploadId) -> Result<Resp, RegistryError> {
        self.parts(name, id).await?;
        self.store.delete_all(&layout::upload_dir(name, id)).await?;
        Ok(http::status(StatusCode::NO_CONTENT))
    }

    pub(super) async fn patch_upload(
        &self,
        name: &RepoName,
        id: &UploadId,
        headers: &HeaderMap,
        mut body: BodyReader,
    ) -> Result<Resp, RegistryError> {
        let parts = self.parts(name, id).await?;
        let offset = end_of(&parts);
        if let Some(r) = self.check_chunk_range(name, id, headers, offset)? {
            return Ok(r);
        }
        let size = self.write_part(name, id, offset, None, &mut body).await?;
        let mut r = http::status(StatusCode::ACCEPTED);
        self.upload_headers(&mut r, name, id, offset + size);
        Ok(r)
    }

    pub(super) async fn finish_upload(
        &self,
        name: &RepoName,
        id: &UploadId,
        headers: &HeaderMap,
        query: &[(String, String)],
        mut body: BodyReader,
    ) -> Result<Outcome, RegistryError> {
        let d = parse_upload_digest(
            query_get(query, "digest")
                .ok_or_else(|| RegistryError::new(Code::DigestInvalid, "the digest query parameter is required"))?,
        )?;
        let mut parts = self.parts(name, id).await?;
        // a final chunk carried on the PUT must continue the upload exactly like a PATCH
        if content_length(headers) != Some(0) {
            if let Some(r) = self.check_chunk_range(name, id, headers, end_of(&parts))? {
                return Ok(r.into());
            }
        }
        let first = body.chunk().await.map_err(body_error)?;
        let size;
        if parts.is_empty() {
            // everything arrives in this request: stream it straight into place
            size = self.write_blob_from_body(&d, first, &mut body).await?;
        } else {
            if first.is_some() {
                let offset = end_of(&parts);
                let n = self.write_part(name, id, offset, first, &mut body).await?;
                parts.push(Part {
                    offset,
                    size: n,
                    sha256: None,
                });
            }
            size = self.assemble(name, id, &parts, &d).await?;
        }
        self.link(&layout::layer_link(name, &d), &d).await?;
        self.store.delete_all(&layout::upload_dir(name, id)).await?;
        Ok(Outcome {
            resp: self.created(name, &d),
            event: Some(push_event(name, &d, size)),
        })
    }

    /// Checks a chunk's `Content-Range` (when given) against the `offset` bytes received so far:
    /// `Some(416 answer)` when the chunk does not start there, an error when it is malformed.
    fn check_chunk_range(
        &self,
        name: &RepoName,
        id: &UploadId,
        headers: &HeaderMap,
        offset: u64,
    ) -> Result<Option<Resp>, RegistryError> {
        let Some(v) = headers.get(header::CONTENT_RANGE) else {
            return Ok(None);
        };
        let (start, end) = parse_content_range(v)
            .ok_or_else(|| RegistryError::new(Code::BlobUploadInvalid, "Content-Range must be <start>-<end>"))?;
        if start != offset {
            let mut r = RegistryError::new(
                Code::RangeInvalid,
                format!("chunk starts at {start} but the upload has {offset} bytes; resume from the Range header"),
            )
            .into_response();
            self.upload_headers(&mut r, name, id, offset);
            return Ok(Some(r));
        }
        if let Some(len) = content_length(headers) {
            if end + 1 - start != len {
                return Err(RegistryError::new(
                    Code::BlobUploadInvalid,
                    "Content-Range and Content-Length disagree",
                ));
            }
        }
        Ok(None)
    }

    /// Streams the body (after `first`) into the blob's final place, verifying the digest.
    async fn write_blob_from_body(
        &self,
        d: &Digest,
        first: Option<Bytes>,
        body: &mut BodyReader,
    ) -> Result<u64, RegistryError> {
        let mut w = self.store.writer(&layout::blob_data(d)).await?;
        let mut h = Sha256::new();
        let mut next = first;
        loop {
            let Some(c) = next else { break };
            h.update(&c);
            if let Err(e) = w.write(c).await {
                w.abort().await;
                return Err(e.into());
            }
            next = match body.chunk().await {
                Ok(n) => n,
                Err(e) => {
                    w.abort().await;
                    return Err(body_error(e));
                }
            };
        }
        let size = w.written();
        self.verify_and_commit(w, h, d).await?;
        Ok(size)
    }

    async fn verify_and_commit(&self, w: BlobWriter, h: Sha256, d: &Digest) -> Result<(), RegistryError> {
        let got = Digest::from_sha256(h.finalize().into());
        if &got != d {
            w.abort().await;
            return Err(digest_mismatch(d, &got));
        }
        w.commit().await?;
        Ok(())
    }

    /// Stores one chunk as `part-<offset>` with its sha256 beside it; returns its size.
    async fn write_part(
        &self,
        name: &RepoName,
        id: &UploadId,
        offset: u64,
        first: Option<Bytes>,
        body: &mut BodyReader,
    ) -> Result<u64, RegistryError> {
        let mut next = match first {
            Some(c) => Some(c),
            None => body.chunk().await.map_err(body_error)?,
        };
        if next.is_none() {
            return Ok(0);
        }
        let key = layout::upload_part(name, id, offset);
        let mut w = self.store.writer(&key).await?;
        let mut h = Sha256::new();
        while let Some(c) = next {
            h.update(&c);
            if let Err(e) = w.write(c).await {
                w.abort().await;
                return Err(e.into());
            }
            next = match body.chunk().await {
                Ok(n) => n,
                Err(e) => {
                    w.abort().await;
                    return Err(body_error(e));
                }
            };
        }
        let size = w.written();
        w.commit().await?;
        let hex = hex::encode(h.finalize());
        // the chunk itself is durable; its hash is a shortcut (a missing one means hashing the
        // chunk again at the end), so it need not wait for the disk
        self.store
            .put_unsynced(&format!("{key}.sha256"), Bytes::from(hex))
            .await?;
        Ok(size)
    }

    /// Joins the parts into the blob. A single part whose recorded hash matches is moved into
    /// place without copying; otherwise the parts are streamed, hashed and written anew.
    async fn assemble(&self, name: &RepoName, id: &UploadId, parts: &[Part], d: &Digest) -> Result<u64, RegistryError> {
        let total = end_of(parts);
        let dest = layout::blob_data(d);
        if let [p] = parts {
            if let Some(hex) = &p.sha256 {
                if hex != d.hex() {
                    let got = Digest::parse(&format!("sha256:{hex}"));
                    return Err(match got {
                        Some(g) => digest_mismatch(d, &g),
                        None => RegistryError::new(Code::DigestInvalid, "upload content does not match the digest"),
                    });
                }
                if !self.blob_stored(d).await? {
                    self.store
                        .rename(&layout::upload_part(name, id, p.offset), &dest)
                        .await?;
                }
                return Ok(total);
            }
        }
        let mut w = self.store.writer(&dest).await?;
        let mut h = Sha256::new();
        for p in parts {
            let key = layout::upload_part(name, id, p.offset);
            let Some((_, mut s)) = self.store.get(&key, None).await? else {
                w.abort().await;
                return Err(RegistryError::new(
                    Code::BlobUploadInvalid,
                    "an upload chunk has vanished",
                ));
            };
            while let Some(c) = s.next().await {
                let c = match c {
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
        }
        if w.written() != total {
            w.abort().await;
            return Err(RegistryError::new(
                Code::BlobUploadInvalid,
                "upload chunks changed while assembling",
            ));
        }
        self.verify_and_commit(w, h, d).await?;
        Ok(total)
    }

    /// The upload's parts in order; `BLOB_UPLOAD_UNKNOWN` when there is no such upload.
    async fn parts(&self, name: &RepoName, id: &UploadId) -> Result<Vec<Part>, RegistryError> {
        let unknown = || {
            RegistryError::new(
                Code::BlobUploadUnknown,
                format!("upload {id} is not known to repository {name}"),
            )
        };
        let entries = self.store.list(&layout::upload_dir(name, id)).await?;
        if !entries.iter().any(|e| e.name == "startedat") {
            return Err(unknown());
        }
        let mut parts = Vec::new();
        for e in &entries {
            let Some(off) = e.name.strip_prefix("part-") else {
                continue;
            };
            if off.contains('.') {
                continue;
            }
            let Ok(offset) = off.parse::<u64>() else { continue };
            let key = layout::upload_part(name, id, offset);
            let Some(meta) = self.store.stat(&key).await? else {
                continue;
            };
            let sha256 = if entries.iter().any(|x| x.name == format!("{}.sha256", e.name)) {
                self.store
                    .read(&format!("{key}.sha256"), 128)
                    .await?
                    .and_then(|b| String::from_utf8(b.to_vec()).ok())
                    // a sidecar a crash cut short is no shortcut: the chunk is hashed again
                    .filter(|h| h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()))
            } else {
                None
            };
            parts.push(Part {
                offset,
                size: meta.size,
                sha256,
            });
        }
        parts.sort_by_key(|p| p.offset);
        let mut at = 0;
        for p in &parts {
            if p.offset != at {
                return Err(RegistryError::new(
                    Code::BlobUploadInvalid,
                    "upload chunks are not contiguous; cancel and restart the upload",
                ));
            }
            at += p.size;
        }
        Ok(parts)
    }

    fn upload_headers(&self, r: &mut Resp, name: &RepoName, id: &UploadId, size: u64) {
        http::set(
            r,
            header::LOCATION,
            &self.location(&format!("/v2/{name}/blobs/uploads/{id}")),
        );
        http::set(r, header::RANGE, &format!("0-{}", size.saturating_sub(1)));
        http::set(r, HeaderName::from_static("docker-upload-uuid"), id.as_str());
        // only on empty answers: a 416 carries its JSON error, and a Content-Length that
        // disagrees with the body breaks the connection (hyper asserts on it in debug builds)
        if http_body::Body::size_hint(r.body()).exact() == Some(0) {
            r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        }
    }

    fn created(&self, name: &RepoName, d: &Digest) -> Resp {
        let mut r = http::status(StatusCode::CREATED);
        http::set(
            &mut r,
            header::LOCATION,
            &self.location(&format!("/v2/{name}/blobs/{d}")),
        );
        digest_header(&mut r, d);
        r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        r
    }
}

fn push_event(name: &RepoName, d: &Digest, size: u64) -> Event {
    Event {
        action: "push",
        repo: name.clone(),
        digest: d.clone(),
        media_type: "application/octet-stream".into(),
        size,
        tag: None,
    }
}

fn end_of(parts: &[Part]) -> u64 {
    parts.last().map(|p| p.offset + p.size).unwrap_or(0)
}

fn parse_upload_digest(s: &str) -> Result<Digest, RegistryError> {
    let d = Digest::parse(s).ok_or_else(|| RegistryError::new(Code::DigestInvalid, format!("invalid digest {s:?}")))?;
    if d.algorithm() != super::names::Algorithm::Sha256 {
        return Err(RegistryError::new(
            Code::DigestInvalid,
            "only sha256 digests can be uploaded",
        ));
    }
    Ok(d)
}

fn digest_mismatch(want: &Digest, got: &Digest) -> RegistryError {
    RegistryError::new(
        Code::DigestInvalid,
        format!("uploaded content has digest {got}, not {want}"),
    )
    .detail(serde_json::json!({"expected": want.to_string(), "actual": got.to_string()}))
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// `<start>-<end>` (inclusive), also accepting the `bytes <start>-<end>/<total>` form.
fn parse_content_range(v: &HeaderValue) -> Option<(u64, u64)> {
    let s = v.to_str().ok()?.trim();
    let s = s
        .strip_prefix("bytes ")
        .or_else(|| s.strip_prefix("bytes="))
        .unwrap_or(s);
    let s = s.split('/').next()?;
    let (a, b) = s.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (b >= a).then_some((a, b))
}

fn rfc3339_now() -> Option<String> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(crate::util::rfc3339(secs))
}

#[cfg(test)]
mod tests {
    use super::parse_content_range;
    use http::HeaderValue;

    #[test]
    fn content_range() {
        let p = |s: &str| parse_content_range(&HeaderValue::from_str(s).unwrap());
        assert_eq!(p("0-99"), Some((0, 99)));
        assert_eq!(p("bytes 100-199/*"), Some((100, 199)));
        assert_eq!(p("5-4"), None);
        assert_eq!(p("x-4"), None);
    }
}
