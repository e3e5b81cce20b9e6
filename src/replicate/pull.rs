//! Pull rules: the remote's new and changed tags copied here; nothing local is ever deleted.

use super::{is_cosign_tag, matches, now, CopyError, Rule};
use crate::registry::Registry;
use crate::types::names::{Digest, Reference, RepoName, Tag};

impl Rule {
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
    pub(super) async fn pull_pass(&self, reg: &Registry) -> Result<usize, String> {
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
}
