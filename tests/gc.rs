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
        if st != 200 {
            let hex = d.strip_prefix("sha256:").unwrap();
            let v2 = s.data().join("docker/registry/v2");
            let blob = v2.join(format!("blobs/sha256/{}/{hex}", &hex[..2]));
            let link = v2.join(format!("repositories/{REPO}/_layers/sha256/{hex}/link"));
            let gc_runs = std::fs::read_to_string(s.dir.path().join("gc-runs.log")).unwrap_or_default();
            panic!(
                "blob {d} of {tag}: {st}; stored {:?}, linked {}\n{}\ngc runs:\n{}",
                std::fs::read_dir(&blob).map(|r| r.map(|e| e.unwrap().file_name()).collect::<Vec<_>>()),
                link.exists(),
                s.logs()
                    .lines()
                    .filter(|l| l.contains(hex) || l.contains(tag))
                    .collect::<Vec<_>>()
                    .join("\n"),
                gc_runs
                    .lines()
                    .filter(|l| l.contains(hex) || l.starts_with("run"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
        }
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

/// One client of [`gc_under_fire`]: each round pushes an image, deletes it (its layer is then
/// unreferenced), and pushes another image that reuses that layer the way docker does (HEAD,
/// and upload only when missing, in two chunks). Returns the tags it left, with their digests.
async fn churn(s: &Server, client_no: usize, rounds: usize) -> Vec<(String, Vec<String>)> {
    let (u, p) = s.admin();
    let c = client();
    let mut live = Vec::new();
    let base = s.url.clone();
    let upload = |data: Vec<u8>| {
        let (c, u, p, base) = (c.clone(), u.clone(), p.clone(), base.clone());
        async move {
            let d = digest(&data);
            let head = c
                .head(format!("{base}/v2/{REPO}/blobs/{d}"))
                .basic_auth(&u, Some(&p))
                .send()
                .await
                .unwrap();
            if head.status() == 200 {
                return d;
            }
            let r = c
                .post(format!("{base}/v2/{REPO}/blobs/uploads/"))
                .basic_auth(&u, Some(&p))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            let loc = r.headers()["location"].to_str().unwrap().to_owned();
            let half = data.len() / 2;
            let r = c
                .patch(&loc)
                .basic_auth(&u, Some(&p))
                .header("content-range", format!("0-{}", half - 1))
                .body(data[..half].to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202, "an upload in progress was broken");
            let loc = r.headers()["location"].to_str().unwrap().to_owned();
            let sep = if loc.contains('?') { '&' } else { '?' };
            let r = c
                .put(format!("{loc}{sep}digest={d}"))
                .basic_auth(&u, Some(&p))
                .header("content-range", format!("{half}-{}", data.len() - 1))
                .body(data[half..].to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "an upload in progress was broken");
            d
        }
    };
    let put = |tag: String, blobs: Vec<(String, usize)>| {
        let (c, u, p, base) = (c.clone(), u.clone(), p.clone(), base.clone());
        async move {
            let m = serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
                "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":blobs[0].0,"size":blobs[0].1},
                "layers": blobs[1..].iter().map(|(d, n)| json!({"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":d,"size":n})).collect::<Vec<_>>()}))
            .unwrap();
            let r = c
                .put(format!("{base}/v2/{REPO}/manifests/{tag}"))
                .basic_auth(&u, Some(&p))
                .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                .body(m.clone())
                .send()
                .await
                .unwrap();
            let st = r.status().as_u16();
            let text = r.text().await.unwrap();
            assert!(
                st == 201 || (st == 400 && text.contains("MANIFEST_BLOB_UNKNOWN")),
                "{st} {text}"
            );
            (st == 201).then(|| digest(&m))
        }
    };
    for round in 0..rounds {
        let layer: Vec<u8> = format!("layer {client_no}/{round};").repeat(3000).into_bytes();
        let cfg_a = format!("{{\"a\":\"{client_no}/{round}\"}}").into_bytes();
        let cfg_b = format!("{{\"b\":\"{client_no}/{round}\"}}").into_bytes();
        let blobs_a = vec![
            (upload(cfg_a.clone()).await, cfg_a.len()),
            (upload(layer.clone()).await, layer.len()),
        ];
        if let Some(a) = put(format!("a-{client_no}-{round}"), blobs_a).await {
            // 404 when a collector deleting untagged manifests took the revision just as the
            // tag was written, and has not put it back yet: then the image stays
            let r = c
                .delete(format!("{base}/v2/{REPO}/manifests/{a}"))
                .basic_auth(&u, Some(&p))
                .send()
                .await
                .unwrap();
            assert!(r.status() == 202 || r.status() == 404, "{}", r.status());
        }
        // the layer now belongs to nothing; push an image that uses it again, retrying as
        // a client does when the registry says a blob is missing
        let tag = format!("b-{client_no}-{round}");
        for attempt in 0.. {
            // with no grace a collector may take fresh layers before their manifest comes;
            // the push then fails cleanly and is tried again
            assert!(attempt < 200, "{tag} could not be pushed");
            let blobs_b = vec![
                (upload(cfg_b.clone()).await, cfg_b.len()),
                (upload(layer.clone()).await, layer.len()),
            ];
            if put(tag.clone(), blobs_b.clone()).await.is_some() {
                live.push((tag.clone(), blobs_b.into_iter().map(|(d, _)| d).collect()));
                break;
            }
        }
    }
    live
}

/// Every blob stored under the fs root.
fn stored_blobs(s: &Server) -> std::collections::BTreeSet<String> {
    let root = s.data().join("docker/registry/v2/blobs/sha256");
    let mut out = std::collections::BTreeSet::new();
    for prefix in std::fs::read_dir(root).unwrap() {
        for e in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            let e = e.unwrap();
            if e.path().join("data").exists() {
                out.insert(format!("sha256:{}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// The collector under fire (short version; `REGATE_GC_STRESS_ROUNDS=200` for a long one):
/// clients push, delete and re-reference layers while `regate gc` (with no grace, and with the
/// default one; with and without `--delete-untagged`) runs in a loop.
/// Every tag left is fully pullable, nothing deleted stays stored, no upload broke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_under_fire() {
    let rounds: usize = std::env::var("REGATE_GC_STRESS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let s = Server::start("");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc_loop = {
        let stop = stop.clone();
        let cfg = s.dir.path().join("regate.yaml");
        let dir = s.dir.path().to_owned();
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // no grace, no grace deleting untagged manifests, and the default grace
                let mut cmd = common::regate();
                cmd.arg("gc");
                match runs % 3 {
                    0 => cmd.args(["--grace", "0s"]),
                    1 => cmd.args(["--grace", "0s", "--delete-untagged"]),
                    _ => cmd.arg("--delete-untagged"),
                };
                let started = std::time::SystemTime::now();
                let out = cmd.arg("--config").arg(&cfg).current_dir(&dir).output().unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                // what each run did and when, for a failure to show
                let when = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
                let log = format!(
                    "run {runs} {:?} {:.4}..{:.4}\n{}",
                    cmd.get_args().collect::<Vec<_>>(),
                    when(started),
                    when(std::time::SystemTime::now()),
                    String::from_utf8_lossy(&out.stdout)
                );
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("gc-runs.log"))
                    .unwrap();
                std::io::Write::write_all(&mut f, log.as_bytes()).unwrap();
                runs += 1;
            }
            runs
        })
    };
    let (a, b, c) = tokio::join!(churn(&s, 0, rounds), churn(&s, 1, rounds), churn(&s, 2, rounds));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = gc_loop.join().unwrap();
    assert!(runs >= 2, "gc ran {runs} times");
    let live: Vec<_> = a.into_iter().chain(b).chain(c).collect();
    assert_eq!(live.len(), 3 * rounds);
    let mut tags: Vec<String> = Vec::new();
    loop {
        let last = tags.last().map(|t| format!("&last={t}")).unwrap_or_default();
        let (st, body) = get_status(&s, &format!("tags/list?n=1000{last}")).await;
        assert_eq!(st, 200);
        let page = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["tags"].clone();
        let page = page.as_array().unwrap();
        tags.extend(page.iter().map(|t| t.as_str().unwrap().to_owned()));
        if page.len() < 1000 {
            break;
        }
    }
    for (tag, _) in &live {
        assert!(tags.contains(tag), "{tag} is gone");
    }
    for tag in &tags {
        assert_pullable(&s, tag).await;
    }
    // one more collection: what is stored is exactly what the tags reach
    gc(&s, &["--grace", "0s"]);
    let mut want: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for tag in &tags {
        let (st, body) = get_status(&s, &format!("manifests/{tag}")).await;
        assert_eq!(st, 200);
        let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
        want.insert(digest(&body));
        want.insert(m["config"]["digest"].as_str().unwrap().to_owned());
        for l in m["layers"].as_array().unwrap() {
            want.insert(l["digest"].as_str().unwrap().to_owned());
        }
        assert_pullable(&s, tag).await;
    }
    assert_eq!(stored_blobs(&s), want);
}
