//! Garbage collection while serving: mark every blob that a kept manifest references, then
//! delete blobs that nothing marks and that are older than the grace period (so a push whose
//! manifest has not arrived yet keeps its layers). With `delete_untagged`, manifests that no
//! tag, kept index or kept subject reaches are dropped first.

use crate::registry::names::{Digest, RepoName};
use crate::registry::Manifest;
use crate::storage::{layout, Storage};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::time::{Duration, SystemTime};

pub struct Options {
    pub dry_run: bool,
    pub delete_untagged: bool,
    pub grace: Duration,
}

#[derive(Default)]
pub struct Report {
    pub dry_run: bool,
    pub blobs: Vec<(Digest, u64)>,
    pub manifests: Vec<(RepoName, Digest)>,
    pub uploads: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run { "would delete" } else { "deleted" };
        for (r, d) in &self.manifests {
            writeln!(f, "{verb} manifest {r}@{d}")?;
        }
        for (d, n) in &self.blobs {
            writeln!(f, "{verb} blob {d} ({n} bytes)")?;
        }
        for u in &self.uploads {
            writeln!(f, "{verb} abandoned upload {u}")?;
        }
        let bytes: u64 = self.blobs.iter().map(|(_, n)| n).sum();
        writeln!(
            f,
            "{}: {} blobs ({} bytes), {} manifests, {} uploads{}",
            if self.dry_run { "dry run" } else { "done" },
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

async fn digests_in(store: &Storage, dir: &str) -> io::Result<Vec<Digest>> {
    Ok(store
        .list(dir)
        .await?
        .into_iter()
        .filter_map(|e| Digest::parse(&format!("sha256:{}", e.name)))
        .collect())
}

async fn load(store: &Storage, d: &Digest) -> io::Result<Option<Manifest>> {
    let Some(b) = store.read(&layout::blob_data(d), 64 << 20).await? else {
        return Ok(None);
    };
    Ok(Manifest::parse(b, None).ok())
}

pub async fn run(store: &Storage, opts: Options) -> io::Result<Report> {
    let mut report = Report {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let mut marked: BTreeSet<Digest> = BTreeSet::new();
    for repo in repositories(store).await? {
        let revisions = digests_in(store, &layout::revisions_dir(&repo)).await?;
        let mut manifests: BTreeMap<Digest, Manifest> = BTreeMap::new();
        for d in &revisions {
            if let Some(m) = load(store, d).await? {
                manifests.insert(d.clone(), m);
            }
        }
        let keep: BTreeSet<Digest> = if opts.delete_untagged {
            // roots: tagged manifests; then index children and referrers of kept subjects
            let mut keep = BTreeSet::new();
            for e in store.list(&layout::tags_dir(&repo)).await? {
                let key = format!("{}/{}/current/link", layout::tags_dir(&repo), e.name);
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
            for d in &revisions {
                if keep.contains(d) {
                    continue;
                }
                let link = layout::revision_link(&repo, d);
                let meta = store.stat(&link).await?;
                if !older_than(meta.and_then(|m| m.modified), opts.grace) {
                    continue;
                }
                report.manifests.push((repo.clone(), d.clone()));
                if !opts.dry_run {
                    if let Some(s) = manifests.get(d).and_then(|m| m.subject.clone()) {
                        store.delete(&layout::referrer_link(&repo, &s, d)).await?;
                    }
                    store.delete(&link).await?;
                }
            }
            keep
        } else {
            revisions.iter().cloned().collect()
        };
        for (d, m) in &manifests {
            if keep.contains(d) {
                marked.insert(d.clone());
                marked.extend(m.blobs.iter().cloned());
            }
        }
        // abandoned uploads: a week old, as distribution's purge does
        for e in store.list(&layout::uploads_dir(&repo)).await? {
            let key = format!("{}/{}/startedat", layout::uploads_dir(&repo), e.name);
            let old = store
                .stat(&key)
                .await?
                .map(|m| older_than(m.modified, Duration::from_secs(7 * 86_400).max(opts.grace)));
            if old != Some(false) {
                report.uploads.push(format!("{repo}/{}", e.name));
                if !opts.dry_run {
                    store
                        .delete_all(&format!("{}/{}", layout::uploads_dir(&repo), e.name))
                        .await?;
                }
            }
        }
    }
    // sweep
    let blobs_root = format!("{}/blobs/sha256", layout::ROOT);
    for prefix in store.list(&blobs_root).await? {
        for e in store.list(&format!("{blobs_root}/{}", prefix.name)).await? {
            let Some(d) = Digest::parse(&format!("sha256:{}", e.name)) else {
                continue;
            };
            if marked.contains(&d) {
                continue;
            }
            let Some(meta) = store.stat(&layout::blob_data(&d)).await? else {
                continue;
            };
            if !older_than(meta.modified, opts.grace) {
                continue;
            }
            report.blobs.push((d.clone(), meta.size));
            if !opts.dry_run {
                store.delete_all(&layout::blob_dir(&d)).await?;
            }
        }
    }
    if !opts.dry_run && !report.blobs.is_empty() {
        // layer links to freed blobs would only answer BLOB_UNKNOWN; drop them
        let freed: BTreeSet<&Digest> = report.blobs.iter().map(|(d, _)| d).collect();
        for repo in repositories(store).await? {
            for d in digests_in(store, &layout::layers_dir(&repo)).await? {
                if freed.contains(&d) {
                    store.delete(&layout::layer_link(&repo, &d)).await?;
                }
            }
        }
    }
    Ok(report)
}
