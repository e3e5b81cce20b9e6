#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Object storage, against a real S3 server (`moto`, started by this test binary on loopback):
//! the whole registry suite, replicas sharing one bucket, a restart in the middle of an upload,
//! faults injected between regate and the bucket, presigned redirects and a skopeo round trip.

mod common;
mod registry_suite;

use common::{client, digest, token, Server};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const MIB: usize = 1 << 20;
/// The suite's bucket; every server gets its own `root` inside it.
const SUITE_BUCKET: &str = "regate-suite";

// ---------------------------------------------------------------------------------------------
// moto: one server for the whole test binary

struct Moto {
    /// `127.0.0.1:port`
    addr: String,
    _child: Child,
}

/// moto exits when our end of its stdin closes, so it never outlives this test binary.
const MOTO_LAUNCHER: &str = "import os, sys, threading
from moto.server import main
threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
main(['-H', '127.0.0.1', '-p', '0'])
";

fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let mut child = Command::new("python3")
            .args(["-c", MOTO_LAUNCHER])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 with moto[server] is needed (scripts/test-all.sh installs it)");
        // stdin is kept open (leaked on purpose) for the life of this process
        std::mem::forget(child.stdin.take());
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            // keep draining: moto logs every request there
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("Running on http://").nth(1) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(rest.trim().to_owned());
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("moto did not start (pip install 'moto[server]')");
        let m = Moto { addr, _child: child };
        let (st, body) = m.request("PUT", &format!("/{SUITE_BUCKET}"));
        assert_eq!(st, 200, "create bucket: {body}");
        m
    })
}

impl Moto {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A plain HTTP/1.1 request (moto does not check signatures): status and body. Synchronous on
    /// purpose, so the suite's helpers can call it from anywhere.
    fn request(&self, method: &str, target: &str) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        write!(
            s,
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("").to_owned();
        (status, body)
    }

    fn create_bucket(&self, name: &str) {
        let (st, body) = self.request("PUT", &format!("/{name}"));
        assert_eq!(st, 200, "create bucket {name}: {body}");
    }

    /// Every object key in `bucket` under `prefix`, sorted.
    fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let (st, body) = self.request("GET", &format!("/{bucket}?list-type=2&max-keys=1000&prefix={prefix}"));
        assert_eq!(st, 200, "{body}");
        assert!(
            !body.contains("<IsTruncated>true"),
            "more than 1000 keys under {prefix}"
        );
        let mut keys = xml_values(&body, "Key");
        keys.sort();
        keys
    }

    /// Keys of multipart uploads begun and neither completed nor aborted.
    fn unfinished_multipart(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let (st, body) = self.request("GET", &format!("/{bucket}?uploads&prefix={prefix}"));
        assert_eq!(st, 200, "{body}");
        xml_values(&body, "Key")
    }
}

fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|p| p.split(&close).next().map(str::to_owned))
        .collect()
}

/// The S3 storage section for `bucket` and `root`, talking to `endpoint`.
fn s3_yaml(endpoint: &str, bucket: &str, root: &str, extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { ", " };
    format!(
        "storage: {{ backend: s3, s3: {{ bucket: {bucket}, region: us-east-1, endpoint: {endpoint}, \
         access_key_id: test, secret_access_key: test, root: {root}, part_size: 5242880, \
         max_retries: 3 }}{sep}{extra} }}\n"
    )
}

/// The registry suite's view of the store: each server keeps its objects under
/// `suite/<its temp dir name>/` in the suite bucket.
mod backend {
    use super::{moto, s3_yaml, SUITE_BUCKET};
    use crate::common::Server;
    use std::path::Path;

    fn root_of(dir: &Path) -> String {
        format!("suite/{}", dir.file_name().unwrap().to_str().unwrap())
    }

    pub fn storage_yaml(dir: &Path, extra: &str) -> String {
        s3_yaml(&moto().url(), SUITE_BUCKET, &root_of(dir), extra)
    }

    pub fn stored_keys(s: &Server, prefix: &str) -> Vec<String> {
        let root = root_of(s.dir.path());
        moto()
            .keys(SUITE_BUCKET, &format!("{root}/{prefix}"))
            .into_iter()
            .map(|k| k[root.len() + 1..].to_owned())
            .filter(|k| !k.ends_with(".touched"))
            .collect()
    }

    pub fn leftovers(s: &Server) -> Vec<String> {
        moto().unfinished_multipart(SUITE_BUCKET, &format!("{}/", root_of(s.dir.path())))
    }
}

// ---------------------------------------------------------------------------------------------
// helpers

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(seed as u32 % 32) as u8 ^ seed)
        .collect()
}

fn unique(name: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{name}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Starts a replica on `storage`, signing and verifying tokens with the key under `shared`
/// (generated by the first replica) for one service name, as an HA deployment does.
fn replica(storage: &str, shared: &Path) -> Server {
    Server::start(&format!(
        "{storage}auth: {{ service: regate-ha, signing_key: {k}, signing_cert: {c} }}\n",
        k = shared.join("token.key").display(),
        c = shared.join("token.crt").display()
    ))
}

fn loc_of(r: &reqwest::Response) -> String {
    r.headers()["location"].to_str().unwrap().to_owned()
}

/// An upload URL path (`/v2/...`) that any replica can be asked about.
fn path_of(location: &str) -> String {
    match location.find("/v2/") {
        Some(i) => location[i..].to_owned(),
        None => location.to_owned(),
    }
}

async fn patch(c: &reqwest::Client, base: &str, auth: &str, upload: &str, at: usize, chunk: &[u8]) -> String {
    let r = c
        .patch(format!("{base}{upload}"))
        .header("authorization", auth)
        .header("content-range", format!("{at}-{}", at + chunk.len() - 1))
        .body(chunk.to_vec())
        .send()
        .await
        .unwrap();
    let st = r.status();
    let range = r.headers().get("range").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(st, 202, "PATCH at {at} on {base}: {}", r.text().await.unwrap());
    assert_eq!(range.as_deref(), Some(format!("0-{}", at + chunk.len() - 1).as_str()));
    path_of(&loc_of(&r))
}

// ---------------------------------------------------------------------------------------------
// replicas and restarts

/// Three regate processes on one bucket behave as one registry: a chunked upload whose PATCHes
/// alternate between two of them, one of which is killed and restarted in the middle, finishes on
/// the third; the blob, a manifest and its tag are then read from the others. The tokens all come
/// from the first replica, so this also proves the replicas share the signing key.
#[tokio::test]
async fn replicas_share_one_bucket_and_uploads_survive_restarts() {
    let m = moto();
    let bucket = unique("replicas");
    m.create_bucket(&bucket);
    let storage = s3_yaml(&m.url(), &bucket, "/", "");
    let shared = tempfile::tempdir().unwrap();
    let a = replica(&storage, shared.path());
    let b = replica(&storage, shared.path());
    let c3 = replica(&storage, shared.path());
    let repo = "ha/app";
    let (u, p) = a.admin();
    let auth = format!(
        "Bearer {}",
        token(&a, Some((&u, &p)), &[&format!("repository:{repo}:pull,push")]).await
    );
    let c = client();

    // 12 MiB + a bit in three chunks of uneven sizes: the assembly writes 5 MiB multipart parts
    let data = pattern(12 * MIB + 12_345, 7);
    let d = digest(&data);
    let cuts = [0, 4 * MIB + 1, 9 * MIB + 3, data.len()];

    let r = c
        .post(format!("{}/v2/{repo}/blobs/uploads/", a.url))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mut up = path_of(&loc_of(&r));
    up = patch(&c, &b.url, &auth, &up, cuts[0], &data[cuts[0]..cuts[1]]).await;
    up = patch(&c, &a.url, &auth, &up, cuts[1], &data[cuts[1]..cuts[2]]).await;

    // B dies (SIGKILL) and comes back on the same config: the upload goes on there
    let b = b.restart();
    let st = c
        .get(format!("{}{up}", b.url))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(st.status(), 204);
    assert_eq!(st.headers()["range"], format!("0-{}", cuts[2] - 1).as_str());
    up = patch(&c, &b.url, &auth, &up, cuts[2], &data[cuts[2]..cuts[3]]).await;

    // the PUT lands on the third replica
    let sep = if up.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{}{up}{sep}digest={d}", c3.url))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    // every replica serves it, byte for byte
    for s in [&a, &b, &c3] {
        let r = c
            .get(format!("{}/v2/{repo}/blobs/{d}", s.url))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.unwrap() == data.as_slice(), "blob from {}", s.url);
    }
    // one object in distribution's layout, no upload state and no unfinished multipart upload
    let hex = &d["sha256:".len()..];
    assert_eq!(
        m.keys(&bucket, "docker/registry/v2/blobs/"),
        vec![format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2])]
    );
    assert_eq!(
        m.keys(&bucket, &format!("docker/registry/v2/repositories/{repo}/_uploads/")),
        Vec::<String>::new()
    );
    assert_eq!(m.unfinished_multipart(&bucket, ""), Vec::<String>::new());

    // a manifest pushed to one replica is at once visible, by tag, on the others
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let cd = digest(&cfg);
    let r = c
        .post(format!("{}/v2/{repo}/blobs/uploads/?digest={cd}", b.url))
        .header("authorization", &auth)
        .body(cfg.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cfg.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": data.len()}]
    }))
    .unwrap();
    let r = c
        .put(format!("{}/v2/{repo}/manifests/v1", c3.url))
        .header("authorization", &auth)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for s in [&a, &b] {
        let r = c
            .get(format!("{}/v2/{repo}/manifests/v1", s.url))
            .header("authorization", &auth)
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().as_ref(), manifest.as_slice());
    }
}

// ---------------------------------------------------------------------------------------------
// faults between regate and the bucket

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Pass,
    /// answer this many new connections with `503 SlowDown`, then pass again
    SlowDown(usize),
    /// the server is gone: every connection is closed at once
    Down,
}

/// A TCP proxy in front of moto whose faults the test switches. Changing the mode cuts every
/// connection in flight, so pooled connections cannot dodge the fault.
struct FaultProxy {
    addr: String,
    mode: Arc<Mutex<Mode>>,
    cut: tokio::sync::watch::Sender<u64>,
    /// 503s answered so far
    injected: Arc<AtomicUsize>,
    /// request bytes passed on to moto so far
    upstream: Arc<AtomicUsize>,
}

impl FaultProxy {
    async fn start(target: String) -> FaultProxy {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let mode = Arc::new(Mutex::new(Mode::Pass));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let injected = Arc::new(AtomicUsize::new(0));
        let upstream = Arc::new(AtomicUsize::new(0));
        let (m, c, inj, up) = (mode.clone(), cut.clone(), injected.clone(), upstream.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = l.accept().await {
                let mode = {
                    let mut g = m.lock().unwrap();
                    let now = *g;
                    if let Mode::SlowDown(n) = now {
                        *g = if n > 1 { Mode::SlowDown(n - 1) } else { Mode::Pass };
                    }
                    now
                };
                let (target, mut cut_rx, inj, up) = (target.clone(), c.subscribe(), inj.clone(), up.clone());
                tokio::spawn(async move {
                    match mode {
                        Mode::Down => drop(conn),
                        Mode::SlowDown(_) => {
                            inj.fetch_add(1, Ordering::SeqCst);
                            slow_down(conn).await;
                        }
                        Mode::Pass => {
                            tokio::select! {
                                _ = pipe(conn, &target, up) => {}
                                _ = cut_rx.changed() => {}
                            }
                        }
                    }
                });
            }
        });
        FaultProxy {
            addr,
            mode,
            cut,
            injected,
            upstream,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
        self.cut.send_modify(|g| *g += 1);
    }
}

/// Reads the request head and answers as S3 does when it sheds load.
async fn slow_down(mut conn: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                <Message>Please reduce your request rate.</Message></Error>";
    let resp = format!(
        "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(resp.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// Copies both ways, counting what goes upstream.
async fn pipe(client: tokio::net::TcpStream, target: &str, up: Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let to_server = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    up.fetch_add(n, Ordering::SeqCst);
                }
            }
        }
        let _ = sw.shutdown().await;
    };
    let to_client = async {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    tokio::join!(to_server, to_client);
}

/// regate on its own bucket behind a fault proxy, and an admin token for `repo`.
async fn behind_proxy(repo: &str) -> (FaultProxy, Server, String, String) {
    let m = moto();
    let bucket = unique("faults");
    m.create_bucket(&bucket);
    let p = FaultProxy::start(m.addr.clone()).await;
    // short timeouts so that a dead bucket is reported in seconds
    let storage = s3_yaml(&p.url(), &bucket, "/", "").replace("max_retries: 3", "max_retries: 3, timeout: 10");
    let s = Server::start(&storage);
    let (u, pw) = s.admin();
    let auth = format!(
        "Bearer {}",
        token(&s, Some((&u, &pw)), &[&format!("repository:{repo}:pull,push")]).await
    );
    (p, s, bucket, auth)
}

async fn start_upload(c: &reqwest::Client, s: &Server, auth: &str, repo: &str) -> String {
    let r = c
        .post(format!("{}/v2/{repo}/blobs/uploads/", s.url))
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    path_of(&loc_of(&r))
}

async fn finish(c: &reqwest::Client, s: &Server, auth: &str, up: &str, d: &str) -> reqwest::Response {
    let sep = if up.contains('?') { '&' } else { '?' };
    c.put(format!("{}{up}{sep}digest={d}", s.url))
        .header("authorization", auth)
        .send()
        .await
        .unwrap()
}

async fn get_blob(c: &reqwest::Client, s: &Server, auth: &str, repo: &str, d: &str) -> (u16, Vec<u8>) {
    let r = c
        .get(format!("{}/v2/{repo}/blobs/{d}", s.url))
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

/// S3 shedding load (503 SlowDown) in the middle of an upload: regate retries with backoff and
/// the client never notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_down_answers_are_retried() {
    let repo = "faults/slowdown";
    let (p, s, _bucket, auth) = behind_proxy(repo).await;
    let c = client();
    let data = pattern(3 * MIB, 3);
    let d = digest(&data);
    let up = start_upload(&c, &s, &auth, repo).await;
    let up = patch(&c, &s.url, &auth, &up, 0, &data[..MIB]).await;

    // the next three requests to the bucket are refused with 503 SlowDown
    p.set(Mode::SlowDown(3));
    let up = patch(&c, &s.url, &auth, &up, MIB, &data[MIB..]).await;
    assert_eq!(p.injected.load(Ordering::SeqCst), 3, "the faults were not hit");
    let r = finish(&c, &s, &auth, &up, &d).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    assert_eq!(get_blob(&c, &s, &auth, repo, &d).await, (200, data));
    // each refusal was followed by one logged backoff, of growing length
    let waits: Vec<f64> = s
        .logs()
        .lines()
        .filter(|l| l.contains("will retry after") && l.contains("RateLimited"))
        .map(|l| {
            l.split("will retry after ")
                .nth(1)
                .unwrap()
                .split('s')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(waits.len(), 3, "{}", s.logs());
    assert!(waits[0] < waits[2], "{waits:?}");
}

/// The bucket goes away while a chunk is streaming into a multipart upload: the client gets a
/// 503 `UNAVAILABLE` (also for the PUT and on /readyz), no blob becomes visible, the upload keeps
/// the bytes it had, and once the bucket is back the same upload resumes and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_down_mid_upload_is_a_clean_503_and_the_upload_resumes() {
    let repo = "faults/down";
    let (p, s, bucket, auth) = behind_proxy(repo).await;
    let m = moto();
    let c = client();
    let first = MIB;
    let data = pattern(first + 14 * MIB, 5);
    let d = digest(&data);
    let up = start_upload(&c, &s, &auth, repo).await;
    let up = patch(&c, &s.url, &auth, &up, 0, &data[..first]).await;

    // stream the second chunk; once its first 5 MiB part has reached the bucket (OpenDAL sends a
    // part when the next one is full), cut the bucket
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|x| (x, rx))
    }));
    let req = c
        .patch(format!("{}{up}", s.url))
        .header("authorization", &auth)
        .header("content-range", format!("{first}-{}", data.len() - 1))
        .header("content-length", (data.len() - first).to_string())
        .body(body)
        .send();
    let resp = tokio::spawn(req);
    let before = p.upstream.load(Ordering::SeqCst);
    let second = &data[first..];
    for c in second[..11 * MIB].chunks(256 * 1024) {
        tx.send(Ok(bytes::Bytes::copy_from_slice(c))).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while p.upstream.load(Ordering::SeqCst) < before + 5 * MIB {
        assert!(
            std::time::Instant::now() < deadline,
            "the first part never reached the bucket ({} bytes went up): {}",
            p.upstream.load(Ordering::SeqCst) - before,
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.set(Mode::Down);
    for c in second[11 * MIB..].chunks(256 * 1024) {
        if tx.send(Ok(bytes::Bytes::copy_from_slice(c))).await.is_err() {
            break;
        }
    }
    drop(tx);
    let r = resp.await.unwrap().unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "UNAVAILABLE", "{v}");

    // (regate answered before reading the whole body, so that connection is closed: a new client)
    let c = client();
    // while it is down: the PUT is a 503 too, and the registry says it is not ready
    let r = finish(&c, &s, &auth, &up, &d).await;
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "UNAVAILABLE", "{v}");
    assert_eq!(c.get(format!("{}/readyz", s.url)).send().await.unwrap().status(), 503);

    // back: nothing half-written is visible, and the upload still has exactly its first chunk
    p.set(Mode::Pass);
    assert_eq!(get_blob(&c, &s, &auth, repo, &d).await.0, 404);
    let hex = &d["sha256:".len()..];
    assert!(m
        .keys(&bucket, &format!("docker/registry/v2/blobs/sha256/{}/{hex}", &hex[..2]))
        .is_empty());
    let st = c
        .get(format!("{}{up}", s.url))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(st.status(), 204);
    assert_eq!(st.headers()["range"], format!("0-{}", first - 1).as_str());
    let up = patch(&c, &s.url, &auth, &up, first, &data[first..]).await;
    let r = finish(&c, &s, &auth, &up, &d).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    assert_eq!(get_blob(&c, &s, &auth, repo, &d).await, (200, data));
}

// ---------------------------------------------------------------------------------------------
// redirects

/// With `storage.redirect`, an authorised blob GET is a 307 to a presigned bucket URL that serves
/// the bytes to a client without credentials; authorisation and existence are checked first.
#[tokio::test]
async fn blob_get_redirects_to_a_presigned_url() {
    let m = moto();
    let bucket = unique("redirect");
    m.create_bucket(&bucket);
    let s = Server::start(&s3_yaml(&m.url(), &bucket, "/", "redirect: true, redirect_ttl: 300"));
    let repo = "redir/app";
    let (u, pw) = s.admin();
    let auth = format!(
        "Bearer {}",
        token(&s, Some((&u, &pw)), &[&format!("repository:{repo}:pull,push")]).await
    );
    let c = client();
    let data = pattern(200_000, 9);
    let d = digest(&data);
    let r = c
        .post(format!("{}/v2/{repo}/blobs/uploads/?digest={d}", s.url))
        .header("authorization", &auth)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let r = c
        .get(format!("{}/v2/{repo}/blobs/{d}", s.url))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    let to = loc_of(&r);
    assert!(to.starts_with(&m.url()), "{to}");
    assert!(
        to.contains("X-Amz-Signature=") && to.contains("X-Amz-Expires=300"),
        "{to}"
    );
    // the URL alone is the credential
    let got = reqwest::get(&to).await.unwrap();
    assert_eq!(got.status(), 200);
    assert!(got.bytes().await.unwrap() == data.as_slice());

    // no token: the challenge, not a URL
    let r = c.get(format!("{}/v2/{repo}/blobs/{d}", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("location").is_none());
    // unknown blob: 404 from regate, not a URL to a missing object
    let other = digest(b"never pushed");
    let r = c
        .get(format!("{}/v2/{repo}/blobs/{other}", s.url))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // HEAD is answered by regate itself
    let r = c
        .head(format!("{}/v2/{repo}/blobs/{d}", s.url))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], data.len().to_string().as_str());
}

// ---------------------------------------------------------------------------------------------
// a real client

/// skopeo pushes an image (a 6 MiB layer moved into place by copy, a small one) to regate on S3
/// and pulls it back unchanged.
#[test]
fn skopeo_round_trip_on_s3() {
    if !common::have("skopeo") {
        panic!("skopeo is needed (scripts/test-all.sh installs it)");
    }
    let m = moto();
    let bucket = unique("skopeo");
    m.create_bucket(&bucket);
    let s = Server::start(&s3_yaml(&m.url(), &bucket, "/regate", ""));
    let a = common::skopeo_round_trip(&s);
    // and they are in the bucket under the configured root, in distribution's layout
    let keys = m.keys(&bucket, "regate/docker/registry/v2/blobs/");
    for (hex, _) in &a {
        assert!(
            keys.contains(&format!(
                "regate/docker/registry/v2/blobs/sha256/{}/{hex}/data",
                &hex[..2]
            )),
            "{hex} not in {keys:?}"
        );
    }
}

/// An upload abandoned half way leaves its parts in the bucket; the server's purge removes them
/// (and the upload) once they are older than `gc.upload_max_age`, without a full collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_and_their_parts_are_purged() {
    let m = moto();
    let bucket = unique("purge");
    m.create_bucket(&bucket);
    let s = Server::start(&format!(
        "{}gc: {{ upload_max_age: 2, upload_purge_interval: 1 }}\n",
        s3_yaml(&m.url(), &bucket, "/", "")
    ));
    let (u, pw) = s.admin();
    let auth = format!(
        "Bearer {}",
        token(&s, Some((&u, &pw)), &["repository:ops/app:pull,push"]).await
    );
    let c = client();
    let up = start_upload(&c, &s, &auth, "ops/app").await;
    let up = patch(&c, &s.url, &auth, &up, 0, &pattern(300_000, 3)).await;
    patch(&c, &s.url, &auth, &up, 300_000, &pattern(200_000, 4)).await;
    let parts = |m: &Moto| m.keys(&bucket, "docker/registry/v2/repositories/ops/app/_uploads/");
    assert!(parts(m).iter().any(|k| k.contains("part-")), "{:?}", parts(m));
    // a live upload (younger than the age) survives the purges that run meanwhile
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = c
        .get(format!("{}{up}", s.url))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "an upload in progress was purged");
    // abandoned: gone with every part
    let t = std::time::Instant::now();
    while !parts(m).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(20), "still there: {:?}", parts(m));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let r = c
        .get(format!("{}{up}", s.url))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(s.logs().contains("purged abandoned uploads"), "{}", s.logs());
}
