//! Storage: one small interface over the places regate keeps bytes. Keys are `/`-separated
//! relative paths built only by [`layout`], never from raw client input.
//!
//! Every write that makes something visible is atomic: [`Storage::put`] and [`BlobWriter::commit`]
//! either publish the whole object or nothing, so a crash at any moment leaves no half-written blob
//! where a reader could find it.

pub mod fs;
pub mod layout;
pub mod memory;

use bytes::Bytes;
use futures_util::Stream;
use std::io;
use std::pin::Pin;
use std::time::SystemTime;

pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

#[derive(Debug, Clone, Copy)]
pub struct ObjMeta {
    pub size: u64,
    pub modified: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
}

/// The configured backend. An enum rather than a trait object: the set is closed, calls stay
/// static, and async methods need no boxing.
pub enum Storage {
    Fs(fs::FsStore),
    Memory(memory::MemStore),
}

impl Storage {
    pub fn name(&self) -> &'static str {
        match self {
            Storage::Fs(_) => "fs",
            Storage::Memory(_) => "memory",
        }
    }

    pub async fn stat(&self, key: &str) -> io::Result<Option<ObjMeta>> {
        match self {
            Storage::Fs(s) => s.stat(key).await,
            Storage::Memory(s) => Ok(s.stat(key)),
        }
    }

    /// Streams `key`, or the byte range `[start, end)` of it.
    pub async fn get(&self, key: &str, range: Option<(u64, u64)>) -> io::Result<Option<(ObjMeta, ByteStream)>> {
        match self {
            Storage::Fs(s) => s.get(key, range).await,
            Storage::Memory(s) => Ok(s.get(key, range)),
        }
    }

    /// Reads a small object whole; objects above `limit` bytes are an error.
    pub async fn read(&self, key: &str, limit: u64) -> io::Result<Option<Bytes>> {
        match self {
            Storage::Fs(s) => s.read(key, limit).await,
            Storage::Memory(s) => s.read(key, limit),
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
        }
    }

    /// A streaming writer whose object appears at `key` only on [`BlobWriter::commit`].
    pub async fn writer(&self, key: &str) -> io::Result<BlobWriter> {
        match self {
            Storage::Fs(s) => Ok(BlobWriter::Fs(s.writer(key).await?)),
            Storage::Memory(s) => Ok(BlobWriter::Memory(s.writer(key))),
        }
    }

    /// Moves an object; the destination appears whole or not at all.
    pub async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        match self {
            Storage::Fs(s) => s.rename(from, to).await,
            Storage::Memory(s) => s.rename(from, to),
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
        }
    }

    /// Immediate children of `prefix/`, sorted by name; empty when the prefix does not exist.
    pub async fn list(&self, prefix: &str) -> io::Result<Vec<Entry>> {
        match self {
            Storage::Fs(s) => s.list(prefix).await,
            Storage::Memory(s) => Ok(s.list(prefix)),
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
        }
    }

    /// Whether the backend is reachable and writable enough to serve (for `/readyz`).
    pub async fn ready(&self) -> io::Result<()> {
        match self {
            Storage::Fs(s) => s.ready().await,
            Storage::Memory(_) => Ok(()),
        }
    }
}

pub enum BlobWriter {
    Fs(fs::FsWriter),
    Memory(memory::MemWriter),
}

impl BlobWriter {
    pub async fn write(&mut self, data: Bytes) -> io::Result<()> {
        match self {
            BlobWriter::Fs(w) => w.write(data).await,
            BlobWriter::Memory(w) => {
                w.write(data);
                Ok(())
            }
        }
    }
    pub fn written(&self) -> u64 {
        match self {
            BlobWriter::Fs(w) => w.written(),
            BlobWriter::Memory(w) => w.written(),
        }
    }
    pub async fn commit(self) -> io::Result<()> {
        match self {
            BlobWriter::Fs(w) => w.commit().await,
            BlobWriter::Memory(w) => {
                w.commit();
                Ok(())
            }
        }
    }
    pub async fn abort(self) {
        match self {
            BlobWriter::Fs(w) => w.abort().await,
            BlobWriter::Memory(_) => {}
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
