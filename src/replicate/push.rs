//! Push rules: every change here copied to the remote, in order, from the spool.

use super::remote::RemoteError;
use super::{cosign_tags, is_job, matches, now, CopyError, Job, Rule, CHUNK};
use crate::config::replication::Direction;
use crate::registry::Registry;
use crate::types::names::{Digest, RepoName};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

impl Rule {
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

    /// The tags of `repo` this rule copies that the remote lacks or has as another manifest,
    /// with the manifest each names here (none when the rule does not cover `repo`).
    async fn stale_tags(&self, reg: &Registry, repo: &RepoName) -> Result<Vec<(String, Digest)>, String> {
        if !matches(&self.repos, repo.as_str()) {
            return Ok(Vec::new());
        }
        let Some(target) = self.renamed(repo.as_str(), false) else {
            return Ok(Vec::new());
        };
        let mut stale = Vec::new();
        for t in reg.tag_names(repo).await.map_err(|e| e.to_string())? {
            if !matches(&self.tags, &t) {
                continue;
            }
            let Some(d) = reg.tag_target(repo, &t).await.map_err(|e| e.to_string())? else {
                continue;
            };
            let there = self
                .remote
                .manifest_digest(&target, &t)
                .await
                .map_err(|e| e.to_string())?;
            if there.as_deref() != Some(&d.to_string()) {
                stale.push((t, d));
            }
        }
        Ok(stale)
    }

    /// Queues every tag here that the remote does not have as it is here.
    pub(super) async fn reconcile(&self, reg: &Registry) -> Result<usize, String> {
        let mut queued = 0;
        for repo in reg.repositories().await.map_err(|e| e.to_string())? {
            for (t, d) in self.stale_tags(reg, &repo).await? {
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
        Ok(queued)
    }

    /// One full pass (`regate replicate run`): a push rule copies every tag the remote lacks or
    /// has otherwise; a pull rule copies from the remote. Returns the number of tags copied.
    pub async fn full_pass(&self, reg: &Registry) -> Result<usize, String> {
        match self.cfg.direction {
            Direction::Pull => self.pull_pass(reg).await,
            Direction::Push => {
                let mut copied = 0;
                for repo in reg.repositories().await.map_err(|e| e.to_string())? {
                    for (t, d) in self.stale_tags(reg, &repo).await? {
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
pub(super) async fn push_worker(rule: Arc<Rule>, reg: Arc<Registry>) {
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
