//! The registry suite: OCI Distribution Spec v1.1 conformance, end to end, every `/v2/` endpoint
//! and its error paths, driven over HTTP against the real binary. Each test starts its own server.
//!
//! Written once, run against every storage backend: the test crate that includes this module
//! (`tests/conformance.rs` for fs, `tests/object_storage.rs` for S3) provides `crate::backend`
//! with `storage_yaml` (the config section for a server in a temp dir), `stored_keys` (what is in
//! the store under a prefix) and `leftovers` (temporary objects or unfinished multipart uploads).

mod under_fire;

use crate::backend;
use crate::common::{client, digest, token, Server};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const EMPTY_SHA256: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const MIB: usize = 1 << 20;

/// A running registry and an admin Bearer token for the repositories a test uses.
struct Reg {
    s: Server,
    c: reqwest::Client,
    auth: String,
}

impl Reg {
    async fn start(repos: &[&str]) -> Reg {
        Self::on(start_server(""), repos).await
    }

    async fn on(s: Server, repos: &[&str]) -> Reg {
        let (u, p) = s.admin();
        let mut scopes: Vec<String> = repos
            .iter()
            .map(|r| format!("repository:{r}:pull,push,delete"))
            .collect();
        scopes.push("registry:catalog:*".into());
        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        let t = token(&s, Some((&u, &p)), &scopes).await;
        Reg {
            s,
            c: client(),
            auth: format!("Bearer {t}"),
        }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{}", self.s.url, path)
        }
    }

    fn req(&self, m: Method, path: &str) -> RequestBuilder {
        self.c.request(m, self.url(path)).header("authorization", &self.auth)
    }

    fn anon(&self, m: Method, path: &str) -> RequestBuilder {
        self.c.request(m, self.url(path))
    }

    fn basic(&self) -> String {
        let (u, p) = self.s.admin();
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    }

    /// Single-POST upload; asserts the 201.
    async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let d = digest(data);
        let r = self
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={d}"))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "push blob to {repo}: {}", r.text().await.unwrap());
        d
    }

    async fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Response {
        self.req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// PUTs `m` (Content-Type from its `mediaType`), asserts the 201 and its headers; returns
    /// the digest and the exact bytes sent.
    async fn push_manifest(&self, repo: &str, reference: &str, m: &Value) -> (String, Vec<u8>) {
        let bytes = serde_json::to_vec(m).unwrap();
        let mt = m["mediaType"].as_str().unwrap_or(OCI_MANIFEST);
        let d = digest(&bytes);
        let r = self.put_manifest(repo, reference, mt, &bytes).await;
        let st = r.status();
        let loc = h(&r, "location");
        let dcd = h(&r, "docker-content-digest");
        assert_eq!(st, 201, "PUT manifest {repo}:{reference}: {}", r.text().await.unwrap());
        assert_eq!(dcd, d);
        assert!(
            loc.ends_with(&format!("/v2/{repo}/manifests/{d}")),
            "manifest Location {loc}"
        );
        (d, bytes)
    }

    /// Pushes a config and a layer into `repo` and returns an OCI image manifest naming them.
    async fn image(&self, repo: &str, seed: &str) -> Value {
        let cfg = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "seed": seed})).unwrap();
        let layer = format!("layer bytes of {seed};").repeat(20).into_bytes();
        let cd = self.push_blob(repo, &cfg).await;
        let ld = self.push_blob(repo, &layer).await;
        json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": cfg.len()},
            "layers": [{"mediaType": OCI_LAYER, "digest": ld, "size": layer.len()}]
        })
    }

    /// POST to start an upload; asserts the 202 and its headers; returns the upload URL.
    async fn start_upload(&self, repo: &str) -> String {
        let r = self
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .header("content-length", "0")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        assert_eq!(h(&r, "content-length"), "0");
        upload_headers(&r, repo, 0)
    }

    async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path).send().await.unwrap()
    }

    async fn head(&self, path: &str) -> Response {
        self.req(Method::HEAD, path).send().await.unwrap()
    }
}

/// A server-side panic (a worker dies, the client only sees a dropped connection) fails the test
/// even when every answer looked right.
impl Drop for Reg {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let logs = self.s.logs();
            assert!(!logs.contains("panicked"), "the server panicked:\n{logs}");
        }
    }
}

/// A server on the backend under test; `storage_extra` adds keys to its `storage:` section.
fn start_server(storage_extra: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let yaml = backend::storage_yaml(dir.path(), storage_extra);
    Server::start_in(dir, &yaml)
}

fn h(r: &Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Asserts an error answer: status, a JSON body and its first error code.
async fn expect_err(r: Response, status: u16, code: &str) {
    let st = r.status().as_u16();
    let ct = h(&r, "content-type");
    let text = r.text().await.unwrap();
    assert_eq!(st, status, "status (body {text})");
    assert!(ct.starts_with("application/json"), "error Content-Type {ct}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    assert_eq!(v["errors"][0]["code"], code, "{text}");
}

/// The headers every answer about an open upload carries; returns its Location.
fn upload_headers(r: &Response, repo: &str, received: u64) -> String {
    let loc = h(r, "location");
    let uuid = h(r, "docker-upload-uuid");
    assert!(!uuid.is_empty(), "Docker-Upload-UUID missing");
    assert!(
        loc.contains(&format!("/v2/{repo}/blobs/uploads/")) && loc.ends_with(&uuid),
        "upload Location {loc} (uuid {uuid})"
    );
    let want = format!("0-{}", received.saturating_sub(1));
    assert_eq!(h(r, "range"), want, "Range after {received} bytes");
    loc
}

fn with_query(loc: &str, q: &str) -> String {
    if loc.contains('?') {
        format!("{loc}&{q}")
    } else {
        format!("{loc}?{q}")
    }
}

/// `n` bytes that do not repeat with a short period (so misplaced ranges are caught).
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8 ^ seed)
        .collect()
}

/// The URL in a `Link: <url>; rel="next"` header.
fn link_next(r: &Response) -> Option<String> {
    let l = h(r, "link");
    if l.is_empty() {
        return None;
    }
    assert!(l.ends_with("rel=\"next\""), "Link {l}");
    let start = l.find('<').unwrap() + 1;
    let end = l.find('>').unwrap();
    Some(l[start..end].to_owned())
}

/// One request written byte for byte on a fresh connection (no client-side path normalisation).
async fn raw(host: &str, method: &str, target: &str, auth: Option<&str>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n");
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

// ---------------------------------------------------------------------------------------------
// end-1: /v2/

#[tokio::test]
async fn base_endpoint_challenges_and_accepts_credentials() {
    let r = Reg::start(&[]).await;
    for m in [Method::GET, Method::HEAD] {
        let resp = r.anon(m.clone(), "/v2/").send().await.unwrap();
        assert_eq!(resp.status(), 401, "{m}");
        let www = h(&resp, "www-authenticate");
        assert!(
            www.starts_with(&format!("Bearer realm=\"{}/token\",service=\"", r.s.url)),
            "{www}"
        );
        if m == Method::GET {
            expect_err(resp, 401, "UNAUTHORIZED").await;
        }
    }
    // a forged token is refused, and says so
    let resp = r
        .anon(Method::GET, "/v2/")
        .header("authorization", "Bearer not.a.token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(h(&resp, "www-authenticate").contains("error=\"invalid_token\""));

    let resp = r.get("/v2/").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(h(&resp, "docker-distribution-api-version"), "registry/2.0");
    let resp = r
        .anon(Method::GET, "/v2/")
        .header("authorization", r.basic())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = r
        .anon(Method::GET, "/v2/")
        .basic_auth("admin", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

// ---------------------------------------------------------------------------------------------
// end-2: blobs

#[tokio::test]
async fn blob_head_get_and_ranges() {
    let r = Reg::start(&["lib/data"]).await;
    let data = pattern(1000, 7);
    let d = r.push_blob("lib/data", &data).await;
    let path = format!("/v2/lib/data/blobs/{d}");

    let resp = r.head(&path).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(h(&resp, "content-length"), "1000");
    assert_eq!(h(&resp, "docker-content-digest"), d);
    assert_eq!(h(&resp, "content-type"), "application/octet-stream");
    assert!(resp.bytes().await.unwrap().is_empty(), "HEAD has no body");

    let resp = r.get(&path).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(h(&resp, "content-length"), "1000");
    assert_eq!(h(&resp, "docker-content-digest"), d);
    assert_eq!(h(&resp, "content-type"), "application/octet-stream");
    assert_eq!(h(&resp, "accept-ranges"), "bytes");
    assert_eq!(resp.bytes().await.unwrap(), data);

    for (range, s, e) in [
        ("bytes=10-19", 10, 19),
        ("bytes=0-0", 0, 0),
        ("bytes=990-", 990, 999),
        ("bytes=-5", 995, 999),
        ("bytes=900-5000", 900, 999),
    ] {
        let resp = r.req(Method::GET, &path).header("range", range).send().await.unwrap();
        assert_eq!(resp.status(), 206, "{range}");
        assert_eq!(h(&resp, "content-range"), format!("bytes {s}-{e}/1000"), "{range}");
        assert_eq!(h(&resp, "content-length"), (e - s + 1).to_string(), "{range}");
        assert_eq!(h(&resp, "docker-content-digest"), d);
        assert_eq!(resp.bytes().await.unwrap(), &data[s..=e], "{range}");
    }
    for range in ["bytes=1000-", "bytes=5000-6000", "bytes=-0"] {
        let resp = r.req(Method::GET, &path).header("range", range).send().await.unwrap();
        assert_eq!(resp.status(), 416, "{range}");
        assert_eq!(h(&resp, "content-range"), "bytes */1000", "{range}");
    }
}

#[tokio::test]
async fn blob_unknown_and_other_repositories_blobs_are_404() {
    let r = Reg::start(&["one", "two"]).await;
    let d = r.push_blob("one", b"only in repository one").await;
    let unknown = digest(b"never pushed");
    expect_err(r.get(&format!("/v2/one/blobs/{unknown}")).await, 404, "BLOB_UNKNOWN").await;
    assert_eq!(r.head(&format!("/v2/one/blobs/{unknown}")).await.status(), 404);
    // the bytes exist in the registry, but repository two never linked them
    expect_err(r.get(&format!("/v2/two/blobs/{d}")).await, 404, "BLOB_UNKNOWN").await;
    assert_eq!(r.head(&format!("/v2/two/blobs/{d}")).await.status(), 404);
    assert_eq!(r.get(&format!("/v2/one/blobs/{d}")).await.status(), 200);
}

#[tokio::test]
async fn blob_delete_then_unknown() {
    let r = Reg::start(&["del/a", "del/b"]).await;
    let data = b"a blob to delete".to_vec();
    let d = r.push_blob("del/a", &data).await;
    r.push_blob("del/b", &data).await;
    let path = format!("/v2/del/a/blobs/{d}");
    let resp = r.req(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(h(&resp, "docker-content-digest"), d);
    assert_eq!(r.head(&path).await.status(), 404);
    expect_err(r.get(&path).await, 404, "BLOB_UNKNOWN").await;
    expect_err(r.req(Method::DELETE, &path).send().await.unwrap(), 404, "BLOB_UNKNOWN").await;
    // only this repository's link went: the other repository still serves it
    let resp = r.get(&format!("/v2/del/b/blobs/{d}")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), data);
}

// ---------------------------------------------------------------------------------------------
// end-4..6, 13, 14: uploads

#[tokio::test]
async fn upload_post_then_put_monolithic() {
    let r = Reg::start(&["up/mono"]).await;
    let data = pattern(70_000, 1);
    let d = digest(&data);
    let loc = r.start_upload("up/mono").await;
    let resp = r
        .req(Method::PUT, &with_query(&loc, &format!("digest={d}")))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert!(
        h(&resp, "location").ends_with(&format!("/v2/up/mono/blobs/{d}")),
        "{}",
        h(&resp, "location")
    );
    assert_eq!(h(&resp, "docker-content-digest"), d);
    let blob = r.get(&h(&resp, "location")).await;
    assert_eq!(blob.status(), 200);
    assert_eq!(blob.bytes().await.unwrap(), data);
    // the session is closed
    expect_err(r.get(&loc).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn upload_single_post_with_digest() {
    let r = Reg::start(&["up/single"]).await;
    let data = pattern(5000, 2);
    let d = digest(&data);
    let resp = r
        .req(Method::POST, &format!("/v2/up/single/blobs/uploads/?digest={d}"))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert!(h(&resp, "location").ends_with(&format!("/v2/up/single/blobs/{d}")));
    assert_eq!(h(&resp, "docker-content-digest"), d);
    assert_eq!(r.get(&h(&resp, "location")).await.bytes().await.unwrap(), data);

    // the wrong bytes for a digest are refused and not stored under it
    let other = digest(b"something else");
    let resp = r
        .req(Method::POST, &format!("/v2/up/single/blobs/uploads/?digest={other}"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    expect_err(resp, 400, "DIGEST_INVALID").await;
    assert_eq!(r.head(&format!("/v2/up/single/blobs/{other}")).await.status(), 404);
    // digests that cannot be uploaded
    for bad in [
        "sha256:xyz".to_owned(),
        format!("md5:{}", "0".repeat(32)),
        format!("sha512:{}", "0".repeat(128)),
    ] {
        let resp = r
            .req(Method::POST, &format!("/v2/up/single/blobs/uploads/?digest={bad}"))
            .body(data.clone())
            .send()
            .await
            .unwrap();
        expect_err(resp, 400, "DIGEST_INVALID").await;
    }
}

#[tokio::test]
async fn upload_chunked_with_status_and_out_of_order_chunks() {
    let r = Reg::start(&["up/chunks"]).await;
    let data = pattern(400, 3);
    let d = digest(&data);
    let loc = r.start_upload("up/chunks").await;

    let patch = |loc: String, range: &str, body: &[u8]| {
        r.req(Method::PATCH, &loc)
            .header("content-type", "application/octet-stream")
            .header("content-range", range.to_owned())
            .body(body.to_vec())
            .send()
    };
    let resp = patch(loc.clone(), "0-99", &data[..100]).await.unwrap();
    assert_eq!(resp.status(), 202);
    let loc = upload_headers(&resp, "up/chunks", 100);

    let resp = r.get(&loc).await;
    assert_eq!(resp.status(), 204);
    let loc = upload_headers(&resp, "up/chunks", 100);

    let resp = patch(loc.clone(), "100-249", &data[100..250]).await.unwrap();
    assert_eq!(resp.status(), 202);
    let loc = upload_headers(&resp, "up/chunks", 250);

    // a gap, an overlap and a restart are all out of order
    for (range, lo, hi) in [("300-309", 300, 310), ("200-259", 200, 260), ("0-9", 0, 10)] {
        let resp = patch(loc.clone(), range, &data[lo..hi]).await.unwrap();
        assert_eq!(resp.status(), 416, "{range}");
        upload_headers(&resp, "up/chunks", 250);
        let v: Value = resp.json().await.unwrap();
        assert!(v["errors"][0]["code"].is_string());
    }
    let resp = r.get(&loc).await;
    assert_eq!(resp.status(), 204);
    upload_headers(&resp, "up/chunks", 250);

    let resp = patch(loc.clone(), "250-399", &data[250..]).await.unwrap();
    assert_eq!(resp.status(), 202);
    let loc = upload_headers(&resp, "up/chunks", 400);

    let resp = r
        .req(Method::PUT, &with_query(&loc, &format!("digest={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert!(h(&resp, "location").ends_with(&format!("/v2/up/chunks/blobs/{d}")));
    assert_eq!(h(&resp, "docker-content-digest"), d);
    assert_eq!(
        r.get(&format!("/v2/up/chunks/blobs/{d}")).await.bytes().await.unwrap(),
        data
    );
    expect_err(r.get(&loc).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn upload_streamed_chunks_and_final_chunk_on_put() {
    let r = Reg::start(&["up/stream"]).await;
    let data = pattern(3 * MIB + 12_345, 4);
    let d = digest(&data);
    let loc = r.start_upload("up/stream").await;
    let stream_of = |part: &[u8]| {
        let pieces: Vec<Result<Bytes, std::io::Error>> = part
            .chunks(64 * 1024 + 17)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
    };

    // 1: chunked transfer encoding, no Content-Length and no Content-Range
    let first = MIB + 1;
    let resp = r
        .req(Method::PATCH, &loc)
        .header("content-type", "application/octet-stream")
        .body(stream_of(&data[..first]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let loc = upload_headers(&resp, "up/stream", first as u64);

    // 2: chunked transfer encoding with a Content-Range
    let second = 2 * MIB + 3;
    let resp = r
        .req(Method::PATCH, &loc)
        .header("content-range", format!("{first}-{}", second - 1))
        .body(stream_of(&data[first..second]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let loc = upload_headers(&resp, "up/stream", second as u64);

    // the closing PUT carries the last chunk
    let resp = r
        .req(Method::PUT, &with_query(&loc, &format!("digest={d}")))
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("{second}-{}", data.len() - 1))
        .body(data[second..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(h(&resp, "docker-content-digest"), d);
    let resp = r.get(&format!("/v2/up/stream/blobs/{d}")).await;
    assert_eq!(h(&resp, "content-length"), data.len().to_string());
    assert!(resp.bytes().await.unwrap() == data, "assembled blob differs");
}

#[tokio::test]
async fn upload_final_chunk_out_of_order_on_put_is_416() {
    let r = Reg::start(&["up/lastchunk"]).await;
    let data = pattern(300, 5);
    let d = digest(&data);
    let loc = r.start_upload("up/lastchunk").await;
    let resp = r
        .req(Method::PATCH, &loc)
        .header("content-range", "0-99")
        .body(data[..100].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let loc = upload_headers(&resp, "up/lastchunk", 100);
    // the final chunk overlaps what was received
    let resp = r
        .req(Method::PUT, &with_query(&loc, &format!("digest={d}")))
        .header("content-range", "50-299")
        .body(data[50..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 416);
    upload_headers(&resp, "up/lastchunk", 100);
    assert_eq!(r.head(&format!("/v2/up/lastchunk/blobs/{d}")).await.status(), 404);
    // the session survived and completes with the right chunk
    let resp = r.get(&loc).await;
    assert_eq!(resp.status(), 204);
    upload_headers(&resp, "up/lastchunk", 100);
    let resp = r
        .req(Method::PUT, &with_query(&loc, &format!("digest={d}")))
        .header("content-range", "100-299")
        .body(data[100..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(
        r.get(&format!("/v2/up/lastchunk/blobs/{d}"))
            .await
            .bytes()
            .await
            .unwrap(),
        data
    );

    // a first chunk that does not start at 0, carried on the PUT of an empty session
    let loc = r.start_upload("up/lastchunk").await;
    let resp = r
        .req(
            Method::PUT,
            &with_query(&loc, &format!("digest={}", digest(&data[10..]))),
        )
        .header("content-range", "10-299")
        .body(data[10..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 416);
    upload_headers(&resp, "up/lastchunk", 0);
}

#[tokio::test]
async fn upload_cancel() {
    let r = Reg::start(&["up/cancel"]).await;
    let loc = r.start_upload("up/cancel").await;
    let resp = r
        .req(Method::PATCH, &loc)
        .body(b"some bytes".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let resp = r.req(Method::DELETE, &loc).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    expect_err(r.get(&loc).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    let resp = r.req(Method::PATCH, &loc).body(b"more".to_vec()).send().await.unwrap();
    expect_err(resp, 404, "BLOB_UPLOAD_UNKNOWN").await;
    let resp = r
        .req(
            Method::PUT,
            &with_query(&loc, &format!("digest={}", digest(b"some bytes"))),
        )
        .send()
        .await
        .unwrap();
    expect_err(resp, 404, "BLOB_UPLOAD_UNKNOWN").await;
    expect_err(
        r.req(Method::DELETE, &loc).send().await.unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    assert_eq!(
        r.head(&format!("/v2/up/cancel/blobs/{}", digest(b"some bytes")))
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn upload_sessions_are_per_repository_and_unknown_ones_404() {
    let r = Reg::start(&["up/a", "up/b"]).await;
    let loc = r.start_upload("up/a").await;
    let id = loc.rsplit('/').next().unwrap().to_owned();
    let foreign = format!("/v2/up/b/blobs/uploads/{id}");
    expect_err(r.get(&foreign).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    expect_err(
        r.req(Method::PATCH, &foreign).body(b"x".to_vec()).send().await.unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    expect_err(
        r.req(Method::PUT, &format!("{foreign}?digest={}", digest(b"")))
            .send()
            .await
            .unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    expect_err(
        r.req(Method::DELETE, &foreign).send().await.unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    // a well-formed id nobody minted, and one that is not an id at all
    let nobody = "/v2/up/a/blobs/uploads/00000000-0000-4000-8000-000000000000";
    expect_err(r.get(nobody).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    expect_err(
        r.get("/v2/up/a/blobs/uploads/not-an-id").await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    // the original session is untouched
    let resp = r.get(&loc).await;
    assert_eq!(resp.status(), 204);
    upload_headers(&resp, "up/a", 0);
    // a PUT without a digest does not close it
    expect_err(r.req(Method::PUT, &loc).send().await.unwrap(), 400, "DIGEST_INVALID").await;
    assert_eq!(r.get(&loc).await.status(), 204);
}

#[tokio::test]
async fn upload_digest_mismatch_is_refused_and_never_visible() {
    let r = Reg::start(&["up/bad"]).await;
    let data = pattern(10_000, 6);
    let real = digest(&data);
    let claimed = digest(b"what the client claimed");

    // POST then PUT with the whole body
    let loc = r.start_upload("up/bad").await;
    let resp = r
        .req(Method::PUT, &with_query(&loc, &format!("digest={claimed}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    expect_err(resp, 400, "DIGEST_INVALID").await;
    // chunked (one chunk, the fast path) and chunked (several chunks, assembled)
    for cuts in [vec![10_000], vec![3000, 10_000]] {
        let mut loc = r.start_upload("up/bad").await;
        let mut at = 0;
        for cut in cuts {
            let resp = r
                .req(Method::PATCH, &loc)
                .header("content-range", format!("{at}-{}", cut - 1))
                .body(data[at..cut].to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 202);
            loc = upload_headers(&resp, "up/bad", cut as u64);
            at = cut;
        }
        let resp = r
            .req(Method::PUT, &with_query(&loc, &format!("digest={claimed}")))
            .send()
            .await
            .unwrap();
        expect_err(resp, 400, "DIGEST_INVALID").await;
    }
    for d in [&claimed, &real] {
        assert_eq!(r.head(&format!("/v2/up/bad/blobs/{d}")).await.status(), 404, "{d}");
        expect_err(r.get(&format!("/v2/up/bad/blobs/{d}")).await, 404, "BLOB_UNKNOWN").await;
    }
    // nothing stored under either digest anywhere in the store either
    for d in [&claimed, &real] {
        let hex = d.strip_prefix("sha256:").unwrap();
        let keys = backend::stored_keys(&r.s, &format!("docker/registry/v2/blobs/sha256/{}/{hex}", &hex[..2]));
        assert!(keys.is_empty(), "{keys:?}");
    }
    assert!(backend::leftovers(&r.s).is_empty(), "{:?}", backend::leftovers(&r.s));
}

#[tokio::test]
async fn cross_repository_mount() {
    let r = Reg::start(&["mnt/src", "mnt/dst", "mnt/other", "mnt/nowhere"]).await;
    let data = pattern(2048, 8);
    let d = r.push_blob("mnt/src", &data).await;

    let resp = r
        .req(
            Method::POST,
            &format!("/v2/mnt/dst/blobs/uploads/?mount={d}&from=mnt/src"),
        )
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert!(h(&resp, "location").ends_with(&format!("/v2/mnt/dst/blobs/{d}")));
    assert_eq!(h(&resp, "docker-content-digest"), d);
    let got = r.get(&format!("/v2/mnt/dst/blobs/{d}")).await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap(), data);

    // unknown source repository, a source without the blob, an invalid source name: a normal
    // upload session, and nothing mounted
    for from in ["mnt/nowhere", "mnt/dst2", "Not/Valid"] {
        let resp = r
            .req(
                Method::POST,
                &format!("/v2/mnt/other/blobs/uploads/?mount={d}&from={from}"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "from {from}");
        upload_headers(&resp, "mnt/other", 0);
    }
    let missing = digest(b"not in src");
    let resp = r
        .req(
            Method::POST,
            &format!("/v2/mnt/other/blobs/uploads/?mount={missing}&from=mnt/src"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let loc = upload_headers(&resp, "mnt/other", 0);
    assert_eq!(r.head(&format!("/v2/mnt/other/blobs/{d}")).await.status(), 404);
    // and that session works like any other
    let resp = r
        .req(Method::PUT, &with_query(&loc, &format!("digest={d}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(r.head(&format!("/v2/mnt/other/blobs/{d}")).await.status(), 200);

    let resp = r
        .req(
            Method::POST,
            "/v2/mnt/other/blobs/uploads/?mount=sha256:nope&from=mnt/src",
        )
        .send()
        .await
        .unwrap();
    expect_err(resp, 400, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn empty_blob() {
    let r = Reg::start(&["up/empty", "up/empty2"]).await;
    assert_eq!(digest(b""), EMPTY_SHA256);
    let d = r.push_blob("up/empty", b"").await;
    let path = format!("/v2/up/empty/blobs/{d}");
    let resp = r.head(&path).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(h(&resp, "content-length"), "0");
    assert_eq!(h(&resp, "docker-content-digest"), EMPTY_SHA256);
    let resp = r.get(&path).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(h(&resp, "content-length"), "0");
    assert!(resp.bytes().await.unwrap().is_empty());
    let resp = r
        .req(Method::GET, &path)
        .header("range", "bytes=0-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 416);
    assert_eq!(h(&resp, "content-range"), "bytes */0");

    // and through POST + empty PUT, in a second repository
    let loc = r.start_upload("up/empty2").await;
    let resp = r
        .req(Method::PUT, &with_query(&loc, &format!("digest={EMPTY_SHA256}")))
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(
        r.head(&format!("/v2/up/empty2/blobs/{EMPTY_SHA256}")).await.status(),
        200
    );
}

#[tokio::test]
async fn same_blob_pushed_concurrently_is_stored_once() {
    let r = Arc::new(Reg::start(&["conc/a", "conc/b", "conc/c"]).await);
    let data = Arc::new(pattern(4 * MIB + 99, 9));
    let d = digest(&data);
    let barrier = Arc::new(tokio::sync::Barrier::new(13));
    let mut tasks = Vec::new();
    for i in 0..13usize {
        let (r, data, d, barrier) = (r.clone(), data.clone(), d.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let repo = ["conc/a", "conc/b", "conc/c"][i % 3];
            barrier.wait().await;
            match i % 4 {
                // single POST
                0 => {
                    let resp = r
                        .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={d}"))
                        .body(data.to_vec())
                        .send()
                        .await
                        .unwrap();
                    resp.status().as_u16()
                }
                // POST then PUT
                1 => {
                    let loc = r.start_upload(repo).await;
                    let resp = r
                        .req(Method::PUT, &with_query(&loc, &format!("digest={d}")))
                        .body(data.to_vec())
                        .send()
                        .await
                        .unwrap();
                    resp.status().as_u16()
                }
                // chunked, assembled from two parts
                2 => {
                    let loc = r.start_upload(repo).await;
                    let half = data.len() / 2;
                    let resp = r
                        .req(Method::PATCH, &loc)
                        .header("content-range", format!("0-{}", half - 1))
                        .body(data[..half].to_vec())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 202);
                    let loc = h(&resp, "location");
                    let resp = r
                        .req(Method::PATCH, &loc)
                        .header("content-range", format!("{half}-{}", data.len() - 1))
                        .body(data[half..].to_vec())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 202);
                    let loc = h(&resp, "location");
                    let resp = r
                        .req(Method::PUT, &with_query(&loc, &format!("digest={d}")))
                        .send()
                        .await
                        .unwrap();
                    resp.status().as_u16()
                }
                // a single chunk, moved into place
                _ => {
                    let loc = r.start_upload(repo).await;
                    let resp = r.req(Method::PATCH, &loc).body(data.to_vec()).send().await.unwrap();
                    assert_eq!(resp.status(), 202);
                    let loc = h(&resp, "location");
                    let resp = r
                        .req(Method::PUT, &with_query(&loc, &format!("digest={d}")))
                        .send()
                        .await
                        .unwrap();
                    resp.status().as_u16()
                }
            }
        }));
    }
    // and one client that lies about the digest at the same time
    let liar = {
        let (r, data) = (r.clone(), data.clone());
        tokio::spawn(async move {
            let wrong = digest(b"wrong");
            let resp = r
                .req(Method::POST, &format!("/v2/conc/a/blobs/uploads/?digest={wrong}"))
                .body(data.to_vec())
                .send()
                .await
                .unwrap();
            resp.status().as_u16()
        })
    };
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    assert_eq!(liar.await.unwrap(), 400);

    for repo in ["conc/a", "conc/b", "conc/c"] {
        let resp = r.get(&format!("/v2/{repo}/blobs/{d}")).await;
        assert_eq!(resp.status(), 200);
        assert!(resp.bytes().await.unwrap() == data.as_slice(), "{repo}");
    }
    // exactly one copy in the store
    let hex = d.strip_prefix("sha256:").unwrap();
    let blobs = backend::stored_keys(&r.s, "docker/registry/v2/blobs");
    let data_key = format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]);
    assert_eq!(blobs, vec![data_key.clone()]);
    // no temporary files, unfinished multipart uploads or upload sessions left behind
    let tmp = backend::leftovers(&r.s);
    assert!(tmp.is_empty(), "left behind: {tmp:?}");
    for repo in ["conc/a", "conc/b", "conc/c"] {
        let left = backend::stored_keys(&r.s, &format!("docker/registry/v2/repositories/{repo}/_uploads"));
        assert!(left.is_empty(), "upload sessions left: {left:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// end-3, 7, 9: manifests

#[tokio::test]
async fn manifests_of_every_type_round_trip() {
    let repo = "mf/types";
    let r = Reg::start(&[repo]).await;

    // Docker schema 2 and a Docker manifest list
    let cfg = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let layer = pattern(3000, 10);
    let (cd, ld) = (r.push_blob(repo, &cfg).await, r.push_blob(repo, &layer).await);
    let docker = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": cfg.len(), "digest": cd},
        "layers": [{"mediaType": DOCKER_LAYER, "size": layer.len(), "digest": ld}]
    });
    let (docker_d, docker_b) = r.push_manifest(repo, "docker", &docker).await;
    let list = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [{"mediaType": DOCKER_MANIFEST, "size": docker_b.len(), "digest": docker_d,
                       "platform": {"architecture": "amd64", "os": "linux"}}]
    });
    let (list_d, list_b) = r.push_manifest(repo, "dockerlist", &list).await;

    // OCI image manifest and index
    let oci = r.image(repo, "oci").await;
    let (oci_d, oci_b) = r.push_manifest(repo, "oci", &oci).await;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "size": oci_b.len(), "digest": oci_d,
                       "platform": {"architecture": "arm64", "os": "linux"}}],
        "annotations": {"org.opencontainers.image.ref.name": "x"}
    });
    let (index_d, index_b) = r.push_manifest(repo, "ociindex", &index).await;

    // an OCI artifact: artifactType, the empty config, a subject
    let empty = r.push_blob(repo, b"{}").await;
    let payload = r.push_blob(repo, b"an sbom").await;
    let artifact = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom.v1",
        "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/spdx+json", "digest": payload, "size": 7}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": oci_d, "size": oci_b.len()},
        "annotations": {"org.example.kind": "sbom"}
    });
    let art_b = serde_json::to_vec(&artifact).unwrap();
    let resp = r.put_manifest(repo, "artifact", OCI_MANIFEST, &art_b).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(h(&resp, "oci-subject"), oci_d);
    let art_d = digest(&art_b);
    assert_eq!(h(&resp, "docker-content-digest"), art_d);
    // a manifest without a subject gets no OCI-Subject
    let resp = r.put_manifest(repo, "plain", OCI_MANIFEST, &oci_b).await;
    assert_eq!(resp.status(), 201);
    assert!(resp.headers().get("oci-subject").is_none());

    for (tag, d, bytes, mt) in [
        ("docker", &docker_d, &docker_b, DOCKER_MANIFEST),
        ("dockerlist", &list_d, &list_b, DOCKER_LIST),
        ("oci", &oci_d, &oci_b, OCI_MANIFEST),
        ("ociindex", &index_d, &index_b, OCI_INDEX),
        ("artifact", &art_d, &art_b, OCI_MANIFEST),
    ] {
        for reference in [tag, d.as_str()] {
            let path = format!("/v2/{repo}/manifests/{reference}");
            let resp = r.get(&path).await;
            assert_eq!(resp.status(), 200, "{reference}");
            assert_eq!(h(&resp, "content-type"), mt, "{reference}");
            assert_eq!(&h(&resp, "docker-content-digest"), d, "{reference}");
            assert_eq!(h(&resp, "content-length"), bytes.len().to_string());
            assert_eq!(
                &resp.bytes().await.unwrap().to_vec(),
                bytes,
                "exact bytes of {reference}"
            );
            let resp = r.head(&path).await;
            assert_eq!(resp.status(), 200, "HEAD {reference}");
            assert_eq!(h(&resp, "content-type"), mt);
            assert_eq!(&h(&resp, "docker-content-digest"), d);
            assert_eq!(h(&resp, "content-length"), bytes.len().to_string());
            assert!(resp.bytes().await.unwrap().is_empty());
        }
    }

    // a manifest without a mediaType takes its type from the PUT's Content-Type (parameters
    // ignored)
    let mut bare = r.image(repo, "bare").await;
    bare.as_object_mut().unwrap().remove("mediaType");
    let bare_b = serde_json::to_vec(&bare).unwrap();
    let resp = r
        .put_manifest(repo, "bare", &format!("{OCI_MANIFEST}; charset=utf-8"), &bare_b)
        .await;
    assert_eq!(resp.status(), 201);
    let resp = r.get(&format!("/v2/{repo}/manifests/bare")).await;
    assert_eq!(h(&resp, "content-type"), OCI_MANIFEST);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), bare_b);

    // pushing by digest creates no tag; re-tagging moves the tag
    let by_digest = r.image(repo, "bydigest").await;
    let bd_b = serde_json::to_vec(&by_digest).unwrap();
    let bd_d = digest(&bd_b);
    let (d2, _) = r.push_manifest(repo, &bd_d, &by_digest).await;
    assert_eq!(d2, bd_d);
    r.push_manifest(repo, "oci", &by_digest).await;
    let resp = r.get(&format!("/v2/{repo}/manifests/oci")).await;
    assert_eq!(h(&resp, "docker-content-digest"), bd_d);
    let tags: Value = r.get(&format!("/v2/{repo}/tags/list")).await.json().await.unwrap();
    assert_eq!(
        tags["tags"],
        json!(["artifact", "bare", "docker", "dockerlist", "oci", "ociindex", "plain"])
    );

    // unknown tag and digest
    expect_err(
        r.get(&format!("/v2/{repo}/manifests/nope")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    let unknown = digest(b"no such manifest");
    expect_err(
        r.get(&format!("/v2/{repo}/manifests/{unknown}")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_eq!(r.head(&format!("/v2/{repo}/manifests/{unknown}")).await.status(), 404);
    // and an unknown repository
    let r2 = Reg::on(start_server(""), &["never/pushed"]).await;
    expect_err(
        r2.get("/v2/never/pushed/manifests/latest").await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn manifest_accept_negotiation() {
    let repo = "mf/accept";
    let r = Reg::start(&[repo]).await;
    let img = r.image(repo, "a").await;
    let (img_d, img_b) = r.push_manifest(repo, "img", &img).await;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "size": img_b.len(), "digest": img_d}]
    });
    let (index_d, index_b) = r.push_manifest(repo, "idx", &index).await;
    let docker_only = format!("{DOCKER_MANIFEST}, {DOCKER_LIST}");

    for reference in ["idx", index_d.as_str()] {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = r
            .req(Method::GET, &path)
            .header("accept", &docker_only)
            .send()
            .await
            .unwrap();
        expect_err(resp, 404, "MANIFEST_UNKNOWN").await;
        let resp = r
            .req(Method::HEAD, &path)
            .header("accept", &docker_only)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        // the same types as separate headers
        let resp = r
            .req(Method::GET, &path)
            .header("accept", DOCKER_MANIFEST)
            .header("accept", DOCKER_LIST)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);

        for accept in [
            OCI_INDEX.to_owned(),
            format!("{docker_only}, {OCI_INDEX}"),
            format!("{DOCKER_MANIFEST}, {OCI_MANIFEST}, {OCI_INDEX};q=0.5"),
            "*/*".to_owned(),
        ] {
            let resp = r
                .req(Method::GET, &path)
                .header("accept", &accept)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "Accept: {accept}");
            assert_eq!(h(&resp, "content-type"), OCI_INDEX);
            assert_eq!(h(&resp, "docker-content-digest"), index_d);
            assert_eq!(resp.bytes().await.unwrap().to_vec(), index_b);
        }
        let resp = r.get(&path).await;
        assert_eq!(resp.status(), 200, "no Accept: anything goes");
    }
    // an OCI image is refused to a client that only takes indexes
    let resp = r
        .req(Method::GET, &format!("/v2/{repo}/manifests/img"))
        .header("accept", OCI_INDEX)
        .send()
        .await
        .unwrap();
    expect_err(resp, 404, "MANIFEST_UNKNOWN").await;
    let resp = r
        .req(Method::GET, &format!("/v2/{repo}/manifests/img"))
        .header("accept", format!("{OCI_INDEX}, {OCI_MANIFEST}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(h(&resp, "content-type"), OCI_MANIFEST);
}

#[tokio::test]
async fn manifest_push_validation() {
    let repo = "mf/invalid";
    let r = Reg::start(&[repo]).await;
    let img = r.image(repo, "v").await;
    let img_b = serde_json::to_vec(&img).unwrap();

    // Docker schema 1
    let schema1 = json!({
        "schemaVersion": 1, "name": repo, "tag": "old", "architecture": "amd64",
        "fsLayers": [{"blobSum": img["layers"][0]["digest"]}],
        "history": [{"v1Compatibility": "{}"}],
        "signatures": []
    });
    for ct in [
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
    ] {
        let resp = r
            .put_manifest(repo, "old", ct, &serde_json::to_vec(&schema1).unwrap())
            .await;
        expect_err(resp, 400, "MANIFEST_INVALID").await;
    }
    // not JSON, wrong schemaVersion, an unknown media type, Content-Type against mediaType
    for (body, ct) in [
        (b"{not json".to_vec(), OCI_MANIFEST),
        (br#"{"schemaVersion":3}"#.to_vec(), OCI_MANIFEST),
        (
            br#"{"schemaVersion":2,"mediaType":"text/plain"}"#.to_vec(),
            "text/plain",
        ),
        (img_b.clone(), DOCKER_MANIFEST),
    ] {
        let resp = r.put_manifest(repo, "bad", ct, &body).await;
        expect_err(resp, 400, "MANIFEST_INVALID").await;
    }

    // a layer, or the config, this repository does not have
    for field in ["layers", "config"] {
        let mut m = img.clone();
        let missing = digest(format!("missing {field}").as_bytes());
        if field == "layers" {
            m["layers"][0]["digest"] = json!(missing);
        } else {
            m["config"]["digest"] = json!(missing);
        }
        let resp = r
            .put_manifest(repo, "missing", OCI_MANIFEST, &serde_json::to_vec(&m).unwrap())
            .await;
        expect_err(resp, 400, "MANIFEST_BLOB_UNKNOWN").await;
    }
    // an index whose child is not here
    let child = digest(b"a child manifest nobody pushed");
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": 10}]});
    let resp = r
        .put_manifest(repo, "idx", OCI_INDEX, &serde_json::to_vec(&index).unwrap())
        .await;
    expect_err(resp, 400, "MANIFEST_BLOB_UNKNOWN").await;
    expect_err(
        r.get(&format!("/v2/{repo}/manifests/missing")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_eq!(r.head(&format!("/v2/{repo}/manifests/idx")).await.status(), 404);

    // a digest in the URL that is not the body's
    let other = digest(b"some other manifest");
    let resp = r.put_manifest(repo, &other, OCI_MANIFEST, &img_b).await;
    expect_err(resp, 400, "DIGEST_INVALID").await;
    assert_eq!(
        r.head(&format!("/v2/{repo}/manifests/{}", digest(&img_b)))
            .await
            .status(),
        404,
        "the refused manifest was stored"
    );
    assert_eq!(r.head(&format!("/v2/{repo}/manifests/{other}")).await.status(), 404);

    // a subject that does not exist (yet) must be accepted
    let mut referrer = img.clone();
    referrer["subject"] = json!({"mediaType": OCI_MANIFEST, "digest": digest(b"future"), "size": 1});
    let (_, _) = r.push_manifest(repo, "early-referrer", &referrer).await;
}

#[tokio::test]
async fn manifest_size_limit() {
    let repo = "mf/big";
    let r = Reg::start(&[repo]).await;
    let img = r.image(repo, "big").await;
    let sized = |target: usize| {
        let mut m = img.clone();
        m["annotations"] = json!({"org.example.padding": ""});
        let base = serde_json::to_vec(&m).unwrap().len();
        m["annotations"]["org.example.padding"] = json!("p".repeat(target - base));
        let b = serde_json::to_vec(&m).unwrap();
        assert_eq!(b.len(), target);
        b
    };
    // 3.9 MiB: under the 4 MiB the spec asks registries to take
    let ok = sized(39 * MIB / 10);
    let resp = r.put_manifest(repo, "ok", OCI_MANIFEST, &ok).await;
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let resp = r.get(&format!("/v2/{repo}/manifests/ok")).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap().to_vec() == ok);

    // many layers pass too
    let mut layers = Vec::new();
    let layer = img["layers"][0].clone();
    for i in 0..20_000 {
        let mut l = layer.clone();
        l["annotations"] = json!({"i": i.to_string()});
        layers.push(l);
    }
    let mut many = img.clone();
    many["layers"] = json!(layers);
    let many_b = serde_json::to_vec(&many).unwrap();
    assert!(many_b.len() > 2 * MIB && many_b.len() < 4 * MIB, "{}", many_b.len());
    let resp = r.put_manifest(repo, "many", OCI_MANIFEST, &many_b).await;
    assert_eq!(resp.status(), 201);

    // 4.1 MiB: over the limit
    let big = sized(41 * MIB / 10);
    let resp = r.put_manifest(repo, "big", OCI_MANIFEST, &big).await;
    assert_eq!(resp.status(), 413);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "SIZE_INVALID");
    expect_err(
        r.get(&format!("/v2/{repo}/manifests/big")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_eq!(
        r.head(&format!("/v2/{repo}/manifests/{}", digest(&big))).await.status(),
        404
    );
}

#[tokio::test]
async fn manifest_delete_by_tag_and_by_digest() {
    let repo = "mf/delete";
    let r = Reg::start(&[repo]).await;
    let img = r.image(repo, "d").await;
    let (d, _) = r.push_manifest(repo, "t1", &img).await;
    r.push_manifest(repo, "t2", &img).await;
    let other = r.image(repo, "other").await;
    let (other_d, _) = r.push_manifest(repo, "keep", &other).await;

    // by tag: only the tag goes
    let resp = r
        .req(Method::DELETE, &format!("/v2/{repo}/manifests/t1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    expect_err(
        r.get(&format!("/v2/{repo}/manifests/t1")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_eq!(r.get(&format!("/v2/{repo}/manifests/t2")).await.status(), 200);
    assert_eq!(r.get(&format!("/v2/{repo}/manifests/{d}")).await.status(), 200);
    let tags: Value = r.get(&format!("/v2/{repo}/tags/list")).await.json().await.unwrap();
    assert_eq!(tags["tags"], json!(["keep", "t2"]));
    expect_err(
        r.req(Method::DELETE, &format!("/v2/{repo}/manifests/t1"))
            .send()
            .await
            .unwrap(),
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;

    // by digest: the manifest and every tag on it go
    let resp = r
        .req(Method::DELETE, &format!("/v2/{repo}/manifests/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    expect_err(
        r.get(&format!("/v2/{repo}/manifests/{d}")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_eq!(r.head(&format!("/v2/{repo}/manifests/{d}")).await.status(), 404);
    expect_err(
        r.get(&format!("/v2/{repo}/manifests/t2")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    let tags: Value = r.get(&format!("/v2/{repo}/tags/list")).await.json().await.unwrap();
    assert_eq!(tags["tags"], json!(["keep"]));
    assert_eq!(r.get(&format!("/v2/{repo}/manifests/{other_d}")).await.status(), 200);
    expect_err(
        r.req(Method::DELETE, &format!("/v2/{repo}/manifests/{d}"))
            .send()
            .await
            .unwrap(),
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    // it can be pushed again
    r.push_manifest(repo, "t3", &img).await;
    assert_eq!(r.get(&format!("/v2/{repo}/manifests/t3")).await.status(), 200);
}

#[tokio::test]
async fn deletes_disabled_answer_405() {
    let s = start_server("delete: false");
    let repo = "nodel/x";
    let r = Reg::on(s, &[repo]).await;
    let img = r.image(repo, "keep").await;
    let (d, _) = r.push_manifest(repo, "v1", &img).await;
    let layer = img["layers"][0]["digest"].as_str().unwrap().to_owned();
    for path in [
        format!("/v2/{repo}/manifests/v1"),
        format!("/v2/{repo}/manifests/{d}"),
        format!("/v2/{repo}/blobs/{layer}"),
    ] {
        let resp = r.req(Method::DELETE, &path).send().await.unwrap();
        let allow = resp.headers()["allow"].to_str().unwrap().to_owned();
        assert!(allow.contains("GET") && !allow.contains("DELETE"), "{allow}");
        expect_err(resp, 405, "UNSUPPORTED").await;
    }
    assert_eq!(r.get(&format!("/v2/{repo}/manifests/v1")).await.status(), 200);
    assert_eq!(r.get(&format!("/v2/{repo}/manifests/{d}")).await.status(), 200);
    assert_eq!(r.get(&format!("/v2/{repo}/blobs/{layer}")).await.status(), 200);
    assert!(!backend::stored_keys(&r.s, "docker/registry/v2/repositories/nodel/x").is_empty());
    // cancelling an upload is not a delete of content and still works
    let loc = r.start_upload(repo).await;
    assert_eq!(r.req(Method::DELETE, &loc).send().await.unwrap().status(), 204);
}

// ---------------------------------------------------------------------------------------------
// end-8: tags, catalog

#[tokio::test]
async fn tags_list_and_pagination() {
    let repo = "tags/page";
    let r = Reg::start(&[repo]).await;
    let img = r.image(repo, "t").await;
    let names = ["v2", "B", "v10", "a", "latest", "v1", "_x", "1.0"];
    for t in names {
        r.push_manifest(repo, t, &img).await;
    }
    let mut sorted: Vec<&str> = names.to_vec();
    sorted.sort();
    assert_eq!(sorted, ["1.0", "B", "_x", "a", "latest", "v1", "v10", "v2"]);

    let resp = r.get(&format!("/v2/{repo}/tags/list")).await;
    assert_eq!(resp.status(), 200);
    assert!(h(&resp, "content-type").starts_with("application/json"));
    assert!(link_next(&resp).is_none());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["name"], repo);
    assert_eq!(v["tags"], json!(sorted));

    // n=3, following Link headers
    let mut next = Some(format!("/v2/{repo}/tags/list?n=3"));
    let mut seen = Vec::new();
    let mut pages = 0;
    while let Some(p) = next {
        let resp = r.get(&p).await;
        assert_eq!(resp.status(), 200);
        next = link_next(&resp);
        let v: Value = resp.json().await.unwrap();
        let page: Vec<String> = serde_json::from_value(v["tags"].clone()).unwrap();
        assert!(page.len() <= 3);
        if let Some(n) = &next {
            assert_eq!(page.len(), 3, "a short page must be the last");
            assert!(n.starts_with(&format!("/v2/{repo}/tags/list?")), "{n}");
        }
        seen.extend(page);
        pages += 1;
        assert!(pages < 10);
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, sorted);

    let resp = r.get(&format!("/v2/{repo}/tags/list?n=2")).await;
    assert_eq!(
        h(&resp, "link"),
        format!("</v2/{repo}/tags/list?n=2&last=B>; rel=\"next\"")
    );
    // last alone, last with n, a last between tags, a last past the end
    for (q, want) in [
        ("last=latest", vec!["v1", "v10", "v2"]),
        ("n=2&last=_x", vec!["a", "latest"]),
        ("last=b", vec!["latest", "v1", "v10", "v2"]),
        ("last=zzz", vec![]),
        ("n=100", sorted.clone()),
    ] {
        let resp = r.get(&format!("/v2/{repo}/tags/list?{q}")).await;
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["tags"], json!(want), "{q}");
    }
    // n=0: an empty list and no Link
    let resp = r.get(&format!("/v2/{repo}/tags/list?n=0")).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("link").is_none());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["tags"], json!([]));
    // nonsense n
    for q in ["n=abc", "n=-1"] {
        let resp = r.get(&format!("/v2/{repo}/tags/list?{q}")).await;
        assert_eq!(resp.status(), 400, "{q}");
    }
}

/// 1,001 tags: below the bound on one answer (10,000, tested on disk in tests/scale_paging.rs),
/// so a large `n`, or none, answers them all; `n=1000` leaves one for the next page.
#[tokio::test]
async fn tags_page_size_is_capped() {
    let repo = "tags/many";
    let r = Arc::new(Reg::start(&[repo]).await);
    let img = r.image(repo, "many").await;
    let body = serde_json::to_vec(&img).unwrap();
    let statuses: Vec<u16> = futures_util::stream::iter(0..1001)
        .map(|i| {
            let (r, body) = (r.clone(), body.clone());
            async move {
                r.put_manifest(repo, &format!("t{i:04}"), OCI_MANIFEST, &body)
                    .await
                    .status()
                    .as_u16()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 201));

    for q in ["?n=5000", "?n=1000000000000", ""] {
        let resp = r.get(&format!("/v2/{repo}/tags/list{q}")).await;
        assert_eq!(resp.status(), 200);
        assert!(link_next(&resp).is_none(), "Link for {q:?}");
        let v: Value = resp.json().await.unwrap();
        let tags = v["tags"].as_array().unwrap();
        assert_eq!(tags.len(), 1001, "{q:?}");
        assert_eq!(tags[1000], "t1000");
    }
    let resp = r.get(&format!("/v2/{repo}/tags/list?n=1000")).await;
    let next = link_next(&resp).unwrap_or_else(|| panic!("no Link for n=1000"));
    assert_eq!(next, format!("/v2/{repo}/tags/list?n=1000&last=t0999"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["tags"].as_array().unwrap().len(), 1000);
    let resp = r.get(&next).await;
    assert!(link_next(&resp).is_none());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["tags"], json!(["t1000"]));
}

#[tokio::test]
async fn tags_of_unknown_repository_is_name_unknown() {
    let r = Reg::start(&["tags/known/app", "tags/known", "tags/nothing", "tags/blobonly"]).await;
    let img = r.image("tags/known/app", "x").await;
    r.push_manifest("tags/known/app", "v1", &img).await;
    expect_err(r.get("/v2/tags/nothing/tags/list").await, 404, "NAME_UNKNOWN").await;
    // a path prefix of a repository is not itself a repository
    expect_err(r.get("/v2/tags/known/tags/list").await, 404, "NAME_UNKNOWN").await;
    let v: Value = r.get("/v2/tags/known/app/tags/list").await.json().await.unwrap();
    assert_eq!(v["tags"], json!(["v1"]));
    // a repository that only holds a blob exists, with no tags
    r.push_blob("tags/blobonly", b"x").await;
    let resp = r.get("/v2/tags/blobonly/tags/list").await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["tags"], json!([]));
}

#[tokio::test]
async fn catalog_and_pagination() {
    let repos = ["cat/e", "cat/a", "cat/c/deep", "cat/b", "cat/d"];
    let r = Reg::start(&repos).await;
    for repo in repos {
        let img = r.image(repo, repo).await;
        r.push_manifest(repo, "latest", &img).await;
    }
    let mut sorted = repos.to_vec();
    sorted.sort();
    let resp = r.get("/v2/_catalog").await;
    assert_eq!(resp.status(), 200);
    assert!(link_next(&resp).is_none());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["repositories"], json!(sorted));

    let mut next = Some("/v2/_catalog?n=2".to_owned());
    let mut seen: Vec<String> = Vec::new();
    let mut pages = 0;
    while let Some(p) = next {
        let resp = r.get(&p).await;
        assert_eq!(resp.status(), 200);
        next = link_next(&resp);
        if let Some(n) = &next {
            assert!(n.starts_with("/v2/_catalog?"), "{n}");
        }
        let v: Value = resp.json().await.unwrap();
        let page: Vec<String> = serde_json::from_value(v["repositories"].clone()).unwrap();
        assert!(page.len() <= 2);
        seen.extend(page);
        pages += 1;
        assert!(pages < 10);
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, sorted);
    let v: Value = r.get("/v2/_catalog?last=cat/c/deep").await.json().await.unwrap();
    assert_eq!(v["repositories"], json!(["cat/d", "cat/e"]));
    let resp = r.get("/v2/_catalog?n=1").await;
    assert_eq!(h(&resp, "link"), "</v2/_catalog?n=1&last=cat%2Fa>; rel=\"next\"");

    // the catalog needs credentials
    let resp = r.anon(Method::GET, "/v2/_catalog").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(h(&resp, "www-authenticate").contains("scope=\"registry:catalog:*\""));
}

// ---------------------------------------------------------------------------------------------
// end-12: referrers

#[tokio::test]
async fn referrers_api() {
    let repo = "ref/app";
    let r = Reg::start(&[repo, "ref/elsewhere"]).await;
    let img = r.image(repo, "subject").await;
    let (subj, subj_b) = r.push_manifest(repo, "v1", &img).await;
    let subject = json!({"mediaType": OCI_MANIFEST, "digest": subj, "size": subj_b.len()});
    let empty = r.push_blob(repo, b"{}").await;
    let payload = r.push_blob(repo, b"payload").await;
    let artifact = |at: Option<&str>, ann: Value| {
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": payload, "size": 7}],
            "subject": subject,
            "annotations": ann
        });
        if let Some(at) = at {
            m["artifactType"] = json!(at);
        }
        m
    };
    let sbom = artifact(
        Some("application/vnd.example.sbom.v1"),
        json!({"org.example.format": "spdx", "org.opencontainers.image.created": "2024-01-01T00:00:00Z"}),
    );
    let sig = artifact(Some("application/vnd.example.sig.v1"), json!({"org.example.key": "k1"}));
    // an image manifest without artifactType: its config's media type stands in
    let mut plain = r.image(repo, "plain").await;
    plain["subject"] = subject.clone();
    // an index with a subject and no artifactType: none is reported
    let idx = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": subj, "size": subj_b.len()}],
        "subject": subject,
        "annotations": {"org.example.index": "yes"}
    });

    let mut pushed = Vec::new();
    for m in [&sbom, &sig, &plain, &idx] {
        let b = serde_json::to_vec(m).unwrap();
        let mt = m["mediaType"].as_str().unwrap();
        let d = digest(&b);
        let resp = r.put_manifest(repo, &d, mt, &b).await;
        assert_eq!(resp.status(), 201);
        assert_eq!(h(&resp, "oci-subject"), subj);
        pushed.push((d, b.len()));
    }
    // a referrer in another repository is not this repository's
    let other_img = r.image("ref/elsewhere", "o").await;
    r.push_manifest("ref/elsewhere", "x", &other_img).await;
    let mut foreign = r.image("ref/elsewhere", "f").await;
    foreign["subject"] = subject.clone();
    r.push_manifest("ref/elsewhere", "f", &foreign).await;

    let path = format!("/v2/{repo}/referrers/{subj}");
    let resp = r.get(&path).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(h(&resp, "content-type"), OCI_INDEX);
    assert!(resp.headers().get("oci-filters-applied").is_none());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], OCI_INDEX);
    let list = v["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 4, "{v}");
    let find = |d: &str| {
        list.iter()
            .find(|x| x["digest"] == d)
            .unwrap_or_else(|| panic!("{d} not listed in {v}"))
    };
    let expect = [
        (
            &pushed[0],
            OCI_MANIFEST,
            Some("application/vnd.example.sbom.v1"),
            &sbom["annotations"],
        ),
        (
            &pushed[1],
            OCI_MANIFEST,
            Some("application/vnd.example.sig.v1"),
            &sig["annotations"],
        ),
        (&pushed[2], OCI_MANIFEST, Some(OCI_CONFIG), &Value::Null),
        (&pushed[3], OCI_INDEX, None, &idx["annotations"]),
    ];
    for ((d, size), mt, at, ann) in expect {
        let x = find(d);
        assert_eq!(x["mediaType"], mt, "{x}");
        assert_eq!(x["size"], *size, "{x}");
        match at {
            Some(at) => assert_eq!(x["artifactType"], at, "{x}"),
            None => assert!(x.get("artifactType").is_none(), "{x}"),
        }
        if ann.is_null() {
            assert!(x.get("annotations").is_none_or(|a| a.as_object().unwrap().is_empty()));
        } else {
            assert_eq!(&x["annotations"], ann, "{x}");
        }
    }

    // filtered
    let resp = r
        .get(&format!("{path}?artifactType=application/vnd.example.sbom.v1"))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(h(&resp, "oci-filters-applied"), "artifactType");
    assert_eq!(h(&resp, "content-type"), OCI_INDEX);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(v["manifests"][0]["digest"], pushed[0].0);
    let resp = r.get(&format!("{path}?artifactType=application%2Fnone")).await;
    assert_eq!(h(&resp, "oci-filters-applied"), "artifactType");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["manifests"], json!([]));

    // an unknown subject: 200 and an empty index, never 404
    let resp = r.get(&format!("/v2/{repo}/referrers/{}", digest(b"nothing"))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(h(&resp, "content-type"), OCI_INDEX);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["manifests"], json!([]));
    assert_eq!(v["schemaVersion"], 2);

    // a deleted referrer is no longer listed
    let resp = r
        .req(Method::DELETE, &format!("/v2/{repo}/manifests/{}", pushed[1].0))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let v: Value = r.get(&path).await.json().await.unwrap();
    let digests: Vec<&str> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["digest"].as_str().unwrap())
        .collect();
    assert_eq!(digests.len(), 3);
    assert!(!digests.contains(&pushed[1].0.as_str()));

    // referrers pushed before their subject are listed too
    let later = r.image(repo, "later").await;
    let later_b = serde_json::to_vec(&later).unwrap();
    let later_d = digest(&later_b);
    let mut early = sbom.clone();
    early["subject"] = json!({"mediaType": OCI_MANIFEST, "digest": later_d, "size": later_b.len()});
    let (early_d, _) = r.push_manifest(repo, "early", &early).await;
    r.push_manifest(repo, "later", &later).await;
    let v: Value = r
        .get(&format!("/v2/{repo}/referrers/{later_d}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["manifests"][0]["digest"], early_d);

    // an invalid digest is a 400
    expect_err(
        r.get(&format!("/v2/{repo}/referrers/sha256:short")).await,
        400,
        "DIGEST_INVALID",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// malformed requests, path tricks, methods

#[tokio::test]
async fn malformed_names_digests_and_tags_are_400_before_auth() {
    let r = Reg::start(&[]).await;
    let d = digest(b"x");
    let long_name = vec!["a"; 129].join("/");
    let long_tag = "t".repeat(129);
    let cases: Vec<(Method, String, &str)> = vec![
        (Method::GET, "/v2/UPPER/tags/list".into(), "NAME_INVALID"),
        (Method::GET, "/v2/a_/tags/list".into(), "NAME_INVALID"),
        (Method::GET, "/v2/a...b/tags/list".into(), "NAME_INVALID"),
        (Method::GET, "/v2/-a/manifests/latest".into(), "NAME_INVALID"),
        (Method::GET, format!("/v2/{long_name}/manifests/latest"), "NAME_INVALID"),
        (Method::HEAD, format!("/v2/Bad/blobs/{d}"), "NAME_INVALID"),
        (Method::POST, "/v2/Bad/blobs/uploads/".into(), "NAME_INVALID"),
        (Method::PUT, "/v2/a%20b/manifests/latest".into(), "NAME_INVALID"),
        (Method::GET, "/v2/a/manifests/sha256:xyz".into(), "DIGEST_INVALID"),
        (
            Method::GET,
            format!("/v2/a/manifests/sha256:{}", "A".repeat(64)),
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            format!("/v2/a/manifests/md5:{}", "0".repeat(32)),
            "DIGEST_INVALID",
        ),
        (Method::GET, "/v2/a/blobs/latest".into(), "DIGEST_INVALID"),
        (Method::DELETE, "/v2/a/blobs/sha256:0".into(), "DIGEST_INVALID"),
        (Method::GET, "/v2/a/referrers/latest".into(), "DIGEST_INVALID"),
        (Method::PUT, "/v2/a/manifests/-bad".into(), "TAG_INVALID"),
        (
            Method::PUT,
            "/v2/a/manifests/.INVALID_MANIFEST_NAME".into(),
            "TAG_INVALID",
        ),
        (Method::PUT, format!("/v2/a/manifests/{long_tag}"), "TAG_INVALID"),
        (Method::DELETE, "/v2/a/manifests/b%40d".into(), "TAG_INVALID"),
    ];
    for (m, path, code) in cases {
        let resp = r.anon(m.clone(), &path).send().await.unwrap();
        let st = resp.status().as_u16();
        assert!(st < 500, "{m} {path}: {st}");
        assert!(
            resp.headers().get("www-authenticate").is_none(),
            "{m} {path} asked for auth"
        );
        if m == Method::HEAD {
            assert_eq!(st, 400, "{m} {path}");
        } else {
            expect_err(resp, 400, code).await;
        }
    }
    // a read of a reference that is no valid tag (nor digest) finds no manifest: 404, as the
    // spec's conformance suite and every registry answer (a PUT of one stays 400, above)
    for m in [Method::GET, Method::HEAD] {
        for reference in [".INVALID_MANIFEST_NAME", "-bad", &long_tag] {
            let path = format!("/v2/a/manifests/{reference}");
            for resp in [
                r.anon(m.clone(), &path).send().await.unwrap(),
                r.req(m.clone(), &path).send().await.unwrap(),
            ] {
                if m == Method::HEAD {
                    assert_eq!(resp.status(), 404, "{m} {path}");
                } else {
                    expect_err(resp, 404, "MANIFEST_UNKNOWN").await;
                }
            }
        }
    }
    // the longest valid name and tag are fine (401: they reach the auth step)
    let max_name = format!("{}/b", vec!["a"; 126].join("/"));
    assert_eq!(max_name.len(), 253);
    let resp = r
        .anon(Method::GET, &format!("/v2/{max_name}/manifests/{}", "t".repeat(128)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // an unknown API path
    expect_err(r.anon(Method::GET, "/v2/a").send().await.unwrap(), 404, "UNSUPPORTED").await;
}

#[tokio::test]
async fn path_tricks_never_reach_another_repository() {
    let r = Reg::start(&["secret/b", "pub"]).await;
    let secret = b"top secret bytes in secret/b".to_vec();
    let d = r.push_blob("secret/b", &secret).await;
    let img = r.image("secret/b", "s").await;
    let (md, _) = r.push_manifest("secret/b", "v1", &img).await;
    r.push_blob("pub", b"public").await;
    let auth = r.basic();
    let host = r.s.host.clone();
    let secret_s = String::from_utf8(secret).unwrap();

    // the raw request itself works when it is straight
    let (st, text) = raw(&host, "GET", &format!("/v2/secret/b/blobs/{d}"), Some(&auth)).await;
    assert_eq!(st, 200);
    assert!(text.contains(&secret_s));

    let targets = [
        format!("/v2/pub/../secret/b/blobs/{d}"),
        format!("/v2/pub/./../secret/b/blobs/{d}"),
        format!("/v2/pub/%2e%2e/secret/b/blobs/{d}"),
        format!("/v2/pub/%2E%2E/secret/b/blobs/{d}"),
        format!("/v2/pub/..%2fsecret/b/blobs/{d}"),
        format!("/v2/pub/%2e%2e%2fsecret%2fb/blobs/{d}"),
        format!("/v2/secret%2fb/blobs/{d}"),
        format!("/v2/secret%2Fb/blobs/{d}"),
        format!("/v2/pub/blobs/..%2f..%2fsecret%2fb%2fblobs%2f{d}"),
        format!("/v2/pub/blobs/../../secret/b/blobs/{d}"),
        format!("/v2/%2e%2e/v2/secret/b/blobs/{d}"),
        format!("/v2/pub%00/../secret/b/blobs/{d}"),
        format!("/v2/pub\\..\\secret/b/blobs/{d}"),
        format!("/v2//secret/b/blobs/{d}"),
        "/v2/pub/../secret/b/manifests/v1".to_owned(),
        format!("/v2/pub/%2e%2e/secret/b/manifests/{md}"),
        "/v2/pub/../secret/b/tags/list".to_owned(),
        "/v2/secret%2fb/tags/list".to_owned(),
    ];
    for t in &targets {
        let (st, text) = raw(&host, "GET", t, Some(&auth)).await;
        assert!((400..500).contains(&st), "{t}: {st}\n{text}");
        assert!(!text.contains(&secret_s), "{t} leaked the blob");
        assert!(!text.contains("\"v1\""), "{t} leaked the tag list");
        assert!(
            !text.contains(&md) || !text.contains("schemaVersion"),
            "{t} leaked the manifest"
        );
    }
    // and not for writes either
    for t in [
        format!("/v2/pub/../secret/b/blobs/{d}"),
        "/v2/pub/%2e%2e/secret/b/manifests/v1".to_owned(),
    ] {
        let (st, _) = raw(&host, "DELETE", &t, Some(&auth)).await;
        assert!((400..500).contains(&st), "DELETE {t}: {st}");
    }
    assert_eq!(r.get(&format!("/v2/secret/b/blobs/{d}")).await.status(), 200);
    assert_eq!(r.get("/v2/secret/b/manifests/v1").await.status(), 200);

    // an upload session id cannot be steered into another repository's uploads
    let loc = r.start_upload("secret/b").await;
    let id = loc.rsplit('/').next().unwrap().to_owned();
    for t in [
        format!("/v2/pub/blobs/uploads/{id}"),
        format!("/v2/pub/blobs/uploads/..%2f..%2fsecret%2fb%2f_uploads%2f{id}"),
        format!("/v2/pub/blobs/uploads/%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret%2fb%2fblobs%2fuploads%2f{id}"),
    ] {
        let (st, text) = raw(&host, "PATCH", &t, Some(&auth)).await;
        assert_eq!(st, 404, "{t}\n{text}");
        assert!(text.contains("BLOB_UPLOAD_UNKNOWN"), "{t}\n{text}");
    }
    let resp = r.get(&loc).await;
    assert_eq!(resp.status(), 204);
    upload_headers(&resp, "secret/b", 0);
}

#[tokio::test]
async fn unsupported_methods_are_405() {
    let r = Reg::start(&["m/x"]).await;
    let d = digest(b"x");
    let id = "00000000-0000-4000-8000-000000000000";
    for (m, path) in [
        (Method::PUT, "/v2/m/x/tags/list".to_owned()),
        (Method::DELETE, "/v2/m/x/tags/list".to_owned()),
        (Method::POST, "/v2/m/x/manifests/latest".to_owned()),
        (Method::PATCH, "/v2/m/x/manifests/latest".to_owned()),
        (Method::POST, format!("/v2/m/x/blobs/{d}")),
        (Method::PUT, format!("/v2/m/x/blobs/{d}")),
        (Method::PATCH, format!("/v2/m/x/blobs/{d}")),
        (Method::PUT, "/v2/m/x/blobs/uploads/".to_owned()),
        (Method::GET, "/v2/m/x/blobs/uploads/".to_owned()),
        (Method::POST, format!("/v2/m/x/blobs/uploads/{id}")),
        (Method::POST, format!("/v2/m/x/referrers/{d}")),
        (Method::DELETE, format!("/v2/m/x/referrers/{d}")),
        (Method::POST, "/v2/_catalog".to_owned()),
        (Method::DELETE, "/v2/".to_owned()),
        (Method::OPTIONS, "/v2/m/x/manifests/latest".to_owned()),
    ] {
        // with and without credentials
        for resp in [
            r.anon(m.clone(), &path).send().await.unwrap(),
            r.req(m.clone(), &path).send().await.unwrap(),
        ] {
            let allow = resp.headers()["allow"].to_str().unwrap().to_owned();
            assert!(!allow.contains(m.as_str()), "Allow {allow:?} lists the refused {m}");
            expect_err(resp, 405, "UNSUPPORTED").await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// sha512: content addressed by the other registered algorithm, as the spec's conformance suite
// pushes it (blobs by every upload flavour, manifests by digest)

fn sha512(b: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(b)))
}

/// Asserts the blob answers GET and HEAD with its bytes, length and digest.
async fn assert_blob(r: &Reg, repo: &str, d: &str, data: &[u8]) {
    let resp = r.head(&format!("/v2/{repo}/blobs/{d}")).await;
    assert_eq!(resp.status(), 200, "HEAD {d}");
    assert_eq!(h(&resp, "content-length"), data.len().to_string());
    assert_eq!(h(&resp, "docker-content-digest"), d);
    let resp = r.get(&format!("/v2/{repo}/blobs/{d}")).await;
    assert_eq!(resp.status(), 200, "GET {d}");
    assert_eq!(h(&resp, "docker-content-digest"), d);
    assert!(resp.bytes().await.unwrap() == data, "bytes of {d}");
}

#[tokio::test]
async fn sha512_blobs_by_every_upload_flavour() {
    let repo = "algo/blobs";
    let r = Reg::start(&[repo, "algo/other"]).await;
    let created = |resp: &Response, d: &str| {
        assert_eq!(resp.status(), 201);
        assert!(
            h(resp, "location").ends_with(&format!("/v2/{repo}/blobs/{d}")),
            "{}",
            h(resp, "location")
        );
        assert_eq!(h(resp, "docker-content-digest"), d);
    };

    // single POST
    let mono = pattern(70_000, 11);
    let d = sha512(&mono);
    let resp = r
        .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={d}"))
        .body(mono.clone())
        .send()
        .await
        .unwrap();
    created(&resp, &d);
    assert_blob(&r, repo, &d, &mono).await;

    // POST then PUT with the body
    let data = pattern(5000, 12);
    let d = sha512(&data);
    let loc = r.start_upload(repo).await;
    let resp = r
        .req(Method::PUT, &with_query(&loc, &format!("digest={d}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    created(&resp, &d);
    assert_blob(&r, repo, &d, &data).await;

    // chunked: one chunk, several chunks, and a final chunk on the PUT
    let big = pattern(2 * MIB + 777, 13);
    for cuts in [vec![big.len()], vec![1000, MIB + 3, big.len()], vec![MIB]] {
        let d = sha512(&big);
        let mut loc = r.start_upload(repo).await;
        let mut at = 0;
        for &end in &cuts {
            let resp = r
                .req(Method::PATCH, &loc)
                .header("content-range", format!("{at}-{}", end - 1))
                .body(big[at..end].to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 202);
            loc = upload_headers(&resp, repo, end as u64);
            at = end;
        }
        let rest = big[at..].to_vec();
        let mut put = r.req(Method::PUT, &with_query(&loc, &format!("digest={d}")));
        if !rest.is_empty() {
            put = put.header("content-range", format!("{at}-{}", big.len() - 1));
        }
        let resp = put.body(rest).send().await.unwrap();
        created(&resp, &d);
        assert_blob(&r, repo, &d, &big).await;
        // the same bytes under sha256 are another blob, pushed on their own
        assert_eq!(
            r.head(&format!("/v2/{repo}/blobs/{}", digest(&big))).await.status(),
            404
        );
    }

    // the wrong bytes for a sha512 digest: refused while streaming, never visible
    let wrong = sha512(b"not these bytes");
    let loc = r.start_upload(repo).await;
    let resp = r.req(Method::PATCH, &loc).body(pattern(3000, 14)).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let loc = upload_headers(&resp, repo, 3000);
    let resp = r
        .req(Method::PUT, &with_query(&loc, &format!("digest={wrong}")))
        .send()
        .await
        .unwrap();
    expect_err(resp, 400, "DIGEST_INVALID").await;
    let resp = r
        .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={wrong}"))
        .body(pattern(3000, 15))
        .send()
        .await
        .unwrap();
    expect_err(resp, 400, "DIGEST_INVALID").await;
    assert_eq!(r.head(&format!("/v2/{repo}/blobs/{wrong}")).await.status(), 404);

    // algorithms regate does not know: DIGEST_INVALID, on uploads and in paths
    for bad in [
        format!("md5:{}", "0".repeat(32)),
        format!("sha384:{}", "0".repeat(96)),
        format!("blake3:{}", "0".repeat(64)),
    ] {
        let resp = r
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={bad}"))
            .body(b"x".to_vec())
            .send()
            .await
            .unwrap();
        expect_err(resp, 400, "DIGEST_INVALID").await;
        expect_err(r.get(&format!("/v2/{repo}/blobs/{bad}")).await, 400, "DIGEST_INVALID").await;
    }

    // a sha512 blob mounts into another repository
    let d = sha512(&mono);
    let resp = r
        .req(
            Method::POST,
            &format!("/v2/algo/other/blobs/uploads/?mount={d}&from={repo}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_blob(&r, "algo/other", &d, &mono).await;
    // and is deleted from one repository only
    let resp = r
        .req(Method::DELETE, &format!("/v2/algo/other/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(r.head(&format!("/v2/algo/other/blobs/{d}")).await.status(), 404);
    assert_blob(&r, repo, &d, &mono).await;

    // stored where distribution keeps them
    let keys = backend::stored_keys(&r.s, "docker/registry/v2/blobs/sha512");
    let hex = d.strip_prefix("sha512:").unwrap();
    let want = format!("docker/registry/v2/blobs/sha512/{}/{hex}/data", &hex[..2]);
    assert!(keys.iter().any(|k| k.ends_with(&want)), "{want} not in {keys:?}");
    assert!(backend::leftovers(&r.s).is_empty(), "{:?}", backend::leftovers(&r.s));
}

#[tokio::test]
async fn sha512_manifests_indexes_and_referrers() {
    let repo = "algo/manifests";
    let reg = Reg::start(&[repo]).await;
    let r = &reg;
    let push512 = |data: Vec<u8>| {
        let d = sha512(&data);
        let req = r
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={d}"))
            .body(data);
        async move {
            assert_eq!(req.send().await.unwrap().status(), 201);
            d
        }
    };
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = pattern(10_000, 21);
    let (cd, ld) = (push512(cfg.clone()).await, push512(layer.clone()).await);
    let img = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": cfg.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": ld, "size": layer.len()}]
    });
    let put = |m: &Value| {
        let b = serde_json::to_vec(m).unwrap();
        let d = sha512(&b);
        let mt = m["mediaType"].as_str().unwrap().to_owned();
        async move {
            let resp = r.put_manifest(repo, &d, &mt, &b).await;
            assert_eq!(resp.status(), 201, "{}", h(&resp, "content-type"));
            assert!(h(&resp, "location").ends_with(&format!("/v2/{repo}/manifests/{d}")));
            assert_eq!(h(&resp, "docker-content-digest"), d);
            (d, b)
        }
    };
    let (md, mb) = put(&img).await;
    for head in [false, true] {
        let resp = if head {
            r.head(&format!("/v2/{repo}/manifests/{md}")).await
        } else {
            r.get(&format!("/v2/{repo}/manifests/{md}")).await
        };
        assert_eq!(resp.status(), 200);
        assert_eq!(h(&resp, "docker-content-digest"), md);
        assert_eq!(h(&resp, "content-type"), OCI_MANIFEST);
        assert_eq!(h(&resp, "content-length"), mb.len().to_string());
        if !head {
            assert!(resp.bytes().await.unwrap() == mb);
        }
    }
    // a manifest is a blob too, under its digest
    assert_blob(r, repo, &md, &mb).await;
    // bytes that do not match the sha512 named
    let wrong = sha512(b"another manifest");
    let resp = r.put_manifest(repo, &wrong, OCI_MANIFEST, &mb).await;
    expect_err(resp, 400, "DIGEST_INVALID").await;
    expect_err(
        r.get(&format!("/v2/{repo}/manifests/{wrong}")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    // the same bytes by sha256 are not known until pushed so
    assert_eq!(
        r.get(&format!("/v2/{repo}/manifests/{}", digest(&mb))).await.status(),
        404
    );

    // an index of it, and an artifact referring to it, both by sha512
    let idx = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": md, "size": mb.len()}]
    });
    let (xd, _) = put(&idx).await;
    assert_eq!(r.get(&format!("/v2/{repo}/manifests/{xd}")).await.status(), 200);
    let empty = push512(b"{}".to_vec()).await;
    let art = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom.v1",
        "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": 2},
        "layers": [{"mediaType": OCI_LAYER, "digest": ld, "size": layer.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": md, "size": mb.len()}
    });
    let b = serde_json::to_vec(&art).unwrap();
    let ad = sha512(&b);
    let resp = r.put_manifest(repo, &ad, OCI_MANIFEST, &b).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(h(&resp, "oci-subject"), md);
    let v: Value = r.get(&format!("/v2/{repo}/referrers/{md}")).await.json().await.unwrap();
    let list = v["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["digest"], ad);
    assert_eq!(list[0]["artifactType"], "application/vnd.example.sbom.v1");

    // deleted by sha512 digest: gone, and gone from its subject's referrers
    let resp = r
        .req(Method::DELETE, &format!("/v2/{repo}/manifests/{ad}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    expect_err(
        r.get(&format!("/v2/{repo}/manifests/{ad}")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    let v: Value = r.get(&format!("/v2/{repo}/referrers/{md}")).await.json().await.unwrap();
    assert_eq!(v["manifests"], json!([]), "{v}");
    assert_eq!(r.get(&format!("/v2/{repo}/manifests/{md}")).await.status(), 200);
    // a manifest addressed by a digest of an unknown algorithm
    expect_err(
        r.get(&format!("/v2/{repo}/manifests/sha384:{}", "0".repeat(96))).await,
        400,
        "DIGEST_INVALID",
    )
    .await;
}

#[tokio::test]
async fn referrers_are_paginated_with_link() {
    let repo = "ref/pages";
    let r = Reg::start(&[repo]).await;
    let img = r.image(repo, "subject").await;
    let (subj, subj_b) = r.push_manifest(repo, "v1", &img).await;
    let empty = r.push_blob(repo, b"{}").await;
    let mut all = Vec::new();
    let mut sboms = Vec::new();
    for i in 0..5 {
        let at = if i % 2 == 0 {
            "application/vnd.example.sbom.v1"
        } else {
            "application/vnd.example.sig.v1"
        };
        let m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": at,
            "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": 2},
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subj, "size": subj_b.len()},
            "annotations": {"n": i.to_string()}
        });
        let b = serde_json::to_vec(&m).unwrap();
        let d = digest(&b);
        assert_eq!(r.put_manifest(repo, &d, OCI_MANIFEST, &b).await.status(), 201);
        if i % 2 == 0 {
            sboms.push(d.clone());
        }
        all.push(d);
    }
    all.sort();
    sboms.sort();
    // follows Link from `first`; returns the digests of every page and the page sizes
    let walk = |first: String, filtered: bool| {
        let r = &r;
        async move {
            let (mut got, mut sizes, mut next) = (Vec::new(), Vec::new(), Some(first));
            while let Some(path) = next {
                let resp = r.get(&path).await;
                assert_eq!(resp.status(), 200);
                assert_eq!(h(&resp, "content-type"), OCI_INDEX);
                assert_eq!(resp.headers().get("oci-filters-applied").is_some(), filtered, "{path}");
                next = link_next(&resp);
                let v: Value = resp.json().await.unwrap();
                let page = v["manifests"].as_array().unwrap();
                sizes.push(page.len());
                got.extend(page.iter().map(|m| m["digest"].as_str().unwrap().to_owned()));
            }
            (got, sizes)
        }
    };
    let path = format!("/v2/{repo}/referrers/{subj}");
    assert_eq!(walk(path.clone(), false).await, (all.clone(), vec![5]));
    assert_eq!(walk(format!("{path}?n=2"), false).await, (all.clone(), vec![2, 2, 1]));
    assert_eq!(walk(format!("{path}?n=5"), false).await, (all.clone(), vec![5]));
    // the filter carries over to the next page
    let (got, sizes) = walk(format!("{path}?artifactType=application/vnd.example.sbom.v1&n=2"), true).await;
    assert_eq!((got, sizes), (sboms, vec![2, 1]));
}
