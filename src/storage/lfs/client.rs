//! The Git LFS Batch API client under [`super::LfsStore`]: batch requests, the `basic`
//! transfer adapter's downloads and uploads (with `verify`), retries with backoff, and LFS
//! failures as the errors the registry answers with.

use super::*;

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Action {
    pub(super) href: String,
    #[serde(default)]
    pub(super) header: HashMap<String, String>,
    #[serde(default)]
    pub(super) expires_in: Option<i64>,
    #[serde(skip)]
    pub(super) fetched: Option<Instant>,
}

impl Action {
    /// Whether the action can still be used for a while (a cached one is dropped early).
    pub(super) fn fresh(&self) -> bool {
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

impl Inner {
    pub(super) async fn m_stat(&self, key: &str) -> io::Result<Option<ObjMeta>> {
        Box::pin(self.meta.stat(key)).await
    }

    pub(super) async fn size_of(&self, oid: &str) -> io::Result<Option<u64>> {
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

    pub(super) fn same_origin(&self, href: &str) -> bool {
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

    pub(super) async fn batch_request(&self, op: &str, oid: &str, size: u64) -> io::Result<reqwest::Response> {
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

    pub(super) async fn download_action(&self, oid: &str, size: u64, fresh: bool) -> io::Result<Option<Arc<Action>>> {
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
    pub(super) async fn download(&self, oid: &str, size: u64, (s, e): (u64, u64)) -> io::Result<Option<ByteStream>> {
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
    pub(super) async fn publish(&self, oid: &str, size: u64, src: Source<'_>) -> io::Result<()> {
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

pub(super) fn transient(st: StatusCode) -> bool {
    st == StatusCode::TOO_MANY_REQUESTS
        || (st.is_server_error() && st != StatusCode::NOT_IMPLEMENTED && st != StatusCode::INSUFFICIENT_STORAGE)
}

pub(super) fn retry_after(r: &reqwest::Response) -> Option<Duration> {
    let v = r.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The `message` of an LFS error body (logged, never shown to registry clients).
pub(super) async fn message_of(r: reqwest::Response) -> String {
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
pub(super) fn status_error(st: StatusCode, what: &str, server_says: &str) -> io::Error {
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
pub(super) fn slice<S>(body: S, skip: u64, take: u64) -> ByteStream
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
