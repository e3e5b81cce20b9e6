#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The Git LFS backend against a real LFS server (`giftless` from PyPI, local storage, started by
//! this test binary on loopback): the whole registry suite, uploads reaching LFS exactly once with
//! the configured credentials, LFS failures injected by a proxy answered as clean OCI errors with
//! nothing half-written, redirects to the download href, gc's honest report and a skopeo round trip.

mod common;
mod registry_suite;

use bytes::Bytes;
use common::{client, digest, token, Server};
use futures_util::StreamExt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// giftless: one server for the whole test binary

struct Giftless {
    /// `http://127.0.0.1:port`
    url: String,
    /// its LocalStorage root: `<org>/<repo>/<oid>`
    store: PathBuf,
    _child: Child,
}

/// Serves giftless's WSGI app on a port the OS picks (as `flask run` would, without a fixed
/// port), and exits (removing its directory) when our end of its stdin closes, so it never
/// outlives this test binary.
///
/// Anonymous read-write access comes from `anon_rw` below rather than giftless's own
/// `allow_anon:read_write`: that identity has no id, so the pre-authorised JWTs in the action
/// headers carry `"sub": null`, which PyJWT 2.10 and later refuse (every PUT is a 401), and its
/// per-object permission check misses the wildcard grant (every PUT without the JWT is a 403).
/// The authenticators are set up before serving: giftless does it lazily on the first request,
/// and concurrent first requests can race into a list without the JWT handler (a PUT is a 403).
const GIFTLESS_LAUNCHER: &str = "import os, shutil, sys, threading
def watch():
    sys.stdin.read()
    shutil.rmtree(os.environ['GIFTLESS_DIR'], ignore_errors=True)
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
from giftless.auth.identity import DefaultIdentity, Permission
def anon_rw(_request):
    u = DefaultIdentity(name='anonymous', id='anonymous')
    u.allow(permissions=Permission.all())
    return u
from werkzeug.serving import make_server
from giftless.wsgi_entrypoint import app
from giftless.auth import authentication
with app.app_context():
    authentication.init_authenticators()
srv = make_server('127.0.0.1', 0, app, threaded=True)
print('giftless listening on', srv.server_port, flush=True)
srv.serve_forever()
";

fn giftless() -> &'static Giftless {
    static G: OnceLock<Giftless> = OnceLock::new();
    G.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let store = dir.join("lfs-storage");
        let cfg = dir.join("giftless.yaml");
        std::fs::write(
            &cfg,
            format!(
                "AUTH_PROVIDERS:\n  - __main__:anon_rw\n\
                 LEGACY_ENDPOINTS: false\n\
                 TRANSFER_ADAPTERS:\n  basic:\n    factory: giftless.transfer.basic_streaming:factory\n    \
                 options:\n      storage_class: giftless.storage.local_storage:LocalStorage\n      \
                 storage_options:\n        path: {}\n",
                store.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("giftless.log")).unwrap();
        let mut child = Command::new("python3")
            .args(["-c", GIFTLESS_LAUNCHER])
            .env("GIFTLESS_CONFIG_FILE", &cfg)
            .env("GIFTLESS_DIR", &dir)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("python3 is needed");
        // stdin is kept open (leaked on purpose) for the life of this process
        std::mem::forget(child.stdin.take());
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = line.strip_prefix("giftless listening on ") {
                    let _ = tx.send(port.trim().to_owned());
                }
            }
        });
        let port = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            panic!(
                "giftless did not start (scripts/test-all.sh installs it: pip install giftless flask \
                 flask-marshmallow 'marshmallow<4' figcan flask-classful webargs pyyaml pyjwt): {}",
                std::fs::read_to_string(dir.join("giftless.log")).unwrap_or_default()
            )
        });
        Giftless {
            url: format!("http://127.0.0.1:{port}"),
            store,
            _child: child,
        }
    })
}

/// A name unique in this process, usable as an LFS organisation.
fn unique(name: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{name}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The LFS organisation of a server started in `dir`: one per server, so tests never share objects.
fn org_of(dir: &Path) -> String {
    format!(
        "t{}",
        dir.file_name().unwrap().to_str().unwrap().trim_start_matches('.')
    )
}

/// The `storage:` section for an LFS server at `base` (giftless or a proxy in front of it).
fn lfs_yaml(base: &str, org: &str, meta_root: &Path, lfs_extra: &str, extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { ", " };
    let lsep = if lfs_extra.is_empty() { "" } else { ", " };
    format!(
        "storage: {{ backend: lfs, lfs: {{ url: {base}/{org}/images.git/info/lfs{lsep}{lfs_extra}, \
         metadata: {{ fs: {{ root: {}, fsync: false }} }} }}{sep}{extra} }}\n",
        meta_root.display()
    )
}

/// Where giftless keeps the object `hex` of organisation `org`.
fn lfs_object(org: &str, hex: &str) -> PathBuf {
    giftless().store.join(org).join("images").join(hex)
}

/// Every file under `prefix` of the metadata store at `root`, relative to it, sorted.
fn files_under(root: &Path, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![root.join(prefix)];
    while let Some(p) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&p) else {
            if p.is_file() {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
            continue;
        };
        for e in rd {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// The registry suite's view of the store: the metadata store's files, where a blob's LFS record
/// counts as its `data` only when giftless really holds an object of the recorded size.
mod backend {
    use super::{files_under, giftless, lfs_object, lfs_yaml, org_of};
    use crate::common::Server;
    use std::path::Path;

    pub fn storage_yaml(dir: &Path, extra: &str) -> String {
        lfs_yaml(&giftless().url, &org_of(dir), &dir.join("data"), "", extra)
    }

    pub fn stored_keys(s: &Server, prefix: &str) -> Vec<String> {
        let org = org_of(s.dir.path());
        files_under(&s.data(), prefix)
            .into_iter()
            .map(|k| {
                let Some(dir) = k.strip_suffix("/lfs.json") else {
                    return k;
                };
                let rec: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(s.data().join(&k)).unwrap()).unwrap();
                let hex = dir.rsplit('/').next().unwrap();
                let size = rec["size"].as_u64().unwrap();
                let in_lfs = size == 0 || std::fs::metadata(lfs_object(&org, hex)).is_ok_and(|m| m.len() == size);
                if in_lfs {
                    format!("{dir}/data")
                } else {
                    k
                }
            })
            .collect()
    }

    pub fn leftovers(s: &Server) -> Vec<String> {
        let mut v = files_under(&s.data(), ".regate-tmp");
        v.extend(files_under(&s.data(), "regate/lfs-staging"));
        v
    }
}

// ---------------------------------------------------------------------------------------------
// a fault-injecting HTTP proxy in front of giftless

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Pass,
    /// every batch request is answered with this status
    Batch(u16),
    /// every PUT of object bytes is answered with this status
    Put(u16),
    /// this many batch requests are answered 503, then requests pass again
    Flaky(usize),
    /// the LFS server is gone: connections are closed without an answer
    Down,
}

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
    content_length: Option<u64>,
}

struct LfsProxy {
    url: String,
    fault: Arc<Mutex<Fault>>,
    /// Basic credentials the batch endpoint demands (401 otherwise), as giftless itself does not
    basic: Arc<Mutex<Option<String>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

impl LfsProxy {
    async fn start() -> LfsProxy {
        use http_body_util::BodyExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let fault = Arc::new(Mutex::new(Fault::Pass));
        let basic = Arc::new(Mutex::new(None::<String>));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (f, b, sn) = (fault.clone(), basic.clone(), seen.clone());
        let upstream = giftless().url.clone();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        tokio::spawn(async move {
            while let Ok((conn, _)) = l.accept().await {
                let (f, b, sn, upstream, http) = (f.clone(), b.clone(), sn.clone(), upstream.clone(), http.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (f, b, sn, upstream, http) =
                            (f.clone(), b.clone(), sn.clone(), upstream.clone(), http.clone());
                        async move {
                            let h = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
                            let path = req.uri().path().to_owned();
                            sn.lock().unwrap().push(Seen {
                                method: req.method().to_string(),
                                path: path.clone(),
                                authorization: h("authorization"),
                                content_length: h("content-length").and_then(|v| v.parse().ok()),
                            });
                            let is_batch = path.ends_with("/objects/batch");
                            let is_put = req.method() == hyper::Method::PUT;
                            let answer = |st: u16| {
                                let body = format!("{{\"message\":\"injected {st}\"}}");
                                let full = http_body_util::Full::new(Bytes::from(body))
                                    .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { match e {} })
                                    .boxed_unsync();
                                let mut r = hyper::Response::new(full);
                                *r.status_mut() = hyper::StatusCode::from_u16(st).unwrap();
                                r.headers_mut()
                                    .insert("content-type", "application/vnd.git-lfs+json".parse().unwrap());
                                Ok::<hyper::Response<ProxyBody>, std::io::Error>(r)
                            };
                            let fault = *f.lock().unwrap();
                            match fault {
                                Fault::Down => return Err(std::io::Error::other("down")),
                                Fault::Batch(st) if is_batch => return answer(st),
                                Fault::Put(st) if is_put => return answer(st),
                                Fault::Flaky(n) if is_batch && n > 0 => {
                                    *f.lock().unwrap() = Fault::Flaky(n - 1);
                                    return answer(503);
                                }
                                _ => {}
                            }
                            let want = b.lock().unwrap().clone();
                            if let (true, Some(want)) = (is_batch, want) {
                                if h("authorization").as_deref() != Some(want.as_str()) {
                                    return answer(401);
                                }
                            }
                            // forward, keeping Host so giftless's hrefs point back through us
                            let (parts, body) = req.into_parts();
                            let target = format!(
                                "{upstream}{}",
                                parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
                            );
                            let stream = http_body_util::BodyStream::new(body).filter_map(|f| async move {
                                match f {
                                    Ok(fr) => fr.into_data().ok().map(Ok::<Bytes, hyper::Error>),
                                    Err(e) => Some(Err(e)),
                                }
                            });
                            let mut rb = http.request(parts.method.clone(), target);
                            for (k, v) in &parts.headers {
                                if k != "connection" && k != "transfer-encoding" {
                                    rb = rb.header(k, v);
                                }
                            }
                            let resp = rb
                                .body(reqwest::Body::wrap_stream(stream))
                                .send()
                                .await
                                .map_err(std::io::Error::other)?;
                            let mut out = hyper::Response::builder().status(resp.status().as_u16());
                            for (k, v) in resp.headers() {
                                if k != "connection" && k != "transfer-encoding" {
                                    out = out.header(k, v);
                                }
                            }
                            let body = http_body_util::StreamBody::new(resp.bytes_stream().map(|r| {
                                r.map(hyper::body::Frame::data)
                                    .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
                            }))
                            .boxed_unsync();
                            Ok(out.body(body).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(conn), svc)
                        .await;
                });
            }
        });
        LfsProxy {
            url,
            fault,
            basic,
            seen,
        }
    }

    fn set(&self, f: Fault) {
        *self.fault.lock().unwrap() = f;
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

// ---------------------------------------------------------------------------------------------
// helpers

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(seed as u32 % 32) as u8 ^ seed)
        .collect()
}

/// A server whose LFS endpoint is `base`, with its metadata under its temp dir; returns it, its
/// LFS organisation and an admin token for `repo`.
async fn server_on(base: &str, lfs_extra: &str, extra: &str, repo: &str) -> (Server, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let org = org_of(dir.path());
    let yaml = lfs_yaml(base, &org, &dir.path().join("data"), lfs_extra, extra);
    let s = Server::start_in(dir, &yaml);
    let (u, pw) = s.admin();
    let auth = format!(
        "Bearer {}",
        token(&s, Some((&u, &pw)), &[&format!("repository:{repo}:pull,push,delete")]).await
    );
    (s, org, auth)
}

async fn push(s: &Server, auth: &str, repo: &str, data: &[u8]) -> reqwest::Response {
    client()
        .post(format!("{}/v2/{repo}/blobs/uploads/?digest={}", s.url, digest(data)))
        .header("authorization", auth)
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
}

async fn get_blob(s: &Server, auth: &str, repo: &str, d: &str) -> (u16, Vec<u8>) {
    let r = client()
        .get(format!("{}/v2/{repo}/blobs/{d}", s.url))
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

/// Asserts an OCI error answer: status, code, and a message containing `says`.
async fn expect_oci(r: reqwest::Response, status: u16, code: &str, says: &str) {
    let st = r.status().as_u16();
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    let text = r.text().await.unwrap();
    assert_eq!(st, status, "{text}");
    assert_eq!(ct.as_deref(), Some("application/json"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["errors"][0]["code"], code, "{text}");
    let msg = v["errors"][0]["message"].as_str().unwrap();
    assert!(msg.contains(says), "{msg:?} should mention {says:?}");
    assert!(!msg.contains("injected"), "the LFS server's own words leak: {msg}");
}

/// Nothing of blob `d` is visible or stored anywhere: no record, no LFS object, no staged bytes.
async fn nothing_of(s: &Server, org: &str, auth: &str, repo: &str, d: &str) {
    let hex = &d["sha256:".len()..];
    let r = client()
        .head(format!("{}/v2/{repo}/blobs/{d}", s.url))
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "{d} is visible");
    let rec = files_under(
        &s.data(),
        &format!("docker/registry/v2/blobs/sha256/{}/{hex}", &hex[..2]),
    );
    assert!(rec.is_empty(), "{rec:?}");
    assert!(!lfs_object(org, hex).exists(), "{d} reached LFS");
    let left = backend::leftovers(s);
    assert!(left.is_empty(), "{left:?}");
}

// ---------------------------------------------------------------------------------------------
// uploads and downloads

/// A chunked upload is staged in the metadata store and reaches LFS in exactly one PUT of the
/// whole blob, after batch requests that carry the configured username and token as HTTP Basic
/// (the href gets the server's own Authorization, not ours). The metadata store then holds only a
/// small record; the bytes are in LFS; a second push of the same blob uploads nothing; GETs (also
/// ranged, which giftless does not support, so regate skips bytes) stream from LFS. With a wrong
/// token, pushes and /readyz fail cleanly with a 503 that names the credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_reaches_lfs_once_with_basic_auth() {
    let p = LfsProxy::start().await;
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "robot:pat-123")
    );
    *p.basic.lock().unwrap() = Some(basic.clone());
    let repo = "lfs/app";
    let (s, org, auth) = server_on(&p.url, "username: robot, token: pat-123", "", repo).await;
    let c = client();
    let data = pattern(3 * MIB + 4321, 3);
    let d = digest(&data);
    let hex = &d["sha256:".len()..];

    let r = c
        .post(format!("{}/v2/{repo}/blobs/uploads/", s.url))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mut loc = r.headers()["location"].to_str().unwrap().to_owned();
    let cuts = [0, MIB + 7, 2 * MIB + 100, data.len()];
    for w in cuts.windows(2) {
        let r = c
            .patch(&loc)
            .header("authorization", &auth)
            .header("content-range", format!("{}-{}", w[0], w[1] - 1))
            .body(data[w[0]..w[1]].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        loc = r.headers()["location"].to_str().unwrap().to_owned();
    }
    // nothing has gone to LFS while the chunks arrived
    assert!(p.seen().is_empty(), "{:?}", p.seen());
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{loc}{sep}digest={d}"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}\n{:?}", r.text().await.unwrap(), p.seen());

    let seen = p.seen();
    let puts: Vec<&Seen> = seen.iter().filter(|x| x.method == "PUT").collect();
    assert_eq!(puts.len(), 1, "{seen:?}");
    assert_eq!(puts[0].content_length, Some(data.len() as u64));
    assert!(
        puts[0].path.ends_with(&format!("/objects/storage/{hex}")),
        "{:?}",
        puts[0]
    );
    let href_auth = puts[0].authorization.as_deref().unwrap_or("");
    assert!(href_auth.starts_with("Bearer "), "href credentials: {href_auth:?}");
    let batches: Vec<&Seen> = seen.iter().filter(|x| x.path.ends_with("/objects/batch")).collect();
    assert!(!batches.is_empty());
    assert!(
        batches
            .iter()
            .all(|b| b.authorization.as_deref() == Some(basic.as_str())),
        "{batches:?}"
    );
    assert!(
        seen.iter().any(|x| x.path.ends_with("/objects/storage/verify")),
        "verify was not called: {seen:?}"
    );

    // the bytes are in LFS, the metadata store has a record and no copy
    assert_eq!(std::fs::read(lfs_object(&org, hex)).unwrap(), data);
    for f in files_under(&s.data(), "") {
        let n = std::fs::metadata(s.data().join(&f)).unwrap().len();
        assert!(n < 64 * 1024, "{f} ({n} bytes) in the metadata store");
    }
    let rec = format!("docker/registry/v2/blobs/sha256/{}/{hex}/lfs.json", &hex[..2]);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(s.data().join(&rec)).unwrap()).unwrap();
    assert_eq!(v["size"], data.len() as u64);
    assert!(backend::leftovers(&s).is_empty(), "{:?}", backend::leftovers(&s));
    assert!(files_under(&s.data(), &format!("docker/registry/v2/repositories/{repo}/_uploads")).is_empty());

    // pushed again (another repository, monolithic): no second upload
    p.clear();
    let (u, pw) = s.admin();
    let auth2 = format!(
        "Bearer {}",
        token(
            &s,
            Some((&u, &pw)),
            &[
                &format!("repository:{repo}:pull,push"),
                "repository:lfs/other:pull,push"
            ]
        )
        .await
    );
    assert_eq!(push(&s, &auth2, "lfs/other", &data).await.status(), 201);
    assert!(!p.seen().iter().any(|x| x.method == "PUT"), "{:?}", p.seen());

    // reads stream from LFS: whole, and a range
    assert_eq!(get_blob(&s, &auth, repo, &d).await, (200, data.clone()));
    let r = c
        .get(format!("{}/v2/{repo}/blobs/{d}", s.url))
        .header("authorization", &auth)
        .header("range", "bytes=2097000-2097999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[2_097_000..2_098_000]);
    assert_eq!(c.get(format!("{}/readyz", s.url)).send().await.unwrap().status(), 200);

    // the same LFS repository with a wrong token: clean 503s that say what to fix
    let dir = tempfile::tempdir().unwrap();
    let yaml = lfs_yaml(
        &p.url,
        &org,
        &dir.path().join("data"),
        "username: robot, token: wrong",
        "",
    );
    let bad = Server::start_in(dir, &yaml);
    let (u, pw) = bad.admin();
    let bauth = format!(
        "Bearer {}",
        token(&bad, Some((&u, &pw)), &[&format!("repository:{repo}:pull,push")]).await
    );
    let other = pattern(1000, 4);
    expect_oci(
        push(&bad, &bauth, repo, &other).await,
        503,
        "UNAVAILABLE",
        "credentials",
    )
    .await;
    assert_eq!(c.get(format!("{}/readyz", bad.url)).send().await.unwrap().status(), 503);
    assert!(
        !bad.logs().contains("pat-123") && !bad.logs().contains("wrong"),
        "a token reached the log"
    );
}

// ---------------------------------------------------------------------------------------------
// faults

/// Every LFS failure the Batch API documents becomes a clean OCI error (JSON, the right status,
/// a message naming the cause without the server's own words), and leaves nothing behind: no
/// visible blob, no record, no LFS object, no staged bytes. Transient failures are retried; once
/// the fault is gone, the same push works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lfs_failures_are_clean_oci_errors_and_leave_nothing_behind() {
    let p = LfsProxy::start().await;
    let repo = "lfs/faults";
    let (s, org, auth) = server_on(&p.url, "max_retries: 2, timeout: 5", "", repo).await;
    let c = client();

    let cases: [(Fault, u16, &str, &str); 6] = [
        (Fault::Batch(507), 507, "DENIED", "quota"),
        (Fault::Put(507), 507, "DENIED", "quota"),
        (Fault::Batch(413), 413, "SIZE_INVALID", "this large"),
        (Fault::Batch(429), 429, "TOOMANYREQUESTS", "retry later"),
        (Fault::Batch(401), 503, "UNAVAILABLE", "credentials"),
        (Fault::Batch(403), 503, "UNAVAILABLE", "credentials"),
    ];
    for (i, (fault, status, code, says)) in cases.into_iter().enumerate() {
        p.set(fault);
        let data = pattern(200_000 + i, 10 + i as u8);
        // monolithic (staged by a writer) and chunked (one part moved into place)
        expect_oci(push(&s, &auth, repo, &data).await, status, code, says).await;
        let r = c
            .post(format!("{}/v2/{repo}/blobs/uploads/", s.url))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        let loc = r.headers()["location"].to_str().unwrap().to_owned();
        let r = c
            .patch(&loc)
            .header("authorization", &auth)
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let loc = r.headers()["location"].to_str().unwrap().to_owned();
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = c
            .put(format!("{loc}{sep}digest={}", digest(&data)))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        expect_oci(r, status, code, says).await;
        // a manifest is an LFS object too
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [],
            "annotations": {"case": i.to_string()}
        }))
        .unwrap();
        let r = c
            .put(format!("{}/v2/{repo}/manifests/case{i}", s.url))
            .header("authorization", &auth)
            .header("content-type", "application/vnd.oci.image.index.v1+json")
            .body(m.clone())
            .send()
            .await
            .unwrap();
        expect_oci(r, status, code, says).await;
        let r = c
            .get(format!("{}/v2/{repo}/manifests/case{i}", s.url))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{fault:?}: a tag to a manifest that is not stored");

        p.set(Fault::Pass);
        nothing_of(&s, &org, &auth, repo, &digest(&data)).await;
        nothing_of(&s, &org, &auth, repo, &digest(&m)).await;
    }

    // transient: two 503s are retried away
    p.set(Fault::Flaky(2));
    let data = pattern(150_000, 40);
    assert_eq!(push(&s, &auth, repo, &data).await.status(), 201);
    assert_eq!(*p.fault.lock().unwrap(), Fault::Flaky(0));
    p.set(Fault::Pass);
    let d = digest(&data);

    // downloads need the batch API too: an existing blob behind a refusing server is a 503,
    // behind a server that is gone as well (and /readyz says so); back, it streams again
    p.set(Fault::Batch(401));
    expect_oci(
        c.get(format!("{}/v2/{repo}/blobs/{d}", s.url))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap(),
        503,
        "UNAVAILABLE",
        "credentials",
    )
    .await;
    p.set(Fault::Down);
    expect_oci(
        c.get(format!("{}/v2/{repo}/blobs/{d}", s.url))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap(),
        503,
        "UNAVAILABLE",
        "retry later",
    )
    .await;
    let other = pattern(5000, 41);
    expect_oci(push(&s, &auth, repo, &other).await, 503, "UNAVAILABLE", "retry later").await;
    assert_eq!(c.get(format!("{}/readyz", s.url)).send().await.unwrap().status(), 503);
    p.set(Fault::Pass);
    nothing_of(&s, &org, &auth, repo, &digest(&other)).await;
    assert_eq!(get_blob(&s, &auth, repo, &d).await, (200, data));
    assert_eq!(c.get(format!("{}/readyz", s.url)).send().await.unwrap().status(), 200);
    let logs = s.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}

// ---------------------------------------------------------------------------------------------
// redirects and gc

/// With `storage.redirect`, a blob GET is a 307 to LFS's download href (short-lived and
/// authorised by itself), which serves the bytes to a client without credentials; existence and
/// authorisation are still checked by regate first.
#[tokio::test]
async fn blob_get_redirects_to_the_lfs_download_href() {
    let repo = "lfs/redir";
    let (s, _org, auth) = server_on(&giftless().url, "", "redirect: true", repo).await;
    let data = pattern(300_000, 9);
    let d = digest(&data);
    assert_eq!(push(&s, &auth, repo, &data).await.status(), 201);
    let c = client();
    let r = c
        .get(format!("{}/v2/{repo}/blobs/{d}", s.url))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    let to = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(to.starts_with(&giftless().url), "{to}");
    let got = reqwest::get(&to).await.unwrap();
    assert_eq!(got.status(), 200);
    assert!(got.bytes().await.unwrap() == data.as_slice());
    // no token: the challenge, not a URL; unknown blob: regate's 404
    let r = c.get(format!("{}/v2/{repo}/blobs/{d}", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("location").is_none());
    let r = c
        .get(format!("{}/v2/{repo}/blobs/{}", s.url, digest(b"never")))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// `regate gc` on LFS drops the references to unreferenced blobs (they answer 404 afterwards)
/// and says plainly that LFS space is not freed; the bytes are still on the LFS server. It also
/// purges bytes staged for an LFS upload that a crash interrupted.
#[tokio::test]
async fn gc_drops_references_and_says_lfs_space_is_not_freed() {
    let repo = "lfs/gc";
    let (s, org, auth) = server_on(&giftless().url, "", "", repo).await;
    let data = pattern(100_000, 12);
    let d = digest(&data);
    let hex = d["sha256:".len()..].to_owned();
    assert_eq!(push(&s, &auth, repo, &data).await.status(), 201);
    // a crash between staging and the upload to LFS left this behind a month ago
    let staged = s.data().join("regate/lfs-staging/crashed");
    std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
    std::fs::write(&staged, b"half").unwrap();
    assert!(Command::new("touch")
        .args(["-d", "30 days ago"])
        .arg(&staged)
        .status()
        .unwrap()
        .success());

    let cfg = s.dir.path().join("regate.yaml");
    let gc = |dry: bool| {
        let mut cmd = common::regate();
        cmd.arg("gc").args(["--grace", "0s", "--config"]).arg(&cfg);
        if dry {
            cmd.arg("--dry-run");
        }
        let o = cmd.current_dir(s.dir.path()).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let out = gc(true);
    assert!(out.contains(&format!("would unreference blob {d}")), "{out}");
    assert!(out.contains("frees no space on the LFS server"), "{out}");
    assert!(out.contains("regate/lfs-staging/crashed"), "{out}");
    assert_eq!(get_blob(&s, &auth, repo, &d).await.0, 200);

    let out = gc(false);
    assert!(
        out.contains(&format!(
            "unreferenced blob {d} (100000 bytes, which stay on the LFS server)"
        )),
        "{out}"
    );
    assert!(
        out.contains("frees no space on the LFS server (100000 bytes stay stored there)"),
        "{out}"
    );
    assert!(!out.contains("deleted blob"), "{out}");
    assert!(!staged.exists());
    assert_eq!(get_blob(&s, &auth, repo, &d).await.0, 404);
    assert_eq!(
        std::fs::read(lfs_object(&org, &hex)).unwrap(),
        data,
        "LFS kept the bytes"
    );
}

// ---------------------------------------------------------------------------------------------
// a real client

/// skopeo pushes an image (a 6 MiB layer, a small one, config and manifest) to regate on LFS and
/// pulls it back unchanged; every blob is an object in giftless's storage.
#[test]
fn skopeo_round_trip_on_lfs() {
    if !common::have("skopeo") {
        panic!("skopeo is needed (scripts/test-all.sh installs it)");
    }
    let dir = tempfile::tempdir().unwrap();
    let org = unique("skopeo");
    let yaml = lfs_yaml(&giftless().url, &org, &dir.path().join("data"), "", "");
    let s = Server::start_in(dir, &yaml);
    let a = common::skopeo_round_trip(&s);
    for (hex, bytes) in &a {
        assert_eq!(&std::fs::read(lfs_object(&org, hex)).unwrap(), bytes, "{hex} in LFS");
    }
}
