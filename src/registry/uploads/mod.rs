//! Blob uploads: monolithic (POST+PUT, or POST with `?digest=`), chunked (POST, PATCH..., PUT),
//! status, cancel and cross-repository mount.
//!
//! An upload's state is its directory in storage, not process memory: `startedat` (which
//! distribution's purge job also reads) and the bytes received so far. On a local disk they are
//! one file, `data`, that each chunk is appended to under a lock, with the running sha256 beside
//! it (`regate-progress`), so every byte is written and hashed once and the finished file is
//! renamed into place. Object stores cannot append: there each chunk is its own object,
//! `part-<offset>`, with its sha256 beside it, joined at the end. Any process with the same
//! storage can continue an upload. A blob becomes visible only after its bytes hash to the
//! digest the client named.

use super::error::{ApiError, Code};
use super::hashstate::ResumableSha256;
use super::{body_error, digest_header, Event, Outcome, Permissions, Registry};
use crate::http::{self, query_get, BodyReader, Resp};
use crate::storage::fs::FsAppender;
use crate::storage::{layout, BlobWriter};
use crate::types::names::{Algorithm, Digest, Hasher, RepoName, UploadId};
use ::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};

mod append;
mod parts;
use parts::end_of;

#[derive(Debug, Clone)]
struct Part {
    offset: u64,
    size: u64,
    sha256: Option<String>,
}

/// What an upload holds so far.
enum Held {
    /// Chunks appended to one `data` file: its length.
    Appended(u64),
    /// One object per chunk (object stores, LFS, and uploads begun by an older regate).
    Parts(Vec<Part>),
}

impl Held {
    fn end(&self) -> u64 {
        match self {
            Held::Appended(n) => *n,
            Held::Parts(p) => end_of(p),
        }
    }
}

impl Registry {
    pub(super) async fn start_upload(
        &self,
        name: &RepoName,
        headers: &HeaderMap,
        query: &[(String, String)],
        body: BodyReader,
        perms: &dyn Permissions,
    ) -> Result<Outcome, ApiError> {
        if let (Some(m), Some(from)) = (query_get(query, "mount"), query_get(query, "from")) {
            let d = Digest::parse(m).ok_or_else(|| ApiError::new(Code::DigestInvalid, "invalid mount digest"))?;
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
    async fn monolithic(&self, name: &RepoName, d: &Digest, mut body: BodyReader) -> Result<Outcome, ApiError> {
        let first = body.chunk().await.map_err(body_error)?;
        let size = self.write_blob_from_body(d, first, &mut body).await?;
        self.link(&layout::layer_link(name, d), d).await?;
        Ok(Outcome {
            resp: self.created(name, d),
            event: Some(push_event(name, d, size)),
        })
    }

    pub(super) async fn upload_status(&self, name: &RepoName, id: &UploadId) -> Result<Resp, ApiError> {
        let held = self.held(name, id).await?;
        let mut r = http::status(StatusCode::NO_CONTENT);
        self.upload_headers(&mut r, name, id, held.end());
        Ok(r)
    }

    pub(super) async fn cancel_upload(&self, name: &RepoName, id: &UploadId) -> Result<Resp, ApiError> {
        self.held(name, id).await?;
        self.store.delete_all(&layout::upload_dir(name, id)).await?;
        Ok(http::status(StatusCode::NO_CONTENT))
    }

    pub(super) async fn patch_upload(
        &self,
        name: &RepoName,
        id: &UploadId,
        headers: &HeaderMap,
        mut body: BodyReader,
    ) -> Result<Resp, ApiError> {
        let held = self.held(name, id).await?;
        let offset = held.end();
        if let Some(r) = self.check_chunk_range(name, id, headers, offset)? {
            return Ok(r);
        }
        let size = if self.appends(&held) {
            match self.append_chunk(name, id, offset, None, &mut body).await? {
                Ok(n) => n,
                Err(now) => return Ok(self.range_moved(name, id, offset, now)),
            }
        } else {
            self.write_part(name, id, offset, None, &mut body).await?
        };
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
    ) -> Result<Outcome, ApiError> {
        let d = parse_upload_digest(
            query_get(query, "digest")
                .ok_or_else(|| ApiError::new(Code::DigestInvalid, "the digest query parameter is required"))?,
        )?;
        let held = self.held(name, id).await?;
        // a final chunk carried on the PUT must continue the upload exactly like a PATCH
        if content_length(headers) != Some(0) {
            if let Some(r) = self.check_chunk_range(name, id, headers, held.end())? {
                return Ok(r.into());
            }
        }
        let first = body.chunk().await.map_err(body_error)?;
        let size = match held {
            // everything arrives in this request: stream it straight into place
            Held::Parts(parts) if parts.is_empty() => self.write_blob_from_body(&d, first, &mut body).await?,
            Held::Parts(mut parts) => {
                if first.is_some() {
                    let offset = end_of(&parts);
                    let n = self.write_part(name, id, offset, first, &mut body).await?;
                    parts.push(Part {
                        offset,
                        size: n,
                        sha256: None,
                    });
                }
                self.assemble(name, id, &parts, &d).await?
            }
            Held::Appended(len) => {
                let mut len = len;
                if first.is_some() {
                    match self.append_chunk(name, id, len, first, &mut body).await? {
                        Ok(n) => len += n,
                        Err(now) => return Ok(self.range_moved(name, id, len, now).into()),
                    }
                }
                match self.publish_appended(name, id, len, &d).await? {
                    Ok(()) => len,
                    Err(now) => return Ok(self.range_moved(name, id, len, now).into()),
                }
            }
        };
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
    ) -> Result<Option<Resp>, ApiError> {
        let Some(v) = headers.get(header::CONTENT_RANGE) else {
            return Ok(None);
        };
        let (start, end) = parse_content_range(v)
            .ok_or_else(|| ApiError::new(Code::BlobUploadInvalid, "Content-Range must be <start>-<end>"))?;
        if start != offset {
            return Ok(Some(self.range_moved(name, id, start, offset)));
        }
        if let Some(len) = content_length(headers) {
            if end + 1 - start != len {
                return Err(ApiError::new(
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
    ) -> Result<u64, ApiError> {
        let mut w = self.store.writer(&layout::blob_data(d)).await?;
        let mut h = Hasher::new(d.algorithm());
        if let Err(e) = pump(&mut w, first, body, |c| h.update(c)).await {
            w.abort().await;
            return Err(e);
        }
        let size = w.written();
        self.verify_and_commit(w, h, d).await?;
        Ok(size)
    }

    async fn verify_and_commit(&self, w: BlobWriter, h: Hasher, d: &Digest) -> Result<(), ApiError> {
        let got = h.finish();
        if &got != d {
            w.abort().await;
            return Err(digest_mismatch(d, &got));
        }
        w.commit().await?;
        Ok(())
    }

    /// What the upload holds; `BLOB_UPLOAD_UNKNOWN` when there is no such upload.
    async fn held(&self, name: &RepoName, id: &UploadId) -> Result<Held, ApiError> {
        let entries = self.store.list(&layout::upload_dir(name, id)).await?;
        if !entries.iter().any(|e| e.name == "startedat") {
            return Err(unknown_upload(name, id));
        }
        if entries.iter().any(|e| e.name == "data") {
            return Ok(Held::Appended(self.progress(name, id).await?.len));
        }
        self.parts(name, id, &entries).await.map(Held::Parts)
    }

    /// Whether the next chunk of this upload is appended to its `data` file.
    fn appends(&self, held: &Held) -> bool {
        match held {
            Held::Appended(_) => true,
            Held::Parts(p) => p.is_empty() && self.store.can_append(),
        }
    }

    /// 416 for a chunk that starts at `offset` when the upload holds `now` bytes (the client
    /// lost count, or another request wrote to the upload meanwhile).
    fn range_moved(&self, name: &RepoName, id: &UploadId, offset: u64, now: u64) -> Resp {
        let mut r = ApiError::new(
            Code::RangeInvalid,
            format!("chunk starts at {offset} but the upload has {now} bytes; resume from the Range header"),
        )
        .into_response();
        self.upload_headers(&mut r, name, id, now);
        r
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

fn damaged_upload(e: std::io::Error) -> ApiError {
    ApiError::new(
        Code::BlobUploadInvalid,
        format!("this upload lost data ({e}); cancel it and push again"),
    )
}

/// Where a request body is streamed: a blob or chunk writer, or an upload file's appender.
trait Sink {
    async fn put(&mut self, c: Bytes) -> std::io::Result<()>;
}

impl Sink for BlobWriter {
    async fn put(&mut self, c: Bytes) -> std::io::Result<()> {
        self.write(c).await
    }
}

/// Streams `next` and the rest of `body` into `w`, showing each piece to `seen` first (a hash).
/// On an error the caller discards what `w` holds.
async fn pump(
    w: &mut impl Sink,
    mut next: Option<Bytes>,
    body: &mut BodyReader,
    mut seen: impl FnMut(&[u8]),
) -> Result<(), ApiError> {
    while let Some(c) = next {
        seen(&c);
        w.put(c).await?;
        next = body.chunk().await.map_err(body_error)?;
    }
    Ok(())
}

fn unknown_upload(name: &RepoName, id: &UploadId) -> ApiError {
    ApiError::new(
        Code::BlobUploadUnknown,
        format!("upload {id} is not known to repository {name}"),
    )
}

/// The digest an upload is to be checked against: sha256 or sha512, well formed. Another
/// algorithm is `DIGEST_INVALID`, naming the ones supported.
fn parse_upload_digest(s: &str) -> Result<Digest, ApiError> {
    Digest::parse(s).ok_or_else(|| {
        let known = s.split_once(':').is_some_and(|(a, _)| Algorithm::parse(a).is_some());
        let why = if known {
            format!("invalid digest {s:?}")
        } else {
            format!("invalid digest {s:?}: the supported algorithms are sha256 and sha512")
        };
        ApiError::new(Code::DigestInvalid, why)
    })
}

fn digest_mismatch(want: &Digest, got: &Digest) -> ApiError {
    ApiError::new(
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
