//! Listing directories: one blocking call per listing, pages bounded by the page, and a
//! repository's tags kept sorted in memory while one `stat` of the directory says it is
//! unchanged (see [`Listing`]).

use super::*;
use crate::storage::{Page, Sorted};

/// The most bytes (names and their bookkeeping, see [`Sorted::weight`]) that the listings kept
/// in memory hold together, whatever clients ask for; the least recently used go first.
pub const LISTINGS_BYTES: u64 = 32 << 20;

/// A directory whose listing weighs more than this while it is read (as [`Listing::weight`]
/// counts it, before it is packed: about 190,000 tags of 12 bytes) is not kept: its pages are
/// read from the directory each time, holding only the page.
pub const LISTING_MAX_BYTES: u64 = LISTINGS_BYTES / 4;

/// A listing is only kept when the directory's last change lies this far before the moment its
/// reading began. A file system stamps changes with a coarse clock (a jiffy; a second on ext4
/// with small inodes, two on FAT), so a change made just after the `stat` could carry the very
/// stamp the listing was read under; once the stamp is older than the coarsest granularity, any
/// later change carries a later one (git's "racy" rule for its index, with a margin).
pub const RACY: Duration = Duration::from_secs(2);

/// A directory whose size (as `stat` gives it) is at most this is read inline by
/// [`FsStore::list`]: one block on ext4, a directory held in its inode on XFS, a few dozen names
/// on btrfs and tmpfs.
const SMALL_DIR_BYTES: u64 = 4096;

/// Calls [`FsStore::forget`] for its key when dropped: when a write or delete ends, however it
/// ends (an error, or the request dropped while it waited on the blocking pool).
pub(super) struct Forget<'a>(pub(super) &'a FsStore, pub(super) &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

/// What one `stat` of a directory says about its entries. Creating, removing or renaming an
/// entry sets the directory's mtime and ctime to the change's time (and usually its link count),
/// and no call can set a ctime back; a directory removed and made again is another inode, or the
/// same inode with a later ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DirStamp {
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) nlink: u64,
    pub(super) size: u64,
    pub(super) mtime: (i64, i64),
    pub(super) ctime: (i64, i64),
}

impl DirStamp {
    pub(super) fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        DirStamp {
            dev: m.dev(),
            ino: m.ino(),
            nlink: m.nlink(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// Whether the directory's last change (its ctime) lies more than [`RACY`] before `t`.
    pub(super) fn settled_before(&self, t: SystemTime) -> bool {
        let Ok(now) = t.duration_since(SystemTime::UNIX_EPOCH) else {
            return false;
        };
        let (s, ns) = self.ctime;
        let Ok(s) = u64::try_from(s) else {
            return false;
        };
        let changed = Duration::new(s, u32::try_from(ns).unwrap_or(0));
        changed.saturating_add(RACY) < now
    }
}

/// Every entry of a directory, sorted by name, and the [`DirStamp`] of the directory taken
/// before it was read. It answers a page only while a fresh `stat` of the directory gives the
/// same stamp: any entry made or removed since, by this process or another on the same disk,
/// changes the stamp, and [`RACY`] keeps out a listing whose stamp a later change could repeat.
pub(super) struct Listing {
    pub(super) stamp: DirStamp,
    pub(super) entries: Arc<Sorted>,
}

impl Listing {
    /// What one entry costs in memory while the directory is read: its name, the `Entry` and the
    /// allocator's share (packed into a [`Sorted`], it costs its name and 8 bytes).
    pub(super) fn weight(e: &super::Entry) -> u64 {
        e.name.len() as u64 + std::mem::size_of::<super::Entry>() as u64 + 16
    }
}

/// Calls `f` with the name (when it is UTF-8) of every entry of `dir` but regate's temporary
/// directory; a missing directory has none, and an entry gone while `f` looked at it is skipped.
/// Blocking.
fn read_dir(dir: &Path, mut f: impl FnMut(&str, &std::fs::DirEntry) -> io::Result<()>) -> io::Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name == TMP_DIR {
            continue;
        }
        match f(name, &e) {
            // gone since the directory was read (its type needed a stat)
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            r => r?,
        }
    }
    Ok(())
}

/// Reads `dir` for [`FsStore::list_after`]: the page, and every entry sorted by name unless they
/// weigh more than [`LISTING_MAX_BYTES`] (then only the page is held from there on). Blocking.
#[allow(clippy::type_complexity)]
fn read_listing(
    dir: &Path,
    after: Option<&str>,
    limit: usize,
    keep: crate::storage::Keep,
) -> io::Result<((Page, bool), Option<Arc<Sorted>>)> {
    let mut whole = Some(Vec::new());
    let mut weight = 0;
    let mut page = crate::storage::Smallest::new(after, limit);
    read_dir(dir, |name, e| {
        if let Some(all) = &mut whole {
            let e = Entry {
                name: name.to_owned(),
                is_dir: e.file_type()?.is_dir(),
            };
            weight += Listing::weight(&e);
            all.push(e);
            if weight > LISTING_MAX_BYTES {
                // too large to keep: from here on only the page is held
                for e in whole.take().into_iter().flatten() {
                    if page.wants(&e.name) && keep(e.view()) {
                        page.insert(e);
                    }
                }
            }
        } else if page.wants(name) {
            let e = Entry {
                name: name.to_owned(),
                is_dir: e.file_type()?.is_dir(),
            };
            if keep(e.view()) {
                page.insert(e);
            }
        }
        Ok(())
    })?;
    Ok(match whole {
        Some(all) => {
            let all = Arc::new(Sorted::new(all));
            (Page::cut(&all, after, limit, keep), Some(all))
        }
        None => (page.finish(), None),
    })
}

impl FsStore {
    /// Drops the listings of every directory on the way to `key` (and of `key` itself, which may
    /// be a directory): this process's own writes and deletes never leave a listing behind that
    /// only its stamp would refuse.
    fn forget(&self, key: &str) {
        let mut at = key.len();
        loop {
            self.listings.invalidate(&key[..at]);
            match key[..at].rfind('/') {
                Some(i) => at = i,
                None => break,
            }
        }
        self.listings.invalidate("");
    }

    fn dir(&self, prefix: &str) -> PathBuf {
        if prefix.is_empty() {
            self.root.clone()
        } else {
            self.path(prefix)
        }
    }

    /// Every entry of a directory, sorted. Kept listings answer as for [`Self::list_after`]
    /// (one `stat`, and the entries from memory while its [`DirStamp`] holds), and what is read
    /// is kept under the same rules: the catalog lists one directory per repository, and a page
    /// of 1,000 spent more than half its time opening, reading and closing them. A directory is
    /// read in one trip to the blocking pool (`tokio::fs::read_dir` makes one per 32 entries:
    /// 1,560 for a repository of 50,000 tags), or inline when `stat` says it fits in a block (a
    /// repository's own directory, a blob's), like [`Self::stat`] and small reads: handing those
    /// to blocking-pool threads and waking them was most of a catalog page before.
    pub async fn list(&self, prefix: &str) -> io::Result<Vec<Entry>> {
        let dir = self.dir(prefix);
        let began = SystemTime::now();
        let m = match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => m,
            Ok(_) => return Ok(Vec::new()),
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(e),
        };
        let stamp = DirStamp::of(&m);
        if let Some(l) = self.listings.get(prefix) {
            if l.stamp == stamp {
                return Ok(l.entries.entries().map(|e| e.to_entry()).collect());
            }
        }
        let read = move || {
            let mut out = Vec::new();
            read_dir(&dir, |name, e| {
                out.push(Entry {
                    name: name.to_owned(),
                    is_dir: e.file_type()?.is_dir(),
                });
                Ok(())
            })?;
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok::<_, io::Error>(out)
        };
        let all = if m.len() <= SMALL_DIR_BYTES {
            read()?
        } else {
            tokio::task::spawn_blocking(read).await.map_err(io::Error::other)??
        };
        let weight: u64 = all.iter().map(Listing::weight).sum();
        if weight <= LISTING_MAX_BYTES && stamp.settled_before(began) {
            let entries = Arc::new(Sorted::new(all.clone()));
            self.listings
                .insert(prefix.to_owned(), Arc::new(Listing { stamp, entries }));
        }
        Ok(all)
    }

    /// [`super::Storage::list_after`], from memory while the directory is unchanged: one `stat`
    /// of the directory, and when its [`DirStamp`] is the one a kept [`Listing`] was read under,
    /// the page is cut from that sorted listing (a binary search for `after`, then the page).
    /// Otherwise the directory is read in one blocking call: whole, sorted and kept (when it
    /// weighs at most [`LISTING_MAX_BYTES`] and its last change is [`RACY`]-old), or, for a
    /// larger one, holding only the `limit` + 1 smallest names after `after` (a name that cannot
    /// be kept is compared in place, never copied).
    pub async fn list_after(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        keep: crate::storage::Keep,
    ) -> io::Result<(Page, bool)> {
        let dir = self.dir(prefix);
        // the time before the stat: a change after it is stamped no earlier than RACY before it
        let began = SystemTime::now();
        // inline, like `stat`: a microsecond on a local disk
        let stamp = match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => DirStamp::of(&m),
            Ok(_) => return Ok((Page::owned(Vec::new()), false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory => {
                return Ok((Page::owned(Vec::new()), false))
            }
            Err(e) => return Err(e),
        };
        if let Some(l) = self.listings.get(prefix) {
            if l.stamp == stamp {
                return Ok(Page::cut(&l.entries, after, limit, keep));
            }
        }
        let after = after.map(str::to_owned);
        let (page, whole) = tokio::task::spawn_blocking(move || read_listing(&dir, after.as_deref(), limit, keep))
            .await
            .map_err(io::Error::other)??;
        match whole {
            Some(entries) if stamp.settled_before(began) => {
                self.listings
                    .insert(prefix.to_owned(), Arc::new(Listing { stamp, entries }));
            }
            _ => self.listings.invalidate(prefix),
        }
        Ok(page)
    }
}
