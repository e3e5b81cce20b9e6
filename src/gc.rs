//! Garbage collection while serving: mark every blob that a kept manifest references, then
//! delete blobs that nothing marks and that are older than the grace period (so a push whose
//! manifest has not arrived yet keeps its layers). With `delete_untagged`, manifests that no
//! tag, kept index or kept subject reaches are dropped first.

use crate::registry::{Manifest, SWEEP_TTL};
use crate::storage::{layout, Storage};
use crate::types::names::{Algorithm, Digest, Hasher, RepoName};
use futures_util::TryStreamExt as _;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::time::{Duration, SystemTime};

#[derive(Clone)]
pub struct Options {
    pub dry_run: bool,
    pub delete_untagged: bool,
    pub grace: Duration,
    /// Unfinished uploads older than this are purged.
    pub upload_max_age: Duration,
    pub retention: Vec<crate::config::RetentionRule>,
}

#[derive(Default)]
pub struct Report {
    pub dry_run: bool,
    pub blobs: Vec<(Digest, u64)>,
    pub manifests: Vec<(RepoName, Digest)>,
    pub uploads: Vec<String>,
    pub tags: Vec<(RepoName, String)>,
    /// The store keeps blobs in Git LFS, which has no delete API: dropped blobs free no space.
    pub lfs: bool,
}

impl Report {}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run { "would delete" } else { "deleted" };
        for (r, t) in &self.tags {
            writeln!(f, "{verb} tag {r}:{t} (retention)")?;
        }
        for (r, d) in &self.manifests {
            writeln!(f, "{verb} manifest {r}@{d}")?;
        }
        for (d, n) in &self.blobs {
            if self.lfs {
                let verb = if self.dry_run {
                    "would unreference"
                } else {
                    "unreferenced"
                };
                writeln!(f, "{verb} blob {d} ({n} bytes, which stay on the LFS server)")?;
            } else {
                writeln!(f, "{verb} blob {d} ({n} bytes)")?;
            }
        }
        for u in &self.uploads {
            writeln!(f, "{verb} abandoned upload {u}")?;
        }
        let bytes: u64 = self.blobs.iter().map(|(_, n)| n).sum();
        if self.lfs {
            // say what really happened: only regate's references go, the LFS server keeps the bytes
            return writeln!(
                f,
                "{}: {} tags, {} blobs ({} bytes) {}, {} manifests, {} uploads{}\n\
                 note: storage is Git LFS, which has no delete API: gc drops regate's references to \
                 blobs, but frees no space on the LFS server ({} bytes stay stored there); \
                 reclaim it on the LFS server itself (e.g. by recreating the repository)",
                if self.dry_run { "dry run" } else { "done" },
                self.tags.len(),
                self.blobs.len(),
                bytes,
                if self.dry_run {
                    "would be unreferenced"
                } else {
                    "unreferenced"
                },
                self.manifests.len(),
                self.uploads.len(),
                if self.dry_run { " would be removed" } else { " removed" },
                bytes
            );
        }
        writeln!(
            f,
            "{}: {} tags, {} blobs ({} bytes), {} manifests, {} uploads{}",
            if self.dry_run { "dry run" } else { "done" },
            self.tags.len(),
            self.blobs.len(),
            bytes,
            self.manifests.len(),
            self.uploads.len(),
            if self.dry_run { " would be freed" } else { " freed" }
        )
    }
}

fn older_than(t: Option<SystemTime>, grace: Duration) -> bool {
    match t.and_then(|t| SystemTime::now().duration_since(t).ok()) {
        Some(age) => age >= grace,
        None => grace.is_zero(),
    }
}

async fn repositories(store: &Storage) -> io::Result<Vec<RepoName>> {
    let mut out = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            layout::REPOS.to_string()
        } else {
            format!("{}/{rel}", layout::REPOS)
        };
        let entries = store.list(&dir).await?;
        if entries.iter().any(|e| e.name.starts_with('_')) {
            if let Some(n) = RepoName::parse(&rel) {
                out.push(n);
            }
        }
        for e in entries {
            if e.is_dir && !e.name.starts_with('_') {
                stack.push(if rel.is_empty() {
                    e.name
                } else {
                    format!("{rel}/{}", e.name)
                });
            }
        }
    }
    Ok(out)
}

/// The digests named by the entries of `dir(algorithm)`, for every algorithm.
async fn digests_in(store: &Storage, dir: impl Fn(Algorithm) -> String) -> io::Result<Vec<Digest>> {
    let mut out = Vec::new();
    for a in Algorithm::ALL {
        for e in store.list(&dir(a)).await? {
            out.extend(Digest::from_hex(a, &e.name));
        }
    }
    Ok(out)
}

/// Every stored blob (`blobs/<algorithm>/<2>/<hex>/`), of every algorithm.
async fn stored_blobs(store: &Storage) -> io::Result<Vec<Digest>> {
    let mut out = Vec::new();
    for a in Algorithm::ALL {
        let root = layout::blobs_dir(a);
        for prefix in store.list(&root).await? {
            for e in store.list(&format!("{root}/{}", prefix.name)).await? {
                out.extend(Digest::from_hex(a, &e.name));
            }
        }
    }
    Ok(out)
}

/// The manifests of `repo`: revisions that have a `link`. A revision directory without one
/// is what a delete left behind (distribution's, or an older regate's): not a manifest, and
/// removed unless `dry_run` when nothing else is in it.
async fn revisions(store: &Storage, repo: &RepoName, dry_run: bool) -> io::Result<Vec<Digest>> {
    let mut out = Vec::new();
    for d in digests_in(store, |a| layout::revisions_dir(repo, a)).await? {
        if store.stat(&layout::revision_link(repo, &d)).await?.is_some() {
            out.push(d);
        } else if !dry_run {
            store.prune(&layout::revision_dir(repo, &d)).await?;
        }
    }
    Ok(out)
}

async fn load(store: &Storage, d: &Digest) -> io::Result<Option<Manifest>> {
    let Some(b) = store.read(&layout::blob_data(d), 64 << 20).await? else {
        return Ok(None);
    };
    Ok(Manifest::parse_as(b, None, d.algorithm()).ok())
}

/// Of the manifests `deleted` from `repo` as untagged, those that a tag names now, or that are
/// children of a manifest a tag names now and that `keep` did not hold (pushed meanwhile).
async fn needed_again(
    store: &Storage,
    repo: &RepoName,
    keep: &BTreeSet<Digest>,
    deleted: &BTreeSet<Digest>,
    manifests: &BTreeMap<Digest, Manifest>,
) -> io::Result<BTreeSet<Digest>> {
    let mut need = BTreeSet::new();
    if deleted.is_empty() {
        return Ok(need);
    }
    let mut stack = Vec::new();
    for e in store.list(&layout::tags_dir(repo)).await? {
        let key = format!("{}/{}/current/link", layout::tags_dir(repo), e.name);
        if let Some(b) = store.read(&key, 1024).await? {
            stack.extend(Digest::parse(String::from_utf8_lossy(&b).trim()));
        }
    }
    let mut seen = BTreeSet::new();
    while let Some(d) = stack.pop() {
        if !seen.insert(d.clone()) {
            continue;
        }
        if deleted.contains(&d) {
            need.insert(d.clone());
        } else if keep.contains(&d) {
            // kept with its children already
            continue;
        }
        let children = match manifests.get(&d) {
            Some(m) => m.children.clone(),
            None => load(store, &d).await?.map(|m| m.children).unwrap_or_default(),
        };
        stack.extend(children);
    }
    Ok(need)
}

/// How many candidate blobs are marked, or deleted, at once.
const SWEEP_PARALLEL: usize = 16;

/// Deletes the candidate blobs, safely against pushes running meanwhile. A manifest pushed
/// after the mark phase may reference a candidate (a client that found the blob still there),
/// so each candidate first gets a sweep marker; then the manifests that appeared since marking
/// are read, and their blobs are spared; the rest are deleted. A manifest PUT checks its blobs
/// again after publishing its revision and fails (undoing it) when one is marked or gone, so
/// either this run sees the manifest, or the push fails: never a manifest without its blobs.
/// Markers are only trusted for [`SWEEP_TTL`]; a sweep that took half of it stops deleting.
async fn sweep(
    store: &Storage,
    candidates: Vec<Digest>,
    kept: &BTreeSet<(RepoName, Digest)>,
    opts: &Options,
    report: &mut Report,
) -> io::Result<()> {
    let started = std::time::Instant::now();
    // every marker is empty and carries the stamp's time (a manifest push reads only that, see
    // `going` in registry/manifests.rs); on local disk each is a hard link to the stamp
    let stamp = store.marker_stamp()?;
    // markers need no fsync: they only stop pushes while this run lives (and are believed for
    // SWEEP_TTL at most), and a crash that could lose one ends the run before it deletes more
    // (with fsync, each marker cost a journal commit: most of a real run's time on local disk)
    let mut marking = futures_util::stream::FuturesUnordered::new();
    for d in &candidates {
        if marking.len() == SWEEP_PARALLEL {
            marking.try_next().await?;
        }
        let stamp = &stamp;
        marking.push(async move { store.put_marker(&layout::blob_sweep_marker(d), stamp).await });
    }
    while marking.try_next().await?.is_some() {}
    drop(marking);
    // manifests pushed since the mark phase
    let mut spared: BTreeSet<Digest> = BTreeSet::new();
    for repo in repositories(store).await? {
        for d in revisions(store, &repo, true).await? {
            if kept.contains(&(repo.clone(), d.clone())) {
                continue;
            }
            if let Some(m) = load(store, &d).await? {
                spared.extend(m.blobs);
            }
            spared.insert(d);
        }
    }
    // each candidate on its own, a few at a time (every step is a storage round trip); the
    // report keeps the candidates' order
    let mut sweeping = futures_util::stream::FuturesOrdered::new();
    let mut rest = candidates.into_iter();
    loop {
        while sweeping.len() < SWEEP_PARALLEL {
            let Some(d) = rest.next() else { break };
            sweeping.push_back(sweep_one(store, d, &spared, started, opts.grace));
        }
        match sweeping.try_next().await? {
            Some(deleted) => report.blobs.extend(deleted),
            None => return Ok(()),
        }
    }
}

/// One candidate of [`sweep`]: its blob (digest and size) when it was deleted; otherwise its
/// marker is removed and it stays.
async fn sweep_one(
    store: &Storage,
    d: Digest,
    spared: &BTreeSet<Digest>,
    started: std::time::Instant,
    grace: Duration,
) -> io::Result<Option<(Digest, u64)>> {
    let marker = layout::blob_sweep_marker(&d);
    if spared.contains(&d) || started.elapsed() > SWEEP_TTL / 2 {
        store.delete(&marker).await?;
        return Ok(None);
    }
    // referenced again (a HEAD or a manifest check refreshes its time) since it was chosen
    match store.stat(&layout::blob_data(&d)).await? {
        Some(m) if older_than(m.modified, grace) => {
            // the bytes before the marker: a push that finds no marker then finds no blob; the
            // directory goes when that left it empty (no listing per blob: on object storage a
            // listing is a request that costs more than the deletes and scans a prefix)
            store.delete(&layout::blob_data(&d)).await?;
            store.delete(&marker).await?;
            store.prune(&layout::blob_dir(&d)).await?;
            Ok(Some((d, m.size)))
        }
        _ => {
            store.delete(&marker).await?;
            Ok(None)
        }
    }
}

/// Deletes the tags of `repo` that the first matching retention rule does not keep. Returns
/// whether a rule applied (its repositories then also lose untagged manifests).
async fn apply_retention(store: &Storage, repo: &RepoName, opts: &Options, report: &mut Report) -> io::Result<bool> {
    use crate::auth::policy::Glob;
    let Some(rule) = opts
        .retention
        .iter()
        .find(|r| Glob::new(&r.repository).matches(repo.as_str(), ""))
    else {
        return Ok(false);
    };
    let keep_globs: Vec<Glob> = rule.keep_tags.iter().map(|t| Glob::new(t)).collect();
    let mut tags = Vec::new();
    for e in store.list(&layout::tags_dir(repo)).await? {
        let key = format!("{}/{}/current/link", layout::tags_dir(repo), e.name);
        if let Some(m) = store.stat(&key).await? {
            tags.push((m.modified, e.name));
        }
    }
    // newest first; ties broken by name so runs are repeatable
    tags.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    for (i, (_, t)) in tags.iter().enumerate() {
        let by_count = rule.keep_last.is_some_and(|n| i < n);
        let by_name = keep_globs.iter().any(|g| g.matches(t, ""));
        if by_count || by_name {
            continue;
        }
        report.tags.push((repo.clone(), t.clone()));
        if !opts.dry_run {
            store.delete_all(&format!("{}/{t}", layout::tags_dir(repo))).await?;
        }
    }
    Ok(true)
}

/// A blob whose bytes no longer hash to its name.
pub struct Corrupt {
    pub digest: Digest,
    pub actual: Option<Digest>,
}

/// Re-hashes every stored blob; returns those whose content does not match their digest
/// (`actual: None` when the blob could not be read at all), and how many were checked.
pub async fn scrub(store: &Storage) -> io::Result<(Vec<Corrupt>, usize)> {
    use futures_util::StreamExt;
    let mut bad = Vec::new();
    let mut n = 0;
    for d in stored_blobs(store).await? {
        let Some((_, mut s)) = store.get(&layout::blob_data(&d), None).await? else {
            continue;
        };
        n += 1;
        let mut h = Hasher::new(d.algorithm());
        let mut failed = false;
        while let Some(c) = s.next().await {
            match c {
                Ok(c) => h.update(&c),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        let actual = (!failed).then(|| h.finish());
        if actual.as_ref() != Some(&d) {
            bad.push(Corrupt { digest: d, actual });
        }
    }
    Ok((bad, n))
}

/// Uploads of `repo` whose `startedat` is older than `max_age` (or missing), deleted with their
/// parts unless `dry_run`; returns `repo/<id>` of each.
async fn purge_repo_uploads(
    store: &Storage,
    repo: &RepoName,
    max_age: Duration,
    dry_run: bool,
) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in store.list(&layout::uploads_dir(repo)).await? {
        let dir = format!("{}/{}", layout::uploads_dir(repo), e.name);
        let old = match store.stat(&format!("{dir}/startedat")).await? {
            Some(m) => older_than(m.modified, max_age),
            // no start time: an upload being created this instant (its directory appears just
            // before `startedat`), or one whose record was lost; its newest file decides
            None => {
                let mut newest: Option<SystemTime> = None;
                let mut files = 0;
                for f in store.list(&dir).await? {
                    if let Some(m) = store.stat(&format!("{dir}/{}", f.name)).await? {
                        files += 1;
                        newest = newest.max(m.modified);
                    }
                }
                if files == 0 {
                    if !dry_run {
                        store.prune(&dir).await?;
                    }
                    continue;
                }
                older_than(newest, max_age)
            }
        };
        if old {
            out.push(format!("{repo}/{}", e.name));
            if !dry_run {
                store
                    .delete_all(&format!("{}/{}", layout::uploads_dir(repo), e.name))
                    .await?;
            }
        }
    }
    Ok(out)
}

/// Only the purge of abandoned uploads (what the server runs every `gc.upload_purge_interval`):
/// cheap, touches no blob or manifest.
pub async fn purge_uploads(store: &Storage, max_age: Duration) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    if let Storage::Lfs(l) = store {
        out.extend(l.purge_staging(max_age, false).await?);
    }
    for repo in repositories(store).await? {
        out.extend(purge_repo_uploads(store, &repo, max_age, false).await?);
    }
    Ok(out)
}

pub async fn run(store: &Storage, opts: Options) -> io::Result<Report> {
    let mut report = Report {
        dry_run: opts.dry_run,
        lfs: matches!(store, Storage::Lfs(_)),
        ..Default::default()
    };
    if let Storage::Lfs(l) = store {
        // bytes staged for an upload to LFS that a crash interrupted
        report
            .uploads
            .extend(l.purge_staging(opts.upload_max_age, opts.dry_run).await?);
    }
    let mut marked: BTreeSet<Digest> = BTreeSet::new();
    // the revisions this run keeps: any other found later was pushed while it ran
    let mut kept: BTreeSet<(RepoName, Digest)> = BTreeSet::new();
    for repo in repositories(store).await? {
        let retained = apply_retention(store, &repo, &opts, &mut report).await?;
        let revisions = revisions(store, &repo, opts.dry_run).await?;
        let mut manifests: BTreeMap<Digest, Manifest> = BTreeMap::new();
        for d in &revisions {
            if let Some(m) = load(store, d).await? {
                manifests.insert(d.clone(), m);
            }
        }
        let mut young = BTreeSet::new();
        let keep: BTreeSet<Digest> = if opts.delete_untagged || retained {
            // roots: tagged manifests; then index children and referrers of kept subjects
            let mut keep = BTreeSet::new();
            for e in store.list(&layout::tags_dir(&repo)).await? {
                let key = format!("{}/{}/current/link", layout::tags_dir(&repo), e.name);
                if report.tags.iter().any(|(r, t)| r == &repo && t == &e.name) {
                    // deleted by retention (in a dry run it is still there)
                    continue;
                }
                if let Some(b) = store.read(&key, 1024).await? {
                    if let Some(d) = Digest::parse(String::from_utf8_lossy(&b).trim()) {
                        keep.insert(d);
                    }
                }
            }
            loop {
                let before = keep.len();
                for (d, m) in &manifests {
                    if keep.contains(d) {
                        let children: Vec<Digest> = m.children.clone();
                        keep.extend(children);
                    } else if m.subject.as_ref().is_some_and(|s| keep.contains(s)) {
                        keep.insert(d.clone());
                    }
                }
                // children discovered this round may have been inserted while iterating
                if keep.len() == before {
                    break;
                }
            }
            let mut deleted = BTreeSet::new();
            for d in &revisions {
                if keep.contains(d) {
                    continue;
                }
                let link = layout::revision_link(&repo, d);
                let meta = store.stat(&link).await?;
                if !older_than(meta.and_then(|m| m.modified), opts.grace) {
                    // too young to go: it stays, and so do its blobs
                    young.insert(d.clone());
                    continue;
                }
                report.manifests.push((repo.clone(), d.clone()));
                if !opts.dry_run {
                    if let Some(s) = manifests.get(d).and_then(|m| m.subject.clone()) {
                        store.delete(&layout::referrer_link(&repo, &s, d)).await?;
                        store.prune(&layout::referrer_dir(&repo, &s, d)).await?;
                    }
                    store.delete(&link).await?;
                    store.prune(&layout::revision_dir(&repo, d)).await?;
                    deleted.insert(d.clone());
                }
            }
            // a push by tag running meanwhile may have named one of them (its tag written after
            // the tags were listed): put those back, with the children they need
            for d in needed_again(store, &repo, &keep, &deleted, &manifests).await? {
                let link = bytes::Bytes::from(d.to_string());
                store.put(&layout::revision_link(&repo, &d), link.clone()).await?;
                if let Some(s) = manifests.get(&d).and_then(|m| m.subject.clone()) {
                    store.put(&layout::referrer_link(&repo, &s, &d), link).await?;
                }
                report.manifests.retain(|(r, x)| !(r == &repo && x == &d));
                young.insert(d);
            }
            keep
        } else {
            revisions.iter().cloned().collect()
        };
        for (d, m) in &manifests {
            if keep.contains(d) || young.contains(d) {
                marked.insert(d.clone());
                marked.extend(m.blobs.iter().cloned());
            }
        }
        // only what was read: a revision whose bytes were missing a moment ago (being pushed
        // again) is read again before the sweep
        for d in revisions.iter().filter(|d| keep.contains(*d) || young.contains(*d)) {
            if manifests.contains_key(d) {
                kept.insert((repo.clone(), d.clone()));
            }
        }
        // abandoned uploads: a week old, as distribution's purge does
        report
            .uploads
            .extend(purge_repo_uploads(store, &repo, opts.upload_max_age, opts.dry_run).await?);
    }
    // sweep
    let mut candidates = Vec::new();
    for d in stored_blobs(store).await? {
        if marked.contains(&d) {
            continue;
        }
        let Some(meta) = store.stat(&layout::blob_data(&d)).await? else {
            continue;
        };
        if !older_than(meta.modified, opts.grace) {
            continue;
        }
        if opts.dry_run {
            report.blobs.push((d, meta.size));
        } else {
            candidates.push(d);
        }
    }
    if !candidates.is_empty() {
        sweep(store, candidates, &kept, &opts, &mut report).await?;
    }
    if !opts.dry_run && !report.blobs.is_empty() {
        // layer links to freed blobs would only answer BLOB_UNKNOWN; drop them
        let freed: BTreeSet<&Digest> = report.blobs.iter().map(|(d, _)| d).collect();
        for repo in repositories(store).await? {
            for d in digests_in(store, |a| layout::layers_dir(&repo, a)).await? {
                if !freed.contains(&d) || store.stat(&layout::blob_data(&d)).await?.is_some() {
                    continue;
                }
                let link = layout::layer_link(&repo, &d);
                store.delete(&link).await?;
                if store.stat(&layout::blob_data(&d)).await?.is_some() {
                    // pushed again meanwhile, and linked by that upload: keep its link
                    store.put(&link, bytes::Bytes::from(d.to_string())).await?;
                } else {
                    store.prune(&layout::layer_dir(&repo, &d)).await?;
                }
            }
        }
    }
    Ok(report)
}
