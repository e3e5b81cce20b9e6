//! Pages of a directory's children: what [`super::Storage::list_after`] answers, the bounded
//! collector that builds one from a listing of any size ([`Smallest`]), and a whole listing
//! packed for reading in name order ([`Sorted`]) that a page can borrow from.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
}

impl Entry {
    pub fn view(&self) -> EntryRef<'_> {
        EntryRef {
            name: &self.name,
            is_dir: self.is_dir,
        }
    }
}

/// An entry borrowed from where it is held (an [`Entry`], or a [`Sorted`] listing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub name: &'a str,
    pub is_dir: bool,
}

impl EntryRef<'_> {
    pub fn to_entry(self) -> Entry {
        Entry {
            name: self.name.to_owned(),
            is_dir: self.is_dir,
        }
    }
}

/// Which entries a bounded listing ([`super::Storage::list_after`]) counts; a plain function, so
/// the local disk's listing can take it onto the blocking pool.
pub type Keep = fn(EntryRef<'_>) -> bool;

/// Marks a directory in [`Sorted::ends`].
const DIR: u64 = 1 << 63;

/// A directory's entries sorted by name, every name in one buffer and their ends in one array.
/// Reading it in order walks two arrays front to back: 50,000 names held one allocation each
/// were 50,000 cache misses per read of the whole list (the profile of a whole tag list put 63 %
/// of its time on the first byte of each name), and it weighs half as much.
#[derive(Debug)]
pub struct Sorted {
    text: String,
    /// Where each name ends in `text`, with [`DIR`] set for a directory.
    ends: Vec<u64>,
}

impl Sorted {
    /// Sorts `entries` by name and packs them.
    pub fn new(mut entries: Vec<Entry>) -> Sorted {
        entries.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let mut text = String::with_capacity(entries.iter().map(|e| e.name.len()).sum());
        let mut ends = Vec::with_capacity(entries.len());
        for e in &entries {
            text.push_str(&e.name);
            ends.push(text.len() as u64 | if e.is_dir { DIR } else { 0 });
        }
        Sorted { text, ends }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Bytes held: the names, their ends and the two allocations' bookkeeping.
    pub fn weight(&self) -> u64 {
        (self.text.capacity() + self.ends.capacity() * std::mem::size_of::<u64>() + 64) as u64
    }

    fn end(&self, i: usize) -> usize {
        (self.ends[i] & !DIR) as usize
    }

    /// The `i`th entry; `i` < [`Self::len`].
    pub fn get(&self, i: usize) -> EntryRef<'_> {
        let start = if i == 0 { 0 } else { self.end(i - 1) };
        EntryRef {
            name: &self.text[start..self.end(i)],
            is_dir: self.ends[i] & DIR != 0,
        }
    }

    pub fn entries(&self) -> impl DoubleEndedIterator<Item = EntryRef<'_>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// The index of the first entry named after `after`.
    fn after(&self, after: &str) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.get(mid).name <= after {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// One page of a directory's children in name order, as [`super::Storage::list_after`] answers
/// it. A page cut from a listing kept in memory (local disk) borrows a range of that listing
/// rather than copying its names: the whole list of a repository's 50,000 tags is answered
/// without one allocation per tag.
#[derive(Debug, Clone)]
pub struct Page {
    entries: PageEntries,
    len: usize,
}

#[derive(Debug, Clone)]
enum PageEntries {
    Owned(Vec<Entry>),
    /// `all[range]`, less those `keep` refuses (`None`: it accepted every one of them).
    Lent {
        all: Arc<Sorted>,
        range: Range<usize>,
        keep: Option<Keep>,
    },
}

impl Page {
    pub fn owned(entries: Vec<Entry>) -> Page {
        Page {
            len: entries.len(),
            entries: PageEntries::Owned(entries),
        }
    }

    /// The `limit` first entries of `all` after `after` that `keep` accepts, and whether more
    /// follow: one pass over the page (and over any refused entries after it, up to the next
    /// accepted one); the names stay where they are.
    pub fn cut(all: &Arc<Sorted>, after: Option<&str>, limit: usize, keep: Keep) -> (Page, bool) {
        let start = after.map_or(0, |a| all.after(a));
        let mut len = 0;
        let mut every = true;
        let mut end = all.len();
        let mut more = false;
        for i in start..all.len() {
            if !keep(all.get(i)) {
                every = false;
                continue;
            }
            if len == limit {
                end = i;
                more = true;
                break;
            }
            len += 1;
        }
        let entries = PageEntries::Lent {
            all: all.clone(),
            range: start..end,
            keep: if every { None } else { Some(keep) },
        };
        (Page { entries, len }, more)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> PageIter<'_> {
        match &self.entries {
            PageEntries::Owned(v) => PageIter {
                from: From::Owned(v.iter()),
                keep: None,
            },
            PageEntries::Lent { all, range, keep } => PageIter {
                from: From::Lent(all, range.clone()),
                keep: *keep,
            },
        }
    }

    /// The bytes of the page's names together (without walking them when it borrows a range
    /// of a listing that `keep` accepted whole).
    pub fn name_bytes(&self) -> usize {
        match &self.entries {
            PageEntries::Lent { all, range, keep: None } if !range.is_empty() => {
                all.end(range.end - 1) - if range.start == 0 { 0 } else { all.end(range.start - 1) }
            }
            _ => self.iter().map(|e| e.name.len()).sum(),
        }
    }

    pub fn last(&self) -> Option<EntryRef<'_>> {
        self.iter().next_back()
    }

    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<Entry> {
        self.iter().map(EntryRef::to_entry).collect()
    }
}

impl PartialEq for Page {
    fn eq(&self, other: &Page) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

/// The entries of a [`Page`] in name order.
pub struct PageIter<'a> {
    from: From<'a>,
    keep: Option<Keep>,
}

enum From<'a> {
    Owned(std::slice::Iter<'a, Entry>),
    Lent(&'a Sorted, Range<usize>),
}

impl<'a> PageIter<'a> {
    /// The next entry `keep` accepts from the front, or from the back.
    fn step(&mut self, back: bool) -> Option<EntryRef<'a>> {
        loop {
            let e = match &mut self.from {
                From::Owned(it) => if back { it.next_back() } else { it.next() }?.view(),
                From::Lent(all, r) => all.get(if back { r.next_back() } else { r.next() }?),
            };
            if self.keep.is_none_or(|k| k(e)) {
                return Some(e);
            }
        }
    }
}

impl<'a> Iterator for PageIter<'a> {
    type Item = EntryRef<'a>;

    fn next(&mut self) -> Option<EntryRef<'a>> {
        self.step(false)
    }
}

impl DoubleEndedIterator for PageIter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.step(true)
    }
}

/// The `limit` smallest names after `after` among those offered, with one more kept to tell
/// whether more follow: what [`super::Storage::list_after`] holds while it reads a directory of
/// any size. A name offered twice (an object and a prefix of the same name) counts once, as a
/// directory.
pub(crate) struct Smallest {
    after: Option<String>,
    limit: usize,
    kept: BTreeMap<String, bool>,
}

impl Smallest {
    pub(crate) fn new(after: Option<&str>, limit: usize) -> Self {
        Smallest {
            after: after.map(str::to_owned),
            limit,
            kept: Default::default(),
        }
    }

    /// Whether `name` would be kept now: after `after`, and below the largest kept while
    /// `limit` + 1 are held (checked before an entry is built, so most names of a long listing
    /// cost no allocation).
    pub(crate) fn wants(&self, name: &str) -> bool {
        self.after.as_deref().is_none_or(|a| name > a)
            && (self.kept.len() <= self.limit || self.kept.last_key_value().is_some_and(|(m, _)| name <= m.as_str()))
    }

    pub(crate) fn insert(&mut self, e: Entry) {
        if !self.wants(&e.name) {
            return;
        }
        *self.kept.entry(e.name).or_insert(false) |= e.is_dir;
        if self.kept.len() > self.limit.saturating_add(1) {
            self.kept.pop_last();
        }
    }

    /// The page in name order, and whether more follow it.
    pub(crate) fn finish(self) -> (Page, bool) {
        let more = self.kept.len() > self.limit;
        let page = self
            .kept
            .into_iter()
            .take(self.limit)
            .map(|(name, is_dir)| Entry { name, is_dir })
            .collect();
        (Page::owned(page), more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &Page) -> Vec<&str> {
        v.iter().map(|e| e.name).collect()
    }

    /// A page cut from a sorted listing in memory holds what [`Smallest`] would have held from
    /// the same names in any order: the same entries, count, last entry and `more`, whatever
    /// `after` and `limit`, with entries `keep` refuses anywhere (inside the page, at its end, and
    /// between it and the next accepted entry).
    #[test]
    fn a_page_cut_from_a_kept_listing_is_the_page_smallest_holds() {
        let mut all: Vec<Entry> = (0..300)
            .map(|i| Entry {
                name: format!("t{i:03}"),
                // every seventh a file, and a run of them near the end
                is_dir: i % 7 != 3 && !(290..296).contains(&i),
            })
            .collect();
        all.extend(["a", "a-b", "a.c", "a0"].map(|n| Entry {
            name: n.into(),
            is_dir: true,
        }));
        // offered unsorted: Sorted::new sorts
        all.reverse();
        let all = Arc::new(Sorted::new(all));
        assert!(all.entries().zip(all.entries().skip(1)).all(|(a, b)| a.name < b.name));
        assert_eq!(all.len(), 304);
        let keeps: [Keep; 2] = [|e| e.is_dir, |_| true];
        for keep in keeps {
            for after in [
                None,
                Some(""),
                Some("a"),
                Some("a-"),
                Some("t002"),
                Some("t003"),
                Some("t289"),
                Some("zz"),
            ] {
                for limit in [0, 1, 2, 6, 7, 100, 10_000, usize::MAX] {
                    let (cut, more) = Page::cut(&all, after, limit, keep);
                    let mut want = Smallest::new(after, limit);
                    for e in all.entries().rev().filter(|e| keep(*e)) {
                        want.insert(e.to_entry());
                    }
                    let (want, want_more) = want.finish();
                    let at = format!("after {after:?} limit {limit}");
                    assert_eq!(names(&cut), names(&want), "{at}");
                    assert_eq!((cut.len(), more), (want.len(), want_more), "{at}");
                    assert_eq!(cut.last(), want.last(), "{at}");
                    assert_eq!(cut.is_empty(), want.is_empty(), "{at}");
                    assert_eq!(cut.name_bytes(), want.name_bytes(), "{at}");
                    assert_eq!(cut.to_vec(), want.to_vec(), "{at}");
                    assert_eq!(cut, want, "{at}");
                }
            }
        }
    }

    #[test]
    fn smallest_keeps_the_page_after_last_and_no_more_than_it() {
        // names offered in a scrambled order, as a directory listing gives them; `a-b` sorts
        // between `a` and `a0` (as on S3, where `a-b/` comes before `a/`)
        let mut all: Vec<String> = (0..500).map(|i| format!("t{i:03}")).collect();
        all.extend(["a", "a-b", "a.c", "a0", "_x", "B"].map(String::from));
        let mut scrambled = all.clone();
        scrambled.sort_by_key(|s| {
            let h = s
                .bytes()
                .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            h.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        });
        let mut sorted = all.clone();
        sorted.sort();
        for after in [
            None,
            Some(""),
            Some("a"),
            Some("a-"),
            Some("t250"),
            Some("t2500"),
            Some("zz"),
        ] {
            for limit in [0, 1, 2, 7, 100, 10_000, usize::MAX] {
                let mut page = Smallest::new(after, limit);
                for s in &scrambled {
                    page.insert(Entry {
                        name: s.clone(),
                        is_dir: true,
                    });
                    assert!(page.kept.len() <= limit.saturating_add(1), "holds more than the page");
                }
                let (got, more) = page.finish();
                let rest: Vec<&str> = sorted
                    .iter()
                    .map(String::as_str)
                    .filter(|s| after.is_none_or(|a| *s > a))
                    .collect();
                let want: Vec<&str> = rest.iter().copied().take(limit).collect();
                assert_eq!(names(&got), want, "after {after:?} limit {limit}");
                assert_eq!(more, rest.len() > limit, "after {after:?} limit {limit}");
            }
        }
    }

    #[test]
    fn smallest_counts_a_name_offered_twice_once_as_a_directory() {
        let mut page = Smallest::new(None, 2);
        for (name, is_dir) in [("b", false), ("a", false), ("b", true), ("c", true)] {
            page.insert(Entry {
                name: name.into(),
                is_dir,
            });
        }
        let (got, more) = page.finish();
        assert_eq!(
            got.to_vec(),
            vec![
                Entry {
                    name: "a".into(),
                    is_dir: false
                },
                Entry {
                    name: "b".into(),
                    is_dir: true
                }
            ]
        );
        assert!(more);
    }
}
