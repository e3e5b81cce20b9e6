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

#[derive(Debug, Clone, Deserialize)]
struct Action {
    href: String,
    #[serde(default)]
    header: HashMap<String, String>,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(skip)]
    fetched: Option<Instant>,
}

impl Action {
    /// Whether the action can still be used for a while (a cached one is dropped early).
    fn fresh(&self) -> bool {
        let Some(at) = self.fetched else { return false };
        let life = match self.expires_in {
            Some(s) if s > 0 => Duration::from_secs(s as u64),
            Some(_) => return false,
            None => Duration::from_secs(300),
        };
        at.elapsed() + Duration::from_secs(30) < life.min(Duration::from_secs(300))
    }
}

#[derive(Debug, Deserialize)]
struct BatchResponse {
    #[serde(default)]
    transfer: Option<String>,
    #[serde(default)]
    objects: Vec<BatchObject>,
}

#[derive(Debug, Deserialize)]
struct BatchObject {
    oid: String,
    #[serde(default)]
    actions: Option<Actions>,
    #[serde(default)]
    error: Option<ObjectError>,
}

#[derive(Debug, Default, Deserialize)]
struct Actions {
    #[serde(default)]
    upload: Option<Action>,
    #[serde(default)]
    download: Option<Action>,
    #[serde(default)]
    verify: Option<Action>,
}

#[derive(Debug, Deserialize)]
struct ObjectError {
    code: u16,
    #[serde(default)]
    message: String,
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
    ) -> io::Result<(Vec<Entry>, bool)> {
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

impl Inner {
    async fn m_stat(&self, key: &str) -> io::Result<Option<ObjMeta>> {
        Box::pin(self.meta.stat(key)).await
    }

    async fn size_of(&self, oid: &str) -> io::Result<Option<u64>> {
        if let Some(n) = self.sizes.get(oid) {
            return Ok(Some(n));
        }
        let Some(b) = Box::pin(self.meta.read(&record_key(oid), 4096)).await? else {
            return Ok(None);
        };
        let r: Record = serde_json::from_slice(&b)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("LFS record of {oid}: {e}")))?;
        self.sizes.insert(oid.to_owned(), r.size);
        Ok(Some(r.size))
    }

    fn same_origin(&self, href: &str) -> bool {
        reqwest::Url::parse(href).is_ok_and(|u| u.origin().ascii_serialization() == self.origin)
    }

    /// A request to an action's href with the action's headers; regate's own credentials are
    /// added only for hrefs on the LFS server itself that bring no Authorization of their own.
    fn to_href(&self, method: reqwest::Method, a: &Action) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, &a.href);
        let mut has_auth = false;
        for (k, v) in &a.header {
            has_auth |= k.eq_ignore_ascii_case("authorization");
            rb = rb.header(k.as_str(), v.as_str());
        }
        if let (false, Some(auth)) = (has_auth, &self.auth) {
            if self.same_origin(&a.href) {
                rb = rb.header(AUTHORIZATION, auth.clone());
            }
        }
        rb
    }

    /// Sends the request `make` builds, again (with backoff) while the failure is transient:
    /// connection errors, timeouts, 429 and 5xx other than 501 and 507. The last answer is
    /// returned whatever its status; a request that never got one is [`Unavailable`].
    async fn send<F, Fut>(&self, what: &str, mut make: F) -> io::Result<reqwest::Response>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = io::Result<reqwest::RequestBuilder>>,
    {
        let mut attempt = 0;
        loop {
            let res = make().await?.send().await;
            let wait = match &res {
                Ok(r) if transient(r.status()) => Some(retry_after(r)),
                Ok(_) => None,
                Err(e) if e.is_builder() => None,
                Err(_) => Some(None),
            };
            match (res, wait) {
                (_, Some(wait)) if attempt < self.retries => {
                    let backoff = Duration::from_millis(200 << attempt.min(6));
                    tokio::time::sleep(wait.unwrap_or(backoff).min(Duration::from_secs(10))).await;
                    attempt += 1;
                }
                (Ok(r), _) => return Ok(r),
                (Err(e), _) => {
                    let kind = if e.is_timeout() {
                        io::ErrorKind::TimedOut
                    } else {
                        io::ErrorKind::Other
                    };
                    let e = e.without_url();
                    tracing::warn!(error = %e, what, "LFS request failed");
                    return Err(io::Error::new(kind, Unavailable(format!("{what}: {e}"))));
                }
            }
        }
    }

    async fn batch_request(&self, op: &str, oid: &str, size: u64) -> io::Result<reqwest::Response> {
        let body = serde_json::to_vec(&serde_json::json!({
            "operation": op,
            "transfers": ["basic"],
            "objects": [{"oid": oid, "size": size}],
            "hash_algo": "sha256",
        }))
        .map_err(io::Error::other)?;
        let body = Bytes::from(body);
        self.send("LFS batch request", || {
            let body = body.clone();
            async move {
                let mut rb = self
                    .http
                    .post(&self.batch_url)
                    .timeout(self.timeout)
                    .header(CONTENT_TYPE, MEDIA)
                    .header(reqwest::header::ACCEPT, MEDIA)
                    .body(body);
                if let Some(a) = &self.auth {
                    rb = rb.header(AUTHORIZATION, a.clone());
                }
                Ok(rb)
            }
        })
        .await
    }

    /// One object through the batch endpoint; its per-object error is turned into an error too,
    /// except a 404 on download (`Ok(None)`: the server does not have it).
    async fn batch(&self, op: &str, oid: &str, size: u64) -> io::Result<Option<BatchObject>> {
        let r = self.batch_request(op, oid, size).await?;
        let st = r.status();
        if op == "download" && st == StatusCode::NOT_FOUND {
            // servers such as giftless answer a batch whose objects are all missing with a 404 of
            // the whole request; a wrong URL shows on uploads and in the readiness probe
            let msg = message_of(r).await;
            tracing::warn!(oid, message = %msg, "LFS server does not have a blob regate has a record of");
            return Ok(None);
        }
        if !st.is_success() {
            return Err(status_error(st, "LFS batch request", &message_of(r).await));
        }
        let resp: BatchResponse = r.json().await.map_err(|e| {
            io::Error::other(Refused {
                status: 502,
                message: format!(
                    "the LFS server answered the batch request with something that is not a batch answer: {e}"
                ),
            })
        })?;
        if resp.transfer.as_deref().is_some_and(|t| t != "basic") {
            return Err(io::Error::other(Refused {
                status: 502,
                message: "the LFS server chose a transfer adapter other than basic".into(),
            }));
        }
        let Some(obj) = resp.objects.into_iter().find(|o| o.oid == oid) else {
            return Err(io::Error::other(Refused {
                status: 502,
                message: "the LFS server's batch answer does not mention the object".into(),
            }));
        };
        if let Some(e) = &obj.error {
            if op == "download" && (e.code == 404 || e.code == 410) {
                tracing::warn!(oid, code = e.code, message = %e.message, "LFS server does not have a blob regate has a record of");
                return Ok(None);
            }
            let st = StatusCode::from_u16(e.code).unwrap_or(StatusCode::BAD_GATEWAY);
            return Err(status_error(st, "LFS object", &e.message));
        }
        Ok(Some(obj))
    }

    async fn download_action(&self, oid: &str, size: u64, fresh: bool) -> io::Result<Option<Arc<Action>>> {
        if !fresh {
            if let Some(a) = self.downloads.get(oid) {
                if a.fresh() {
                    return Ok(Some(a));
                }
            }
        }
        let Some(obj) = self.batch("download", oid, size).await? else {
            self.downloads.invalidate(oid);
            return Ok(None);
        };
        let Some(mut a) = obj.actions.and_then(|a| a.download) else {
            return Err(io::Error::other(Refused {
                status: 502,
                message: "the LFS server gave no download action for a stored object".into(),
            }));
        };
        a.fetched = Some(Instant::now());
        let a = Arc::new(a);
        self.downloads.insert(oid.to_owned(), a.clone());
        Ok(Some(a))
    }

    /// Streams bytes `[s, e)` of the object (`e > s`), by a Range request where the server
    /// honours it and by skipping otherwise. `None` when the server does not have it.
    async fn download(&self, oid: &str, size: u64, (s, e): (u64, u64)) -> io::Result<Option<ByteStream>> {
        for fresh in [false, true] {
            let Some(a) = self.download_action(oid, size, fresh).await? else {
                return Ok(None);
            };
            let a = &a;
            let r = self
                .send("LFS download", || async move {
                    let mut rb = self.to_href(reqwest::Method::GET, a);
                    if s > 0 || e < size {
                        rb = rb.header(RANGE, format!("bytes={s}-{}", e - 1));
                    }
                    Ok(rb)
                })
                .await?;
            let st = r.status();
            if st == StatusCode::PARTIAL_CONTENT {
                let starts = r
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if starts != Some(s) {
                    return Err(io::Error::other(Refused {
                        status: 502,
                        message: "the LFS server answered a different byte range than asked".into(),
                    }));
                }
                return Ok(Some(slice(r.bytes_stream(), 0, e - s)));
            }
            if st == StatusCode::OK {
                return Ok(Some(slice(r.bytes_stream(), s, e - s)));
            }
            let stale = matches!(st.as_u16(), 401 | 403 | 404 | 410);
            if stale && !fresh {
                // a cached href may have expired early or been revoked: ask the batch API again
                self.downloads.invalidate(oid);
                continue;
            }
            if st == StatusCode::NOT_FOUND || st == StatusCode::GONE {
                return Ok(None);
            }
            return Err(status_error(st, "LFS download", &message_of(r).await));
        }
        Ok(None)
    }

    /// Uploads the object to LFS (unless the server has it already) and then writes the record
    /// that makes the blob visible.
    async fn publish(&self, oid: &str, size: u64, src: Source<'_>) -> io::Result<()> {
        let lock = {
            let mut m = self.uploading.lock().unwrap_or_else(|e| e.into_inner());
            m.entry(oid.to_owned()).or_default().clone()
        };
        let guard = lock.lock().await;
        let res = self.publish_locked(oid, size, src).await;
        drop(guard);
        let mut m = self.uploading.lock().unwrap_or_else(|e| e.into_inner());
        // the map's reference and ours: nobody else is waiting
        if Arc::strong_count(&lock) == 2 {
            m.remove(oid);
        }
        res
    }

    async fn publish_locked(&self, oid: &str, size: u64, src: Source<'_>) -> io::Result<()> {
        if self.m_stat(&record_key(oid)).await?.is_some() {
            // stored already (perhaps by a concurrent push that held the lock): mark it used
            return Box::pin(self.meta.touch(&record_key(oid))).await;
        }
        if size > 0 || oid != EMPTY_OID {
            if let Some(obj) = self.batch("upload", oid, size).await? {
                let actions = obj.actions.unwrap_or_default();
                if let Some(up) = &actions.upload {
                    self.upload(up, size, &src).await?;
                }
                if let (Some(_), Some(v)) = (&actions.upload, &actions.verify) {
                    self.verify(v, oid, size).await?;
                }
            }
        }
        let rec = serde_json::to_vec(&Record {
            oid: oid.to_owned(),
            size,
        })
        .map_err(io::Error::other)?;
        Box::pin(self.meta.put(&record_key(oid), Bytes::from(rec))).await?;
        self.sizes.insert(oid.to_owned(), size);
        Ok(())
    }

    async fn upload(&self, a: &Action, size: u64, src: &Source<'_>) -> io::Result<()> {
        let r = self
            .send("LFS upload", || async move {
                let body = match src {
                    Source::Bytes(b) => reqwest::Body::from(b.clone()),
                    Source::Staged(key) => {
                        let Some((_, s)) = Box::pin(self.meta.get(key, None)).await? else {
                            return Err(io::Error::new(
                                io::ErrorKind::NotFound,
                                format!("staged blob {key} vanished"),
                            ));
                        };
                        reqwest::Body::wrap_stream(s)
                    }
                };
                Ok(self
                    .to_href(reqwest::Method::PUT, a)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, size)
                    .body(body))
            })
            .await?;
        let st = r.status();
        if st.is_success() {
            return Ok(());
        }
        Err(status_error(st, "LFS upload", &message_of(r).await))
    }

    async fn verify(&self, a: &Action, oid: &str, size: u64) -> io::Result<()> {
        let body = Bytes::from(
            serde_json::to_vec(&Record {
                oid: oid.to_owned(),
                size,
            })
            .map_err(io::Error::other)?,
        );
        let r = self
            .send("LFS verify", || {
                let body = body.clone();
                async move {
                    Ok(self
                        .to_href(reqwest::Method::POST, a)
                        .timeout(self.timeout)
                        .header(CONTENT_TYPE, MEDIA)
                        .header(reqwest::header::ACCEPT, MEDIA)
                        .body(body))
                }
            })
            .await?;
        let st = r.status();
        if st.is_success() {
            return Ok(());
        }
        if st == StatusCode::NOT_FOUND || st == StatusCode::UNPROCESSABLE_ENTITY {
            let msg = message_of(r).await;
            tracing::warn!(oid, status = st.as_u16(), message = %msg, "LFS verify failed");
            return Err(io::Error::other(Refused {
                status: 502,
                message: "the LFS server could not verify the uploaded object; the blob was not stored".into(),
            }));
        }
        Err(status_error(st, "LFS verify", &message_of(r).await))
    }
}

fn transient(st: StatusCode) -> bool {
    st == StatusCode::TOO_MANY_REQUESTS
        || (st.is_server_error() && st != StatusCode::NOT_IMPLEMENTED && st != StatusCode::INSUFFICIENT_STORAGE)
}

fn retry_after(r: &reqwest::Response) -> Option<Duration> {
    let v = r.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The `message` of an LFS error body (logged, never shown to registry clients).
async fn message_of(r: reqwest::Response) -> String {
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        message: Option<String>,
    }
    let Ok(b) = r.bytes().await else {
        return String::new();
    };
    match serde_json::from_slice::<Body>(&b) {
        Ok(Body { message: Some(m) }) => m,
        _ => String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned(),
    }
}

/// An LFS failure as the error the registry answers with: a status and a message that names
/// the cause without the server's details (those are logged).
fn status_error(st: StatusCode, what: &str, server_says: &str) -> io::Error {
    tracing::warn!(status = st.as_u16(), what, message = %server_says, "LFS server refused a request");
    let code = st.as_u16();
    let (status, message) = match code {
        401 | 403 => (
            503,
            format!("the LFS server refused regate's credentials (HTTP {code}); the operator must check storage.lfs.username and token"),
        ),
        404 => (
            503,
            "the LFS server has no such endpoint (HTTP 404); the operator must check storage.lfs.url".into(),
        ),
        413 => (413, "the LFS server refuses objects this large (HTTP 413)".into()),
        422 => (
            502,
            "the LFS server rejected the object as invalid (HTTP 422)".into(),
        ),
        429 => (
            429,
            "the LFS server is limiting regate's request rate (HTTP 429); retry later".into(),
        ),
        507 => (
            507,
            "the LFS storage quota is exhausted (HTTP 507): the blob was not stored; free LFS space or raise the quota".into(),
        ),
        _ if st.is_server_error() => {
            return io::Error::other(Unavailable(format!("{what}: LFS server answered HTTP {code}")));
        }
        _ => (502, format!("the LFS server answered HTTP {code} to a {what}")),
    };
    io::Error::other(Refused { status, message })
}

/// Bytes `[skip, skip + take)` of a response body, as a storage stream; a body that ends early is
/// an error, never a short blob.
fn slice<S>(body: S, skip: u64, take: u64) -> ByteStream
where
    S: Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
{
    struct St {
        body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
        skip: u64,
        left: u64,
    }
    let st = St {
        body: Box::pin(body),
        skip,
        left: take,
    };
    Box::pin(futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if st.left == 0 {
                return None;
            }
            match st.body.next().await {
                None => {
                    st.left = 0;
                    let e = io::Error::new(io::ErrorKind::UnexpectedEof, "the LFS download ended early");
                    return Some((Err(e), st));
                }
                Some(Err(e)) => {
                    st.left = 0;
                    let kind = if e.is_timeout() {
                        io::ErrorKind::TimedOut
                    } else {
                        io::ErrorKind::Other
                    };
                    return Some((Err(io::Error::new(kind, e.without_url())), st));
                }
                Some(Ok(mut b)) => {
                    if st.skip > 0 {
                        let n = st.skip.min(b.len() as u64);
                        b = b.slice(n as usize..);
                        st.skip -= n;
                    }
                    if b.is_empty() {
                        continue;
                    }
                    let n = st.left.min(b.len() as u64);
                    b.truncate(n as usize);
                    st.left -= n;
                    return Some((Ok(b), st));
                }
            }
        }
    }))
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
