//! Trusted images: a per-repository policy enforced on manifest GET/HEAD after authorisation.
//!
//! A rule may require a signature from one of its keys or roots and may block images with scan
//! findings at or above a severity (reports from a Harbor Pluggable Scanner API adapter, see
//! [`scanner`]). Signatures are looked for under the `<alg>-<hex>.sig` tag and among the
//! digest's OCI 1.1 referrers, in the forms the clients write them: cosign's simple-signing
//! layers and sigstore bundles (DSSE in-toto statement or message signature), checked with
//! public keys ([`cosign`]); notation's JWS and COSE envelopes, checked against X.509 roots
//! ([`notation`]). One counts only if it binds exactly the digest pulled.
//!
//! The reads go through [`ArtifactSource`] ([`source`]): the bundled [`Registry`]'s storage, or
//! in `upstream:` mode the upstream registry (referrers API, else the referrers tag schema), read
//! with a short-lived pull-only token regate mints for the one repository; there a GET is
//! decided on the bytes actually served ([`Trust::after_upstream`]).
//!
//! Reads by a caller who may push to the repository, by the scanner itself, and of signature
//! artifacts are never gated. Verdicts are cached per repository and digest (signed 5 min,
//! unsigned 30 s), dropped when a signature for the digest arrives through regate (tag or
//! referrer; in upstream mode any manifest push) and on any delete.

pub mod cosign;
pub mod notation;
pub mod scanner;
mod scans;
mod signatures;
pub mod source;

pub use source::{ArtifactSource, Upstream};

use crate::auth::policy::Glob;
use crate::config::trust::{parse_date, ScannerConfig, Severity, TrustRule, Unscanned};
use crate::http::{self, Resp};
use crate::registry::error::{ApiError, Code};
use crate::registry::{Manifest, Outcome, Registry, Route};
use crate::storage::Storage;
use crate::types::names::{Algorithm, Digest, Reference, RepoName, Tag};
use ::http::{HeaderName, Method, StatusCode};
use base64::Engine as _;
use http_body_util::BodyExt as _;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

pub const TRUST_HEADER: &str = "x-regate-trust";
const MAX_SIG_LAYER: u64 = 256 << 10;
/// Layer media types of signature and attestation artifacts: a manifest made only of these is
/// not a runnable image and is never gated.
const SIGNATURE_LAYERS: &[&str] = &[
    cosign::SIMPLE_SIGNING,
    "application/jose+json",
    "application/cose",
    "application/vnd.dsse.envelope.v1+json",
    "application/vnd.dev.sigstore.bundle.v0.3+json",
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
];

struct Rule {
    glob: Glob,
    keys: Vec<cosign::Key>,
    roots: notation::Roots,
    signature: bool,
    /// Each platform manifest of an index needs its own signature.
    platforms: bool,
    enforce: bool,
    block: Option<Severity>,
    /// CVE id and the last day (days since the epoch) it is allowed, if limited.
    allow: Vec<(String, Option<i64>)>,
    unscanned: Unscanned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SigKind {
    /// cosign's simple-signing payload with the signature in an annotation.
    Simple,
    /// A sigstore bundle (cosign's new bundle format).
    Bundle,
    /// A notation envelope (JWS or COSE).
    Notation,
}

#[derive(Debug, Clone)]
enum Verdict {
    Signed(String),
    Unsigned(String),
}

pub struct Trust {
    rules: Vec<Rule>,
    /// Signed verdicts (5 minutes: another replica's delete of a signature is seen within that).
    verdicts: moka::sync::Cache<(RepoName, Digest), Arc<Verdict>>,
    /// Unsigned verdicts, kept shortly: a signature that arrives other than through this process
    /// (replication, another replica) counts within 30 s.
    denials: moka::sync::Cache<(RepoName, Digest), Arc<Verdict>>,
    scanner: Option<Arc<scanner::Scanner>>,
    /// `jti`s of the pull tokens minted for the scanner: its reads are never gated.
    scanner_tokens: moka::sync::Cache<String, ()>,
}

/// A manifest read that the policy covers, decided before the registry answers.
pub struct Gate {
    rule: usize,
    repo: RepoName,
    exempt: bool,
    head: bool,
}

/// Mints a short-lived pull-only token for one repository (the scanner's credential).
pub type Mint<'a> = &'a (dyn Fn(&RepoName) -> Option<String> + Sync);

#[derive(Deserialize)]
struct Layers {
    #[serde(default)]
    layers: Vec<Layer>,
}

#[derive(Deserialize)]
struct Layer {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
}

fn layers(m: &Manifest) -> Vec<Layer> {
    serde_json::from_slice::<Layers>(&m.bytes)
        .map(|l| l.layers)
        .unwrap_or_default()
}

/// Artifact types of signature and attestation manifests, as an index lists them.
const SIGNATURE_ARTIFACTS: &[&str] = &[
    "application/vnd.dev.cosign.artifact.sig.v1+json",
    "application/vnd.cncf.notary.signature",
    "application/vnd.in-toto+json",
    "application/vnd.dev.sigstore.bundle.v0.3+json",
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
];

#[derive(Deserialize)]
struct Children {
    #[serde(default)]
    manifests: Vec<Child>,
}

#[derive(Deserialize)]
struct Child {
    #[serde(rename = "artifactType", default)]
    artifact_type: String,
}

/// A signature or attestation, or an index of nothing else (the referrers tag schema's
/// `<alg>-<hex>` index that clients keep on a registry without the referrers API).
fn is_signature_artifact(m: &Manifest) -> bool {
    if !m.children.is_empty() {
        let c = serde_json::from_slice::<Children>(&m.bytes)
            .map(|c| c.manifests)
            .unwrap_or_default();
        return !c.is_empty()
            && c.iter()
                .all(|c| SIGNATURE_ARTIFACTS.contains(&c.artifact_type.as_str()));
    }
    let l = layers(m);
    !l.is_empty() && l.iter().all(|l| SIGNATURE_LAYERS.contains(&l.media_type.as_str()))
}

fn today() -> i64 {
    (crate::util::now_secs() / 86_400) as i64
}

impl Trust {
    /// `None` when there is no policy.
    pub fn new(
        policy: &[TrustRule],
        scanner: Option<&ScannerConfig>,
        store: Arc<Storage>,
        public_url: &str,
    ) -> Result<Option<Arc<Trust>>, String> {
        if policy.is_empty() {
            return Ok(None);
        }
        let mut rules = Vec::new();
        for r in policy {
            let sig = r.require_signature.clone().unwrap_or_default();
            let keys = sig
                .cosign
                .iter()
                .map(|p| cosign::Key::load(p))
                .collect::<Result<Vec<_>, _>>()?;
            let roots = notation::Roots::load(&sig.notation)?.with_identities(&sig.notation_identities)?;
            rules.push(Rule {
                glob: Glob::new(&r.repository),
                keys,
                roots,
                signature: r.require_signature.is_some(),
                platforms: sig.platforms,
                enforce: r.enforce,
                block: r.block_severity,
                allow: r
                    .allow_cves
                    .iter()
                    .map(|c| (c.id().to_owned(), c.until().and_then(parse_date)))
                    .collect(),
                unscanned: r.unscanned,
            });
        }
        let scanner = match scanner {
            Some(c) => Some(Arc::new(scanner::Scanner::new(c, store, public_url)?)),
            None => None,
        };
        Ok(Some(Arc::new(Trust {
            rules,
            verdicts: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
            denials: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(30))
                .build(),
            scanner,
            scanner_tokens: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        })))
    }

    /// Background start-up work: asks the scanner adapter for its metadata.
    pub fn start(self: &Arc<Self>) {
        if let Some(s) = &self.scanner {
            let s = s.clone();
            tokio::spawn(async move { s.probe().await });
        }
    }

    fn rule_for(&self, repo: &RepoName) -> Option<usize> {
        self.rules.iter().position(|r| r.glob.matches(repo.as_str(), ""))
    }

    /// A manifest GET/HEAD in a repository some rule covers. `exempt`: the caller may push to
    /// the repository (signers read what they sign) or is the scanner.
    pub fn gate(&self, route: &Route, method: &Method, exempt: impl FnOnce(&RepoName) -> bool) -> Option<Gate> {
        match (route, method) {
            (Route::Manifest(repo, _), &Method::GET | &Method::HEAD) => {
                let rule = self.rule_for(repo)?;
                Some(Gate {
                    rule,
                    repo: repo.clone(),
                    exempt: exempt(repo),
                    head: method == Method::HEAD,
                })
            }
            _ => None,
        }
    }

    /// Whether a bearer token is one minted for the scanner.
    /// Whether a scanner is configured.
    pub fn has_scanner(&self) -> bool {
        self.scanner.is_some()
    }

    pub fn is_scanner_token(&self, jti: &str) -> bool {
        self.scanner_tokens.contains_key(jti)
    }

    fn mint_for_scanner(&self, repo: &RepoName, mint: Mint<'_>) -> Option<String> {
        let token = mint(repo)?;
        let claims = token.split('.').nth(1)?;
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&claims).ok()?;
        self.scanner_tokens.insert(v["jti"].as_str()?.to_owned(), ());
        Some(token)
    }

    /// After the registry answered: watch pushes and deletes (signatures arriving or going,
    /// scans on push), then decide a gated read.
    pub async fn after(&self, gate: Option<Gate>, reg: &Registry, out: &mut Outcome, mint: Mint<'_>) {
        if let Some(ev) = &out.event {
            match ev.action {
                "push" => self.pushed(reg, &ev.repo, &ev.digest, ev.tag.as_deref(), mint).await,
                "delete" => {
                    self.verdicts.invalidate_all();
                    self.denials.invalidate_all();
                }
                _ => {}
            }
        }
        let Some(g) = gate else { return };
        if g.exempt || out.resp.status() != StatusCode::OK {
            return;
        }
        let Some(d) = served_digest(&out.resp) else {
            return;
        };
        let m = reg.load_manifest(&d).await.ok().flatten();
        if self.decide(&g, reg, &d, m, &mut out.resp, mint).await {
            out.event = None;
        }
    }

    /// Upstream mode: decides a gated manifest read that the upstream answered with `resp`,
    /// reading the signatures from `src` (the upstream). A GET is decided on exactly the bytes
    /// served (read here, bounded, and hashed); a HEAD on the digest the upstream names.
    pub async fn after_upstream<S: ArtifactSource>(
        &self,
        gate: Option<Gate>,
        src: &S,
        resp: Resp,
        mint: Mint<'_>,
    ) -> Resp {
        let Some(g) = gate else { return resp };
        if g.exempt || resp.status() != StatusCode::OK {
            return resp;
        }
        let named = served_digest(&resp);
        let (mut resp, d, m) = if g.head {
            let Some(d) = named else {
                return self.unreadable(&g, None, resp, "the upstream named no digest");
            };
            let m = src.manifest(&g.repo, &d).await.ok().flatten();
            (resp, d, m)
        } else {
            let (parts, body) = resp.into_parts();
            let bytes = match http_body_util::Limited::new(body, source::MAX_MANIFEST as usize)
                .collect()
                .await
            {
                Ok(c) => c.to_bytes(),
                Err(_) => {
                    let resp = Resp::from_parts(parts, http::full(bytes::Bytes::new()));
                    return self.unreadable(&g, named.as_ref(), resp, "the upstream manifest could not be read");
                }
            };
            let algo = named.as_ref().map_or(Algorithm::Sha256, Digest::algorithm);
            let d = Digest::of(algo, &bytes);
            let ct = parts
                .headers
                .get(::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let m = Manifest::parse_as(bytes.clone(), ct.as_deref(), algo)
                .ok()
                .map(Arc::new);
            (Resp::from_parts(parts, http::full(bytes)), d, m)
        };
        self.decide(&g, src, &d, m, &mut resp, mint).await;
        resp
    }

    /// A gated upstream answer that cannot be verified: passed on under a report-only rule.
    fn unreadable(&self, g: &Gate, d: Option<&Digest>, mut resp: Resp, why: &str) -> Resp {
        if self.rules[g.rule].enforce {
            let d = d.map_or_else(|| "?".to_owned(), |d| d.to_string());
            let e = ApiError::new(Code::Denied, format!("untrusted image {}@{d}: {why}", g.repo))
                .with_status(StatusCode::SERVICE_UNAVAILABLE);
            return e.into_response();
        }
        http::set(&mut resp, HeaderName::from_static(TRUST_HEADER), "unverified");
        resp
    }

    /// The verdict on a gated read of `d` (its manifest `m`, if it could be read): sets the
    /// trust header, or replaces `resp` with the denial; whether it denied.
    async fn decide<S: ArtifactSource>(
        &self,
        g: &Gate,
        src: &S,
        d: &Digest,
        m: Option<Arc<Manifest>>,
        resp: &mut Resp,
        mint: Mint<'_>,
    ) -> bool {
        let rule = &self.rules[g.rule];
        let m = match m {
            Some(m) => m,
            None if !rule.enforce => return false,
            None => {
                *resp = denial(&g.repo, d, "the manifest could not be read for verification", true);
                return true;
            }
        };
        let mut problems: Vec<(&'static str, String)> = Vec::new();
        if rule.signature {
            if let Verdict::Unsigned(why) = &*self.signature(src, &g.repo, &m, rule).await {
                // signatures themselves are not signed (checked only here, off the hot path)
                if is_signature_artifact(&m) {
                    return false;
                }
                problems.push(("unsigned", why.clone()));
            }
        }
        if let Some(block) = rule.block {
            if let Err(p) = self.scanned(&g.repo, &m, rule, block, mint).await {
                problems.push(p);
            }
        }
        if problems.is_empty() {
            http::set(resp, HeaderName::from_static(TRUST_HEADER), "verified");
            return false;
        }
        let why = problems.iter().map(|p| p.1.as_str()).collect::<Vec<_>>().join("; ");
        tracing::info!(target: "regate::audit", event = "untrusted", repo = %g.repo, digest = %d,
            enforce = rule.enforce, reason = %why, "trust");
        if rule.enforce {
            *resp = denial(&g.repo, d, &why, false);
            return true;
        }
        http::set(resp, HeaderName::from_static(TRUST_HEADER), problems[0].0);
        false
    }

    /// Upstream mode: a write the proxy passed on. A manifest pushed may be a signature (a
    /// `.sig` tag, a referrer, a referrers-tag index) of any image here: the short-lived
    /// denials go, and the push is watched as a bundled one is (scan on push, read back from
    /// the upstream); a delete may remove a signature: every verdict goes.
    pub async fn upstream_wrote<S: ArtifactSource>(
        &self,
        route: &Route,
        method: &Method,
        status: StatusCode,
        served: Option<Digest>,
        src: &S,
        mint: Mint<'_>,
    ) {
        if !status.is_success() {
            return;
        }
        match (route, method) {
            (Route::Manifest(repo, reference), &Method::PUT) => {
                // another replica or the upstream's own clients may have signed anything: the
                // short-lived denials all go, then the push is watched as a bundled one is
                self.denials.invalidate_all();
                let digest = match reference {
                    Reference::Digest(d) => Some(d.clone()),
                    Reference::Tag(_) => served,
                };
                let tag = match reference {
                    Reference::Tag(t) => Some(t.as_str()),
                    Reference::Digest(_) => None,
                };
                if let Some(d) = digest {
                    self.pushed(src, repo, &d, tag, mint).await;
                }
            }
            (Route::Manifest(..) | Route::Blob(..), &Method::DELETE) => {
                self.verdicts.invalidate_all();
                self.denials.invalidate_all();
            }
            _ => {}
        }
    }

    /// A manifest `d` pushed to `repo` (under `tag`): the denials its signature ends go, and a
    /// runnable image the policy scans is sent to the scanner.
    async fn pushed<S: ArtifactSource>(&self, src: &S, repo: &RepoName, d: &Digest, tag: Option<&str>, mint: Mint<'_>) {
        // a platform's signature may complete its index's: those denials are not keyed by the
        // platform, so all go (they are short-lived anyway)
        let by_platform = self.rule_for(repo).is_some_and(|i| self.rules[i].platforms);
        // a `.sig` tag names the digest it signs; a referrer names it as its subject
        if let Some(t) = tag {
            if let Some(signed) = t.strip_suffix(".sig") {
                if let Some(d) = Digest::parse(&signed.replacen('-', ":", 1)) {
                    self.denials.invalidate(&(repo.clone(), d));
                    if by_platform {
                        self.denials.invalidate_all();
                    }
                }
            }
        }
        let m = match src.manifest(repo, d).await {
            Ok(Some(m)) => m,
            _ => return,
        };
        if let Some(s) = &m.subject {
            self.denials.invalidate(&(repo.clone(), s.clone()));
            if by_platform {
                self.denials.invalidate_all();
            }
        }
        let Some(sc) = &self.scanner else { return };
        let wants_scan = self.rule_for(repo).is_some_and(|i| self.rules[i].block.is_some());
        if sc.scan_on_push && wants_scan && m.children.is_empty() && !is_signature_artifact(&m) {
            if let Some(tok) = self.mint_for_scanner(repo, mint) {
                sc.request(repo, &m.digest, &m.media_type, tok);
            }
        }
    }
}

/// The answer to a gated read that the policy refuses (503 when it could not be verified).
fn denial(repo: &RepoName, d: &Digest, why: &str, unavailable: bool) -> Resp {
    let mut e = ApiError::new(Code::Denied, format!("untrusted image {repo}@{d}: {why}"));
    if unavailable {
        e = e.with_status(StatusCode::SERVICE_UNAVAILABLE);
    }
    e.into_response()
}

/// The digest an answer names (`Docker-Content-Digest`).
pub fn served_digest(r: &Resp) -> Option<Digest> {
    r.headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(Digest::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_artifacts_are_recognised_by_their_layers() {
        let m = |layers: &str| {
            Manifest::parse(
                bytes::Bytes::from(format!(
                    r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{layers}]}}"#,
                    Digest::sha256_of(b"{}")
                )),
                None,
            )
            .unwrap()
        };
        let l = |mt: &str| {
            format!(
                r#"{{"mediaType":"{mt}","digest":"{}","size":1}}"#,
                Digest::sha256_of(b"x")
            )
        };
        assert!(is_signature_artifact(&m(&l(cosign::SIMPLE_SIGNING))));
        assert!(!is_signature_artifact(&m(&format!(
            "{},{}",
            l(cosign::SIMPLE_SIGNING),
            l("application/vnd.oci.image.layer.v1.tar+gzip")
        ))));
        assert!(!is_signature_artifact(&m("")));
        let index = |types: &[&str]| {
            let ms: Vec<String> = types
                .iter()
                .map(|t| {
                    format!(
                        r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":1{t}}}"#,
                        Digest::sha256_of(t.as_bytes())
                    )
                })
                .collect();
            Manifest::parse(
                bytes::Bytes::from(format!(
                    r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
                    ms.join(",")
                )),
                None,
            )
            .unwrap()
        };
        let sig = r#","artifactType":"application/vnd.cncf.notary.signature""#;
        let bundle = r#","artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json""#;
        assert!(is_signature_artifact(&index(&[sig, bundle])));
        assert!(!is_signature_artifact(&index(&[sig, ""])), "a platform manifest");
    }

    #[test]
    fn api_paths() {
        let d = Digest::sha256_of(b"x");
        let (r, dd) = Trust::api_target(&format!("/api/v1/scans/prod/app/{d}")).unwrap();
        assert_eq!((r.as_str(), dd), ("prod/app", d));
        assert!(Trust::api_target("/api/v1/scans/x").is_none());
    }
}
