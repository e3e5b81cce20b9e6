//! Writing to local disk: [`FsWriter`] streams a blob into a temporary file on a blocking
//! thread and renames it into place on commit; [`FsAppender`] appends an upload's chunks to one
//! file under a lock; writeback is started early when blobs are synced.

use super::*;

/// An empty file in the store's temporary directory whose inode every marker of one run shares
/// (see [`FsStore::link_marker`]); removed when dropped (a crash leaves it to the day-old sweep
/// of [`FsStore::open`]).
#[derive(Debug)]
pub struct Stamp(pub(super) PathBuf);

impl Drop for Stamp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl FsStore {
    /// A new [`Stamp`], its time now.
    pub fn stamp(&self) -> io::Result<Stamp> {
        let path = self.tmp.join(format!("{}.stamp", uuid::Uuid::new_v4()));
        std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        Ok(Stamp(path))
    }

    /// An empty marker at `key` that is a hard link to `stamp`: made in one call, with no inode
    /// of its own to allocate (ext4 searches its inode bitmap past recently deleted inodes for
    /// each new one: 70 % of a collection's time in the profile, when it wrote a file per
    /// candidate). A marker already there (a crashed run's) is replaced, so its time is this
    /// run's.
    pub async fn link_marker(&self, key: &str, stamp: &Stamp) -> io::Result<()> {
        let _forget = Forget(self, key);
        let dest = self.path(key);
        let from = stamp.0.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let mut tries = 0;
            loop {
                match std::fs::hard_link(&from, &dest) {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 8 => {
                        match std::fs::remove_file(&dest) {
                            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                            _ => {}
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 8 && from.exists() => {
                        if let Some(dir) = dest.parent() {
                            std::fs::create_dir_all(dir)?;
                        }
                    }
                    r => return r,
                }
                tries += 1;
            }
        })
        .await
        .map_err(io::Error::other)?
    }
    pub async fn writer(&self, key: &str) -> io::Result<FsWriter> {
        let tmp = self.tmp.join(uuid::Uuid::new_v4().to_string());
        let dest = self.path(key);
        let fsync = self.fsync;
        let t = tmp.clone();
        let file =
            tokio::task::spawn_blocking(move || std::fs::OpenOptions::new().write(true).create_new(true).open(&t))
                .await
                .map_err(io::Error::other)??;
        let (tx, mut rx) = mpsc::channel::<Bytes>(4);
        let thread = tokio::task::spawn_blocking(move || -> io::Result<()> {
            let mut file = file;
            drain(&mut file, &mut rx, 0, fsync)?;
            if fsync {
                file.sync_data()?;
            }
            Ok(())
        });
        Ok(FsWriter {
            feed: Feed::new(tx),
            thread,
            tmp,
            dest,
            fsync,
        })
    }

    /// Opens `key` (creating it, but not its directory) and takes an exclusive lock on it, held
    /// until the appender is released or aborted, so two requests never write one upload at once
    /// (the second waits). `NotFound` when the file was renamed or deleted while this waited.
    pub async fn appender(&self, key: &str) -> io::Result<FsAppender> {
        let path = self.path(key);
        let (file, len) = tokio::task::spawn_blocking(move || -> io::Result<(std::fs::File, u64)> {
            use std::os::unix::fs::MetadataExt as _;
            // the directory is not created: an upload whose directory is gone was cancelled or
            // finished, and must not come back to life
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)?;
            lock_exclusive(&f)?;
            // while this waited for the lock, the file may have been renamed into place as a
            // finished blob or deleted with its upload: then it is no longer this upload's
            let m = f.metadata()?;
            match std::fs::metadata(&path) {
                Ok(p) if p.ino() == m.ino() && p.dev() == m.dev() => Ok((f, m.len())),
                _ => Err(io::Error::new(io::ErrorKind::NotFound, "the upload is gone")),
            }
        })
        .await
        .map_err(io::Error::other)??;
        Ok(FsAppender {
            feed: Feed::closed(),
            thread: None,
            file: Some(file),
            len,
            at: len,
        })
    }
}

/// With `fsync`, writeback of a blob being written is started every this many bytes.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Asks the kernel to start writing `[offset, offset+len)` of `f` to disk without waiting
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`); durability still comes from the `fdatasync` at the
/// end. A no-op where the call does not exist.
#[cfg(target_os = "linux")]
fn start_writeback(f: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor belongs to `f`, which outlives the call; the call only reads its
    // integer arguments and reports errors through its return value, which is advisory here.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Waits for an exclusive `flock` on `f`; it is released when `f` is closed.
fn lock_exclusive(f: &std::fs::File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: the descriptor belongs to `f`, which outlives the call; flock takes only
        // integers and reports through its return value and errno.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_f: &std::fs::File, _offset: u64, _len: u64) {}

/// The writer threads' loop: writes what arrives on `rx` to `file`, whose position is `at`, and
/// with `writeback` starts writing back every [`WRITEBACK_EVERY`] bytes, so a final flush waits
/// for the last few MiB instead of everything.
fn drain(file: &mut std::fs::File, rx: &mut mpsc::Receiver<Bytes>, at: u64, writeback: bool) -> io::Result<()> {
    let (mut written, mut flushed) = (at, at);
    while let Some(b) = rx.blocking_recv() {
        file.write_all(&b)?;
        written += b.len() as u64;
        if writeback && written - flushed >= WRITEBACK_EVERY {
            start_writeback(file, flushed, written - flushed);
            flushed = written;
        }
    }
    Ok(())
}

/// Bytes on their way to a writer thread, gathered into [`WRITE_CHUNK`] buffers so the thread
/// makes few large writes.
struct Feed {
    tx: Option<mpsc::Sender<Bytes>>,
    buf: Vec<u8>,
    written: u64,
}

impl Feed {
    fn new(tx: mpsc::Sender<Bytes>) -> Self {
        Feed {
            tx: Some(tx),
            buf: Vec::with_capacity(WRITE_CHUNK),
            written: 0,
        }
    }

    fn closed() -> Self {
        Feed {
            tx: None,
            buf: Vec::new(),
            written: 0,
        }
    }

    /// False when the thread has stopped (its result says why).
    async fn write(&mut self, data: Bytes) -> bool {
        self.written += data.len() as u64;
        if self.buf.is_empty() && data.len() >= WRITE_CHUNK {
            return self.send(data).await;
        }
        self.buf.extend_from_slice(&data);
        if self.buf.len() >= WRITE_CHUNK {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(WRITE_CHUNK));
            return self.send(Bytes::from(full)).await;
        }
        true
    }

    /// Sends what is buffered and closes the channel, so the thread ends; false as for `write`.
    async fn finish(&mut self) -> bool {
        let mut ok = true;
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            ok = self.send(Bytes::from(rest)).await;
        }
        self.tx = None;
        ok
    }

    async fn send(&mut self, b: Bytes) -> bool {
        let Some(tx) = &self.tx else { return false };
        if tx.send(b).await.is_err() {
            self.tx = None;
            return false;
        }
        true
    }
}

/// Streams into a temporary file on a blocking thread (so network reads and disk writes overlap)
/// and renames it into place on commit.
pub struct FsWriter {
    feed: Feed,
    thread: tokio::task::JoinHandle<io::Result<()>>,
    tmp: PathBuf,
    dest: PathBuf,
    fsync: bool,
}

impl FsWriter {
    pub async fn write(&mut self, data: Bytes) -> io::Result<()> {
        if self.feed.write(data).await {
            Ok(())
        } else {
            Err(self.stopped().await)
        }
    }

    /// Why the writer thread stopped early.
    async fn stopped(&mut self) -> io::Error {
        let thread = std::mem::replace(&mut self.thread, tokio::spawn(async { Ok(()) }));
        match thread.await {
            Ok(Err(e)) => e,
            Ok(Ok(())) => io::Error::other("writer thread stopped"),
            Err(e) => io::Error::other(e),
        }
    }

    pub fn written(&self) -> u64 {
        self.feed.written
    }

    pub async fn commit(mut self) -> io::Result<()> {
        if !self.feed.finish().await {
            let e = self.stopped().await;
            let _ = tokio::fs::remove_file(&self.tmp).await;
            return Err(e);
        }
        let res = (&mut self.thread).await.map_err(io::Error::other).and_then(|r| r);
        if let Err(e) = res {
            let _ = tokio::fs::remove_file(&self.tmp).await;
            return Err(e);
        }
        let (tmp, dest, fsync) = (self.tmp.clone(), self.dest.clone(), self.fsync);
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            if let Err(e) = rename_into_place(&tmp, &dest) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            if fsync {
                if let Some(dir) = dest.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
            }
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    pub async fn abort(mut self) {
        self.feed.tx = None;
        let _ = (&mut self.thread).await;
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

/// A locked file that chunks are appended to; see [`FsStore::appender`]. Nothing is flushed to
/// disk here: the file is flushed once, when the finished upload is renamed into place.
pub struct FsAppender {
    feed: Feed,
    thread: Option<tokio::task::JoinHandle<(std::fs::File, io::Result<()>)>>,
    /// The locked file while no writer thread has it.
    file: Option<std::fs::File>,
    /// The file's length when it was locked.
    len: u64,
    /// Where this chunk begins.
    at: u64,
}

impl FsAppender {
    /// Starts a chunk at `at`, cutting off whatever lies beyond it (bytes of a chunk that a
    /// crash interrupted). `at` beyond the end of the file is an error.
    pub async fn begin(&mut self, at: u64) -> io::Result<()> {
        let Some(mut file) = self.file.take() else {
            return Err(io::Error::other("a chunk is already being appended"));
        };
        if at > self.len {
            self.file = Some(file);
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the upload's file holds {} bytes, fewer than the {at} recorded",
                    self.len
                ),
            ));
        }
        let len = self.len;
        let file = tokio::task::spawn_blocking(move || -> io::Result<std::fs::File> {
            if len > at {
                file.set_len(at)?;
            }
            file.seek(SeekFrom::Start(at))?;
            Ok(file)
        })
        .await
        .map_err(io::Error::other)??;
        self.at = at;
        self.len = at;
        let (tx, mut rx) = mpsc::channel::<Bytes>(4);
        self.thread = Some(tokio::task::spawn_blocking(
            move || -> (std::fs::File, io::Result<()>) {
                let mut file = file;
                let r = drain(&mut file, &mut rx, at, true);
                (file, r)
            },
        ));
        self.feed = Feed::new(tx);
        Ok(())
    }

    pub async fn write(&mut self, data: Bytes) -> io::Result<()> {
        if self.feed.write(data).await {
            Ok(())
        } else {
            Err(self.stopped().await)
        }
    }

    /// Why the writer thread stopped early (a full disk must be told as such); the file comes
    /// back for [`Self::abort`] to cut.
    async fn stopped(&mut self) -> io::Error {
        self.feed.tx = None;
        let Some(thread) = self.thread.take() else {
            return io::Error::other("appender thread stopped");
        };
        match thread.await {
            Ok((file, r)) => {
                self.file = Some(file);
                r.err().unwrap_or_else(|| io::Error::other("appender thread stopped"))
            }
            Err(e) => io::Error::other(e),
        }
    }

    pub fn written(&self) -> u64 {
        self.feed.written
    }

    /// Waits until every byte is in the file, still holding the lock. On failure the file is
    /// cut back to where this chunk began.
    pub async fn complete(&mut self) -> io::Result<()> {
        let mut res = if self.feed.finish().await {
            Ok(())
        } else {
            Err(io::Error::other("appender thread stopped"))
        };
        if let Some(thread) = self.thread.take() {
            let (file, r) = thread.await.map_err(io::Error::other)?;
            self.file = Some(file);
            // the thread's own error says more than "stopped"
            res = r.and(res);
        }
        if res.is_err() {
            self.truncate().await;
        }
        res
    }

    /// Lets go of the file (and its lock), keeping what was written.
    pub async fn release(mut self) {
        self.feed.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.await;
        }
    }

    /// Drops the chunk: the file is cut back to where it began, as if it had never come.
    pub async fn abort(mut self) {
        self.truncate().await;
    }

    async fn truncate(&mut self) {
        self.feed.tx = None;
        if let Some(thread) = self.thread.take() {
            if let Ok((file, _)) = thread.await {
                self.file = Some(file);
            }
        }
        if let Some(file) = self.file.take() {
            let at = self.at;
            let _ = tokio::task::spawn_blocking(move || file.set_len(at)).await;
        }
    }
}
