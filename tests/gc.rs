//! The collector frees what users deleted: a manifest deleted by digest gives up the layers only
//! it used, on a root regate wrote and on one where `registry:2` left empty revision
//! directories behind; a collector with nothing to do reports nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{client, digest, Server};
use serde_json::json;
use std::path::PathBuf;

const REPO: &str = "admin/app";

async fn push_blob(s: &Server, data: &[u8]) -> String {
    let (u, p) = s.admin();
    let d = digest(data);
    let r = client()
        .post(format!("{}/v2/{REPO}/blobs/uploads/?digest={d}", s.url))
        .basic_auth(&u, Some(&p))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    d
}

/// Pushes a config and the given layers as an image tagged `tag`; returns the manifest digest.
async fn push_image(s: &Server, tag: &str, blobs: &[&[u8]]) -> (String, Vec<String>) {
    let mut ds = Vec::new();
    for b in blobs {
        ds.push(push_blob(s, b).await);
    }
    let m = json!({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
        "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":ds[0],"size":blobs[0].len()},
        "layers": ds[1..].iter().zip(&blobs[1..]).map(|(d, b)| json!({"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":d,"size":b.len()})).collect::<Vec<_>>()});
    let body = serde_json::to_vec(&m).unwrap();
    let (u, p) = s.admin();
    let r = client()
        .put(format!("{}/v2/{REPO}/manifests/{tag}", s.url))
        .basic_auth(&u, Some(&p))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    (digest(&body), ds)
}

async fn delete_manifest(s: &Server, d: &str) {
    let (u, p) = s.admin();
    let r = client()
        .delete(format!("{}/v2/{REPO}/manifests/{d}", s.url))
        .basic_auth(&u, Some(&p))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

async fn get_status(s: &Server, path: &str) -> (u16, Vec<u8>) {
    let (u, p) = s.admin();
    let r = client()
        .get(format!("{}/v2/{REPO}/{path}", s.url))
        .basic_auth(&u, Some(&p))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

/// Every blob of the image tagged `tag` answers 200 with bytes of the right digest.
async fn assert_pullable(s: &Server, tag: &str) {
    let (st, body) = get_status(s, &format!("manifests/{tag}")).await;
    assert_eq!(st, 200, "manifest {tag}");
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let mut ds = vec![m["config"]["digest"].as_str().unwrap().to_owned()];
    ds.extend(
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned()),
    );
    for d in ds {
        let (st, bytes) = get_status(s, &format!("blobs/{d}")).await;
        assert_eq!(st, 200, "blob {d} of {tag}");
        assert_eq!(digest(&bytes), d);
    }
}

fn gc(s: &Server, args: &[&str]) -> String {
    let out = common::regate()
        .arg("gc")
        .args(args)
        .arg("--config")
        .arg(s.dir.path().join("regate.yaml"))
        .current_dir(s.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn revision_dir(s: &Server, d: &str) -> PathBuf {
    let hex = d.strip_prefix("sha256:").unwrap();
    s.data().join(format!(
        "docker/registry/v2/repositories/{REPO}/_manifests/revisions/sha256/{hex}"
    ))
}

const NOTHING: &str = "done: 0 tags, 0 blobs (0 bytes), 0 manifests, 0 uploads freed";

#[tokio::test]
async fn gc_frees_the_layers_of_a_manifest_deleted_by_digest() {
    let s = Server::start("");
    let shared: &[u8] = b"a layer both images use";
    let (m1, b1) = push_image(&s, "v1", &[b"{\"image\":1}", shared, b"only image one has this layer"]).await;
    let (_m2, b2) = push_image(&s, "v2", &[b"{\"image\":2}", shared, b"only image two has this layer"]).await;
    delete_manifest(&s, &m1).await;
    // the delete leaves no empty revision directory behind
    assert!(
        !revision_dir(&s, &m1).exists(),
        "empty revision directory left by the delete"
    );

    let out = gc(&s, &["--grace", "0s"]);
    for d in [&b1[0], &b1[2]] {
        assert!(out.contains(&format!("deleted blob {d}")), "{d} not freed:\n{out}");
        assert_eq!(get_status(&s, &format!("blobs/{d}")).await.0, 404, "{d}");
        // nothing of it is left on disk: no data, no sweep marker, no directory
        let hex = d.strip_prefix("sha256:").unwrap();
        let dir = s
            .data()
            .join(format!("docker/registry/v2/blobs/sha256/{}/{hex}", &hex[..2]));
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    for d in &b2 {
        assert!(!out.contains(d.as_str()), "{d} of the kept image freed:\n{out}");
    }
    assert_pullable(&s, "v2").await;
    // nothing left to do: nothing reported, with or without --delete-untagged
    assert!(gc(&s, &["--grace", "0s"]).contains(NOTHING));
    assert!(gc(&s, &["--grace", "0s", "--delete-untagged"]).contains(NOTHING));
    assert!(gc(&s, &["--grace", "0s", "--delete-untagged"]).contains(NOTHING));
    assert_pullable(&s, "v2").await;
}

#[tokio::test]
async fn gc_reads_empty_revision_directories_as_deleted() {
    // registry:2 deletes a manifest by removing its revision's `link` and keeps the directory
    let s = Server::start("");
    let (m1, b1) = push_image(&s, "v1", &[b"{\"image\":\"one\"}", b"layer of image one"]).await;
    let (_m2, b2) = push_image(&s, "v2", &[b"{\"image\":\"two\"}", b"layer of image two"]).await;
    delete_manifest(&s, &m1).await;
    std::fs::create_dir_all(revision_dir(&s, &m1)).unwrap();

    // a dry run names what would go and leaves the directory alone
    let out = gc(&s, &["--grace", "0s", "--dry-run"]);
    assert!(out.contains(&format!("would delete blob {}", b1[1])), "{out}");
    assert!(revision_dir(&s, &m1).exists());
    let out = gc(&s, &["--grace", "0s", "--delete-untagged"]);
    assert!(
        out.contains("0 manifests"),
        "an empty directory is not a manifest:\n{out}"
    );
    for d in &b1 {
        assert!(out.contains(&format!("deleted blob {d}")), "{d} not freed:\n{out}");
        assert_eq!(get_status(&s, &format!("blobs/{d}")).await.0, 404);
    }
    for d in &b2 {
        assert!(!out.contains(d.as_str()), "{out}");
    }
    assert!(!revision_dir(&s, &m1).exists(), "the empty directory stays");
    assert!(gc(&s, &["--grace", "0s", "--delete-untagged"]).contains(NOTHING));
    assert_pullable(&s, "v2").await;
}

#[tokio::test]
async fn scheduled_gc_with_nothing_to_do_reports_nothing() {
    // pushed before the collector runs (with no grace it would take layers mid-push)
    let s = Server::start("");
    let (m1, b1) = push_image(&s, "v1", &[b"{\"image\":\"a\"}", b"layer of a"]).await;
    push_image(&s, "v2", &[b"{\"image\":\"b\"}", b"layer of b"]).await;
    delete_manifest(&s, &m1).await;
    // registry:2 would leave the directory; make sure the collector copes with it too
    std::fs::create_dir_all(revision_dir(&s, &m1)).unwrap();
    let dir = s.into_dir();
    let cfg = dir.path().join("regate.yaml");
    let mut yaml = std::fs::read_to_string(&cfg).unwrap();
    yaml.push_str("gc: { interval: 1, grace: 0, delete_untagged: true }\n");
    std::fs::write(&cfg, yaml).unwrap();
    let s = Server::start_with_config(dir, &cfg);
    let runs = |logs: &str| -> Vec<String> {
        logs.lines()
            .filter(|l| l.contains("scheduled garbage collection"))
            .map(str::to_owned)
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // wait for the run that frees image a, then for two more
    let first = loop {
        let logs = s.logs();
        if let Some(i) = runs(&logs).iter().position(|l| !l.contains("blobs=0")) {
            break i;
        }
        assert!(std::time::Instant::now() < deadline, "no run freed anything:\n{logs}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let later = loop {
        let r = runs(&s.logs());
        if r.len() >= first + 3 {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "the collector stopped running");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    for l in &later[first + 1..] {
        assert!(
            l.contains("manifests=0") && l.contains("blobs=0") && l.contains("tags=0"),
            "a run with nothing to do reported something: {l}"
        );
    }
    assert_eq!(get_status(&s, &format!("blobs/{}", b1[1])).await.0, 404);
    assert_pullable(&s, "v2").await;
}

fn sha512(b: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(b)))
}

#[tokio::test]
async fn gc_keeps_and_frees_sha512_content() {
    let s = Server::start("");
    let (u, p) = s.admin();
    let post = |d: String, data: Vec<u8>| {
        let req = client()
            .post(format!("{}/v2/{REPO}/blobs/uploads/?digest={d}", s.url))
            .basic_auth(&u, Some(&p))
            .body(data);
        async move { assert_eq!(req.send().await.unwrap().status(), 201) }
    };
    let cfg = b"{\"algorithm\":\"sha512\"}".to_vec();
    let layer = b"a sha256 layer under a sha512 manifest".to_vec();
    let orphan = b"a sha512 blob nothing references".to_vec();
    post(sha512(&cfg), cfg.clone()).await;
    post(digest(&layer), layer.clone()).await;
    post(sha512(&orphan), orphan.clone()).await;
    let m = serde_json::to_vec(
        &json!({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
        "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":sha512(&cfg),"size":cfg.len()},
        "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":digest(&layer),"size":layer.len()}]}),
    )
    .unwrap();
    let md = sha512(&m);
    let r = client()
        .put(format!("{}/v2/{REPO}/manifests/{md}", s.url))
        .basic_auth(&u, Some(&p))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let out = gc(&s, &["--grace", "0s"]);
    assert!(out.contains(&format!("deleted blob {}", sha512(&orphan))), "{out}");
    assert!(out.contains("1 blobs"), "only the orphan goes:\n{out}");
    for d in [md.clone(), sha512(&cfg), digest(&layer)] {
        assert_eq!(get_status(&s, &format!("blobs/{d}")).await.0, 200, "{d}");
    }
    assert_eq!(get_status(&s, &format!("manifests/{md}")).await, (200, m));

    delete_manifest(&s, &md).await;
    let out = gc(&s, &["--grace", "0s"]);
    for d in [md, sha512(&cfg), digest(&layer)] {
        assert!(out.contains(&format!("deleted blob {d}")), "{d}:\n{out}");
        assert_eq!(get_status(&s, &format!("blobs/{d}")).await.0, 404, "{d}");
    }
    assert!(gc(&s, &["--grace", "0s"]).contains(NOTHING));
}
