//! Vulnerability scans: the gate on a report's findings, reports for the pages and the API,
//! scans on demand and the schedule that renews them.

use super::*;

impl Trust {
    /// A digest's scan in a few words for the web pages (`2 critical, 1 high`, `no findings`,
    /// `not scanned`); `None` without a scanner.
    pub async fn scan_summary(&self, d: &Digest) -> Option<String> {
        let s = self.scanner.as_ref()?;
        let Some((r, _)) = s.findings(d).await else {
            return Some("not scanned".into());
        };
        let mut counts: Vec<(String, usize)> = Vec::new();
        for sev in ["critical", "high", "medium", "low"] {
            let n = r
                .findings
                .iter()
                .filter(|v| v.severity.eq_ignore_ascii_case(sev))
                .count();
            if n > 0 {
                counts.push((sev.to_owned(), n));
            }
        }
        Some(if counts.is_empty() {
            "no findings".into()
        } else {
            counts
                .iter()
                .map(|(s, n)| format!("{n} {s}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
    }

    /// How often [`Self::rescan_pass`] should run: the scanner's `rescan_after`, if any.
    pub fn rescan_every(&self) -> Option<Duration> {
        self.scanner.as_ref()?.rescan_every()
    }

    /// Renews the reports of the tags that matter (every tag of every repository a rule with a
    /// severity gate covers) once they are older than `rescan_after`, or scans them when they
    /// never were, without waiting for a pull; returns how many scans were asked for.
    pub async fn rescan_pass(&self, reg: &Registry, mint: Mint<'_>) -> usize {
        let Some(sc) = &self.scanner else { return 0 };
        let Ok(repos) = reg.repositories().await else { return 0 };
        let mut asked = 0;
        for repo in repos {
            let Some(rule) = self.rule_for(&repo).map(|i| &self.rules[i]) else {
                continue;
            };
            if rule.block.is_none() {
                continue;
            }
            let Ok(tags) = reg.tag_names(&repo).await else { continue };
            for t in tags {
                let Ok(Some(d)) = reg.tag_target(&repo, &t).await else {
                    continue;
                };
                let Ok(Some(m)) = reg.repo_manifest(&repo, &d).await else {
                    continue;
                };
                // an index is scanned through its platform manifests
                let targets: Vec<Digest> = if m.children.is_empty() {
                    vec![d]
                } else {
                    m.children.clone()
                };
                for d in targets {
                    let Ok(Some(m)) = reg.repo_manifest(&repo, &d).await else {
                        continue;
                    };
                    if is_signature_artifact(&m) {
                        continue;
                    }
                    let due = match sc.findings(&d).await {
                        Some((_, due)) => due,
                        None => true,
                    };
                    if due {
                        if let Some(tok) = self.mint_for_scanner(&repo, mint) {
                            sc.request(&repo, &d, &m.media_type, tok);
                            asked += 1;
                        }
                    }
                }
            }
        }
        asked
    }

    pub(super) async fn scanned(
        &self,
        repo: &RepoName,
        m: &Manifest,
        rule: &Rule,
        block: Severity,
        mint: Mint<'_>,
    ) -> Result<(), (&'static str, String)> {
        let Some(sc) = &self.scanner else { return Ok(()) };
        if !m.children.is_empty() {
            // an index has no findings of its own: each platform manifest is gated when fetched
            return Ok(());
        }
        match sc.findings(&m.digest).await {
            Some((report, due)) => {
                if due {
                    // decided on the report at hand; the renewed one counts from the next pull
                    if let Some(tok) = self.mint_for_scanner(repo, mint) {
                        sc.request(repo, &m.digest, &m.media_type, tok);
                    }
                }
                let f = &report.findings;
                let today = today();
                let allowed = |id: &str| {
                    rule.allow
                        .iter()
                        .any(|(a, until)| a == id && until.is_none_or(|u| today <= u))
                };
                let bad = scanner::Scanner::blocking(f, block, &allowed);
                if bad.is_empty() {
                    return Ok(());
                }
                let ids: Vec<String> = bad
                    .iter()
                    .take(5)
                    .map(|v| format!("{} ({})", v.id, v.severity))
                    .collect();
                Err((
                    "vulnerable",
                    format!(
                        "{} finding(s) at or above {:?}: {}{}",
                        bad.len(),
                        block,
                        ids.join(", "),
                        if bad.len() > 5 { ", ..." } else { "" }
                    ),
                ))
            }
            None => {
                if is_signature_artifact(m) {
                    return Ok(());
                }
                if let Some(tok) = self.mint_for_scanner(repo, mint) {
                    sc.request(repo, &m.digest, &m.media_type, tok);
                }
                if sc.is_down() && !sc.fail_open {
                    return Err((
                        "unscanned",
                        "not scanned and the scanner is unavailable (fail_open: false)".into(),
                    ));
                }
                match rule.unscanned {
                    Unscanned::Allow => Ok(()),
                    Unscanned::Deny => Err(("unscanned", "not scanned yet".into())),
                }
            }
        }
    }

    /// `/api/v1/scans/<repo>/<digest>` to the repository and digest.
    pub fn api_target(path: &str) -> Option<(RepoName, Digest)> {
        let rest = path.strip_prefix("/api/v1/scans/")?;
        let (repo, d) = rest.rsplit_once('/')?;
        Some((RepoName::parse(repo)?, Digest::parse(d)?))
    }

    /// `POST /api/v1/scans/<repository>/<digest>`: a scan of `d` now (of each platform
    /// manifest, for an index), whatever the schedule; the digests sent to the scanner.
    pub async fn scan_on_demand<S: ArtifactSource>(
        &self,
        src: &S,
        repo: &RepoName,
        d: &Digest,
        mint: Mint<'_>,
    ) -> Result<Vec<Digest>, ApiError> {
        let Some(sc) = &self.scanner else {
            return Err(ApiError::new(Code::Unsupported, "no scanner: is configured"));
        };
        if sc.is_down() {
            return Err(ApiError::new(
                Code::Unavailable,
                "the scanner is not reachable; retry later",
            ));
        }
        let unreadable = |e: String| ApiError::new(Code::Unavailable, format!("manifest unreadable: {e}"));
        let m = src
            .manifest(repo, d)
            .await
            .map_err(unreadable)?
            .ok_or_else(|| ApiError::new(Code::ManifestUnknown, format!("{repo}@{d} is not here")))?;
        let mut images = Vec::new();
        if m.children.is_empty() {
            images.push(m);
        } else {
            for c in m.children.iter().take(source::MAX_REFERRERS) {
                if let Some(cm) = src.manifest(repo, c).await.map_err(unreadable)? {
                    images.push(cm);
                }
            }
        }
        images.retain(|m| !is_signature_artifact(m));
        if images.is_empty() {
            return Err(ApiError::new(Code::Unsupported, "signature artifacts are not scanned"));
        }
        let tok = self
            .mint_for_scanner(repo, mint)
            .ok_or_else(|| ApiError::new(Code::Unavailable, "no credential for the scanner could be made"))?;
        for m in &images {
            sc.request(repo, &m.digest, &m.media_type, tok.clone());
        }
        Ok(images.into_iter().map(|m| m.digest.clone()).collect())
    }

    /// The stored report of a manifest this repository holds.
    pub async fn api_report<S: ArtifactSource>(&self, src: &S, repo: &RepoName, d: &Digest) -> Resp {
        let held = matches!(src.manifest(repo, d).await, Ok(Some(_)));
        let report = match (&self.scanner, held) {
            (Some(sc), true) => sc.report_bytes(d).await,
            _ => None,
        };
        match report {
            Some(b) => {
                let mut r = Resp::new(http::full(b));
                http::set(&mut r, ::http::header::CONTENT_TYPE, "application/json");
                r
            }
            None => ApiError::new(Code::NotFound, format!("no scan report for {repo}@{d}")).into_response(),
        }
    }
}
