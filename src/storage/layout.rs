//! Storage keys, in distribution's layout (`docker/registry/v2/...`), built only from typed names.

use crate::types::names::{Algorithm, Digest, RepoName, Tag, UploadId};

pub const ROOT: &str = "docker/registry/v2";
pub const REPOS: &str = "docker/registry/v2/repositories";

pub fn blob_data(d: &Digest) -> String {
    format!(
        "{ROOT}/blobs/{}/{}/{}/data",
        d.algorithm().as_str(),
        &d.hex()[..2],
        d.hex()
    )
}

/// Every blob stored under one digest algorithm: `blobs/<algorithm>/<2 hex>/<hex>/data`.
pub fn blobs_dir(a: Algorithm) -> String {
    format!("{ROOT}/blobs/{}", a.as_str())
}

/// Present while garbage collection is about to delete the blob (see `gc::sweep`): a manifest
/// push that finds it fails rather than reference a blob that is going.
pub fn blob_sweep_marker(d: &Digest) -> String {
    format!("{}/regate-sweeping", blob_dir(d))
}

pub fn blob_dir(d: &Digest) -> String {
    format!("{ROOT}/blobs/{}/{}/{}", d.algorithm().as_str(), &d.hex()[..2], d.hex())
}

pub fn repo(name: &RepoName) -> String {
    format!("{REPOS}/{name}")
}

pub fn layer_link(name: &RepoName, d: &Digest) -> String {
    format!("{REPOS}/{name}/_layers/{}/{}/link", d.algorithm().as_str(), d.hex())
}

pub fn layer_dir(name: &RepoName, d: &Digest) -> String {
    format!("{REPOS}/{name}/_layers/{}/{}", d.algorithm().as_str(), d.hex())
}

pub fn layers_dir(name: &RepoName, a: Algorithm) -> String {
    format!("{REPOS}/{name}/_layers/{}", a.as_str())
}

pub fn revision_link(name: &RepoName, d: &Digest) -> String {
    format!(
        "{REPOS}/{name}/_manifests/revisions/{}/{}/link",
        d.algorithm().as_str(),
        d.hex()
    )
}

/// The directory of one revision: its `link` and nothing else. A revision directory without a
/// `link` (which distribution's delete leaves behind) is not a manifest of the repository.
pub fn revision_dir(name: &RepoName, d: &Digest) -> String {
    format!(
        "{REPOS}/{name}/_manifests/revisions/{}/{}",
        d.algorithm().as_str(),
        d.hex()
    )
}

pub fn revisions_dir(name: &RepoName, a: Algorithm) -> String {
    format!("{REPOS}/{name}/_manifests/revisions/{}", a.as_str())
}

pub fn tags_dir(name: &RepoName) -> String {
    format!("{REPOS}/{name}/_manifests/tags")
}

pub fn tag_dir(name: &RepoName, t: &Tag) -> String {
    format!("{REPOS}/{name}/_manifests/tags/{t}")
}

pub fn tag_current(name: &RepoName, t: &Tag) -> String {
    format!("{REPOS}/{name}/_manifests/tags/{t}/current/link")
}

pub fn tag_index(name: &RepoName, t: &Tag, d: &Digest) -> String {
    format!(
        "{REPOS}/{name}/_manifests/tags/{t}/index/{}/{}/link",
        d.algorithm().as_str(),
        d.hex()
    )
}

/// regate's own index of referrers: one link per (subject, referrer) pair. distribution ignores
/// `_`-prefixed directories it does not know.
pub fn referrer_link(name: &RepoName, subject: &Digest, referrer: &Digest) -> String {
    format!(
        "{REPOS}/{name}/_referrers/{}/{}/{}/{}/link",
        subject.algorithm().as_str(),
        subject.hex(),
        referrer.algorithm().as_str(),
        referrer.hex()
    )
}

/// The directory holding [`referrer_link`] for one (subject, referrer) pair.
pub fn referrer_dir(name: &RepoName, subject: &Digest, referrer: &Digest) -> String {
    format!(
        "{REPOS}/{name}/_referrers/{}/{}/{}/{}",
        subject.algorithm().as_str(),
        subject.hex(),
        referrer.algorithm().as_str(),
        referrer.hex()
    )
}

/// The referrers of `subject` whose digests use algorithm `a`.
pub fn referrers_dir(name: &RepoName, subject: &Digest, a: Algorithm) -> String {
    format!(
        "{REPOS}/{name}/_referrers/{}/{}/{}",
        subject.algorithm().as_str(),
        subject.hex(),
        a.as_str()
    )
}

pub fn uploads_dir(name: &RepoName) -> String {
    format!("{REPOS}/{name}/_uploads")
}

pub fn upload_dir(name: &RepoName, id: &UploadId) -> String {
    format!("{REPOS}/{name}/_uploads/{id}")
}

/// distribution's marker of an upload's start time (RFC 3339); its purge job reads it.
pub fn upload_startedat(name: &RepoName, id: &UploadId) -> String {
    format!("{REPOS}/{name}/_uploads/{id}/startedat")
}

/// An upload's bytes when the backend can append (fs): one file, distribution's name for it.
pub fn upload_data(name: &RepoName, id: &UploadId) -> String {
    format!("{REPOS}/{name}/_uploads/{id}/data")
}

/// How many bytes of [`upload_data`] belong to the upload (whole chunks), and their running
/// sha256, so the next chunk continues the hash.
pub fn upload_progress(name: &RepoName, id: &UploadId) -> String {
    format!("{REPOS}/{name}/_uploads/{id}/regate-progress")
}

pub fn upload_part(name: &RepoName, id: &UploadId, offset: u64) -> String {
    format!("{REPOS}/{name}/_uploads/{id}/part-{offset:020}")
}

/// regate's own state (refresh tokens, robots, CLI passwords) lives beside the registry tree.
pub fn state(kind: &str, id: &str) -> String {
    format!("regate/{kind}/{id}")
}

pub fn state_dir(kind: &str) -> String {
    format!("regate/{kind}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_paths() {
        let d = Digest::parse(&format!("sha256:ab{}", "0".repeat(62))).unwrap();
        let n = RepoName::parse("library/x").unwrap();
        assert_eq!(
            blob_data(&d),
            format!("docker/registry/v2/blobs/sha256/ab/ab{}/data", "0".repeat(62))
        );
        assert_eq!(
            layer_link(&n, &d),
            format!(
                "docker/registry/v2/repositories/library/x/_layers/sha256/ab{}/link",
                "0".repeat(62)
            )
        );
        let t = Tag::parse("v1").unwrap();
        assert_eq!(
            tag_current(&n, &t),
            "docker/registry/v2/repositories/library/x/_manifests/tags/v1/current/link"
        );
    }
}
