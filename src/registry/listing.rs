//! Tag list, catalog and referrers, with `n`/`last` pagination.

use super::error::{ApiError, Code};
use super::manifests::OCI_INDEX;
use super::{Permissions, Registry};
use crate::http::{self, query_get, Resp};
use crate::storage::{layout, Entry, EntryRef, Page};
use crate::types::names::{Algorithm, Digest, RepoName, Tag};
use ::http::{header, HeaderName, StatusCode};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::json;
use std::collections::{BTreeSet, HashMap, HashSet};

/// The most entries one catalog or referrers page may hold, whatever `n` asks for.
pub const MAX_PAGE: usize = 1000;

/// The most tags one answer holds, whatever `n` asks for, and its size when `n` is not given.
/// distribution answers every tag at once when there is no `n`; the OCI distribution spec lets
/// the server answer fewer with a `Link` to the rest. On local disk a repository's tags are kept
/// sorted in memory while its tags directory is unchanged (see `storage::fs::Listing`), so an
/// answer costs a `stat` and the page, and a repository of 50,000 tags comes in one answer; the
/// bound keeps any one answer (and, on object storage or for a directory too large to keep,
/// the page held while the tags are read) to at most 100,000 names of at most 128 bytes.
pub const MAX_TAGS_PAGE: usize = 100_000;

fn page_size(query: &[(String, String)], cap: usize) -> Result<Option<usize>, ApiError> {
    match query_get(query, "n") {
        None | Some("") => Ok(None),
        Some(n) => n.parse::<usize>().map(|n| Some(n.min(cap))).map_err(|_| {
            ApiError::new(Code::Unsupported, "n must be a non-negative integer").with_status(StatusCode::BAD_REQUEST)
        }),
    }
}

/// What a tags page counts: a directory under `_manifests/tags` whose name is a valid tag.
fn is_tag(e: EntryRef<'_>) -> bool {
    e.is_dir && Tag::valid(e.name)
}

/// `{"name":…,"tags":[…]}` written in one pass into one buffer of the right size: the page's
/// names passed `is_tag`, whose alphabet needs no escaping in JSON (the name goes through
/// serde_json all the same).
fn tag_list_json(name: &RepoName, page: &Page) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + 2 * name.as_str().len() + page.name_bytes() + 3 * page.len());
    b.extend_from_slice(b"{\"name\":");
    if serde_json::to_writer(&mut b, name.as_str()).is_err() {
        b.extend_from_slice(b"\"\"");
    }
    b.extend_from_slice(b",\"tags\":[");
    for (i, e) in page.iter().enumerate() {
        if i > 0 {
            b.push(b',');
        }
        b.push(b'"');
        b.extend_from_slice(e.name.as_bytes());
        b.push(b'"');
    }
    b.extend_from_slice(b"]}");
    b
}

fn link_next(r: &mut Resp, path: &str, n: usize, last: Option<&str>) {
    if let Some(last) = last {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("n", &n.to_string())
            .append_pair("last", last)
            .finish();
        http::set(r, header::LINK, &format!("<{path}?{q}>; rel=\"next\""));
    }
}

/// Directories the catalog walk lists ahead of the one it needs: listings are blocking calls on
/// the runtime's blocking pool, so a few in flight at once hide most of each one's round trip.
const READ_AHEAD: usize = 8;

/// Repository names (directories under `repositories/` holding `_manifests`) in byte order, those
/// after `last` that `keep` accepts, at most `limit` of them; and whether more follow.
///
/// Names do not come out of a plain depth-first walk in byte order (`a-b` sorts between `a` and
/// `a/c`), so directories wait in a set ordered by their path: a directory's path is the smallest
/// name in its subtree, hence taking them smallest first yields names in order. A subtree whose
/// every name is at or before `last` (all of `p` and `p/...` sort below `p0`, `'0'` being the byte
/// after `'/'`) is never listed, and the walk stops at the `limit + 1`st name: a page lists the
/// directories on the path to `last`, those of the page and at most [`READ_AHEAD`] more.
async fn walk_repositories<L, F>(
    list: L,
    last: Option<&str>,
    limit: usize,
    keep: impl Fn(&RepoName) -> bool,
) -> Result<(Vec<RepoName>, bool), ApiError>
where
    L: Fn(String) -> F,
    F: std::future::Future<Output = std::io::Result<Vec<Entry>>>,
{
    let wanted = |p: &str| last.is_none_or(|l| l < format!("{p}0").as_str());
    let dir = |rel: &str| {
        if rel.is_empty() {
            layout::REPOS.to_string()
        } else {
            format!("{}/{rel}", layout::REPOS)
        }
    };
    // directories waiting to be listed, those being listed, and listings not yet used
    let mut todo: BTreeSet<String> = BTreeSet::new();
    let mut inflight: HashSet<String> = HashSet::new();
    let mut listed: HashMap<String, std::io::Result<Vec<Entry>>> = HashMap::new();
    let mut reads = FuturesUnordered::new();
    let mut out = Vec::new();
    let mut rel = String::new();
    loop {
        for d in std::iter::once(&rel).chain(todo.iter().take(READ_AHEAD)) {
            if !listed.contains_key(d) && inflight.insert(d.clone()) {
                let (key, read) = (d.clone(), list(dir(d)));
                reads.push(async move { (key, read.await) });
            }
        }
        let entries = loop {
            if let Some(r) = listed.remove(&rel) {
                break r?;
            }
            match reads.next().await {
                Some((key, r)) => {
                    inflight.remove(&key);
                    listed.insert(key, r);
                }
                None => break Vec::new(),
            }
        };
        if !rel.is_empty()
            && entries.iter().any(|e| e.is_dir && e.name == "_manifests")
            && last.is_none_or(|l| rel.as_str() > l)
        {
            if let Some(n) = RepoName::parse(&rel).filter(|n| keep(n)) {
                if out.len() == limit {
                    return Ok((out, true));
                }
                out.push(n);
            }
        }
        for e in entries {
            if e.is_dir && !e.name.starts_with('_') {
                let child = if rel.is_empty() {
                    e.name
                } else {
                    format!("{rel}/{}", e.name)
                };
                if wanted(&child) {
                    todo.insert(child);
                }
            }
        }
        let Some(next) = todo.pop_first() else {
            return Ok((out, false));
        };
        rel = next;
    }
}

impl Registry {
    /// One page of tags in lexical order after `last` (exclusive): on local disk cut from the
    /// repository's tags kept sorted in memory while its tags directory is unchanged (one `stat`
    /// tells), otherwise read in one pass over the tags holding only the `n` + 1 smallest names
    /// after `last`, so memory is the page's (and the bounded listings kept), however many tags
    /// the repository has.
    pub(super) async fn tags(&self, name: &RepoName, query: &[(String, String)]) -> Result<Resp, ApiError> {
        let limit = page_size(query, MAX_TAGS_PAGE)?.unwrap_or(MAX_TAGS_PAGE);
        let last = query_get(query, "last").filter(|l| !l.is_empty());
        let (page, more) = self
            .store
            .list_after(&layout::tags_dir(name), last, limit, is_tag)
            .await?;
        if page.is_empty() && !more && !self.repo_exists(name).await? {
            return Err(ApiError::new(
                Code::NameUnknown,
                format!("repository {name} is not known"),
            ));
        }
        let n = page.len();
        let mut r = Resp::new(http::full(tag_list_json(name, &page)));
        http::set(&mut r, header::CONTENT_TYPE, "application/json");
        if more {
            link_next(&mut r, &format!("/v2/{name}/tags/list"), n, page.last().map(|e| e.name));
        }
        Ok(r)
    }

    /// A repository is a directory holding regate's/distribution's `_`-prefixed data
    /// (`_manifests`, `_layers`, `_uploads`); a mere path prefix of other repositories is not one.
    async fn repo_exists(&self, name: &RepoName) -> Result<bool, ApiError> {
        Ok(self
            .store
            .list(&layout::repo(name))
            .await?
            .iter()
            .any(|e| e.is_dir && e.name.starts_with('_')))
    }

    /// Every repository name in storage (a directory holding `_manifests`), sorted.
    pub async fn repositories(&self) -> Result<Vec<RepoName>, ApiError> {
        let (all, _) =
            walk_repositories(|d| async move { self.store.list(&d).await }, None, usize::MAX, |_| true).await?;
        Ok(all)
    }

    /// One catalog page: the walk skips every subtree whose names all sort at or before `last`
    /// and stops after `n` (+1, to know whether more follow) names the caller may pull, so a page
    /// costs the directories on the way to it, not the whole tree.
    pub(super) async fn catalog(&self, query: &[(String, String)], perms: &dyn Permissions) -> Result<Resp, ApiError> {
        let limit = page_size(query, MAX_PAGE)?.unwrap_or(MAX_PAGE);
        let last = query_get(query, "last").filter(|l| !l.is_empty());
        let (page, more) = walk_repositories(
            |d| async move { self.store.list(&d).await },
            last,
            limit,
            |n| perms.can_pull(n),
        )
        .await?;
        let page: Vec<String> = page.into_iter().map(|n| n.to_string()).collect();
        let n = page.len();
        let mut r = http::json(StatusCode::OK, &json!({ "repositories": page }));
        if more {
            link_next(&mut r, "/v2/_catalog", n, page.last().map(String::as_str));
        }
        Ok(r)
    }

    pub(super) async fn referrers(
        &self,
        name: &RepoName,
        subject: &Digest,
        query: &[(String, String)],
    ) -> Result<Resp, ApiError> {
        let filter = query_get(query, "artifactType").filter(|s| !s.is_empty());
        // in pages of `n` (at most MAX_PAGE) by digest, after `last`, as tags and the catalog
        let limit = page_size(query, MAX_PAGE)?.unwrap_or(MAX_PAGE);
        let last = query_get(query, "last").filter(|l| !l.is_empty());
        let mut found = Vec::new();
        for a in Algorithm::ALL {
            for e in self.store.list(&layout::referrers_dir(name, subject, a)).await? {
                found.extend(Digest::from_hex(a, &e.name));
            }
        }
        found.sort_by_key(|d| d.to_string());
        found.retain(|d| last.is_none_or(|l| d.to_string().as_str() > l));
        let mut manifests = Vec::new();
        let mut more = false;
        for d in found {
            if manifests.len() == limit {
                // one more match tells whether another page follows
                if self.referrer_matches(name, &d, filter).await? {
                    more = true;
                    break;
                }
                continue;
            }
            // a referrer deleted since (revision gone) is no longer listed
            if self.store.stat(&layout::revision_link(name, &d)).await?.is_none() {
                continue;
            }
            let Some(m) = self.load_manifest(&d).await? else {
                continue;
            };
            if let Some(f) = filter {
                if m.artifact_type.as_deref() != Some(f) {
                    continue;
                }
            }
            let mut desc = json!({
                "mediaType": m.media_type,
                "digest": d.to_string(),
                "size": m.bytes.len(),
            });
            if let Some(a) = &m.artifact_type {
                desc["artifactType"] = json!(a);
            }
            if let Some(a) = &m.annotations {
                desc["annotations"] = json!(a);
            }
            manifests.push(desc);
        }
        let next = manifests
            .last()
            .and_then(|m| m["digest"].as_str())
            .map(str::to_owned)
            .filter(|_| more);
        let mut r = http::json(
            StatusCode::OK,
            &json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests }),
        );
        http::set(&mut r, header::CONTENT_TYPE, OCI_INDEX);
        if filter.is_some() {
            http::set(&mut r, HeaderName::from_static("oci-filters-applied"), "artifactType");
        }
        if let Some(last) = next {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("n", &limit.to_string()).append_pair("last", &last);
            if let Some(f) = filter {
                q.append_pair("artifactType", f);
            }
            let path = format!("/v2/{name}/referrers/{subject}?{}", q.finish());
            http::set(&mut r, header::LINK, &format!("<{path}>; rel=\"next\""));
        }
        Ok(r)
    }

    /// Whether `d` is a live referrer in `name` of the artifact type asked for.
    async fn referrer_matches(&self, name: &RepoName, d: &Digest, filter: Option<&str>) -> Result<bool, ApiError> {
        if self.store.stat(&layout::revision_link(name, d)).await?.is_none() {
            return Ok(false);
        }
        let Some(m) = self.load_manifest(d).await? else {
            return Ok(false);
        };
        Ok(filter.is_none_or(|f| m.artifact_type.as_deref() == Some(f)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn tag_lists_are_the_json_serde_would_write() {
        let name = RepoName::parse("team/app").unwrap();
        for tags in [vec![], vec!["latest"], vec!["1.0", "v2_b-3", "Z"]] {
            let page: Vec<Entry> = tags
                .iter()
                .map(|t| Entry {
                    name: t.to_string(),
                    is_dir: true,
                })
                .collect();
            let owned = tag_list_json(&name, &Page::owned(page.clone()));
            let got: serde_json::Value = serde_json::from_slice(&owned).unwrap();
            assert_eq!(got, json!({"name": "team/app", "tags": tags}));
            // the same page borrowed from a kept listing, whole and with names it refuses
            let mut sorted = page.clone();
            sorted.sort_by(|a, b| a.name.cmp(&b.name));
            let whole = Arc::new(crate::storage::Sorted::new(sorted.clone()));
            assert_eq!(
                tag_list_json(&name, &Page::cut(&whole, None, usize::MAX, is_tag).0),
                tag_list_json(&name, &Page::owned(sorted.clone()))
            );
            sorted.push(Entry {
                name: "-not-a-tag".into(),
                is_dir: true,
            });
            sorted.push(Entry {
                name: "zfile".into(),
                is_dir: false,
            });
            let mixed = Arc::new(crate::storage::Sorted::new(sorted.clone()));
            let want: Vec<Entry> = sorted.into_iter().filter(|e| is_tag(e.view())).collect();
            assert_eq!(
                tag_list_json(&name, &Page::cut(&mixed, None, usize::MAX, is_tag).0),
                tag_list_json(&name, &Page::owned(want))
            );
        }
        assert!(!Tag::valid("") && !Tag::valid(".x") && !Tag::valid("a\"b") && !Tag::valid(&"a".repeat(129)));
        assert!(Tag::valid("_a.b-c") && Tag::valid(&"a".repeat(128)));
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(&q(&[("n", "2")]), MAX_PAGE).unwrap(), Some(2));
        assert_eq!(page_size(&q(&[("n", "")]), MAX_PAGE).unwrap(), None);
        assert_eq!(page_size(&q(&[]), MAX_PAGE).unwrap(), None);
        assert!(page_size(&q(&[("n", "-1")]), MAX_PAGE).is_err());
        assert_eq!(
            page_size(&q(&[("n", "99999999999")]), MAX_PAGE).unwrap(),
            Some(MAX_PAGE)
        );
        assert_eq!(
            page_size(&q(&[("n", "99999999999")]), MAX_TAGS_PAGE).unwrap(),
            Some(MAX_TAGS_PAGE)
        );
    }

    #[tokio::test]
    async fn tag_pages_count_only_tags_in_lexical_order_after_last() {
        use crate::storage::{memory::MemStore, Storage};
        let s = Storage::Memory(MemStore::default());
        let tags = ["1.0", "B", "_x", "a", "a-b", "a.c", "a0", "latest", "v1", "v10", "v2"];
        for t in tags {
            s.put(&format!("r/tags/{t}/current/link"), bytes::Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
        // a file and directories whose names are not tags are not counted
        for k in ["r/tags/a1", "r/tags/.hidden/current/link", "r/tags/-x/current/link"] {
            s.put(k, bytes::Bytes::from_static(b"x")).await.unwrap();
        }
        let page = |last: Option<&'static str>, n: usize| {
            let s = &s;
            async move {
                let (p, more) = s.list_after("r/tags", last, n, is_tag).await.unwrap();
                (p.iter().map(|e| e.name.to_owned()).collect::<Vec<_>>(), more)
            }
        };
        let all: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        assert_eq!(page(None, MAX_TAGS_PAGE).await, (all.clone(), false));
        for (i, last) in tags.iter().enumerate() {
            for n in [0, 1, 2, 3, 100] {
                let want: Vec<String> = all[i + 1..].iter().take(n).cloned().collect();
                assert_eq!(
                    page(Some(last), n).await,
                    (want, all.len() > i + 1 + n),
                    "last={last} n={n}"
                );
            }
        }
        // `last` need not be a tag
        assert_eq!(page(Some("a-"), 2).await, (vec!["a-b".into(), "a.c".into()], true));
        assert_eq!(page(Some("zzz"), 2).await, (vec![], false));
    }

    /// A tree of directories in distribution's layout, listed through a counter: the walk's work
    /// is the directories it lists and the entries it reads.
    struct Tree {
        dirs: std::collections::BTreeMap<String, Vec<Entry>>,
        lists: std::cell::Cell<usize>,
        entries: std::cell::Cell<usize>,
    }

    impl Tree {
        fn new(repos: &[String]) -> Tree {
            let mut dirs: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
            for r in repos {
                let mut parent = layout::REPOS.to_string();
                for c in r.split('/') {
                    dirs.entry(parent.clone()).or_default().insert(c.to_string());
                    parent = format!("{parent}/{c}");
                }
                for d in ["_manifests", "_layers", "_uploads"] {
                    dirs.entry(parent.clone()).or_default().insert(d.to_string());
                }
            }
            let dirs = dirs
                .into_iter()
                .map(|(k, v)| {
                    let v = v.into_iter().map(|name| Entry { name, is_dir: true }).collect();
                    (k, v)
                })
                .collect();
            Tree {
                dirs,
                lists: Default::default(),
                entries: Default::default(),
            }
        }

        fn list(&self, d: String) -> std::future::Ready<std::io::Result<Vec<Entry>>> {
            let e = self.dirs.get(&d).cloned().unwrap_or_default();
            self.lists.set(self.lists.get() + 1);
            self.entries.set(self.entries.get() + e.len());
            std::future::ready(Ok(e))
        }

        fn work(&self) -> (usize, usize) {
            (self.lists.replace(0), self.entries.replace(0))
        }

        async fn page(&self, last: Option<&str>, n: usize) -> (Vec<String>, bool) {
            let (p, more) = walk_repositories(|d| self.list(d), last, n, |_| true).await.unwrap();
            (p.into_iter().map(|n| n.to_string()).collect(), more)
        }
    }

    #[tokio::test]
    async fn catalog_walk_is_in_byte_order_and_honours_last() {
        let names: Vec<String> = ["a", "a-b", "a/c", "a/c/d", "a.b/x", "b", "a/c-d", "a0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let t = Tree::new(&names);
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(t.page(None, usize::MAX).await, (sorted.clone(), false));
        for (i, last) in sorted.iter().enumerate() {
            for n in [1, 2, 100] {
                let want: Vec<String> = sorted[i + 1..].iter().take(n).cloned().collect();
                let more = sorted.len() > i + 1 + n;
                assert_eq!(t.page(Some(last), n).await, (want, more), "last={last} n={n}");
            }
        }
        // `last` need not name a repository
        assert_eq!(t.page(Some("a/b"), 1).await.0, vec!["a/c".to_string()]);
        assert_eq!(t.page(Some("zzz"), 5).await, (vec![], false));
        assert_eq!(t.page(None, 0).await, (vec![], true));
    }

    #[tokio::test]
    async fn a_catalog_page_reads_a_bounded_part_of_5000_repositories() {
        // 50 organisations of 100 repositories each, the layout of a company registry
        let names: Vec<String> = (0..5000).map(|i| format!("org{:02}/app{:04}", i / 100, i)).collect();
        let t = Tree::new(&names);
        let (all, _) = t.page(None, usize::MAX).await;
        assert_eq!(all, names);
        let whole = t.work();
        let (mut last, mut pages, mut seen) = (None::<String>, 0, Vec::new());
        loop {
            let (page, more) = t.page(last.as_deref(), 100).await;
            let (lists, entries) = t.work();
            // the root (50 entries), the organisation of `last` and at most two more (100 each)
            // and the page's 101 repositories (3 each), whatever the page's position; and what
            // was read ahead, at the start and past the end (READ_AHEAD directories each, of at
            // most 100 entries)
            assert!(
                lists <= 110 + 2 * READ_AHEAD,
                "page {pages}: {lists} directories listed (whole walk: {})",
                whole.0
            );
            assert!(
                entries <= 700 + 2 * READ_AHEAD * 100,
                "page {pages}: {entries} entries read (whole walk: {})",
                whole.1
            );
            pages += 1;
            last = page.last().cloned();
            seen.extend(page);
            if !more {
                break;
            }
        }
        assert_eq!(pages, 50);
        assert_eq!(seen, names);
        assert!(whole.1 > 20_000, "the whole walk reads every repository: {whole:?}");
    }
}
