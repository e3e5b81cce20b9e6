//! A full disk under the fs backend: pushes answer 507 with an OCI error saying the storage is
//! full, nothing partial becomes visible, an upload in progress keeps what it had, `/readyz`
//! and `/metrics` say so, and everything works again once space is freed.
//!
//! The disk is a small tmpfs mounted for the test (root only); where it cannot be mounted the
//! test says so and is skipped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{client, digest, Server};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted at a directory, unmounted (lazily, so a process still using it does not
/// stop that) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr).trim().to_owned());
        }
        Ok(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Writes `path` until the filesystem refuses another byte.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    for size in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
        let buf = vec![0x5a_u8; size];
        loop {
            match f.write_all(&buf).and_then(|_| f.sync_data()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
    }
}

struct Reg<'a> {
    s: &'a Server,
    auth: (String, String),
}

impl Reg<'_> {
    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.s.url)
        };
        client().request(m, url).basic_auth(&self.auth.0, Some(&self.auth.1))
    }

    async fn post_blob(&self, data: &[u8]) -> reqwest::Response {
        self.req(
            reqwest::Method::POST,
            &format!("/v2/admin/app/blobs/uploads/?digest={}", digest(data)),
        )
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
    }

    async fn put_manifest(&self, body: &[u8]) -> reqwest::Response {
        self.req(reqwest::Method::PUT, "/v2/admin/app/manifests/v1")
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    async fn status(&self, m: reqwest::Method, path: &str) -> u16 {
        self.req(m, path).send().await.unwrap().status().as_u16()
    }

    async fn readyz(&self) -> (u16, Value) {
        let r = client().get(format!("{}/readyz", self.s.url)).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn full_gauge(&self) -> String {
        let m = client()
            .get(format!("{}/metrics", self.s.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        m.lines()
            .find_map(|l| l.strip_prefix("regate_storage_full "))
            .unwrap_or_else(|| panic!("no regate_storage_full in\n{m}"))
            .to_owned()
    }
}

/// Asserts a 507 whose OCI error body says the storage is full.
async fn expect_full(r: reqwest::Response, what: &str) {
    let st = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(st, 507, "{what}: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    assert_eq!(v["errors"][0]["code"], "DENIED", "{what}: {text}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("the registry's storage is full"),
        "{what}: {text}"
    );
}

#[tokio::test]
async fn a_full_disk_answers_507_keeps_nothing_partial_and_shows_in_readyz_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let _disk = match Tmpfs::mount(&data, "8m") {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED: cannot mount a small tmpfs to fill ({e}); run as root to test a full disk");
            return;
        }
    };
    let s = Server::start_in(dir, "");
    let r = Reg { s: &s, auth: s.admin() };
    assert_eq!(r.readyz().await.0, 200);
    assert_eq!(r.full_gauge().await, "0");

    // before the disk fills: a config and a layer, and an upload with its first chunk
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer: Vec<u8> = (0..(2u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let layer_d = digest(&layer);
    assert_eq!(r.post_blob(&cfg).await.status(), 201);
    let up = r
        .req(reqwest::Method::POST, "/v2/admin/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(up.status(), 202);
    let loc = up.headers()["location"].to_str().unwrap().to_owned();
    let first = 100 << 10;
    let resp = r
        .req(reqwest::Method::PATCH, &loc)
        .header("content-range", format!("0-{}", first - 1))
        .body(layer[..first].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    fill(&s.data().join("filler"));

    // a monolithic push: 507, and the gauge shows it before any readiness check
    expect_full(r.post_blob(&layer).await, "monolithic push").await;
    assert_eq!(r.full_gauge().await, "1");
    let (st, body) = r.readyz().await;
    assert_eq!(st, 503, "{body}");
    assert_eq!(body["reason"], "storage is full", "{body}");
    // the next chunk of the upload: 507, and the upload keeps exactly what it had
    let resp = r
        .req(reqwest::Method::PATCH, &loc)
        .header("content-range", format!("{first}-{}", layer.len() - 1))
        .body(layer[first..].to_vec())
        .send()
        .await
        .unwrap();
    expect_full(resp, "chunk").await;
    let st = r.req(reqwest::Method::GET, &loc).send().await.unwrap();
    assert_eq!(st.status(), 204);
    assert_eq!(st.headers()["range"], format!("0-{}", first - 1).as_str());
    // a new upload and a manifest: 507 too
    expect_full(
        r.req(reqwest::Method::POST, "/v2/admin/app/blobs/uploads/")
            .send()
            .await
            .unwrap(),
        "upload start",
    )
    .await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&cfg), "size": cfg.len()},
        "layers": []
    }))
    .unwrap();
    expect_full(r.put_manifest(&manifest).await, "manifest").await;

    // nothing partial is visible, nor left behind
    assert_eq!(
        r.status(reqwest::Method::HEAD, &format!("/v2/admin/app/blobs/{layer_d}"))
            .await,
        404
    );
    assert_eq!(r.status(reqwest::Method::GET, "/v2/admin/app/manifests/v1").await, 404);
    assert_eq!(
        r.status(
            reqwest::Method::GET,
            &format!("/v2/admin/app/manifests/{}", digest(&manifest))
        )
        .await,
        404
    );
    let hex = layer_d.strip_prefix("sha256:").unwrap();
    assert!(!s
        .data()
        .join(format!("docker/registry/v2/blobs/sha256/{}/{hex}", &hex[..2]))
        .exists());
    let tmp: Vec<_> = std::fs::read_dir(s.data().join(".regate-tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "temporary files left: {tmp:?}");

    // space freed: ready again, and every push goes through
    std::fs::remove_file(s.data().join("filler")).unwrap();
    assert_eq!(r.readyz().await.0, 200);
    assert_eq!(r.full_gauge().await, "0");
    let resp = r
        .req(
            reqwest::Method::PUT,
            &format!("{loc}{}digest={layer_d}", if loc.contains('?') { '&' } else { '?' }),
        )
        .header("content-range", format!("{first}-{}", layer.len() - 1))
        .body(layer[first..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let got = r
        .req(reqwest::Method::GET, &format!("/v2/admin/app/blobs/{layer_d}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(digest(&got), layer_d);
    assert_eq!(r.put_manifest(&manifest).await.status(), 201);
    assert_eq!(r.status(reqwest::Method::GET, "/v2/admin/app/manifests/v1").await, 200);
}
