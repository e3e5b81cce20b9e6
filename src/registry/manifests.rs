//! Manifests: PUT with validation, GET/HEAD with `Accept` negotiation, DELETE by tag or digest.

use super::error::{ApiError, Code};
use super::{body_error, digest_header, Event, Outcome, Registry};
use crate::http::{self, BodyReader, Resp};
use crate::storage::layout;
use crate::types::names::{Algorithm, Digest, Reference, RepoName, Tag};
use ::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::Bytes;
use serde::Deserialize;
use std::sync::Arc;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const SCHEMA1: [&str; 3] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/json",
];

#[derive(Debug, Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub urls: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct RawManifest {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(rename = "artifactType", default)]
    artifact_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    subject: Option<Descriptor>,
    #[serde(default)]
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(rename = "fsLayers", default)]
    fs_layers: Option<serde_json::Value>,
}

/// A stored manifest with what the API needs to know about it.
#[derive(Debug)]
pub struct Manifest {
    pub bytes: Bytes,
    pub digest: Digest,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
    /// Digests this manifest references: config and layers, or index children.
    pub blobs: Vec<Digest>,
    pub children: Vec<Digest>,
}

impl Manifest {
    /// Parses stored or uploaded bytes. `content_type` is the PUT's Content-Type, used when the
    /// body does not name its media type.
    pub fn parse(bytes: Bytes, content_type: Option<&str>) -> Result<Self, ApiError> {
        Self::parse_as(bytes, content_type, Algorithm::Sha256)
    }

    /// [`Self::parse`] for a manifest addressed by a digest under algorithm `algo`.
    pub fn parse_as(bytes: Bytes, content_type: Option<&str>, algo: Algorithm) -> Result<Self, ApiError> {
        let invalid = |m: String| ApiError::new(Code::ManifestInvalid, m);
        let raw: RawManifest =
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("manifest is not valid JSON: {e}")))?;
        if raw.schema_version == Some(1) || raw.fs_layers.is_some() {
            return Err(invalid(
                "Docker schema 1 manifests are not supported; push with a current client (schema 2 or OCI)".into(),
            ));
        }
        if raw.schema_version != Some(2) {
            return Err(invalid("manifest must have schemaVersion 2".into()));
        }
        let ct = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim())
            .filter(|c| !c.is_empty());
        let media_type = match (&raw.media_type, ct) {
            (Some(m), Some(c)) if m != c && !SCHEMA1.contains(&c) => {
                return Err(invalid(format!(
                    "Content-Type {c} does not match the manifest's mediaType {m}"
                )));
            }
            (Some(m), _) => m.clone(),
            (None, Some(c)) if [OCI_MANIFEST, OCI_INDEX].contains(&c) => c.to_owned(),
            (None, _) => {
                if raw.manifests.is_some() {
                    OCI_INDEX.to_owned()
                } else {
                    OCI_MANIFEST.to_owned()
                }
            }
        };
        let parse_digest =
            |s: &str| Digest::parse(s).ok_or_else(|| invalid(format!("invalid digest {s:?} in manifest")));
        let mut blobs = Vec::new();
        let mut children = Vec::new();
        match media_type.as_str() {
            OCI_MANIFEST | DOCKER_MANIFEST => {
                let config = raw
                    .config
                    .as_ref()
                    .ok_or_else(|| invalid("image manifest without config".into()))?;
                blobs.push(parse_digest(&config.digest)?);
                let layers = raw.layers.as_deref().unwrap_or_default();
                if layers.is_empty() && media_type == DOCKER_MANIFEST {
                    return Err(invalid("image manifest without layers".into()));
                }
                for l in layers {
                    let d = parse_digest(&l.digest)?;
                    if l.size < 0 {
                        return Err(invalid("negative layer size".into()));
                    }
                    // foreign layers live elsewhere (their urls) and need not be pushed
                    let foreign = l.urls.as_ref().is_some_and(|u| !u.is_empty())
                        || l.media_type.contains("foreign")
                        || l.media_type.contains("nondistributable");
                    if !foreign {
                        blobs.push(d);
                    }
                }
            }
            OCI_INDEX | DOCKER_LIST => {
                let ms = raw
                    .manifests
                    .as_ref()
                    .ok_or_else(|| invalid("index without manifests".into()))?;
                for m in ms {
                    children.push(parse_digest(&m.digest)?);
                }
            }
            other => {
                return Err(invalid(format!("unsupported manifest media type {other}")));
            }
        }
        let subject = match &raw.subject {
            Some(s) => Some(parse_digest(&s.digest)?),
            None => None,
        };
        let artifact_type = raw.artifact_type.clone().or_else(|| {
            (media_type == OCI_MANIFEST)
                .then(|| raw.config.as_ref().map(|c| c.media_type.clone()))
                .flatten()
        });
        Ok(Manifest {
            digest: Digest::of(algo, &bytes),
            bytes,
            media_type,
            artifact_type,
            subject,
            annotations: raw.annotations,
            blobs,
            children,
        })
    }
}

impl Registry {
    /// A manifest by digest, through the cache; `None` when the bytes are not stored.
    pub async fn load_manifest(&self, d: &Digest) -> Result<Option<Arc<Manifest>>, ApiError> {
        if let Some(m) = self.manifests.get(d) {
            return Ok(Some(m));
        }
        let Some(bytes) = self
            .store
            .read(&layout::blob_data(d), self.opts.max_manifest_bytes.max(4 << 20))
            .await?
        else {
            return Ok(None);
        };
        let m = Arc::new(Manifest::parse_as(bytes, None, d.algorithm())?);
        self.manifests.insert(d.clone(), m.clone());
        Ok(Some(m))
    }

    /// Tag or digest to the digest of a manifest that this repository holds.
    pub async fn resolve(&self, name: &RepoName, r: &Reference) -> Result<Option<Digest>, ApiError> {
        let d = match r {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => match self.read_link(&layout::tag_current(name, t)).await? {
                Some(d) => d,
                None => return Ok(None),
            },
        };
        if self.store.stat(&layout::revision_link(name, &d)).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(d))
    }

    pub(super) async fn get_manifest(
        &self,
        name: &RepoName,
        r: &Reference,
        headers: &HeaderMap,
        head: bool,
    ) -> Result<Outcome, ApiError> {
        let unknown = || {
            ApiError::new(
                Code::ManifestUnknown,
                format!("manifest {r} is not known to repository {name}"),
            )
        };
        let mut found = self.resolve(name, r).await?;
        if let Some(m) = &self.mirror {
            found = self.mirror_manifest(m, name, r, found).await?;
        }
        let d = found.ok_or_else(unknown)?;
        let m = self.load_manifest(&d).await?.ok_or_else(unknown)?;
        if !accepts(headers, &m.media_type) {
            return Err(ApiError::new(
                Code::ManifestUnknown,
                format!(
                    "manifest {r} is a {}, which the Accept header does not allow",
                    m.media_type
                ),
            ));
        }
        let mut resp = if head {
            http::status(StatusCode::OK)
        } else {
            Resp::new(http::full(m.bytes.clone()))
        };
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(m.bytes.len()));
        http::set(&mut resp, header::CONTENT_TYPE, &m.media_type);
        http::set(&mut resp, header::ETAG, &format!("\"{d}\""));
        digest_header(&mut resp, &d);
        let event = (!head).then(|| Event {
            action: "pull",
            repo: name.clone(),
            digest: d.clone(),
            media_type: m.media_type.clone(),
            size: m.bytes.len() as u64,
            tag: match r {
                Reference::Tag(t) => Some(t.to_string()),
                Reference::Digest(_) => None,
            },
        });
        Ok(Outcome { resp, event })
    }

    pub(super) async fn put_manifest(
        &self,
        name: &RepoName,
        r: &Reference,
        headers: &HeaderMap,
        body: BodyReader,
    ) -> Result<Outcome, ApiError> {
        let limit = self.opts.max_manifest_bytes;
        let bytes = body.read_all(limit).await.map_err(|e| match e {
            crate::http::BodyError::TooLarge => ApiError::new(
                Code::ManifestTooLarge,
                format!("manifest is larger than the {limit}-byte limit"),
            ),
            e => body_error(e),
        })?;
        let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let (d, m, event) = self.store_manifest(name, r, bytes, ct).await?;
        let mut resp = http::status(StatusCode::CREATED);
        http::set(
            &mut resp,
            header::LOCATION,
            &self.location(&format!("/v2/{name}/manifests/{d}")),
        );
        digest_header(&mut resp, &d);
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        if let Some(s) = &m.subject {
            http::set(&mut resp, HeaderName::from_static("oci-subject"), &s.to_string());
        }
        self.manifests.insert(d, m);
        Ok(Outcome {
            resp,
            event: Some(event),
        })
    }

    /// Checks and stores a manifest under `r` in `name`: every blob and child it names must be
    /// there already. Shared by pushes and replication.
    pub(super) async fn store_manifest(
        &self,
        name: &RepoName,
        r: &Reference,
        bytes: bytes::Bytes,
        ct: Option<&str>,
    ) -> Result<(Digest, Arc<Manifest>, Event), ApiError> {
        // pushed by digest, the manifest is addressed under that digest's algorithm; by tag,
        // under the canonical sha256
        let algo = match r {
            Reference::Digest(want) => want.algorithm(),
            Reference::Tag(_) => Algorithm::Sha256,
        };
        let m = Manifest::parse_as(bytes, ct, algo)?;
        if let Reference::Digest(want) = r {
            if want.algorithm() != m.digest.algorithm() || want != &m.digest {
                return Err(ApiError::new(
                    Code::DigestInvalid,
                    format!("manifest content has digest {}, not {want}", m.digest),
                ));
            }
        }
        // every referenced blob and child manifest must already be in this repository
        // (each distinct digest once: a manifest may name one layer thousands of times, and on
        // object storage every check is a request)
        let mut missing = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for b in m.blobs.iter().filter(|b| seen.insert(*b)) {
            if !self.blob_linked(name, b).await? || !self.blob_stored(b).await? {
                missing.push(b.to_string());
            }
        }
        for c in &m.children {
            if self.store.stat(&layout::revision_link(name, c)).await?.is_none() || !self.blob_stored(c).await? {
                missing.push(c.to_string());
            }
        }
        if !missing.is_empty() {
            return Err(ApiError::new(
                Code::ManifestBlobUnknown,
                format!(
                    "manifest references {} that this repository does not have; push them first",
                    missing.join(", ")
                ),
            )
            .detail(serde_json::json!({ "missing": missing })));
        }
        let d = m.digest.clone();
        let data = layout::blob_data(&d);
        if self.store.stat(&data).await?.is_none() {
            self.store.put(&data, m.bytes.clone()).await?;
        }
        let existed = self.store.stat(&layout::revision_link(name, &d)).await?.is_some();
        self.publish_revision(name, &m, existed).await?;
        let tag = match r {
            Reference::Tag(t) => {
                let before = self.read_link(&layout::tag_current(name, t)).await?;
                self.link(&layout::tag_index(name, t, &d), &d).await?;
                self.link(&layout::tag_current(name, t), &d).await?;
                // a collector deleting untagged manifests may have taken the revision between
                // its write and the tag's (it listed the one, then the tags before the other)
                if self.store.stat(&layout::revision_link(name, &d)).await?.is_none() {
                    if let Err(e) = self.publish_revision(name, &m, false).await {
                        match before {
                            Some(p) => self.link(&layout::tag_current(name, t), &p).await?,
                            None => self.store.delete_all(&layout::tag_dir(name, t)).await?,
                        }
                        return Err(e);
                    }
                }
                Some(t.to_string())
            }
            Reference::Digest(_) => None,
        };
        let event = Event {
            action: "push",
            repo: name.clone(),
            digest: d.clone(),
            media_type: m.media_type.clone(),
            size: m.bytes.len() as u64,
            tag,
        };
        Ok((d, Arc::new(m), event))
    }

    /// Links `m` into repository `name` (its revision, and its subject's referrer link) and
    /// checks its blobs again now that it is published: a garbage collector that chose one of
    /// them before the revision appeared either sees the revision and spares them, or this
    /// push fails and the links go again (unless the revision `existed` before), so no
    /// manifest is ever left without its blobs (see `gc::sweep`).
    async fn publish_revision(&self, name: &RepoName, m: &Manifest, existed: bool) -> Result<(), ApiError> {
        let d = &m.digest;
        let revision = layout::revision_link(name, d);
        self.link(&revision, d).await?;
        if let Some(s) = &m.subject {
            self.link(&layout::referrer_link(name, s, d), d).await?;
        }
        let going = self.going(m, name).await?;
        if going.is_empty() {
            return Ok(());
        }
        if !existed {
            if let Some(s) = &m.subject {
                self.store.delete(&layout::referrer_link(name, s, d)).await?;
                self.store.prune(&layout::referrer_dir(name, s, d)).await?;
            }
            self.store.delete(&revision).await?;
            self.store.prune(&layout::revision_dir(name, d)).await?;
        }
        Err(ApiError::new(
            Code::ManifestBlobUnknown,
            format!(
                "manifest references {} that garbage collection is removing; push them again",
                going.join(", ")
            ),
        )
        .detail(serde_json::json!({ "missing": going })))
    }

    /// The blobs (and child manifests) of `m`, and its own bytes, that are gone or that a
    /// garbage collector is sweeping.
    async fn going(&self, m: &Manifest, name: &RepoName) -> Result<Vec<String>, ApiError> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for b in m.blobs.iter().chain([&m.digest]).filter(|b| seen.insert(*b)) {
            // the marker first: a collector deletes the blob with its marker, so a marker
            // found absent is either not written yet (the collector will see this revision)
            // or gone with the blob, which the second look then misses
            let marked = match self.store.stat(&layout::blob_sweep_marker(b)).await? {
                Some(meta) => meta
                    .modified
                    .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
                    .is_none_or(|age| age < super::SWEEP_TTL),
                None => false,
            };
            let gone = marked || self.store.stat(&layout::blob_data(b)).await?.is_none();
            if gone {
                out.push(b.to_string());
            }
        }
        for c in &m.children {
            if self.store.stat(&layout::revision_link(name, c)).await?.is_none() {
                out.push(c.to_string());
            }
        }
        Ok(out)
    }

    pub(super) async fn delete_manifest(&self, name: &RepoName, r: &Reference) -> Result<Outcome, ApiError> {
        self.deny_delete()?;
        let unknown = || {
            ApiError::new(
                Code::ManifestUnknown,
                format!("manifest {r} is not known to repository {name}"),
            )
        };
        let (d, tag) = match r {
            Reference::Tag(t) => {
                let d = self
                    .read_link(&layout::tag_current(name, t))
                    .await?
                    .ok_or_else(unknown)?;
                self.store.delete_all(&layout::tag_dir(name, t)).await?;
                (d, Some(t.to_string()))
            }
            Reference::Digest(d) => {
                if self.store.stat(&layout::revision_link(name, d)).await?.is_none() {
                    return Err(unknown());
                }
                // untag everything that points here, then drop the revision
                for t in self.tags_of(name).await? {
                    if self.read_link(&layout::tag_current(name, &t)).await?.as_ref() == Some(d) {
                        self.store.delete_all(&layout::tag_dir(name, &t)).await?;
                    }
                }
                if let Some(m) = self.load_manifest(d).await? {
                    if let Some(s) = &m.subject {
                        self.store.delete(&layout::referrer_link(name, s, d)).await?;
                        self.store.prune(&layout::referrer_dir(name, s, d)).await?;
                    }
                }
                // the revision's directory goes with its link: an empty one left behind would
                // look like a manifest to tools that list directories (as distribution's delete)
                self.store.delete(&layout::revision_link(name, d)).await?;
                self.store.prune(&layout::revision_dir(name, d)).await?;
                (d.clone(), None)
            }
        };
        let mut resp = http::status(StatusCode::ACCEPTED);
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        Ok(Outcome {
            resp,
            event: Some(Event {
                action: "delete",
                repo: name.clone(),
                digest: d,
                media_type: String::new(),
                size: 0,
                tag,
            }),
        })
    }

    pub(super) async fn tags_of(&self, name: &RepoName) -> Result<Vec<Tag>, ApiError> {
        let mut out = Vec::new();
        for e in self.store.list(&layout::tags_dir(name)).await? {
            if let Some(t) = Tag::parse(&e.name) {
                if e.is_dir {
                    out.push(t);
                }
            }
        }
        Ok(out)
    }
}

/// Whether the request's `Accept` allows `media_type`. No Accept, or a wildcard, allows anything.
fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut any = false;
    for v in headers.get_all(header::ACCEPT) {
        let Ok(v) = v.to_str() else { continue };
        for item in v.split(',') {
            let t = item.split(';').next().unwrap_or("").trim();
            if t.is_empty() {
                continue;
            }
            any = true;
            if t == media_type || t == "*/*" || t == "application/*" || t == "application/json" {
                return true;
            }
        }
    }
    !any
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn parses_image_and_index() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":3}}],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":4}}}}"#,
            d('a'),
            d('b'),
            d('c')
        );
        let m = Manifest::parse(Bytes::from(body), None).unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
        assert_eq!(m.blobs.len(), 2);
        assert_eq!(m.subject.unwrap().to_string(), d('c'));
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );

        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5}}]}}"#,
            d('e')
        );
        let m = Manifest::parse(Bytes::from(idx), None).unwrap();
        assert_eq!(m.media_type, OCI_INDEX);
        assert_eq!(m.children.len(), 1);
    }

    #[test]
    fn refuses_bad_manifests() {
        for (body, ct) in [
            (r#"{"schemaVersion":1,"fsLayers":[]}"#.to_string(), None),
            ("not json".to_string(), None),
            (r#"{"schemaVersion":3}"#.to_string(), None),
            (
                format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[]}}"#),
                None,
            ),
            (
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x","digest":"sha256:zz","size":1}},"layers":[]}}"#
                ),
                None,
            ),
            (
                format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#),
                Some(DOCKER_LIST),
            ),
            (r#"{"schemaVersion":2,"mediaType":"text/plain"}"#.to_string(), None),
        ] {
            let e = Manifest::parse(Bytes::from(body.clone()), ct).unwrap_err();
            assert_eq!(e.code(), Some(Code::ManifestInvalid), "{body}");
        }
    }

    #[test]
    fn accept_negotiation() {
        let mut h = HeaderMap::new();
        assert!(accepts(&h, OCI_INDEX));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.docker.distribution.manifest.v2+json"),
        );
        assert!(!accepts(&h, OCI_INDEX));
        assert!(accepts(&h, DOCKER_MANIFEST));
        h.append(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.oci.image.index.v1+json; q=0.5"),
        );
        assert!(accepts(&h, OCI_INDEX));
    }
}
