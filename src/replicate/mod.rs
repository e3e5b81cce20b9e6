//! Replication to and from other registries (`replication:`).
//!
//! **Push rules** are event-driven: every manifest push, tag and (with `deletes`) delete here is
//! written to the rule's spool on disk before the client is answered, like a webhook; one worker
//! per rule copies the events in order (a delete never overtakes the push it follows), retrying
//! with backoff while the remote is down, and a restart resumes from the spool. A copy moves the
//! whole image: index children first, then blobs the remote lacks (streamed, never held in
//! memory; mounted when the remote already holds them in another repository), the manifest, the
//! referrers whose subject it is and cosign's `sha256-<hex>.sig/.att/.sbom` tags. Every
//! `interval` a reconcile compares each tag with the remote and queues what an outage left
//! behind.
//!
//! **Pull rules** copy the remote's new and changed tags here every `interval`, never deleting
//! anything local: what was copied stays when the remote goes away.

pub mod remote;

use crate::auth::policy::Glob;
use crate::config::replication::{Direction, ReplicationConfig};
use crate::registry::{Event, Registry};
use crate::types::names::{Digest, Reference, RepoName, Tag};
use remote::{Remote, RemoteError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// One queued change, as spooled on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    /// `push` or `delete`.
    action: String,
    repo: String,
    digest: String,
    #[serde(default)]
    tag: Option<String>,
    /// Unix seconds the change happened here.
    at: u64,
}

/// What `regate replicate status`, the web page and `/metrics` show for a rule.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub direction: String,
    pub url: String,
    pub queued: usize,
    pub last_success: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
    /// Seconds between a change here and its copy there, for the last copy.
    pub lag_seconds: Option<u64>,
    pub copied: u64,
    pub failed: u64,
}

pub struct Rule {
    cfg: ReplicationConfig,
    remote: Remote,
    repos: Option<Vec<Glob>>,
    tags: Option<Vec<Glob>>,
    dir: PathBuf,
    queued: AtomicUsize,
    wake: Notify,
    status: Mutex<Status>,
    seq: AtomicU64,
    /// Where the remote holds a blob already (digest -> remote repository), for mounts.
    seen: moka::sync::Cache<String, String>,
}

/// Chunk size of uploads to remotes that refuse a blob in one request.
const CHUNK: usize = 16 << 20;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn matches(globs: &Option<Vec<Glob>>, s: &str) -> bool {
    globs.as_ref().is_none_or(|g| g.iter().any(|g| g.matches(s, "")))
}

/// cosign's tags for the artifacts of `d` (signature, attestation, SBOM).
fn cosign_tags(d: &str) -> Vec<String> {
    let base = d.replacen(':', "-", 1);
    ["sig", "att", "sbom"].iter().map(|s| format!("{base}.{s}")).collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a copy failed: worth retrying, or not.
enum CopyError {
    Retry(String),
    Drop(String),
}

impl From<RemoteError> for CopyError {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::Failed(m) => CopyError::Retry(m),
            RemoteError::Refused(m) => CopyError::Drop(m),
            RemoteError::NotFound => CopyError::Drop("not found on the remote".into()),
        }
    }
}

impl From<crate::registry::error::ApiError> for CopyError {
    fn from(e: crate::registry::error::ApiError) -> Self {
        CopyError::Retry(format!("local registry: {e}"))
    }
}

impl Rule {
    pub fn new(cfg: &ReplicationConfig, spool: &Path) -> Result<Self, String> {
        let at = format!("replication {}", cfg.name);
        let remote = Remote::new(
            &cfg.url,
            cfg.username.clone(),
            cfg.password.as_ref().map(|p| p.expose().to_owned()),
            cfg.tls_ca.as_deref(),
        )
        .map_err(|e| format!("{at}: {e}"))?;
        let dir = spool.join(&cfg.name);
        std::fs::create_dir_all(dir.join("queue")).map_err(|e| format!("{at}: {}: {e}", dir.display()))?;
        let queued = std::fs::read_dir(dir.join("queue"))
            .map(|rd| rd.filter(|e| e.as_ref().is_ok_and(|e| is_job(&e.path()))).count())
            .unwrap_or(0);
        let mut status: Status = std::fs::read(dir.join("status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        status.name = cfg.name.clone();
        status.direction = match cfg.direction {
            Direction::Push => "push".into(),
            Direction::Pull => "pull".into(),
        };
        status.url = cfg.url.clone();
        status.queued = queued;
        let globs = |g: &Option<Vec<String>>| g.as_ref().map(|v| v.iter().map(|p| Glob::new(p)).collect());
        Ok(Rule {
            repos: globs(&cfg.repositories),
            tags: globs(&cfg.tags),
            cfg: cfg.clone(),
            remote,
            dir,
            queued: AtomicUsize::new(queued),
            wake: Notify::new(),
            status: Mutex::new(status),
            seq: AtomicU64::new(0),
            seen: moka::sync::Cache::builder().max_capacity(100_000).build(),
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The repository name on the other side (`rename` applied; `back` for pull rules).
    fn renamed(&self, repo: &str, back: bool) -> Option<String> {
        let Some(r) = &self.cfg.rename else {
            return Some(repo.to_owned());
        };
        let (from, to) = if back { (&r.to, &r.from) } else { (&r.from, &r.to) };
        let out = match repo.strip_prefix(from.as_str()) {
            Some(rest) => format!("{to}{rest}"),
            None => repo.to_owned(),
        };
        RepoName::parse(&out).map(|n| n.as_str().to_owned())
    }

    pub fn status(&self) -> Status {
        let mut s = lock(&self.status).clone();
        s.queued = self.queued.load(Ordering::Relaxed);
        s
    }

    fn record(&self, ok: Result<u64, String>) {
        let mut s = lock(&self.status);
        match ok {
            Ok(at) => {
                s.last_success = Some(now());
                s.lag_seconds = Some(now().saturating_sub(at));
                s.copied += 1;
            }
            Err(e) => {
                s.last_error = Some(e);
                s.last_error_at = Some(now());
                s.failed += 1;
            }
        }
        s.queued = self.queued.load(Ordering::Relaxed);
        let snapshot = s.clone();
        drop(s);
        if let Ok(b) = serde_json::to_vec_pretty(&snapshot) {
            let tmp = self.dir.join(".status.json.tmp");
            if std::fs::write(&tmp, b).is_ok() {
                let _ = std::fs::rename(&tmp, self.dir.join("status.json"));
            }
        }
    }

    fn wants(&self, ev: &Event) -> bool {
        if self.cfg.direction != Direction::Push || !matches(&self.repos, ev.repo.as_str()) {
            return false;
        }
        match (ev.action, &ev.tag) {
            // a blob alone is copied with the manifest that names it
            ("push", _) if ev.media_type == "application/octet-stream" => false,
            ("push", Some(t)) => matches(&self.tags, t) || is_cosign_tag(t),
            // pushed by digest: referrers and index children; the worker decides
            ("push", None) => true,
            ("delete", Some(t)) => self.cfg.deletes && matches(&self.tags, t),
            ("delete", None) => self.cfg.deletes,
            _ => false,
        }
    }

    async fn spool(&self, job: &Job) {
        if self.queued.load(Ordering::Relaxed) >= self.cfg.queue_size {
            tracing::warn!(rule = %self.cfg.name, "replication queue full; the next reconcile repairs what is dropped");
            return;
        }
        let Ok(body) = serde_json::to_vec(job) else { return };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let name = format!("{millis:016}-{seq:08}.json");
        let q = self.dir.join("queue");
        let tmp = q.join(format!(".{name}.tmp"));
        let res = async {
            tokio::fs::write(&tmp, &body).await?;
            tokio::fs::rename(&tmp, q.join(&name)).await
        }
        .await;
        match res {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
                self.wake.notify_one();
            }
            Err(e) => tracing::error!(rule = %self.cfg.name, error = %e, "cannot spool a replication event"),
        }
    }

    // ---- push: here -> remote

    /// Copies the manifest `d` of `repo` (and everything it names) to the remote under
    /// `reference` (a tag, or the digest itself).
    async fn push_manifest(
        &self,
        reg: &Registry,
        repo: &RepoName,
        d: &Digest,
        reference: &str,
    ) -> Result<(), CopyError> {
        let Some(target) = self.renamed(repo.as_str(), false) else {
            return Err(CopyError::Drop(format!("{repo} has no valid name after rename")));
        };
        Box::pin(self.push_graph(reg, repo, &target, d, 0)).await?;
        let Some(m) = reg.repo_manifest(repo, d).await? else {
            return Err(CopyError::Drop(format!("{repo}@{d} is no longer here")));
        };
        if reference != d.to_string() {
            self.remote
                .put_manifest(&target, reference, m.bytes.clone(), &m.media_type)
                .await?;
        }
        // the artifacts that refer to it: OCI referrers and cosign's tags
        for r in reg.referrer_digests(repo, d).await? {
            Box::pin(self.push_graph(reg, repo, &target, &r, 0)).await?;
        }
        for t in cosign_tags(&d.to_string()) {
            if let Some(sd) = reg.tag_target(repo, &t).await? {
                if self.remote.manifest_digest(&target, &t).await?.as_deref() != Some(&sd.to_string()) {
                    Box::pin(self.push_graph(reg, repo, &target, &sd, 0)).await?;
                    if let Some(sm) = reg.repo_manifest(repo, &sd).await? {
                        self.remote
                            .put_manifest(&target, &t, sm.bytes.clone(), &sm.media_type)
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Puts `d` (by digest) on the remote with its children and blobs, unless it is there.
    async fn push_graph(
        &self,
        reg: &Registry,
        repo: &RepoName,
        target: &str,
        d: &Digest,
        depth: u8,
    ) -> Result<(), CopyError> {
        if depth > 8 {
            return Err(CopyError::Drop("manifests nested too deep".into()));
        }
        let ds = d.to_string();
        if self.remote.manifest_digest(target, &ds).await?.as_deref() == Some(ds.as_str()) {
            return Ok(());
        }
        let Some(m) = reg.repo_manifest(repo, d).await? else {
            return Err(CopyError::Drop(format!("{repo}@{d} is no longer here")));
        };
        for c in &m.children {
            Box::pin(self.push_graph(reg, repo, target, c, depth + 1)).await?;
        }
        let mut seen = std::collections::HashSet::new();
        for b in m.blobs.iter().filter(|b| seen.insert(*b)) {
            self.push_blob(reg, target, b).await?;
        }
        self.remote
            .put_manifest(target, &ds, m.bytes.clone(), &m.media_type)
            .await?;
        Ok(())
    }

    async fn push_blob(&self, reg: &Registry, target: &str, d: &Digest) -> Result<(), CopyError> {
        let ds = d.to_string();
        if self.remote.has_blob(target, &ds).await? {
            self.seen.insert(ds, target.to_owned());
            return Ok(());
        }
        if let Some(from) = self.seen.get(&ds).filter(|f| f != target) {
            if self.remote.mount_blob(target, &ds, &from).await? {
                return Ok(());
            }
        }
        let Some((size, stream)) = reg.blob_stream(d).await? else {
            // a non-distributable layer that was never pushed: the remote's problem to find
            tracing::warn!(rule = %self.cfg.name, digest = %d, "blob not stored here; not copied");
            return Ok(());
        };
        match self.remote.put_blob(target, &ds, size, stream).await {
            // a remote that takes no large single request (413): in chunks
            Err(RemoteError::Refused(m)) if m.contains("413") => {
                let Some((_, stream)) = reg.blob_stream(d).await? else {
                    return Err(CopyError::Drop(format!("blob {d} vanished here")));
                };
                self.remote.put_blob_chunked(target, &ds, stream, CHUNK).await?;
            }
            r => r?,
        }
        self.seen.insert(ds, target.to_owned());
        Ok(())
    }

    async fn run_job(&self, reg: &Registry, job: &Job) -> Result<(), CopyError> {
        let (Some(repo), Some(d)) = (RepoName::parse(&job.repo), Digest::parse(&job.digest)) else {
            return Err(CopyError::Drop("malformed event".into()));
        };
        let Some(target) = self.renamed(repo.as_str(), false) else {
            return Err(CopyError::Drop(format!("{repo} has no valid name after rename")));
        };
        match job.action.as_str() {
            "push" => {
                if job.tag.is_none() {
                    // by digest: referrers are copied on their own (their subject may be there
                    // already); index children come with their index
                    match reg.repo_manifest(&repo, &d).await? {
                        Some(m) if m.subject.is_some() => {}
                        _ => return Ok(()),
                    }
                }
                // the tag may have moved on since: copy what it names now, in order
                let reference = job.tag.clone().unwrap_or_else(|| d.to_string());
                let d = match &job.tag {
                    Some(t) => match reg.tag_target(&repo, t).await? {
                        Some(now) => now,
                        None => return Ok(()),
                    },
                    None => d,
                };
                self.push_manifest(reg, &repo, &d, &reference).await
            }
            "delete" => {
                let reference = job.tag.clone().unwrap_or_else(|| d.to_string());
                match self.remote.delete_manifest(&target, &reference).await {
                    Ok(()) => Ok(()),
                    // distribution 2.x cannot delete a tag alone
                    Err(RemoteError::Refused(m)) if job.tag.is_some() => {
                        tracing::warn!(rule = %self.cfg.name, repo = %target, error = %m, "the remote cannot delete the tag; left there");
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                }
            }
            other => Err(CopyError::Drop(format!("unknown action {other}"))),
        }
    }

    /// Queues every tag here that the remote does not have as it is here.
    async fn reconcile(&self, reg: &Registry) -> Result<usize, String> {
        let mut queued = 0;
        for repo in reg.repositories().await.map_err(|e| e.to_string())? {
            if !matches(&self.repos, repo.as_str()) {
                continue;
            }
            let Some(target) = self.renamed(repo.as_str(), false) else {
                continue;
            };
            for t in reg.tag_names(&repo).await.map_err(|e| e.to_string())? {
                if !matches(&self.tags, &t) {
                    continue;
                }
                let Some(d) = reg.tag_target(&repo, &t).await.map_err(|e| e.to_string())? else {
                    continue;
                };
                let there = self
                    .remote
                    .manifest_digest(&target, &t)
                    .await
                    .map_err(|e| e.to_string())?;
                if there.as_deref() != Some(&d.to_string()) {
                    self.spool(&Job {
                        action: "push".into(),
                        repo: repo.as_str().to_owned(),
                        digest: d.to_string(),
                        tag: Some(t),
                        at: now(),
                    })
                    .await;
                    queued += 1;
                }
            }
        }
        Ok(queued)
    }

    // ---- pull: remote -> here

    async fn pull_graph(
        &self,
        reg: &Registry,
        source: &str,
        local: &RepoName,
        d: &str,
        depth: u8,
    ) -> Result<(), CopyError> {
        if depth > 8 {
            return Err(CopyError::Drop("manifests nested too deep".into()));
        }
        let Some(dg) = Digest::parse(d) else {
            return Err(CopyError::Drop(format!("the remote named an invalid digest {d:?}")));
        };
        if reg.repo_manifest(local, &dg).await?.is_some() {
            return Ok(());
        }
        let m = self.remote.get_manifest(source, d).await?;
        let parsed = crate::registry::Manifest::parse(m.bytes.clone(), m.content_type.as_deref())
            .map_err(|e| CopyError::Drop(format!("remote manifest {source}@{d}: {e}")))?;
        if parsed.digest != dg {
            return Err(CopyError::Drop(format!("the remote's {source}@{d} has another digest")));
        }
        for c in &parsed.children {
            Box::pin(self.pull_graph(reg, source, local, &c.to_string(), depth + 1)).await?;
        }
        let mut seen = std::collections::HashSet::new();
        for b in parsed.blobs.iter().filter(|b| seen.insert(*b)) {
            if !reg.has_blob(local, b).await? {
                let stream = self.remote.get_blob(source, &b.to_string()).await?;
                reg.import_blob(local, b, stream)
                    .await
                    .map_err(|e| CopyError::Retry(e.to_string()))?;
            }
        }
        reg.import_manifest(local, &Reference::Digest(dg), m.bytes, m.content_type.as_deref())
            .await
            .map_err(|e| CopyError::Drop(format!("storing {local}@{d}: {e}")))?;
        Ok(())
    }

    /// Copies the remote's tag `t` of `source` here when it differs.
    async fn pull_tag(&self, reg: &Registry, source: &str, t: &str) -> Result<bool, CopyError> {
        let Some(local) = self.renamed(source, true).and_then(|n| RepoName::parse(&n)) else {
            return Ok(false);
        };
        let Some(d) = self.remote.manifest_digest(source, t).await? else {
            return Ok(false);
        };
        if reg.tag_target(&local, t).await?.map(|x| x.to_string()).as_deref() == Some(d.as_str()) {
            return Ok(false);
        }
        self.pull_graph(reg, source, &local, &d, 0).await?;
        for r in self.remote.referrers(source, &d).await? {
            // referrers are extras: one that cannot be copied does not hold the image back
            if let Err(CopyError::Retry(e) | CopyError::Drop(e)) = self.pull_graph(reg, source, &local, &r, 0).await {
                tracing::warn!(rule = %self.cfg.name, repo = %source, referrer = %r, error = %e, "referrer not copied");
            }
        }
        let m = self.remote.get_manifest(source, &d).await?;
        let Some(tag) = Tag::parse(t) else { return Ok(false) };
        reg.import_manifest(&local, &Reference::Tag(tag), m.bytes, m.content_type.as_deref())
            .await
            .map_err(|e| CopyError::Drop(format!("tagging {local}:{t}: {e}")))?;
        tracing::info!(target: "regate::audit", event = "replicated", rule = %self.cfg.name, direction = "pull",
            repo = %local, tag = t, digest = %d, "copied from the remote");
        Ok(true)
    }

    /// One pull pass over the remote; the number of tags copied.
    async fn pull_pass(&self, reg: &Registry) -> Result<usize, String> {
        let literal: Option<Vec<String>> = self.cfg.repositories.as_ref().and_then(|r| {
            r.iter()
                .all(|p| !p.contains('*') && !p.contains('?'))
                .then(|| r.clone())
        });
        let repos = match literal {
            Some(r) => r,
            None => self
                .remote
                .catalog()
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|r| matches(&self.repos, r))
                .collect(),
        };
        let mut copied = 0;
        let mut first_error = None;
        for repo in repos {
            let tags = match self.remote.tags(&repo).await {
                Ok(t) => t,
                Err(e) => {
                    first_error.get_or_insert(e.to_string());
                    continue;
                }
            };
            for t in tags.iter().filter(|t| matches(&self.tags, t) || is_cosign_tag(t)) {
                match self.pull_tag(reg, &repo, t).await {
                    Ok(true) => {
                        copied += 1;
                        self.record(Ok(now()));
                    }
                    Ok(false) => {}
                    Err(CopyError::Retry(e) | CopyError::Drop(e)) => {
                        tracing::warn!(rule = %self.cfg.name, repo = %repo, tag = %t, error = %e, "pull replication failed");
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(copied),
        }
    }

    /// One full pass (`regate replicate run`): a push rule copies every tag the remote lacks or
    /// has otherwise; a pull rule copies from the remote. Returns the number of tags copied.
    pub async fn full_pass(&self, reg: &Registry) -> Result<usize, String> {
        match self.cfg.direction {
            Direction::Pull => self.pull_pass(reg).await,
            Direction::Push => {
                let mut copied = 0;
                for repo in reg.repositories().await.map_err(|e| e.to_string())? {
                    if !matches(&self.repos, repo.as_str()) {
                        continue;
                    }
                    for t in reg.tag_names(&repo).await.map_err(|e| e.to_string())? {
                        if !matches(&self.tags, &t) {
                            continue;
                        }
                        let Some(d) = reg.tag_target(&repo, &t).await.map_err(|e| e.to_string())? else {
                            continue;
                        };
                        let target = self.renamed(repo.as_str(), false).unwrap_or_default();
                        if self
                            .remote
                            .manifest_digest(&target, &t)
                            .await
                            .map_err(|e| e.to_string())?
                            .as_deref()
                            == Some(&d.to_string())
                        {
                            continue;
                        }
                        match self.push_manifest(reg, &repo, &d, &t).await {
                            Ok(()) => {
                                copied += 1;
                                self.record(Ok(now()));
                            }
                            Err(CopyError::Retry(e) | CopyError::Drop(e)) => {
                                self.record(Err(e.clone()));
                                return Err(e);
                            }
                        }
                    }
                }
                Ok(copied)
            }
        }
    }
}

fn is_cosign_tag(t: &str) -> bool {
    t.starts_with("sha256-") && (t.ends_with(".sig") || t.ends_with(".att") || t.ends_with(".sbom"))
}

fn is_job(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".json") && !n.starts_with('.'))
}

async fn oldest(dir: &Path) -> Option<PathBuf> {
    let mut rd = tokio::fs::read_dir(dir).await.ok()?;
    let mut best: Option<PathBuf> = None;
    while let Ok(Some(e)) = rd.next_entry().await {
        let p = e.path();
        if is_job(&p) && best.as_ref().is_none_or(|b| p < *b) {
            best = Some(p);
        }
    }
    best
}

/// The push worker: the spool in order, each event until it is copied (or cannot ever be).
async fn push_worker(rule: Arc<Rule>, reg: Arc<Registry>) {
    let mut backoff = Duration::from_secs(1);
    let queue = rule.dir.join("queue");
    loop {
        let Some(file) = oldest(&queue).await else {
            let _ = tokio::time::timeout(Duration::from_secs(5), rule.wake.notified()).await;
            continue;
        };
        let job: Option<Job> = tokio::fs::read(&file)
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let outcome = match &job {
            Some(j) => rule.run_job(&reg, j).await,
            None => Err(CopyError::Drop("unreadable spool file".into())),
        };
        let done = match outcome {
            Ok(()) => {
                if let Some(j) = &job {
                    tracing::info!(target: "regate::audit", event = "replicated", rule = %rule.cfg.name, direction = "push",
                        action = %j.action, repo = %j.repo, tag = j.tag.as_deref().unwrap_or("-"), digest = %j.digest, "copied to the remote");
                }
                rule.record(Ok(job.as_ref().map_or(now(), |j| j.at)));
                backoff = Duration::from_secs(1);
                true
            }
            Err(CopyError::Drop(e)) => {
                tracing::error!(rule = %rule.cfg.name, error = %e, "replication event dropped");
                rule.record(Err(e));
                true
            }
            Err(CopyError::Retry(e)) => {
                tracing::warn!(rule = %rule.cfg.name, error = %e, retry_in = ?backoff, "replication failed; retrying");
                rule.record(Err(e));
                let jitter = Duration::from_millis(u64::from(rand::random::<u16>() % 250));
                tokio::time::sleep(backoff + jitter).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
                false
            }
        };
        if done {
            let _ = tokio::fs::remove_file(&file).await;
            let _ = rule
                .queued
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
        }
    }
}

/// The schedule: reconcile for push rules, the pull pass for pull rules.
async fn scheduler(rule: Arc<Rule>, reg: Arc<Registry>) {
    let every = Duration::from_secs(rule.cfg.interval.max(1));
    loop {
        let r = match rule.cfg.direction {
            Direction::Push => rule.reconcile(&reg).await,
            Direction::Pull => rule.pull_pass(&reg).await,
        };
        if let Err(e) = r {
            tracing::warn!(rule = %rule.cfg.name, error = %e, "replication pass failed; next in {every:?}");
            rule.record(Err(e));
        }
        tokio::time::sleep(every).await;
    }
}

pub struct Replicator {
    rules: Vec<Arc<Rule>>,
}

impl Replicator {
    /// The rules of `cfgs`, with their spools under `spool` (not started).
    pub fn new(cfgs: &[ReplicationConfig], spool: &Path) -> Result<Self, String> {
        let rules = cfgs
            .iter()
            .map(|c| Rule::new(c, spool).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Replicator { rules })
    }

    /// Starts the workers and schedules on `reg` (events spooled by an earlier run go first).
    pub fn start(self, reg: Arc<Registry>) -> Arc<Self> {
        for r in &self.rules {
            if r.cfg.direction == Direction::Push {
                tokio::spawn(push_worker(r.clone(), reg.clone()));
            }
            tokio::spawn(scheduler(r.clone(), reg.clone()));
        }
        Arc::new(self)
    }

    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    /// Spools a registry event for every push rule that wants it; on disk when this returns.
    pub async fn publish(&self, ev: &Event) {
        for r in self.rules.iter().filter(|r| r.wants(ev)) {
            r.spool(&Job {
                action: ev.action.to_owned(),
                repo: ev.repo.as_str().to_owned(),
                digest: ev.digest.to_string(),
                tag: ev.tag.clone(),
                at: now(),
            })
            .await;
        }
    }
}

impl std::fmt::Debug for Replicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicator").field("rules", &self.rules.len()).finish()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

/// The rules' state at each scrape of `/metrics` (rule names come from the config).
impl prometheus_client::collector::Collector for Replicator {
    fn encode(&self, mut enc: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;
        let rules: Vec<(RuleLabel, Status)> = self
            .rules
            .iter()
            .map(|r| {
                (
                    RuleLabel {
                        rule: r.cfg.name.clone(),
                    },
                    r.status(),
                )
            })
            .collect();
        type Field = fn(&Status) -> u64;
        let gauges: [(&str, &str, Field); 3] = [
            (
                "regate_replication_queue_depth",
                "Changes waiting to be copied, by rule.",
                |s| s.queued as u64,
            ),
            (
                "regate_replication_last_success_timestamp_seconds",
                "Time of the last successful copy, by rule.",
                |s| s.last_success.unwrap_or(0),
            ),
            (
                "regate_replication_lag_seconds",
                "Seconds between a change and its copy, for the last copy, by rule.",
                |s| s.lag_seconds.unwrap_or(0),
            ),
        ];
        for (name, help, f) in gauges {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (l, s) in &rules {
                ConstGauge::new(f(s)).encode(m.encode_family(l)?)?;
            }
        }
        // counters are named without `_total`: the encoders add it to the samples
        let counters: [(&str, &str, Field); 2] = [
            ("regate_replication_copies", "Copies done, by rule.", |s| s.copied),
            (
                "regate_replication_failures",
                "Copy attempts that failed, by rule.",
                |s| s.failed,
            ),
        ];
        for (name, help, f) in counters {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (l, s) in &rules {
                ConstCounter::new(f(s)).encode(m.encode_family(l)?)?;
            }
        }
        Ok(())
    }
}
