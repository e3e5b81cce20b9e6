//! Local filesystem backend. Objects are plain files under `root`, in distribution's layout, so
//! a root written by `registry:2` is served as is. New objects are written to `root/.regate-tmp`
//! and renamed into place, which is atomic on one filesystem.

use super::{clamp_range, ByteStream, Entry, ObjMeta};
use bytes::Bytes;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

mod listing;
mod write;

use listing::{Forget, Listing, LISTINGS_BYTES};
pub use write::{FsAppender, FsWriter, Stamp};

const READ_CHUNK: usize = 1 << 20;
/// Buffers this large are handed to the writer thread at once.
const WRITE_CHUNK: usize = 1 << 20;
pub const TMP_DIR: &str = ".regate-tmp";

pub struct FsStore {
    root: PathBuf,
    tmp: PathBuf,
    fsync: bool,
    /// Directories read through [`Self::list_after`] (a repository's tags), kept sorted in
    /// memory with the `stat` they were read under; see [`Listing`].
    listings: moka::sync::Cache<String, Arc<Listing>>,
}

impl FsStore {
    /// Opens (creating when missing) a store at `root`, and clears temporary files that a crash
    /// left behind more than a day ago.
    pub fn open(root: &Path, fsync: bool) -> io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let tmp = root.join(TMP_DIR);
        std::fs::create_dir_all(&tmp)?;
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            let day = Duration::from_secs(86_400);
            for e in rd.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age > day);
                if old {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(Self {
            root: root.to_owned(),
            tmp,
            fsync,
            listings: moka::sync::Cache::builder()
                .max_capacity(LISTINGS_BYTES)
                .weigher(|_: &String, l: &Arc<Listing>| u32::try_from(l.entries.weight()).unwrap_or(u32::MAX))
                .build(),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        debug_assert!(!key.split('/').any(|s| s == ".." || s.is_empty()), "bad key {key}");
        self.root.join(key)
    }

    /// A `stat` is done inline: on a local disk it costs a microsecond, far less than a round
    /// trip through the blocking pool (the benchmark's manifest rows spent most of their time
    /// waking blocking-pool threads for exactly this).
    pub async fn stat(&self, key: &str) -> io::Result<Option<ObjMeta>> {
        match std::fs::metadata(self.path(key)) {
            Ok(m) if m.is_file() => Ok(Some(ObjMeta {
                size: m.len(),
                modified: m.modified().ok(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn get(&self, key: &str, range: Option<(u64, u64)>) -> io::Result<Option<(ObjMeta, ByteStream)>> {
        let path = self.path(key);
        let opened = tokio::task::spawn_blocking(move || -> io::Result<Option<(std::fs::File, std::fs::Metadata)>> {
            match std::fs::File::open(&path) {
                Ok(f) => {
                    let m = f.metadata()?;
                    if !m.is_file() {
                        return Ok(None);
                    }
                    Ok(Some((f, m)))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(io::Error::other)??;
        let Some((mut file, m)) = opened else {
            return Ok(None);
        };
        let meta = ObjMeta {
            size: m.len(),
            modified: m.modified().ok(),
        };
        let (start, end) = clamp_range(range, meta.size);
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(2);
        tokio::task::spawn_blocking(move || {
            if start > 0 {
                if let Err(e) = file.seek(SeekFrom::Start(start)) {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
            let mut left = end - start;
            while left > 0 {
                let n = (left as usize).min(READ_CHUNK);
                // read_to_end fills spare capacity without zeroing it first (a memset of every
                // byte served was 8 % of a TLS pull's CPU)
                let mut buf = Vec::with_capacity(n);
                let res = match (&mut file).take(n as u64).read_to_end(&mut buf) {
                    Ok(got) if got == n => Ok(Bytes::from(buf)),
                    Ok(_) => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank while it was read",
                    )),
                    Err(e) => Err(e),
                };
                let failed = res.is_err();
                if tx.blocking_send(res).is_err() || failed {
                    return;
                }
                left -= n as u64;
            }
        });
        Ok(Some((meta, receiver_stream(rx))))
    }

    /// Small objects (links, up to 64 KiB) are read inline, like [`Self::stat`]; larger ones in
    /// one trip to the blocking pool.
    pub async fn read(&self, key: &str, limit: u64) -> io::Result<Option<Bytes>> {
        let path = self.path(key);
        let key = key.to_owned();
        let read = move || -> io::Result<Option<Bytes>> {
            use std::io::Read as _;
            match std::fs::File::open(&path) {
                Ok(f) => {
                    let mut buf = Vec::new();
                    let n = f.take(limit + 1).read_to_end(&mut buf)?;
                    if n as u64 > limit {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{key} is larger than {limit} bytes"),
                        ));
                    }
                    Ok(Some(Bytes::from(buf)))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory => Ok(None),
                Err(e) => Err(e),
            }
        };
        if limit <= 64 * 1024 {
            read()
        } else {
            tokio::task::spawn_blocking(read).await.map_err(io::Error::other)?
        }
    }

    pub async fn put(&self, key: &str, data: Bytes) -> io::Result<()> {
        self.put_with(key, data, self.fsync).await
    }

    /// A small object in one trip to the blocking pool: written beside, flushed when `fsync`,
    /// renamed into place (and the directory entry flushed when `fsync`).
    pub async fn put_with(&self, key: &str, data: Bytes, fsync: bool) -> io::Result<()> {
        let _forget = Forget(self, key);
        let tmp_dir = self.tmp.clone();
        let dest = self.path(key);
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let write = |tmp: &Path| -> io::Result<()> {
                let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(tmp)?;
                f.write_all(&data)?;
                if fsync {
                    f.sync_data()?;
                }
                rename_into_place(tmp, &dest)?;
                if fsync {
                    if let Some(dir) = dest.parent() {
                        std::fs::File::open(dir)?.sync_all()?;
                    }
                }
                Ok(())
            };
            // a directory on the way that a concurrent prune (the collector, a delete) took
            // away at the wrong instant is made again by writing the object afresh
            let mut tries = 0;
            loop {
                let tmp = tmp_dir.join(uuid::Uuid::new_v4().to_string());
                let r = write(&tmp);
                if r.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                match r {
                    Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 3 => {
                        tries += 1;
                        tracing::debug!(key = %dest.display(), error = %e, "small object write raced a prune; writing again");
                        let _ = std::fs::create_dir_all(&tmp_dir);
                    }
                    r => return r,
                }
            }
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Moves an object; the destination appears whole or not at all. With `fsync`, the source's
    /// data is flushed first and the destination's directory after, so the new name never points
    /// at bytes a power loss could take back.
    pub async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let _forget = (Forget(self, from), Forget(self, to));
        let (from, to) = (self.path(from), self.path(to));
        let fsync = self.fsync;
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            if fsync {
                std::fs::File::open(&from)?.sync_data()?;
            }
            rename_into_place(&from, &to)?;
            if fsync {
                // the new name must survive a power loss before anything refers to it
                if let Some(dir) = to.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
            }
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    pub async fn delete(&self, key: &str) -> io::Result<()> {
        let _forget = Forget(self, key);
        match tokio::fs::remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes the directory `prefix` when it is empty (what a delete leaves behind); a
    /// directory that is not empty, or gone, is left as it is.
    pub async fn prune(&self, prefix: &str) -> io::Result<()> {
        let _forget = Forget(self, prefix);
        match tokio::fs::remove_dir(self.path(prefix)).await {
            Ok(()) => Ok(()),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::DirectoryNotEmpty
                    || e.raw_os_error() == Some(libc::ENOTEMPTY)
                    || e.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub async fn delete_all(&self, prefix: &str) -> io::Result<()> {
        let _forget = Forget(self, prefix);
        match tokio::fs::remove_dir_all(self.path(prefix)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn touch(&self, key: &str) -> io::Result<()> {
        let path = self.path(key);
        tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)?
                .set_modified(SystemTime::now())
        })
        .await
        .map_err(io::Error::other)?
    }

    /// The root is there, writable, and has room: at least [`FULL_BELOW`] bytes and an inode
    /// free for unprivileged writers (`StorageFull` otherwise).
    pub async fn ready(&self) -> io::Result<()> {
        let m = tokio::fs::metadata(&self.tmp).await?;
        if m.permissions().readonly() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "storage root is read-only",
            ));
        }
        let (free, inodes) = free_space(&self.tmp)?;
        let full = free < FULL_BELOW || inodes == Some(0);
        super::note_full(full);
        if full {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("storage is full: {free} bytes free"),
            ));
        }
        Ok(())
    }
}

/// Less room than this on the root's filesystem counts as full.
pub const FULL_BELOW: u64 = 1 << 20;

/// Bytes and inodes (`None` where the filesystem does not count them) free for unprivileged
/// writers on the filesystem holding `path`.
// the statvfs fields are u64 on 64-bit Linux, narrower elsewhere
#[allow(clippy::useless_conversion)]
fn free_space(path: &Path) -> io::Result<(u64, Option<u64>)> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct, which the call fills.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path that outlives the call, and `st` is a valid, writable
    // statvfs; the call reports errors through its return value and errno.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let free = u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize));
    let inodes = (st.f_files > 0).then_some(u64::from(st.f_favail));
    Ok((free, inodes))
}

/// Renames `tmp` to `dest`, creating `dest`'s directory. A prune of that (empty) directory
/// racing with this (a delete of the same revision, or the collector) is survived by creating
/// it again.
fn rename_into_place(tmp: &Path, dest: &Path) -> io::Result<()> {
    let mut tries = 0;
    loop {
        if let Some(dir) = dest.parent() {
            // a parent pruned between the levels create_dir_all makes is made again
            match std::fs::create_dir_all(dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 8 => {
                    tries += 1;
                    continue;
                }
                r => r?,
            }
        }
        match std::fs::rename(tmp, dest) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 8 && tmp.exists() => tries += 1,
            r => return r,
        }
    }
}

/// Turns a channel of chunks into a body stream.
pub(crate) fn receiver_stream(rx: mpsc::Receiver<io::Result<Bytes>>) -> ByteStream {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use listing::{DirStamp, LISTING_MAX_BYTES, RACY};
    use sha2::{Digest as _, Sha256};

    #[tokio::test]
    async fn listings_read_a_directory_in_one_call_and_pages_hold_only_the_page() {
        let d = tempfile::tempdir().unwrap();
        let s = FsStore::open(d.path(), false).unwrap();
        let mut tags: Vec<String> = (0..3000).map(|i| format!("v{i}")).collect();
        for t in &tags {
            std::fs::create_dir_all(d.path().join("r/tags").join(t).join("current")).unwrap();
        }
        std::fs::write(d.path().join("r/tags/file"), b"x").unwrap();
        std::fs::create_dir_all(d.path().join("r/tags").join(TMP_DIR)).unwrap();
        tags.sort();
        let all = s.list("r/tags").await.unwrap();
        assert_eq!(all.len(), 3001);
        assert!(all.windows(2).all(|w| w[0].name < w[1].name));
        assert!(all.iter().all(|e| e.is_dir == (e.name != "file")));
        assert!(s.list("").await.unwrap().iter().all(|e| e.name != TMP_DIR));
        assert_eq!(s.list("missing/dir").await.unwrap(), vec![]);
        assert_eq!(s.list("r/tags/file").await.unwrap(), vec![]);

        let dirs: super::super::Keep = |e| e.is_dir;
        // pages of 7 through `last`, as a client follows Link
        let (mut last, mut seen) = (None::<String>, Vec::new());
        loop {
            let (page, more) = s.list_after("r/tags", last.as_deref(), 7, dirs).await.unwrap();
            assert!(page.len() <= 7 && (!more || page.len() == 7));
            assert!(page.iter().all(|e| e.is_dir));
            seen.extend(page.iter().map(|e| e.name.to_owned()));
            last = seen.last().cloned();
            if !more {
                break;
            }
        }
        assert_eq!(seen, tags);
        let (page, more) = s.list_after("r/tags", Some("v2998"), 3, dirs).await.unwrap();
        assert_eq!(page.iter().map(|e| e.name).collect::<Vec<_>>(), ["v2999", "v3", "v30"]);
        assert!(more);
        let (page, more) = s.list_after("r/tags", Some("v997"), 7, dirs).await.unwrap();
        assert_eq!(page.iter().map(|e| e.name).collect::<Vec<_>>(), ["v998", "v999"]);
        assert!(!more);
        let (page, more) = s.list_after("r/tags", Some("v999"), 7, |_| true).await.unwrap();
        assert_eq!((page.len(), more), (0, false));
        let (page, more) = s.list_after("r/tags", None, 0, dirs).await.unwrap();
        assert_eq!((page.len(), more), (0, true));
        assert_eq!(
            s.list_after("missing", None, 5, dirs).await.unwrap(),
            (super::super::Page::owned(vec![]), false)
        );
    }

    fn names(page: &(super::super::Page, bool)) -> (Vec<&str>, bool) {
        (page.0.iter().map(|e| e.name).collect(), page.1)
    }

    /// A tags directory is kept in memory once its last change is RACY-old, answers from there
    /// while a `stat` gives the same stamp, and never after an entry was made or removed: by
    /// this store (which also forgets it at once), or behind its back as another process would.
    #[tokio::test]
    async fn kept_listings_answer_only_while_the_directory_is_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let s = FsStore::open(d.path(), false).unwrap();
        let tags = d.path().join("r/tags");
        let dirs: super::super::Keep = |e| e.is_dir;
        for i in 0..300 {
            std::fs::create_dir_all(tags.join(format!("t{i:03}"))).unwrap();
        }
        // read while the directory just changed: answered, but not kept (racy)
        let p = s.list_after("r/tags", Some("t297"), 5, dirs).await.unwrap();
        assert_eq!(names(&p), (vec!["t298", "t299"], false));
        assert!(s.listings.get("r/tags").is_none(), "a racy listing was kept");

        // a directory whose listing weighs more than LISTING_MAX_BYTES is never kept
        let long = "x".repeat(240);
        let big = (LISTING_MAX_BYTES / (240 + 6 + 32)) as usize + 10;
        std::fs::create_dir_all(d.path().join("big")).unwrap();
        for i in 0..big {
            std::fs::File::create(d.path().join(format!("big/{long}{i:06}"))).unwrap();
        }
        tokio::time::sleep(RACY + Duration::from_millis(200)).await;

        let p = s
            .list_after("big", Some(&format!("{long}000099")), 2, |_| true)
            .await
            .unwrap();
        let want = [format!("{long}000100"), format!("{long}000101")];
        assert_eq!(names(&p), (vec![want[0].as_str(), want[1].as_str()], true));
        assert!(s.listings.get("big").is_none(), "a listing above the bound was kept");

        let p = s.list_after("r/tags", Some("t297"), 5, dirs).await.unwrap();
        assert_eq!(names(&p), (vec!["t298", "t299"], false));
        let kept = s.listings.get("r/tags").expect("a settled listing is kept");
        assert_eq!(kept.entries.len(), 300);
        // answered from memory while the stamp holds: a page that only the kept listing has
        // (a name put into it here) proves it
        let mut doctored: Vec<Entry> = kept.entries.entries().map(|e| e.to_entry()).collect();
        doctored.push(Entry {
            name: "zz-only-in-memory".into(),
            is_dir: true,
        });
        s.listings.insert(
            "r/tags".into(),
            Arc::new(Listing {
                stamp: kept.stamp,
                entries: Arc::new(crate::storage::Sorted::new(doctored)),
            }),
        );
        let p = s.list_after("r/tags", Some("t299"), 5, dirs).await.unwrap();
        assert_eq!(names(&p), (vec!["zz-only-in-memory"], false));

        // another process adds a tag (a directory made behind this store's back): the stamp
        // changed, the directory is read again
        std::fs::create_dir_all(tags.join("t300")).unwrap();
        let p = s.list_after("r/tags", Some("t299"), 5, dirs).await.unwrap();
        assert_eq!(names(&p), (vec!["t300"], false));
        assert!(
            s.listings.get("r/tags").is_none(),
            "the listing read just after a change was kept"
        );

        // once settled it is kept again; then another process removes a tag
        tokio::time::sleep(RACY + Duration::from_millis(200)).await;
        let p = s.list_after("r/tags", Some("t298"), 5, dirs).await.unwrap();
        assert_eq!(names(&p), (vec!["t299", "t300"], false));
        assert!(s.listings.get("r/tags").is_some());
        std::fs::remove_dir(tags.join("t299")).unwrap();
        let p = s.list_after("r/tags", Some("t298"), 5, dirs).await.unwrap();
        assert_eq!(names(&p), (vec!["t300"], false));

        // this store's own write and delete forget the listing at once
        tokio::time::sleep(RACY + Duration::from_millis(200)).await;
        let _ = s.list_after("r/tags", None, 1, dirs).await.unwrap();
        assert!(s.listings.get("r/tags").is_some());
        s.put("r/tags/t301/current/link", Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert!(s.listings.get("r/tags").is_none(), "a put did not forget the listing");
        let p = s.list_after("r/tags", Some("t299"), 5, dirs).await.unwrap();
        assert_eq!(names(&p), (vec!["t300", "t301"], false));
        tokio::time::sleep(RACY + Duration::from_millis(200)).await;
        let _ = s.list_after("r/tags", None, 1, dirs).await.unwrap();
        assert!(s.listings.get("r/tags").is_some());
        s.delete_all("r/tags/t300").await.unwrap();
        assert!(
            s.listings.get("r/tags").is_none(),
            "a delete did not forget the listing"
        );
        let p = s.list_after("r/tags", Some("t299"), 5, dirs).await.unwrap();
        assert_eq!(names(&p), (vec!["t301"], false));

        // the directory removed and made again (same names): read again, not believed
        tokio::time::sleep(RACY + Duration::from_millis(200)).await;
        let _ = s.list_after("r/tags", None, 1, dirs).await.unwrap();
        std::fs::remove_dir_all(&tags).unwrap();
        std::fs::create_dir_all(tags.join("only")).unwrap();
        let p = s.list_after("r/tags", None, 5, dirs).await.unwrap();
        assert_eq!(names(&p), (vec!["only"], false));
        std::fs::remove_dir_all(&tags).unwrap();
        assert_eq!(
            s.list_after("r/tags", None, 5, dirs).await.unwrap(),
            (super::super::Page::owned(vec![]), false)
        );
    }

    /// Listings kept for any number of directories weigh at most LISTINGS_BYTES together.
    #[tokio::test]
    async fn kept_listings_are_bounded_in_bytes() {
        let d = tempfile::tempdir().unwrap();
        let s = FsStore::open(d.path(), false).unwrap();
        let stamp = DirStamp {
            dev: 0,
            ino: 0,
            nlink: 0,
            size: 0,
            mtime: (0, 0),
            ctime: (0, 0),
        };
        // 200 listings of 10,000 names of 60 bytes, as 200 repositories of 10,000 tags would be
        let entries: Vec<Entry> = (0..10_000)
            .map(|i| Entry {
                name: format!("{i:060}"),
                is_dir: true,
            })
            .collect();
        let entries = Arc::new(crate::storage::Sorted::new(entries));
        let one = entries.weight();
        assert!(one > 600 << 10);
        for r in 0..200 {
            s.listings.insert(
                format!("r{r}/tags"),
                Arc::new(Listing {
                    stamp,
                    entries: entries.clone(),
                }),
            );
            s.listings.run_pending_tasks();
            assert!(
                s.listings.weighted_size() <= LISTINGS_BYTES,
                "{}",
                s.listings.weighted_size()
            );
        }
        assert!(s.listings.entry_count() <= LISTINGS_BYTES / one);
        assert!(s.listings.entry_count() >= 8, "{} kept", s.listings.entry_count());
    }

    /// `list` keeps a settled directory's entries like `list_after` and answers from them while
    /// the directory's stamp holds; a change behind the store's back is read again.
    #[tokio::test]
    async fn whole_listings_are_kept_and_answered_while_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let s = FsStore::open(d.path(), false).unwrap();
        for n in ["_manifests", "_layers", "sub"] {
            std::fs::create_dir_all(d.path().join("repo").join(n)).unwrap();
        }
        let names = |v: Vec<Entry>| v.into_iter().map(|e| e.name).collect::<Vec<_>>();
        assert_eq!(names(s.list("repo").await.unwrap()), ["_layers", "_manifests", "sub"]);
        assert!(s.listings.get("repo").is_none(), "a racy listing was kept");
        tokio::time::sleep(RACY + Duration::from_millis(200)).await;
        assert_eq!(names(s.list("repo").await.unwrap()), ["_layers", "_manifests", "sub"]);
        let kept = s.listings.get("repo").expect("a settled listing is kept");
        let mut doctored: Vec<Entry> = kept.entries.entries().map(|e| e.to_entry()).collect();
        doctored.push(Entry {
            name: "zz-only-in-memory".into(),
            is_dir: false,
        });
        s.listings.insert(
            "repo".into(),
            Arc::new(Listing {
                stamp: kept.stamp,
                entries: Arc::new(crate::storage::Sorted::new(doctored)),
            }),
        );
        assert_eq!(s.list("repo").await.unwrap().last().unwrap().name, "zz-only-in-memory");
        std::fs::create_dir(d.path().join("repo/_uploads")).unwrap();
        assert_eq!(
            names(s.list("repo").await.unwrap()),
            ["_layers", "_manifests", "_uploads", "sub"]
        );
    }

    /// A collector's markers are hard links to one stamp: empty, carrying the stamp's time (a
    /// crashed run's marker is replaced by one of this run), the directory made when missing;
    /// the stamp file goes with the stamp, the markers stay until deleted.
    #[tokio::test]
    async fn markers_are_links_to_the_run_s_stamp() {
        let d = tempfile::tempdir().unwrap();
        let s = FsStore::open(d.path(), false).unwrap();
        s.put("b/old/regate-sweeping", Bytes::from_static(b"a crashed run"))
            .await
            .unwrap();
        let old = d.path().join("b/old/regate-sweeping");
        let past = SystemTime::now() - Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(past)
            .unwrap();
        let stamp = s.stamp().unwrap();
        let stamp_time = std::fs::metadata(&stamp.0).unwrap().modified().unwrap();
        for key in ["b/old/regate-sweeping", "b/new/regate-sweeping"] {
            s.link_marker(key, &stamp).await.unwrap();
            let m = s.stat(key).await.unwrap().expect("marker");
            assert_eq!((m.size, m.modified), (0, Some(stamp_time)), "{key}");
        }
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(std::fs::metadata(&old).unwrap().nlink(), 3);
        let path = stamp.0.clone();
        drop(stamp);
        assert!(!path.exists(), "the stamp file outlived its stamp");
        assert!(s.stat("b/new/regate-sweeping").await.unwrap().is_some());
        s.delete("b/new/regate-sweeping").await.unwrap();
        assert!(s.stat("b/new/regate-sweeping").await.unwrap().is_none());
        assert!(s.stat("b/old/regate-sweeping").await.unwrap().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn durable_writes_with_early_writeback_keep_every_byte() {
        let d = tempfile::tempdir().unwrap();
        let s = FsStore::open(d.path(), true).unwrap();
        let mut w = s.writer("a/b/data").await.unwrap();
        let mut h = Sha256::new();
        // 21 MiB in odd-sized pieces: crosses the writeback threshold twice, ends mid-window
        let mut n = 0u64;
        let mut i = 0u8;
        while n < 21 << 20 {
            let piece: Vec<u8> = (0..777_777u32).map(|x| (x as u8).wrapping_add(i)).collect();
            h.update(&piece);
            n += piece.len() as u64;
            w.write(Bytes::from(piece)).await.unwrap();
            i = i.wrapping_add(1);
        }
        assert!(s.stat("a/b/data").await.unwrap().is_none(), "visible before commit");
        w.commit().await.unwrap();
        let got = std::fs::read(d.path().join("a/b/data")).unwrap();
        assert_eq!(got.len() as u64, n);
        assert_eq!(Sha256::digest(&got), h.finalize());
    }
}
