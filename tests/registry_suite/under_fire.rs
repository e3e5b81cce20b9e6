//! The collector under fire, on every backend: clients push, delete and re-reference layers
//! while `regate gc` runs in a loop (with no grace and with the default one, with and without
//! `--delete-untagged`). Every tag left is fully pullable, nothing deleted stays stored, no
//! upload in progress broke, and a push either succeeds whole or fails cleanly (400
//! `MANIFEST_BLOB_UNKNOWN`, tried again as clients do). A short run by default;
//! `REGATE_GC_STRESS_ROUNDS=300 cargo test --test conformance gc_under_fire` for a long one
//! (`--test object_storage` on S3).

use crate::backend;
use crate::common::{self, client, digest, Server};
use serde_json::json;
use std::collections::BTreeSet;

const REPO: &str = "fire/app";

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

/// Every blob of the image tagged `tag` answers 200 with bytes of the right digest; returns
/// the digests it reaches (the manifest's own included).
async fn assert_pullable(s: &Server, tag: &str) -> Vec<String> {
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
    for d in &ds {
        let (st, bytes) = get_status(s, &format!("blobs/{d}")).await;
        if st != 200 {
            let hex = d.strip_prefix("sha256:").unwrap();
            let runs = std::fs::read_to_string(s.dir.path().join("gc-runs.log")).unwrap_or_default();
            panic!(
                "blob {d} of {tag}: {st}; stored {:?}\n{}\ngc runs:\n{}",
                backend::stored_keys(s, &format!("docker/registry/v2/blobs/sha256/{}/{hex}", &hex[..2])),
                s.logs()
                    .lines()
                    .filter(|l| l.contains(hex) || l.contains(tag))
                    .collect::<Vec<_>>()
                    .join("\n"),
                runs.lines()
                    .filter(|l| l.contains(hex) || l.starts_with("run"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
        }
        assert_eq!(digest(&bytes), *d);
    }
    ds.push(digest(&body));
    ds
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
            if r.status() != 202 {
                let st = r.status();
                panic!("upload start answered {st}: {}", r.text().await.unwrap_or_default());
            }
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

/// Every blob the backend stores.
fn stored_blobs(s: &Server) -> BTreeSet<String> {
    backend::stored_keys(s, "docker/registry/v2/blobs/sha256")
        .iter()
        .filter_map(|k| k.strip_suffix("/data"))
        .filter_map(|dir| dir.rsplit('/').next())
        .map(|hex| format!("sha256:{hex}"))
        .collect()
}

/// See the module's documentation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_under_fire() {
    let rounds: usize = std::env::var("REGATE_GC_STRESS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let s = super::start_server("");
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
    let mut want = BTreeSet::new();
    for tag in &tags {
        want.extend(assert_pullable(&s, tag).await);
    }
    assert_eq!(stored_blobs(&s), want);
}
