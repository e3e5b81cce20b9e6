//! Object storage backends (S3 API, Aliyun OSS, Tencent COS) on Apache OpenDAL.
//!
//! Keys are the same as on disk (distribution's layout) under an optional `root` prefix of the
//! bucket, so a bucket that `registry:2` filled is served as is. Every request is bounded by a
//! timeout and transient failures (503 SlowDown, timeouts, resets) are retried a few times with
//! exponential backoff and jitter; what still fails surfaces as [`super::Unavailable`], which the
//! registry answers with 503.
//!
//! Visibility is atomic: a streaming [`ObjectWriter`] becomes an object only when its single PUT
//! or its multipart upload completes on [`ObjectWriter::commit`]; an aborted writer aborts its
//! multipart upload. A crash in between leaves an incomplete multipart upload that no reader can
//! see (a bucket lifecycle rule removes those; see README).

use super::{clamp_range, ByteStream, Entry, ObjMeta, Unavailable};
use bytes::Bytes;
use futures_util::StreamExt;
use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::{ErrorKind, Operator};
use std::io;
use std::time::{Duration, SystemTime};

/// CopyObject (and UploadPartCopy) refuse sources above 5 GiB on S3, OSS and COS.
const MAX_SERVER_COPY: u64 = 5 << 30;
/// Blobs up to this size are touched by rewriting them; larger ones get a marker object.
const TOUCH_REWRITE_MAX: u64 = 1 << 20;
/// The marker's suffix: `<key>.touched` holds the last time `<key>` was referenced again.
const TOUCH_SUFFIX: &str = ".touched";
/// The smallest and largest part size every provider accepts (S3 and OSS: ≥ 5 MiB / 100 KB
/// except the last part; COS ≥ 1 MB; all ≤ 5 GiB).
pub const MIN_PART_SIZE: u64 = 5 << 20;
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// 16 MiB parts: 10,000 of them hold 156 GiB, well above the 50 GiB that must work.
pub const DEFAULT_PART_SIZE: u64 = 16 << 20;

/// How requests are retried and bounded; the defaults suit production, tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub retries: usize,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Bound on a whole non-streaming request (stat, list, delete, copy...).
    pub timeout: Duration,
    /// Bound on one read or write step of a stream (one part upload, one body chunk).
    pub io_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            retries: 4,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
            io_timeout: Duration::from_secs(120),
        }
    }
}

pub struct ObjectStore {
    op: Operator,
    kind: &'static str,
    part_size: usize,
}

fn io_err(e: opendal::Error) -> io::Error {
    match e.kind() {
        ErrorKind::NotFound => io::Error::new(io::ErrorKind::NotFound, e.to_string()),
        _ => io::Error::other(Unavailable(e.to_string())),
    }
}

impl ObjectStore {
    /// Wraps a configured OpenDAL service with the retry and timeout layers.
    pub fn new<B: opendal::Builder>(
        kind: &'static str,
        builder: B,
        part_size: u64,
        policy: Policy,
    ) -> Result<ObjectStore, String> {
        let part_size = part_size.clamp(MIN_PART_SIZE, MAX_PART_SIZE);
        let op = Operator::new(builder)
            .map_err(|e| e.to_string())?
            // the timeout sits inside the retry so that a hung attempt is retried too
            .layer(
                TimeoutLayer::new()
                    .with_timeout(policy.timeout)
                    .with_io_timeout(policy.io_timeout),
            )
            .layer(
                RetryLayer::new()
                    .with_jitter()
                    .with_factor(2.0)
                    .with_min_delay(policy.min_backoff)
                    .with_max_delay(policy.max_backoff)
                    .with_max_times(policy.retries),
            )
            .finish();
        Ok(ObjectStore {
            op,
            kind,
            part_size: usize::try_from(part_size).unwrap_or(usize::MAX),
        })
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn part_size(&self) -> usize {
        self.part_size
    }

    async fn head(&self, key: &str) -> io::Result<Option<ObjMeta>> {
        match self.op.stat(key).await {
            Ok(m) => Ok(Some(ObjMeta {
                size: m.content_length(),
                modified: m.last_modified().map(SystemTime::from),
            })),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(e)),
        }
    }

    pub async fn stat(&self, key: &str) -> io::Result<Option<ObjMeta>> {
        let Some(mut meta) = self.head(key).await? else {
            return Ok(None);
        };
        if meta.size > TOUCH_REWRITE_MAX && key.ends_with("/data") {
            if let Some(t) = self.head(&format!("{key}{TOUCH_SUFFIX}")).await? {
                meta.modified = meta.modified.max(t.modified);
            }
        }
        Ok(Some(meta))
    }

    pub async fn get(&self, key: &str, range: Option<(u64, u64)>) -> io::Result<Option<(ObjMeta, ByteStream)>> {
        let Some(meta) = self.stat(key).await? else {
            return Ok(None);
        };
        let (start, end) = clamp_range(range, meta.size);
        if start == end {
            return Ok(Some((meta, Box::pin(futures_util::stream::empty()))));
        }
        let reader = match self.op.reader(key).await {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let stream = reader.into_bytes_stream(start..end).await.map_err(io_err)?;
        Ok(Some((meta, Box::pin(stream))))
    }

    pub async fn read(&self, key: &str, limit: u64) -> io::Result<Option<Bytes>> {
        // only small metadata objects are read whole; the size check guards the rest
        let Some(meta) = self.head(key).await? else {
            return Ok(None);
        };
        if meta.size > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{key} is larger than {limit} bytes"),
            ));
        }
        match self.op.read(key).await {
            Ok(b) => Ok(Some(b.to_bytes())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(e)),
        }
    }

    pub async fn put(&self, key: &str, data: Bytes) -> io::Result<()> {
        self.op.write(key, data).await.map_err(io_err)?;
        Ok(())
    }

    pub async fn writer(&self, key: &str) -> io::Result<ObjectWriter> {
        // below one part a single PUT is sent at close; above, a multipart upload of fixed-size
        // parts, so memory stays at one part whatever the blob size
        let w = self.op.writer_with(key).chunk(self.part_size).await.map_err(io_err)?;
        Ok(ObjectWriter { w, written: 0 })
    }

    /// Copy then delete. Server-side copy where the providers allow it (≤ 5 GiB); larger
    /// objects are streamed through a multipart writer.
    pub async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let meta = self
            .head(from)
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{from} not found")))?;
        if meta.size <= MAX_SERVER_COPY {
            self.op.copy(from, to).await.map_err(io_err)?;
        } else {
            let reader = self.op.reader(from).await.map_err(io_err)?;
            let mut s = reader.into_bytes_stream(0..meta.size).await.map_err(io_err)?;
            let mut w = self.writer(to).await?;
            while let Some(c) = s.next().await {
                let res = match c {
                    Ok(c) => w.write(c).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = res {
                    w.abort().await;
                    return Err(e);
                }
            }
            w.commit().await?;
        }
        self.delete(from).await
    }

    pub async fn delete(&self, key: &str) -> io::Result<()> {
        self.op.delete(key).await.map_err(io_err)?;
        if key.ends_with("/data") {
            self.op.delete(&format!("{key}{TOUCH_SUFFIX}")).await.map_err(io_err)?;
        }
        Ok(())
    }

    pub async fn delete_all(&self, prefix: &str) -> io::Result<()> {
        if prefix.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "refusing to delete the whole bucket root",
            ));
        }
        self.op.remove_all(&format!("{prefix}/")).await.map_err(io_err)
    }

    pub async fn list(&self, prefix: &str) -> io::Result<Vec<Entry>> {
        let dir = if prefix.is_empty() {
            "/".to_owned()
        } else {
            format!("{prefix}/")
        };
        let entries = match self.op.list(&dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(e)),
        };
        let mut out: Vec<Entry> = entries
            .into_iter()
            .filter(|e| e.path() != dir && !e.name().is_empty() && e.name() != "/")
            .map(|e| {
                let is_dir = e.name().ends_with('/');
                Entry {
                    name: e.name().trim_end_matches('/').to_owned(),
                    is_dir,
                }
            })
            .filter(|e| e.is_dir || !e.name.ends_with(TOUCH_SUFFIX))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| a.name == b.name);
        Ok(out)
    }

    /// Buckets cannot change an object's time in place: small objects are written again, large
    /// ones get a `<key>.touched` marker whose time [`Self::stat`] reports.
    pub async fn touch(&self, key: &str) -> io::Result<()> {
        let meta = self
            .head(key)
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{key} not found")))?;
        if meta.size <= TOUCH_REWRITE_MAX {
            if let Some(b) = self.read(key, TOUCH_REWRITE_MAX).await? {
                self.put(key, b).await?;
            }
            return Ok(());
        }
        let now = crate::util::rfc3339(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
        self.put(&format!("{key}{TOUCH_SUFFIX}"), Bytes::from(now)).await
    }

    pub async fn ready(&self) -> io::Result<()> {
        self.op.check().await.map_err(io_err)
    }

    /// A presigned GET URL for `key`, valid for `ttl`; `None` when the service cannot presign.
    pub async fn presign_get(&self, key: &str, ttl: Duration) -> io::Result<Option<String>> {
        if !self.op.info().full_capability().presign_read {
            return Ok(None);
        }
        let req = self.op.presign_read(key, ttl).await.map_err(io_err)?;
        Ok(Some(req.uri().to_string()))
    }
}

pub struct ObjectWriter {
    w: opendal::Writer,
    written: u64,
}

impl ObjectWriter {
    pub async fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.written += data.len() as u64;
        self.w.write(data).await.map_err(io_err)
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub async fn commit(mut self) -> io::Result<()> {
        match self.w.close().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let _ = self.w.abort().await;
                Err(io_err(e))
            }
        }
    }

    pub async fn abort(mut self) {
        if let Err(e) = self.w.abort().await {
            tracing::warn!(error = %e, "cannot abort an object upload; a bucket lifecycle rule will remove its parts");
        }
    }
}
