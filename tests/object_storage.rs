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
use std::sync::OnceLock;
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
