//! Storage: one small interface over the places regate keeps bytes. Keys are `/`-separated
//! relative paths built only by [`layout`], never from raw client input.
//!
//! Every write that makes something visible is atomic: [`Storage::put`] and [`BlobWriter::commit`]
//! either publish the whole object or nothing, so a crash at any moment leaves no half-written blob
//! where a reader could find it.

pub mod fs;
pub mod layout;
pub mod lfs;
pub mod memory;
pub mod object;

use bytes::Bytes;
use std::io;
use std::time::SystemTime;

pub use crate::types::ByteStream;

#[derive(Debug, Clone, Copy)]
pub struct ObjMeta {
    pub size: u64,
    pub modified: Option<SystemTime>,
}

mod page;

pub(crate) use page::Smallest;
pub use page::{Entry, EntryRef, Keep, Page, Sorted};

/// See [`Storage::marker_stamp`].
#[derive(Debug)]
pub struct MarkerStamp(Option<fs::Stamp>);

/// The configured backend. An enum rather than a trait object: the set is closed, calls stay
/// static, and async methods need no boxing.
pub enum Storage {
    Fs(fs::FsStore),
    Memory(memory::MemStore),
    Object(object::ObjectStore),
    Lfs(lfs::LfsStore),
}

/// The backend could not be reached or kept failing after its retries: the request may succeed
/// later (the registry answers 503 `UNAVAILABLE`), and nothing was left half-written.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "storage unavailable: {}", self.0)
    }
}

impl std::error::Error for Unavailable {}

/// The backend refused the request for a reason the client may be told (a quota, a size limit,
/// rate limiting, credentials the operator must fix): the registry answers `status` with
/// `message`, and nothing was left half-written.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "storage refused the request ({}): {}", self.status, self.message)
    }
}

impl std::error::Error for Refused {}

/// Whether a storage error means the disk (or the user's quota on it) is full: `ENOSPC`,
/// `EDQUOT`, or the readiness check finding no room.
pub fn is_full(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
        || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.get_ref()
            .and_then(|i| i.downcast_ref::<io::Error>())
            .is_some_and(is_full)
}

/// Whether the storage was last found full: set by a write refused for lack of space, and set
/// or cleared by every readiness check (`/readyz`). Process-wide, for `/metrics`.
static LAST_SEEN_FULL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn last_seen_full() -> bool {
    LAST_SEEN_FULL.load(std::sync::atomic::Ordering::Relaxed)
}

pub fn note_full(full: bool) {
    LAST_SEEN_FULL.store(full, std::sync::atomic::Ordering::Relaxed);
}

/// Whether a storage error means "try again later" rather than a fault of this server.
pub fn is_unavailable(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut || e.get_ref().is_some_and(|i| i.is::<Unavailable>())
}

impl Storage {
    pub async fn stat(&self, key: &str) -> io::Result<Option<ObjMeta>> {
        match self {
            Storage::Fs(s) => s.stat(key).await,
            Storage::Memory(s) => Ok(s.stat(key)),
            Storage::Object(s) => s.stat(key).await,
            Storage::Lfs(s) => s.stat(key).await,
        }
    }

    /// Streams `key`, or the byte range `[start, end)` of it.
    pub async fn get(&self, key: &str, range: Option<(u64, u64)>) -> io::Result<Option<(ObjMeta, ByteStream)>> {
        match self {
            Storage::Fs(s) => s.get(key, range).await,
            Storage::Memory(s) => Ok(s.get(key, range)),
            Storage::Object(s) => s.get(key, range).await,
            Storage::Lfs(s) => s.get(key, range).await,
        }
    }

    /// Reads a small object whole; objects above `limit` bytes are an error.
    pub async fn read(&self, key: &str, limit: u64) -> io::Result<Option<Bytes>> {
        match self {
            Storage::Fs(s) => s.read(key, limit).await,
            Storage::Memory(s) => s.read(key, limit),
            Storage::Object(s) => s.read(key, limit).await,
            Storage::Lfs(s) => s.read(key, limit).await,
        }
    }

    /// Writes a small object atomically (replacing any previous one).
    pub async fn put(&self, key: &str, data: Bytes) -> io::Result<()> {
        match self {
            Storage::Fs(s) => s.put(key, data).await,
            Storage::Memory(s) => {
                s.put(key, data);
                Ok(())
            }
            Storage::Object(s) => s.put(key, data).await,
            Storage::Lfs(s) => s.put(key, data).await,
        }
    }

    /// [`Self::put`] without waiting for the disk (fs with `fsync`): for objects whose loss in a
    /// crash is harmless because a reader checks them against something durable (an upload
    /// chunk's hash sidecar: without it the chunk is hashed again).
    pub async fn put_unsynced(&self, key: &str, data: Bytes) -> io::Result<()> {
        match self {
            Storage::Fs(s) => s.put_with(key, data, false).await,
            other => other.put(key, data).await,
        }
    }

    /// What the markers of one run share ([`Self::put_marker`]): on local disk an empty file
    /// made now, removed when the stamp is dropped; elsewhere nothing.
    pub fn marker_stamp(&self) -> io::Result<MarkerStamp> {
        Ok(MarkerStamp(match self {
            Storage::Fs(s) => Some(s.stamp()?),
            _ => None,
        }))
    }

    /// An empty object at `key` whose time is the stamp's (local disk: a hard link to it) or
    /// the write's (elsewhere), not synced: for markers whose loss in a crash is harmless.
    pub async fn put_marker(&self, key: &str, stamp: &MarkerStamp) -> io::Result<()> {
        match (self, &stamp.0) {
            (Storage::Fs(s), Some(stamp)) => s.link_marker(key, stamp).await,
            _ => self.put_unsynced(key, Bytes::new()).await,
        }
    }

    /// A streaming writer whose object appears at `key` only on [`BlobWriter::commit`].
    pub async fn writer(&self, key: &str) -> io::Result<BlobWriter> {
        match self {
            Storage::Fs(s) => Ok(BlobWriter::Fs(s.writer(key).await?)),
            Storage::Memory(s) => Ok(BlobWriter::Memory(s.writer(key))),
            Storage::Object(s) => Ok(BlobWriter::Object(s.writer(key).await?)),
            Storage::Lfs(s) => s.writer(key).await,
        }
    }

    /// Whether an upload can keep its bytes in one file appended chunk by chunk
    /// ([`Self::appender`]); object stores keep one object per chunk instead.
    pub fn can_append(&self) -> bool {
        matches!(self, Storage::Fs(_))
    }

    /// Opens `key` for appending, locked (see [`fs::FsStore::appender`]).
    pub async fn appender(&self, key: &str) -> io::Result<fs::FsAppender> {
        match self {
            Storage::Fs(s) => s.appender(key).await,
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this storage backend cannot append",
            )),
        }
    }

    /// Moves an object; the destination appears whole or not at all.
    pub async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        match self {
            Storage::Fs(s) => s.rename(from, to).await,
            Storage::Memory(s) => s.rename(from, to),
            Storage::Object(s) => s.rename(from, to).await,
            Storage::Lfs(s) => s.rename(from, to).await,
        }
    }

    /// Deletes one object; a missing object is not an error.
    pub async fn delete(&self, key: &str) -> io::Result<()> {
        match self {
            Storage::Fs(s) => s.delete(key).await,
            Storage::Memory(s) => {
                s.delete(key);
                Ok(())
            }
            Storage::Object(s) => s.delete(key).await,
            Storage::Lfs(s) => s.delete(key).await,
        }
    }

    /// Deletes everything under `prefix/`.
    pub async fn delete_all(&self, prefix: &str) -> io::Result<()> {
        match self {
            Storage::Fs(s) => s.delete_all(prefix).await,
            Storage::Memory(s) => {
                s.delete_all(prefix);
                Ok(())
            }
            Storage::Object(s) => s.delete_all(prefix).await,
            Storage::Lfs(s) => s.delete_all(prefix).await,
        }
    }

    /// Removes the directory `prefix` if nothing is left in it (fs; object stores have no
    /// directories), so a delete leaves no empty directories behind, as distribution's does not.
    pub async fn prune(&self, prefix: &str) -> io::Result<()> {
        match self {
            Storage::Fs(s) => s.prune(prefix).await,
            Storage::Lfs(s) => s.prune(prefix).await,
            Storage::Memory(_) | Storage::Object(_) => Ok(()),
        }
    }

    /// Immediate children of `prefix/`, sorted by name; empty when the prefix does not exist.
    pub async fn list(&self, prefix: &str) -> io::Result<Vec<Entry>> {
        match self {
            Storage::Fs(s) => s.list(prefix).await,
            Storage::Memory(s) => Ok(s.list(prefix)),
            Storage::Object(s) => s.list(prefix).await,
            Storage::Lfs(s) => s.list(prefix).await,
        }
    }

    /// One page of the immediate children of `prefix/`: those named after `after` (exclusive;
    /// every child when `None`) that `keep` accepts, the `limit` smallest of them in name order,
    /// and whether more follow. Memory is bounded by `limit`, not by the directory's size: the
    /// backend reads the directory once (local disk: in one blocking call; object storage:
    /// starting after `after` where the service can) and keeps the `limit` + 1 smallest names.
    pub async fn list_after(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        keep: Keep,
    ) -> io::Result<(Page, bool)> {
        match self {
            Storage::Fs(s) => s.list_after(prefix, after, limit, keep).await,
            Storage::Memory(s) => {
                let mut page = Smallest::new(after, limit);
                for e in s.list(prefix) {
                    if page.wants(&e.name) && keep(e.view()) {
                        page.insert(e);
                    }
                }
                Ok(page.finish())
            }
            Storage::Object(s) => s.list_after(prefix, after, limit, keep).await,
            Storage::Lfs(s) => s.list_after(prefix, after, limit, keep).await,
        }
    }

    /// Marks an object as used now (its modification time), so garbage collection's grace period
    /// protects a blob that a new manifest or upload just referenced.
    pub async fn touch(&self, key: &str) -> io::Result<()> {
        match self {
            Storage::Fs(s) => s.touch(key).await,
            Storage::Memory(s) => {
                s.touch(key);
                Ok(())
            }
            Storage::Object(s) => s.touch(key).await,
            Storage::Lfs(s) => s.touch(key).await,
        }
    }

    /// Whether the backend is reachable and writable enough to serve (for `/readyz`).
    pub async fn ready(&self) -> io::Result<()> {
        match self {
            Storage::Fs(s) => s.ready().await,
            Storage::Memory(_) => Ok(()),
            Storage::Object(s) => s.ready().await,
            Storage::Lfs(s) => s.ready().await,
        }
    }

    /// A short-lived URL from which a client can GET `key` directly (object storage only).
    pub async fn presign_get(&self, key: &str, ttl: std::time::Duration) -> io::Result<Option<String>> {
        match self {
            Storage::Object(s) => s.presign_get(key, ttl).await,
            Storage::Lfs(s) => s.presign_get(key, ttl).await,
            Storage::Fs(_) | Storage::Memory(_) => Ok(None),
        }
    }
}

pub enum BlobWriter {
    Fs(fs::FsWriter),
    Memory(memory::MemWriter),
    Object(object::ObjectWriter),
    Lfs(lfs::LfsWriter),
}

impl BlobWriter {
    pub async fn write(&mut self, data: Bytes) -> io::Result<()> {
        match self {
            BlobWriter::Fs(w) => w.write(data).await,
            BlobWriter::Memory(w) => {
                w.write(data);
                Ok(())
            }
            BlobWriter::Object(w) => w.write(data).await,
            BlobWriter::Lfs(w) => w.write(data).await,
        }
    }
    pub fn written(&self) -> u64 {
        match self {
            BlobWriter::Fs(w) => w.written(),
            BlobWriter::Memory(w) => w.written(),
            BlobWriter::Object(w) => w.written(),
            BlobWriter::Lfs(w) => w.written(),
        }
    }
    pub async fn commit(self) -> io::Result<()> {
        match self {
            BlobWriter::Fs(w) => w.commit().await,
            BlobWriter::Memory(w) => {
                w.commit();
                Ok(())
            }
            BlobWriter::Object(w) => w.commit().await,
            BlobWriter::Lfs(w) => w.commit().await,
        }
    }
    pub async fn abort(self) {
        match self {
            BlobWriter::Fs(w) => w.abort().await,
            BlobWriter::Memory(_) => {}
            BlobWriter::Object(w) => w.abort().await,
            BlobWriter::Lfs(w) => w.abort().await,
        }
    }
}

/// Splits a `[start, end)` range out of `len` bytes, clamped.
pub(crate) fn clamp_range(range: Option<(u64, u64)>, len: u64) -> (u64, u64) {
    match range {
        Some((s, e)) => (s.min(len), e.min(len).max(s.min(len))),
        None => (0, len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &Page) -> Vec<&str> {
        v.iter().map(|e| e.name).collect()
    }

    #[tokio::test]
    async fn list_after_on_memory_skips_what_keep_refuses() {
        let s = Storage::Memory(memory::MemStore::default());
        for k in ["d/t1/x", "d/t2/x", "d/file", "d/t3/x", "d/_skip/x"] {
            s.put(k, Bytes::from_static(b"1")).await.unwrap();
        }
        let dirs: Keep = |e| e.is_dir && !e.name.starts_with('_');
        let (got, more) = s.list_after("d", Some("t1"), 1, dirs).await.unwrap();
        assert_eq!((names(&got), more), (vec!["t2"], true));
        let (got, more) = s.list_after("d", Some("t2"), 1, dirs).await.unwrap();
        assert_eq!((names(&got), more), (vec!["t3"], false));
        let (got, more) = s.list_after("nothing", None, 5, dirs).await.unwrap();
        assert_eq!((got.len(), more), (0, false));
    }
}
