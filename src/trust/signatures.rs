//! Signature checks: the candidates of a digest (its `.sig` tag, its referrers), each verified
//! against the rule's cosign keys or notation roots; an index through its platform manifests.

use super::*;

impl Trust {
    pub(super) async fn signature<S: ArtifactSource>(
        &self,
        src: &S,
        repo: &RepoName,
        m: &Manifest,
        rule: &Rule,
    ) -> Arc<Verdict> {
        let k = (repo.clone(), m.digest.clone());
        if let Some(v) = self.verdicts.get(&k).or_else(|| self.denials.get(&k)) {
            return v;
        }
        let v = Arc::new(if rule.platforms && !m.children.is_empty() {
            self.every_platform(src, repo, m, rule).await
        } else {
            self.verify(src, repo, &m.digest, rule).await
        });
        if let Verdict::Unsigned(_) = &*v {
            self.denials.insert(k, v.clone());
            return v;
        }
        if let (Verdict::Signed(by), false) = (&*v, rule.platforms) {
            // an index signs its platform manifests: clients fetch those next, by digest
            for c in &m.children {
                self.verdicts.insert(
                    (repo.clone(), c.clone()),
                    Arc::new(Verdict::Signed(format!("{by} (index {})", m.digest))),
                );
            }
        }
        self.verdicts.insert(k, v.clone());
        v
    }

    /// An index whose every platform manifest carries a trusted signature of its own.
    async fn every_platform<S: ArtifactSource>(&self, src: &S, repo: &RepoName, m: &Manifest, rule: &Rule) -> Verdict {
        let mut by = Vec::new();
        for c in &m.children {
            match self.verify(src, repo, c, rule).await {
                Verdict::Signed(b) => {
                    self.verdicts
                        .insert((repo.clone(), c.clone()), Arc::new(Verdict::Signed(b.clone())));
                    by.push(b);
                }
                Verdict::Unsigned(why) => return Verdict::Unsigned(format!("platform manifest {c}: {why}")),
            }
        }
        Verdict::Signed(format!("every platform manifest ({})", by.join("; ")))
    }

    /// Looks for a signature of exactly `d` from the rule's keys or roots: under the
    /// `<alg>-<hex>.sig` tag and among `d`'s referrers.
    async fn verify<S: ArtifactSource>(&self, src: &S, repo: &RepoName, d: &Digest, rule: &Rule) -> Verdict {
        let mut candidates: Vec<Arc<Manifest>> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        if let Some(t) = Tag::parse(&format!("{}-{}.sig", d.algorithm().as_str(), d.hex())) {
            match src.tag(repo, &t).await {
                Ok(Some(sd)) => match src.manifest(repo, &sd).await {
                    Ok(Some(m)) => candidates.push(m),
                    Ok(None) => {}
                    Err(e) => errors.push(e),
                },
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        match src.referrers(repo, d).await {
            Ok(found) => {
                for rd in found.iter().take(source::MAX_REFERRERS) {
                    match src.manifest(repo, rd).await {
                        Ok(Some(m)) => candidates.push(m),
                        Ok(None) => {}
                        Err(e) => errors.push(e),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        // a bundle's message signature is over the signed manifest's bytes: read once, if needed
        let mut signed: Option<Option<Arc<Manifest>>> = None;
        let mut checked = 0;
        for m in candidates {
            for l in layers(&m) {
                let keys = !rule.keys.is_empty();
                let kind = if l.media_type == cosign::SIMPLE_SIGNING && keys {
                    SigKind::Simple
                } else if cosign::BUNDLE_LAYERS.contains(&l.media_type.as_str()) && keys {
                    SigKind::Bundle
                } else if (l.media_type == notation::JWS || l.media_type == notation::COSE) && !rule.roots.is_empty() {
                    SigKind::Notation
                } else {
                    continue;
                };
                if l.size > MAX_SIG_LAYER {
                    continue;
                }
                let sig = l.annotations.get(cosign::SIGNATURE_ANNOTATION);
                if kind == SigKind::Simple && sig.is_none() {
                    continue;
                }
                let Some(ld) = Digest::parse(&l.digest) else { continue };
                let payload = match src.blob(repo, &ld, MAX_SIG_LAYER).await {
                    Ok(Some(b)) => b,
                    _ => {
                        errors.push("signature payload blob missing".into());
                        continue;
                    }
                };
                checked += 1;
                let r = match (kind, sig) {
                    (SigKind::Simple, Some(sig)) => cosign::check(&payload, sig, d, &rule.keys),
                    (SigKind::Bundle, _) => {
                        if signed.is_none() {
                            signed = Some(src.manifest(repo, d).await.ok().flatten());
                        }
                        match signed.as_ref().and_then(Option::as_ref) {
                            Some(sm) => cosign::check_bundle(&payload, d, &sm.bytes, &rule.keys),
                            None => Err("the signed manifest could not be read"),
                        }
                    }
                    _ => notation::check(&payload, &l.media_type, d, &rule.roots, crate::util::now_secs()),
                };
                match r {
                    Ok(by) => return Verdict::Signed(by),
                    Err(e) => errors.push(e.into()),
                }
            }
        }
        errors.dedup();
        let detail = match (checked, errors.is_empty()) {
            (0, true) => "none found".to_owned(),
            (n, _) => format!("{n} checked: {}", errors.join(", ")),
        };
        Verdict::Unsigned(format!("no signature from a trusted key ({detail})"))
    }
}
