//! The embedded registry: the OCI Distribution API v1.1 over [`crate::storage::Storage`].
//!
//! Handlers receive an already authorised, typed [`Route`]; they never see raw paths.

pub mod error;
pub mod route;

mod blobs;
mod browse;
mod hashstate;
mod listing;
mod manifests;
mod mirrored;
mod replica;
mod uploads;

use crate::http::{BodyReader, Resp};
use crate::storage::Storage;
use crate::types::names::{Digest, RepoName};
use ::http::{header, HeaderMap, Method, StatusCode};
use error::{ApiError, Code};
use hyper::body::Incoming;
pub use route::{classify, Route, RouteError};
use std::sync::Arc;
use std::time::Duration;

pub use manifests::Manifest;

/// A referenced blob older than this gets its modification time refreshed (must stay well below
/// the smallest sensible GC grace period).
const REFRESH_AFTER: Duration = Duration::from_secs(600);

/// How long a garbage collector's sweep marker on a blob is believed: a marker older than this
/// was left by a collector that died, and no longer stops pushes (the collector stops deleting
/// after half of it).
pub const SWEEP_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct Options {
    /// DELETE of manifests, tags and blobs allowed.
    pub delete: bool,
    /// Largest manifest accepted on PUT.
    pub max_manifest_bytes: u64,
    /// `scheme://host[:port]` clients reach us at; absolute `Location`s are built from it.
    pub public_url: String,
    /// How long a request body may stall before the upload is abandoned.
    pub body_idle: Duration,
    /// `storage.redirect`: blob GETs answer 307 to a presigned URL valid this long, where the
    /// backend can presign.
    pub redirect: Option<Duration>,
}

/// What the caller may do beyond the route it was authorised for: reading the source of a
/// cross-repository mount, and filtering the catalog.
pub trait Permissions: Send + Sync {
    fn can_pull(&self, repo: &RepoName) -> bool;
}

/// A registry event, for notifications and the audit log.
#[derive(Debug, Clone)]
pub struct Event {
    pub action: &'static str,
    pub repo: RepoName,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub tag: Option<String>,
}

pub struct Registry {
    store: Arc<Storage>,
    opts: Options,
    manifests: moka::sync::Cache<Digest, Arc<Manifest>>,
    mirror: Option<Arc<crate::mirror::Mirror>>,
}

pub struct Request<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub query: &'a [(String, String)],
    pub body: Incoming,
    pub perms: &'a dyn Permissions,
}

/// What a handler produced: the response, and the event to publish when it changed or served
/// content.
pub struct Outcome {
    pub resp: Resp,
    pub event: Option<Event>,
}

impl From<Resp> for Outcome {
    fn from(resp: Resp) -> Self {
        Outcome { resp, event: None }
    }
}

impl Registry {
    pub fn new(store: Arc<Storage>, opts: Options) -> Self {
        let manifests = moka::sync::Cache::builder()
            .max_capacity(32 << 20)
            .weigher(|_: &Digest, m: &Arc<Manifest>| m.bytes.len().try_into().unwrap_or(u32::MAX))
            .build();
        Self {
            store,
            opts,
            manifests,
            mirror: None,
        }
    }

    /// Pulls of what is not held locally go to this remote registry (pull-through cache).
    pub fn with_mirror(mut self, m: Arc<crate::mirror::Mirror>) -> Self {
        self.mirror = Some(m);
        self
    }

    pub fn store(&self) -> &Arc<Storage> {
        &self.store
    }

    pub async fn handle(&self, route: Route, req: Request<'_>) -> Result<Outcome, ApiError> {
        let allow = route.allowed_methods(self.opts.delete);
        self.route(route, req).await.map_err(|e| {
            // a 405 names what the endpoint does answer
            if e.status() == StatusCode::METHOD_NOT_ALLOWED {
                e.with_header(::http::header::ALLOW, allow)
            } else {
                e
            }
        })
    }

    /// Whether `DELETE` is served (`storage.delete`).
    pub fn deletes_enabled(&self) -> bool {
        self.opts.delete
    }

    async fn route(&self, route: Route, req: Request<'_>) -> Result<Outcome, ApiError> {
        let m = req.method.clone();
        let body = BodyReader::new(req.body, self.opts.body_idle);
        match (route, m) {
            (Route::Base, Method::GET | Method::HEAD) => {
                Ok(crate::http::json(StatusCode::OK, &serde_json::json!({})).into())
            }
            (Route::Catalog, Method::GET) => self.catalog(req.query, req.perms).await.map(Into::into),
            (Route::Tags(n), Method::GET) => self.tags(&n, req.query).await.map(Into::into),
            (Route::Blob(n, d), Method::GET | Method::HEAD) => {
                self.get_blob(&n, &d, req.headers, req.method == Method::HEAD).await
            }
            (Route::Blob(n, d), Method::DELETE) => self.delete_blob(&n, &d).await.map(Into::into),
            (Route::UploadStart(n), Method::POST) => {
                self.start_upload(&n, req.headers, req.query, body, req.perms).await
            }
            (Route::Upload(n, id), Method::GET) => self.upload_status(&n, &id).await.map(Into::into),
            (Route::Upload(n, id), Method::PATCH) => {
                self.patch_upload(&n, &id, req.headers, body).await.map(Into::into)
            }
            (Route::Upload(n, id), Method::PUT) => self.finish_upload(&n, &id, req.headers, req.query, body).await,
            (Route::Upload(n, id), Method::DELETE) => self.cancel_upload(&n, &id).await.map(Into::into),
            (Route::Manifest(n, r), Method::GET | Method::HEAD) => {
                self.get_manifest(&n, &r, req.headers, req.method == Method::HEAD).await
            }
            (Route::Manifest(n, r), Method::PUT) => self.put_manifest(&n, &r, req.headers, body).await,
            (Route::Manifest(n, r), Method::DELETE) => self.delete_manifest(&n, &r).await,
            (Route::Referrers(n, d), Method::GET) => self.referrers(&n, &d, req.query).await.map(Into::into),
            (_, _) => Err(ApiError::new(Code::Unsupported, "method not allowed on this endpoint")),
        }
    }

    fn location(&self, path: &str) -> String {
        format!("{}{}", self.opts.public_url, path)
    }

    fn deny_delete(&self) -> Result<(), ApiError> {
        if self.opts.delete {
            Ok(())
        } else {
            Err(ApiError::new(
                Code::Unsupported,
                "deletes are disabled on this registry (storage.delete: false)",
            ))
        }
    }

    /// Whether `digest` is linked into repository `name` as a layer/config blob.
    async fn blob_linked(&self, name: &RepoName, d: &Digest) -> Result<bool, ApiError> {
        Ok(self
            .store
            .stat(&crate::storage::layout::layer_link(name, d))
            .await?
            .is_some())
    }

    /// Whether the blob's bytes are stored; refreshes their modification time when it is older
    /// than a few minutes, so a blob just referenced again is never inside a GC sweep's window.
    async fn blob_stored(&self, d: &Digest) -> Result<bool, ApiError> {
        let key = crate::storage::layout::blob_data(d);
        let Some(meta) = self.store.stat(&key).await? else {
            return Ok(false);
        };
        let stale = meta
            .modified
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
            .is_none_or(|age| age > REFRESH_AFTER);
        if stale {
            if let Err(e) = self.store.touch(&key).await {
                tracing::warn!(error = %e, digest = %d, "cannot refresh blob time");
            }
        }
        Ok(true)
    }

    async fn link(&self, key: &str, d: &Digest) -> Result<(), ApiError> {
        self.store.put(key, bytes::Bytes::from(d.to_string())).await?;
        Ok(())
    }

    async fn read_link(&self, key: &str) -> Result<Option<Digest>, ApiError> {
        match self.store.read(key, 1024).await? {
            None => Ok(None),
            Some(b) => {
                let s = std::str::from_utf8(&b).unwrap_or("").trim();
                Ok(Digest::parse(s))
            }
        }
    }
}

fn digest_header(r: &mut Resp, d: &Digest) {
    crate::http::set(
        r,
        header::HeaderName::from_static("docker-content-digest"),
        &d.to_string(),
    );
}

fn body_error(e: crate::http::BodyError) -> ApiError {
    match e {
        crate::http::BodyError::TooLarge => ApiError::new(Code::ManifestTooLarge, "request body too large"),
        crate::http::BodyError::Idle => ApiError::new(
            Code::BlobUploadInvalid,
            "request body stalled; the upload can be resumed",
        )
        .with_status(StatusCode::REQUEST_TIMEOUT),
        crate::http::BodyError::Io(e) => {
            ApiError::new(Code::BlobUploadInvalid, format!("reading request body failed: {e}"))
        }
    }
}
