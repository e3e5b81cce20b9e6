//! Uploads on a local disk: every chunk appended to one `data` file under a lock, the running
//! sha256 saved beside it (`regate-progress`), the finished file verified and renamed into place.

use super::*;

impl Registry {
    /// Locks the upload's `data` file (waiting for a request that is writing it) and reads its
    /// progress. `Err(len)` when the upload no longer holds `offset` bytes.
    async fn lock_upload(
        &self,
        name: &RepoName,
        id: &UploadId,
        offset: u64,
    ) -> Result<Result<(FsAppender, Progress), u64>, ApiError> {
        let a = match self.store.appender(&layout::upload_data(name, id)).await {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(unknown_upload(name, id)),
            Err(e) => return Err(e.into()),
        };
        let p = match self.progress(name, id).await {
            Ok(p) => p,
            Err(e) => {
                a.release().await;
                return Err(e);
            }
        };
        if p.len != offset {
            a.release().await;
            return Ok(Err(p.len));
        }
        Ok(Ok((a, p)))
    }

    /// Appends the body (after `first`) to the upload's `data` file at `offset`, hashing it
    /// onto the running sha256, and records the new length. A chunk counts only once it is
    /// whole: one cut short (a dropped connection, a crash) is cut off the file again.
    /// `Ok(Err(len))` when the upload no longer holds `offset` bytes.
    pub(super) async fn append_chunk(
        &self,
        name: &RepoName,
        id: &UploadId,
        offset: u64,
        first: Option<Bytes>,
        body: &mut BodyReader,
    ) -> Result<Result<u64, u64>, ApiError> {
        let next = match first {
            Some(c) => Some(c),
            None => body.chunk().await.map_err(body_error)?,
        };
        if next.is_none() {
            return Ok(Ok(0));
        }
        let (mut a, p) = match self.lock_upload(name, id, offset).await? {
            Ok(x) => x,
            Err(now) => return Ok(Err(now)),
        };
        if let Err(e) = a.begin(offset).await {
            a.release().await;
            return Err(damaged_upload(e));
        }
        let mut h = p.sha256;
        let pumped = pump(&mut a, next, body, |c| {
            if let Some(h) = &mut h {
                h.update(c);
            }
        })
        .await;
        if let Err(e) = pumped {
            a.abort().await;
            return Err(e);
        }
        let n = a.written();
        a.complete().await?;
        let saved = self.save_progress(name, id, offset + n, h.as_ref()).await;
        if let Err(e) = saved {
            a.abort().await;
            return Err(e.into());
        }
        a.release().await;
        Ok(Ok(n))
    }

    /// The upload's recorded progress. No record means no chunk was ever completed; a record a
    /// power loss damaged (it is not flushed) leaves the file's length as the best account, with
    /// the file hashed again at the end.
    pub(super) async fn progress(&self, name: &RepoName, id: &UploadId) -> Result<Progress, ApiError> {
        let Some(raw) = self.store.read(&layout::upload_progress(name, id), 1024).await? else {
            return Ok(Progress {
                len: 0,
                sha256: Some(ResumableSha256::new()),
            });
        };
        if let Some(p) = std::str::from_utf8(&raw).ok().and_then(Progress::parse) {
            return Ok(p);
        }
        let len = self
            .store
            .stat(&layout::upload_data(name, id))
            .await?
            .map(|m| m.size)
            .unwrap_or(0);
        Ok(Progress { len, sha256: None })
    }

    /// Records that the upload's first `len` bytes are whole chunks, with their sha256 when
    /// known. Not flushed to disk: after a process crash the page cache still holds it and the
    /// file; after a power loss the sha256 is not trusted (another boot) and the bytes are
    /// hashed again, so nothing unverified is ever published.
    async fn save_progress(
        &self,
        name: &RepoName,
        id: &UploadId,
        len: u64,
        h: Option<&ResumableSha256>,
    ) -> std::io::Result<()> {
        let state = h.map(|h| h.to_text()).unwrap_or_else(|| "-".into());
        let text = format!("{len} {} {state}", boot_id());
        self.store
            .put_unsynced(&layout::upload_progress(name, id), Bytes::from(text))
            .await
    }

    /// Checks an appended upload of `len` bytes against `d` and renames its file into place,
    /// holding the upload's lock throughout so no chunk can land in a published blob.
    /// `Ok(Err(now))` when the upload no longer holds `len` bytes.
    pub(super) async fn publish_appended(
        &self,
        name: &RepoName,
        id: &UploadId,
        len: u64,
        d: &Digest,
    ) -> Result<Result<(), u64>, ApiError> {
        let (mut a, p) = match self.lock_upload(name, id, len).await? {
            Ok(x) => x,
            Err(now) => return Ok(Err(now)),
        };
        // cut off the bytes of a chunk a crash interrupted, so the file is exactly the upload
        if let Err(e) = a.begin(len).await {
            a.release().await;
            return Err(damaged_upload(e));
        }
        if let Err(e) = a.complete().await {
            a.release().await;
            return Err(e.into());
        }
        let res = self.verify_and_place(name, id, len, p.sha256, d).await;
        a.release().await;
        res.map(Ok)
    }

    async fn verify_and_place(
        &self,
        name: &RepoName,
        id: &UploadId,
        len: u64,
        sha256: Option<ResumableSha256>,
        d: &Digest,
    ) -> Result<(), ApiError> {
        let data = layout::upload_data(name, id);
        // the running hash is a sha256; a blob named by another algorithm is hashed again,
        // streaming from the file
        let got = match sha256.filter(|_| d.algorithm() == Algorithm::Sha256) {
            Some(h) => Digest::from_sha256(h.finalize()),
            None => {
                let Some((_, mut s)) = self.store.get(&data, None).await? else {
                    return Err(unknown_upload(name, id));
                };
                let mut h = Hasher::new(d.algorithm());
                let mut n = 0u64;
                while let Some(c) = s.next().await {
                    let c = c?;
                    n += c.len() as u64;
                    h.update(&c);
                }
                if n != len {
                    return Err(damaged_upload(std::io::Error::other(format!(
                        "{n} bytes on disk, {len} recorded"
                    ))));
                }
                h.finish()
            }
        };
        if &got != d {
            return Err(digest_mismatch(d, &got));
        }
        if !self.blob_stored(d).await? {
            self.store.rename(&data, &layout::blob_data(d)).await?;
        }
        Ok(())
    }
}

/// An appended upload's recorded progress (`regate-progress`: `<len> <boot id> <sha256 state
/// or ->`).
pub(super) struct Progress {
    pub(super) len: u64,
    /// The sha256 of the first `len` bytes, when recorded in this boot of the machine.
    sha256: Option<ResumableSha256>,
}

impl Progress {
    fn parse(text: &str) -> Option<Progress> {
        let mut it = text.splitn(3, ' ');
        let len: u64 = it.next()?.parse().ok()?;
        let boot = it.next()?;
        let state = it.next()?;
        let sha256 = if boot == boot_id() {
            ResumableSha256::from_text(state).filter(|h| h.len() == len)
        } else {
            None
        };
        Some(Progress { len, sha256 })
    }
}

/// This boot of the machine (Linux's random boot id), or, where there is none, this process.
fn boot_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty() && !s.contains(' '))
            .unwrap_or_else(|| format!("process-{}", uuid::Uuid::new_v4()))
    })
}

impl Sink for FsAppender {
    async fn put(&mut self, c: Bytes) -> std::io::Result<()> {
        self.write(c).await
    }
}
