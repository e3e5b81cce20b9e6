//! `/v2/...` paths to typed routes. A pure function, parsed from the right because repository
//! names may themselves contain `blobs`, `manifests` or `tags` as components.

use crate::types::names::{Digest, Reference, RepoName, UploadId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Base,
    Catalog,
    Tags(RepoName),
    Manifest(RepoName, Reference),
    Blob(RepoName, Digest),
    UploadStart(RepoName),
    Upload(RepoName, UploadId),
    Referrers(RepoName, Digest),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// Not an API path at all.
    NotFound,
    NameInvalid,
    DigestInvalid,
    ReferenceInvalid,
    UploadInvalid,
}

impl Route {
    /// The methods the endpoint answers (`Allow` of a 405), without `DELETE` of manifests and
    /// blobs when deletes are disabled.
    pub fn allowed_methods(&self, deletes: bool) -> &'static str {
        match (self, deletes) {
            (Route::Base, _) => "GET, HEAD",
            (Route::Catalog | Route::Tags(_) | Route::Referrers(..), _) => "GET",
            (Route::Manifest(..), true) => "GET, HEAD, PUT, DELETE",
            (Route::Manifest(..), false) => "GET, HEAD, PUT",
            (Route::Blob(..), true) => "GET, HEAD, DELETE",
            (Route::Blob(..), false) => "GET, HEAD",
            (Route::UploadStart(_), _) => "POST",
            // cancelling an upload is not a delete of anything stored
            (Route::Upload(..), _) => "GET, PATCH, PUT, DELETE",
        }
    }

    pub fn repo(&self) -> Option<&RepoName> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Tags(n)
            | Route::Manifest(n, _)
            | Route::Blob(n, _)
            | Route::UploadStart(n)
            | Route::Upload(n, _)
            | Route::Referrers(n, _) => Some(n),
        }
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags(_) => "tags",
            Route::Manifest(..) => "manifest",
            Route::Blob(..) => "blob",
            Route::UploadStart(_) | Route::Upload(..) => "upload",
            Route::Referrers(..) => "referrers",
        }
    }
}

/// Classify the part of the path after `/v2/` (no query string; not percent-decoded: none of the
/// grammars allow `%`, so an encoded character can only make a path invalid, never change it).
pub fn classify(rest: &str) -> Result<Route, RouteError> {
    if rest.is_empty() {
        return Ok(Route::Base);
    }
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let name = |k: usize| -> Result<RepoName, RouteError> {
        if k == 0 {
            return Err(RouteError::NotFound);
        }
        RepoName::parse(&rest[..segs[..k].iter().map(|s| s.len() + 1).sum::<usize>() - 1])
            .ok_or(RouteError::NameInvalid)
    };
    if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
        return Ok(Route::Tags(name(n - 2)?));
    }
    if n >= 3 && segs[n - 2] == "manifests" {
        let repo = name(n - 2)?;
        let r = Reference::parse(segs[n - 1]).ok_or(if segs[n - 1].contains(':') {
            RouteError::DigestInvalid
        } else {
            RouteError::ReferenceInvalid
        })?;
        return Ok(Route::Manifest(repo, r));
    }
    if n >= 3 && segs[n - 2] == "blobs" && segs[n - 1] == "uploads" {
        return Ok(Route::UploadStart(name(n - 2)?));
    }
    if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
        let repo = name(n - 3)?;
        if segs[n - 1].is_empty() {
            return Ok(Route::UploadStart(repo));
        }
        let id = UploadId::parse(segs[n - 1]).ok_or(RouteError::UploadInvalid)?;
        return Ok(Route::Upload(repo, id));
    }
    if n >= 3 && segs[n - 2] == "blobs" {
        let repo = name(n - 2)?;
        let d = Digest::parse(segs[n - 1]).ok_or(RouteError::DigestInvalid)?;
        return Ok(Route::Blob(repo, d));
    }
    if n >= 3 && segs[n - 2] == "referrers" {
        let repo = name(n - 2)?;
        let d = Digest::parse(segs[n - 1]).ok_or(RouteError::DigestInvalid)?;
        return Ok(Route::Referrers(repo, d));
    }
    Err(RouteError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn routes() {
        assert_eq!(classify(""), Ok(Route::Base));
        assert_eq!(classify("_catalog"), Ok(Route::Catalog));
        let r = classify("a/b/tags/list").unwrap();
        assert_eq!(r, Route::Tags(RepoName::parse("a/b").unwrap()));
        let r = classify("tags/list/tags/list").unwrap();
        assert_eq!(r, Route::Tags(RepoName::parse("tags/list").unwrap()));
        let r = classify("x/manifests/manifests/latest").unwrap();
        assert!(matches!(r, Route::Manifest(ref n, Reference::Tag(_)) if n.as_str() == "x/manifests"));
        let r = classify(&format!("x/blobs/{D}")).unwrap();
        assert!(matches!(r, Route::Blob(..)));
        assert!(matches!(classify("x/blobs/uploads/"), Ok(Route::UploadStart(_))));
        assert!(matches!(classify("x/blobs/uploads"), Ok(Route::UploadStart(_))));
        let id = UploadId::new();
        assert!(matches!(
            classify(&format!("x/y/blobs/uploads/{id}")),
            Ok(Route::Upload(..))
        ));
        assert!(matches!(
            classify(&format!("x/referrers/{D}")),
            Ok(Route::Referrers(..))
        ));
        // a repository literally named blobs
        assert!(matches!(classify(&format!("blobs/blobs/{D}")), Ok(Route::Blob(ref n, _)) if n.as_str() == "blobs"));
    }

    #[test]
    fn bad_paths() {
        assert_eq!(classify("UPPER/tags/list"), Err(RouteError::NameInvalid));
        assert_eq!(classify("a/../b/tags/list"), Err(RouteError::NameInvalid));
        assert_eq!(classify("a/%2e%2e/b/tags/list"), Err(RouteError::NameInvalid));
        assert_eq!(classify("a%2fb/tags/list"), Err(RouteError::NameInvalid));
        assert_eq!(classify("a//b/tags/list"), Err(RouteError::NameInvalid));
        assert_eq!(classify("/tags/list"), Err(RouteError::NameInvalid));
        assert_eq!(classify("a/manifests/sha256:xyz"), Err(RouteError::DigestInvalid));
        assert_eq!(classify("a/manifests/-bad"), Err(RouteError::ReferenceInvalid));
        assert_eq!(classify("a/blobs/latest"), Err(RouteError::DigestInvalid));
        assert_eq!(classify("a/blobs/uploads/../../x"), Err(RouteError::NotFound));
        assert_eq!(classify(&format!("a/../blobs/{D}")), Err(RouteError::NameInvalid));
        assert_eq!(classify("a/blobs/uploads/nope"), Err(RouteError::UploadInvalid));
        assert_eq!(classify("a"), Err(RouteError::NotFound));
        assert_eq!(classify("a/b/c"), Err(RouteError::NotFound));
        assert_eq!(classify("tags/list"), Err(RouteError::NotFound));
    }
}
