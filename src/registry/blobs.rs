//! Blob HEAD/GET (with ranges) and DELETE.

use super::error::{ApiError, Code};
use super::{digest_header, Event, Outcome, Registry};
use crate::http::{self, Resp};
use crate::storage::layout;
use crate::types::names::{Digest, RepoName};
use ::http::{header, HeaderMap, HeaderValue, StatusCode};

/// A single byte range from a `Range: bytes=...` header, resolved against `len`.
/// `Ok(None)`: no usable range header (serve the whole blob). `Err(())`: unsatisfiable.
pub(crate) fn parse_range(h: Option<&HeaderValue>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = h.and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        // multiple ranges: serve the whole representation, as RFC 9110 allows
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() {
            len
        } else {
            let e: u64 = b.parse().map_err(|_| ())?;
            if e < start {
                return Err(());
            }
            e.saturating_add(1).min(len)
        };
        (start, end)
    };
    if range.0 >= len {
        return Err(());
    }
    Ok(Some(range))
}

impl Registry {
    pub(super) async fn get_blob(
        &self,
        name: &RepoName,
        d: &Digest,
        headers: &HeaderMap,
        head: bool,
    ) -> Result<Outcome, ApiError> {
        let unknown = || ApiError::new(Code::BlobUnknown, format!("blob {d} is not known to repository {name}"));
        // manifests are blobs too (distribution serves them here), so either link admits it
        let linked =
            self.blob_linked(name, d).await? || self.store.stat(&layout::revision_link(name, d)).await?.is_some();
        if !linked {
            if let Some(m) = &self.mirror {
                return self.mirror_blob(m, name, d, head).await;
            }
            return Err(unknown());
        }
        let key = layout::blob_data(d);
        if head {
            // a client checking whether to skip an upload: keep the blob out of GC's reach
            if !self.blob_stored(d).await? {
                return Err(unknown());
            }
            let meta = self.store.stat(&key).await?.ok_or_else(unknown)?;
            let mut r = http::status(StatusCode::OK);
            blob_headers(&mut r, d, meta.size);
            return Ok(r.into());
        }
        let meta = self.store.stat(&key).await?.ok_or_else(unknown)?;
        if let Some(ttl) = self.opts.redirect {
            // authorised and present: send the client to the bucket (or its CDN) for the bytes
            if let Some(url) = self.store.presign_get(&key, ttl).await? {
                let mut r = http::status(StatusCode::TEMPORARY_REDIRECT);
                http::set(&mut r, header::LOCATION, &url);
                digest_header(&mut r, d);
                r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                return Ok(Outcome {
                    resp: r,
                    event: Some(pull_event(name, d, meta.size)),
                });
            }
        }
        let range = match parse_range(headers.get(header::RANGE), meta.size) {
            Ok(r) => r,
            Err(()) => {
                let mut r = ApiError::new(Code::RangeInvalid, "requested range not satisfiable").into_response();
                http::set(&mut r, header::CONTENT_RANGE, &format!("bytes */{}", meta.size));
                return Ok(r.into());
            }
        };
        let (meta, body) = self.store.get(&key, range).await?.ok_or_else(unknown)?;
        let mut r = Resp::new(http::stream(body));
        match range {
            Some((s, e)) => {
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                blob_headers(&mut r, d, e - s);
                http::set(
                    &mut r,
                    header::CONTENT_RANGE,
                    &format!("bytes {}-{}/{}", s, e - 1, meta.size),
                );
            }
            None => blob_headers(&mut r, d, meta.size),
        }
        Ok(Outcome {
            resp: r,
            event: Some(pull_event(name, d, meta.size)),
        })
    }

    pub(super) async fn delete_blob(&self, name: &RepoName, d: &Digest) -> Result<Resp, ApiError> {
        self.deny_delete()?;
        if !self.blob_linked(name, d).await? {
            return Err(ApiError::new(
                Code::BlobUnknown,
                format!("blob {d} is not known to repository {name}"),
            ));
        }
        // Only the repository's link goes; the bytes are freed by garbage collection once no
        // repository or manifest references them.
        self.store.delete(&layout::layer_link(name, d)).await?;
        self.store.prune(&layout::layer_dir(name, d)).await?;
        let mut r = http::status(StatusCode::ACCEPTED);
        digest_header(&mut r, d);
        Ok(r)
    }
}

fn pull_event(name: &RepoName, d: &Digest, size: u64) -> Event {
    Event {
        action: "pull",
        repo: name.clone(),
        digest: d.clone(),
        media_type: "application/octet-stream".into(),
        size,
        tag: None,
    }
}

fn blob_headers(r: &mut Resp, d: &Digest, len: u64) {
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=31536000"));
    http::set(r, header::ETAG, &format!("\"{d}\""));
    digest_header(r, d);
}

#[cfg(test)]
mod tests {
    use super::parse_range;
    use http::HeaderValue;

    fn r(s: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
        parse_range(Some(&HeaderValue::from_str(s).unwrap()), len)
    }

    #[test]
    fn ranges() {
        assert_eq!(r("bytes=0-9", 100), Ok(Some((0, 10))));
        assert_eq!(r("bytes=90-", 100), Ok(Some((90, 100))));
        assert_eq!(r("bytes=-10", 100), Ok(Some((90, 100))));
        assert_eq!(r("bytes=-1000", 100), Ok(Some((0, 100))));
        assert_eq!(r("bytes=50-1000", 100), Ok(Some((50, 100))));
        assert_eq!(r("bytes=100-", 100), Err(()));
        assert_eq!(r("bytes=9-3", 100), Err(()));
        assert_eq!(r("bytes=x-3", 100), Err(()));
        assert_eq!(r("bytes=-0", 100), Err(()));
        assert_eq!(r("items=0-3", 100), Ok(None));
        assert_eq!(parse_range(None, 5), Ok(None));
    }
}
