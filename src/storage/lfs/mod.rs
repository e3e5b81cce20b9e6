//! Git LFS backend: blobs (and manifests, which are content-addressed too) are LFS objects whose
//! oid is their sha256 digest, moved with the Batch API's `basic` transfer adapter. Everything
//! mutable (tags, links, upload state, regate's own state) and one small record per blob (its
//! size, which every batch request needs) live in a metadata store: fs or object storage.
//!
//! Only keys of blob data (`docker/registry/v2/blobs/sha256/<2>/<hex>/data`) go to LFS; every
//! other key is the metadata store's. A blob is written in three steps: its bytes are staged in
//! the metadata store (a streaming writer under `regate/lfs-staging/`, or a chunked upload's
//! `part-*` object), uploaded to LFS once (batch `upload`, PUT to the action's href, `verify` when
//! the server asks for it), and only then is the record written that makes the blob visible. A
//! crash before the record leaves at most a staged object (which `regate gc` purges) and an LFS
//! object nothing refers to; never a visible blob without its bytes.
//!
//! LFS has no delete and no list API: deleting a blob drops its record, and the LFS space stays
//! used (see [`LfsStore::frees_space`] and the gc report).

use super::{BlobWriter, ByteStream, Entry, ObjMeta, Refused, Storage, Unavailable};
use crate::config::LfsConfig;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RANGE};
use reqwest::StatusCode;
use serde::Deserialize;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod client;
use client::{message_of, status_error, Action};

const BLOBS: &str = "docker/registry/v2/blobs/sha256/";
const STAGING: &str = "regate/lfs-staging";
/// The record beside where distribution keeps `data`: `{"oid": ..., "size": ...}`.
const RECORD: &str = "lfs.json";
const MEDIA: &str = "application/vnd.git-lfs+json";
/// sha256 of nothing: an empty blob is never sent to LFS (servers differ on empty objects).
const EMPTY_OID: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The LFS object id of a blob data key, or `None` for every other key.
pub fn oid_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(BLOBS)?;
    let (two, rest) = rest.split_once('/')?;
    let (hex, tail) = rest.split_once('/')?;
    let ok = tail == "data"
        && hex.len() == 64
        && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && hex.starts_with(two)
        && two.len() == 2;
    ok.then_some(hex)
}

fn record_key(oid: &str) -> String {
    format!("{BLOBS}{}/{oid}/{RECORD}", &oid[..2])
}

#[derive(Clone)]
pub struct LfsStore {
    inner: Arc<Inner>,
}

struct Inner {
    meta: Arc<Storage>,
    http: reqwest::Client,
    /// `{url}/objects/batch`
    batch_url: String,
    /// scheme://host[:port] of the LFS url: hrefs there get the Basic credentials too
    origin: String,
    auth: Option<HeaderValue>,
    retries: usize,
    timeout: Duration,
    /// blob sizes by oid (a digest's size never changes)
    sizes: moka::sync::Cache<String, u64>,
    /// download actions by oid, until shortly before they expire
    downloads: moka::sync::Cache<String, Arc<Action>>,
    /// one upload per oid at a time in this process: the others then find it stored
    uploading: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Debug, Deserialize, serde::Serialize)]
struct Record {
    oid: String,
    size: u64,
}

/// Where the bytes of an upload come from.
enum Source<'a> {
    Bytes(Bytes),
    /// an object in the metadata store
    Staged(&'a str),
}

impl LfsStore {
    pub fn from_config(c: &LfsConfig, meta: Storage) -> Result<LfsStore, String> {
        let url = c.url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&url).map_err(|e| format!("storage.lfs.url: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err("storage.lfs.url: must be an http(s) URL".into());
        }
        let origin = parsed.origin().ascii_serialization();
        let auth = match (&c.username, &c.token) {
            (Some(u), Some(t)) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{}", t.expose()));
                let mut v = HeaderValue::from_str(&format!("Basic {b64}"))
                    .map_err(|_| "storage.lfs.username/token: not valid in an HTTP header".to_owned())?;
                v.set_sensitive(true);
                Some(v)
            }
            (None, None) => None,
            _ => return Err("storage.lfs: username and token go together (HTTP Basic)".into()),
        };
        let timeout = Duration::from_secs(c.timeout.unwrap_or(30).max(1));
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // per read, not per request: a multi-GiB blob may take long, a stalled one may not
            .read_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("regate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("storage.lfs: HTTP client: {e}"))?;
        Ok(LfsStore {
            inner: Arc::new(Inner {
                meta: Arc::new(meta),
                http,
                batch_url: format!("{url}/objects/batch"),
                origin,
                auth,
                retries: c.max_retries.unwrap_or(4),
                timeout,
                sizes: moka::sync::Cache::builder().max_capacity(100_000).build(),
                downloads: moka::sync::Cache::builder()
                    .max_capacity(10_000)
                    .time_to_live(Duration::from_secs(300))
                    .build(),
                uploading: std::sync::Mutex::new(HashMap::new()),
            }),
        })
    }

    pub async fn stat(&self, key: &str) -> io::Result<Option<ObjMeta>> {
        let Some(oid) = oid_of(key) else {
            return self.inner.m_stat(key).await;
        };
        let Some(m) = self.inner.m_stat(&record_key(oid)).await? else {
            return Ok(None);
        };
        let Some(size) = self.inner.size_of(oid).await? else {
            return Ok(None);
        };
        Ok(Some(ObjMeta {
            size,
            modified: m.modified,
        }))
    }

    pub async fn get(&self, key: &str, range: Option<(u64, u64)>) -> io::Result<Option<(ObjMeta, ByteStream)>> {
        let Some(oid) = oid_of(key) else {
            return Box::pin(self.inner.meta.get(key, range)).await;
        };
        let Some(meta) = self.stat(key).await? else {
            return Ok(None);
        };
        let (s, e) = super::clamp_range(range, meta.size);
        if s == e {
            let empty: ByteStream = Box::pin(futures_util::stream::empty());
            return Ok(Some((meta, empty)));
        }
        Ok(self.inner.download(oid, meta.size, (s, e)).await?.map(|b| (meta, b)))
    }

    pub async fn read(&self, key: &str, limit: u64) -> io::Result<Option<Bytes>> {
        if oid_of(key).is_none() {
            return Box::pin(self.inner.meta.read(key, limit)).await;
        }
        let Some((meta, mut s)) = self.get(key, None).await? else {
            return Ok(None);
        };
        if meta.size > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{key} is larger than {limit} bytes"),
            ));
        }
        let mut buf = Vec::with_capacity(meta.size as usize);
        while let Some(c) = s.next().await {
            buf.extend_from_slice(&c?);
        }
        Ok(Some(Bytes::from(buf)))
    }

    pub async fn put(&self, key: &str, data: Bytes) -> io::Result<()> {
        match oid_of(key) {
            Some(oid) => self.inner.publish(oid, data.len() as u64, Source::Bytes(data)).await,
            None => Box::pin(self.inner.meta.put(key, data)).await,
        }
    }

    pub async fn writer(&self, key: &str) -> io::Result<BlobWriter> {
        let Some(oid) = oid_of(key) else {
            return Box::pin(self.inner.meta.writer(key)).await;
        };
        let staging = format!("{STAGING}/{}", uuid::Uuid::new_v4().simple());
        let w = Box::pin(self.inner.meta.writer(&staging)).await?;
        Ok(BlobWriter::Lfs(LfsWriter {
            store: self.clone(),
            oid: oid.to_owned(),
            staging,
            inner: Box::new(w),
        }))
    }

    /// Moving a staged object (an upload's only part) into a blob's place uploads it to LFS.
    pub async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        match (oid_of(from), oid_of(to)) {
            (None, None) => Box::pin(self.inner.meta.rename(from, to)).await,
            (None, Some(oid)) => {
                let Some(m) = self.inner.m_stat(from).await? else {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{from} does not exist"),
                    ));
                };
                self.inner.publish(oid, m.size, Source::Staged(from)).await?;
                Box::pin(self.inner.meta.delete(from)).await
            }
            (Some(_), _) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "an LFS object cannot be moved",
            )),
        }
    }

    /// Deleting a blob drops its record; the LFS server keeps the bytes.
    pub async fn delete(&self, key: &str) -> io::Result<()> {
        match oid_of(key) {
            Some(oid) => {
                self.inner.downloads.invalidate(oid);
                Box::pin(self.inner.meta.delete(&record_key(oid))).await
            }
            None => Box::pin(self.inner.meta.delete(key)).await,
        }
    }

    pub async fn delete_all(&self, prefix: &str) -> io::Result<()> {
        Box::pin(self.inner.meta.delete_all(prefix)).await
    }

    pub async fn prune(&self, prefix: &str) -> io::Result<()> {
        Box::pin(self.inner.meta.prune(prefix)).await
    }

    pub async fn list(&self, prefix: &str) -> io::Result<Vec<Entry>> {
        Box::pin(self.inner.meta.list(prefix)).await
    }

    /// Listings are the metadata store's (blob records included, as in [`Self::list`]).
    pub async fn list_after(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        keep: super::Keep,
    ) -> io::Result<(super::Page, bool)> {
        Box::pin(self.inner.meta.list_after(prefix, after, limit, keep)).await
    }

    pub async fn touch(&self, key: &str) -> io::Result<()> {
        match oid_of(key) {
            Some(oid) => Box::pin(self.inner.meta.touch(&record_key(oid))).await,
            None => Box::pin(self.inner.meta.touch(key)).await,
        }
    }

    /// The metadata store is ready and the batch endpoint accepts regate's credentials for
    /// uploads (the probe asks to upload the empty object, and never sends it).
    pub async fn ready(&self) -> io::Result<()> {
        Box::pin(self.inner.meta.ready()).await?;
        let r = self.inner.batch_request("upload", EMPTY_OID, 0).await?;
        let st = r.status();
        // a validation complaint about the probe object still proves reachability and credentials
        if st.is_success() || st == StatusCode::UNPROCESSABLE_ENTITY {
            return Ok(());
        }
        Err(status_error(st, "LFS batch request", &message_of(r).await))
    }

    /// The download href itself when it needs no request headers (it is then short-lived and
    /// already authorised, as a presigned URL is); `None` when the bytes must be proxied.
    pub async fn presign_get(&self, key: &str, _ttl: Duration) -> io::Result<Option<String>> {
        let Some(oid) = oid_of(key) else {
            return Ok(None);
        };
        let Some(meta) = self.stat(key).await? else {
            return Ok(None);
        };
        if meta.size == 0 {
            return Ok(None);
        }
        match self.inner.download_action(oid, meta.size, false).await? {
            Some(a) if a.header.is_empty() && !self.inner.same_origin(&a.href) => Ok(Some(a.href.clone())),
            Some(a) if a.header.is_empty() && self.inner.auth.is_none() => Ok(Some(a.href.clone())),
            _ => Ok(None),
        }
    }

    /// Staged objects older than `max_age` (left by a crash in the middle of an upload to LFS):
    /// returns their keys and deletes them unless `dry_run`.
    pub async fn purge_staging(&self, max_age: Duration, dry_run: bool) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in self.list(STAGING).await? {
            let key = format!("{STAGING}/{}", e.name);
            let old = match self.inner.m_stat(&key).await? {
                Some(m) => m
                    .modified
                    .and_then(|t| t.elapsed().ok())
                    .is_none_or(|age| age >= max_age),
                None => false,
            };
            if old {
                if !dry_run {
                    Box::pin(self.inner.meta.delete(&key)).await?;
                }
                out.push(key);
            }
        }
        Ok(out)
    }
}

/// Stages a blob in the metadata store; [`LfsWriter::commit`] uploads it to LFS and only then
/// makes it visible.
pub struct LfsWriter {
    store: LfsStore,
    oid: String,
    staging: String,
    inner: Box<BlobWriter>,
}

impl LfsWriter {
    pub async fn write(&mut self, data: Bytes) -> io::Result<()> {
        Box::pin(self.inner.write(data)).await
    }

    pub fn written(&self) -> u64 {
        self.inner.written()
    }

    pub async fn commit(self) -> io::Result<()> {
        let size = self.inner.written();
        Box::pin(self.inner.commit()).await?;
        let inner = &self.store.inner;
        let res = inner.publish(&self.oid, size, Source::Staged(&self.staging)).await;
        if let Err(e) = Box::pin(inner.meta.delete(&self.staging)).await {
            tracing::warn!(error = %e, key = %self.staging, "could not delete a staged LFS upload");
        }
        res
    }

    pub async fn abort(self) {
        Box::pin(self.inner.abort()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use client::{slice, transient};
    use futures_util::stream;

    #[test]
    fn only_blob_data_keys_go_to_lfs() {
        let hex = format!("ab{}", "0".repeat(62));
        assert_eq!(
            oid_of(&format!("docker/registry/v2/blobs/sha256/ab/{hex}/data")),
            Some(hex.as_str())
        );
        assert_eq!(
            record_key(&hex),
            format!("docker/registry/v2/blobs/sha256/ab/{hex}/lfs.json")
        );
        for k in [
            format!("docker/registry/v2/blobs/sha256/cd/{hex}/data"),
            format!("docker/registry/v2/blobs/sha256/ab/{hex}/lfs.json"),
            format!("docker/registry/v2/blobs/sha256/ab/{}/data", "A".repeat(64)),
            format!("docker/registry/v2/repositories/x/_uploads/u/part-{:020}", 0),
            "docker/registry/v2/blobs/sha256/ab/ab/data".into(),
            "regate/lfs-staging/x".into(),
        ] {
            assert_eq!(oid_of(&k), None, "{k}");
        }
    }

    async fn collect(s: ByteStream) -> Result<Vec<u8>, io::Error> {
        let mut out = Vec::new();
        let mut s = s;
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    fn body(chunks: &[&'static [u8]]) -> impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static {
        stream::iter(chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn slice_skips_takes_and_refuses_short_bodies() {
        let b = || body(&[b"abc", b"", b"defg", b"hij"]);
        assert_eq!(collect(slice(b(), 0, 10)).await.unwrap(), b"abcdefghij");
        assert_eq!(collect(slice(b(), 2, 3)).await.unwrap(), b"cde");
        assert_eq!(collect(slice(b(), 7, 3)).await.unwrap(), b"hij");
        assert_eq!(collect(slice(b(), 3, 4)).await.unwrap(), b"defg");
        let short = collect(slice(b(), 5, 10)).await.unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn errors_map_to_registry_statuses() {
        let refused = |code: u16| {
            let e = status_error(StatusCode::from_u16(code).unwrap(), "LFS batch request", "x");
            e.get_ref().and_then(|i| i.downcast_ref::<Refused>()).map(|r| r.status)
        };
        assert_eq!(refused(401), Some(503));
        assert_eq!(refused(403), Some(503));
        assert_eq!(refused(404), Some(503));
        assert_eq!(refused(413), Some(413));
        assert_eq!(refused(422), Some(502));
        assert_eq!(refused(429), Some(429));
        assert_eq!(refused(507), Some(507));
        assert_eq!(refused(400), Some(502));
        // other 5xx: unavailable, retried later
        assert_eq!(refused(503), None);
        assert!(super::super::is_unavailable(&status_error(
            StatusCode::BAD_GATEWAY,
            "x",
            ""
        )));
        assert!(transient(StatusCode::TOO_MANY_REQUESTS) && transient(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!transient(StatusCode::INSUFFICIENT_STORAGE) && !transient(StatusCode::UNAUTHORIZED));
    }

    #[test]
    fn cached_actions_expire_early() {
        let a = |expires_in: Option<i64>, age: u64| Action {
            href: "http://x".into(),
            header: HashMap::new(),
            expires_in,
            fetched: Instant::now().checked_sub(Duration::from_secs(age)),
        };
        assert!(a(Some(900), 0).fresh());
        assert!(!a(Some(60), 31).fresh());
        assert!(!a(Some(0), 0).fresh());
        assert!(a(None, 0).fresh());
        assert!(!a(Some(3600), 280).fresh());
    }
}
